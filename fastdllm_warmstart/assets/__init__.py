"""The embedded tiny models shipped as package data."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
DLLM_NAME = "tiny-dllm"
AUX_NAME = "tiny-aux"
# The same aux recipe on the tiny dLLM's tokenizer: one vocabulary, so APD's logit mixture applies
# and the tokenizer bridge is the identity (scripts/TRAINING-tiny-aux.md).
AUX_DLLMTOK_NAME = "tiny-aux-dllmtok"


def asset_path(name: str) -> Path:
    """Directory of an embedded model (``tiny-dllm``, ``tiny-aux``, ``tiny-aux-dllmtok``...)."""
    path = ASSETS_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The embedded model {name!r} is missing at {path}. Reinstall the package from a full "
            f"clone, or pass an explicit model path.")
    return path
