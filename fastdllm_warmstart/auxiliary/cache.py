"""An append-only JSONL cache of auxiliary-model proposals.

One JSON object per line::

    {"key": "<sha256>", "prompt": ..., "model_id": ..., "settings": {...},
     "text": "<aux output text>", "aux_tokens": 17, "aux_seconds": 0.031}

The cache stores the aux model's *text*, not token ids, so one cache serves any dLLM tokenizer and
any canvas length: the proposer re-aligns the text to the target tokenizer on every read. The key
covers everything that decides that text: the prompt, the aux model id and the generation settings
(``max_new_tokens``, whether the chat template was applied, greedy decoding).

A run killed while appending leaves a truncated last line; it is skipped with a warning when the
file is read, and the next append starts on a fresh line, so the file stays valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class ProposalCache:
    """Append-only JSONL proposal cache; later lines win over earlier ones with the same key."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._records: Dict[str, Dict[str, Any]] = {}
        # True when the file does not end with a newline (truncated last line of a killed run).
        self._needs_newline = False
        if self.path.exists():
            self._load()

    @staticmethod
    def key(prompt: str, model_id: str, settings: Mapping[str, Any]) -> str:
        """sha256 of (prompt, aux model id, generation settings), order-independent in settings."""
        payload = json.dumps([prompt, model_id, dict(settings)], sort_keys=True,
                             ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        """The stored record for ``key`` (a copy), or ``None``."""
        record = self._records.get(key)
        return dict(record) if record is not None else None

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        """Append ``record`` (must hold ``text``) under ``key`` and flush it to disk."""
        if not isinstance(record.get("text"), str):
            raise ValueError("A proposal cache record needs a 'text' string.")
        entry = dict(record)
        entry["key"] = key
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            if self._needs_newline:
                handle.write("\n")
                self._needs_newline = False
            handle.write(line)
            handle.flush()
        self._records[key] = entry

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def _load(self) -> None:
        raw = self.path.read_text(encoding="utf-8", errors="replace")
        self._needs_newline = bool(raw) and not raw.endswith("\n")
        lines = raw.split("\n")
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = self._parse(line)
            if record is None:
                where = "truncated last line" if lineno == len(lines) else "unreadable line"
                logger.warning("Proposal cache %s: skipping %s %d (an interrupted write?).",
                               self.path, where, lineno)
                continue
            self._records[record["key"]] = record

    @staticmethod
    def _parse(line: str) -> Optional[Dict[str, Any]]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(record, dict) or not isinstance(record.get("key"), str) \
                or not isinstance(record.get("text"), str):
            return None
        return record


__all__ = ["ProposalCache"]
