"""The auxiliary proposer: answer drafts from a small AR model (or a file), aligned to the dLLM canvas."""

from .alignment import align_to_canvas, check_target_tokenizer
from .base import Proposal, ProposalError, Proposer
from .cache import ProposalCache
from .drafter import AuxProposer
from .file_proposals import FileProposals, ProposalFileError
from .model_files import model_fingerprint
from .proposer import build_proposer

__all__ = ["AuxProposer", "FileProposals", "Proposal", "ProposalCache", "ProposalError",
           "ProposalFileError", "Proposer", "align_to_canvas", "build_proposer",
           "check_target_tokenizer", "model_fingerprint"]
