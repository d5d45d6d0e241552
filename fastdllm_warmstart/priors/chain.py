"""``chain``: accept a draft token when the dLLM's probability of it, *relative to the draft token
before it*, is high: a chain-rule estimate of the conditional p(d_i | d_<i) from one masked forward.

Why: every position of a block is predicted with the positions before it still masked, so the
model's marginal of a draft token shrinks with each unresolved choice upstream of it (two
wordings of the previous step: the marginal of everything after is at most ~1/2, three choices
~1/8...). Those choices are exactly what the draft resolves. Along a coherent draft, a token that
is determined by the draft before it keeps (about) the marginal of its predecessor; a token that
makes one more free choice divides it by the number of options; a wrong number divides it by
however little the model believes it. So the ratio ``p(d_i) / p(d_{i-1})`` estimates the
conditional, and the run stops at the first token the model finds unlikely *given the draft so
far*, not at the first one that is uncertain overall. A floor on the marginal itself keeps a long
run from accepting a token the model gives next to nothing.

Supported when ``p(d_i) >= tau_accept``, or ``d_i`` is the argmax, or
``p(d_i) >= rel * p(d_{i-1})`` and ``p(d_i) >= floor`` (``p`` of an already decided predecessor is 1).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..engine.state import DecodeState
from .base import DraftVerifier


class ChainAccept(DraftVerifier):
    name = "chain"
    settings = ("tau_accept", "rel", "floor", "context", "frontier_guess")

    def __init__(self, proposals: torch.Tensor, tau_accept: float = 0.3, rel: float = 0.2,
                 floor: float = 0.01, threshold: Optional[float] = 0.9, context: str = "hidden",
                 frontier_guess: bool = False):
        super().__init__(proposals, threshold=threshold, context=context, frontier_guess=frontier_guess)
        for name, value in (("tau_accept", tau_accept), ("rel", rel), ("floor", floor)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name}={value} must lie in (0, 1].")
        self.tau_accept, self.rel, self.floor = tau_accept, rel, floor

    def supports(self, probs: torch.Tensor, draft: torch.Tensor, state: DecodeState,
                 undecided: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = torch.gather(probs, -1, draft.unsqueeze(-1)).squeeze(-1)  # (B, Wb)
        if undecided is not None:
            p = torch.where(undecided, p, torch.ones_like(p))  # a decided token is certain
        prev = torch.cat((torch.ones_like(p[:, :1]), p[:, :-1]), dim=1)  # (B, Wb)
        ok = (p >= self.tau_accept) | (probs.argmax(dim=-1) == draft)
        return ok | ((p >= self.rel * prev) & (p >= self.floor))
