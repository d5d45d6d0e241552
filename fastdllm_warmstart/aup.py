"""AUP, Accuracy Under Parallelism: the d3LLM leaderboard's metric (hao-ai-lab/d3LLM,
``AUP_leaderboard``), for every series of a sweep.

One series is a list of points ``(rho, y)``: ``rho`` answer tokens per forward, ``y`` accuracy in
percent. Its AUP (numbers as in :func:`aup`):

1. Sort the points by ``rho``, ascending (points of equal ``rho`` keep their order).
2. ``y_1`` is the accuracy at the lowest ``rho``; points with ``y < y_1 - 5`` are dropped.
3. ``AUP = rho_1 y_1 + sum_{i >= 2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2``
   over the kept points, ``W(y) = min(exp(-3 (1 - y / y_max)), 1)``, ``y_max`` the best accuracy of
   any series on the task (here: of the sweep).

d3LLM's code refuses a series whose highest-``rho`` point lies more than 5 points below ``y_1``;
here that point is dropped like any other (and counted), so every series gets a value.

A sweep reports two AUPs per series (:func:`sweep_aup`): d3LLM's, ``rho`` = answer tokens per dLLM
forward; and one with the aux model's cost counted, ``rho`` = answer tokens per (dLLM forwards +
the aux model's forwards in dLLM-forward equivalents, by measured time). ``t_f``, the seconds one
dLLM forward of an answer takes, is measured on the sweep's reference points (cold decoding). The
aux drafting before decoding (warm starts) counts ``aux seconds / t_f``; aux forwards made while
decoding (APD's scoring, ``aux_forwards_mean``; their time is inside the decode's) count the time
the decode took beyond its dLLM forwards at ``t_f``, ``max(0, dllm_s / t_f - NFE)``. The second AUP
is only as good as its timing: on a contended machine it is noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

ALPHA = 3.0  # d3LLM's penalty on accuracy below y_max
OFFSET = 5.0  # points more than this below y_1 are dropped


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """W(y) = min(exp(-alpha (1 - y / y_max)), 1)."""
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


@dataclass(frozen=True)
class Aup:
    value: float
    kept: int     # points that entered the sum
    dropped: int  # points below y_1 - offset


def aup(points: Sequence[Tuple[float, float]], y_max: float, alpha: float = ALPHA,
        offset: float = OFFSET) -> Aup:
    """The AUP of ``points`` ``(rho, y in percent)`` (steps 1-3 of the module docstring)."""
    if not points:
        raise ValueError("AUP needs at least one (rho, accuracy) point.")
    if any(not rho > 0 for rho, _ in points):
        raise ValueError(f"every rho (tokens per forward) must be positive; got {[r for r, _ in points]}.")
    if not y_max > 0:
        raise ValueError(f"y_max={y_max} must be positive (accuracy in percent).")
    ordered = sorted(points, key=lambda p: p[0])  # 1.
    y_1 = ordered[0][1]
    kept = [p for p in ordered if p[1] >= y_1 - offset]  # 2. (the first point always stays)
    value = kept[0][0] * kept[0][1]  # 3.
    for (r0, y0), (r1, y1) in zip(kept, kept[1:]):
        value += 0.5 * (r1 - r0) * (y1 * weight(y1, y_max, alpha) + y0 * weight(y0, y_max, alpha))
    return Aup(value=value, kept=len(kept), dropped=len(points) - len(kept))


def _forward_seconds(records: List[Dict[str, Any]]) -> Optional[float]:
    """Seconds of one dLLM forward of one answer: dLLM seconds over forwards, pooled over the
    sweep's reference points (all points when it has none)."""
    pool = [r for r in records if r.get("kind") == "reference"] or records
    forwards = sum(r["mean_nfe"] * r["n"] for r in pool)
    seconds = sum(r["dllm_s"] for r in pool)
    return seconds / forwards if forwards > 0 and seconds > 0 else None


def sweep_aup(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Both AUPs of every series of a sweep's point records (``series``, ``accuracy``, ``n``,
    ``mean_nfe``, ``answer_tokens``, ``dllm_s``, ``aux_s``; ``aux_tokens`` optional). Adds ``rho``
    and ``rho_with_aux`` to each record and returns ``{"y_max", "dllm_forward_s",
    "aux_forward_ratio", "series": {name: {"aup", "aup_with_aux", "kept", "dropped"}}}``."""
    y_max = 100.0 * max(r["accuracy"] for r in records)
    t_fwd = _forward_seconds(records)
    aux_s = sum(r.get("aux_s") or 0.0 for r in records)
    aux_tokens = sum(r.get("aux_tokens") or 0 for r in records)
    for r in records:
        forwards = r["mean_nfe"] * r["n"]
        r["rho"] = r["answer_tokens"] / forwards
        aux_equiv = 0.0
        if t_fwd:
            aux_equiv = (r.get("aux_s") or 0.0) / t_fwd  # drafting before decoding
            if r.get("aux_forwards_mean"):  # forwards while decoding: the decode's extra time
                aux_equiv += max(0.0, r["dllm_s"] / t_fwd - forwards)
        r["aux_forward_equivalents"] = aux_equiv / max(r["n"], 1)  # per answer
        r["rho_with_aux"] = r["answer_tokens"] / (forwards + aux_equiv)
    series: Dict[str, Dict[str, Any]] = {}
    for name in dict.fromkeys(r["series"] for r in records):
        rows = [r for r in records if r["series"] == name]
        plain = aup([(r["rho"], 100.0 * r["accuracy"]) for r in rows], y_max) if y_max > 0 else None
        with_aux = aup([(r["rho_with_aux"], 100.0 * r["accuracy"]) for r in rows], y_max) if y_max > 0 else None
        series[name] = {"aup": plain.value if plain else 0.0,
                        "aup_with_aux": with_aux.value if with_aux else 0.0,
                        "kept": plain.kept if plain else 0, "dropped": plain.dropped if plain else 0,
                        "dropped_with_aux": with_aux.dropped if with_aux else 0}
    ratio = None  # seconds of one aux forward (one drafted token) over one dLLM forward
    if t_fwd and aux_tokens:
        ratio = (aux_s / aux_tokens) / t_fwd
    return {"y_max": y_max, "dllm_forward_s": t_fwd, "aux_forward_ratio": ratio, "series": series}


def format_aup(summary: Dict[str, Any]) -> str:
    """The per-series AUP table, with how the aux cost was converted."""
    lines = [f"{'series':<28} {'AUP (d3LLM)':>12} {'AUP incl. aux':>14} {'points kept':>12}",
             "-" * 69]
    for name, s in summary["series"].items():
        kept = f"{s['kept']}/{s['kept'] + s['dropped']}"
        lines.append(f"{name:<28} {s['aup']:>12.1f} {s['aup_with_aux']:>14.1f} {kept:>12}")
    t_fwd, ratio = summary["dllm_forward_s"], summary["aux_forward_ratio"]
    note = (f"y_max {summary['y_max']:.1f}%. rho = answer tokens per dLLM forward (d3LLM); incl. aux: "
            "the aux drafting counted as dLLM forwards by measured time")
    if t_fwd:
        note += f" (one dLLM forward of an answer {1000 * t_fwd:.2f} ms on the reference points"
        note += f"; one aux forward = {ratio:.3f} dLLM forwards)" if ratio else ")"
    lines.append(note + ". Timings on a shared machine are noise; the d3LLM column is not.")
    return "\n".join(lines)
