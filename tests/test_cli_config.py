"""Configuration validation, the CLI's error handling, generate/bench/make-data end to end."""

import json
import subprocess
import sys

import pytest

from fastdllm_warmstart import ConfigError, DecodeConfig, configs_from_flat
from fastdllm_warmstart.cli import main


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
    ({"remask_max_revisions": 0}, "must be >= 1"),
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
            "--device", "cpu"]
    assert main(args) == 0
    cold = json.loads(capsys.readouterr().out)
    assert len(cold["results"]) == 2
    assert all(r["nfe"] >= 2 and r["proposal"] is None for r in cold["results"])
    assert cold["config"]["decode"]["gen_length"] == 32
    assert main(args + ["--warm-init", "token", "--rho", "1.0", "--aux-model", random_model_dirs["aux"]]) == 0
    warm = json.loads(capsys.readouterr().out)
    assert all(r["proposal"] is not None for r in warm["results"])
    # rho=1 fills the canvas with the proposal: the loop has nothing left to decode
    assert all(r["warm"] and r["injected"] > 0 for r in warm["results"] if r["fallback"] is None)


def test_make_data_cli(tmp_path, capsys):
    out = tmp_path / "fresh.jsonl"
    assert main(["make-data", "--seed", "7", "--n", "25", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 25 and all("####" in r["answer"] for r in rows)


def test_bench_smoke_and_resume(random_model_dirs, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", random_model_dirs["dllm"], "--aux-model", random_model_dirs["aux"],
            "--limit", "4", "--batch-size", "2", "--gen-length", "32", "--block-length", "16",
            "--json", str(out), "--quiet", "--plot", str(tmp_path / "plot.png")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    modes = [r["mode"] for r in result["records"]]
    assert modes == ["aux_only", "baseline", "token", "token+remask", "embed", "embed+remask"]
    for rec in result["records"]:
        assert rec["n"] == 4
        assert {"accuracy", "accuracy_flexible", "wall_s"} <= rec.keys()
        if rec["mode"] != "aux_only":
            assert {"mean_nfe", "dllm_s", "aux_s", "nfe_reduction"} <= rec.keys()
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
