"""scripts/paired_compare.py: the paired statistics behind issue 21's and the default's tables."""
import json

import pytest

from scripts.paired_compare import compare, load_series, mcnemar_p


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)  # all five discordant pairs one way
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)


def test_compare_pairs_problems_and_bounds_the_difference():
    a = {("d1", i): (1, 10.0) for i in range(40)}
    b = {("d1", i): (i % 2, 20.0) for i in range(40)}
    b[("d2", 0)] = (1, 5.0)  # not in a: not paired
    r = compare(a, b, resamples=2000, seed=0)
    assert r["n"] == 40 and r["a_only"] == 20 and r["b_only"] == 0
    assert r["diff"] == pytest.approx(0.5)
    lo, hi = r["diff_ci95"]
    assert 0.25 < lo < 0.5 < hi < 0.75
    assert r["nfe_ratio"] == pytest.approx(0.5)
    same = compare(a, a, resamples=200, seed=0)
    assert same["diff"] == 0 and same["diff_ci95"] == [0, 0] and same["mcnemar_p"] == 1.0


def test_series_named_by_file_prefix_and_mode(tmp_path):
    rec = {"mode": "cold", "per_problem": {"index": [0, 1], "strict": [1, 0], "nfe": [3, 4]}}
    for data in ("seed5", "seed99"):
        (tmp_path / f"dev_{data}.json").write_text(json.dumps(
            {"data": f"results/data/{data}.jsonl", "records": [rec]}))
    series, prov = load_series(sorted(tmp_path.glob("*.json")))
    assert list(series) == ["dev:cold"]
    assert series["dev:cold"][("seed99", 1)] == (0, 4.0) and len(series["dev:cold"]) == 4
    old = {"data": "x.jsonl", "records": [{"mode": "cold"}]}
    (tmp_path / "old_x.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="no per-problem"):
        load_series([tmp_path / "old_x.json"])


def test_batching_table_pairs_each_pass_against_cold_of_the_same_batching():
    """scripts/batching_table.py: a speed-up is the median over passes of cold's time over the
    mode's in the same pass (here 2, 2 and 1: median 2, where the ratio of medians would be 1.4),
    against cold with the same batching; the query ceiling is cold's queries over the mode's."""
    from scripts.batching_table import table

    def rec(mode, queries):
        return {"mode": mode, "accuracy": 0.9, "mean_nfe": 10.0, "calls_per_answer": 1.0,
                "queries_per_answer": queries}

    modes = ["baseline", "chain-0.3", "spec-0.1", "wino-default"]
    records = [rec(m + s, 1000 if m == "baseline" else 500) for m in modes for s in ("", "-static")]
    times = {"baseline": [10, 20, 12], "baseline-static": [10, 10, 10], "chain-0.3": [5, 10, 12],
             "chain-0.3-static": [4, 4, 4]}
    passes = [{"mode": m, "pass": k + 1, "dllm_s": t} for m, ts in times.items() for k, t in enumerate(ts)]
    for m in ("spec-0.1", "wino-default"):
        passes += [{"mode": m + s, "pass": k, "dllm_s": 10.0} for s in ("", "-static") for k in (1, 2, 3)]
    b1 = {"timed_passes": [{"mode": "baseline", "pass": 1, "dllm_s": 10.0},
                           {"mode": "chain-0.3", "pass": 1, "dllm_s": 4.0}]}
    rows = table({"records": records, "timed_passes": passes}, b1).splitlines()
    chain = next(r for r in rows if r.startswith("| `chain`"))
    assert "| 2.00x / 2.50x / 2.50x | 100% |" in chain
    assert "500 / 500 (2.00x)" in chain
