"""fastdllm-warmstart hook for a Fast-dLLM checkout (added by fastdllm-warmstart's patch).

Drop-in replacements for ``generate``, ``generate_with_prefix_cache`` and
``generate_with_dual_cache`` from ``llada/generate.py``: same arguments (``threshold``,
``factor``, ``step_callback`` included), same return value ``(sequences, nfe)`` with ``nfe`` the
forward calls made for the whole batch, as upstream counts them, but decoded by
fastdllm-warmstart's engine with an optional warm start. The engine reproduces the loop of the
checkout it sits in (``loop_variant=auto``; ``FASTDLLM_WARMSTART_LOOP_VARIANT`` overrides).

Warm-start settings come from environment variables ``FASTDLLM_WARMSTART_<KEY>`` (e.g.
``FASTDLLM_WARMSTART_WARM_INIT=token``, ``FASTDLLM_WARMSTART_RHO=0.25``,
``FASTDLLM_WARMSTART_AUX_MODEL=/path/to/aux``) or from :func:`configure`; the decoding settings
(steps, gen_length, block_length, threshold, factor, cache) are the call's own arguments, as
upstream.

Use it from your own scripts with ``from warmstart_hook import generate_with_dual_cache``, or run
lm-eval through ``eval_llada_warmstart.py``, which makes ``eval_llada.py`` import these functions.
This file only needs the ``fastdllm-warmstart`` package installed (``pip install
fastdllm-warmstart[eval]``); delete it (or ``git apply -R`` the patch) to remove it.
"""

import logging
import os
from typing import Any, Dict, List, Optional

import torch

from fastdllm_warmstart.config import FLAT_KEYS, ConfigError, RunConfig, configs_from_flat
from fastdllm_warmstart.engine import generate as _engine_generate

logger = logging.getLogger("fastdllm_warmstart.hook")

ENV_PREFIX = "FASTDLLM_WARMSTART_"
# Decoding settings are the call's arguments; everything else may come from the environment.
_CALL_KEYS = ("gen_length", "block_length", "steps", "threshold", "factor", "temperature",
              "remasking", "cache")
HOOK_KEYS = tuple(k for k in FLAT_KEYS if k not in _CALL_KEYS)

_overrides: Dict[str, Any] = {}
_state: Dict[str, Any] = {}
# Rows decoded with a warm start asked for: all, those started from a proposal, those decoded cold.
_counts = {"rows": 0, "warm": 0, "cold": 0}


def warm_start_counts() -> Dict[str, int]:
    """How many prompts asked for a warm start (``rows``) were warm-started (``warm``) or found no
    usable proposal and decoded cold (``cold``), since the process started."""
    return dict(_counts)


def configure(**settings: Any) -> None:
    """Set warm-start settings in code (they win over ``FASTDLLM_WARMSTART_*`` variables)."""
    bad = sorted(k for k in settings if k not in HOOK_KEYS)
    if bad:
        raise ConfigError(f"Unknown warm-start setting(s) {', '.join(bad)}; valid: "
                          f"{', '.join(HOOK_KEYS)}.")
    _overrides.update(settings)
    _state.clear()


def settings_from_env(environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The ``FASTDLLM_WARMSTART_*`` variables as flat settings (unknown names are an error)."""
    environ = os.environ if environ is None else environ
    found = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in HOOK_KEYS:
            raise ConfigError(f"{name} is not a warm-start setting; valid names: "
                              f"{', '.join(ENV_PREFIX + k.upper() for k in HOOK_KEYS)}.")
        found[key] = value
    return found


def run_config(steps, gen_length, block_length, temperature, remasking, threshold,
               cache: str, factor=None) -> RunConfig:
    flat: Dict[str, Any] = dict(settings_from_env())
    flat.update(_overrides)
    flat.update(gen_length=gen_length, block_length=block_length, steps=steps,
                temperature=float(temperature), remasking=remasking, cache=cache, factor=factor)
    if threshold is not None:
        flat["threshold"] = threshold
    config = configs_from_flat(flat)
    if threshold is None:  # upstream: no threshold = the fixed schedule
        from dataclasses import replace
        config = replace(config, decode=replace(config.decode, threshold=None))
    return config


def _tokenizer(model):
    if "tokenizer" not in _state:
        import transformers

        path = os.environ.get(ENV_PREFIX.rstrip("_") + "_TOKENIZER_PATH") or getattr(
            getattr(model, "config", None), "_name_or_path", None)
        if not path:
            raise ConfigError("The warm start needs the dLLM tokenizer: set "
                              "FASTDLLM_WARMSTART_TOKENIZER_PATH to the model directory.")
        _state["tokenizer"] = transformers.AutoTokenizer.from_pretrained(
            path, trust_remote_code=True)
    return _state["tokenizer"]


def _user_text(tokenizer, ids: List[int]) -> str:
    """The prompt text the aux model should see: the user message inside a chat template."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if getattr(tokenizer, "chat_template", None):
        sentinel = "\u2063WARMSTART\u2063"
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": sentinel}],
                                                 add_generation_prompt=True, tokenize=False)
        head, _, tail = rendered.partition(sentinel)
        start, end = text.find(head), text.rfind(tail)
        if head and start >= 0 and end >= start + len(head):
            return text[start + len(head):end]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _proposer(config: RunConfig, tokenizer, device):
    key = ("proposer", repr(config.aux))
    if key not in _state:
        from fastdllm_warmstart.auxiliary.proposer import build_proposer

        _state[key] = build_proposer(config.aux, tokenizer, device=device)
    return _state[key]


def _count(made, config: RunConfig) -> None:
    """Tally the proposals of one call; a call with rows left cold says how many, and why."""
    cold = [p for p in made if not p.ok]
    _counts["rows"] += len(made)
    _counts["warm"] += len(made) - len(cold)
    _counts["cold"] += len(cold)
    if not cold:
        return
    reasons = sorted({p.error for p in cold})
    where = (f" Prompts are looked up in {config.aux.proposals} by the prompt text (the user "
             "message), whitespace ignored." if config.aux.proposals else "")
    logger.warning("Warm start: %d of %d prompt(s) of this call found no usable proposal (%s) "
                   "and decode cold; %d of %d so far.%s", len(cold), len(made), "; ".join(reasons),
                   _counts["cold"], _counts["rows"], where)


def _callbacks(model, prompt: torch.Tensor, config: RunConfig):
    from fastdllm_warmstart.warmstart import build_callbacks, proposals_to_tensor

    proposals = None
    if config.warm.enabled:
        tokenizer = _tokenizer(model)
        device = next(model.parameters()).device
        texts = [_user_text(tokenizer, row) for row in prompt.tolist()]
        made = _proposer(config, tokenizer, device).propose(texts, config.decode.gen_length)
        _count(made, config)
        proposals = proposals_to_tensor([p.token_ids if p.ok else None for p in made],
                                        config.decode.gen_length, device=device)
    return build_callbacks(config, proposals)


def warm_start_callbacks(model, prompt: torch.Tensor, config: RunConfig):
    """The callbacks ``config`` asks for, for the (B, P) ``prompt``: the warm start from the aux
    model's (or the proposals file's) drafts, its verifier, RCD. ``../dream/eval_dream_warmstart.py``
    uses it too."""
    return _callbacks(model, prompt, config)


def _decode(model, prompt, steps, gen_length, block_length, temperature, remasking, mask_id,
            threshold, factor, step_callback, cache):
    config = run_config(steps, gen_length, block_length, temperature, remasking, threshold, cache,
                        factor)
    d = config.decode
    out = _engine_generate(model, prompt, steps=d.steps, gen_length=d.gen_length,
                           block_length=d.block_length, temperature=d.temperature,
                           remasking=d.remasking, mask_id=mask_id, threshold=d.threshold,
                           factor=d.factor, step_callback=step_callback, cache=d.cache,
                           callbacks=_callbacks(model, prompt, config), loop_variant=d.loop_variant,
                           early_stop=d.early_stop, seed=config.warm.seed)
    # Forward calls for the whole batch: upstream's counter (not the slowest row's share).
    return out.sequences, int(out.total_nfe)


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128,
             temperature=0., remasking="low_confidence", mask_id=126336, threshold=None,
             factor=None, step_callback=None):
    """Upstream's ``generate`` (no KV cache), decoded by fastdllm-warmstart."""
    return _decode(model, prompt, steps, gen_length, block_length, temperature, remasking,
                   mask_id, threshold, factor, step_callback, "none")


@torch.no_grad()
def generate_with_prefix_cache(model, prompt, steps=128, gen_length=128, block_length=128,
                               temperature=0., remasking="low_confidence", mask_id=126336,
                               threshold=None, factor=None, step_callback=None):
    """Upstream's ``generate_with_prefix_cache``, decoded by fastdllm-warmstart."""
    return _decode(model, prompt, steps, gen_length, block_length, temperature, remasking,
                   mask_id, threshold, factor, step_callback, "prefix")


@torch.no_grad()
def generate_with_dual_cache(model, prompt, steps=128, gen_length=128, block_length=128,
                             temperature=0., remasking="low_confidence", mask_id=126336,
                             threshold=None, factor=None, step_callback=None):
    """Upstream's ``generate_with_dual_cache``, decoded by fastdllm-warmstart."""
    return _decode(model, prompt, steps, gen_length, block_length, temperature, remasking,
                   mask_id, threshold, factor, step_callback, "dual")
