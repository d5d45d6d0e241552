"""Locating and importing the Dream model of a user's Fast-dLLM checkout (never vendored here).

Fast-dLLM's second family lives in ``dream/`` (June-2025 layout) or ``v1/dream/`` (today's), next
to ``llada/``: ``model/modeling_dream.py`` (``DreamModel``, ``DreamConfig``) and
``model/generation_utils_block.py`` (``DreamGenerationMixin`` with the threshold, block and
dual-cache loop that its ``eval.py`` binds onto the model). The checkout is found as for LLaDA
(:mod:`.upstream`: an explicit path, ``FAST_DLLM_PATH``, then ``sys.path``); pointing at the
``dream`` folder itself also works. Its package is imported under a name of its own, and the
shims that let today's transformers run it (:func:`fastdllm_warmstart.compat.dream_module_shims`)
go into that private import only: the checkout's files and the user's own imports are untouched.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from .upstream import ENV_VAR, UpstreamError, first_checkout, private_package


_MODEL_FILES = ("modeling_dream.py", "configuration_dream.py", "generation_utils_block.py")


@dataclass(frozen=True)
class UpstreamDream:
    root: Path                  # the folder holding model/ (the checkout's dream/ or v1/dream/)
    model_class: Any            # DreamModel
    config_class: Any           # DreamConfig
    generation_mixin: Any       # DreamGenerationMixin of generation_utils_block (eval.py's loop)
    generation_config_class: Any  # DreamGenerationConfig of that module


def dream_dir(path) -> Optional[Path]:
    """The ``dream`` folder inside a checkout (either layout), or None."""
    base = Path(path).expanduser()
    for cand in (base, base / "dream", base / "v1" / "dream"):
        if all((cand / "model" / name).is_file() for name in _MODEL_FILES):
            return cand.resolve()
    return None


@lru_cache(maxsize=8)
def _import_dream(root: Path) -> UpstreamDream:
    from .compat import dream_module_shims

    name = private_package(root, "fast_dllm_dream_")
    try:
        modeling = importlib.import_module(f"{name}.model.modeling_dream")
        block = importlib.import_module(f"{name}.model.generation_utils_block")
        plain = importlib.import_module(f"{name}.model.generation_utils")
    except Exception as exc:  # noqa: BLE001 - report any import failure of user code clearly
        raise UpstreamError(f"Found Fast-dLLM's Dream at {root} but importing its model failed: "
                            f"{exc!r}. Install its requirements or unset {ENV_VAR}.") from exc
    dream_module_shims(modeling, modeling, block, plain)
    return UpstreamDream(root=root, model_class=modeling.DreamModel, config_class=modeling.DreamConfig,
                         generation_mixin=block.DreamGenerationMixin,
                         generation_config_class=block.DreamGenerationConfig)


def find_upstream_dream(explicit: Optional[str] = None) -> Optional[UpstreamDream]:
    """The Dream model of the user's Fast-dLLM checkout, imported; None when there is none."""
    return first_checkout(explicit, dream_dir, _import_dream, "Dream model",
                          f"dream/model/{{{', '.join(_MODEL_FILES)}}} (or v1/dream/...)")
