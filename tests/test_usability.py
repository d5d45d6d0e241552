"""Rough edges a new user hits: over-long prompts, result files that travel, quiet output."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest

from fastdllm_warmstart.assets import ASSETS_DIR
from fastdllm_warmstart.cli import main
from fastdllm_warmstart.config import configs_from_flat
from fastdllm_warmstart.loading import load_dllm, model_max_length
from fastdllm_warmstart.runner import PromptTooLongError, WarmStartRunner

REPO = Path(__file__).resolve().parents[1]
TOM = "Tom has 7 apples. He buys 5 more apples. How many apples does Tom have now?"


@contextlib.contextmanager
def package_warnings(caplog):
    """caplog for this package's warnings, even after ``eval`` gave the package logger its own
    handler (propagate=False) earlier in the session."""
    logger = logging.getLogger("fastdllm_warmstart")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.WARNING if old_level == logging.NOTSET else min(old_level, logging.WARNING))
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)


def run_cli(args, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fastdllm_warmstart.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


# -- over-long input -----------------------------------------------------------------------------

def test_embedded_models_declare_their_length_limit():
    dllm = json.loads((ASSETS_DIR / "tiny-dllm" / "config.json").read_text())
    aux = json.loads((ASSETS_DIR / "tiny-aux" / "config.json").read_text())
    assert dllm["max_sequence_length"] > 0 and aux["max_position_embeddings"] > 0
    model, _, model_id = load_dllm(None)
    assert model_max_length(model) == dllm["max_sequence_length"]
    assert model_id.startswith("embedded:tiny-dllm@")


def test_cli_overlong_prompt_is_one_error_line_exit_2():
    limit = json.loads((ASSETS_DIR / "tiny-dllm" / "config.json").read_text())["max_sequence_length"]
    words = " ".join([TOM] * (20_000 // len(TOM.split()) + 1))  # > 20,000 words
    proc = run_cli(["generate", "--prompt", words, "--warm-init", "token"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    match = re.search(r"(\d+) prompt tokens \+ gen_length (\d+) = (\d+) positions exceed the model's "
                      r"limit of (\d+)", lines[0])
    assert match, lines[0]
    prompt_tokens, gen, total, stated_limit = map(int, match.groups())
    assert prompt_tokens > 20_000 and total == prompt_tokens + gen and stated_limit == limit
    assert proc.stdout == ""


def test_runner_errors_or_left_truncates(random_model_dirs, caplog):
    config = configs_from_flat({"gen_length": 32, "block_length": 16})
    runner = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], config, device="cpu")
    assert runner.max_length == 1024  # TinyLLaDAConfig's default max_sequence_length
    runner.max_length = 100
    long_prompt = " ".join(["7"] * 150)
    with pytest.raises(PromptTooLongError, match="150 prompt tokens .* limit of 100"):
        runner.generate([long_prompt])
    assert runner.generate(["7 7 7"])[0].nfe >= 1  # short prompts still fit
    runner.truncation = "left"
    with package_warnings(caplog):
        ids = runner.fit_to_length(runner.encode([long_prompt, "7 7"]))
        result = runner.generate([long_prompt])[0]
    assert [len(r) for r in ids] == [100 - 32, 2]
    assert "Left truncation applied. Original sequence length was 150" in caplog.text
    assert result.nfe >= 1
    runner.max_length = 32  # no room for any prompt: an error even with left truncation
    with pytest.raises(PromptTooLongError, match="lower gen_length"):
        runner.fit_to_length([[7]])


def test_lm_eval_model_left_truncates_with_warning(random_model_dirs, caplog):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from fastdllm_warmstart.lm_eval_model import LLaDAWarmStartLM

    lm = LLaDAWarmStartLM(model_path=random_model_dirs["dllm"], gen_length=16, block_length=8,
                          threshold=0.9, device="cpu", batch_size=2, max_length=64)
    assert lm.runner.max_length == 64 and lm.runner.truncation == "left"
    context = "Question: " + " ".join(["7"] * 200) + "\nAnswer:"
    request = Instance("generate_until", {}, (context, {"until": ["Question:"]}), 0, ("tinygsm", 0, 1))
    with package_warnings(caplog):
        answers = lm.generate_until([request])
    assert len(answers) == 1 and isinstance(answers[0], str)
    assert "Left truncation applied" in caplog.text and "truncating to last 48 tokens" in caplog.text


# -- result files that travel --------------------------------------------------------------------

def absolute_paths(value, where="$"):
    """Every string in a JSON value that is, or contains a word that is, an absolute path."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += absolute_paths(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += absolute_paths(v, f"{where}[{i}]")
    elif isinstance(value, str):
        for word in re.split(r"[\s=,;\"']+", value):
            if word and (word.startswith(("/", "~")) or PureWindowsPath(word).is_absolute()):
                found.append((where, value))
                break
    return found


def test_absolute_path_detector():
    assert absolute_paths({"a": ["x", {"b": "/tmp/x.jsonl"}]}) == [("$.a[1].b", "/tmp/x.jsonl")]
    assert absolute_paths({"c": "fastdllm-warmstart bench --data=/home/u/f.jsonl"})
    assert absolute_paths({"d": "C:\\Users\\u\\f.jsonl"})
    assert not absolute_paths({"e": "embedded:tiny-dllm@0123", "f": "results/bench.json", "g": "1/2"})


@pytest.mark.parametrize("path", sorted((REPO / "results").glob("*.json")), ids=lambda p: p.name)
def test_committed_result_files_have_no_absolute_paths(path):
    assert absolute_paths(json.loads(path.read_text())) == []


def test_bench_writes_no_absolute_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["bench", "--limit", "3", "--modes", "baseline,token", "--gen-length", "32",
                 "--block-length", "16", "--json", "out/bench.json", "--quiet"])
    assert code == 0
    result = json.loads(Path("out/bench.json").read_text())
    assert absolute_paths(result) == []
    assert result["data"].startswith("embedded:tinygsm_test.jsonl@")
    assert result["model"].startswith("embedded:tiny-dllm@")
    assert result["aux_model"].startswith("embedded:tiny-aux@")
    assert result["command"].startswith("fastdllm-warmstart bench --limit 3")
    # A user's data file is recorded as given.
    Path("probs.jsonl").write_text("".join(json.dumps({"question": "What is 3 + 4?", "answer": "#### 7"}) + "\n"
                                           for _ in range(2)))
    assert main(["bench", "--data", "probs.jsonl", "--modes", "baseline", "--gen-length", "32",
                 "--block-length", "16", "--json", "out/b2.json", "--quiet"]) == 0
    assert json.loads(Path("out/b2.json").read_text())["data"] == "probs.jsonl"


def test_aux_model_id_keeps_the_path_as_given(random_model_dirs, tmp_path, monkeypatch):
    from fastdllm_warmstart.auxiliary.proposer import _resolve_model_path

    monkeypatch.chdir(Path(random_model_dirs["aux"]).parent)
    directory, model_id = _resolve_model_path("aux")
    assert Path(directory).name == "aux" and model_id.startswith("aux@")


# -- quiet output ----------------------------------------------------------------------------------

def test_cli_generate_prints_no_loading_bar():
    proc = run_cli(["generate", "--prompt", TOM, "--warm-init", "token", "--gen-length", "32",
                    "--block-length", "16"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Answer:" in proc.stdout
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr, proc.stderr
    assert "[transformers]" not in proc.stderr, proc.stderr


def test_verbose_flag_before_or_after_the_subcommand():
    from fastdllm_warmstart.cli import build_parser

    parser = build_parser()
    for command in (["generate", "--prompt", "x"], ["bench"], ["trace", "--prompt", "x"],
                    ["make-data", "--seed", "1", "--n", "2", "--out", "f.jsonl"]):
        assert parser.parse_args(command).verbose is False
        assert parser.parse_args(command[:1] + ["--verbose"] + command[1:]).verbose is True
        assert parser.parse_args(["-v"] + command).verbose is True


def test_quiet_loading_hides_transformers_bars_unless_verbose():
    from transformers.utils import logging as hf_logging

    from fastdllm_warmstart.verbosity import quiet_loading, set_verbose, verbose_enabled

    was_verbose, bars_were_on = verbose_enabled(), hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        set_verbose(False)
        with quiet_loading():
            assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.is_progress_bar_enabled()  # restored
        set_verbose(True)  # --verbose
        with quiet_loading():
            assert hf_logging.is_progress_bar_enabled()
    finally:
        set_verbose(was_verbose)
        if not bars_were_on:
            hf_logging.disable_progress_bar()


def test_embedded_id_with_a_stale_fingerprint_warns():
    """A result file or an RCD config names ``embedded:NAME@<fingerprint>``; when the package ships
    other weights under that name now, loading it says so (the results will not reproduce)."""
    import logging

    from fastdllm_warmstart.loading import load_dllm

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("fastdllm_warmstart.loading")  # other tests may stop propagation to caplog
    handler = Keep(level=logging.WARNING)
    log.addHandler(handler)
    try:
        _, _, model_id = load_dllm("embedded:tiny-dllm")
        load_dllm(model_id)  # the current fingerprint: silent
        assert not [m for m in records if "weights changed" in m]
        load_dllm("embedded:tiny-dllm@0123456789abcdef")
    finally:
        log.removeHandler(handler)
    assert [m for m in records if "weights changed" in m and model_id in m and "@0123456789abcdef" in m]
