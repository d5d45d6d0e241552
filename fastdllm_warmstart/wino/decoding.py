"""WINO (arXiv 2507.18578): wide-in, narrow-out revocable decoding, with no draft model.

One step of a block, for each row at its own block (the numbers recur in the code):

1. **Shadow.** ``before_forward`` appends the block's *shadow* to the forward: ``block_length``
   transient [MASK] queries (keys for this forward only, never cached) at the block's positions.
   Shadow query ``j`` sees every canvas key except the block's column ``j``, and every shadow key;
   no canvas query sees a shadow key, so the canvas's predictions (and the commit on them) are a
   plain forward's. The shadow's distribution at ``j`` is the model's verdict on column ``j`` with
   its own token hidden and everything else in place. This is the layout of the shadow block in
   the authors' released ``decoding_wino`` (read, not copied).
2. **Wide in.** The commit rule (:func:`~fastdllm_warmstart.engine.transfer.get_transfer_index_wide_in`):
   every masked block position whose confidence exceeds ``tau_in``, at least the most confident
   one; with ``cap``, at most ``min(max(floor(0.7 m), 5), 20)`` of them (``m`` masked in the block).
3. **Narrow out.** ``after_commit``: every block token that was already decoded when the forward
   ran (committed by an earlier step, or a prior laid by a warm start) and to which its shadow gives
   less than ``tau_out`` goes back to [MASK]; tokens this step committed are judged at the next.
   As WINO, only after a step that committed more than one token (a step that only made its forced
   commit re-masks nothing), and with ``cap`` at most (the previous step's commits - 1) tokens, the
   least supported first (WINO's constant 30 stands for the previous step at a block's start).
4. The loop ends the block once no [MASK] is left in it.

Beyond the authors' code:

* **Priors** (``warm_init=token``): the aux model's draft is the wide-in of a block's first step:
  the priors in the block count as that step's commits and are judged on the shadow like WINO's own
  tokens (a re-masked prior is an ordinary [MASK] from then on). The draft is thus verified by
  WINO's narrow-out instead of a ``--remask`` rule.
* **A bound.** WINO's loop does not bound re-masking; here narrow-out stops after ``block_length``
  steps of a block, after which wide-in alone finishes it (>= 1 commit a step), so a block ends
  within ``2 x block_length`` forwards. ``extras["wino_remasked"]`` counts each row's re-masks
  (also in ``revisions``, the bench's ``revoked``).

Cost: a step is one forward (one NFE, as WINO counts it) whose queries grow by ``block_length``: a
dual-cache step computes ``2 x block_length`` queries instead of ``block_length`` (over ``L +
block_length`` keys); a full forward (no cache, or a block's first) ``L + block_length`` instead of
``L``. Every cache mode holds the shadow: its keys never enter the cache, and the canvas keys it
sees are the cache's (Fast-dLLM's approximation, as for the canvas itself). The model must take
transient queries (``supports_transient_queries``: the embedded tiny model; upstream's
``LLaDAModelLM`` does not, and is refused with that message).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from ..engine.callbacks import DecodeCallback
from ..engine.state import DecodeState, TransientInputs
from ..engine.transfer import get_transfer_index_wide_in
from ..priors.spec import model_positions
from .config import WinoConfig

# WINO's "previous step's commits" at a block's first step (its code's ``last_accept = 30``).
FIRST_LAST_ACCEPT = 30


def wide_in_rule(config: WinoConfig):
    """The commit rule of a WINO run (``generate(..., threshold=config.tau_in, transfer_fn=...)``)."""
    return functools.partial(get_transfer_index_wide_in, cap=config.cap)


class NarrowOut(DecodeCallback):
    """WINO's shadow block and narrow-out (steps 1 and 3 of the module docstring)."""

    supports_refill = True
    # block_step is read only to tell a block's first forward from later ones; the bound on a
    # block's narrow-outs counts each row's own forwards (``steps``), so rows at different later
    # steps of a continuous batch may share one event.
    uses_block_step = False

    def __init__(self, tau_out: float = 0.9, cap: bool = True):
        if not 0.0 < tau_out <= 1.0:
            raise ValueError(f"tau_out={tau_out} must lie in (0, 1].")
        self.tau_out, self.cap = tau_out, cap
        # Per row, set by the forward that counts for it (a continuous batch runs several groups'
        # before_forward before their commits): block positions decoded when it ran (B, block) and
        # the commits of the row's previous step in its block (B,).
        self.judged: Optional[torch.Tensor] = None
        self.last: Optional[torch.Tensor] = None
        self.steps: Optional[torch.Tensor] = None  # (B,) forwards so far in the row's block

    def reset(self) -> None:
        self.judged, self.last, self.steps = None, None, None

    def on_init(self, state: DecodeState) -> None:
        if not getattr(state.model, "supports_transient_queries", False):
            raise ValueError(f"WINO needs a model that takes transient queries for its shadow block "
                             f"(supports_transient_queries); {type(state.model).__name__} does not. "
                             "Drop wino, or use the embedded model.")
        B, dev = state.batch_size, state.x.device
        self.judged = torch.zeros((B, state.block_length), dtype=torch.bool, device=dev)
        self.last = torch.full((B,), FIRST_LAST_ACCEPT, dtype=torch.long, device=dev)
        self.steps = torch.zeros((B,), dtype=torch.long, device=dev)
        if state.revisions is None:
            state.revisions = torch.zeros_like(state.x)
        state.extras["wino_remasked"] = torch.zeros(B, dtype=torch.long, device=dev)

    # -- 1. the shadow ----------------------------------------------------------------------------
    def before_forward(self, state: DecodeState) -> None:
        rows = state.active  # (B,)
        s, e = state.block_start, state.block_end
        self.judged[rows] = state.x[rows, s:e] != state.mask_id
        if state.block_step == 0:
            self.last[rows] = FIRST_LAST_ACCEPT
            self.steps[rows] = 0
        B, L = state.x.shape
        T = e - s
        W = state.window[1] - state.window[0]
        dev = state.x.device
        att = torch.zeros((B, W + T, L + T), dtype=torch.bool, device=dev)
        att[:, :W, :L] = True                   # the canvas: a plain forward, no shadow key
        att[:, W:, :L] = True                   # shadow j: the canvas ...
        j = torch.arange(T, device=dev)
        att[:, W + j, s + j] = False            # ... except its own column
        att[:, W:, L:] = True                   # and the whole shadow
        ids = torch.full((B, T), state.mask_id, dtype=torch.long, device=dev)
        pos = model_positions(state)[:, s:e]  # (B, T) the block's model positions
        state.transient = TransientInputs(embeds=state.embed(ids), position_ids=pos, attention=att)

    # -- 3. narrow out ----------------------------------------------------------------------------
    def after_commit(self, state: DecodeState) -> None:
        if state.transient_logits is None or self.judged is None:
            return
        rows = state.active
        steps = self.steps.clone()  # each row's forwards in its block before this one
        self.steps[rows] += 1
        s, e = state.block_start, state.block_end
        w0 = state.window[0]
        x_blk = state.x[:, s:e]  # (B, T) view
        judged = self.judged & rows.view(-1, 1)
        committed = state.transfer[:, s - w0:e - w0].sum(dim=1)  # (B,)
        accepted = committed + (judged.sum(dim=1) if state.block_step == 0 else 0)  # priors: step 0's wide-in
        last = self.last.clone()
        self.last = torch.where(rows, accepted, self.last)
        go = rows & (accepted > 1) & (steps < state.block_length)  # (B,)
        if not bool(go.any()):
            return
        logits = state.transient_logits.float().clone()  # (B, T, V); zeros in rows not computed
        logits[..., state.mask_id] = float("-inf")  # as the commit rule: [MASK] is never a verdict
        if state.pad_id is not None and state.pad_id != state.eos_id:
            logits[..., state.pad_id] = float("-inf")
        p_self = torch.softmax(logits, dim=-1).gather(-1, x_blk.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out = judged & go.view(-1, 1) & (p_self < self.tau_out)  # (B, T)
        if self.cap:
            out = self._cap(out, p_self, last)
        if not bool(out.any()):
            return
        x_blk[out] = state.mask_id
        state.revisions[:, s:e] += out.long()
        state.extras["wino_remasked"] += out.sum(dim=1)
        if state.injected is not None:  # a re-masked prior is an ordinary [MASK] from now on
            state.injected[:, s:e] &= ~out
        revoked = torch.zeros_like(state.x, dtype=torch.bool)
        revoked[:, s:e] = out
        state.revoked = state.window_view(revoked)

    @staticmethod
    def _cap(out: torch.Tensor, p_self: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """WINO's cap: a row that would re-mask at least ``last`` tokens re-masks only the
        ``last - 1`` its shadow supports least."""
        n = out.sum(dim=1)  # (B,)
        limit = torch.where(n >= last, (last - 1).clamp(min=0), n)  # (B,)
        score = p_self.masked_fill(~out, float("inf"))
        order = torch.sort(score, dim=1, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(out.shape[1], device=out.device)
                                                .expand_as(order))
        return out & (rank < limit.view(-1, 1))
