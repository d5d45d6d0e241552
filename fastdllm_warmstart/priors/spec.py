"""``spec``: speculative verification of the draft in the same forward (WINO-style shadows).

The masked rules (``accept``, ``chain``, ``prefix``) judge each draft token with the block still
masked in front of it. ``spec`` judges draft token ``d_j`` the way the model would judge it had the
draft before it been committed: p(x_j | decided tokens, d_f..d_{j-1}, masks after), for the next
``lookahead`` open positions at once, in the forward the block needs anyway. The draft rides along
as *transient* queries (keys for this forward only, never cached; WINO's shadow block,
arXiv 2507.18578):

* ``D_t``: the draft token of the t-th open position, seeing the canvas with the drafts up to and
  including its own in place of those masks;
* ``S_t``: a [MASK] at the same position (its shadow, in place of that column's mask), seeing the
  canvas with the drafts *before* it in place of those masks, and neither its own draft token nor
  any later one.

The canvas itself sees no transient key, so the forward's ordinary predictions (and upstream's commit
rule on them) are exactly the cold ones: a draft can only add commits, never change the model's own.
After the commit, the run of the shadows' verdicts (the draft token ranked first, or given
``>= tau_accept``), from the first open position on and stopping where the canvas now disagrees with
the draft, is committed; upstream's forced sub-threshold guess is taken back in a row that got a
run (base class, point 4). With one layer the shadows' predictions are exactly those of the
speculative canvas (tested); deeper, the canvas keys they see are the cold ones, an approximation of
the same kind as Fast-dLLM's cache.

Cost: ``2 * lookahead`` more queries per forward; the model must support transient queries
(``TinyLLaDAModelLM``; upstream's ``LLaDAModelLM`` takes no position ids for extra queries).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.state import DecodeState, TransientInputs
from .base import DraftVerifier


def model_positions(state: DecodeState) -> torch.Tensor:
    """(B, L) model positions of the canvas columns (as the model derives them from padding)."""
    from ..models.tiny_llada import positions_from_mask

    B, L = state.x.shape
    return positions_from_mask(state.attention_mask, B, L, state.x.device)


class SpeculativeAccept(DraftVerifier):
    name = "spec"
    settings = ("tau_accept", "context")  # its run already starts at the first open position

    def __init__(self, proposals: torch.Tensor, tau_accept: float = 0.3, threshold: Optional[float] = 0.9,
                 context: str = "hidden", lookahead: int = 16):
        super().__init__(proposals, threshold=threshold, context=context)
        if not 0.0 < tau_accept <= 1.0:
            raise ValueError(f"tau_accept={tau_accept} must lie in (0, 1].")
        if lookahead < 1:
            raise ValueError(f"lookahead={lookahead} must be >= 1.")
        self.tau_accept, self.lookahead = tau_accept, lookahead
        # (B, K) canvas column of each shadow, -1 = unused; rows are set by the forward that counts
        # for them (a continuous batch runs several groups' before_forward before their commits).
        self.cols: Optional[torch.Tensor] = None

    def reset(self) -> None:
        super().reset()
        self.cols = None

    # -- the forward: drafts and their shadows as transient queries -----------------------------
    def _columns(self, state: DecodeState) -> torch.Tensor:
        """(B, K) the first K open block columns with a draft, in order (-1 past the last)."""
        s, e = state.block_start, state.block_end
        K = min(self.lookahead, e - s)
        usable = (state.x[:, s:e] == state.mask_id) & (state.prior_ids[:, s:e] >= 0)
        usable &= state.active.view(-1, 1)
        rank = usable.long().cumsum(dim=1) - 1  # (B, Wb): 0-based rank of each usable column
        cols = torch.full((state.batch_size, K), -1, dtype=torch.long, device=state.x.device)
        rows, offs = (usable & (rank < K)).nonzero(as_tuple=True)
        cols[rows, rank[rows, offs]] = s + offs
        return cols

    def before_forward(self, state: DecodeState) -> None:
        super().before_forward(state)  # later-block context, plain [MASK] in the block
        cols = self._columns(state)  # (B, K), -1 outside state.active
        if self.cols is None or self.cols.shape != cols.shape:
            self.cols = torch.full_like(cols, -1)
        self.cols[state.active] = cols[state.active]
        used = cols >= 0  # (B, K)
        if not bool(used.any()):
            return
        B, L = state.x.shape
        K = cols.shape[1]
        W = state.window[1] - state.window[0]
        dev = state.x.device
        t = torch.arange(K, device=dev)
        upto = (t.view(1, -1) <= t.view(-1, 1)).unsqueeze(0) & used.unsqueeze(1) & used.unsqueeze(2)  # (B, K, K)
        before = (t.view(1, -1) < t.view(-1, 1)).unsqueeze(0) & used.unsqueeze(1) & used.unsqueeze(2)
        safe_cols = cols.clamp(min=0)

        def hidden(sel: torch.Tensor) -> torch.Tensor:
            """(B, K, L): query t hides the canvas column of every t' with sel[t, t'] (its mask is
            replaced by the draft token D_t'). Unused t' all point at column 0 with False."""
            out = torch.zeros((B, K, L), dtype=torch.bool, device=dev)
            return out.scatter_(2, safe_cols.unsqueeze(1).expand(B, K, K), sel)

        d_hide = s_hide = hidden(upto)  # S_t also hides its own column: it stands in for it
        eye = torch.eye(K, dtype=torch.bool, device=dev).expand(B, K, K)
        att = torch.zeros((B, W + 2 * K, L + 2 * K), dtype=torch.bool, device=dev)
        att[:, :W, :L] = True                              # the canvas: cold, no transient key
        att[:, W:W + K, :L] = ~d_hide                      # D_t: canvas, drafts <= t in their place
        att[:, W:W + K, L:L + K] = upto | eye
        att[:, W + K:, :L] = ~s_hide                       # S_t: canvas, drafts < t in their place
        att[:, W + K:, L:L + K] = before
        att[:, W + K:, L + K:] = eye                       # and itself
        unused = ~used
        att[:, W:W + K][unused] = False
        att[:, W + K:][unused] = False
        att[:, W:W + K, L:L + K] |= eye  # an unused query sees itself only (no empty softmax)
        att[:, W + K:, L + K:] |= eye
        draft = torch.gather(state.prior_ids, 1, safe_cols).clamp(min=0)  # (B, K)
        d_ids = torch.where(used, draft, torch.full_like(draft, state.mask_id))
        s_ids = torch.full_like(draft, state.mask_id)
        pos = torch.gather(model_positions(state), 1, safe_cols)  # (B, K)
        state.transient = TransientInputs(embeds=state.embed(torch.cat((d_ids, s_ids), dim=1)),
                                          position_ids=torch.cat((pos, pos), dim=1), attention=att)

    # -- the run of the shadows' verdicts --------------------------------------------------------
    def after_commit(self, state: DecodeState) -> None:
        if self.cols is None or state.transient_logits is None:
            return
        cols = torch.where(state.active.view(-1, 1), self.cols, torch.full_like(self.cols, -1))  # (B, K)
        K = cols.shape[1]
        used = cols >= 0
        if not bool(used.any()):
            return
        safe = cols.clamp(min=0)
        shadow = self._banned(state.transient_logits[:, K:].float(), state)  # (B, K, V)
        probs = torch.softmax(shadow, dim=-1)
        draft = torch.gather(state.prior_ids, 1, safe)  # (B, K)
        p_draft = torch.gather(probs, -1, draft.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        support = used & ((probs.argmax(-1) == draft) | (p_draft >= self.tau_accept))
        # the canvas after the commit: still masked, a forced guess, or already the draft's token
        s, e = state.block_start, state.block_end
        w0 = state.window[0]
        x_blk = state.x[:, s:e]
        forced_blk = state.transfer[:, s - w0:e - w0] & self._below_threshold(
            self._block_probs(state, s - w0, e - w0), x_blk)  # (B, Wb) sub-threshold guesses
        at = (safe - s).clamp(0, e - s - 1)  # (B, K) block-relative columns of the shadows
        now = torch.gather(x_blk, 1, at)  # (B, K)
        forced = torch.gather(forced_blk, 1, at) & used
        agree = (now == draft) & (now != state.mask_id) & ~forced  # the model committed it itself
        fits = (now == state.mask_id) | forced
        run = (agree | (support & fits)).long().cumprod(dim=1).bool()  # (B, K) from the first on
        run &= ~agree
        rows = run.any(dim=1)
        if not bool(rows.any()):
            return
        # a forced guess anywhere in the block of a row with a run is taken back (base point 4)
        x_blk[forced_blk & rows.view(-1, 1)] = state.mask_id
        r, t = run.nonzero(as_tuple=True)
        state.x[r, cols[r, t]] = draft[r, t]
        state.extras["accepted_mask"][r, cols[r, t]] = True
        state.extras["accepted"] += run.sum(dim=1)
