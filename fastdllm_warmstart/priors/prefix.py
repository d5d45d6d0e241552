"""``prefix``: the agreeing prefix of APD (arXiv 2506.00413) — commit the longest run of draft
tokens, from the block's first undecided position, that equal the dLLM's own prediction (its
argmax) there. No probability level to tune: the model must rank the draft token first.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.state import DecodeState
from .base import DraftVerifier


class AgreeingPrefix(DraftVerifier):
    name = "prefix"

    def supports(self, probs: torch.Tensor, draft: torch.Tensor, state: DecodeState,
                 undecided: Optional[torch.Tensor] = None) -> torch.Tensor:
        return probs.argmax(dim=-1) == draft  # (B, Wb)
