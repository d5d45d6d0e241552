"""The one explicit state object every callback receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from .protocol import MaskPredictor


@dataclass
class TransientInputs:
    """Extra queries a ``before_forward`` hook adds to one forward (models with
    ``supports_transient_queries``): their keys/values serve this forward only.

    ``embeds`` (B, T, C) their input embeddings; ``position_ids`` (B, T) their model positions;
    ``attention`` (B, W + T, L + T) bool: what each query (the window's W, then the T transient)
    may see among the L canvas keys, then the T transient keys."""

    embeds: torch.Tensor
    position_ids: torch.Tensor
    attention: torch.Tensor


@dataclass
class DecodeState:
    """Everything the decoding loop knows, batch-first.

    Canvas-wide tensors are ``(B, L)`` with ``L = prompt_width + gen_length``; per-forward tensors
    are ``(B, W)`` over the forward's window ``[window[0], window[1])``.

    In a continuous batch (``batching="refill"``, :mod:`fastdllm_warmstart.engine.rows`) the rows
    sit in different blocks and steps, and a finished row takes the next problem. Hooks still see
    one block at a time: every event is fired once per group of rows that share a block and a
    block step (or, where no callback ``uses_block_step``, that share a block and are all at its
    first step or all past it; the group reports its smallest step), with ``block``/``block_start``/``block_end``/``block_step``/``window`` those of the
    group and ``active`` marking its rows; ``problem`` says which problem each row holds, and
    ``on_refill`` announces the rows (``refilled``) that just received a new one.
    """

    model: Any
    x: torch.Tensor                       # (B, L) long: the canvas
    attention_mask: Optional[torch.Tensor]  # (B, L) long, 0 at left padding; None = no padding
    prompt_width: int                     # P: padded prompt length, generation starts here
    prompt_lengths: torch.Tensor          # (B,) real prompt lengths
    gen_length: int
    block_length: int
    mask_id: int
    eos_id: Optional[int]
    pad_id: Optional[int]
    generator: torch.Generator            # seeded randomness for callbacks
    # The model family's protocol (:mod:`.protocol`): how to call the model and read its logits.
    # ``logits`` below are always per position (already shifted for a Dream-protocol model).
    protocol: Any = field(default_factory=MaskPredictor)

    # Prior bookkeeping, filled by warm-start callbacks.
    prior_ids: Optional[torch.Tensor] = None   # (B, L) long proposal ids, -1 where none
    injected: Optional[torch.Tensor] = None    # (B, L) bool: holds an injected, unconfirmed token
    confirmed: Optional[torch.Tensor] = None   # (B, L) bool: prior the model has confirmed
    revisions: Optional[torch.Tensor] = None   # (B, L) long: times a position was revoked

    # Loop position.
    block: int = 0
    block_start: int = 0
    block_end: int = 0
    block_step: int = 0                   # forwards so far in the current block
    step: int = 0                         # forwards so far in the whole generation
    window: Tuple[int, int] = (0, 0)      # columns the last/next forward covers

    # Per-forward data.
    inputs_embeds: Optional[torch.Tensor] = None  # (B, W, C) supplied by before_forward hooks
    transient: Optional[TransientInputs] = None   # extra queries for the next forward only
    logits: Optional[torch.Tensor] = None         # (B, W, V) of the last forward (zeros in rows it
                                                  # left out: ``active`` False, skip_done_rows)
    transient_logits: Optional[torch.Tensor] = None  # (B, T, V) of the transient queries
    x0: Optional[torch.Tensor] = None             # (B, W) proposed tokens of the last commit
    confidence: Optional[torch.Tensor] = None     # (B, W) float64 prob of x0 (masked cols)
    transfer: Optional[torch.Tensor] = None       # (B, W) bool: committed by the last commit
    revoked: Optional[torch.Tensor] = None        # (B, W) bool: remasked after the last commit

    # Accounting.
    nfe: Optional[torch.Tensor] = None    # (B,) long: forwards each row needed
    # (B,) long: query positions the model computed for each row (window and transient queries of
    # every forward that computed the row, counted for rows that only rode along too): on a CPU,
    # where a forward costs per query, this is what the time follows.
    queries: Optional[torch.Tensor] = None
    # (B,) bool: rows the current forward counts for, set before ``before_forward``. False for a row
    # whose block is done (or that stopped early) and only rides along with its batch: hooks must
    # leave such a row unchanged, so that it decodes as it would alone.
    active: Optional[torch.Tensor] = None
    total_nfe: int = 0                    # forward calls made (upstream's counter)
    # (B,) long: the problem (index into the prompts) each row decodes, -1 for an empty row; in a
    # static batch arange(B). Per-problem tensors of a hook (its proposals) are indexed by it.
    problem: Optional[torch.Tensor] = None
    refilled: Optional[torch.Tensor] = None  # (R,) long: the rows ``on_refill`` announces
    finished: Optional[torch.Tensor] = None  # (B,) bool: rows stopped early
    extras: dict = field(default_factory=dict)  # free space for third-party hooks

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def gen_slice(self) -> slice:
        return slice(self.prompt_width, self.prompt_width + self.gen_length)

    def window_view(self, t: torch.Tensor) -> torch.Tensor:
        """Slice a canvas-wide ``(B, L, ...)`` tensor to the current window."""
        return t[:, self.window[0]:self.window[1]]

    def block_masks(self) -> torch.Tensor:
        """(B,) number of [MASK] positions left in the current block."""
        return (self.x[:, self.block_start:self.block_end] == self.mask_id).sum(dim=1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``ids`` via the model's own embedding table."""
        return self.model.get_input_embeddings()(ids)


def lay_proposals(state: DecodeState, proposals: torch.Tensor, rows: torch.Tensor) -> None:
    """Lay the proposals of the rows' problems (``proposals`` (N, G), indexed by
    ``state.problem``) onto ``state.prior_ids`` (created when None); a [MASK] proposal is none."""
    N, G = proposals.shape
    problems = rows if state.problem is None else state.problem[rows]  # None: a static batch
    if G != state.gen_length or (problems.numel() and int(problems.max()) >= N):
        raise ValueError(f"proposals have shape {(N, G)}; the prompts need "
                         f"({int(problems.max()) + 1}, {state.gen_length}) (one row per prompt).")
    if state.prior_ids is None:
        state.prior_ids = torch.full_like(state.x, -1)
    prior = proposals.to(state.x.device)[problems]  # (R, G)
    prior = prior.masked_fill(prior == state.mask_id, -1)
    state.prior_ids[rows, state.gen_slice] = prior


def row_stats(state: DecodeState) -> Dict[str, torch.Tensor]:
    """(B,) per-row counters: early stop, priors left / revoked / confirmed, the hooks' extras,
    and each row's share of the model calls (a call's cost split equally among its rows)."""
    P, B = state.prompt_width, state.batch_size
    stats = {"finished_early": state.finished.clone()}
    if state.queries is not None:
        stats["model_queries"] = state.queries.clone()
    if state.injected is not None:
        stats["injected_left"] = state.injected[:, P:].sum(1)
    if state.revisions is not None:
        stats["revoked"] = state.revisions[:, P:].sum(1)
    if state.confirmed is not None:
        stats["confirmed"] = state.confirmed[:, P:].sum(1)
    for key, value in state.extras.items():
        if isinstance(value, torch.Tensor) and value.shape[:1] == (B,):
            stats[key] = value.clone()
    return stats
