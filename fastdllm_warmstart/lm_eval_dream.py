"""lm-evaluation-harness model ``dream_warmstart``: Dream through the same plugin.

The same model as ``llada_warmstart`` (:mod:`.lm_eval_model`, which picks the decoding family from
the loaded model's config), taking Fast-dLLM's ``dream/eval.py`` ``--model_args`` names so that
upstream's Dream commands carry over with only ``--model`` changed:

* renamed to the ``llada_warmstart`` keys: ``pretrained`` (``model_path``), ``max_new_tokens``
  (``gen_length``), ``diffusion_steps`` (``steps``), ``apply_chat_template`` (``chat_template``);
* the same names there: ``batch_size, device, dtype, max_length, mc_num, temperature, threshold,
  use_cache, dual_cache, save_dir, show_speed``; and ``block_length``, which eval.py never passes:
  32 here, as its ``diffusion_generate`` defaults to;
* ``add_bos_token``: the tokenizer's BOS text goes before each prompt (not with a chat template);
* ``alg``: Fast-dLLM's parallel path, ``confidence_threshold``, is what the engine decodes (and
  what unset means); Dream's own samplers (``entropy``, ``origin``, ...) are an error. Settings of
  those samplers and of upstream's loaders (``alg_temp, top_p, top_k, nll_type, log_type,
  classifier_free_guidance, sampling_eps, parallelize, autogptq, escape_until``) are accepted at
  upstream's default value only; ``trust_remote_code`` is accepted and left to the loader;
* every other key is ``llada_warmstart``'s (our flags: ``warm_init, rho, remask, aux_model, ...``).

Importing this module registers both names (``fastdllm-warmstart eval`` does); from Python,
``import fastdllm_warmstart.lm_eval_dream`` before ``lm_eval.simple_evaluate(model="dream_warmstart")``.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Tuple

from lm_eval.api.registry import register_model

from .config import ConfigError
from .lm_eval_model import LLaDAWarmStartLM

DREAM_MODEL_NAME = "dream_warmstart"
DREAM_BLOCK_LENGTH = 32  # Fast-dLLM's DreamGenerationMixin.diffusion_generate default

_RENAMED = {"pretrained": "model_path", "max_new_tokens": "gen_length", "diffusion_steps": "steps",
            "apply_chat_template": "chat_template"}
_PARALLEL_ALG = "confidence_threshold"
# Upstream defaults of settings this model has no counterpart for (normalised, see _norm).
_DEFAULT_ONLY: Dict[str, Tuple[Any, ...]] = {
    "alg_temp": (None, 0.0), "top_p": (None, 1.0), "top_k": (None,), "nll_type": ("mc",),
    "log_type": ("ftb",), "classifier_free_guidance": (1.0,), "sampling_eps": (1e-3,),
    "parallelize": (False,), "autogptq": (False,), "escape_until": (False,),
}
_IGNORED = ("trust_remote_code",)


def _norm(value: Any) -> Any:
    """``"None"``/``"0.0"``/``"false"`` (lm-eval's strings) and typed values alike."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip()
    low = text.lower()
    if low in ("none", ""):
        return None
    if low in ("true", "false"):
        return low == "true"
    try:
        return float(text)
    except ValueError:
        return low


def dream_model_args(args: Mapping[str, Any]) -> Tuple[Dict[str, Any], bool]:
    """(``llada_warmstart`` model args, ``add_bos_token``) for Dream eval.py-style ``args``."""
    out: Dict[str, Any] = {}
    add_bos = False
    for key, value in args.items():
        if key == "add_bos_token":
            add_bos = bool(_norm(value))
        elif key == "alg":
            if _norm(value) not in (None, _PARALLEL_ALG):
                raise ConfigError(f"alg={value}: {DREAM_MODEL_NAME} decodes with Fast-dLLM's parallel "
                                  f"path; use alg={_PARALLEL_ALG} (or omit alg). Dream's own samplers "
                                  "run in Fast-dLLM's dream/eval.py.")
        elif key in _DEFAULT_ONLY:
            if _norm(value) not in _DEFAULT_ONLY[key]:
                raise ConfigError(f"{key}={value} is not supported by {DREAM_MODEL_NAME}; omit it "
                                  "(Fast-dLLM's default).")
        elif key in _IGNORED:
            continue
        elif key in _RENAMED:
            if _RENAMED[key] in args:
                raise ConfigError(f"{key} and {_RENAMED[key]} name the same setting; give one.")
            out[_RENAMED[key]] = value
        else:
            out[key] = value
    out.setdefault("block_length", DREAM_BLOCK_LENGTH)
    return out, add_bos


def _with_context(request: Any, context: str) -> Any:
    """A copy of an lm-eval request whose context is ``context`` (the request itself unchanged)."""
    new = copy.copy(request)
    new.arguments = (context,) + tuple(request.args[1:])
    return new


@register_model(DREAM_MODEL_NAME)
class DreamWarmStartLM(LLaDAWarmStartLM):
    """``llada_warmstart`` with Fast-dLLM Dream eval.py's model_args (see the module doc)."""

    def __init__(self, **model_args: Any) -> None:
        args, self.add_bos_token = dream_model_args(model_args)
        super().__init__(**args)
        if self.add_bos_token and not getattr(self.tokenizer, "bos_token", None):
            raise ConfigError(f"add_bos_token=true but the tokenizer of {self.settings.model_path} has no "
                              "BOS token; omit add_bos_token.")

    def generate_until(self, requests: List[Any], disable_tqdm: bool = False) -> List[str]:
        chat = bool(self.use_chat and not self._harness_templated)
        if self.add_bos_token and not chat:  # as eval.py: the BOS text before the prompt
            bos = self.tokenizer.bos_token
            requests = [_with_context(req, bos + req.args[0]) for req in requests]
        return super().generate_until(requests, disable_tqdm)
