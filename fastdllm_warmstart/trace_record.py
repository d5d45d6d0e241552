"""The trace recorder: a decoding callback that keeps, per forward, what every canvas cell holds.

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

Drawing and writing a trace is :mod:`fastdllm_warmstart.trace_render`'s job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

import torch

from .engine.callbacks import DecodeCallback
from .engine.state import DecodeState

STATES = ("mask", "prior", "accepted", "revoked", "committed", "eos")
MASK, PRIOR, ACCEPTED, REVOKED, COMMITTED, EOS = range(len(STATES))
# Where a position's current token came from.
_NONE, _FROM_PRIOR, _FROM_MODEL, _ACCEPTED_BY_HOOK = range(4)

# (B, L) bool in ``state.extras``: positions whose prior a callback accepted (draft verifiers).
ACCEPTED_MASK_KEY = "accepted_mask"


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
        from .trace_render import draw_png

        return draw_png([self], path, **kwargs)

    def save_html(self, path: Union[str, Path]) -> Path:
        from .trace_render import write_html

        return write_html([self], path)

    def save_json(self, path: Union[str, Path]) -> Path:
        from .trace_render import write_json

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
