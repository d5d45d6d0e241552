"""Residual Context Diffusion (RCD, arXiv 2601.22954) at inference, as one decoding callback.

A masked-diffusion model discards, at every step, its whole predicted distribution at the positions
it leaves masked. RCD feeds that information back: at a still-masked position ``i`` the next
forward's input is

    (1 - a_i) * E[mask] + a_i * D_i,     D_i = sum_j p_ij E_j,     a_i = H(p_i) / log V,

where ``p_i = softmax(logits_i / T_res)`` is the model's previous prediction there, ``E`` its own
input-embedding table and ``H`` the entropy: *uncertain* positions get the most residual (a
confident position is about to be committed anyway), and ``T_res < 1`` sharpens the distributions
at inference to match the entropy the model saw in training. Positions that are not masked keep
their plain embedding.

The stream starts (before a position has been predicted once) from

* ``zeros``: plain ``E[mask]`` (a_i = 0), or
* ``reference``: the distribution of one forward of a *reference* model (the model the RCD model was
  trained against) over the initial canvas, or
* a warm start: with ``--warm-init embed``, the aux draft's ``(1 - alpha) E[mask] + alpha E[draft]``
  is exactly such a soft input with a one-hot distribution, so the draft *is* the stream's start
  (the interpolation callback feeds it; this callback takes over at a position once the model has
  predicted it).

Residuals are kept per canvas column from the latest forward that covered it, so the callback works
with every cache strategy (a dual-cache step refreshes only the block; the suffix keeps the residuals
of the block's full forward). Only rows the forward counted for (``state.active``) are updated.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .engine.callbacks import DecodeCallback
from .engine.state import DecodeState

STARTS = ("zeros", "reference")


def residual_inputs(logits: torch.Tensor, table: torch.Tensor, t_res: float = 1.0):
    """(weights a (B, W), residual embeddings D (B, W, C)) from logits (B, W, V) and an embedding
    table (V, C): ``p = softmax(logits / t_res)``, ``a = H(p) / log V``, ``D = p @ E``."""
    probs = torch.softmax(logits.float() / t_res, dim=-1)  # (B, W, V)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)  # (B, W)
    weight = (entropy / math.log(probs.shape[-1])).clamp(0.0, 1.0)
    return weight, probs.to(table.dtype) @ table  # (B, W), (B, W, C)


def mix_residual(embeds: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``(1 - a) * embeds + a * residual`` with ``a`` (B, W) broadcast over the channels."""
    a = weight.unsqueeze(-1).to(embeds.dtype)  # (B, W, 1)
    return (1 - a) * embeds + a * residual.to(embeds.dtype)


class ResidualContext(DecodeCallback):
    """Feeds entropy-weighted soft residuals of the previous prediction at masked positions."""

    supports_refill = True  # a refilled row's stream starts afresh (on_refill)
    uses_block_step = False

    def __init__(self, t_res: float = 1.0, start: str = "zeros", reference: Optional[Any] = None):
        if not 0.0 < t_res <= 10.0:
            raise ValueError(f"t_res={t_res} must lie in (0, 10].")
        if start not in STARTS:
            raise ValueError(f"start={start!r}: use one of {', '.join(STARTS)}.")
        if start == "reference" and reference is None:
            raise ValueError("start='reference' needs the reference model (residual_reference=PATH).")
        self.t_res, self.start, self.reference = t_res, start, reference
        self.residual: Optional[torch.Tensor] = None  # (B, L, C)
        self.weight: Optional[torch.Tensor] = None    # (B, L)
        self.has: Optional[torch.Tensor] = None       # (B, L) bool: the column has a residual
        self.extra_forwards = 0

    def reset(self) -> None:
        self.residual = None
        self.weight = None
        self.has = None
        self.extra_forwards = 0

    def _store(self, state: DecodeState, logits: torch.Tensor, w0: int, w1: int,
               rows: Optional[torch.Tensor] = None) -> None:
        table = state.model.get_input_embeddings().weight  # (V, C)
        if self.residual is None:
            B, L = state.x.shape
            self.residual = torch.zeros((B, L, table.shape[1]), dtype=table.dtype, device=table.device)
            self.weight = torch.zeros((B, L), dtype=torch.float32, device=table.device)
            self.has = torch.zeros((B, L), dtype=torch.bool, device=table.device)
        update = state.x[:, w0:w1] == state.mask_id  # (B, W): residuals only where still masked
        if rows is not None:
            update &= rows.view(-1, 1)
        if not bool(update.any()):
            return
        # Only the masked positions: the softmax over V and p @ E are the stream's whole cost.
        weight, expected = residual_inputs(logits[update].unsqueeze(0), table, self.t_res)  # (1, N), (1, N, C)
        self.residual[:, w0:w1][update] = expected[0]
        self.weight[:, w0:w1][update] = weight[0]
        self.has[:, w0:w1] |= update

    def on_init(self, state: DecodeState) -> None:
        self._start(state, torch.arange(state.batch_size, device=state.x.device))

    def on_refill(self, state: DecodeState) -> None:
        if self.residual is not None:  # the previous problem's stream ends here
            self.weight[state.refilled] = 0
            self.has[state.refilled] = False
        self._start(state, state.refilled)

    def _start(self, state: DecodeState, rows: torch.Tensor) -> None:
        if self.start != "reference":
            return
        # One forward of the reference model over the rows' initial canvas starts their stream.
        kwargs = {} if state.attention_mask is None else {"attention_mask": state.attention_mask[rows]}
        logits = self.reference(input_ids=state.x[rows], **kwargs).logits  # (R, L, V)
        if rows.numel() != state.batch_size:
            full = logits.new_zeros((state.batch_size,) + tuple(logits.shape[1:]))
            full[rows] = logits
            logits = full
        self.extra_forwards += 1
        counts = state.extras.setdefault("reference_forwards", torch.zeros(
            state.batch_size, dtype=torch.long, device=state.x.device))
        counts[rows] = 1  # one reference forward started each row's stream
        selected = torch.zeros(state.batch_size, dtype=torch.bool, device=state.x.device)
        selected[rows] = True
        self._store(state, logits, 0, state.x.shape[1], rows=selected)

    def after_commit(self, state: DecodeState) -> None:
        # After the commit (and any verifier / remask): only positions that stay masked need a
        # residual for the next forward.
        w0, w1 = state.window
        self._store(state, state.logits, w0, w1, rows=state.active)

    def before_forward(self, state: DecodeState) -> None:
        if self.weight is None:
            return
        x_win = state.window_view(state.x)  # (B, W)
        use = state.window_view(self.has) & (x_win == state.mask_id)  # (B, W)
        if not bool(use.any()):
            return
        embeds = state.inputs_embeds if state.inputs_embeds is not None else state.embed(x_win)  # (B, W, C)
        # Where the model has predicted a position, its own residual replaces any earlier soft
        # input there (a warm start's interpolated draft is only the stream's start).
        plain = state.embed(x_win)
        mixed = mix_residual(plain, state.window_view(self.weight), state.window_view(self.residual))
        state.inputs_embeds = torch.where(use.unsqueeze(-1), mixed.to(embeds.dtype), embeds)
