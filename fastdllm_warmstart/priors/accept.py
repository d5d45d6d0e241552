"""``accept``: commit a draft token once the dLLM gives it probability >= ``tau_accept``, or ranks it
first (``argmax=True``), below the commit threshold.

Why this is not the same as lowering the threshold: a lowered threshold commits the model's own
low-confidence *marginals*, several at once, and independent marginals can mix two wordings or two
candidate numbers into an answer no single reading supports. A draft is one coherent sequence: the
tokens accepted together all come from it, and each must still be plausible to the model, so a
wrong number (which a model that can do the arithmetic gives little probability) stops the run.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.state import DecodeState
from .base import DraftVerifier


class ThresholdAccept(DraftVerifier):
    name = "accept"
    settings = ("tau_accept", "context", "frontier_guess")

    def __init__(self, proposals: torch.Tensor, tau_accept: float = 0.3, argmax: bool = True,
                 threshold: Optional[float] = 0.9, context: str = "hidden",
                 frontier_guess: bool = False):
        super().__init__(proposals, threshold=threshold, context=context, frontier_guess=frontier_guess)
        if not 0.0 < tau_accept <= 1.0:
            raise ValueError(f"tau_accept={tau_accept} must lie in (0, 1].")
        self.tau_accept = tau_accept
        self.argmax = argmax

    def supports(self, probs: torch.Tensor, draft: torch.Tensor, state: DecodeState,
                 undecided: Optional[torch.Tensor] = None) -> torch.Tensor:
        p_draft = torch.gather(probs, -1, draft.unsqueeze(-1)).squeeze(-1)  # (B, Wb)
        ok = p_draft >= self.tau_accept
        if self.argmax:
            ok |= probs.argmax(dim=-1) == draft
        return ok
