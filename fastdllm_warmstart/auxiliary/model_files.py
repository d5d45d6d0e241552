"""Loading a local Hugging Face causal LM for the aux model, and the fingerprint that names it in
proposal-cache keys and result files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..config import ConfigError

PathLike = Union[str, "os.PathLike[str]"]

# Weight files up to this total size are content-hashed into the model id (cache key); larger
# models are identified by file names, sizes and modification times (hashing 16 GB is too slow).
_HASH_WEIGHTS_UP_TO = 256 * 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_METADATA_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def resolve_model_path(path: Optional[PathLike]) -> Tuple[str, str]:
    """(directory or name to load, model id for cache keys). None is the embedded ``tiny-aux``;
    ``embedded:NAME`` another embedded aux (``embedded:tiny-aux-dllmtok``: the same recipe on the
    dLLM's tokenizer), named as the dLLM loader names embedded models."""
    if path is None or str(path).startswith("embedded:"):
        from ..assets import ASSETS_DIR, AUX_NAME, asset_path

        name = AUX_NAME if path is None else str(path).split(":", 1)[1].split("@", 1)[0]
        try:
            directory = asset_path(name)  # FileNotFoundError naming the fix when absent
        except FileNotFoundError as exc:
            known = sorted(d.name for d in ASSETS_DIR.iterdir() if (d / "config.json").is_file())
            raise FileNotFoundError(f"{exc} Embedded models here: "
                                    f"{', '.join('embedded:' + k for k in known)}.") from None
        return str(directory), f"embedded:{name}@{model_fingerprint(directory)}"
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"aux_model={str(path)!r} is a directory without config.json; point aux_model at "
                f"a saved Hugging Face causal LM (model.save_pretrained + "
                f"tokenizer.save_pretrained).")
        # The path as given, not resolved: cache lines and result files carry no machine layout
        # (the fingerprint already tells two models apart).
        return str(local), f"{path}@{model_fingerprint(local)}"
    if local.exists() or local.is_absolute() or str(path).startswith((".", "~")):
        raise FileNotFoundError(
            f"aux_model={str(path)!r} is not a model directory; pass a local directory holding a "
            f"saved causal LM and its tokenizer, or leave aux_model unset for the embedded "
            f"tiny-aux model.")
    return str(path), str(path)  # a hub-style name, loaded from the local HF cache only


def load_local(name: str, dtype: Any) -> Tuple[Any, Any]:
    """AutoModelForCausalLM + AutoTokenizer from local files only, with errors that name the fix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..compat import dtype_kwargs

    kwargs: Dict[str, Any] = {"local_files_only": True, **dtype_kwargs(dtype)}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"Cannot load aux_model={name!r} as a causal language model ({type(exc).__name__}: "
            f"{exc}). The aux must be an autoregressive LM that AutoModelForCausalLM can load "
            f"from local files (e.g. a Llama/Qwen checkpoint directory); download it first, "
            f"there is no network access at run time.") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"Cannot load the tokenizer of aux_model={name!r} ({exc}); save it next "
                          f"to the model with tokenizer.save_pretrained.") from exc
    return model, tokenizer


def model_fingerprint(directory: PathLike) -> str:
    """A short hash identifying a saved model, so a retrained aux does not reuse stale cache lines.

    Metadata and tokenizer files are content-hashed; weights too when small (<= 256 MiB in all),
    otherwise by name, size and modification time.
    """
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in _METADATA_FILES:
        file = directory / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    weights = sorted(f for f in directory.iterdir() if f.suffix in _WEIGHT_SUFFIXES and f.is_file())
    by_content = sum(f.stat().st_size for f in weights) <= _HASH_WEIGHTS_UP_TO
    for file in weights:
        digest.update(file.name.encode() + b"\0")
        if by_content:
            digest.update(file.read_bytes())
        else:
            stat = file.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


__all__ = ["load_local", "model_fingerprint", "resolve_model_path"]
