"""What every draft-verification rule shares: the draft stays out of the canvas until the dLLM
supports it, and supported drafts are committed as one contiguous run per block.

A rule is a :class:`DraftVerifier` subclass with one method, :meth:`DraftVerifier.supports`: given
the model's probabilities over the current block, say which draft tokens the model supports. The
base class does the rest, after every commit (numbers as in its docstring):

1. **Judge masked.** A warm start may have laid draft tokens into the canvas (token injection) or
   into the inputs (embedding interpolation). Before the first forward the verifier takes them
   back out: the canvas holds [MASK] wherever the model has not decided, and the current block's
   positions reach the model as plain [MASK], so its probability of a draft token is a real
   prediction, never an echo of its own input. Drafts of *later* blocks may stay visible as
   context (``context="visible"``: the injected / interpolated priors of the warm start), or be
   hidden too (``context="hidden"``, the default: unverified text never steers the model).
2. **Support.** ``supports(probs, draft, ...)`` marks the block positions whose draft token the
   model supports now.
3. **Contiguous run.** Supported drafts are committed only as a run that starts at the block's
   first undecided position and continues through decided ones. A draft token after a position
   the model has not settled is never taken, because it may depend on it (a wrong intermediate
   result is copied into the next step of a chain): it is judged again on the next forward, with
   everything before it decided and visible.
4. **No forced guesses beside a run.** Upstream's rule always commits at least one token per step,
   even below the threshold, only so that decoding progresses. In a row where a draft run was
   committed, such a sub-threshold forced token is taken back (the run is the progress), unless the
   run itself reaches it. Tokens the model committed at >= threshold always stay.
   With ``frontier_guess``, a row whose draft is not supported at its first open position gets its
   forced guess *there* (the model's own token) instead of at its most confident position, so the
   draft is judged again right after it: far fewer forwards with good drafts, but decoding turns
   left-to-right, which costs a weak model accuracy when the drafts are bad (README).

Accepted positions are recorded in ``state.extras["accepted_mask"]`` (B, L) and counted per row in
``state.extras["accepted"]``; only rows the forward counted for (``state.active``) are judged.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.callbacks import DecodeCallback
from ..engine.state import DecodeState, lay_proposals

CONTEXTS = ("hidden", "visible")


class DraftVerifier(DecodeCallback):
    """Base class of the acceptance rules (see the module docstring)."""

    name = "base"
    supports_refill = True
    uses_block_step = False
    # The run-config settings (``remask_*``) the rule's constructor takes besides ``proposals`` and
    # ``threshold``; ``build_verifier`` passes exactly these.
    settings = ("context", "frontier_guess")

    def __init__(self, proposals: torch.Tensor, threshold: Optional[float] = 0.9,
                 context: str = "hidden", frontier_guess: bool = False):
        if proposals.dim() != 2:
            raise ValueError("proposals must be a (B, gen_length) tensor (-1 = no proposal).")
        if context not in CONTEXTS:
            raise ValueError(f"context={context!r}: use one of {', '.join(CONTEXTS)}.")
        self.proposals = proposals
        self.threshold = threshold
        self.context = context
        self.visible: Optional[torch.Tensor] = None  # (B, L) bool: priors shown as later-block context
        self.lays = False  # the verifier lays the draft itself (no warm-start callback did)
        self.frontier_guess = frontier_guess  # see _guess_at_frontier

    def reset(self) -> None:
        self.visible = None

    # -- the one method a rule implements -------------------------------------------------------
    def supports(self, probs: torch.Tensor, draft: torch.Tensor, state: DecodeState,
                 undecided: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, Wb) bool: the model supports the draft token at these block positions.

        ``probs``: (B, Wb, V) the model's distribution over the block's columns of the window;
        ``draft``: (B, Wb) draft ids (clamped to >= 0; positions without a draft are never used);
        ``undecided``: (B, Wb) bool, the positions still open (masked, or a forced guess)."""
        raise NotImplementedError

    # -- 1. judge masked ------------------------------------------------------------------------
    def on_init(self, state: DecodeState) -> None:
        self.lays = state.prior_ids is None  # no warm-start callback laid the draft: lay it here
        self.visible = torch.zeros_like(state.x, dtype=torch.bool)
        B, L = state.x.shape
        state.extras["accepted_mask"] = torch.zeros((B, L), dtype=torch.bool, device=state.x.device)
        state.extras["accepted"] = torch.zeros(B, dtype=torch.long, device=state.x.device)
        self._start(state, torch.arange(B, device=state.x.device))

    def on_refill(self, state: DecodeState) -> None:
        self._start(state, state.refilled)  # the loop cleared the rows' accepted_mask / accepted

    def _start(self, state: DecodeState, rows: torch.Tensor) -> None:
        """Set up the rows' new problems: lay the draft (when no warm start did), and take
        injected priors back out of the canvas."""
        if self.lays:
            lay_proposals(state, self.proposals, rows)
        self.visible[rows] = False
        if state.injected is not None:  # token injection: take the priors back out of the canvas
            injected = state.injected[rows]  # (R, L)
            self.visible[rows] = injected
            state.x[rows] = state.x[rows].masked_fill(injected, state.mask_id)
            # From here on a draft is pending at every masked position with a prior (as with an
            # embedding warm start): nothing sits on the canvas until the model supports it.
            state.injected = None

    def before_forward(self, state: DecodeState) -> None:
        w0, w1 = state.window
        x_win = state.window_view(state.x)  # (B, W)
        cols = torch.arange(w0, w1, device=state.x.device)
        later = cols >= state.block_end  # (W,)
        show = torch.zeros_like(x_win, dtype=torch.bool)
        if self.context == "visible" and self.visible is not None:
            show = self.window_visible(state) & later & (x_win == state.mask_id)  # (B, W)
        if state.inputs_embeds is None:
            if not bool(show.any()):
                return
            ids = torch.where(show, state.window_view(state.prior_ids).clamp(min=0), x_win)
            state.inputs_embeds = state.embed(ids)  # (B, W, C)
            return
        # Another callback (embedding interpolation) fed the priors: keep that only where they
        # are context, and give every other masked position its plain [MASK] embedding.
        plain = (x_win == state.mask_id) & ~(later if self.context == "visible" else torch.zeros_like(later))
        if bool(plain.any()):
            embeds = state.inputs_embeds.clone()
            embeds[plain] = state.embed(x_win[plain]).to(embeds.dtype)
            state.inputs_embeds = embeds

    def window_visible(self, state: DecodeState) -> torch.Tensor:
        return state.window_view(self.visible)

    # -- 2-4. support, contiguous run, no forced guesses ------------------------------------------
    def after_commit(self, state: DecodeState) -> None:
        if state.logits is None:
            return
        w0, w1 = state.window
        lo, hi = max(w0, state.block_start), min(w1, state.block_end)
        if lo >= hi:
            return
        x_blk = state.x[:, lo:hi]  # (B, Wb) view
        draft = state.prior_ids[:, lo:hi]  # (B, Wb)
        probs = self._block_probs(state, lo - w0, hi - w0)  # (B, Wb, V)
        transfer = state.transfer[:, lo - w0:hi - w0] if state.transfer is not None else torch.zeros_like(draft, dtype=torch.bool)
        forced = transfer & self._below_threshold(probs, x_blk)  # (B, Wb) guesses made for progress
        undecided = (x_blk == state.mask_id) | forced
        # 2. the rule's verdict, on undecided positions that have a draft, in rows this step counts for
        support = self.supports(probs, draft.clamp(min=0), state, undecided) & undecided & (draft >= 0)
        support &= state.active.view(-1, 1)
        if self.frontier_guess:
            self._guess_at_frontier(state, x_blk, probs, forced, undecided, support)
        if not bool(support.any()):
            return
        # 3. contiguous run from the block's first undecided position
        decided = ~undecided | support
        run = decided.long().cumprod(dim=1).bool() & support  # (B, Wb)
        rows = run.any(dim=1)  # (B,)
        # 4. in rows with a run, take back forced sub-threshold guesses the run did not cover
        undo = forced & ~run & rows.view(-1, 1)
        x_blk[undo] = state.mask_id
        x_blk[run] = draft[run]
        state.extras["accepted_mask"][:, lo:hi] |= run
        state.extras["accepted"] += run.sum(dim=1)

    def _guess_at_frontier(self, state, x_blk, probs, forced, undecided, support) -> None:
        """Rows without support at their first open position: move upstream's forced guess there
        (the model's own token at the frontier), so the draft is judged again right after it."""
        first = undecided.long().cumsum(dim=1).eq(1) & undecided  # (B, Wb) the first open position
        stuck = ~(support & first).any(dim=1) & forced.any(dim=1) & state.active  # (B,)
        stuck &= ~(forced & first).any(dim=1)
        if not bool(stuck.any()):
            return
        move = forced & stuck.view(-1, 1)
        x_blk[move] = state.mask_id
        at = first & stuck.view(-1, 1)
        x_blk[at] = probs.argmax(dim=-1)[at]
        undecided &= ~at

    def _block_probs(self, state: DecodeState, c0: int, c1: int) -> torch.Tensor:
        """(B, Wb, V) the model's distributions over window columns [c0, c1) of the rows this
        forward counts for; zeros in the other rows (nothing of theirs is judged)."""
        logits = state.logits[:, c0:c1]
        active = state.active
        if active is None or bool(active.all()):
            return torch.softmax(self._banned(logits.float(), state), dim=-1)
        probs = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        probs[active] = torch.softmax(self._banned(logits[active].float(), state), dim=-1)
        return probs

    @staticmethod
    def _banned(logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """A copy of ``logits`` that, as the commit rule, never offers [MASK] or a real [PAD]."""
        logits = logits.clone()
        logits[..., state.mask_id] = float("-inf")
        if state.pad_id is not None and state.pad_id != state.eos_id:
            logits[..., state.pad_id] = float("-inf")
        return logits

    def _below_threshold(self, probs: torch.Tensor, x_blk: torch.Tensor) -> torch.Tensor:
        """(B, Wb) bool: the committed token's probability is below the commit threshold."""
        if self.threshold is None:  # fixed schedule: every commit is the schedule's own decision
            return torch.zeros_like(x_blk, dtype=torch.bool)
        p_committed = torch.gather(probs, -1, x_blk.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return p_committed < self.threshold
