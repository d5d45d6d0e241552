"""Paired comparison of bench series on the same problems, pooled over data sets.

Every bench JSON written by this version of ``fastdllm-warmstart bench`` keeps, per mode, whether
each problem was solved and its forward count (``per_problem``). A *series* is a file-name prefix
plus a mode: ``results/rcd/stream_rcd-s0_seed5.json`` holds the series ``stream_rcd-s0:stream_on``
on the data set ``seed5`` (the prefix is the file name without ``_<data set>.json``). Two series
are paired on (data set, problem index); the difference of their accuracies gets a 95% interval
from a paired bootstrap that resamples problems within each data set, and the discordant pairs
are counted (McNemar's exact two-sided p from them).

    python scripts/paired_compare.py results/rcd/*.json --baseline base_base:stream_off \
        --out results/rcd/paired.json

compares every series with the baseline; ``--pair A B`` adds comparisons (repeatable).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

Outcomes = Dict[Tuple[str, int], Tuple[int, float]]  # (data set, index) -> (solved, NFE)


def load_series(paths: Sequence[Path]) -> Tuple[Dict[str, Outcomes], Dict[str, dict]]:
    """Every series in the files: outcomes keyed by (data set, index), and each file's provenance."""
    series: Dict[str, Outcomes] = defaultdict(dict)
    provenance: Dict[str, dict] = {}
    for path in paths:
        doc = json.loads(path.read_text(encoding="utf-8"))
        data = Path(doc["data"]).stem
        prefix = path.stem[: -len(data) - 1] if path.stem.endswith("_" + data) else path.stem
        provenance[str(path)] = {"command": doc.get("command"), "model": doc.get("model"),
                                 "versions": doc.get("versions"), "data": doc["data"]}
        for rec in doc["records"]:
            per = rec.get("per_problem")
            if per is None:
                if rec["mode"] != "aux_only":
                    raise SystemExit(f"{path}: mode {rec['mode']} has no per-problem outcomes "
                                     "(written by an older bench, or several warm-start seeds); rerun it")
                continue
            out = series[f"{prefix}:{rec['mode']}"]
            for i, ok, nfe in zip(per["index"], per["strict"], per["nfe"]):
                out[(data, i)] = (int(ok), float(nfe))
    return dict(series), provenance


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(a: Outcomes, b: Outcomes, resamples: int, seed: int) -> dict:
    """Series ``a`` against ``b`` on the problems both have: accuracies, their difference (a - b)
    with a 95% paired-bootstrap interval, discordant counts, mean NFE and its ratio."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise SystemExit("the two series share no problems (different data sets?)")
    by_data: Dict[str, List[int]] = defaultdict(list)
    diffs = [a[k][0] - b[k][0] for k in keys]
    for j, k in enumerate(keys):
        by_data[k[0]].append(j)
    rng = random.Random(seed)
    boot = []
    for _ in range(resamples):
        total = 0
        for idx in by_data.values():
            total += sum(diffs[rng.choice(idx)] for _ in idx)
        boot.append(total / len(keys))
    boot.sort()
    n = len(keys)
    nfe_a = sum(a[k][1] for k in keys) / n
    nfe_b = sum(b[k][1] for k in keys) / n
    return {
        "n": n, "data_sets": sorted(by_data),
        "accuracy_a": sum(a[k][0] for k in keys) / n, "accuracy_b": sum(b[k][0] for k in keys) / n,
        "diff": sum(diffs) / n,
        "diff_ci95": [boot[int(0.025 * resamples)], boot[min(resamples - 1, int(0.975 * resamples))]],
        "a_only": sum(1 for d in diffs if d > 0), "b_only": sum(1 for d in diffs if d < 0),
        "mcnemar_p": mcnemar_p(sum(1 for d in diffs if d > 0), sum(1 for d in diffs if d < 0)),
        "mean_nfe_a": nfe_a, "mean_nfe_b": nfe_b, "nfe_ratio": nfe_a / nfe_b if nfe_b else None,
    }


def main(argv: Sequence[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path, help="bench JSON files")
    ap.add_argument("--baseline", help="series every other series is compared with")
    ap.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                    help="also compare series A with series B")
    ap.add_argument("--resamples", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the comparisons (with provenance) here")
    args = ap.parse_args(argv)
    series, provenance = load_series(args.files)
    pairs = [tuple(p) for p in args.pair]
    if args.baseline:
        if args.baseline not in series:
            raise SystemExit(f"no series {args.baseline!r}; have: {', '.join(sorted(series))}")
        pairs = [(s, args.baseline) for s in sorted(series) if s != args.baseline] + pairs
    for a_name, b_name in pairs:
        for name in (a_name, b_name):
            if name not in series:
                raise SystemExit(f"no series {name!r}; have: {', '.join(sorted(series))}")
    rows = []
    print(f"{'series A':38s} {'vs B':30s} {'n':>5s} {'acc A':>6s} {'acc B':>6s} {'A-B':>7s} "
          f"{'95% CI':>17s} {'A+/B+':>7s} {'p':>6s} {'NFE A/B':>8s}")
    for a_name, b_name in pairs:
        r = compare(series[a_name], series[b_name], args.resamples, args.seed)
        rows.append({"a": a_name, "b": b_name, **r})
        lo, hi = r["diff_ci95"]
        print(f"{a_name:38s} {b_name:30s} {r['n']:5d} {r['accuracy_a']:6.3f} {r['accuracy_b']:6.3f} "
              f"{r['diff']:+7.3f} [{lo:+.3f},{hi:+.3f}] {r['a_only']:3d}/{r['b_only']:<3d} "
              f"{r['mcnemar_p']:6.3f} {r['nfe_ratio']:8.3f}")
    if args.out:
        args.out.write_text(json.dumps({
            "command": "python scripts/paired_compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "resamples": args.resamples, "seed": args.seed, "comparisons": rows,
            "files": provenance}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
