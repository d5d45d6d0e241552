"""``fastdllm-warmstart trace`` / ``fastdllm_warmstart.trace``: the recorded events against the decode.

Checked for every cache mode and warm-start mode: one row per forward the prompt needed (NFE),
the last row is the output, every revoked cell held a prior the row before, cells that hold a
token are never [MASK] and vice versa, full/cached forwards are where the cache strategy puts
them. The recorder's cell classification is also checked on hand-made states, and a callback
that accepts priors early shows up as ``accepted``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from fastdllm_warmstart import DecodeCallback, DecodeState, generate
from fastdllm_warmstart.auxiliary import align_to_canvas
from fastdllm_warmstart.cli import main
from fastdllm_warmstart.config import RemaskConfig, configs_from_flat
from fastdllm_warmstart.runner import WarmStartRunner
from fastdllm_warmstart.trace import STATES, TraceRecorder, draw_png, trace, write_html, write_json
from fastdllm_warmstart.warmstart import ConfidenceRemask, TokenInjection

from conftest import EOS, MASK

PROMPT = "Question: Tom has 7 apples. He buys 5 more apples. How many apples does Tom have now?\nAnswer:"
PROPOSAL = "7 + 5 = 12 . #### 12"
SMALL = {"gen_length": 32, "block_length": 16}
WARM_MODES = [
    {"warm_init": "none"},
    {"warm_init": "token", "rho": 0.5},
    {"warm_init": "token", "rho": 0.5, "remask": True, "remask_rule": "revoke"},
    {"warm_init": "embed", "alpha": 0.6},
    {"warm_init": "embed", "alpha": 0.6, "remask": True, "remask_rule": "revoke"},
    # draft verification (the default --remask rule): drafts wait off the canvas until accepted
    {"warm_init": "token", "rho": 0.5, "remask": True, "remask_rule": "chain"},
    {"warm_init": "embed", "alpha": 0.6, "remask": True, "remask_rule": "accept"},
]
VERIFIED = ("chain", "accept", "prefix")


@pytest.fixture(scope="module")
def proposals_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("proposals") / "proposals.jsonl"
    path.write_text(json.dumps({"prompt": PROMPT, "proposal": PROPOSAL}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def random_runner(random_model_dirs, proposals_file):
    """A random-weight dLLM with the real tokenizer: it is never confident, so decoding takes
    many forwards and the remask step revokes most priors. Proposals come from a file."""
    config = configs_from_flat({**SMALL, "proposals": proposals_file})
    runner = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], config, device="cpu")
    runner.base_config = config
    return runner


def rtrace(runner, **settings):
    """Trace PROMPT with the runner's model: ``settings`` over the fixture's base config."""
    return trace(PROMPT, runner=runner, config=runner.base_config, **settings)


def check_trace_against_decode(t, result):
    """The invariants every trace satisfies, against an undisturbed decode of the same prompt."""
    G = t.meta["gen_length"]
    assert t.num_forwards == t.nfe == result.nfe
    assert t.rows[-1]["tokens"] == t.final_tokens == list(result.token_ids)
    prev_states = t.initial["states"]
    mask_id = t.meta["mask_id"]
    for r in t.rows:
        assert len(r["tokens"]) == len(r["states"]) == len(r["prob"]) == G
        assert set(r["states"]) <= set(STATES)
        for x, (tok, state) in enumerate(zip(r["tokens"], r["states"])):
            held = tok != mask_id
            if state in ("committed", "eos"):
                assert held, (r["forward"], x, state)
            if state in ("mask", "revoked"):
                assert not held, (r["forward"], x, state)
            if state == "revoked":
                assert not held and t.initial["prior"][x] >= 0
                if r["changed"][x]:  # revoked at this forward: it held a prior just before
                    assert prev_states[x] in ("prior", "accepted"), (r["forward"], x, prev_states[x])
            if state == "eos":
                assert tok == t.meta["eos_id"]
        lo, hi = r["window"]
        for x in range(G):  # probabilities exactly where the forward recomputed the position
            computed = r["prob"][x] is not None
            assert computed == (lo <= x < hi)
            if computed:
                assert 0.0 <= r["prob"][x] <= 1.0 + 1e-6
        prev_states = r["states"]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_trace_matches_decode_in_every_cache_and_warm_mode(random_runner, cache):
    for mode in WARM_MODES:
        settings = {**SMALL, **mode, "cache": cache, "remask": mode.get("remask", False)}
        t = rtrace(random_runner, **settings)
        # The same decode without the recorder: recording changes nothing.
        config = configs_from_flat({**random_runner.base_config.to_flat(), **settings})
        plain = random_runner.generate_batch([PROMPT], config)[0]
        check_trace_against_decode(t, plain)
        label = f"{cache} {mode}"
        kinds = [(r["block"], r["block_step"], r["kind"], tuple(r["window"])) for r in t.rows]
        for block, step, kind, window in kinds:
            if cache == "none" or step == 0:
                assert kind == "full" and window == (0, 32), label
            else:
                end = 32 if cache == "prefix" else 16 * (block + 1)
                assert kind == "cached" and window == (16 * block, end), label
        states = {s for r in t.rows for s in r["states"]} | set(t.initial["states"])
        if mode["warm_init"] == "none":
            assert states <= {"mask", "committed", "eos"}, label
        else:
            assert "prior" in t.initial["states"], label
            assert t.initial["prior"] == align_to_canvas(PROPOSAL, random_runner.tokenizer, 32)
        if mode.get("remask_rule") in VERIFIED:
            # every draft position is pending (prior) on an all-[MASK] canvas; an accepted cell
            # holds its draft token; nothing is ever revoked
            assert all(tok == t.meta["mask_id"] for tok in t.initial["tokens"]), label
            assert sum(s == "prior" for s in t.initial["states"]) == sum(p >= 0 for p in t.initial["prior"])
            for r in t.rows:
                for s, tok, p in zip(r["states"], r["tokens"], t.initial["prior"]):
                    assert s != "revoked", label
                    if s == "accepted":
                        assert tok == p, label
            continue
        if mode["warm_init"] == "token":
            injected = sum(s == "prior" for s in t.initial["states"])
            assert injected == sum(tok != t.meta["mask_id"] for tok in t.initial["tokens"]) > 0
        if mode.get("remask"):
            # The random model gives every prior ~1/V: the remask step revokes them.
            newly_revoked = sum(ch and s == "revoked" for r in t.rows
                                for s, ch in zip(r["states"], r["changed"]))
            assert newly_revoked == plain.revoked > 0, label
            assert "revoked" in states, label


def test_trace_of_trained_model_with_early_stop():
    """Early stop fills finished rows with EOS between forwards; the last row still equals the output."""
    runner = WarmStartRunner.from_pretrained(None, configs_from_flat(SMALL), device="cpu")
    for mode in ({"warm_init": "none"}, {"warm_init": "token", "remask": True}):
        t = trace(PROMPT, runner=runner, **SMALL, early_stop=True, **mode)
        plain = runner.generate_batch([PROMPT], configs_from_flat({**SMALL, "early_stop": True, **mode}))[0]
        check_trace_against_decode(t, plain)
        assert t.model.startswith("embedded:tiny-dllm@")
        assert t.answer == plain.text


def test_batch_rows_and_hand_built_callbacks(tiny_model):
    """The recorder is batch-first: each row's trace has that row's NFE and final tokens."""
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    proposals = torch.randint(4, 40, (2, 16), generator=torch.Generator().manual_seed(0))
    recorder = TraceRecorder()
    out = generate(tiny_model, prompts, steps=16, gen_length=16, block_length=8, threshold=0.9,
                   cache="dual", mask_id=MASK, eos_id=EOS, use_upstream=False,
                   callbacks=[TokenInjection(proposals, rho=0.5), ConfidenceRemask(RemaskConfig(enabled=True)),
                              recorder])
    for b in range(2):
        t = recorder.trace(b)
        assert t.num_forwards == int(out.nfe[b])
        assert t.rows[-1]["tokens"] == out.generated[b].tolist() == t.final_tokens
        assert t.meta["prompt_tokens"] == len(prompts[b])


def _state(x, prompt_width=2, gen_length=4, V=10):
    return DecodeState(model=None, x=x, attention_mask=None, prompt_width=prompt_width,
                       prompt_lengths=torch.tensor([prompt_width]), gen_length=gen_length,
                       block_length=gen_length, mask_id=9, eos_id=8, pad_id=None,
                       generator=torch.Generator(), nfe=torch.zeros(1, dtype=torch.long),
                       finished=torch.zeros(1, dtype=torch.bool), active=torch.ones(1, dtype=torch.bool))


def test_cell_states_on_hand_made_states():
    """Injected prior -> revoked -> committed; a model commit; a hook writing the prior = accepted."""
    x = torch.tensor([[1, 2, 5, 9, 9, 9]])  # prompt [1, 2], canvas [prior 5, M, M, M]
    s = _state(x)
    s.prior_ids = torch.tensor([[-1, -1, 5, 6, 7, 8]])
    s.injected = torch.tensor([[False, False, True, False, False, False]])
    s.revisions = torch.zeros_like(x)
    rec = TraceRecorder()
    rec.on_init(s)
    assert rec.initial["states"][0].tolist() == [STATES.index(n) for n in ("prior", "mask", "mask", "mask")]
    # Forward 1 (full): the model commits 6 at column 3; the remask step revokes the prior at 2.
    s.window = (0, 6)
    rec.before_forward(s)
    s.logits = torch.zeros((1, 6, 10))
    s.logits[0, 3, 6] = 5.0
    s.x[0, 3] = 6
    s.transfer = torch.tensor([[False, False, False, True, False, False]])
    s.x[0, 2] = 9
    s.injected[0, 2] = False
    s.revisions[0, 2] = 1
    rec.after_commit(s)
    # Forward 2 (cached, columns 2..5): the model commits 4 at column 2; a hook writes the prior
    # EOS (8) at column 5 itself: accepting it.
    s.block_step = 1
    s.window = (2, 6)
    s.logits = torch.zeros((1, 4, 10))
    rec.before_forward(s)
    s.x[0, 2] = 4
    s.transfer = torch.tensor([[True, False, False, False]])
    s.x[0, 5] = 8
    rec.after_commit(s)
    rec.on_finish(s)
    t = rec.trace(0)
    assert [r["states"] for r in t.rows] == [["revoked", "committed", "mask", "mask"],
                                             ["committed", "committed", "mask", "accepted"]]
    assert [r["changed"] for r in t.rows] == [[True, True, False, False], [True, False, False, True]]
    assert [r["kind"] for r in t.rows] == ["full", "cached"] and t.rows[1]["window"] == [0, 4]
    expected = math.exp(5.0) / (math.exp(5.0) + 9)
    assert t.rows[0]["prob"][1] == pytest.approx(expected, abs=1e-4)  # p(held token 6)
    assert t.rows[0]["top"][:2] == [0, -1]  # a top guess only where the cell is masked
    assert t.rows[0]["prior_prob"][0] == pytest.approx(0.1)  # uniform logits: p(prior 5) = 1/V
    assert t.final_tokens == [4, 6, 9, 8]


class AcceptEarly(DecodeCallback):
    """A future prior-acceptance rule: confirms every injected prior of the block at its start."""

    def on_block_start(self, state):
        if state.injected is not None:
            state.confirmed[:, state.block_start:state.block_end] |= \
                state.injected[:, state.block_start:state.block_end]


class WritePriors(DecodeCallback):
    """Another one: writes the proposal into the block's masked positions itself (embedding mode)."""

    def on_block_start(self, state):
        blk = slice(state.block_start, state.block_end)
        take = (state.x[:, blk] == state.mask_id) & (state.prior_ids[:, blk] >= 0)
        state.x[:, blk][take] = state.prior_ids[:, blk][take]


@pytest.mark.parametrize("warm_init, hook", [("token", AcceptEarly), ("embed", WritePriors)])
def test_prior_acceptance_callbacks_show_as_accepted(random_runner, warm_init, hook):
    random_runner.extra_callbacks = [hook()]
    try:
        t = rtrace(random_runner, warm_init=warm_init, rho=0.5, cache="dual")
    finally:
        random_runner.extra_callbacks = []
    final = t.rows[-1]["states"]
    prior = t.initial["prior"]
    accepted = [x for x, s in enumerate(final) if s == "accepted"]
    assert accepted, final
    assert all(prior[x] >= 0 and t.final_tokens[x] == prior[x] for x in accepted)
    if warm_init == "token":  # exactly the injected priors
        assert accepted == [x for x, s in enumerate(t.initial["states"]) if s == "prior"]


def test_outputs_png_html_json(random_runner, tmp_path):
    a = rtrace(random_runner, warm_init="none")
    b = rtrace(random_runner, warm_init="token", rho=0.5, remask=True)
    png = draw_png([a, b], tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = write_html([a, b], tmp_path / "t.html").read_text()
    assert "<script>" in page and "src=" not in page and "http" not in page.replace(
        "fastdllm-warmstart", "")  # self-contained: no external script, style or font
    data = json.loads(write_json([a, b], tmp_path / "t.json").read_text())
    assert [len(t["forwards"]) for t in data["traces"]] == [a.nfe, b.nfe]
    assert data["traces"][1]["vocab"]


def test_cli_trace_compare_writes_png_html_json(tmp_path, capsys):
    out, page, raw = tmp_path / "t.png", tmp_path / "t.html", tmp_path / "t.json"
    code = main(["trace", "--prompt", "Tom has 7 apples. He buys 5 more apples. How many apples does Tom have now?",
                 "--gen-length", "32", "--block-length", "16", "--device", "cpu",
                 "--compare", "--warm-init none", "--warm-init token --remask",
                 "--out", str(out), "--html", str(page), "--json", str(raw)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "cold" in stdout and "token rho=0.25 + remask" in stdout
    assert out.read_bytes()[:4] == b"\x89PNG" and "<table" not in page.read_text()[:200]
    data = json.loads(raw.read_text())
    assert len(data["traces"]) == 2
    for t in data["traces"]:
        assert len(t["forwards"]) == t["nfe"]
        assert t["forwards"][-1]["tokens"] == t["final_tokens"]
        assert t["model"].startswith("embedded:")
    assert data["traces"][0]["config"]["warm"]["warm_init"] == "none"
    assert data["traces"][1]["config"]["remask"]["enabled"] is True


def test_cli_trace_default_png_and_bad_compare(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["trace", "--prompt", "What is 3 + 4?", "--gen-length", "32", "--block-length", "16",
                 "--cache", "prefix"]) == 0
    assert Path("trace.png").is_file()
    capsys.readouterr()
    assert main(["trace", "--prompt", "hi", "--compare", "--warm-init none"]) == 2
    assert "at least two modes" in capsys.readouterr().err
    assert main(["trace", "--prompt", "hi", "--compare", "--warm-init none", "--bogus 1"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
