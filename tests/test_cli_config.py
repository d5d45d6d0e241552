"""Configuration validation, the CLI's error handling, generate/bench/make-data end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastdllm_warmstart import ConfigError, DecodeConfig, configs_from_flat
from fastdllm_warmstart.cli import main
from fastdllm_warmstart.tasks import tinygsm


@pytest.mark.parametrize("settings, hint", [
    ({"alpha": "1.5"}, "alpha=1.5 is out of range"),
    ({"rho": -0.1}, "rho=-0.1 is out of range"),
    ({"warm_init": "tokens"}, "choose one of none, token, embed"),
    ({"cache": "full"}, "choose one of none, prefix, dual"),
    ({"gen_length": 50, "block_length": 16}, "multiple of block_length"),
    ({"steps": 10, "gen_length": 48, "block_length": 16}, "multiple of the number of blocks"),
    ({"threshold": "1.5"}, "threshold=1.5"),
    ({"remask": "maybe"}, "expected true or false"),
    ({"remask_tau": "high"}, "expected a number"),
    ({"remask_schedule": "cosine"}, "choose one of linear, exp"),
    ({"remask_max_revisions": 1}, "Unknown setting(s): remask_max_revisions"),
    ({"factor": "-1"}, "factor=-1.0 is out of range"),
    ({"factor": "many"}, "factor='many': expected a number"),
    ({"loop_variant": "old"}, "choose one of auto, current, snapshot-2025-06"),
    ({"warm_nit": "embed"}, "Unknown setting(s): warm_nit"),
])
def test_bad_settings_raise_config_error_with_fix(settings, hint):
    with pytest.raises(ConfigError) as err:
        configs_from_flat(settings)
    assert hint in str(err.value)


def test_flat_strings_are_coerced_and_none_means_unset():
    cfg = configs_from_flat({"warm_init": "embed", "alpha": "0.6", "threshold": "none", "remask": "1",
                             "gen_length": "64", "block_length": "32", "rho": None})
    assert cfg.warm.alpha == 0.6 and cfg.decode.threshold is None and cfg.remask.enabled
    assert cfg.decode.gen_length == 64 and cfg.warm.rho == WarmDefault.rho


class WarmDefault:
    rho = configs_from_flat({}).warm.rho


def test_configs_are_frozen():
    cfg = DecodeConfig()
    with pytest.raises(Exception):
        cfg.gen_length = 10


def run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "fastdllm_warmstart.cli", *args], capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.parametrize("args, needle", [
    (["generate", "--prompt", "hi", "--alpha", "2"], "alpha=2.0 is out of range"),
    (["generate", "--prompt", "hi", "--gen-length", "50"], "multiple of block_length"),
    (["generate", "--prompt", "hi", "--factor", "0"], "factor=0.0 is out of range"),
    (["generate", "--prompt", "hi", "--model", "/nonexistent/model"], "does not exist"),
    (["bench", "--data", "/nonexistent.jsonl"], "does not exist"),
])
def test_cli_bad_input_is_one_clear_line(args, needle):
    proc = run_cli(args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_flag_exits_2():
    proc = run_cli(["generate", "--prompt", "hi", "--warm-init", "bogus"])
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_generate_json_cold_and_warm(random_model_dirs, capsys):
    args = ["generate", "--model", random_model_dirs["dllm"], "--prompt", "Tom has 7 apples. He buys 5 more.",
            "--prompt", "What is 3 + 4?", "--gen-length", "32", "--block-length", "16", "--json",
            "--device", "cpu", "--loop-variant", "current"]
    assert main(args) == 0
    cold = json.loads(capsys.readouterr().out)
    assert len(cold["results"]) == 2
    assert all(r["nfe"] >= 2 and r["proposal"] is None for r in cold["results"])
    assert cold["config"]["decode"]["gen_length"] == 32
    assert main(args + ["--warm-init", "token", "--rho", "1.0", "--aux-model", random_model_dirs["aux"]]) == 0
    warm = json.loads(capsys.readouterr().out)
    # The random aux model still drafts text for every prompt: no row falls back to cold.
    assert all(r["proposal"] is not None and r["warm"] and r["fallback"] is None for r in warm["results"])
    # rho=1 fills the whole canvas with the proposal, so nothing is left to decode: each of the
    # 32 / 16 = 2 blocks costs only its full forward (today's upstream loop).
    assert all(r["injected"] == 32 and r["nfe"] == 2 for r in warm["results"])
    # The decoding settings reach the loop: the June-2025 loop runs a cached step after each full
    # forward (2 x 2 blocks), and a large factor commits many tokens per step.
    assert main(args + ["--warm-init", "token", "--rho", "1.0", "--aux-model", random_model_dirs["aux"],
                        "--loop-variant", "snapshot-2025-06"]) == 0
    snapshot = json.loads(capsys.readouterr().out)
    assert snapshot["config"]["decode"]["loop_variant"] == "snapshot-2025-06"
    assert all(r["nfe"] == 4 for r in snapshot["results"])
    assert main(args + ["--factor", "6"]) == 0
    factor = json.loads(capsys.readouterr().out)
    assert factor["config"]["decode"]["factor"] == 6.0
    assert all(f["nfe"] < c["nfe"] for f, c in zip(factor["results"], cold["results"]))


def test_make_data_cli(tmp_path, capsys):
    out = tmp_path / "fresh.jsonl"
    assert main(["make-data", "--seed", "7", "--n", "25", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 25 and all("####" in r["answer"] for r in rows)
    longer = tmp_path / "longer.jsonl"
    assert main(["make-data", "--seed", "7", "--n", "200", "--out", str(longer), "--max-events", "5"]) == 0
    events = [len(tinygsm.solve_question(json.loads(line)["question"])[1])
              for line in longer.read_text().splitlines()]
    assert max(events) == 5
    capsys.readouterr()
    assert main(["make-data", "--seed", "7", "--n", "5", "--out", str(tmp_path / "x.jsonl"),
                 "--max-events", "9"]) == 2
    err = capsys.readouterr().err
    assert "--max-events 9" in err and "3..6" in err and "Traceback" not in err


def test_bench_smoke_and_resume(random_model_dirs, tmp_path, capsys, caplog):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", random_model_dirs["dllm"], "--aux-model", random_model_dirs["aux"],
            "--limit", "4", "--batch-size", "2", "--gen-length", "32", "--block-length", "16",
            "--json", str(out), "--quiet", "--plot", str(tmp_path / "plot.png")]
    with caplog.at_level("WARNING", logger="fastdllm_warmstart.lineage"):
        assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    modes = [r["mode"] for r in result["records"]]
    # The shipped RCD model was not trained from this table's dLLM: its modes leave the default table.
    assert modes == ["aux_only", "baseline", "token", "token+revoke", "token+remask", "token+remask-fast",
                     "embed", "embed+remask"]
    dropped = [r.getMessage() for r in caplog.records if "dropped from the default table" in r.getMessage()]
    assert [m.split("'")[1] for m in dropped] == ["rcd", "rcd+embed"]
    for rec in result["records"]:
        assert rec["n"] == 4
        assert {"accuracy", "accuracy_flexible", "wall_s"} <= rec.keys()
        if rec["mode"] != "aux_only":
            assert {"mean_nfe", "dllm_s", "aux_s", "nfe_reduction"} <= rec.keys()
            # two blocks of 16, one forward each at best (today's upstream count, no checkout)
            assert rec["nfe_floor"] == 2 and rec["mean_nfe"] >= 2
            assert rec["nfe_over_floor"] == pytest.approx(rec["mean_nfe"] / 2)
            assert rec["tokens_per_forward"] == pytest.approx(32 / rec["mean_nfe"])
    # the auto rule as this model resolves it (the tiny dLLM takes transient queries), recorded
    assert result["config"]["token+remask"]["remask"]["rule"] == "spec"
    assert result["config"]["token+remask"]["remask"]["tau_accept"] == 0.1
    assert result["config"]["token+revoke"]["remask"]["rule"] == "revoke"
    assert result["records"][1]["aux_s"] == 0.0 and result["records"][2]["aux_s"] > 0
    assert "torch" in result["versions"] and result["config"]["embed"]["warm"]["alpha"] == 0.6
    assert "baseline" in printed and (tmp_path / "plot.png").stat().st_size > 1000
    # Resume: drop the last two saved rows as a kill would, rerun, same figures.
    partial = out.with_suffix(".partial.jsonl")
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:10])  # plus a torn line
    assert main(args + ["--resume"]) == 0
    again = json.loads(out.read_text())
    for a, b in zip(result["records"], again["records"]):
        if a["mode"] != "aux_only":
            assert (a["accuracy"], a["mean_nfe"]) == (b["accuracy"], b["mean_nfe"])


def test_shuffle_permutation_has_no_fixed_point():
    from fastdllm_warmstart.bench import shuffle_permutation

    for n in (2, 3, 10, 500):
        perm = shuffle_permutation(n, seed=0)
        assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert shuffle_permutation(50, 1) == shuffle_permutation(50, 1) != shuffle_permutation(50, 2)
    with pytest.raises(ValueError, match="at least 2 problems"):
        shuffle_permutation(1, 0)


def test_bench_shuffle_proposals_gives_each_problem_another_draft(random_model_dirs, tmp_path, capsys):
    """With gold answers as proposals and rho=1 the answer *is* the proposal: unshuffled every
    row is right; --shuffle-proposals gives every row another problem's gold, recorded in the
    JSON, and a resume with another --batch-size is refused (it would change answers)."""
    from fastdllm_warmstart.scoring import score
    from fastdllm_warmstart.tasks.tinygsm import format_prompt

    problems = [{"question": f"Tom has {n} apples. How many apples does Tom have now?",
                 "answer": f"Tom has {n} apples now .\n#### {n}"} for n in (3, 14, 25, 36, 47)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    proposals = tmp_path / "gold.jsonl"
    proposals.write_text("".join(json.dumps({"prompt": format_prompt(p["question"]), "proposal": p["answer"]})
                                 + "\n" for p in problems))
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps([{"mode": "baseline", "settings": {}},
                                  {"mode": "gold", "settings": {"warm_init": "token", "rho": 1.0}}]))
    out = tmp_path / "bench.json"
    args = ["bench", "--model", random_model_dirs["dllm"], "--data", str(data), "--proposals", str(proposals),
            "--preset", str(preset), "--batch-size", "2", "--gen-length", "32", "--block-length", "16",
            "--json", str(out), "--quiet"]

    def gold_rows():
        rows = [json.loads(line) for line in out.with_suffix(".partial.jsonl").read_text().splitlines()[1:]]
        return {r["index"]: r["answer"] for r in rows if r["mode"] == "gold"}

    assert main(args) == 0
    plain = json.loads(out.read_text())
    assert plain["shuffle_proposals"] is None and plain["records"][-1]["accuracy"] == 1.0
    assert main(args + ["--shuffle-proposals", "3"]) == 0
    shuffled = json.loads(out.read_text())
    perm = shuffled["shuffle_proposals"]["permutation"]
    assert shuffled["shuffle_proposals"]["seed"] == 3 and sorted(perm) == list(range(5))
    for i, answer in gold_rows().items():
        assert perm[i] != i
        assert score(answer, problems[perm[i]]["answer"])[0] and not score(answer, problems[i]["answer"])[0]
    assert shuffled["records"][-1]["accuracy"] == 0.0
    assert shuffled["fingerprint"] != plain["fingerprint"]
    capsys.readouterr()
    assert main(args + ["--shuffle-proposals", "3", "--resume", "--batch-size", "1"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_thread_setting(tiny_model):
    import torch

    from fastdllm_warmstart.loading import ModelLoadError, tune_cpu_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert tune_cpu_threads(tiny_model, "auto") == 1 == torch.get_num_threads()  # small model on CPU
        assert tune_cpu_threads(tiny_model, "2") == 2 == torch.get_num_threads()
        with pytest.raises(ModelLoadError, match="positive integer"):
            tune_cpu_threads(tiny_model, "many")
    finally:
        torch.set_num_threads(before)


def test_to_flat_round_trips():
    cfg = configs_from_flat(warm_init="embed", alpha=0.3, remask=True, remask_tau=0.9, threshold=None,
                            cache="prefix", residual=True, proposal_cache="p.jsonl")
    assert configs_from_flat(cfg.to_flat()) == cfg


def test_bench_mode_can_name_its_own_model(random_model_dirs, tmp_path, capsys):
    """A preset mode with "model" decodes with that dLLM (e.g. the RCD model beside the base one)."""
    import torch

    from fastdllm_warmstart.models import TinyLLaDAModelLM

    other = tmp_path / "other"
    model = TinyLLaDAModelLM.from_pretrained(random_model_dirs["dllm"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(other)
    (other / "tokenizer.json").write_bytes((Path(random_model_dirs["dllm"]) / "tokenizer.json").read_bytes())
    (other / "tokenizer_config.json").write_bytes(
        (Path(random_model_dirs["dllm"]) / "tokenizer_config.json").read_bytes())
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps([{"mode": "base", "settings": {}},
                                  {"mode": "other", "settings": {"model": str(other)}}]))
    out = tmp_path / "b.json"
    assert main(["bench", "--model", random_model_dirs["dllm"], "--preset", str(preset), "--limit", "3",
                 "--gen-length", "32", "--block-length", "16", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["models"] == {"base": random_model_dirs["dllm"], "other": str(other)}
    rows = [json.loads(line) for line in out.with_suffix(".partial.jsonl").read_text().splitlines()[1:]]
    answers = {m: [r["answer"] for r in rows if r["mode"] == m] for m in ("base", "other")}
    assert answers["base"] != answers["other"]  # really another model
