"""Run this checkout's ``eval_llada.py`` with fastdllm-warmstart (added by its patch).

    accelerate launch eval_llada_warmstart.py --tasks gsm8k --model llada_dist \
        --model_args model_path=GSAI-ML/LLaDA-8B-Instruct,gen_length=256,steps=256,block_length=32

behaves like ``eval_llada.py`` except that

* its ``generate*`` functions are those of ``warmstart_hook.py`` (fastdllm-warmstart's engine;
  warm start set by ``FASTDLLM_WARMSTART_*`` variables, e.g. ``FASTDLLM_WARMSTART_WARM_INIT=token``),
  and a warm-started run ends with a count of the prompts that found no proposal;
* ``LLaDAModelLM`` loads on every tested transformers release (fastdllm-warmstart's loader fix:
  transformers 5 needs what ``post_init()`` sets, which upstream's class never calls);
* ``llada_dist`` runs on lm-eval 0.4.x: ``device`` becomes assignable, and the collectives
  lm-eval needs for several processes (``all_gather``, ``gather_object``, ``barrier``) are
  provided through the harness's accelerator;
* ``--model llada_warmstart`` (fastdllm-warmstart's own lm-eval model) and ``--tasks tinygsm``
  (its small offline task) are available too.

``eval_llada.py`` itself is not modified. From Python, :func:`main` runs the same command line;
``main(hook=False)`` keeps upstream's own ``generate*`` (same fixes, upstream's decoding).
"""

import logging
import sys

import torch

logger = logging.getLogger("fastdllm_warmstart.hook")


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


def prepare(hook=True):
    """Import ``eval_llada`` (with the hook's ``generate*`` unless ``hook=False``), apply the
    loader and harness fixes and register ``llada_warmstart``; returns the module."""
    from fastdllm_warmstart.compat import post_init_compatible

    if hook:
        import warmstart_hook

        sys.modules["generate"] = warmstart_hook  # eval_llada.py does `from generate import ...`
    import eval_llada
    from fastdllm_warmstart import lm_eval_model  # noqa: F401  (registers llada_warmstart)

    eval_llada.LLaDAModelLM = post_init_compatible(eval_llada.LLaDAModelLM)
    fix_harness(eval_llada.LLaDAEvalHarness)
    return eval_llada


def _with_package_tasks(argv):
    """``--include_path`` to fastdllm-warmstart's tasks (tinygsm) unless the caller gave one."""
    from pathlib import Path

    import fastdllm_warmstart.tasks

    tasks_dir = Path(fastdllm_warmstart.tasks.__file__).resolve().parent
    if any(arg == "--include_path" or arg.startswith("--include_path=") for arg in argv):
        return list(argv)
    return list(argv) + ["--include_path", str(tasks_dir)]


def _show_package_logs():
    """fastdllm-warmstart's notices (proposal counts, fallbacks) on stderr, as the CLI shows them."""
    ours = logging.getLogger("fastdllm_warmstart")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s [%(name)s] %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def main(argv=None, hook=True):
    """``eval_llada.py``'s command line (lm-eval's ``cli_evaluate``) with the changes above."""
    eval_llada = prepare(hook)
    _show_package_logs()
    sys.argv = [sys.argv[0]] + _with_package_tasks(sys.argv[1:] if argv is None else argv)
    eval_llada.cli_evaluate()
    if hook:
        import warmstart_hook

        counts = warmstart_hook.warm_start_counts()
        if counts["rows"]:
            logger.info("Warm start: %d of %d prompt(s) warm-started; %d found no usable proposal "
                        "and decoded cold.", counts["warm"], counts["rows"], counts["cold"])


if __name__ == "__main__":
    main()
