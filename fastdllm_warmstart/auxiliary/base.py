"""What every proposer hands the warm start: one :class:`Proposal` per prompt.

A proposer is anything with ``propose(prompts, gen_length) -> List[Proposal]`` (the
:class:`Proposer` protocol): the aux model (:class:`~.drafter.AuxProposer`), a file of ready-made
proposals (:class:`~.file_proposals.FileProposals`), or a test's fixed table. The runner knows only
this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, runtime_checkable


class ProposalError(ValueError):
    """A proposal that cannot be placed on the dLLM canvas (or a tokenizer that cannot take one)."""


@dataclass
class Proposal:
    """One prompt's proposal; ``ok=False`` means the caller should cold-start this prompt."""

    prompt: str
    # The aux model's output text (or the file's proposal). None when no text was produced; kept
    # when the text exists but could not be aligned, so the warning can be followed up.
    text: Optional[str]
    # dLLM token ids, len == gen_length, EOS-filled tail; None when ok is False.
    token_ids: Optional[List[int]]
    ok: bool
    error: Optional[str]
    # Wall time attributed to this prompt (its batch's time / batch size); 0 from cache or file.
    aux_seconds: float
    # Aux tokens generated for this prompt, up to and excluding EOS / pad (as recorded in the
    # cache for cached proposals; 0 for file proposals).
    aux_tokens: int
    source: str  # "aux" | "cache" | "file"


@runtime_checkable
class Proposer(Protocol):
    """Drafts of the answers, already on the dLLM canvas."""

    def propose(self, prompts: Sequence[str], gen_length: int) -> List[Proposal]:
        """One :class:`Proposal` per prompt, in order; a prompt without one gets ``ok=False``."""
        ...


__all__ = ["Proposal", "ProposalError", "Proposer"]
