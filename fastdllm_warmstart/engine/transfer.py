"""The commit rule: which masked positions receive a token this step.

The rule is upstream Fast-dLLM's (``get_transfer_index`` in ``llada/generate.py``): with a
``threshold``, commit every masked position whose confidence >= threshold and always the single
most confident one; without, commit the ``k`` most confident positions of a fixed schedule.
When a Fast-dLLM checkout is found, :func:`resolve_transfer_fn` returns upstream's own function
so the threshold decoder stays upstream's; this module's vectorised equivalent serves otherwise.
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


def get_transfer_index(logits: torch.Tensor, temperature: float, remasking: str,
                       mask_index: torch.Tensor, x: torch.Tensor,
                       num_transfer_tokens: Optional[torch.Tensor], threshold: Optional[float] = None,
                       generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Upstream's rule, batch-vectorised. Returns ``(x0, transfer_index)``, both ``(B, W)``."""
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
    if threshold is None:
        k = num_transfer_tokens.reshape(-1, 1).to(rank.device)  # (B, 1)
        transfer = (rank < k) & mask_index
    else:
        transfer = mask_index & ((rank == 0) | (confidence >= threshold))
    return x0, transfer


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


def resolve_transfer_fn(prefer_upstream: bool = True,
                        fast_dllm_path: Optional[str] = None) -> Tuple[TransferFn, str]:
    """Upstream's ``get_transfer_index`` when a Fast-dLLM checkout is found, else ours."""
    if prefer_upstream:
        from ..upstream import find_upstream

        upstream = find_upstream(fast_dllm_path)
        if upstream is not None and upstream.get_transfer_index is not None:
            return upstream.get_transfer_index, f"upstream:{upstream.root}"
    return get_transfer_index, "builtin"
