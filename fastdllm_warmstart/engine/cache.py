"""Cache strategies: what each forward of a block computes, and what it may reuse.

They reproduce exactly what upstream Fast-dLLM recomputes:

* ``none``   every step runs the whole canvas.
* ``prefix`` step 0 runs the whole canvas and keeps the keys/values of everything before the
  block; later steps run the block *and everything after it* against that prefix cache.
* ``dual``   step 0 runs the whole canvas and keeps all keys/values; later steps run only the
  block, replacing its keys/values in the cache (``replace_position``), the suffix stays cached.

Upstream's cached loops always run at least one cached step after step 0, even when step 0 has
already filled the block; ``min_block_steps`` encodes that so NFE matches upstream's count.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from .state import DecodeState


class CacheStrategy:
    name = "base"
    min_block_steps = 1

    def reset(self) -> None:
        pass

    def window(self, state: DecodeState) -> Tuple[int, int]:
        raise NotImplementedError

    def forward(self, state: DecodeState, inputs: dict) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _call(state: DecodeState, inputs: dict, **extra: Any):
        if state.attention_mask is not None:
            extra["attention_mask"] = state.attention_mask
        return state.model(**inputs, **extra)


class NoCache(CacheStrategy):
    name = "none"
    min_block_steps = 1

    def window(self, state: DecodeState) -> Tuple[int, int]:
        return 0, state.x.shape[1]

    def forward(self, state: DecodeState, inputs: dict) -> torch.Tensor:
        # use_cache passed explicitly: upstream reads config.use_cache otherwise, which newer
        # transformers releases no longer define on every config.
        return self._call(state, inputs, use_cache=False).logits  # (B, L, V)


class PrefixCache(CacheStrategy):
    name = "prefix"
    min_block_steps = 2

    def __init__(self) -> None:
        self.past: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None

    def reset(self) -> None:
        self.past = None

    def window(self, state: DecodeState) -> Tuple[int, int]:
        start = 0 if state.block_step == 0 else state.block_start
        return start, state.x.shape[1]

    def forward(self, state: DecodeState, inputs: dict) -> torch.Tensor:
        if state.block_step == 0:
            out = self._call(state, inputs, use_cache=True)
            # Keep only the keys/values before the block (the prompt and finished blocks).
            self.past = [tuple(t[:, :, :state.block_start] for t in layer) for layer in out.past_key_values]
            return out.logits  # (B, L, V)
        out = self._call(state, inputs, past_key_values=self.past, use_cache=True)
        return out.logits  # (B, L - block_start, V)


class DualCache(CacheStrategy):
    name = "dual"
    min_block_steps = 2

    def __init__(self) -> None:
        self.past: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self.replace_position: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.past = None
        self.replace_position = None

    def window(self, state: DecodeState) -> Tuple[int, int]:
        if state.block_step == 0:
            return 0, state.x.shape[1]
        return state.block_start, state.block_end

    def forward(self, state: DecodeState, inputs: dict) -> torch.Tensor:
        if state.block_step == 0:
            out = self._call(state, inputs, use_cache=True)
            self.past = out.past_key_values
            # One row suffices: blocks sit at the same columns in every (left-padded) row.
            self.replace_position = torch.zeros((1, state.x.shape[1]), dtype=torch.bool, device=state.x.device)
            self.replace_position[:, state.block_start:state.block_end] = True
            return out.logits  # (B, L, V)
        out = self._call(state, inputs, past_key_values=self.past, use_cache=True,
                         replace_position=self.replace_position)
        if out.past_key_values is not None:
            self.past = out.past_key_values  # upstream updates in place; ours returns new tensors
        return out.logits  # (B, block_length, V)


CACHE_STRATEGIES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}


def make_cache_strategy(name: str) -> CacheStrategy:
    try:
        return CACHE_STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"Unknown cache mode {name!r}; choose one of {', '.join(CACHE_STRATEGIES)}.") from None
