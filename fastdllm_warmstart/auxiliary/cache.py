"""An append-only JSONL cache of auxiliary-model proposals (a :class:`JsonlStore`).

One JSON object per line::

    {"key": "<sha256>", "prompt": ..., "model_id": ..., "settings": {...},
     "text": "<aux output text>", "aux_tokens": 17, "aux_seconds": 0.031}

The cache stores the aux model's *text*, not token ids, so one cache serves any dLLM tokenizer and
any canvas length: the proposer re-aligns the text to the target tokenizer on every read. The key
covers everything that decides that text: the prompt, the aux model id and the generation settings
(``max_new_tokens``, whether the chat template was applied, greedy decoding).

A run killed while appending leaves a cut-off last line; the store skips it with a warning and the
next append starts on a fresh line. A complete line without a string ``key`` and ``text`` (another
kind of file passed as the cache) is an :class:`InputFileError` naming the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from ..jsonl_store import JsonlStore, check_fields

PathLike = Union[str, "os.PathLike[str]"]

CACHE_FIELDS = {"key": str, "text": str}


class ProposalCache:
    """Append-only JSONL proposal cache; later lines win over earlier ones with the same key."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self._store = JsonlStore(self.path, label="Proposal cache")
        self._records: Dict[str, Dict[str, Any]] = {}
        for lineno, record in self._store.read_lines():
            check_fields(record, CACHE_FIELDS, self.path, lineno, what="proposal cache line")
            self._records[record["key"]] = record

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
        entry = {**record, "key": key}
        self._store.append(entry)
        self._records[key] = entry

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)


__all__ = ["CACHE_FIELDS", "ProposalCache"]
