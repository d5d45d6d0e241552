"""Acceptance rules for draft priors: each rule is one small module with one class.

=========  ==================================================================================
rule       a draft token is committed (as part of a run from the block's first open position)
=========  ==================================================================================
accept     when the dLLM gives it probability >= ``tau_accept`` or ranks it first
chain      when its probability relative to the draft token before it is high (a chain-rule
           estimate of the conditional given the draft so far; see ``chain.py``)
prefix     when it equals the dLLM's argmax (APD's agreeing prefix)
spec       when the dLLM ranks it first or gives it >= ``tau_accept`` *given the draft before
           it*, all in one forward (the draft rides along as transient queries; ``spec.py``)
=========  ==================================================================================

``revoke`` (the paper-style confidence remask, ``warmstart.ConfidenceRemask``) is the fourth
choice of ``remask_rule``; it judges injected priors but never commits one early.

To add a rule: subclass :class:`~fastdllm_warmstart.priors.base.DraftVerifier` in a new module,
implement ``supports(probs, draft, state, undecided)``, list the run-config settings its
constructor takes in ``settings``, and register the class in ``RULES``.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import torch

from .accept import ThresholdAccept
from .base import CONTEXTS, DraftVerifier
from .chain import ChainAccept
from .prefix import AgreeingPrefix
from .spec import SpeculativeAccept

RULES: Dict[str, Type[DraftVerifier]] = {
    ThresholdAccept.name: ThresholdAccept,
    ChainAccept.name: ChainAccept,
    AgreeingPrefix.name: AgreeingPrefix,
    SpeculativeAccept.name: SpeculativeAccept,
}


def build_verifier(rule: str, proposals: torch.Tensor, *, tau_accept: float, threshold: Optional[float],
                   context: str = "hidden", rel: float = 0.2, floor: float = 0.01,
                   frontier_guess: bool = False) -> DraftVerifier:
    """The verifier callback for ``rule`` with the run config's settings (those its class lists in
    ``settings``)."""
    if rule not in RULES:
        raise ValueError(f"remask_rule={rule!r} is not a verification rule; choose one of "
                         f"{', '.join(sorted(RULES))}.")
    given = dict(tau_accept=tau_accept, context=context, rel=rel, floor=floor, frontier_guess=frontier_guess)
    cls = RULES[rule]
    return cls(proposals, threshold=threshold, **{k: given[k] for k in cls.settings})


__all__ = ["RULES", "CONTEXTS", "DraftVerifier", "ThresholdAccept", "ChainAccept", "AgreeingPrefix",
           "SpeculativeAccept", "build_verifier"]
