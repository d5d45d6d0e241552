"""The bench's figures: one mode's rows aggregated, the table printed, the accuracy-vs-NFE plot."""

from __future__ import annotations

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
        "nfe_reduction": (None if not baseline_nfe else 1.0 - nfe / baseline_nfe),
        "dllm_s": dllm_s, "aux_s": aux_s, "wall_s": dllm_s + aux_s,
        "tokens_per_s": tokens / max(dllm_s + aux_s, 1e-9),
        "warm_fallbacks": sum(1 for r in rows if r.get("fallback")),
        "injected_mean": sum(r.get("injected", 0) for r in rows) / max(n, 1),
        "revoked_mean": sum(r.get("revoked", 0) for r in rows) / max(n, 1),
        "accepted_mean": sum(r.get("accepted", 0) for r in rows) / max(n, 1),
        "nfe_floor": nfe_floor,
        "nfe_over_floor": (nfe / nfe_floor) if nfe_floor else None,
        # canvas tokens committed per forward (Fast-dLLM's tokens/NFE: gen_length / NFE)
        "tokens_per_forward": (gen_length / nfe) if (gen_length and nfe) else None,
    }
    if len(seeds) > 1:
        record["per_seed"] = {s: summarize(mode, [r for r in rows if r["seed"] == s],
                                           baseline_nfe, settings, nfe_floor, gen_length) for s in seeds}
        for sub in record["per_seed"].values():
            sub.pop("per_seed", None)
    return record


def format_table(records: List[Dict[str, Any]]) -> str:
    header = (f"{'mode':<18} {'n':>5} {'strict acc [95% CI]':>24} {'flex acc':>9} {'mean NFE':>9} "
              f"{'floor':>6} {'x floor':>8} {'tok/fwd':>8} {'NFE cut':>8} {'dLLM s':>8} {'aux s':>7} "
              f"{'wall s':>8} {'speed-up':>8}")
    lines = [header, "-" * len(header)]
    for r in records:
        acc = (f"{r['accuracy']:>7.3f} [{r['accuracy_ci95'][0]:.3f},{r['accuracy_ci95'][1]:.3f}] "
               f"{r['accuracy_flexible']:>9.3f}")
        if r["mode"] == "aux_only":
            lines.append(f"{'aux_only':<18} {r['n']:>5} {acc} {'-':>9} {'-':>6} {'-':>8} {'-':>8} {'-':>8} "
                         f"{'-':>8} {r['aux_s']:>7.1f} {r['aux_s']:>8.1f} {'-':>8}")
            continue
        cut = "-" if r["nfe_reduction"] is None else f"{100 * r['nfe_reduction']:.1f}%"
        floor = "-" if r.get("nfe_floor") is None else f"{r['nfe_floor']}"
        over = "-" if r.get("nfe_over_floor") is None else f"{r['nfe_over_floor']:.2f}x"
        tpf = "-" if r.get("tokens_per_forward") is None else f"{r['tokens_per_forward']:.2f}"
        speed = "-" if r.get("wall_speedup") is None else f"{r['wall_speedup']:.2f}x"
        lines.append(f"{r['mode']:<18} {r['n']:>5} {acc} {r['mean_nfe']:>9.2f} {floor:>6} {over:>8} {tpf:>8} "
                     f"{cut:>8} {r['dllm_s']:>8.1f} {r['aux_s']:>7.1f} {r['wall_s']:>8.1f} {speed:>8}")
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


