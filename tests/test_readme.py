"""The README cannot drift from the code: its quick start runs, its settings table is the config's,
its bench table is the result file's, and every result file names inputs that exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
QUICK_START = "# quick start"
CLI = "fastdllm-warmstart"


def code_blocks(text: str) -> List[Tuple[str, str]]:
    """``(language, body)`` of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def quick_start_blocks() -> List[Tuple[str, str]]:
    return [(lang, body) for lang, body in code_blocks(README.read_text(encoding="utf-8"))
            if body.startswith(QUICK_START)]


def shell_commands(body: str) -> List[List[str]]:
    """The block's commands (comments dropped, backslash continuations joined) as argv lists."""
    commands, pending = [], ""
    for line in body.splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            commands.append(shlex.split(pending))
        pending = ""
    return commands


def run_env() -> Dict[str, str]:
    # This tree first (not an installed copy), one thread, no network.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1")


def test_the_quick_start_is_marked():
    langs = [lang for lang, _ in quick_start_blocks()]
    assert "bash" in langs and "python" in langs, langs
    commands = [argv[:2] for lang, body in quick_start_blocks() if lang == "bash"
                for argv in shell_commands(body)]
    assert all(argv[0] == CLI for argv in commands), commands
    assert {argv[1] for argv in commands} >= {"generate", "make-data", "bench", "eval"}


def test_the_quick_start_runs_as_written(tmp_path):
    """Every quick-start block, in README order, in an empty folder (its relative paths land there)."""
    for lang, body in quick_start_blocks():
        if lang == "bash":
            for argv in shell_commands(body):
                assert argv[0] == CLI, f"the quick start runs only {CLI} commands: {argv}"
                _run([sys.executable, "-m", "fastdllm_warmstart.cli", *argv[1:]], tmp_path)
        else:
            assert lang == "python", lang
            _run([sys.executable, "-c", body], tmp_path)
    report = json.loads((tmp_path / "bench_fresh.json").read_text())
    assert [r["mode"] for r in report["records"]] == ["aux_only", "baseline", "token+remask"]
    assert all(r["n"] == 16 for r in report["records"])


def _run(argv: List[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


# ---------------------------------------------------------------------------------------------
# The settings table
# ---------------------------------------------------------------------------------------------

def settings_table() -> Dict[str, Tuple[str, str]]:
    """``{config key: (flag cell, default cell)}`` of the README's settings table."""
    text = README.read_text(encoding="utf-8")
    start = text.index("| flag | default | what |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        flag, default = [c.strip() for c in line.strip("|").split("|")[:2]]
        name = re.match(r"`(?:--)?([a-z0-9_-]+)`", flag).group(1)
        rows[name.replace("-", "_")] = (flag, default)
    return rows


def as_cell(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def test_the_settings_table_is_the_configs():
    from fastdllm_warmstart.config import RunConfig

    defaults = RunConfig().to_flat()
    table = settings_table()
    assert sorted(table) == sorted(defaults), "one row per config key, no other rows"
    wrong = {k: (cell, as_cell(defaults[k])) for k, (_, cell) in table.items() if cell != as_cell(defaults[k])}
    assert not wrong, f"README default != config.py default: {wrong}"


def test_every_flag_in_the_table_exists():
    help_text = subprocess.run([sys.executable, "-m", "fastdllm_warmstart.cli", "generate", "--help"],
                               env=run_env(), capture_output=True, text=True, timeout=120).stdout
    flags = [cell.strip("`") for cell, _ in settings_table().values() if cell.startswith("`--")]
    missing = [f for f in flags if not re.search(rf"{re.escape(f)}\b", help_text)]
    assert flags and not missing, missing


# ---------------------------------------------------------------------------------------------
# The results the README and docs cite
# ---------------------------------------------------------------------------------------------

def bench_table(text: str) -> List[List[str]]:
    """The rows (whitespace-split) of the bench table in a document's text block."""
    block = next(body for _, body in code_blocks(text) if body.startswith("mode "))
    return [line.split() for line in block.splitlines()[2:] if line.strip()]


def test_the_readme_bench_table_is_the_result_files():
    """The README's and docs/results.md's bench tables hold results/bench.json's figures (read
    independently of bench's own table formatter, which may gain columns)."""
    records = json.loads((ROOT / "results" / "bench.json").read_text())["records"]
    for doc in (README, ROOT / "docs" / "results.md"):
        rows = bench_table(doc.read_text(encoding="utf-8"))
        assert [row[0] for row in rows] == [r["mode"] for r in records], doc.name
        for row, r in zip(rows, records):
            lo, hi = r["accuracy_ci95"]
            expected = [r["mode"], str(r["n"]), f"{r['accuracy']:.3f}", f"[{lo:.3f},{hi:.3f}]",
                        f"{r['accuracy_flexible']:.3f}"]
            assert row[:5] == expected, (doc.name, row)
            if r["mode"] != "aux_only":
                assert row[5] == f"{r['mean_nfe']:.2f}", (doc.name, row)
                times = [f"{r[k]:.1f}" for k in ("dllm_s", "aux_s", "wall_s")]
                assert any(row[i:i + 3] == times for i in range(6, len(row) - 2)), (doc.name, row)


def result_files() -> List[Tuple[Path, Dict[str, Any]]]:
    """Every result file with its header: a bench JSON, or a sweep JSONL's ``meta`` line."""
    out = []
    for path in sorted((ROOT / "results").rglob("*.json")):
        head = json.loads(path.read_text())
        if isinstance(head, list) or "comparisons" in head or "series" in head:
            continue  # a bench or sweep preset, or a paired comparison of result files (checked below)
        out.append((path, head))
    for path in sorted((ROOT / "results").rglob("*.jsonl")):
        if path.parent.name == "data" or path.name.endswith(".partial.jsonl"):
            continue  # inputs; a run's progress file (git-ignored)
        first = json.loads(path.read_text().split("\n", 1)[0])
        out.append((path, first["meta"]))
    return out


def test_every_result_file_names_inputs_that_exist():
    files = result_files()
    assert len(files) >= 10
    for path, head in files:
        named = [head["data"]] + [v for k, v in (head.get("flags") or {}).items() if k == "proposals" and v]
        named += re.findall(r"--(?:data|proposals) (\S+)", head.get("command") or "")
        for item in named:
            if item.startswith("embedded:"):
                continue
            assert (ROOT / item).is_file(), f"{path.relative_to(ROOT)} names {item}, which is not there"


def comparison_files() -> List[Tuple[Path, Dict[str, Any]]]:
    """``scripts/paired_compare.py`` outputs: the result files they pair, by path."""
    out = []
    for path in sorted((ROOT / "results").rglob("*.json")):
        head = json.loads(path.read_text())
        if isinstance(head, dict) and "comparisons" in head:
            out.append((path, head))
    return out


def test_every_paired_comparison_names_result_files_that_exist():
    for path, head in comparison_files():
        assert head["files"], path
        for item in head["files"]:
            assert (ROOT / item).is_file(), f"{path.relative_to(ROOT)} pairs {item}, which is not there"


def test_nothing_under_results_is_a_leftover():
    """Every file under results/ is a result file the docs cite, an input one names, or a plot."""
    cited = "\n".join(doc.read_text(encoding="utf-8") for doc in [README, *(ROOT / "docs").glob("*.md")])
    named = set()
    for _, head in result_files():
        named.add(head["data"])
        named.update(re.findall(r"--(?:data|proposals|json|plot|out|preset) (\S+)", head.get("command") or ""))
    for _, head in comparison_files():
        named.update(head["files"])
    for path in sorted(p for p in (ROOT / "results").rglob("*") if p.is_file()):
        if path.name.endswith(".partial.jsonl"):
            continue  # a run's progress file (git-ignored): not in a clone
        rel = path.relative_to(ROOT).as_posix()
        assert rel in named or rel in cited, f"{rel}: no result file names it and no doc cites it"


@pytest.mark.parametrize("name, seed, max_events", [
    ("fresh2026.jsonl", 2026, None), ("fresh2026_5events.jsonl", 2026, 5),
    ("seed8675309.jsonl", 8675309, None), ("seed31337.jsonl", 31337, None), ("seed5.jsonl", 5, None),
    ("seed99.jsonl", 99, None), ("seed123456.jsonl", 123456, None), ("fresh2027.jsonl", 2027, None),
    ("fresh2424.jsonl", 2424, None), ("seed4001.jsonl", 4001, None), ("seed4002.jsonl", 4002, None),
    ("seed4003.jsonl", 4003, None), ("seed4004.jsonl", 4004, None), ("seed4005.jsonl", 4005, None),
    ("seed4006.jsonl", 4006, None), ("seed5001.jsonl", 5001, None),
])
def test_result_inputs_are_what_their_make_data_command_draws(name, seed, max_events):
    from fastdllm_warmstart.tasks import tinygsm

    committed = tinygsm.load_jsonl(ROOT / "results" / "data" / name)
    assert committed == tinygsm.generate_problems(seed, 300, max_events=max_events)


def test_the_docs_links_resolve():
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"https?://", target):
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}"


@pytest.mark.skipif(os.environ.get("FASTDLLM_README_BENCH") != "1",
                    reason="3 minutes of CPU: set FASTDLLM_README_BENCH=1 to rerun the README's bench")
def test_the_readme_bench_reproduces(tmp_path):
    """The deterministic columns (accuracy, NFE) of `bench` again equal the committed ones."""
    out = tmp_path / "bench.json"
    _run([sys.executable, "-m", "fastdllm_warmstart.cli", "bench", "--quiet", "--json", str(out)], tmp_path)
    keys = ("mode", "n", "accuracy", "accuracy_flexible", "mean_nfe")
    fresh = [{k: r.get(k) for k in keys} for r in json.loads(out.read_text())["records"]]
    committed = [{k: r.get(k) for k in keys}
                 for r in json.loads((ROOT / "results" / "bench.json").read_text())["records"]]
    assert fresh == committed
