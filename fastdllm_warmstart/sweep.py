"""``fastdllm-warmstart sweep``: a declarative grid of decoding settings, and its Pareto plot.

1. Read the preset: ``base`` settings for every point, then ``series``, each a name, a ``kind``
   (``reference``: the cold baseline's own trade-off curve, usually a threshold sweep; ``paper``:
   the paper's configurations; ``peer``: another published method (WINO, APD); ``ours``: the
   rules under study; ``control``: an ablation that
   separates a method's effect from a confound), fixed ``settings`` and a ``vary``
   grid (the cartesian product of its lists gives the series' points).
2. Run every point as a bench mode on the same problems with the same proposals (drafted once and
   reused from the proposal cache; ``--resume`` continues an interrupted sweep row by row).
3. Write one JSON record per point (``--out``: accuracy with its 95% interval, mean NFE, dLLM and
   aux seconds, the resolved config) and draw two panels: accuracy vs mean NFE (the cold threshold
   curve as the reference, the paper's points marked, the Pareto frontier of all points drawn) and
   accuracy vs wall-clock per problem including the aux model.
4. AUP (:mod:`.aup`) of every series, d3LLM's and with the aux model's cost counted, in each
   point's record, in the meta line (``aup``) and in the plot's legend.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .aup import sweep_aup
from .bench import BenchSettings
from .input_files import check_settings, line_of, read_json
from .jsonl_store import InputFileError

KINDS = ("reference", "paper", "peer", "ours", "control")


def _format_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand_preset(preset: Dict[str, Any], path: Optional[str] = None) -> List[Dict[str, Any]]:
    """Points ``{"mode", "series", "kind", "varied", "settings"}`` of a sweep preset, in order.

    With ``path`` (the preset was read from that file by :func:`load_sweep_preset`), a mistake
    raises :class:`InputFileError` naming the file and line, and every point's settings are
    checked to build a valid config."""

    def bad(message: str, where: Any = None) -> Exception:
        return ValueError(message) if path is None else InputFileError(path, message, line_of(where) or 1)

    if not isinstance(preset, dict) or not isinstance(preset.get("series"), list) or not preset["series"]:
        raise bad('A sweep preset is a JSON object {"base": {...}, "series": [{"name": ..., '
                  '"kind": "reference|paper|peer|ours|control", "settings": {...}, "vary": {key: [values]}}]}.',
                  preset)
    base = preset.get("base", {})
    points, seen = [], set()
    for s in preset["series"]:
        if not isinstance(s, dict):
            raise bad("every series of a sweep preset must be a JSON object.", preset)
        name, kind = s.get("name"), s.get("kind", "ours")
        if not name:
            raise bad("Every series of a sweep preset needs a \"name\".", s)
        if kind not in KINDS:
            raise bad(f"series {name!r}: kind={kind!r}; choose one of {', '.join(KINDS)}.", s)
        vary = s.get("vary", {})
        if not isinstance(vary, dict) or not all(isinstance(v, list) and v for v in vary.values()):
            raise bad(f"series {name!r}: every \"vary\" entry must be a non-empty list of values.", s)
        keys = list(vary)
        for combo in itertools.product(*(vary[k] for k in keys)) if keys else [()]:
            varied = dict(zip(keys, combo))
            label = name + "".join(f" {k}={_format_value(v)}" for k, v in varied.items())
            if label in seen:
                raise bad(f"sweep point {label!r} appears twice; give the series distinct names.", s)
            seen.add(label)
            settings = {**base, **s.get("settings", {}), **varied}
            if path is not None:
                check_settings(settings, path, line_of(s), f"sweep point {label!r}")
            points.append({"mode": label, "series": name, "kind": kind, "varied": varied,
                           "settings": settings})
    return points


def load_sweep_preset(path: str) -> List[Dict[str, Any]]:
    """A sweep preset file's points, checked (one error naming the file, the line and the field)."""
    return expand_preset(read_json(path, "sweep preset"), path=str(path))


def pareto_front(points: List[Dict[str, Any]], x: str = "mean_nfe") -> List[Dict[str, Any]]:
    """Points no other point beats on both fewer ``x`` and higher accuracy, sorted by ``x``."""
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p[x], -p["accuracy"])):
        if p["accuracy"] > best:
            front.append(p)
            best = p["accuracy"]
    return front


def plot_sweep(records: List[Dict[str, Any]], path: str, title: Optional[str] = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'fastdllm-warmstart[plot]'.") from None
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    styles = {"reference": dict(marker="o", color="black", linestyle="-"),
              "paper": dict(marker="*", markersize=12, linestyle="none"),
              "peer": dict(marker="^", linestyle="-."), "ours": dict(marker="s", linestyle=":"), "control": dict(marker="x", color="gray", linestyle="--")}
    for ax, x, xlabel in ((axes[0], "mean_nfe", "mean NFE (forward passes per answer)"),
                          (axes[1], "wall_per_problem_s", "wall-clock per problem, s (dLLM + aux)")):
        series: Dict[str, List[Dict[str, Any]]] = {}
        for r in records:
            series.setdefault(r["series"], []).append(r)
        references = 0
        # tab10 without its grey (C7), which the reference and control curves use: every other
        # series gets a colour of its own, in order
        palette = iter(c for i, c in enumerate(plt.get_cmap("tab10").colors * 2) if i % 10 != 7)
        for name, rows in series.items():
            kind = rows[0]["kind"]
            style = dict(styles[kind])
            if "color" not in style:
                style["color"] = next(palette)
            if kind == "reference":  # the first reference curve black, further ones grey and dashed
                if references:
                    style.update(color="grey", marker="D", linestyle="--")
                references += 1
            rows = sorted(rows, key=lambda r: r[x])
            xs = [r[x] for r in rows]
            ys = [r["accuracy"] for r in rows]
            err = [[r["accuracy"] - r["accuracy_ci95"][0] for r in rows],
                   [r["accuracy_ci95"][1] - r["accuracy"] for r in rows]]
            label = f"{name} ({kind})"
            if rows[0].get("aup") is not None:
                label += f" AUP {rows[0]['aup']:.0f} / {rows[0]['aup_with_aux']:.0f} incl. aux"
            ax.errorbar(xs, ys, yerr=err, capsize=2, label=label, **style)
        front = pareto_front(records, x)
        ax.step([p[x] for p in front], [p["accuracy"] for p in front], where="post", color="grey",
                alpha=0.5, linewidth=3, label="Pareto frontier")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (strict-match, 95% interval)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or "Accuracy vs cost of every sweep point")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class SweepSettings:
    """A sweep: its preset file, the bench run its points are decoded in, and the output file."""

    preset: str
    bench: BenchSettings = field(default_factory=lambda: BenchSettings(json_path="results/sweep_rows.json"))
    out: str = "results/sweep.jsonl"  # one JSON record per point, after a meta line


def run_sweep(settings: SweepSettings) -> List[Dict[str, Any]]:
    from .bench import run_bench

    points = load_sweep_preset(settings.preset)
    modes = [{"mode": p["mode"], "settings": p["settings"]} for p in points]
    result = run_bench(settings.bench, modes=modes)
    by_mode = {r["mode"]: r for r in result["records"]}
    out_records = []
    for p in points:
        rec = dict(by_mode[p["mode"]])
        rec.update(series=p["series"], kind=p["kind"], varied=p["varied"],
                   config=result["config"][p["mode"]])
        # with timed passes (--repeats), their median dLLM time plus the aux drafting
        timed = rec.get("timing")
        wall = (timed["dllm_s_median"] * len(rec["seeds"]) + rec["aux_s"]) if timed else rec["wall_s"]
        rec["wall_per_problem_s"] = wall / max(1, rec["n"])
        out_records.append(rec)
    aup = sweep_aup(out_records)
    for rec in out_records:
        rec.update({k: aup["series"][rec["series"]][k] for k in ("aup", "aup_with_aux")})
    meta = {k: result[k] for k in ("command", "data", "n_problems", "seeds", "model", "aux_model",
                                   "batch_size", "device", "threads", "versions", "fingerprint", "repeats")
            if k in result}
    aux = next((r for r in result["records"] if r["mode"] == "aux_only"), None)
    path = Path(settings.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write(json.dumps({"meta": meta, "aux_only": aux, "aup": aup}, default=str) + "\n")
        for rec in out_records:
            fh.write(json.dumps(rec, default=str) + "\n")
    return out_records
