"""The proposer a run asks for, built from its :class:`~fastdllm_warmstart.config.AuxConfig`.

Every proposer follows one protocol (:class:`~.base.Proposer`): ``propose(prompts, gen_length)``
returns one :class:`~.base.Proposal` per prompt. The pieces live apart: :mod:`.alignment` (text to
dLLM canvas), :mod:`.drafter` (drafting with a Hugging Face causal LM), :mod:`.file_proposals`
(a user's file), :mod:`.cache` (the aux text cache), :mod:`.model_files` (loading, fingerprints).
Their public names are importable from here too.
"""

from __future__ import annotations

from typing import Any

from ..config import AuxConfig
from .alignment import align_to_canvas, check_target_tokenizer
from .base import Proposal, ProposalError, Proposer
from .cache import ProposalCache
from .drafter import AuxProposer
from .file_proposals import FileProposals, ProposalFileError, prompt_key
from .model_files import model_fingerprint
from .model_files import resolve_model_path as _resolve_model_path  # noqa: F401  (older imports)


def build_proposer(config: AuxConfig, target_tokenizer: Any, *, device: Any = "cpu",
                   dtype: Any = None) -> Proposer:
    """:class:`FileProposals` when ``config.proposals`` is set, else the aux model (with a
    :class:`ProposalCache` when ``config.proposal_cache`` is set)."""
    if config.proposals:
        return FileProposals(config.proposals, target_tokenizer)
    cache = ProposalCache(config.proposal_cache) if config.proposal_cache else None
    return AuxProposer.from_pretrained(config.aux_model, target_tokenizer, config=config,
                                       device=device, dtype=dtype, cache=cache)


__all__ = ["Proposal", "ProposalError", "Proposer", "align_to_canvas", "check_target_tokenizer",
           "AuxProposer", "FileProposals", "ProposalCache", "ProposalFileError", "build_proposer",
           "model_fingerprint", "prompt_key"]
