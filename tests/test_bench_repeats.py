"""``bench --repeats N``: timed passes interleaved across modes, their medians and paired
speed-ups, the JSON that records them, and answers that do not change with the repeats."""

import json

import pytest

from fastdllm_warmstart.bench_report import format_timing, summarize_timing
from fastdllm_warmstart.cli import main


def _passes(mode, times, cpu=None):
    return [{"mode": mode, "pass": k + 1, "dllm_s": t, "cpu_s": (cpu or times)[k]} for k, t in enumerate(times)]


def test_speedup_is_the_median_of_paired_ratios_not_a_ratio_of_medians():
    base = _passes("baseline", [10.0, 12.0, 30.0])
    warm = _passes("warm", [5.0, 10.0, 10.0], cpu=[9.0, 1.0, 4.0])
    t = summarize_timing(list(reversed(warm)), base)  # paired by pass number, not by position
    # ratios 10/5, 12/10, 30/10 = 2.0, 1.2, 3.0 (in pass order 3, 2, 1 as given)
    assert t["speedups"] == pytest.approx([3.0, 1.2, 2.0])
    assert (t["speedup_median"], t["speedup_min"], t["speedup_max"]) == pytest.approx((2.0, 1.2, 3.0))
    # the ratio of the medians would say 12 / 10 = 1.2x
    assert (t["dllm_s_median"], t["dllm_s_min"], t["dllm_s_max"]) == pytest.approx((10.0, 5.0, 10.0))
    assert (t["cpu_s_median"], t["cpu_s_min"], t["cpu_s_max"]) == pytest.approx((4.0, 1.0, 9.0))
    assert t["repeats"] == 3 and t["same_tokens"]
    even = summarize_timing(_passes("warm", [1.0, 2.0, 4.0, 8.0]), _passes("baseline", [2.0, 2.0, 2.0, 2.0]))
    assert even["dllm_s_median"] == pytest.approx(3.0) and even["speedup_median"] == pytest.approx(0.75)
    assert "speedups" not in summarize_timing(warm)  # no baseline, no speed-up

    table = format_timing([{"mode": "aux_only"}, {"mode": "baseline", "timing": summarize_timing(base, base)},
                           {"mode": "warm", "timing": t}])
    assert "2.00x [1.20-3.00]" in table and "10.00 [5.00-10.00]" in table and "1.00x [1.00-1.00]" in table
    assert "aux_only" not in table and format_timing([{"mode": "baseline"}]) == ""


def _mode_of(cfg, configs):
    """The preset mode a decode call ran (the seed is set per call; every mode here has seed 0)."""
    d = json.loads(json.dumps(cfg.to_dict(), default=str))
    return next(m for m, c in configs.items() if c == d)


@pytest.fixture
def preset(tmp_path):
    """Cold static and refill batches side by side, and a warm start: a preset sets `batching` per mode."""
    path = tmp_path / "preset.json"
    path.write_text(json.dumps([
        {"mode": "static", "settings": {"batching": "static"}},
        {"mode": "refill", "settings": {"batching": "refill"}},
        {"mode": "token", "settings": {"warm_init": "token", "rho": 0.5}}]))
    return path


def test_repeats_interleave_modes_and_keep_every_answer(random_model_dirs, preset, tmp_path, monkeypatch, capsys):
    from fastdllm_warmstart.runner import WarmStartRunner

    calls = []
    real = WarmStartRunner.generate_batch

    def recording(self, prompts, config=None, **kw):
        calls.append(config)
        return real(self, prompts, config, **kw)

    monkeypatch.setattr(WarmStartRunner, "generate_batch", recording)
    common = ["bench", "--model", random_model_dirs["dllm"], "--aux-model", random_model_dirs["aux"],
              "--preset", str(preset), "--limit", "3", "--batch-size", "2", "--gen-length", "32",
              "--block-length", "16", "--quiet"]
    assert main(common + ["--json", str(tmp_path / "once.json")]) == 0
    once_out = capsys.readouterr().out
    calls_once = len(calls)
    calls.clear()
    assert main(common + ["--json", str(tmp_path / "rep.json"), "--repeats", "3"]) == 0
    printed = capsys.readouterr().out
    once = json.loads((tmp_path / "once.json").read_text())
    rep = json.loads((tmp_path / "rep.json").read_text())

    # The preset's batching reaches each mode: the static batch takes 2 calls for 3 problems at
    # batch 2, the continuous batch one.
    assert rep["config"]["static"]["decode"]["batching"] == "static"
    assert rep["config"]["refill"]["decode"]["batching"] == "refill"
    order = [_mode_of(c, rep["config"]) for c in calls]
    assert order[:3] == ["static", "static", "refill"]  # the rows: static 2 calls, refill 1
    timed = order[calls_once:]
    per_pass = [m for i, m in enumerate(timed) if i == 0 or m != timed[i - 1]]  # one entry per pass
    assert per_pass == ["static", "refill", "token"] * 3  # pass 1 of every mode before pass 2 of any
    assert [(p["mode"], p["pass"]) for p in rep["timed_passes"]] == [
        (m, k) for k in (1, 2, 3) for m in ("static", "refill", "token")]

    # Repeats change no answer, accuracy, NFE or call count, and --repeats 1 records no passes.
    assert once["repeats"] == 1 and once["timed_passes"] == [] and "Timed passes" not in once_out
    assert all("timing" not in r for r in once["records"])
    for a, b in zip(once["records"], rep["records"]):
        assert a["mode"] == b["mode"]
        for key in ("accuracy", "accuracy_flexible", "mean_nfe", "calls_per_answer", "n"):
            assert a.get(key) == b.get(key), (a["mode"], key)
    rows = {name: [json.loads(line) for line in (tmp_path / f"{name}.partial.jsonl").read_text().splitlines()[1:]]
            for name in ("once", "rep")}
    assert [(r["mode"], r["index"], r["answer"], r["nfe"]) for r in rows["once"]] == \
        [(r["mode"], r["index"], r["answer"], r["nfe"]) for r in rows["rep"]]

    # Every pass's times are in the JSON, each mode's summary reads them, pairs with the baseline's.
    assert rep["repeats"] == 3
    for rec in rep["records"][1:]:
        t = rec["timing"]
        mine = [p for p in rep["timed_passes"] if p["mode"] == rec["mode"]]
        assert t["dllm_s"] == [p["dllm_s"] for p in mine] and t["cpu_s"] == [p["cpu_s"] for p in mine]
        assert all(p["dllm_s"] > 0 and p["cpu_s"] > 0 for p in mine)
        assert t["same_tokens"] and len(t["speedups"]) == 3
    base = [p["dllm_s"] for p in rep["timed_passes"] if p["mode"] == "static"]
    token = rep["records"][-1]["timing"]
    assert token["speedups"] == pytest.approx([b / w for b, w in zip(base, token["dllm_s"])])
    assert "Timed passes: 3 per mode" in printed and f"{token['speedup_median']:.2f}x [" in printed


def test_a_timed_pass_with_other_tokens_is_flagged(random_model_dirs, tmp_path, monkeypatch, caplog, capsys):
    from fastdllm_warmstart.runner import WarmStartRunner

    calls = []
    real = WarmStartRunner.generate_batch

    def drifting(self, prompts, config=None, **kw):
        calls.append(1)
        results = real(self, prompts, config, **kw)
        if len(calls) == 3:  # the second timed pass
            results[0].token_ids[-1] += 1
        return results

    monkeypatch.setattr(WarmStartRunner, "generate_batch", drifting)
    with caplog.at_level("WARNING", logger="fastdllm_warmstart.bench"):
        assert main(["bench", "--model", random_model_dirs["dllm"], "--modes", "baseline", "--limit", "2",
                     "--gen-length", "32", "--block-length", "16", "--quiet", "--repeats", "2",
                     "--json", str(tmp_path / "b.json")]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert [p["same_tokens"] for p in result["timed_passes"]] == [True, False]
    assert result["records"][0]["timing"]["same_tokens"] is False
    assert any("timed pass 2 of mode 'baseline'" in r.getMessage() for r in caplog.records)
    assert "tokens differed" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["bench", "sweep"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_repeats_is_one_line_exit_2(command, value, tmp_path, capsys):
    extra = ["--preset", str(tmp_path / "unused.json")] if command == "sweep" else []
    assert main([command, *extra, "--repeats", value, "--limit", "1", "--quiet",
                 "--json", str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert f"--repeats {value} must be a whole number >= 1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
