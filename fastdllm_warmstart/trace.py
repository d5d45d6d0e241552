"""Watch one decoding: record its trajectory with a callback, draw it as PNG / HTML, dump JSON.

    from fastdllm_warmstart.trace import trace
    t = trace("Question: Tom has 7 apples. He buys 5 more apples. How many apples does Tom have "
              "now?\nAnswer:", warm_init="token", remask=True)   # the prompt as the model sees it
    t.nfe, t.answer
    t.save_png("trace.png"); t.save_html("trace.html"); t.save_json("trace.json")

Command line: ``fastdllm-warmstart trace --prompt ... [generate flags] --out trace.png [--html
trace.html] [--json trace.json] [--compare "--warm-init none" "--warm-init token --remask"]``.

What is recorded: :class:`TraceRecorder` is an ordinary :class:`DecodeCallback` (the loop is not
changed for it) and must run *after* every other callback, so that it sees each forward's final
outcome. Per forward pass, for every generation position, it stores the token the canvas holds,
the cell's state (:data:`STATES`), the model's probability for it, and which forward it was:
the window the cache strategy recomputed, hence *full* (the whole canvas, which refreshes a
prefix/dual cache) or *cached* (only the block, or the block and what follows it, against the
cache). One row per forward the row needed, so a trace has exactly ``nfe`` rows.

Cell states, decided from the canvas and the prior bookkeeping on :class:`DecodeState`:

* ``mask``      [MASK], no prior.
* ``prior``     holds an unverified prior: an injected token, or (embedding warm start) a masked
  position that is fed the interpolated proposal.
* ``accepted``  a prior that was confirmed or accepted. A callback marks priors accepted in any
  of three ways: ``state.confirmed[b, col] = True`` (what
  :class:`~fastdllm_warmstart.warmstart.ConfidenceRemask` does; create the (B, L) tensor if it is
  None), a (B, L) bool ``state.extras["accepted_mask"]`` (the draft verifiers of
  ``fastdllm_warmstart.priors``), or simply writing the proposal's token (``state.prior_ids``)
  into a masked position itself, outside the model's commit, without flagging it in
  ``state.injected`` (a position flagged there holds an unverified injected prior).
* ``revoked``   a prior taken back (the canvas token back to [MASK], the embedding prior dropped, or
  ``state.revisions`` counted up); the cell stays ``revoked`` until the model commits a token there.
* ``committed`` a token the model committed itself.
* ``eos``       an EOS token the model committed (or early stop filled in).
"""

from __future__ import annotations

import argparse
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch

from .engine.callbacks import DecodeCallback
from .engine.state import DecodeState

STATES = ("mask", "prior", "accepted", "revoked", "committed", "eos")
MASK, PRIOR, ACCEPTED, REVOKED, COMMITTED, EOS = range(len(STATES))
# Where a position's current token came from.
_NONE, _FROM_PRIOR, _FROM_MODEL, _ACCEPTED_BY_HOOK = range(4)

STATE_COLORS = {
    "mask": "#d9d9d9", "prior": "#f4a81d", "accepted": "#1a9850", "revoked": "#d73027",
    "committed": "#2b6cb0", "eos": "#7b6a9e",
}
STATE_LABELS = {
    "mask": "[MASK]", "prior": "injected prior (unverified)", "accepted": "prior confirmed / accepted",
    "revoked": "prior revoked", "committed": "committed by the model", "eos": "EOS",
}
JSON_FORMAT = "fastdllm-warmstart-trace/1"
# (B, L) bool in ``state.extras``: positions whose prior a callback accepted (draft verifiers).
ACCEPTED_MASK_KEY = "accepted_mask"


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------

@dataclass
class _Step:
    """One forward, for all rows of the batch (tensors are (B, G) over generation positions)."""

    index: int                 # forward number in the batch (0-based)
    block: int
    block_step: int
    window: tuple              # (lo, hi) canvas columns the forward recomputed
    full: bool                 # the window covered the whole canvas
    active: torch.Tensor       # (B,) bool: rows this forward counted for (their NFE)
    tokens: torch.Tensor       # (B, G) long
    states: torch.Tensor       # (B, G) int8 codes of STATES
    changed: torch.Tensor      # (B, G) bool: state or token differs from the row before
    prob: torch.Tensor         # (B, G) float: p(held token), p(top guess) at masks; nan = not computed
    top: torch.Tensor          # (B, G) long: model's top guess at masked cells, -1 elsewhere
    prior_prob: torch.Tensor   # (B, G) float: p(the position's proposal token); nan = none / not computed


class TraceRecorder(DecodeCallback):
    """Records a decoding's trajectory (see the module docstring). Register it *last*."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps: List[_Step] = []
        self.meta: Dict[str, Any] = {}
        self.initial: Optional[Dict[str, torch.Tensor]] = None
        self._tokens: Optional[torch.Tensor] = None   # (B, G) last observed canvas
        self._origin: Optional[torch.Tensor] = None   # (B, G) where each token came from
        self._prior_fed: Optional[torch.Tensor] = None  # (B, G) embedding prior available
        self._revoked: Optional[torch.Tensor] = None  # (B, G) sticky revoked flag
        self._revisions: Optional[torch.Tensor] = None
        self._states: Optional[torch.Tensor] = None
        self.final: Optional[torch.Tensor] = None

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _gen(state: DecodeState, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else t[:, state.gen_slice]

    def _prior_available(self, state: DecodeState, tokens: torch.Tensor) -> torch.Tensor:
        """(B, G) masked positions fed an embedding prior (no canvas token: token mode is None)."""
        if state.prior_ids is None or state.injected is not None:
            return torch.zeros_like(tokens, dtype=torch.bool)
        return (tokens == state.mask_id) & (self._gen(state, state.prior_ids) >= 0)

    def _observe(self, state: DecodeState, committed: Optional[torch.Tensor],
                 initial: bool = False) -> tuple:
        """Update origin / revoked bookkeeping from the canvas; returns (states, changed).

        ``committed`` (B, G): positions the model's commit rule filled in this forward."""
        tokens = self._gen(state, state.x).clone()  # (B, G)
        mask = tokens == state.mask_id
        none = torch.zeros_like(mask)
        prior_ids = self._gen(state, state.prior_ids)
        fed = self._prior_available(state, tokens)
        confirmed = self._gen(state, state.confirmed)
        accepted_mask = state.extras.get(ACCEPTED_MASK_KEY)
        accepted_mask = (self._gen(state, accepted_mask.bool())
                         if isinstance(accepted_mask, torch.Tensor) and accepted_mask.shape == state.x.shape
                         else None)
        injected = self._gen(state, state.injected)
        revisions = self._gen(state, state.revisions)
        prev_tokens, origin = self._tokens, self._origin.clone()
        # 1. Revocations: a held prior went back to [MASK], an embedding prior was dropped, or a
        #    callback counted a revision.
        held_prior = (((origin == _FROM_PRIOR) | (origin == _ACCEPTED_BY_HOOK))
                      & (prev_tokens != state.mask_id))
        revoked_now = (held_prior & mask) | (self._prior_fed & ~fed & mask)
        if revisions is not None:
            before = self._revisions if self._revisions is not None else torch.zeros_like(revisions)
            revoked_now |= (revisions > before) & mask
            self._revisions = revisions.clone()
        # 2. Where new tokens came from: the model's commit, early stop's EOS fill, or a callback
        #    (an injected prior, or the proposal's own token written outside the commit = accepted).
        appeared = ~mask & (tokens != prev_tokens)
        by_model = appeared & (committed if committed is not None else none)
        by_hook = appeared & ~by_model
        eos_fill = none
        if state.eos_id is not None and state.finished is not None:
            eos_fill = by_hook & (tokens == state.eos_id) & state.finished.view(-1, 1)
        hook_accepts = none
        if prior_ids is not None and not initial:
            hook_accepts = by_hook & ~eos_fill & (tokens == prior_ids)
            if injected is not None:
                hook_accepts &= ~injected
        origin[mask] = _NONE
        origin[by_model | eos_fill] = _FROM_MODEL
        origin[by_hook & ~eos_fill] = _FROM_PRIOR
        origin[hook_accepts] = _ACCEPTED_BY_HOOK
        self._revoked = (self._revoked | revoked_now) & mask & ~fed
        self._tokens, self._origin, self._prior_fed = tokens, origin, fed
        # 3. States, later rules winning.
        states = torch.full_like(tokens, MASK, dtype=torch.int8)
        states[fed] = PRIOR
        from_model = ~mask & (origin == _FROM_MODEL)
        states[from_model] = COMMITTED
        if state.eos_id is not None:
            states[from_model & (tokens == state.eos_id)] = EOS
        states[~mask & (origin == _FROM_PRIOR)] = PRIOR
        states[~mask & (origin == _ACCEPTED_BY_HOOK)] = ACCEPTED
        if confirmed is not None:
            states[confirmed & (~mask | fed) & ~from_model] = ACCEPTED
            if prior_ids is not None:  # confirmed and committed in one step (embedding mode)
                states[confirmed & from_model & (tokens == prior_ids)] = ACCEPTED
        if accepted_mask is not None:
            states[accepted_mask & ~mask] = ACCEPTED
        states[self._revoked] = REVOKED
        changed = (states != self._states) | (tokens != prev_tokens)
        self._states = states
        return states, changed

    # -- events ----------------------------------------------------------------------------
    def on_init(self, state: DecodeState) -> None:
        tokens = self._gen(state, state.x).clone()
        B, G = tokens.shape
        self.meta = {"prompt_width": state.prompt_width, "gen_length": state.gen_length,
                     "block_length": state.block_length, "mask_id": state.mask_id,
                     "eos_id": state.eos_id, "canvas_length": state.x.shape[1],
                     "prompt_lengths": state.prompt_lengths.tolist()}
        self._tokens = torch.full_like(tokens, state.mask_id)
        self._origin = torch.zeros_like(tokens)
        self._prior_fed = torch.zeros_like(tokens, dtype=torch.bool)
        self._revoked = torch.zeros_like(tokens, dtype=torch.bool)
        self._states = torch.full_like(tokens, MASK, dtype=torch.int8)
        prior_ids = self._gen(state, state.prior_ids)
        # Whatever sits on the generation canvas before the first forward is a prior.
        states, _ = self._observe(state, committed=None, initial=True)
        self.initial = {"tokens": tokens, "states": states.clone(),
                        "prior": prior_ids.clone() if prior_ids is not None else torch.full_like(tokens, -1)}

    def before_forward(self, state: DecodeState) -> None:
        self._fold_in_between(state)

    def on_finish(self, state: DecodeState) -> None:
        self._fold_in_between(state)
        self.final = self._gen(state, state.x).clone()

    def _fold_in_between(self, state: DecodeState) -> None:
        """Canvas changes between forwards (early-stop EOS fill, hooks at block start) belong to
        the last row each batch row had (or to the initial canvas)."""
        tokens = self._gen(state, state.x)
        if self._tokens is None or torch.equal(tokens, self._tokens):
            return
        states, changed = self._observe(state, committed=None)
        rows = changed.any(dim=1)  # (B,)
        for b in rows.nonzero(as_tuple=True)[0].tolist():
            last = next((s for s in reversed(self.steps) if bool(s.active[b])), None)
            if last is None:
                self.initial["tokens"][b] = self._tokens[b]
                self.initial["states"][b] = states[b]
                continue
            last.tokens[b] = self._tokens[b]
            last.states[b] = states[b]
            last.changed[b] |= changed[b]

    def after_commit(self, state: DecodeState) -> None:
        P, G = state.prompt_width, state.gen_length
        w0, w1 = state.window
        committed = torch.zeros_like(self._tokens, dtype=torch.bool)
        lo, hi = max(w0, P), min(w1, P + G)  # generation columns inside the window
        if state.transfer is not None and hi > lo:
            committed[:, lo - P:hi - P] = state.transfer[:, lo - w0:hi - w0]
        states, changed = self._observe(state, committed)
        tokens = self._tokens
        B = tokens.shape[0]
        prob = torch.full((B, G), math.nan, dtype=torch.float32)
        top = torch.full((B, G), -1, dtype=torch.long)
        prior_prob = torch.full((B, G), math.nan, dtype=torch.float32)
        if state.logits is not None and hi > lo:
            logp = torch.log_softmax(state.logits[:, lo - w0:hi - w0].float(), dim=-1)  # (B, n, V)
            held = tokens[:, lo - P:hi - P]  # (B, n)
            masked = held == state.mask_id
            p_held = logp.gather(-1, held.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()
            p_top, arg_top = logp.max(dim=-1)  # (B, n)
            prob[:, lo - P:hi - P] = torch.where(masked, p_top.exp(), p_held).cpu()
            top[:, lo - P:hi - P] = torch.where(masked, arg_top, torch.full_like(arg_top, -1)).cpu()
            prior = self.initial["prior"][:, lo - P:hi - P].to(logp.device)
            p_prior = logp.gather(-1, prior.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()
            prior_prob[:, lo - P:hi - P] = torch.where(prior >= 0, p_prior,
                                                       torch.full_like(p_prior, math.nan)).cpu()
        # The cache strategy chose the window (engine/cache.py): the whole canvas is a full
        # forward (no cache, or step 0 filling the prefix/dual cache); anything narrower ran
        # against the cache (prefix: block + suffix; dual: the block).
        active = state.active if state.active is not None else torch.ones(B, dtype=torch.bool)
        self.steps.append(_Step(
            index=len(self.steps), block=state.block, block_step=state.block_step, window=(w0, w1),
            full=(w0, w1) == (0, state.x.shape[1]), active=active.clone().cpu(),
            tokens=tokens.clone().cpu(), states=states.clone().cpu(), changed=changed.clone().cpu(),
            prob=prob, top=top, prior_prob=prior_prob))

    # -- results ---------------------------------------------------------------------------
    def trace(self, row: int = 0, **info: Any) -> "DecodeTrace":
        """The recorded trajectory of batch row ``row``; ``info`` adds label, prompt, etc."""
        if self.initial is None:
            raise ValueError("Nothing recorded: pass the recorder to generate(callbacks=[..., recorder]).")
        P, G = self.meta["prompt_width"], self.meta["gen_length"]
        rows = []
        for s in self.steps:
            if not bool(s.active[row]):
                continue
            lo, hi = max(s.window[0] - P, 0), min(s.window[1] - P, G)
            rows.append({
                "forward": len(rows) + 1, "block": s.block, "block_step": s.block_step,
                "kind": "full" if s.full else "cached", "window": [lo, max(hi, lo)],
                "tokens": s.tokens[row].tolist(), "states": [STATES[c] for c in s.states[row].tolist()],
                "changed": s.changed[row].tolist(),
                "prob": [_num(v) for v in s.prob[row].tolist()],
                "top": s.top[row].tolist(),
                "prior_prob": [_num(v) for v in s.prior_prob[row].tolist()],
            })
        final = (self.final if self.final is not None else self._tokens)[row].tolist()
        initial = {"tokens": self.initial["tokens"][row].tolist(),
                   "states": [STATES[c] for c in self.initial["states"][row].tolist()],
                   "prior": self.initial["prior"][row].tolist()}
        meta = dict(self.meta)
        meta["prompt_tokens"] = int(meta.pop("prompt_lengths")[row])
        return DecodeTrace(rows=rows, initial=initial, final_tokens=final, meta=meta, **info)


def _num(value: float) -> Optional[float]:
    return None if math.isnan(value) else round(float(value), 5)


# --------------------------------------------------------------------------------------------
# The trace object
# --------------------------------------------------------------------------------------------

@dataclass
class DecodeTrace:
    """One prompt's decoding: ``rows`` (one per forward), the initial canvas, the final tokens."""

    rows: List[Dict[str, Any]]
    initial: Dict[str, Any]
    final_tokens: List[int]
    meta: Dict[str, Any]
    label: str = ""
    prompt: str = ""
    answer: str = ""
    nfe: Optional[int] = None
    vocab: Dict[int, str] = field(default_factory=dict)   # id -> display text of ids used
    config: Dict[str, Any] = field(default_factory=dict)
    model: Optional[str] = None

    @property
    def num_forwards(self) -> int:
        return len(self.rows)

    def text(self, token_id: int) -> str:
        return self.vocab.get(int(token_id), str(token_id))

    def to_dict(self) -> Dict[str, Any]:
        return {"label": self.label, "prompt": self.prompt, "answer": self.answer, "nfe": self.nfe,
                "model": self.model, "config": self.config, "states": list(STATES),
                **self.meta, "vocab": {str(k): v for k, v in sorted(self.vocab.items())},
                "initial": self.initial, "final_tokens": self.final_tokens, "forwards": self.rows}

    def save_png(self, path: Union[str, Path], **kwargs: Any) -> Path:
        return draw_png([self], path, **kwargs)

    def save_html(self, path: Union[str, Path]) -> Path:
        return write_html([self], path)

    def save_json(self, path: Union[str, Path]) -> Path:
        return write_json([self], path)


def token_texts(tokenizer: Any, ids: Iterable[int], mask_id: int, eos_id: Optional[int]) -> Dict[int, str]:
    """Short display text per id (the tokenizer's own decoding of it; a WordPiece continuation's
    '##' dropped), EOS and [MASK] named."""
    out: Dict[int, str] = {}
    for tid in sorted({int(i) for i in ids if int(i) >= 0}):
        if tid == mask_id:
            out[tid] = "[MASK]"
            continue
        if eos_id is not None and tid == eos_id:
            out[tid] = "EOS"
            continue
        try:
            piece = tokenizer.decode([tid])
        except Exception:  # noqa: BLE001 - any tokenizer quirk: fall back to the id
            piece = None
        if not isinstance(piece, str):
            piece = str(tid)
        if piece.startswith("##") and piece.strip("#"):
            piece = piece[2:]
        out[tid] = piece.strip() or repr(piece)
    return out


# --------------------------------------------------------------------------------------------
# Decoding one prompt with a recorder
# --------------------------------------------------------------------------------------------

def describe(config) -> str:
    """A short label of a run config: 'cold', 'token rho=0.25 + remask', ... and the cache."""
    w = config.warm
    if not w.enabled:
        mode = "cold"
    elif w.warm_init == "token":
        mode = f"token rho={w.rho:g}"
    else:
        mode = f"embed alpha={w.alpha:g}"
    if w.enabled and config.remask.enabled:
        mode += " + remask"
    return f"{mode} | {config.decode.cache} cache"


def trace_with_runner(runner, prompt: str, *, config=None, label: Optional[str] = None,
                      apply_chat_template: Optional[bool] = None) -> DecodeTrace:
    """Decode ``prompt`` (already formatted for the model) with ``runner`` and ``config`` (None:
    the runner's own), recording it."""
    config = config if config is not None else runner.config
    recorder = TraceRecorder()
    saved = runner.extra_callbacks
    runner.extra_callbacks = list(saved) + [recorder]  # after the warm-start callbacks
    try:
        result = runner.generate_batch([prompt], config, apply_chat_template=apply_chat_template)[0]
    finally:
        runner.extra_callbacks = saved
    t = recorder.trace(0, label=label if label is not None else describe(config),
                       prompt=prompt, answer=result.text, nfe=result.nfe,
                       config=config.to_dict(), model=getattr(runner, "model_id", None))
    ids = set(t.final_tokens) | set(t.initial["tokens"]) | set(t.initial["prior"])
    for r in t.rows:
        ids |= set(r["tokens"]) | set(r["top"])
    t.vocab = token_texts(runner.tokenizer, ids, t.meta["mask_id"], t.meta["eos_id"])
    return t


def trace(prompt: str, model: Optional[str] = None, *, config=None, device: str = "cpu",
          dtype: Any = None, fast_dllm_path: Optional[str] = None, runner=None,
          apply_chat_template: Optional[bool] = None, label: Optional[str] = None,
          **settings: Any) -> DecodeTrace:
    """Decode one prompt and return its :class:`DecodeTrace`.

    ``settings`` are the flat config keys (``warm_init="token", remask=True, cache="prefix",
    gen_length=48, ...``) over ``config`` (a :class:`RunConfig`; default: the runner's config when
    a ``runner`` is given, else the defaults). Pass a loaded ``runner`` to reuse its model (it
    decodes with the traced config, its own is left as it is); else ``model`` (None = the
    embedded tiny dLLM) is loaded. The prompt is given to the model as is (plus its chat
    template, if it has one).
    """
    from .config import RunConfig, configs_from_flat
    from .runner import WarmStartRunner

    if config is None:
        config = runner.config if runner is not None else RunConfig()
    base = config.to_flat()
    run_config = configs_from_flat({**base, **settings})
    if runner is None:
        runner = WarmStartRunner.from_pretrained(model, run_config, device=device, dtype=dtype,
                                                 fast_dllm_path=fast_dllm_path)
    return trace_with_runner(runner, prompt, config=run_config, label=label,
                             apply_chat_template=apply_chat_template)


# --------------------------------------------------------------------------------------------
# Output: JSON, PNG, HTML
# --------------------------------------------------------------------------------------------

def write_json(traces: Sequence[DecodeTrace], path: Union[str, Path]) -> Path:
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


def _cell_text(t: DecodeTrace, x: int, token: int, state: str) -> str:
    """A cell's text: its token (EOS as an arrow); a revoked cell shows the prior it lost; masks
    and the model's own EOS cells (their colour says it) none."""
    if state == "revoked":
        token = t.initial["prior"][x]
    if state in ("mask", "eos") or token < 0 or token == t.meta["mask_id"]:
        return ""
    return EOS_MARK if token == t.meta["eos_id"] else t.text(token)


def draw_png(traces: Sequence[DecodeTrace], path: Union[str, Path], *, dpi: int = 150,
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
    handles = [Patch(facecolor=STATE_COLORS[s], edgecolor="none", label=STATE_LABELS[s]) for s in STATES]
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


def _draw_panel(ax, t: DecodeTrace, n_rows: int, cell_pt: float, Rectangle) -> None:
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


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fastdllm-warmstart trace</title>
<style>
body{font:13px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#222}
.panels{display:flex;gap:28px;align-items:flex-start;flex-wrap:wrap}
.panel h2{font-size:14px;margin:0 0 2px}.panel p{margin:0 0 8px;color:#444;max-width:900px}
table.grid{border-collapse:collapse;table-layout:fixed}
.grid td{width:22px;min-width:22px;height:18px;padding:0;text-align:center;font-size:9px;
 overflow:hidden;white-space:nowrap;border:1px solid #fff;cursor:default}
.grid td.lab{width:54px;min-width:54px;text-align:right;padding-right:6px;color:#555;font-size:10px;border:none}
.grid td.bs{border-left:2px solid #000}
.grid td.win{box-shadow:inset 0 2px 0 #000,inset 0 -2px 0 #000}
.grid tr.init td{border-bottom:2px solid #000}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;
 margin-right:4px;vertical-align:-2px}
#tip{position:fixed;pointer-events:none;background:#111;color:#fff;padding:6px 8px;border-radius:4px;
 font-size:12px;display:none;white-space:pre;z-index:9}
</style></head><body>
<h1 style="font-size:16px">Decoding trace</h1>
<p class="legend" id="legend"></p>
<p style="color:#555">Rows are forward passes (F = full forward over the whole canvas, c = cached forward:
it recomputed only the framed cells); pale cells are unchanged since the row above.
Hover a cell for its token and the model's probability.</p>
<div class="panels" id="panels"></div><div id="tip"></div>
<script>
const DATA = __DATA__;
const COLORS = __COLORS__, LABELS = __LABELS__;
function pale(hex, a){const c=[1,3,5].map(i=>parseInt(hex.substr(i,2),16));
 return 'rgb('+c.map(v=>Math.round(v+(255-v)*a)).join(',')+')';}
function fmt(p){return p===null||p===undefined?'not computed (cached)':p.toFixed(3);}
const tip=document.getElementById('tip');
document.getElementById('legend').innerHTML=DATA.traces[0].states.map(s=>
 '<span><i style="background:'+COLORS[s]+'"></i>'+LABELS[s]+'</span>').join('');
DATA.traces.forEach(t=>{
 const txt=id=>(t.vocab[String(id)]!==undefined?t.vocab[String(id)]:String(id));
 const div=document.createElement('div');div.className='panel';
 const h=document.createElement('h2');h.textContent=t.label;div.appendChild(h);
 const p=document.createElement('p');p.textContent='NFE '+t.nfe+' \\u00b7 answer: '+t.answer;div.appendChild(p);
 const tab=document.createElement('table');tab.className='grid';
 const rows=[{label:'init',tokens:t.initial.tokens,states:t.initial.states,init:true}].concat(
   t.forwards.map(r=>Object.assign({label:r.forward+' '+(r.kind==='full'?'F':'c')},r)));
 rows.forEach(r=>{
  const tr=document.createElement('tr');if(r.init)tr.className='init';
  const l=document.createElement('td');l.className='lab';l.textContent=r.label;tr.appendChild(l);
  for(let x=0;x<t.gen_length;x++){
   const td=document.createElement('td'),s=r.states[x],tok=r.tokens[x];
   const fresh=r.init||r.changed[x]||s==='mask';
   td.style.background=fresh?COLORS[s]:pale(COLORS[s],0.55);
   if(fresh&&s!=='mask'&&s!=='prior')td.style.color='#fff';
   if(x%t.block_length===0)td.classList.add('bs');
   if(!r.init&&r.kind==='cached'&&x>=r.window[0]&&x<r.window[1])td.classList.add('win');
   const shown=s==='revoked'?t.initial.prior[x]:tok;
   let show=(s==='mask'||s==='eos'||shown<0||shown===t.mask_id)?'':
     (shown===t.eos_id?'\u21b5':txt(shown));
   td.textContent=show.length<=3?show:show.substr(0,2)+'\u2026';
   td.onmousemove=e=>{
    let lines=['position '+x+' (block '+Math.floor(x/t.block_length)+')',
      r.init?'initial canvas':'forward '+r.forward+' ('+r.kind+'), block '+r.block+' step '+r.block_step,
      'state: '+LABELS[s]+(r.changed&&r.changed[x]&&!r.init?' (new)':''),
      'token: '+(tok===t.mask_id?'[MASK]':txt(tok))];
    if(!r.init){
     if(s==='mask'||s==='revoked'){lines.push('model\\'s top guess: '+(r.top[x]>=0?txt(r.top[x]):'-')+'  p='+fmt(r.prob[x]));}
     else{lines.push('p(token) = '+fmt(r.prob[x]));}
    }
    const pr=t.initial.prior[x];
    if(pr>=0){lines.push('prior: '+txt(pr)+(r.init?'':'  p(prior)='+fmt(r.prior_prob[x])));}
    tip.textContent=lines.join('\\n');tip.style.display='block';
    tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';};
   td.onmouseleave=()=>{tip.style.display='none';};
   tr.appendChild(td);
  }
  tab.appendChild(tr);
 });
 div.appendChild(tab);document.getElementById('panels').appendChild(div);
});
</script></body></html>
"""


def write_html(traces: Sequence[DecodeTrace], path: Union[str, Path]) -> Path:
    """A self-contained interactive page (inline script, no external resources)."""
    payload = {"format": JSON_FORMAT, "traces": [t.to_dict() for t in traces]}
    data = json.dumps(payload, ensure_ascii=False).replace("</", "<\\/")
    page = (_HTML.replace("__DATA__", data)
            .replace("__COLORS__", json.dumps(STATE_COLORS))
            .replace("__LABELS__", json.dumps({k: html.escape(v) for k, v in STATE_LABELS.items()})))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path




# --------------------------------------------------------------------------------------------
# Command line: fastdllm-warmstart trace
# --------------------------------------------------------------------------------------------

class _SpecParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line through the CLI's error path, exit 2
        raise ValueError(f"--compare: {message}")


def _compare_configs(args, base_config) -> List[tuple]:
    """(label, RunConfig) per ``--compare`` spec: the spec's flags over the command's flags."""
    import shlex

    from .cli import add_run_flags, run_config_from_args

    specs = list(args.compare or [])
    if len(specs) < 2:
        raise ValueError("--compare needs at least two modes, each one quoted string of flags, e.g. "
                         "--compare \"--warm-init none\" \"--warm-init token --remask\" (a mode that is "
                         "a single flag needs a trailing space inside the quotes: \"--remask \").")
    parser = _SpecParser(prog="--compare", add_help=False)
    add_run_flags(parser)
    out = []
    for spec in specs:
        ns = parser.parse_args(shlex.split(spec))
        out.append((spec.strip(), run_config_from_args(ns, base=base_config.to_flat())))
    labels = [describe(cfg) for _, cfg in out]
    if len(set(labels)) < len(labels):  # the short description does not tell them apart
        labels = [spec or "(command flags)" for spec, _ in out]
    return [(label, cfg) for label, (_, cfg) in zip(labels, out)]


def _cmd_trace(args) -> int:
    from .cli import format_cli_prompts, run_config_from_args
    from .runner import WarmStartRunner

    config = run_config_from_args(args)
    modes = _compare_configs(args, config) if args.compare is not None else [(None, config)]
    runner = WarmStartRunner.from_pretrained(args.model, modes[0][1], device=args.device,
                                             dtype=args.dtype, fast_dllm_path=args.fast_dllm_path,
                                             threads=args.threads)
    prompt = format_cli_prompts(runner, [args.prompt], args.template)[0]
    traces = []
    for label, cfg in modes:
        traces.append(trace_with_runner(runner, prompt, config=cfg, label=label))
    out = args.out
    if out is None and args.html is None and args.json is None:
        out = "trace.png"
    written = []
    if out is not None:
        written.append(draw_png(traces, out))
    if args.html is not None:
        written.append(write_html(traces, args.html))
    if args.json is not None:
        written.append(write_json(traces, args.json))
    for t in traces:
        print(f"{t.label}: NFE {t.nfe}, answer: {t.answer}")
    for path in written:
        print(f"Wrote {path}")
    return 0


def add_trace_parser(sub) -> None:
    from .cli import add_model_flags, add_run_flags, add_verbose_flag

    p = sub.add_parser("trace", help="decode one prompt and draw its trajectory (PNG, HTML, JSON)",
                       description="Decode one prompt and draw it: generation positions across, "
                                   "forward passes down, each cell coloured by what it holds.")
    p.add_argument("--prompt", required=True, help="the prompt (formatted as for generate)")
    p.add_argument("--template", help="format string with {prompt} (as for generate)")
    p.add_argument("--out", help="PNG to draw (default trace.png unless --html/--json is given)")
    p.add_argument("--html", help="also write an interactive self-contained HTML page here")
    p.add_argument("--json", help="also write the raw recorded events here")
    p.add_argument("--compare", nargs="+", metavar="FLAGS",
                   help="decode once per quoted string of run flags (over the command's flags) and "
                        "draw them side by side, e.g. --compare \"--warm-init none\" "
                        "\"--warm-init token --remask\"")
    add_verbose_flag(p)
    add_model_flags(p)
    add_run_flags(p)
    p.set_defaults(func=_cmd_trace)


__all__ = ["STATES", "STATE_COLORS", "TraceRecorder", "DecodeTrace", "trace", "trace_with_runner",
           "describe", "draw_png", "write_html", "write_json", "token_texts", "add_trace_parser"]
