"""Model protocols: what differs between the model families the one loop decodes.

The loop (:mod:`.loop`) and the cache strategies (:mod:`.cache`) are the same for every family;
a protocol object says how to call a family's model and how to read its output:

* :class:`MaskPredictor` (LLaDA and the embedded tiny model): the logit at canvas position ``p``
  is the model's prediction for ``p``; the block's first forward commits by the rule in force.
* :class:`ShiftedPredictor` (the Dream protocol: a diffusion LM adapted from an autoregressive one
  keeps the AR head, so the logit at ``p`` predicts token ``p + 1``):

  1. per-position logits are the raw ones moved one column right: column ``p`` of the window
     reads the logit the model computed at ``p - 1``. The window's first column reads the
     previous position's logit from the last forward that computed it; a cached window starts
     at the block start, whose previous position (the last prompt or committed token) was last
     computed by the block's full forward (the cache keeps that position as it was then, so its
     logit is kept too). Column 0 of the canvas, which has no previous position, reads its own.
  2. Dream's commit: the full forward that opens a block commits the block's first position
     alone (when it is still masked), greedily, whatever its confidence; every later forward
     commits by the rule in force.
  3. Dream's cache: every cached block runs one cached forward after the full one even when
     the full one filled the block (``min_cached_block_steps = 2``).

  Hooks see ``state.logits`` already shifted, so a warm start, a verifier or the RCD stream
  reads the distribution of the token *at* each canvas position, as with a mask predictor.
* :class:`UpstreamDream` adds the calling convention of Fast-dLLM's ``DreamModel``: keys/values
  ``(B, L, C)`` (the sequence on dim 1), the dual cache switched on by ``dual_cache=True`` with a
  single shared ``replace_position`` row, and a 4-d boolean attention mask.

:func:`protocol_for` picks the protocol from the model's config (``model_type``), never from a
user's flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:  # state.py imports this module for its default protocol
    from .state import DecodeState

# model_type values of the Dream protocol: the hub / Fast-dLLM checkpoints, and the test model.
DREAM_MODEL_TYPES = frozenset({"Dream", "dream"})
SHIFTED_MODEL_TYPES = DREAM_MODEL_TYPES | frozenset({"tiny_dream"})


class MaskPredictor:
    """The LLaDA protocol: logits are per position, the model takes our keywords as they are."""

    name = "mask-predictor"
    shifted = False
    kv_seq_dim = 2                   # keys/values (B, H, L, Dh)
    min_cached_block_steps = 1       # none beyond the loop variant's own
    replace_position_rows: Optional[str] = None  # None: the loop decides ("batch" / "shared")
    supports_transient = True        # transient queries, where the model takes them
    supports_refill = True           # continuous batching

    def call(self, model: Any, kwargs: dict):
        """One forward of ``model`` with the cache strategy's keyword arguments."""
        return model(**kwargs)

    def position_logits(self, state: "DecodeState", logits: torch.Tensor) -> torch.Tensor:
        """(B, W, V) logits of the tokens at the window's columns, from the forward's (B, W, V)."""
        return logits

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-position logits of a forward over a whole canvas (a reference model's, for RCD)."""
        return logits

    def commit_columns(self, state: "DecodeState") -> Optional[slice]:
        """Block-relative columns this step may commit; None = every masked one."""
        return None

    def forced_commit(self, state: "DecodeState") -> bool:
        """True when this step commits its columns whatever their confidence."""
        return False


class ShiftedPredictor(MaskPredictor):
    """The Dream protocol on a model with our keywords (the tiny test model)."""

    name = "shifted"
    shifted = True
    min_cached_block_steps = 2
    # A transient query at position q predicts q + 1: the draft verifier that uses them (spec)
    # would judge the wrong column.
    supports_transient = False
    # The shift reads the previous column of one shared block window; rows at different blocks
    # (continuous batching) would need one remembered column each.
    supports_refill = False

    def __init__(self) -> None:
        self._previous: Optional[torch.Tensor] = None  # (B, V) raw logit at block_start - 1

    def position_logits(self, state: "DecodeState", logits: torch.Tensor) -> torch.Tensor:
        w0, w1 = state.window
        if w0 <= state.block_start - 1 < w1:  # 1. remember the block start's previous position
            self._previous = logits[:, state.block_start - 1 - w0]  # (B, V)
        if w0 == 0:
            first = logits[:, :1]  # (B, 1, V): column 0 has no previous position
        elif state.block_start == w0 and self._previous is not None:
            first = self._previous.unsqueeze(1)  # (B, 1, V) from the block's full forward
        else:
            raise RuntimeError(f"window {state.window} starts inside the block at column "
                               f"{state.block_start}: no logit for its first column.")
        return torch.cat((first, logits[:, :-1]), dim=1)  # (B, W, V)

    def full_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.cat((logits[:, :1], logits[:, :-1]), dim=1)  # (B, L, V)

    def commit_columns(self, state: "DecodeState") -> Optional[slice]:
        return slice(0, 1) if state.block_step == 0 else None  # 2. the block's first position

    def forced_commit(self, state: "DecodeState") -> bool:
        return state.block_step == 0


class UpstreamDream(ShiftedPredictor):
    """Fast-dLLM's ``DreamModel`` (``dream/model/modeling_dream.py``, either layout)."""

    name = "dream"
    kv_seq_dim = 1                   # keys/values (B, L, C) before the heads are split
    # The model replaces the columns of replace_position's nonzero entries taken over all rows
    # together, so a batch needs one shared row.
    replace_position_rows = "shared"

    def call(self, model: Any, kwargs: dict):
        kwargs = dict(kwargs)
        if kwargs.get("replace_position") is not None:
            kwargs["dual_cache"] = True  # its dual-cache path is off unless asked for
        mask = kwargs.pop("attention_mask", None)
        if mask is not None:  # (B, L) 0 at padding -> (B, 1, 1, L) keys each query may see
            kwargs["attention_mask"] = mask.bool()[:, None, None, :]
        return model(**kwargs)


def model_type(model: Any) -> Optional[str]:
    return getattr(getattr(model, "config", None), "model_type", None)


def protocol_for(model: Any) -> MaskPredictor:
    """A fresh protocol object for ``model`` (one per generation: the shift keeps a column)."""
    kind = model_type(model)
    if kind in DREAM_MODEL_TYPES:
        return UpstreamDream()
    if kind in SHIFTED_MODEL_TYPES or getattr(model, "logit_shift", False):
        return ShiftedPredictor()
    return MaskPredictor()


def is_shifted(model: Any) -> bool:
    """Whether ``model`` follows the Dream protocol (its logit at ``p`` predicts ``p + 1``)."""
    return protocol_for(model).shifted


def canvas_logits(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits of the tokens at each position of a whole canvas ``input_ids`` (B, L):
    one forward, read by the model's protocol (a Dream-protocol model's moved one column)."""
    protocol = protocol_for(model)
    return protocol.full_logits(protocol.call(model, {"input_ids": input_ids}).logits)
