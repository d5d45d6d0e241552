"""Which base a dLLM was trained from, as its files record it, and the bench modes that must
not stand under the base's name.

A model trained on top of another (``scripts/train_rcd.py`` starts from the shipped dLLM) records
that base's id, ``embedded:tiny-dllm@<fingerprint>``, in its ``config.json`` (``base_model``)
or its ``train_log.json`` (``base_model``, or ``reference`` in older exports). When the shipped base has since been replaced, the
model's figures compare it with a base it never saw: such a mode is dropped from the default
bench table (with a one-line warning), and kept with the same warning when asked for by name.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)

# Where a model's files record its base: config.json first (``base_model``, written by
# scripts/train_rcd.py's exporter), then the training log (older exports: ``reference``).
_BASE_KEYS = (("config.json", "base_model"), ("train_log.json", "base_model"),
              ("train_log.json", "reference"))


def model_dir(model_path: Optional[str]) -> Optional[Path]:
    """The folder of a model named as the loaders name it (None / ``embedded:NAME`` / a path)."""
    from .assets import ASSETS_DIR, DLLM_NAME

    text = "" if model_path is None else str(model_path)
    if text in ("", "embedded"):
        return ASSETS_DIR / DLLM_NAME
    if text.startswith("embedded:"):
        return ASSETS_DIR / text.split(":", 1)[1].split("@", 1)[0]
    path = Path(text).expanduser()
    return path if path.is_dir() else None


def recorded_base(model_path: Optional[str]) -> Optional[str]:
    """The base model id the model's files record (``embedded:NAME@fingerprint``), or None."""
    folder = model_dir(model_path)
    if folder is None:
        return None
    for filename, key in _BASE_KEYS:
        try:
            value = json.loads((folder / filename).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value.startswith("embedded:") and "@" in value:
            return value
    return None


def drop_stale_modes(modes: List[Dict[str, Any]], mode_models: Dict[str, Optional[str]],
                     base_model: Optional[str], base_model_id: str, *,
                     default_table: bool) -> List[Dict[str, Any]]:
    """``modes`` without those whose own model (``mode_models``; ``base_model`` is the table's
    dLLM, whose id is ``base_model_id``) was trained from another base, when ``default_table``;
    each such mode gets one warning."""
    kept = []
    for m in modes:
        path = mode_models[m["mode"]]
        trained_from = recorded_base(path) if path != base_model else None
        if trained_from is None or trained_from == base_model_id:
            kept.append(m)
            continue
        if default_table:
            logger.warning("bench: mode %r dropped from the default table: %s was trained from %s, not "
                           "from this table's dLLM %s; name it in --modes to run it anyway.",
                           m["mode"], path, trained_from, base_model_id)
            continue
        logger.warning("bench: mode %r: %s was trained from %s, not from this table's dLLM %s; its "
                       "figures do not compare with the other modes'.", m["mode"], path, trained_from,
                       base_model_id)
        kept.append(m)
    if not kept:
        raise ValueError("every mode of the preset was dropped (trained from another base); "
                         "name the modes to run in --modes.")
    return kept
