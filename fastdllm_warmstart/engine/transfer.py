"""The commit rules: which masked positions receive a token this step.

The rules are upstream Fast-dLLM's (``llada/generate.py``):

* ``get_transfer_index`` with a ``threshold``: commit every masked position whose confidence
  >= threshold and always the single most confident one; without one, the ``k`` most confident
  positions of a fixed schedule.
* ``get_transfer_index_dynamic`` with a ``factor``: sort the masked positions by confidence and
  commit the first ``n`` while the n-th confidence clears ``1 - factor / (n + 1)`` (at least one).

and WINO's wide-in (arXiv 2507.18578, ``get_transfer_index_wide_in``): every masked position whose
confidence *exceeds* a low threshold, at least the most confident one, at most a per-step cap.

When a Fast-dLLM checkout is found, :func:`resolve_transfer_fn` returns upstream's own functions
so the commit decisions stay upstream's; this module's vectorised equivalents serve otherwise.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

TransferFn = Callable[..., Tuple[torch.Tensor, torch.Tensor]]


def add_gumbel_noise(logits: torch.Tensor, temperature: float,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gumbel-max sampling in float64 (low precision hurts masked-diffusion sampling)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return logits.exp() / (-torch.log(noise)) ** temperature


def num_transfer_schedule(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) tokens to commit per step: an even split of each row's masked count."""
    mask_num = mask_index.sum(dim=1, keepdim=True)  # (B, 1)
    base = mask_num // steps
    remainder = mask_num % steps
    ramp = torch.arange(steps, device=mask_index.device).unsqueeze(0)  # (1, steps)
    return base + (ramp < remainder).long()  # (B, steps)


def _candidates(logits: torch.Tensor, temperature: float, remasking: str, mask_index: torch.Tensor,
                x: torch.Tensor, generator: Optional[torch.Generator]):
    """Proposed tokens, confidences (-inf off the mask) and each column's confidence rank."""
    x0 = torch.argmax(add_gumbel_noise(logits, temperature, generator), dim=-1)  # (B, W)
    if remasking == "low_confidence":
        p = F.softmax(logits.to(torch.float64), dim=-1)
        x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)  # (B, W)
    elif remasking == "random":
        x0_p = torch.rand(x0.shape, device=x0.device, generator=generator, dtype=torch.float64)
    else:
        raise ValueError(f"Unknown remasking rule {remasking!r}; use 'low_confidence' or 'random'.")
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, torch.full_like(x0_p, float("-inf")))

    # Rank of every position by confidence, most confident first (stable: ties keep column order).
    order = torch.sort(confidence, dim=-1, descending=True, stable=True).indices  # (B, W)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return x0, confidence, rank


def get_transfer_index(logits: torch.Tensor, temperature: float, remasking: str,
                       mask_index: torch.Tensor, x: torch.Tensor,
                       num_transfer_tokens: Optional[torch.Tensor], threshold: Optional[float] = None,
                       generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Upstream's rule, batch-vectorised. Returns ``(x0, transfer_index)``, both ``(B, W)``."""
    x0, confidence, rank = _candidates(logits, temperature, remasking, mask_index, x, generator)
    if threshold is None:
        k = num_transfer_tokens.reshape(-1, 1).to(rank.device)  # (B, 1)
        transfer = (rank < k) & mask_index
    else:
        transfer = mask_index & ((rank == 0) | (confidence >= threshold))
    return x0, transfer


def get_transfer_index_dynamic(logits: torch.Tensor, temperature: float, remasking: str,
                               mask_index: torch.Tensor, x: torch.Tensor,
                               num_transfer_tokens: Optional[torch.Tensor] = None, factor: float = 1.0,
                               generator: Optional[torch.Generator] = None
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Upstream's factor rule, batch-vectorised; ``num_transfer_tokens`` is unused (as upstream).

    With ``m`` masked positions sorted by confidence ``c_1 >= c_2 >= ...``: let ``j`` be the first
    1-based rank with ``c_j < 1 - factor / (j + 1)`` (rank 1 never fails). Commit the top ``j - 1``;
    upstream's loop also commits everything when no rank fails *or* when only the last one
    (``j = m``) fails, and so does this function, so the two agree token for token.
    """
    x0, confidence, rank = _candidates(logits, temperature, remasking, mask_index, x, generator)
    B, W = confidence.shape
    masked = mask_index.sum(dim=1)  # (B,) m
    ordered = torch.sort(confidence, dim=-1, descending=True).values  # (B, W), masked first
    n = torch.arange(1, W + 1, device=confidence.device, dtype=torch.float64)  # (W,) 1-based rank
    bar = 1.0 - factor / (n + 1.0)
    bar[0] = -1.0  # the most confident position always passes
    cols = torch.arange(W, device=confidence.device)
    fails = (ordered < bar) & (cols < masked.unsqueeze(1))  # (B, W)
    first_fail = fails.long().argmax(dim=1)  # (B,) 0-based index of the first failing rank
    count = torch.where(fails.any(dim=1), first_fail, masked - 1)
    count = torch.where((count == 0) | (count == masked - 1), count + 1, count)
    count = torch.where(masked == 0, torch.zeros_like(count), count)  # (B,)
    transfer = (rank < count.unsqueeze(1)) & mask_index
    return x0, transfer


def wide_in_cap(masked: torch.Tensor) -> torch.Tensor:
    """(B,) WINO's cap on one step's commits for ``masked`` (B,) masked positions left in the block:
    ``min(max(floor(0.7 m), 5), 20)``, the constants of the WINO authors' released LLaDA code."""
    return (masked.double() * 0.7).floor().long().clamp(min=5, max=20)


def get_transfer_index_wide_in(logits: torch.Tensor, temperature: float, remasking: str,
                               mask_index: torch.Tensor, x: torch.Tensor,
                               num_transfer_tokens: Optional[torch.Tensor] = None, threshold: float = 0.6,
                               generator: Optional[torch.Generator] = None, cap: bool = True
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """WINO's wide-in, batch-vectorised (``num_transfer_tokens`` unused): commit the masked positions
    whose confidence is *above* ``threshold`` (strictly, as WINO), the most confident one when none
    is, and with ``cap`` at most :func:`wide_in_cap` of them (the most confident)."""
    x0, confidence, rank = _candidates(logits, temperature, remasking, mask_index, x, generator)
    masked = mask_index.sum(dim=1)  # (B,)
    count = (confidence > threshold).sum(dim=1)  # (B,) -inf off the mask never counts
    if cap:
        count = torch.minimum(count, wide_in_cap(masked))
    count = torch.where(masked > 0, count.clamp(min=1), torch.zeros_like(count))  # (B,)
    return x0, (rank < count.unsqueeze(1)) & mask_index


def suppress_ids(logits: torch.Tensor, mask_index: torch.Tensor,
                 banned: Sequence[int]) -> torch.Tensor:
    """Never commit [MASK]/[PAD]: where a banned id is the argmax at a masked position, lower it.

    Logits are returned untouched when no banned id wins anywhere, so confidences (and hence
    threshold decisions) are bit-identical to upstream's in every case upstream handles.
    """
    if not banned:
        return logits
    banned_t = torch.tensor(list(banned), device=logits.device)
    winners = torch.isin(logits.argmax(dim=-1), banned_t) & mask_index  # (B, W)
    if not bool(winners.any()):
        return logits
    fixed = logits.clone()
    low = torch.finfo(fixed.dtype).min
    rows = fixed[winners]  # (N, V)
    rows[:, banned_t] = low
    fixed[winners] = rows
    return fixed


BUILTIN_RULES = (get_transfer_index, get_transfer_index_dynamic, get_transfer_index_wide_in)


def resolve_transfer_fn(prefer_upstream: bool = True, fast_dllm_path: Optional[str] = None,
                        rule: str = "threshold", upstream=None) -> Tuple[TransferFn, str]:
    """The commit function of ``rule`` (``threshold``: threshold/schedule, ``factor``: dynamic):
    upstream's own when a Fast-dLLM checkout is found (``upstream``, else looked up) and has it,
    else ours. Returns ``(function, source)``."""
    if rule not in ("threshold", "factor"):
        raise ValueError(f"rule={rule!r}: use 'threshold' or 'factor'.")
    if prefer_upstream:
        if upstream is None:
            from ..upstream import find_upstream

            upstream = find_upstream(fast_dllm_path)
        fn = None
        if upstream is not None:
            fn = upstream.get_transfer_index if rule == "threshold" else upstream.get_transfer_index_dynamic
        if fn is not None:
            return fn, f"upstream:{upstream.root}"
    return (get_transfer_index if rule == "threshold" else get_transfer_index_dynamic), "builtin"
