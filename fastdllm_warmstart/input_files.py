"""The files a command reads, checked at the door: data files, bench presets and sweep presets.

Each is read and validated once, before any model is loaded; a problem raises
:class:`~fastdllm_warmstart.jsonl_store.InputFileError`, one message naming the file, the line
and the field (the command line prints it as one line and exits with status 2).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .config import ConfigError, configs_from_flat
from .jsonl_store import InputFileError, check_fields

# A preset mode's settings may also name another dLLM to decode with (same tokenizer).
MODE_ONLY_KEYS = ("model",)


class _Located(dict):
    """A JSON object that remembers the line it starts on."""

    line: Optional[int] = None


def _located_decoder() -> json.JSONDecoder:
    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args):
        s, end = s_and_end
        obj, after = json.decoder.JSONObject(s_and_end, *args)
        located = _Located(obj)
        located.line = s.count("\n", 0, end) + 1
        return located, after

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # the Python scanner calls parse_object
    return decoder


def line_of(obj: Any) -> Optional[int]:
    """The line a JSON object read by :func:`read_json` starts on (None for other values)."""
    return getattr(obj, "line", None)


def read_json(path: Any, what: str = "file") -> Any:
    """A JSON file whose objects know their line (:func:`line_of`), or :class:`InputFileError`."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(path, f"no such {what}; check the path.")
    text = p.read_text(encoding="utf-8", errors="replace")
    try:
        return _located_decoder().decode(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(path, f"not valid JSON ({exc.msg}, column {exc.colno}).", exc.lineno) from None


def check_settings(settings: Any, path: Any, line: Optional[int], where: str) -> Dict[str, Any]:
    """Flat config settings of a preset entry: an object of known keys with valid values."""
    if not isinstance(settings, dict):
        raise InputFileError(path, f"{where}: \"settings\" must be an object of flat config keys.", line)
    try:
        configs_from_flat({k: v for k, v in settings.items() if k not in MODE_ONLY_KEYS})
    except ConfigError as exc:
        raise InputFileError(path, f"{where}: {exc}", line_of(settings) or line) from None
    return settings


def load_bench_preset(path: Any) -> List[Dict[str, Any]]:
    """A bench preset: a JSON list of ``{"mode": name, "settings": {flat config keys}}``."""
    modes = read_json(path, "preset file")
    if not isinstance(modes, list) or not modes:
        raise InputFileError(path, 'a bench preset is a non-empty JSON list of {"mode": name, '
                                   '"settings": {flat config keys}}.', line_of(modes) or 1)
    seen = set()
    for m in modes:
        check_fields(m, {"mode": str}, path, line_of(m), what="mode")
        if m["mode"] in seen:
            raise InputFileError(path, f"mode {m['mode']!r} appears twice; give each mode its own name.",
                                 line_of(m))
        seen.add(m["mode"])
        check_settings(m.get("settings", {}), path, line_of(m), f"mode {m['mode']!r}")
    return [dict(m) for m in modes]


def check_sweep_settings(points: List[Mapping[str, Any]], path: Any) -> None:
    """Every expanded sweep point's settings build a valid config (checked before any decoding)."""
    for p in points:
        check_settings(p["settings"], path, p.get("line"), f"sweep point {p['mode']!r}")
