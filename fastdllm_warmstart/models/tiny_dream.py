"""A tiny model of the Dream protocol: the embedded tiny architecture with Dream's shifted head.

Dream (``model_type: Dream``) is a diffusion LM initialised from an autoregressive one and keeps
its head: the logit at position ``p`` predicts the token at ``p + 1``. ``TinyDreamModelLM`` is
:class:`~.tiny_llada.TinyLLaDAModelLM` (same forward keywords, caches, padding) whose config says
``model_type: tiny_dream``, so the engine reads its logits one column to the right and decodes it
with Dream's commit and cache semantics (:class:`fastdllm_warmstart.engine.protocol.ShiftedPredictor`).
Random weights are enough for what it serves: tests and CLI checks of the Dream path without a
Fast-dLLM checkout or a 7B download. Trained weights are not shipped.
"""

from __future__ import annotations

from .tiny_llada import TinyLLaDAConfig, TinyLLaDAModelLM, register_with_auto


class TinyDreamConfig(TinyLLaDAConfig):
    model_type = "tiny_dream"

    def __init__(self, **kwargs):  # transformers 5 would otherwise give a subclass a new __init__
        super().__init__(**kwargs)


class TinyDreamModelLM(TinyLLaDAModelLM):
    """The tiny bidirectional transformer, read as a Dream-protocol model (shifted logits)."""

    config_class = TinyDreamConfig
    logit_shift = True
    # A transient query at q predicts q + 1; the verifier that uses them (spec) judges column q.
    supports_transient_queries = False
    # Continuous batching keeps one shifted column per shared block window only.
    supports_row_windows = False


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` resolve ``model_type: tiny_dream`` checkpoints."""
    register_with_auto(TinyDreamConfig, TinyDreamModelLM)
