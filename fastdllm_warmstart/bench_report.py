"""The bench's figures: one mode's rows aggregated, its timed passes summarized, the tables
printed, the accuracy-vs-NFE plot."""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional


def summarize(mode: str, rows: List[Dict[str, Any]], baseline_nfe: Optional[float],
              settings: Dict[str, Any], nfe_floor: Optional[int] = None,
              gen_length: Optional[int] = None) -> Dict[str, Any]:
    """Aggregate one mode's rows. ``nfe_floor``: the fewest forwards an answer can take (one
    per block, or two in the June-2025 cached loops); ``gen_length``: canvas tokens per answer."""
    from .scoring import wilson_interval

    n = len(rows)
    strict = sum(r["strict"] for r in rows)
    flexible = sum(r["flexible"] for r in rows)
    nfe = sum(r["nfe"] for r in rows) / max(n, 1)
    dllm_s = sum(r["dllm_s"] for r in rows)
    warm = settings.get("warm_init", "none") != "none"
    aux_s = sum(r["aux_s"] for r in rows) if warm else 0.0
    tokens = sum(r["gen_tokens"] for r in rows)
    seeds = sorted({r["seed"] for r in rows})
    record = {
        "mode": mode, "settings": settings, "n": n, "seeds": seeds,
        "accuracy": strict / max(n, 1), "accuracy_ci95": wilson_interval(strict, n),
        "accuracy_flexible": flexible / max(n, 1), "accuracy_flexible_ci95": wilson_interval(flexible, n),
        "mean_nfe": nfe,
        # batch forward calls per answer: what the time follows where a call costs about the
        # same whatever its row count (a GPU's small batches)
        "calls_per_answer": (sum(r["model_calls"] for r in rows) / n) if n and all(
            "model_calls" in r for r in rows) else None,
        # query positions the model computed per answer: what the time follows where a forward
        # costs per query (a CPU); older result files have none
        "queries_per_answer": (sum(r["model_queries"] for r in rows) / n) if n and all(
            r.get("model_queries") for r in rows) else None,
        "nfe_reduction": (None if not baseline_nfe else 1.0 - nfe / baseline_nfe),
        "dllm_s": dllm_s, "aux_s": aux_s, "wall_s": dllm_s + aux_s,
        "tokens_per_s": tokens / max(dllm_s + aux_s, 1e-9),
        "warm_fallbacks": sum(1 for r in rows if r.get("fallback")),
        "injected_mean": sum(r.get("injected", 0) for r in rows) / max(n, 1),
        "revoked_mean": sum(r.get("revoked", 0) for r in rows) / max(n, 1),
        "accepted_mean": sum(r.get("accepted", 0) for r in rows) / max(n, 1),
        # aux forwards that scored an answer while it decoded (APD; counted apart from the dLLM's
        # forwards, whose cost they do not share; their time is inside dllm_s)
        "aux_forwards_mean": sum(r.get("aux_forwards", 0) for r in rows) / max(n, 1),
        "nfe_floor": nfe_floor,
        "nfe_over_floor": (nfe / nfe_floor) if nfe_floor else None,
        # canvas tokens committed per forward (Fast-dLLM's tokens/NFE: gen_length / NFE)
        "tokens_per_forward": (gen_length / nfe) if (gen_length and nfe) else None,
        # answer tokens (up to EOS) and aux forwards (drafted tokens): AUP's rho (aup.py)
        "answer_tokens": tokens,
        "aux_tokens": sum(r.get("aux_tokens", 0) for r in rows) if warm else 0,
    }
    if len(seeds) == 1:
        # per problem, in index order: what a paired comparison of two modes (or of two bench
        # files on the same problems) needs (scripts/paired_compare.py)
        ordered = sorted(rows, key=lambda r: r["index"])
        record["per_problem"] = {"index": [r["index"] for r in ordered],
                                 "strict": [int(r["strict"]) for r in ordered],
                                 "nfe": [r["nfe"] for r in ordered]}
    if len(seeds) > 1:
        record["per_seed"] = {s: summarize(mode, [r for r in rows if r["seed"] == s],
                                           baseline_nfe, settings, nfe_floor, gen_length) for s in seeds}
        for sub in record["per_seed"].values():
            sub.pop("per_seed", None)
    return record


def summarize_timing(passes: List[Dict[str, Any]],
                     baseline_passes: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """One mode's timed passes (``{"pass", "dllm_s", "cpu_s"}`` each): the median dLLM and CPU
    seconds with their min and max, and, given the baseline's passes, the speed-up of each pass
    over the baseline's pass of the same number (paired: both ran side by side, so a slow spell
    of the machine slows both) with the median and min-max of those ratios."""
    dllm = [p["dllm_s"] for p in passes]
    cpu = [p["cpu_s"] for p in passes]
    timing: Dict[str, Any] = {
        "repeats": len(passes), "dllm_s": dllm, "cpu_s": cpu,
        "dllm_s_median": statistics.median(dllm), "dllm_s_min": min(dllm), "dllm_s_max": max(dllm),
        "cpu_s_median": statistics.median(cpu), "cpu_s_min": min(cpu), "cpu_s_max": max(cpu),
        "same_tokens": all(p.get("same_tokens", True) for p in passes),
    }
    if baseline_passes:
        base = {p["pass"]: p["dllm_s"] for p in baseline_passes}
        ratios = [base[p["pass"]] / p["dllm_s"] for p in passes if p["pass"] in base and p["dllm_s"] > 0]
        if ratios:
            timing.update(speedups=ratios, speedup_median=statistics.median(ratios),
                          speedup_min=min(ratios), speedup_max=max(ratios))
    return timing


def format_timing(records: List[Dict[str, Any]]) -> str:
    """The timed passes' table (empty without ``--repeats``): dLLM seconds, median [min-max],
    process CPU seconds, and the paired speed-up over the baseline, median [min-max]."""
    timed = [r for r in records if r.get("timing")]
    if not timed:
        return ""
    n = timed[0]["timing"]["repeats"]
    header = (f"{'mode':<18} {'dLLM s median [min-max]':>26} {'CPU s median':>13} "
              f"{'speed-up median [min-max]':>26}")
    lines = [f"Timed passes: {n} per mode, interleaved across modes (dLLM time only; the aux "
             "drafting and the table above are one run)", header, "-" * len(header)]
    for r in timed:
        t = r["timing"]
        span = f"{t['dllm_s_median']:.2f} [{t['dllm_s_min']:.2f}-{t['dllm_s_max']:.2f}]"
        speed = ("-" if t.get("speedup_median") is None else
                 f"{t['speedup_median']:.2f}x [{t['speedup_min']:.2f}-{t['speedup_max']:.2f}]")
        flag = "" if t["same_tokens"] else "  (tokens differed between passes)"
        lines.append(f"{r['mode']:<18} {span:>26} {t['cpu_s_median']:>13.2f} {speed:>26}{flag}")
    return "\n".join(lines)


def format_table(records: List[Dict[str, Any]]) -> str:
    header = (f"{'mode':<18} {'n':>5} {'strict acc [95% CI]':>24} {'flex acc':>9} {'mean NFE':>9} "
              f"{'calls':>6} {'floor':>6} {'x floor':>8} {'tok/fwd':>8} {'NFE cut':>8} {'dLLM s':>8} "
              f"{'aux s':>7} {'wall s':>8} {'tok/s':>7} {'speed-up':>8}")
    lines = [header, "-" * len(header)]
    for r in records:
        acc = (f"{r['accuracy']:>7.3f} [{r['accuracy_ci95'][0]:.3f},{r['accuracy_ci95'][1]:.3f}] "
               f"{r['accuracy_flexible']:>9.3f}")
        if r["mode"] == "aux_only":
            lines.append(f"{'aux_only':<18} {r['n']:>5} {acc} {'-':>9} {'-':>6} {'-':>6} {'-':>8} {'-':>8} "
                         f"{'-':>8} {'-':>8} {r['aux_s']:>7.1f} {r['aux_s']:>8.1f} {'-':>7} {'-':>8}")
            continue
        cut = "-" if r["nfe_reduction"] is None else f"{100 * r['nfe_reduction']:.1f}%"
        floor = "-" if r.get("nfe_floor") is None else f"{r['nfe_floor']}"
        over = "-" if r.get("nfe_over_floor") is None else f"{r['nfe_over_floor']:.2f}x"
        tpf = "-" if r.get("tokens_per_forward") is None else f"{r['tokens_per_forward']:.2f}"
        speed = "-" if r.get("wall_speedup") is None else f"{r['wall_speedup']:.2f}x"
        calls = "-" if r.get("calls_per_answer") is None else f"{r['calls_per_answer']:.2f}"
        lines.append(f"{r['mode']:<18} {r['n']:>5} {acc} {r['mean_nfe']:>9.2f} {calls:>6} {floor:>6} {over:>8} "
                     f"{tpf:>8} {cut:>8} {r['dllm_s']:>8.1f} {r['aux_s']:>7.1f} {r['wall_s']:>8.1f} "
                     f"{r['tokens_per_s']:>7.1f} {speed:>8}")
    return "\n".join(lines)


def plot(records: List[Dict[str, Any]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'fastdllm-warmstart[plot]'.") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    # Alternate label sides in NFE order so neighbouring points stay readable.
    points = sorted((r for r in records if r["mode"] != "aux_only"), key=lambda r: r["mean_nfe"])
    for i, r in enumerate(points):
        lo, hi = r["accuracy_ci95"]
        ax.errorbar(r["mean_nfe"], r["accuracy"], yerr=[[r["accuracy"] - lo], [hi - r["accuracy"]]],
                    fmt="o", capsize=3)
        offset = (6, 6) if i % 2 == 0 else (6, -14)
        ax.annotate(r["mode"], (r["mean_nfe"], r["accuracy"]), textcoords="offset points", xytext=offset)
    ax.set_xlabel("mean NFE (forward passes per answer)")
    ax.set_ylabel("accuracy (strict-match)")
    ax.set_title("Accuracy vs NFE per decoding mode")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


