"""Text to dLLM canvas: a draft in any tokenizer's words becomes ``gen_length`` dLLM token ids.

Going through text is what makes two unrelated tokenizers meet: the aux tokenizer may split
``"12"`` into ``"1", "##2"`` while the dLLM keeps it whole.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional

from .base import Proposal, ProposalError

logger = logging.getLogger(__name__)


def check_target_tokenizer(target_tokenizer: Any) -> int:
    """The dLLM tokenizer's EOS id; :class:`ProposalError` if it has none."""
    eos_id = getattr(target_tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ProposalError(
            "The dLLM tokenizer has no eos_token_id, so the canvas tail after a proposal cannot be "
            "filled. Set tokenizer.eos_token to the token the dLLM pads answers with.")
    return int(eos_id)


def align_to_canvas(text: str, target_tokenizer: Any, gen_length: int) -> List[int]:
    """Re-encode ``text`` with the dLLM tokenizer onto a canvas of ``gen_length`` ids.

    1. Encode without special tokens.
    2. Reject an empty encoding, or one holding the dLLM's mask id (or its pad id when that differs
       from EOS): such a canvas would pretend positions are still undecided.
    3. Truncate to ``gen_length`` and fill the tail with the dLLM's EOS id, as LLaDA's SFT data
       pads answers.

    Raises :class:`ProposalError` for the rejections above and when the tokenizer has no EOS id.
    """
    check_gen_length(gen_length)
    eos_id = check_target_tokenizer(target_tokenizer)
    ids = list(target_tokenizer.encode(text, add_special_tokens=False))       # 1.
    if not ids:                                                               # 2.
        raise ProposalError("the proposal text encodes to no dLLM tokens")
    forbidden = {"mask": getattr(target_tokenizer, "mask_token_id", None)}
    pad_id = getattr(target_tokenizer, "pad_token_id", None)
    if pad_id != eos_id:
        forbidden["pad"] = pad_id
    for name, token_id in forbidden.items():
        if token_id is not None and token_id in ids:
            raise ProposalError(f"the proposal re-encodes to the dLLM's {name} token "
                                f"(id {token_id}), which cannot sit on the canvas as a proposal")
    ids = ids[:gen_length]                                                    # 3.
    return ids + [eos_id] * (gen_length - len(ids))


def check_gen_length(gen_length: Any) -> None:
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length must be a positive integer, got {gen_length!r}.")


def aligned_proposal(index: int, prompt: str, text: Optional[str], target_tokenizer: Any,
                     gen_length: int, *, aux_seconds: float, aux_tokens: int, source: str,
                     error: Optional[str] = None) -> Proposal:
    """The :class:`Proposal` for prompt ``index``: ``text`` aligned to the canvas, or ``ok=False``
    with the reason (logged as a warning: that prompt will be cold-started)."""
    token_ids = None
    if error is None and not (text or "").strip():
        error = "the aux output is empty" if source != "file" else "the proposal is empty"
    if error is None:
        try:
            token_ids = align_to_canvas(text, target_tokenizer, gen_length)
        except ProposalError as exc:
            error = f"cannot align the proposal to the dLLM tokenizer: {exc}"
    if error is not None:
        logger.warning("No proposal for prompt %d (%s): %s; it will be cold-started.",
                       index, _short(prompt), error)
    return Proposal(prompt=prompt, text=text, token_ids=token_ids, ok=error is None, error=error,
                    aux_seconds=aux_seconds, aux_tokens=aux_tokens, source=source)


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


__all__ = ["align_to_canvas", "aligned_proposal", "check_gen_length", "check_target_tokenizer"]
