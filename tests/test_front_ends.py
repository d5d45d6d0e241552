"""The front ends' shared pieces: the flag table generated from the config fields (the same flags,
help and types for ``cli`` and ``eval``), input files checked at the door (one line naming file,
line and field; exit 2), bench's progress store surviving a cut-off line, and the two safety
warnings of issue 21 (a stale model under the base's name; ``--warm-init embed`` on a model not
trained for soft inputs)."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import fields

import pytest

from fastdllm_warmstart.cli import build_parser, main
from fastdllm_warmstart.config import FLAT_KEYS, RunConfig, configs_from_flat
from fastdllm_warmstart.flags import add_config_flags, run_config_from_args
from fastdllm_warmstart.jsonl_store import JsonlStore

PROMPT = "Question: Tom has 7 apples. He buys 5 more apples. How many apples does Tom have now?\nAnswer:"
SMALL = ["--gen-length", "32", "--block-length", "16"]


def _helps(parser: argparse.ArgumentParser, prefix: str = "") -> dict:
    return {a.dest[len(prefix):]: a.help for a in parser._actions if a.dest.startswith(prefix)
            and a.dest[len(prefix):] in FLAT_KEYS}


# -- the flag table -----------------------------------------------------------------------------

def test_every_config_field_is_one_flag_with_its_default_from_config():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    helps = _helps(parser)
    assert sorted(helps) == sorted(FLAT_KEYS)
    defaults = RunConfig().to_flat()
    assert helps["gen_length"].endswith(f"(default: {defaults['gen_length']})")
    assert helps["threshold"].endswith(f"(default: {defaults['threshold']:g})")
    assert helps["steps"].endswith("(default: gen_length)")  # what None means, from the field
    # "no threshold means the fixed schedule" is said once, at --threshold
    assert [k for k, h in helps.items() if "fixed schedule" in h and "none" in h] == ["threshold"]


def test_explicit_none_is_not_unset():
    """``--threshold none`` is the fixed schedule (it used to be dropped as "flag not given")."""
    args = build_parser().parse_args(["generate", "--prompt", "x", "--threshold", "none", "--steps", "96"])
    config = run_config_from_args(args)
    assert config.decode.threshold is None and config.decode.commit_rule == "schedule"
    assert run_config_from_args(build_parser().parse_args(["generate", "--prompt", "x"])).decode.threshold \
        == RunConfig().decode.threshold


def test_flag_values_are_checked_with_the_config_message(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["generate", "--prompt", "x", "--rho", "lots"])
    assert exc.value.code == 2 and "rho='lots': expected a number" in capsys.readouterr().err


def test_cli_and_eval_share_one_flag_table():
    pytest.importorskip("lm_eval._cli.run")
    from fastdllm_warmstart.eval import build_parser as eval_parser

    cli = _helps(build_parser()._subparsers._group_actions[0].choices["generate"])
    ev = _helps(eval_parser(), prefix="fdw_")
    assert sorted(cli) == sorted(ev) == sorted(FLAT_KEYS)
    differ = {k for k in cli if cli[k] != ev[k]}
    # only where the eval model resolves another default (Fast-dLLM's eval: no threshold, no cache)
    assert differ == {"threshold", "cache"}
    assert all(cli[k].split(" (default")[0] == ev[k].split(" (default")[0] for k in differ)


def test_every_field_carries_help():
    from fastdllm_warmstart.config import flat_fields

    assert all(f.metadata.get("help") for _, f in flat_fields().values())
    sections = [f.name for f in fields(RunConfig)]  # every section, a method's own included
    assert len(sections) >= 6
    assert len(flat_fields()) == sum(len(fields(type(getattr(RunConfig(), s)))) for s in sections)


# -- input files at the door --------------------------------------------------------------------

def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bench_data_without_answer_is_one_line_exit_2(tmp_path, capsys):
    data = tmp_path / "probs.jsonl"
    data.write_text(json.dumps({"question": "a?", "answer": "#### 1"}) + "\n" + json.dumps({"question": "b?"}) + "\n")
    assert main(["bench", "--data", str(data), "--modes", "baseline", "--quiet", "--json",
                 str(tmp_path / "b.json")]) == 2
    line = _one_error_line(capsys)
    assert str(data) in line and "line 2" in line and "'answer'" in line


@pytest.mark.parametrize("text, needles", [
    ('[\n {"mode": "a", "settings": {}},\n {"settings": {"rho": 0.5}}\n]', ["line 3", "'mode'"]),
    ('[\n {"mode": "a",\n  "settings": {"rho": 2}}\n]', ["line 3", "rho=2"]),
    ('[\n {"mode": "a", "settings": {"warm_nit": "token"}}\n]', ["line 2", "warm_nit"]),
    ('[\n {"mode": "a" "settings": {}}\n]', ["line 2", "not valid JSON"]),
])
def test_bad_bench_preset_is_one_line_exit_2(tmp_path, capsys, text, needles):
    preset = tmp_path / "preset.json"
    preset.write_text(text)
    assert main(["bench", "--preset", str(preset), "--limit", "1", "--quiet", "--json", str(tmp_path / "b.json")]) == 2
    line = _one_error_line(capsys)
    assert str(preset) in line and all(n in line for n in needles), line


@pytest.mark.parametrize("series, needles", [
    ('{"name": "a", "kind": "mine"}', ["line 3", "kind='mine'"]),
    ('{"name": "a", "vary": {"alpha": [0.5, 7]}}', ["line 3", "alpha=7"]),
    ('{"kind": "ours"}', ["line 3", "\"name\""]),
])
def test_bad_sweep_preset_is_one_line_exit_2(tmp_path, capsys, series, needles):
    preset = tmp_path / "sweep.json"
    preset.write_text('{"base": {"warm_init": "token"},\n "series": [\n  ' + series + "\n ]}\n")
    assert main(["sweep", "--preset", str(preset), "--limit", "1", "--quiet", "--out", str(tmp_path / "s.jsonl"),
                 "--json", str(tmp_path / "rows.json")]) == 2
    line = _one_error_line(capsys)
    assert str(preset) in line and all(n in line for n in needles), line


# -- bench's progress store ---------------------------------------------------------------------

def test_bench_resume_after_a_cut_line_reads_every_row_written_after_it(random_model_dirs, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", random_model_dirs["dllm"], "--modes", "baseline", "--limit", "4",
            "--batch-size", "1", *SMALL, "--json", str(out), "--quiet"]
    assert main(args) == 0
    first = json.loads(out.read_text())["records"]
    partial = out.with_suffix(".partial.jsonl")
    lines = partial.read_text().splitlines()
    assert len(lines) == 5  # the fingerprint and one row per problem
    # A crash in the middle of writing the third row: the file ends inside it.
    partial.write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    assert main(args + ["--resume"]) == 0
    rows = JsonlStore(partial).read()[1:]
    assert sorted(r["index"] for r in rows) == [0, 1, 2, 3]  # the rows after the cut read back
    size = partial.stat().st_size
    assert main(args + ["--resume"]) == 0
    assert partial.stat().st_size == size  # nothing decoded again
    again = json.loads(out.read_text())["records"]
    assert [(r["accuracy"], r["mean_nfe"]) for r in again] == [(r["accuracy"], r["mean_nfe"]) for r in first]


def test_bench_with_refill_saves_rows_as_they_complete_and_resumes(random_model_dirs, tmp_path, monkeypatch):
    """A mode decoded as one continuous batch saves each row when it is handed in: a run killed
    after two saves keeps them, and --resume decodes only the rest, to the uninterrupted run's rows."""
    from fastdllm_warmstart import bench
    from fastdllm_warmstart.runner import WarmStartRunner

    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps([{"mode": "cold", "settings": {"batching": "refill"}}]))
    args = ["bench", "--model", random_model_dirs["dllm"], "--preset", str(preset), "--limit", "6",
            "--batch-size", "2", *SMALL, "--quiet"]
    assert main(args + ["--json", str(tmp_path / "whole.json")]) == 0
    whole = {r["index"]: (r["answer"], r["nfe"])
             for r in JsonlStore(tmp_path / "whole.partial.jsonl").read()[1:]}

    out = tmp_path / "bench.json"
    saves, real_add = [], bench._Progress.add

    def killed_after_two_saves(progress, rows):
        real_add(progress, rows)
        saves.append(len(rows))
        if len(saves) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(bench._Progress, "add", killed_after_two_saves)
    assert main(args + ["--json", str(out)]) == 130  # the CLI's answer to an interrupt
    kept = JsonlStore(out.with_suffix(".partial.jsonl")).read()[1:]
    assert len(kept) == sum(saves) and 2 <= len(kept) < 6  # more than one row saved per engine call
    monkeypatch.setattr(bench._Progress, "add", real_add)

    decoded, real_batch = [], WarmStartRunner.generate_batch

    def spy(self, prompts, *a, **kw):
        decoded.append(len(prompts))
        return real_batch(self, prompts, *a, **kw)

    monkeypatch.setattr(WarmStartRunner, "generate_batch", spy)
    assert main(args + ["--json", str(out), "--resume"]) == 0
    assert decoded == [6 - len(kept)]  # the rest, in one continuous batch
    rows = JsonlStore(out.with_suffix(".partial.jsonl")).read()[1:]
    assert {r["index"]: (r["answer"], r["nfe"]) for r in rows} == whole


# -- issue 21: a stale model; the embedding warm start on a model not trained for it ------------

def test_a_model_trained_from_another_base_is_dropped_from_the_default_table(tmp_path, caplog):
    from fastdllm_warmstart.lineage import drop_stale_modes, recorded_base

    old, new = "embedded:tiny-dllm@0000000000000000", "embedded:tiny-dllm@1111111111111111"
    stale, fresh = tmp_path / "stale", tmp_path / "fresh"
    stale.mkdir()
    (stale / "train_log.json").write_text(json.dumps({"reference": old}))  # an older export
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps({"base_model": new}))  # scripts/train_rcd.py's
    assert recorded_base(str(stale)) == old and recorded_base(str(fresh)) == new
    assert recorded_base(str(tmp_path)) is None
    modes = [{"mode": "baseline"}, {"mode": "rcd"}, {"mode": "rcd-new"}]
    models = {"baseline": None, "rcd": str(stale), "rcd-new": str(fresh)}
    with caplog.at_level(logging.WARNING, logger="fastdllm_warmstart.lineage"):
        kept = drop_stale_modes(modes, models, None, new, default_table=True)
    assert [m["mode"] for m in kept] == ["baseline", "rcd-new"]
    assert len(caplog.records) == 1 and "'rcd' dropped" in caplog.text and old in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastdllm_warmstart.lineage"):
        kept = drop_stale_modes(modes, models, None, new, default_table=False)  # asked for by name
    assert [m["mode"] for m in kept] == ["baseline", "rcd", "rcd-new"] and len(caplog.records) == 1


def test_the_shipped_rcd_model_records_its_base():
    from fastdllm_warmstart.lineage import recorded_base

    assert recorded_base("embedded:tiny-dllm-rcd").startswith("embedded:tiny-dllm@")
    assert recorded_base(None) is None  # the shipped base itself records no base


def test_embed_without_verifier_on_a_model_not_trained_for_it_warns_once(random_model_dirs, tmp_path, caplog):
    from fastdllm_warmstart.runner import WarmStartRunner

    proposals = tmp_path / "p.jsonl"
    proposals.write_text(json.dumps({"prompt": PROMPT, "proposal": "7 + 5 = 12 . #### 12"}) + "\n")
    flat = {"gen_length": 32, "block_length": 16, "warm_init": "embed", "proposals": str(proposals)}
    runner = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], configs_from_flat(flat), device="cpu")
    with caplog.at_level(logging.WARNING, logger="fastdllm_warmstart.warmstart"):
        runner.generate([PROMPT, PROMPT], batch_size=1)
        runner.generate([PROMPT], configs_from_flat({**flat, "remask": True}))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "collapse" in warnings[0] and "--remask" in warnings[0] and "tiny-dllm-rcd" in warnings[0]
    caplog.clear()
    for label, warns in (("rcd", True), ("none", True), ("rcd+bridge", False), ("bridge", False)):
        model = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], configs_from_flat(flat), device="cpu")
        model.model.config.soft_inputs = label  # what scripts/train_rcd.py's exporter writes
        with caplog.at_level(logging.WARNING, logger="fastdllm_warmstart.warmstart"):
            model.generate([PROMPT])
        assert bool(caplog.records) == warns, label
        caplog.clear()
