"""Loading the diffusion LM: the embedded tiny model, or a LLaDA or Dream checkpoint.

A LLaDA checkpoint (``model_type: llada``) is loaded with the ``LLaDAModelLM`` class of the user's
Fast-dLLM checkout when one is found (it has the KV cache the prefix/dual strategies need), else
with the checkpoint's own remote code (``trust_remote_code``), which may lack a KV cache. A Dream
checkpoint (``model_type: Dream``) likewise with the checkout's ``DreamModel`` (``dream/`` or
``v1/dream/``), else its remote code (no cache: ``cache='none'`` only). ``model_type: tiny_dream``
is the tiny Dream-protocol test model. The engine reads the family from the loaded model's config
(:func:`fastdllm_warmstart.engine.protocol.protocol_for`).
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from .assets import DLLM_NAME, asset_path
from .compat import dtype_kwargs, post_init_compatible
from .engine.protocol import DREAM_MODEL_TYPES
from .upstream import find_upstream
from .verbosity import quiet_loading

logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """The model path, dtype or device cannot be used; the message names the fix."""


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: Optional[str]) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"device={device!r} is not a torch device; use cpu, cuda, cuda:0 or auto.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} but no CUDA GPU is visible; use --device cpu.")
    return dev


def resolve_dtype(dtype: Union[None, str, torch.dtype], device: torch.device, large: bool) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        # LLaDA-8B runs in bf16 on GPUs as upstream does; tiny models and CPUs use fp32.
        return torch.bfloat16 if (large and device.type == "cuda") else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"dtype={dtype!r} is not supported; use one of {', '.join(sorted(_DTYPES))} "
                             "or auto.") from None


def _read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"No config.json in {path}: model_path must be a local checkpoint folder "
                             "(nothing is downloaded here). Omit it to use the embedded tiny model.")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{cfg} is not valid JSON: {exc}.") from exc


def load_dllm(model_path: Optional[str] = None, *, device: Optional[str] = "cpu",
              dtype: Union[None, str, torch.dtype] = None,
              fast_dllm_path: Optional[str] = None) -> Tuple[torch.nn.Module, object, str]:
    """Returns ``(model, tokenizer, model_id)`` with the model in eval mode on ``device``.

    ``model_id`` names the model in result files without the machine's layout:
    ``embedded:tiny-dllm@<fingerprint>`` for the embedded model, else ``model_path`` as given."""
    with quiet_loading():
        return _load_dllm(model_path, device=device, dtype=dtype, fast_dllm_path=fast_dllm_path)


def _load_dllm(model_path, *, device, dtype, fast_dllm_path):
    from transformers import AutoTokenizer

    from .models import TinyDreamModelLM, TinyLLaDAModelLM

    # None / "embedded": the embedded tiny dLLM; "embedded:NAME": another embedded model
    # (e.g. "embedded:tiny-dllm-rcd"); anything else: a checkpoint folder.
    embedded = model_path in (None, "", "embedded") or str(model_path).startswith("embedded:")
    name = str(model_path).split(":", 1)[1].split("@", 1)[0] if embedded and model_path else DLLM_NAME
    try:
        path = asset_path(name) if embedded else Path(model_path).expanduser()
    except FileNotFoundError as exc:
        from .assets import ASSETS_DIR

        known = sorted(d.name for d in ASSETS_DIR.iterdir() if (d / "config.json").is_file())
        raise ModelLoadError(f"{exc} Embedded models here: {', '.join('embedded:' + k for k in known)}.") from None
    if not path.exists():
        raise ModelLoadError(f"model_path {str(path)!r} does not exist. Give a local checkpoint folder, "
                             "or omit model_path for the embedded tiny model.")
    config = _read_config(path)
    dev = resolve_device(device)
    model_type = config.get("model_type")
    if model_type in ("tiny_llada", "tiny_dream"):
        torch_dtype = resolve_dtype(dtype, dev, large=False)
        cls = TinyLLaDAModelLM if model_type == "tiny_llada" else TinyDreamModelLM
        model = cls.from_pretrained(str(path), **dtype_kwargs(torch_dtype))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    elif model_type in DREAM_MODEL_TYPES:
        model, tokenizer = _load_dream(path, resolve_dtype(dtype, dev, large=True), fast_dllm_path)
    elif model_type == "llada":
        torch_dtype = resolve_dtype(dtype, dev, large=True)
        upstream = find_upstream(fast_dllm_path)
        if upstream is not None and upstream.model_class is not None:
            logger.info("Loading %s with LLaDAModelLM from %s", path, upstream.root)
            model = post_init_compatible(upstream.model_class).from_pretrained(
                str(path), **dtype_kwargs(torch_dtype))
        else:
            from transformers import AutoModel

            logger.warning("No Fast-dLLM checkout found: loading %s with its own remote code; "
                           "prefix/dual cache need Fast-dLLM's LLaDAModelLM (set FAST_DLLM_PATH).", path)
            model = AutoModel.from_pretrained(str(path), trust_remote_code=True,
                                              **dtype_kwargs(torch_dtype))
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)
    else:
        raise ModelLoadError(f"{path} holds a {model_type!r} model; expected a diffusion LM "
                             "(model_type 'llada', 'Dream', 'tiny_llada' or 'tiny_dream').")
    model = model.to(dev).eval()
    model_id = embedded_model_id(name, path) if embedded else str(model_path)
    asked = str(model_path).split("@", 1)[1] if embedded and model_path and "@" in str(model_path) else None
    if asked is not None and asked != model_id.split("@", 1)[1]:
        logger.warning("%s names weights this package no longer ships: it now ships %s (the weights changed "
                       "since that id was written); results will differ from those recorded with it.",
                       model_path, model_id)
    return model, tokenizer, model_id


def _load_dream(path: Path, torch_dtype: torch.dtype, fast_dllm_path: Optional[str]):
    """A Dream checkpoint with the checkout's ``DreamModel`` when one is found, else its remote code."""
    from transformers import AutoModel, AutoTokenizer

    from .upstream_dream import find_upstream_dream

    upstream = find_upstream_dream(fast_dllm_path)
    if upstream is not None:
        logger.info("Loading %s with DreamModel from %s", path, upstream.root)
        model = upstream.model_class.from_pretrained(str(path), **dtype_kwargs(torch_dtype))
    else:
        logger.warning("No Fast-dLLM checkout found: loading %s with its own remote code; prefix/dual "
                       "cache need Fast-dLLM's DreamModel (set FAST_DLLM_PATH).", path)
        model = AutoModel.from_pretrained(str(path), trust_remote_code=True, **dtype_kwargs(torch_dtype))
    return model, AutoTokenizer.from_pretrained(str(path), trust_remote_code=True)


def embedded_model_id(name: str, path: Path) -> str:
    """``embedded:NAME@fingerprint``: how result files name a model shipped with the package."""
    from .auxiliary.proposer import model_fingerprint

    return f"embedded:{name}@{model_fingerprint(path)}"


# Config attributes that bound the sequence length, in the order they are trusted.
_LENGTH_LIMIT_KEYS = ("max_sequence_length", "max_position_embeddings", "n_positions", "max_seq_len",
                      "seq_length")


def model_max_length(model) -> Optional[int]:
    """The longest sequence (prompt + canvas) the model's config declares, or None if it declares
    none. LLaDA and the embedded model: ``max_sequence_length``; HF causal LMs:
    ``max_position_embeddings``."""
    config = getattr(model, "config", None)
    for key in _LENGTH_LIMIT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


SMALL_MODEL_PARAMS = 50_000_000


def tune_cpu_threads(model, threads: Union[None, int, str] = "auto") -> int:
    """Set torch's CPU thread count for decoding; returns the count in force.

    ``auto``: one thread for small models on CPU. Their matrices are too small to split, and
    with two OpenMP threads any other busy process on a 2-core machine made decoding ~30x slower
    (measured: aux proposals 0.75 s vs 22 s for 32 prompts). Larger models keep torch's default.
    """
    if threads in (None, "", "auto"):
        on_cpu = next(model.parameters()).device.type == "cpu"
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
        if on_cpu and small:
            torch.set_num_threads(1)
        return torch.get_num_threads()
    try:
        count = int(threads)
    except (TypeError, ValueError):
        raise ModelLoadError(f"threads={threads!r} must be a positive integer or auto.") from None
    if count < 1:
        raise ModelLoadError(f"threads={count} must be >= 1 (or auto).")
    torch.set_num_threads(count)
    return count


def check_cache_support(model, cache: str) -> None:
    """Clear error when the model cannot run the asked-for cache strategy."""
    if cache == "none":
        return
    module = getattr(type(model), "__module__", "") or ""
    if getattr(getattr(model, "config", None), "model_type", None) in DREAM_MODEL_TYPES and \
            not module.startswith("fast_dllm_dream_"):
        raise ModelLoadError(f"cache={cache!r} needs Fast-dLLM's DreamModel (its keys/values and dual "
                             "cache); this Dream model was loaded from its own code. Use --cache none, or "
                             "set FAST_DLLM_PATH / --fast-dllm-path to a Fast-dLLM checkout.")
    params = inspect.signature(model.forward).parameters
    missing = [name for name in ("past_key_values", "use_cache") if name not in params]
    if cache == "dual" and "replace_position" not in params:
        missing.append("replace_position")
    if missing:
        raise ModelLoadError(
            f"cache={cache!r} needs a model whose forward takes {', '.join(missing)}; "
            f"{type(model).__name__} does not. Use --cache none, or load LLaDA through a Fast-dLLM "
            "checkout (--fast-dllm-path or FAST_DLLM_PATH).")
