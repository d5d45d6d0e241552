"""fastdllm-warmstart: warm-start initialisation and remasking hooks for Fast-dLLM decoding.

    from fastdllm_warmstart import generate
    out = generate(model, prompt_ids, steps=96, gen_length=96, block_length=32, threshold=0.9,
                   cache="dual", callbacks=[...])
    out.sequences, out.nfe
"""

__version__ = "0.1.0"

from .config import (AuxConfig, ConfigError, DecodeConfig, RemaskConfig, ResidualConfig, RunConfig,
                     WarmStartConfig, configs_from_flat)
from .engine import CallbackList, DecodeCallback, DecodeState, EventRecorder, GenerateOutput, generate

__all__ = [
    "__version__", "AuxConfig", "ConfigError", "DecodeConfig", "RemaskConfig", "ResidualConfig",
    "RunConfig", "WarmStartConfig", "configs_from_flat", "CallbackList", "DecodeCallback",
    "DecodeState", "EventRecorder", "GenerateOutput", "generate",
]
