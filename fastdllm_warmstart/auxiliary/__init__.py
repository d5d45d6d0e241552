"""The auxiliary proposer: answer drafts from a small AR model, aligned to the dLLM canvas."""

from .cache import ProposalCache
from .proposer import (AuxProposer, FileProposals, Proposal, ProposalError, align_to_canvas,
                       build_proposer, check_target_tokenizer, model_fingerprint)

__all__ = ["AuxProposer", "FileProposals", "Proposal", "ProposalCache", "ProposalError",
           "align_to_canvas", "build_proposer", "check_target_tokenizer", "model_fingerprint"]
