"""``fastdllm-warmstart bench``: the flags, the table and the result file of :func:`run_bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench import DEFAULT_PRESET, BenchSettings, run_bench
from ..bench_report import format_table, plot
from ..flags import add_data_flags, add_model_flags, add_run_flags, run_config_from_args

_NOT_FLAGS = ("func", "command_line")


def parse_seeds(text: str) -> tuple:
    try:
        return tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give comma-separated whole numbers, e.g. --seeds 0,1,2.") from None


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    """The typed settings of a bench (or sweep) command line."""
    modes = getattr(args, "modes", None)
    return BenchSettings(
        run=run_config_from_args(args), data=args.data, limit=args.limit, seeds=parse_seeds(args.seeds),
        json_path=args.json, resume=args.resume, quiet=args.quiet,
        shuffle_proposals=args.shuffle_proposals, preset=args.preset,
        modes=tuple(m.strip() for m in modes.split(",")) if modes else None,
        model=args.model, fast_dllm_path=args.fast_dllm_path, device=args.device, dtype=args.dtype,
        batch_size=args.batch_size, threads=args.threads,
        command_line=tuple(getattr(args, "command_line", None) or ()) or None,
        flags={k: v for k, v in vars(args).items() if v is not None and k not in _NOT_FLAGS})


def run(args: argparse.Namespace) -> int:
    result = run_bench(bench_settings(args))
    print(format_table(result["records"]))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nResults (with resolved config, seeds, versions): {path}")
    if args.plot:
        plot(result["records"], args.plot)
        print(f"Plot: {args.plot}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="baseline vs warm starts on the same problems (the main job)")
    p.add_argument("--preset", help=f"JSON list of modes (default {DEFAULT_PRESET.name})")
    p.add_argument("--modes", help="comma-separated subset of the preset's modes")
    p.add_argument("--plot", help="write an accuracy-vs-NFE PNG here")
    add_data_flags(p)
    add_model_flags(p)
    add_run_flags(p)
    p.set_defaults(func=run)
