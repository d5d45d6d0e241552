"""The decoding engine: one loop, cache strategies, callbacks over one state object."""

from .cache import CACHE_STRATEGIES, CacheStrategy, DualCache, NoCache, PrefixCache, make_cache_strategy
from .callbacks import EVENTS, CallbackList, DecodeCallback, EventRecorder
from .loop import GenerateOutput, StepCallback, generate, resolve_loop_variant, resolve_special_ids
from .protocol import protocol_for
from .rows import resolve_batching
from .state import DecodeState
from .transfer import (get_transfer_index, get_transfer_index_dynamic, num_transfer_schedule,
                       resolve_transfer_fn)

__all__ = [
    "CACHE_STRATEGIES", "CacheStrategy", "DualCache", "NoCache", "PrefixCache", "make_cache_strategy",
    "EVENTS", "CallbackList", "DecodeCallback", "EventRecorder", "GenerateOutput", "StepCallback",
    "generate", "protocol_for", "resolve_batching", "resolve_loop_variant", "resolve_special_ids", "DecodeState", "get_transfer_index",
    "get_transfer_index_dynamic", "num_transfer_schedule", "resolve_transfer_fn",
]
