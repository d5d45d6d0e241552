"""Append-only JSONL files: one crash-safe store for every resumable command, one strict reader for
input files.

:class:`JsonlStore` is what a long run appends its results to (bench progress, the lm-eval answer
store, the aux proposal cache). A run killed in the middle of a write leaves a cut-off last line;
reading skips it with a warning, and the next append first ends that line, so the row written
after it is never glued onto it and every row written after the cut reads back.

:func:`read_jsonl` is for files a user hands to a command (data, proposals, presets): it is strict,
and a malformed line raises :class:`InputFileError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class InputFileError(ValueError):
    """A file a command reads is missing or malformed; the message names the file, line and field."""

    def __init__(self, path: PathLike, message: str, line: Optional[int] = None) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")
        self.reason = message
        self.path = str(path)
        self.line = line


def _type_name(kinds: Union[type, Tuple[type, ...]]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {str: "a string", int: "a whole number", float: "a number", list: "a list",
             dict: "an object", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def check_fields(record: Any, fields: Mapping[str, Union[type, Tuple[type, ...]]], path: PathLike,
                 line: Optional[int] = None, what: str = "row") -> Dict[str, Any]:
    """``record`` must be an object holding every field in ``fields`` with one of its types."""
    if not isinstance(record, dict):
        raise InputFileError(path, f"each {what} must be a JSON object, got {type(record).__name__}.", line)
    for name, kinds in fields.items():
        if name not in record:
            raise InputFileError(path, f"the {what} has no '{name}' field; every {what} needs "
                                       f"'{name}' ({_type_name(kinds)}).", line)
        value = record[name]
        kinds_t = kinds if isinstance(kinds, tuple) else (kinds,)
        if isinstance(value, bool) and bool not in kinds_t:
            ok = False
        else:
            ok = isinstance(value, kinds_t)
        if not ok:
            raise InputFileError(path, f"field '{name}' must be {_type_name(kinds)}, got "
                                       f"{json.dumps(value)[:60]}.", line)
    return record


def read_jsonl(path: PathLike, fields: Optional[Mapping[str, Union[type, Tuple[type, ...]]]] = None,
               what: str = "row") -> List[Dict[str, Any]]:
    """Every object of a JSONL input file, checked: a bad line raises :class:`InputFileError`.

    ``fields`` maps each required field to its type(s). Blank lines are skipped.
    """
    return [record for _, record in read_jsonl_lines(path, fields, what)]


def read_jsonl_lines(path: PathLike, fields: Optional[Mapping[str, Union[type, Tuple[type, ...]]]] = None,
                     what: str = "row") -> List[Tuple[int, Dict[str, Any]]]:
    """:func:`read_jsonl` with each object's line number, ``(line, object)``, for checks across lines."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(path, "no such file; check the path.")
    rows = []
    with p.open(encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputFileError(path, f"not valid JSON ({exc.msg}); each line must be one JSON "
                                           "object.", lineno) from None
            rows.append((lineno, check_fields(record, fields or {}, path, lineno, what)))
    return rows


class JsonlStore:
    """An append-only JSONL file of records that survives a writer killed mid-line.

    ``valid`` (optional) decides whether a parsed record belongs to the store; records it rejects
    are skipped like unreadable lines.
    """

    def __init__(self, path: PathLike, valid: Optional[Callable[[Dict[str, Any]], bool]] = None,
                 label: str = "store") -> None:
        self.path = Path(path)
        self.valid = valid
        self.label = label

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.read())

    def read(self) -> List[Dict[str, Any]]:
        """The store's records in file order; cut-off or unreadable lines are skipped with a warning."""
        return [record for _, record in self.read_lines()]

    def read_lines(self) -> List[Tuple[int, Dict[str, Any]]]:
        """:meth:`read` with each record's line number, ``(line, record)``, so a caller that checks
        the records' fields can name the line."""
        if not self.path.exists():
            return []
        raw = self.path.read_text(encoding="utf-8", errors="replace")
        lines = raw.split("\n")
        records = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = self._parse(line)
            if record is None:
                where = "cut-off last line" if lineno == len(lines) else "unreadable line"
                logger.warning("%s %s: skipping %s %d (an interrupted write?).", self.label,
                               self.path, where, lineno)
                continue
            records.append((lineno, record))
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and flush it; a cut-off last line is ended first."""
        self.extend([record])

    def extend(self, records: Iterable[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(dict(r), ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def clear(self) -> None:
        """Remove the file (a fresh start)."""
        if self.path.exists():
            self.path.unlink()

    def _parse(self, line: str) -> Optional[Dict[str, Any]]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(record, dict):
            return None
        if self.valid is not None and not self.valid(record):
            return None
        return record


__all__ = ["InputFileError", "JsonlStore", "check_fields", "read_jsonl", "read_jsonl_lines"]
