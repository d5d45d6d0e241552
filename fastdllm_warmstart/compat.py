"""Every call whose form depends on the installed transformers release, in one place.

Tested range: transformers 4.49 (Fast-dLLM v1's pin) through 5.x. What differs between them:

* the ``from_pretrained`` keyword for the weights' dtype: ``torch_dtype`` before 4.56, ``dtype``
  after (4.49 stores an unknown ``dtype=`` in the model config, whose JSON form then fails);
* model construction: transformers 5's ``from_pretrained`` needs what ``post_init()`` sets
  (``all_tied_weights_keys``) and calls ``tie_weights`` with keywords, and its configs drop
  ``use_cache``; Fast-dLLM's ``LLaDAModelLM`` never calls ``post_init``, takes no keywords and
  reads ``config.use_cache`` (:func:`post_init_compatible`);
* Fast-dLLM's Dream model (:func:`dream_module_shims`): transformers 5 dropped the ``default``
  rotary initialiser its ``DreamRotaryEmbedding`` looks up, calls ``GenerationConfig.validate``
  with a keyword its ``DreamGenerationConfig.validate`` does not take, and reads
  ``_tied_weights_keys`` as a mapping where ``DreamModel`` declares a list;
* tokenizer files: transformers 5 saves fast tokenizers as ``TokenizersBackend``, a class name 4.x
  does not know; :func:`save_tokenizer` writes ``PreTrainedTokenizerFast``, which both read.

lm-eval is tested from 0.4.8 (Fast-dLLM's pin) to 0.4.13; only 0.4.13 has the ``lm-eval run``
command line the ``eval`` command builds on (:func:`lm_eval_version` names the installed one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)
DTYPE_KEYWORD = "dtype" if TRANSFORMERS_VERSION >= Version("4.56") else "torch_dtype"
# What every tokenizer file this package writes names as its class: both lines load it.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Keys transformers 5 writes into tokenizer_config.json that only describe the saving process.
_SAVE_ONLY_TOKENIZER_KEYS = ("backend", "is_local", "local_files_only")


def dtype_kwargs(dtype: Optional[torch.dtype]) -> Dict[str, torch.dtype]:
    """``from_pretrained`` keywords that load the weights in ``dtype`` (none for None)."""
    return {} if dtype is None else {DTYPE_KEYWORD: dtype}


def post_init_compatible(model_class: type) -> type:
    """A subclass of ``model_class`` that transformers 5's ``from_pretrained`` can build.

    Fast-dLLM's ``LLaDAModelLM.__init__`` never calls ``post_init()``, which transformers 5 relies
    on (``all_tied_weights_keys``); its ``tie_weights`` takes no keywords while transformers 5
    passes some; and its ``forward`` reads ``config.use_cache``, which transformers 5's config
    drops (``LLaDAConfig``'s default, False, is put back). The subclass finishes construction the
    way transformers expects; on 4.x it only forwards ``tie_weights``. The user's checkout is not
    modified. Idempotent."""
    if getattr(model_class, "_fdw_post_init_shim", False):
        return model_class
    needs_post_init = TRANSFORMERS_VERSION.major >= 5

    def __init__(self, config, *args, **kwargs):
        if not hasattr(config, "use_cache"):
            config.use_cache = False
        model_class.__init__(self, config, *args, **kwargs)
        if needs_post_init and not hasattr(self, "all_tied_weights_keys"):
            self.post_init()

    def tie_weights(self, *args, **kwargs):
        return model_class.tie_weights(self)

    return type(model_class.__name__, (model_class,), {
        "__init__": __init__, "tie_weights": tie_weights, "_fdw_post_init_shim": True,
        "__module__": model_class.__module__, "__qualname__": model_class.__qualname__})


def _default_rope(config: Any, device: Any = None, seq_len: Any = None, **_: Any):
    """Plain rotary frequencies ``theta ** (-2i / d)`` and no scaling (transformers 4.x ``default``)."""
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    return 1.0 / (theta ** exponents), 1.0


def dream_module_shims(modeling: Any, *generation_modules: Any) -> None:
    """Let a private import of Fast-dLLM's Dream modules run on the installed transformers.

    Only the namespaces of the modules passed are changed (the checkout's files and transformers'
    own tables are not): ``modeling.ROPE_INIT_FUNCTIONS`` gains the ``default`` entry transformers 5
    removed, and each module's ``DreamGenerationConfig`` becomes a subclass whose ``validate``
    accepts the keywords transformers 5 passes. Idempotent; nothing changes on 4.x."""
    table = getattr(modeling, "ROPE_INIT_FUNCTIONS", None)
    if table is not None and "default" not in table:
        modeling.ROPE_INIT_FUNCTIONS = {**table, "default": _default_rope}
    for module in generation_modules:
        base = getattr(module, "DreamGenerationConfig", None)
        if base is None or getattr(base, "_fdw_validate_shim", False) or TRANSFORMERS_VERSION.major < 5:
            continue
        shim = type(base.__name__, (base,), {
            "validate": lambda self, *args, **kwargs: None, "_fdw_validate_shim": True,
            "__module__": base.__module__, "__qualname__": base.__qualname__})
        module.DreamGenerationConfig = shim
    model_class = getattr(modeling, "DreamModel", None)
    tied = getattr(model_class, "_tied_weights_keys", None)
    if isinstance(tied, (list, tuple)) and TRANSFORMERS_VERSION.major >= 5:
        # transformers 5: {tied parameter: its source}; tied only when the config says so.
        modeling.DreamModel = type(model_class.__name__, (model_class,), {
            "_tied_weights_keys": {name: "model.embed_tokens.weight" for name in tied},
            "__module__": model_class.__module__, "__qualname__": model_class.__qualname__})


def save_tokenizer(tokenizer: Any, directory: Union[str, Path]) -> None:
    """``tokenizer.save_pretrained(directory)`` whose files every tested release can load.

    Generic fast tokenizers are written as ``PreTrainedTokenizerFast`` (transformers 5 writes
    ``TokenizersBackend``, which 4.x rejects), without keys that only describe the saving run."""
    tokenizer.save_pretrained(str(directory))
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file() or not (Path(directory) / "tokenizer.json").is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    # 5.x writes TokenizersBackend; 4.x writes PreTrainedTokenizer (its loader adds "Fast").
    if config.get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizer"):
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    for key in _SAVE_ONLY_TOKENIZER_KEYS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8")


def lm_eval_version() -> str:
    """The installed lm-eval release (0.4.8 has no ``lm_eval.__version__``), or ``not installed``."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("lm_eval", "lm-eval"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "not installed"
