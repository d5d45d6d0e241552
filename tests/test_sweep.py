"""``fastdllm-warmstart sweep``: preset expansion, Pareto frontier, records per point, resume."""

import json

import pytest

from fastdllm_warmstart.cli import main
from fastdllm_warmstart.sweep import expand_preset, pareto_front


def test_expand_preset_is_a_cartesian_grid_with_base_settings():
    points = expand_preset({"base": {"rho": 0.5}, "series": [
        {"name": "cold", "kind": "reference", "settings": {"warm_init": "none"}, "vary": {"threshold": [0.7, 0.9]}},
        {"name": "chain", "settings": {"warm_init": "token", "remask": True},
         "vary": {"remask_rel": [0.1, 0.3], "remask_tau_accept": [0.2, 0.4]}},
        {"name": "paper", "kind": "paper", "settings": {"warm_init": "token", "rho": 0.25}},
    ]})
    assert [p["mode"] for p in points][:2] == ["cold threshold=0.7", "cold threshold=0.9"]
    chain = [p for p in points if p["series"] == "chain"]
    assert len(chain) == 4 and {(p["varied"]["remask_rel"], p["varied"]["remask_tau_accept"]) for p in chain} \
        == {(0.1, 0.2), (0.1, 0.4), (0.3, 0.2), (0.3, 0.4)}
    assert all(p["settings"]["rho"] == 0.5 and p["kind"] == "ours" for p in chain)
    assert points[-1]["settings"]["rho"] == 0.25 and points[-1]["kind"] == "paper"  # series beats base


@pytest.mark.parametrize("preset, message", [
    ({"series": []}, "JSON object"),
    ({"series": [{"settings": {}}]}, "needs a .name."),
    ({"series": [{"name": "a", "kind": "mine"}]}, "choose one of reference, paper, peer, ours"),
    ({"series": [{"name": "a", "vary": {"rho": 0.3}}]}, "non-empty list"),
    ({"series": [{"name": "a"}, {"name": "a"}]}, "appears twice"),
])
def test_bad_presets_name_the_fix(preset, message):
    with pytest.raises(ValueError, match=message):
        expand_preset(preset)


def test_pareto_front_keeps_only_undominated_points():
    pts = [{"mode": m, "mean_nfe": n, "accuracy": a} for m, n, a in
           [("a", 10, 0.5), ("b", 12, 0.7), ("c", 11, 0.4), ("d", 20, 0.7), ("e", 25, 0.9), ("f", 9, 0.2)]]
    assert [p["mode"] for p in pareto_front(pts)] == ["f", "a", "b", "e"]


def test_sweep_writes_one_record_per_point_and_resumes(random_model_dirs, tmp_path, capsys):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"series": [
        {"name": "cold", "kind": "reference", "settings": {"warm_init": "none"}, "vary": {"threshold": [0.5, 0.9]}},
        {"name": "paper token", "kind": "paper", "settings": {"warm_init": "token"}},
        {"name": "accept", "settings": {"warm_init": "token", "remask": True, "remask_rule": "accept"},
         "vary": {"remask_tau_accept": [0.1, 0.5]}}]}))
    out, rows = tmp_path / "sweep.jsonl", tmp_path / "rows.json"
    args = ["sweep", "--preset", str(preset), "--model", random_model_dirs["dllm"], "--aux-model",
            random_model_dirs["aux"], "--limit", "3", "--batch-size", "3", "--gen-length", "32",
            "--block-length", "16", "--out", str(out), "--json", str(rows), "--quiet",
            "--plot", str(tmp_path / "pareto.png")]
    assert main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    meta, records = lines[0], lines[1:]
    assert "versions" in meta["meta"] and meta["aux_only"]["n"] == 3
    assert [r["mode"] for r in records] == ["cold threshold=0.5", "cold threshold=0.9", "paper token",
                                            "accept remask_tau_accept=0.1", "accept remask_tau_accept=0.5"]
    for r in records:
        assert r["n"] == 3 and {"accuracy_ci95", "mean_nfe", "wall_per_problem_s", "config"} <= r.keys()
    assert records[0]["config"]["decode"]["threshold"] == 0.5 and records[3]["config"]["remask"]["tau_accept"] == 0.1
    assert records[0]["aux_s"] == 0.0 and records[2]["aux_s"] > 0  # wall-clock includes the aux for warm points
    assert (tmp_path / "pareto.png").stat().st_size > 5000
    # AUP of every series, both variants, in the meta line, in each point and in the printed table
    aups = lines[0]["aup"]["series"]
    assert list(aups) == ["cold", "paper token", "accept"]
    for r in records:
        assert r["aup"] == aups[r["series"]]["aup"] and r["rho"] > 0 and r["rho_with_aux"] <= r["rho"]
    assert records[0]["rho_with_aux"] == records[0]["rho"] and records[2]["rho_with_aux"] < records[2]["rho"]
    assert "AUP (d3LLM)" in capsys.readouterr().out
    # Resume after a kill: the partial rows are reused and the figures are the same.
    partial = rows.with_suffix(".partial.jsonl")
    kept = partial.read_text().splitlines()
    partial.write_text("\n".join(kept[:-3]) + "\n")
    # Resumed with timed passes: same figures, and every point's median time and speed-up.
    capsys.readouterr()
    assert main(args + ["--resume", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    again = lines[1:]
    assert [(r["accuracy"], r["mean_nfe"]) for r in again] == [(r["accuracy"], r["mean_nfe"]) for r in records]
    assert lines[0]["meta"]["repeats"] == 2 and "timing" not in records[0]
    for r in again:
        t = r["timing"]
        assert len(t["dllm_s"]) == 2 and len(t["speedups"]) == 2 and t["same_tokens"]
        # the plot's wall-clock is the timed median plus the aux drafting, per problem
        assert r["wall_per_problem_s"] == pytest.approx((t["dllm_s_median"] + r["aux_s"]) / 3)
    assert printed.count("speed-up ") == len(again)


def test_every_shipped_preset_resolves_to_valid_configs():
    """Presets are data the code must keep up with: every mode and point builds a RunConfig."""
    from pathlib import Path

    from fastdllm_warmstart.bench import PRESET_DIR, load_preset
    from fastdllm_warmstart.config import configs_from_flat
    from fastdllm_warmstart.sweep import load_sweep_preset

    files = sorted(Path(PRESET_DIR).glob("*.json"))
    assert len(files) >= 4
    for path in files:
        raw = json.loads(path.read_text())
        modes = load_sweep_preset(str(path)) if isinstance(raw, dict) else load_preset(path)
        for m in modes:
            settings = {k: v for k, v in m["settings"].items() if k != "model"}
            configs_from_flat(settings)
