"""``fastdllm-warmstart sweep``: a preset's grid run as bench modes, one record per point, a plot."""

from __future__ import annotations

import argparse
import dataclasses

from ..flags import add_data_flags, add_model_flags, add_run_flags
from ..aup import format_aup, sweep_aup
from ..sweep import SweepSettings, plot_sweep, run_sweep
from .bench import add_repeats_flag, bench_settings


def _speedup(record: dict) -> str:
    """``  speed-up 1.31x [1.20-1.42]`` from the timed passes (``--repeats``), else nothing."""
    t = record.get("timing") or {}
    if t.get("speedup_median") is None:
        return ""
    return f"  speed-up {t['speedup_median']:.2f}x [{t['speedup_min']:.2f}-{t['speedup_max']:.2f}]"


def run(args: argparse.Namespace) -> int:
    bench = dataclasses.replace(bench_settings(args), preset=None)  # the sweep's grid is the modes
    records = run_sweep(SweepSettings(preset=args.preset, bench=bench, out=args.out))
    for r in records:
        print(f"{r['mode']:<44} acc {r['accuracy']:.3f} [{r['accuracy_ci95'][0]:.3f},"
              f"{r['accuracy_ci95'][1]:.3f}]  NFE {r['mean_nfe']:6.2f}  calls/answer "
              f"{r.get('calls_per_answer') or float('nan'):5.2f}  tok/s {r['tokens_per_s']:7.1f}  "
              f"wall/problem {r['wall_per_problem_s']:.4f}s  rho {r['rho']:.2f}{_speedup(r)}")
    print()
    print(format_aup(sweep_aup(records)))
    print(f"\nOne record per point (with resolved config, seeds, versions): {args.out}")
    if args.plot:
        plot_sweep(records, args.plot)
        print(f"Plot: {args.plot}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="a declarative grid of settings and its accuracy-vs-NFE Pareto plot")
    p.add_argument("--preset", required=True, help="sweep preset JSON (see fastdllm_warmstart/presets/)")
    p.add_argument("--out", default="results/sweep.jsonl", help="one JSON record per point")
    p.add_argument("--plot", help="write the two-panel Pareto PNG here")
    add_data_flags(p, json_default="results/sweep_rows.json")
    add_repeats_flag(p)
    add_model_flags(p)
    add_run_flags(p)
    p.set_defaults(func=run)
