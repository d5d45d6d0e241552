"""``tinygsm`` problem files: JSONL read (checked at the door), written, and the shipped splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Union

from ..jsonl_store import read_jsonl
from .tinygsm_words import Problem

# What a command needs of every problem it reads (``final`` is optional: the answer's ``#### N``
# is the gold).
PROBLEM_FIELDS = {"question": str, "answer": str}


def write_jsonl(problems: Sequence[Problem], path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path



def load_jsonl(path: Union[str, Path]) -> List[Problem]:
    """The problems of a JSONL file; a row without a string ``question`` or ``answer`` (or a line
    that is not JSON) raises :class:`~fastdllm_warmstart.jsonl_store.InputFileError` naming the
    file, the line and the field."""
    return read_jsonl(path, PROBLEM_FIELDS, what="problem")


def default_split_path(split: str) -> Path:
    """Path of the shipped ``train`` / ``test`` split (works from any working directory)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return Path(__file__).resolve().parent / "data" / f"tinygsm_{split}.jsonl"



__all__ = ["PROBLEM_FIELDS", "default_split_path", "load_jsonl", "write_jsonl"]
