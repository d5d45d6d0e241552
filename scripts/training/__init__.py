"""Training code for the embedded tiny models (``scripts/train_tiny.py``, ``scripts/train_rcd.py``),
kept outside the runtime package.

* :mod:`.data`: the seeded problem stream and the LLaDA canvas encoding.
* :mod:`.objectives`: random-mask, dual-cache and decoder-state losses.
* :mod:`.runs`: checkpoints, schedule, optimiser step, model growth, versions.
* :mod:`.evaluation`: validation decoding through the package's engine.
* :mod:`.residual_states`: RCD residuals and aux-like drafts laid into those states (stage 2).
* :mod:`.soft_eval`: validation cold, with the residual stream, with drafts (embedding warm start).
"""

from .data import BLOCK_LENGTH, GEN_LENGTH, THRESHOLD, ProblemStream, dllm_encode_batch, equation_spans, prompt_canvas
from .evaluation import engine_decode, eval_dllm, score
from .objectives import (block_forward, dllm_cache_loss, dllm_decode_state_loss, dllm_loss, mask_canvas, masked_ce,
                         result_first_boost, stale_block_cache, teacher_forced_order)
from .runs import cosine_lr, grow_state_dict, load_checkpoint, optimizer_step, save_checkpoint, versions

__all__ = [
    "BLOCK_LENGTH", "GEN_LENGTH", "THRESHOLD", "ProblemStream", "dllm_encode_batch", "equation_spans", "prompt_canvas",
    "engine_decode", "eval_dllm", "score", "block_forward", "dllm_cache_loss", "dllm_decode_state_loss", "dllm_loss",
    "mask_canvas", "masked_ce", "result_first_boost", "stale_block_cache", "teacher_forced_order", "cosine_lr",
    "grow_state_dict", "load_checkpoint", "optimizer_step", "save_checkpoint", "versions",
]
