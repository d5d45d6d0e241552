"""Run this checkout's Dream ``eval.py`` with fastdllm-warmstart (added by its patch).

    accelerate launch eval_dream_warmstart.py --model dream --tasks gsm8k --num_fewshot 5 --batch_size 1 \
        --model_args pretrained=Dream-org/Dream-v0-Base-7B,max_new_tokens=256,diffusion_steps=8,add_bos_token=true,alg=confidence_threshold,threshold=0.9,use_cache=true,dual_cache=true

behaves like ``eval.py`` except that

* the parallel block loop (``use_cache=true`` with ``alg=confidence_threshold``: the
  ``diffusion_generate`` that ``eval.py`` binds from ``model/generation_utils_block.py``) decodes
  with fastdllm-warmstart's engine, tokens and forward counts equal to upstream's for one prompt;
  a warm start is set by the ``FASTDLLM_WARMSTART_*`` variables that ``../llada/warmstart_hook.py``
  reads (e.g. ``FASTDLLM_WARMSTART_WARM_INIT=token``). Other samplers stay upstream's;
* ``DreamModel`` loads on transformers 5 (fastdllm-warmstart's shims, in this process only), and
  ``eval.py`` imports on lm-eval 0.4.13, whose ``get_dtype`` moved to ``lm_eval.models.utils_hf``;
* ``--model dream_warmstart`` (fastdllm-warmstart's own lm-eval model, same ``--model_args``) and
  ``--tasks tinygsm`` are available too.

``eval.py`` itself is not modified. From Python, :func:`main` runs the same command line;
``main(hook=False)`` keeps upstream's own decoding (with the same loading fixes).
"""

import sys
from pathlib import Path

import torch

_upstream = {}


@torch.no_grad()
def diffusion_generate(self, inputs=None, generation_config=None, **kwargs):
    """The block loop's ``diffusion_generate`` (same keywords and output), decoded by the engine."""
    alg = kwargs.get("alg", getattr(generation_config, "alg", None))
    if alg != "confidence_threshold" or kwargs.get("temperature"):
        return _upstream["diffusion_generate"](self, inputs, generation_config, **kwargs)
    import warmstart_hook  # ../llada/warmstart_hook.py, added by the same patch
    from fastdllm_warmstart.engine import generate

    given = {"block_length": 32, "threshold": 0.9, **kwargs}  # what upstream's call defaults to
    gen_length, block = given["max_new_tokens"], given["block_length"]
    cache = "dual" if given.get("dual_cache") else "prefix"
    steps = given.get("steps") or gen_length // block
    config = warmstart_hook.run_config(steps, gen_length, block, 0.0, "low_confidence", given["threshold"], cache)
    d = config.decode
    out = generate(self, inputs, steps=d.steps, gen_length=d.gen_length, block_length=d.block_length,
                   threshold=d.threshold, cache=d.cache, attention_mask=kwargs.get("attention_mask"),
                   callbacks=warmstart_hook.warm_start_callbacks(self, inputs, config),
                   early_stop=d.early_stop, seed=config.warm.seed,
                   use_upstream=False)  # LLaDA's generate.py is no part of Dream's loop
    if not kwargs.get("return_dict_in_generate"):
        return out.sequences
    return _upstream["output_class"](sequences=out.sequences, history=None)


def prepare(hook=True):
    """Import ``eval`` (the checkout's Dream eval.py) with the loading fixes, and the engine's
    ``diffusion_generate`` unless ``hook=False``; register ``dream_warmstart``; return the module."""
    here = Path(__file__).resolve().parent
    sys.path.append(str(here.parent / "llada"))  # warmstart_hook.py; after this folder: `model` is Dream's
    from fastdllm_warmstart.compat import dream_module_shims

    import model.generation_utils as plain
    import model.generation_utils_block as block
    import model.modeling_dream as modeling

    dream_module_shims(modeling, modeling, block, plain)  # before eval.py takes DreamModel's name
    if hook and "diffusion_generate" not in _upstream:
        _upstream["diffusion_generate"] = block.DreamGenerationMixin.diffusion_generate
        _upstream["output_class"] = block.DreamModelOutput
        block.DreamGenerationMixin.diffusion_generate = diffusion_generate
    import lm_eval.models.utils as harness_utils

    if not hasattr(harness_utils, "get_dtype"):  # lm-eval >= 0.4.9 keeps it in utils_hf
        from lm_eval.models.utils_hf import get_dtype

        harness_utils.get_dtype = get_dtype
    import eval as dream_eval
    from fastdllm_warmstart import lm_eval_dream  # noqa: F401  (registers dream_warmstart)

    return dream_eval


def main(argv=None, hook=True):
    """``eval.py``'s command line (lm-eval's ``cli_evaluate``) with the changes above."""
    dream_eval = prepare(hook)
    import fastdllm_warmstart.tasks

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(Path(fastdllm_warmstart.tasks.__file__).resolve().parent)]
    sys.argv = [sys.argv[0]] + args
    dream_eval.cli_evaluate()


if __name__ == "__main__":
    main()
