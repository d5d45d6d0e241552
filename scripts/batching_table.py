"""The README's batching table from two bench files (``--repeats``): batch 16, each mode with
refill and static (``<mode>`` and ``<mode>-static``, as in ``presets/bench_batching.json``), and
batch 1. Speed-ups are paired: in each timed pass, cold's time over the mode's, against cold with
the same batching; the median over passes. The query ceiling is cold's query positions per answer
over the mode's: what the speed-up would be if time followed the queries the model computes.

    python scripts/batching_table.py results/bench_batching.json results/bench_batching_b1.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Dict, List, Optional

COLD = "baseline"
NAMES = {"baseline": "cold", "chain-0.3": "`chain` rel 0.3", "spec-0.1": "`spec` tau 0.1",
         "wino-default": "`wino` rule"}


def passes(result: dict) -> Dict[str, Dict[int, float]]:
    """mode -> pass number -> dLLM seconds."""
    out: Dict[str, Dict[int, float]] = {}
    for p in result.get("timed_passes", []):
        out.setdefault(p["mode"], {})[p["pass"]] = p["dllm_s"]
    return out


def paired_speedup(timed: Dict[str, Dict[int, float]], mode: str, cold: str) -> Optional[float]:
    if mode not in timed or cold not in timed:
        return None
    ratios = [timed[cold][k] / t for k, t in timed[mode].items() if k in timed[cold] and t > 0]
    return statistics.median(ratios) if ratios else None


def spread(timed: Dict[str, Dict[int, float]], mode: str) -> str:
    t = list(timed[mode].values())
    return f"{statistics.median(t):.1f} [{min(t):.1f}-{max(t):.1f}]"


def table(b16: dict, b1: Optional[dict]) -> str:
    recs = {r["mode"]: r for r in b16["records"]}
    t16, t1 = passes(b16), passes(b1) if b1 else {}
    lines = ["| mode | accuracy | NFE | calls per answer: refill / static | queries per answer: refill "
             "/ static (query ceiling) | dLLM s, refill | dLLM s, static | speed-up over cold: refill "
             "/ static / batch 1 | best batch-16 share of batch 1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    cold_q = recs[COLD]["queries_per_answer"], recs[COLD + "-static"]["queries_per_answer"]
    for mode, name in NAMES.items():
        r, s = recs[mode], recs[mode + "-static"]
        ceiling = "" if mode == COLD else f" ({cold_q[1] / s['queries_per_answer']:.2f}x)"
        if mode == COLD:
            speed, share = "1 / 1 / 1", ""
        else:
            ups = (paired_speedup(t16, mode, COLD), paired_speedup(t16, mode + "-static", COLD + "-static"),
                   paired_speedup(t1, mode, COLD))
            speed = " / ".join("-" if u is None else f"{u:.2f}x" for u in ups)
            share = "" if ups[2] is None else f"{max(ups[0], ups[1]) / ups[2]:.0%}"
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['mean_nfe']:.2f} | {r['calls_per_answer']:.2f} / "
                     f"{s['calls_per_answer']:.2f} | {r['queries_per_answer']:.0f} / {s['queries_per_answer']:.0f}"
                     f"{ceiling} | {spread(t16, mode)} | {spread(t16, mode + '-static')} | {speed} | {share} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("batch16", help="bench JSON at batch 16 with --repeats (refill and -static modes)")
    ap.add_argument("batch1", nargs="?", help="bench JSON at batch 1 with --repeats")
    args = ap.parse_args(argv)
    with open(args.batch16) as f:
        b16 = json.load(f)
    b1 = None
    if args.batch1:
        with open(args.batch1) as f:
            b1 = json.load(f)
    print(table(b16, b1))


if __name__ == "__main__":
    main()
