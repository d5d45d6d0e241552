"""A recorded decoding drawn and written: PNG (matplotlib), an interactive HTML page (the
template ``templates/trace.html``), JSON.

It reads traces (:class:`~fastdllm_warmstart.trace_record.DecodeTrace`) through their fields
only, and imports nothing of the recorder.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence, Union

Trace = Any  # a trace_record.DecodeTrace, read through its fields
TEMPLATE = Path(__file__).resolve().parent / "templates" / "trace.html"
JSON_FORMAT = "fastdllm-warmstart-trace/1"
# One colour and one legend text per cell state, in the recorder's STATES order.
STATE_COLORS = {
    "mask": "#d9d9d9", "prior": "#f4a81d", "accepted": "#1a9850", "revoked": "#d73027",
    "committed": "#2b6cb0", "eos": "#7b6a9e",
}
STATE_LABELS = {
    "mask": "[MASK]", "prior": "injected prior (unverified)", "accepted": "prior confirmed / accepted",
    "revoked": "prior revoked", "committed": "committed by the model", "eos": "EOS",
}


def write_json(traces: Sequence[Trace], path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": JSON_FORMAT, "traces": [t.to_dict() for t in traces]}
    path.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _blend(color: str, amount: float) -> tuple:
    """``color`` mixed with white (amount 0 = colour, 1 = white), as an RGB tuple in [0, 1]."""
    rgb = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return tuple(c + (1 - c) * amount for c in rgb)


EOS_MARK = "\u21b5"  # an EOS prior is drawn as a return arrow (the colour says prior or not)


def _cell_text(t: Trace, x: int, token: int, state: str) -> str:
    """A cell's text: its token (EOS as an arrow); a revoked cell shows the prior it lost; masks
    and the model's own EOS cells (their colour says it) none."""
    if state == "revoked":
        token = t.initial["prior"][x]
    if state in ("mask", "eos") or token < 0 or token == t.meta["mask_id"]:
        return ""
    return EOS_MARK if token == t.meta["eos_id"] else t.text(token)


def draw_png(traces: Sequence[Trace], path: Union[str, Path], *, dpi: int = 150,
             max_width_in: float = 18.0) -> Path:
    """Positions across, forwards down, one panel per trace (side by side)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
    except ImportError:
        raise ValueError("Drawing a trace needs matplotlib: pip install 'fastdllm-warmstart[plot]'.") from None
    traces = list(traces)
    if not traces:
        raise ValueError("No trace to draw.")
    n_panels = len(traces)
    G = max(t.meta["gen_length"] for t in traces)
    n_rows = max(t.num_forwards for t in traces) + 1  # + the initial canvas
    # Inches: row labels left of each panel, title above, block names + legend below.
    label_w, gap, top, bottom = 0.75, 0.35, 0.62, 1.05
    cell_w = min(0.34, (max_width_in - 0.2) / n_panels / G - (label_w + gap) / n_panels / G)
    cell_h = 0.28
    panel_w = G * cell_w
    fig_w = n_panels * (label_w + panel_w) + (n_panels - 1) * gap + 0.2
    fig_h = top + n_rows * cell_h + bottom
    fig = plt.figure(figsize=(fig_w, fig_h))
    cell_pt = cell_w * 72
    for i, t in enumerate(traces):
        left = 0.1 + label_w + i * (label_w + panel_w + gap)
        ax = fig.add_axes([left / fig_w, bottom / fig_h, panel_w / fig_w, n_rows * cell_h / fig_h])
        _draw_panel(ax, t, n_rows, cell_pt, Rectangle)
    handles = [Patch(facecolor=STATE_COLORS[s], edgecolor="none", label=STATE_LABELS[s]) for s in STATE_COLORS]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.2, linestyle=(0, (2, 1)),
                         label="cached forward: cells it recomputed"))
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.18 / fig_h), ncol=4,
               fontsize=7.5, frameon=False, handlelength=1.4, columnspacing=1.2)
    fig.text(0.5, 0.04 / fig_h, "rows: forward passes (F = full forward over the whole canvas, "
             "c = cached forward);  pale = unchanged since the row above", ha="center", va="bottom",
             fontsize=7, color="#444444")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _fit_text(text: str, font: float, cell_pt: float, min_font: float = 4.5):
    """(text, font size) that fits a cell ``cell_pt`` points wide: the font shrinks down to
    ``min_font``, then the text is cut with an ellipsis; None when nothing readable fits."""
    if not text:
        return None
    room = cell_pt * 0.95 / 0.6  # in character-widths of a 1-point font
    if len(text) * font <= room:
        return text, font
    if len(text) * min_font <= room:
        return text, room / len(text)
    keep = int(room // min_font) - 1
    return (text[:keep] + "\u2026", min_font) if keep >= 1 else None


def _draw_panel(ax, t: Trace, n_rows: int, cell_pt: float, Rectangle) -> None:
    G, B = t.meta["gen_length"], t.meta["block_length"]
    rows = [("init", None, t.initial["tokens"], t.initial["states"], [True] * G)]
    for r in t.rows:
        mark = "F" if r["kind"] == "full" else "c"
        rows.append((f"{r['forward']} {mark}", r, r["tokens"], r["states"], r["changed"]))
    # A 2-character token at this size fits the cell (at most 8 points); longer ones shrink.
    font = min(8.0, cell_pt * 0.95 / (2 * 0.6))
    for y, (_, r, tokens, states, changed) in enumerate(rows):
        for x in range(G):
            state = states[x]
            fresh = changed[x] or state == "mask"
            face = _blend(STATE_COLORS[state], 0.0 if fresh else 0.6)
            ax.add_patch(Rectangle((x, y), 1, 1, facecolor=face, edgecolor="white", linewidth=0.5))
            text = _fit_text(_cell_text(t, x, tokens[x], state), font, cell_pt)
            if text:
                color = "white" if fresh and state not in ("mask", "prior") else "black"
                ax.text(x + 0.5, y + 0.54, text[0], ha="center", va="center", fontsize=text[1],
                        color=color)
        if r is not None and r["kind"] == "cached":
            lo, hi = r["window"]
            if hi > lo:
                ax.add_patch(Rectangle((lo + 0.05, y + 0.06), hi - lo - 0.1, 0.88, fill=False,
                                       edgecolor="black", linewidth=1.0, linestyle=(0, (2, 1))))
    for b in range(0, G + 1, B):
        ax.axvline(b, color="black", linewidth=1.2)
    ax.axhline(1, color="black", linewidth=1.0)
    ax.set_xlim(0, G)
    ax.set_ylim(n_rows, 0)
    ax.set_yticks([i + 0.5 for i in range(len(rows))])
    ax.set_yticklabels([label for label, *_ in rows], fontsize=7)
    starts = list(range(0, G, B))
    ax.set_xticks([b + B / 2 for b in starts])
    ax.set_xticklabels([f"block {i}" for i in range(len(starts))], fontsize=7.5)
    ax.tick_params(length=0, pad=2)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    answer = " ".join(t.answer.split())
    answer = answer if len(answer) <= 80 else answer[:77] + "..."
    ax.set_title(f"{t.label}:  NFE {t.nfe}\nanswer: {answer}", fontsize=8.5, loc="left", pad=4)


def write_html(traces: Sequence[Trace], path: Union[str, Path]) -> Path:
    """A self-contained interactive page (inline script, no external resources)."""
    payload = {"format": JSON_FORMAT, "traces": [t.to_dict() for t in traces]}
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")
    page = (TEMPLATE.read_text(encoding="utf-8").replace("__DATA__", data)
            .replace("__COLORS__", json.dumps(STATE_COLORS))
            .replace("__LABELS__", json.dumps({k: html.escape(v) for k, v in STATE_LABELS.items()})))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
