"""Run this checkout's ``eval_llada.py`` with fastdllm-warmstart (added by its patch).

    accelerate launch eval_llada_warmstart.py --tasks gsm8k --model llada_dist \
        --model_args model_path=GSAI-ML/LLaDA-8B-Instruct,gen_length=256,steps=256,block_length=32

behaves like ``eval_llada.py`` except that

* its ``generate*`` functions are those of ``warmstart_hook.py`` (fastdllm-warmstart's engine;
  warm start set by ``FASTDLLM_WARMSTART_*`` variables, e.g. ``FASTDLLM_WARMSTART_WARM_INIT=token``);
* ``llada_dist`` runs on lm-eval 0.4.x: ``device`` becomes assignable, and the collectives
  lm-eval needs for several processes (``all_gather``, ``gather_object``, ``barrier``) are
  provided through the harness's accelerator;
* ``--model llada_warmstart`` (fastdllm-warmstart's own lm-eval model) is available too.

``eval_llada.py`` itself is not modified.
"""

import sys

import torch

import warmstart_hook

sys.modules["generate"] = warmstart_hook  # eval_llada.py does `from generate import ...`

import eval_llada  # noqa: E402  (registers llada_dist with the hooked functions)
from fastdllm_warmstart import lm_eval_model  # noqa: E402,F401  (registers llada_warmstart)


def _get_device(self):
    return self._device


def _set_device(self, value):
    self._device = torch.device(value)


def _all_gather(self, tensor):
    accelerator = getattr(self, "accelerator", None)
    if accelerator is None:
        return tensor
    return accelerator.gather(tensor.reshape(1) if tensor.dim() == 0 else tensor)


def _gather_object(self, obj, dst=0):
    accelerator = getattr(self, "accelerator", None)
    if accelerator is None:
        return [obj]
    out = [None] * accelerator.num_processes if accelerator.process_index == dst else None
    torch.distributed.gather_object(obj, out, dst=dst)
    return out


def _barrier(self):
    accelerator = getattr(self, "accelerator", None)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def fix_harness(cls) -> None:
    """Make upstream's lm-eval model class work on lm-eval 0.4.x without editing it."""
    cls.device = property(_get_device, _set_device)
    cls.all_gather = _all_gather
    cls.gather_object = _gather_object
    cls.barrier = _barrier
    if not hasattr(cls, "cfg"):
        cls.cfg = 0.0  # its get_logits reads a classifier-free guidance scale it never sets


fix_harness(eval_llada.LLaDAEvalHarness)

if __name__ == "__main__":
    eval_llada.cli_evaluate()
