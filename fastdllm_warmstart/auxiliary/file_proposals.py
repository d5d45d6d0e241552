"""Ready-made proposals from a user's JSONL file, one ``{"prompt": ..., "proposal": ...}`` per line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from ..jsonl_store import InputFileError, read_jsonl_lines
from .alignment import aligned_proposal, check_target_tokenizer
from .base import Proposal, ProposalError

PathLike = Union[str, "os.PathLike[str]"]

PROPOSAL_FIELDS = {"prompt": str, "proposal": str}


class ProposalFileError(InputFileError, ProposalError):
    """A malformed proposals file: an :class:`InputFileError` (file, line, field) that callers
    catching :class:`ProposalError` see too."""


class FileProposals:
    """Proposals read from a JSONL file, checked when it is opened.

    Prompts are matched by :func:`prompt_key` (all whitespace ignored: a prompt decoded from token
    ids may space its punctuation differently from the text the task gave). A prompt that is not
    in the file gets ``Proposal(ok=False, error="no proposal for this prompt")``. A missing file raises
    ``FileNotFoundError``; a malformed one :class:`ProposalFileError`, naming the file, the line and
    the field.
    """

    def __init__(self, path: PathLike, target_tokenizer: Any) -> None:
        check_target_tokenizer(target_tokenizer)
        self.path = Path(path)
        self.target_tokenizer = target_tokenizer
        self._proposals = read_proposal_file(self.path)

    def __len__(self) -> int:
        return len(self._proposals)

    def propose(self, prompts: Sequence[str], gen_length: int) -> List[Proposal]:
        """One :class:`Proposal` per prompt, in order (``source="file"``, no aux cost)."""
        results = []
        for i, prompt in enumerate(prompts):
            text = self._proposals.get(prompt_key(prompt))
            error = "no proposal for this prompt" if text is None else None
            results.append(aligned_proposal(i, prompt, text, self.target_tokenizer, gen_length,
                                            aux_seconds=0.0, aux_tokens=0, source="file", error=error))
        return results


def prompt_key(prompt: str) -> str:
    """How a proposal file's prompt and a decoded prompt are compared: whitespace removed."""
    return "".join(prompt.split())


def read_proposal_file(path: PathLike) -> Dict[str, str]:
    """``{prompt_key(prompt): proposal}`` of a proposals file; two different proposals for one prompt
    are a :class:`ProposalFileError` too."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"Proposal file {str(path)!r} does not exist; pass a JSONL file "
                                f"with one {{\"prompt\": ..., \"proposal\": ...}} object per line.")
    try:
        lines = read_jsonl_lines(path, PROPOSAL_FIELDS, what="proposal line")
    except InputFileError as exc:
        raise ProposalFileError(path, exc.reason, exc.line) from None
    proposals: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    for lineno, record in lines:
        key = prompt_key(record["prompt"])
        if key in proposals and proposals[key] != record["proposal"]:
            raise ProposalFileError(path, f"field 'prompt' repeats the prompt of line "
                                          f"{first_line[key]} with a different 'proposal'; keep one "
                                          "of them.", lineno)
        proposals[key] = record["proposal"]
        first_line.setdefault(key, lineno)
    return proposals


__all__ = ["FileProposals", "PROPOSAL_FIELDS", "ProposalFileError", "prompt_key",
           "read_proposal_file"]
