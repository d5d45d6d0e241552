"""``fastdllm_warmstart.jsonl_store``: a writer killed mid-line loses nothing written after the cut;
input files fail with one line naming the file, the line and the field."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fastdllm_warmstart.jsonl_store import InputFileError, JsonlStore, read_jsonl

WRITER = r"""
import json, sys, time
from fastdllm_warmstart.jsonl_store import JsonlStore
store = JsonlStore(sys.argv[1])
for i in range(3):
    store.append({"i": i, "text": "row %d" % i})
with open(sys.argv[1], "a", encoding="utf-8") as fh:   # the fourth row, cut off mid-line
    fh.write('{"i": 3, "text": "ro')
    fh.flush()
    print("cut", flush=True)
    time.sleep(60)
"""


def test_writer_killed_mid_line_then_resumed_loses_nothing(tmp_path):
    path = tmp_path / "store.jsonl"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "cut"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not path.read_text().endswith("\n")           # the kill really left a cut-off line

    store = JsonlStore(path)
    assert [r["i"] for r in store.read()] == [0, 1, 2]   # the cut-off row is skipped, not fatal
    store.append({"i": 3, "text": "row 3 again"})
    store.extend([{"i": 4, "text": "row 4"}, {"i": 5, "text": "row 5"}])
    # A second resume reads every row written after the cut (none glued onto the cut-off line).
    assert [r["i"] for r in JsonlStore(path).read()] == [0, 1, 2, 3, 4, 5]


def test_store_validator_skips_foreign_rows(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"key": "a", "text": "x"}\n[1, 2]\n{"key": 3}\n', encoding="utf-8")
    store = JsonlStore(path, valid=lambda r: isinstance(r.get("key"), str))
    assert store.read() == [{"key": "a", "text": "x"}]


@pytest.mark.parametrize("content, needle", [
    ('{"question": "q"}\n', "line 1: the problem has no 'answer' field"),
    ('{"question": "q", "answer": "a"}\nnot json\n', "line 2: not valid JSON"),
    ('{"question": 5, "answer": "a"}\n', "line 1: field 'question' must be a string"),
    ('["q", "a"]\n', "line 1: each problem must be a JSON object"),
])
def test_read_jsonl_names_file_line_and_field(tmp_path, content, needle):
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputFileError) as err:
        read_jsonl(path, {"question": str, "answer": str}, what="problem")
    assert str(path) in str(err.value) and needle in str(err.value)


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    rows = [{"question": "q", "answer": "a"}]
    (tmp_path / "ok.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_jsonl(tmp_path / "ok.jsonl", {"question": str}) == rows
