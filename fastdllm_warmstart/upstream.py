"""Locating and importing a user's own Fast-dLLM checkout (never vendored here).

Search order: an explicit path argument, the ``FAST_DLLM_PATH`` environment variable, then every
``sys.path`` entry. A checkout root may use the v1 layout (``llada/generate.py``) or the newer one
(``v1/llada/generate.py``); pointing directly at the ``llada`` folder also works.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

ENV_VAR = "FAST_DLLM_PATH"


class UpstreamError(RuntimeError):
    """The named Fast-dLLM checkout exists but cannot be used."""


@dataclass(frozen=True)
class Upstream:
    root: Path                      # the folder holding generate.py and model/
    get_transfer_index: Optional[Callable[..., Any]]
    generate_module: Any
    model_class: Any                # LLaDAModelLM, or None if its imports fail


def llada_dir(path: os.PathLike) -> Optional[Path]:
    """The ``llada`` folder inside a checkout (either layout), or None."""
    base = Path(path).expanduser()
    for cand in (base, base / "llada", base / "v1" / "llada"):
        if (cand / "generate.py").is_file() and (cand / "model" / "modeling_llada.py").is_file():
            return cand.resolve()
    return None


def _load_module(name: str, file: Path, search_dir: Path):
    """Import ``file`` as module ``name`` with ``search_dir`` importable (upstream's own imports
    are relative to its folder: ``from model.modeling_llada import ...``)."""
    added = str(search_dir) not in sys.path
    if added:
        sys.path.insert(0, str(search_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        if added:
            sys.path.remove(str(search_dir))


@lru_cache(maxsize=8)
def _import_checkout(root: Path) -> Upstream:
    try:
        gen = _load_module("fast_dllm_upstream_generate", root / "generate.py", root)
    except Exception as exc:  # noqa: BLE001 - report any import failure of user code clearly
        raise UpstreamError(f"Found a Fast-dLLM checkout at {root} but importing its generate.py "
                            f"failed: {exc!r}. Install its requirements (e.g. `pip install einops`) "
                            "or unset FAST_DLLM_PATH.") from exc
    model_module = sys.modules.get("model.modeling_llada")
    model_class = getattr(gen, "LLaDAModelLM", None) or getattr(model_module, "LLaDAModelLM", None)
    return Upstream(root=root, get_transfer_index=getattr(gen, "get_transfer_index", None),
                    generate_module=gen, model_class=model_class)


def candidate_roots(explicit: Optional[str] = None):
    if explicit:
        yield explicit, True
    env = os.environ.get(ENV_VAR)
    if env:
        yield env, True
    for entry in sys.path:
        if entry:
            yield entry, False


def find_upstream(explicit: Optional[str] = None) -> Optional[Upstream]:
    """The user's Fast-dLLM checkout, imported; None when there is none."""
    for path, named in candidate_roots(explicit):
        root = llada_dir(path)
        if root is None:
            if named:
                raise UpstreamError(f"No Fast-dLLM checkout at {path!r}: expected llada/generate.py "
                                    "and llada/model/modeling_llada.py (or v1/llada/...). Fix the "
                                    f"path or unset {ENV_VAR}.")
            continue
        upstream = _import_checkout(root)
        logger.info("Using Fast-dLLM checkout at %s", root)
        return upstream
    return None
