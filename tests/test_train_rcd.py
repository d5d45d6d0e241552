"""RCD's second stage and the embedding bridge in decoder states (scripts/train_rcd.py,
scripts/training/residual_states.py): the soft inputs are the ones inference feeds, the controls
are the base's own training, and the loss curve does not depend on how the batch is split."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.training import residual_states as rs  # noqa: E402


@pytest.fixture(scope="module")
def base():
    from fastdllm_warmstart.assets import asset_path
    from fastdllm_warmstart.models import TinyLLaDAModelLM
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    model = TinyLLaDAModelLM.from_pretrained(asset_path("tiny-dllm"), dtype=torch.float32).eval()
    return model, tok


def _batch(tok, seed=3, n=8):
    from fastdllm_warmstart.tasks import tinygsm
    from scripts.training import dllm_encode_batch

    problems = tinygsm.generate_problems(seed, n)
    return problems, dllm_encode_batch(tok, problems, "cpu")


def test_with_a_zero_and_no_drafts_each_state_is_the_base_objective(base):
    """The control arm (residual_scale 0, drafts withheld) computes exactly the losses the base was
    trained with, from the same generator: decoder states, dual-cache states, random masks."""
    from scripts.training import dllm_cache_loss, dllm_decode_state_loss, dllm_loss

    model, tok = base
    problems, batch = _batch(tok)
    cfg = rs.SoftInputConfig(residual_scale=0.0, draft_frac=1.0, draft_alpha=0.0)
    mask, pad, eos = tok.mask_token_id, tok.pad_token_id, tok.eos_token_id
    fracs = {"decode": (1.0, 0.0), "cache": (0.0, 1.0), "random": (0.0, 0.0)}
    with torch.no_grad():
        for kind, (dec, cac) in fracs.items():
            plan = rs.plan_step(batch, tok, problems, torch.Generator().manual_seed(3), random.Random(0), cfg,
                                dec, cac, 0.5, 0.7, 3)
            block = batch["ids"][:, batch["P"] + 32 * plan.block:batch["P"] + 32 * plan.block + 32]
            assert (block != tok.eos_token_id).any()  # a block that holds answer tokens, not filler only
            assert plan.kind == kind and plan.drafts is not None
            g = torch.Generator().manual_seed(3)
            if kind != "random":
                torch.rand(1, generator=g)  # the kind draw
            if kind == "decode":
                mine = rs.decode_state_loss(model, model, batch, plan, cfg, mask, pad, 4.0)
                want = dllm_decode_state_loss(model, batch, mask, pad, g, states=3, block_choice="content",
                                              rf_weight=4.0)
            elif kind == "cache":
                mine = rs.cache_state_loss(model, model, batch, plan, cfg, mask, 3.0, 4.0)
                want = dllm_cache_loss(model, batch, mask, eos, g, eq_frac=0.7, forced_weight=3.0, rf_weight=4.0)
            else:
                mine = rs.random_mask_loss(model, model, batch, plan, cfg, mask, 3.0, 4.0)
                want = dllm_loss(model, batch, mask, eos, g, prefix_frac=0.5, eq_frac=0.7, forced_weight=3.0,
                                 rf_weight=4.0)
            assert torch.equal(mine, want), kind
            with_residual = rs.SoftInputConfig()
            changed = {"decode": lambda: rs.decode_state_loss(model, model, batch, plan, with_residual, mask, pad, 4.0),
                       "cache": lambda: rs.cache_state_loss(model, model, batch, plan, with_residual, mask, 3.0, 4.0),
                       "random": lambda: rs.random_mask_loss(model, model, batch, plan, with_residual, mask, 3.0,
                                                             4.0)}[kind]()
            assert not torch.equal(changed, want), kind


def test_decoder_state_k_reads_the_references_prediction_from_forward_k_minus_1(base, monkeypatch):
    """In a decoder state k >= 1 the residual weight at each still-masked position is H/log V of the
    reference's prediction in the replay's forward k - 1 (recomputed here from the state before
    forward k - 1 against the reference's cache); in block 0's first state there is none."""
    from scripts.training import block_forward, stale_block_cache, teacher_forced_order

    model, tok = base
    problems, batch = _batch(tok, seed=5, n=6)
    seen = {}
    real = rs.soft_embeds

    def spy(table, x, mask_id, drafts, alpha, a=None, d=None, has=None):
        if has is not None:
            seen.update(x=x, a=a, has=has)
        return real(table, x, mask_id, drafts, alpha, a, d, has)

    monkeypatch.setattr(rs, "soft_embeds", spy)
    cfg = rs.SoftInputConfig()
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    checked = {"k>=1": 0, "block 0, k=0": 0}
    for seed in range(8):
        plan = rs.plan_step(batch, tok, problems, torch.Generator().manual_seed(seed), random.Random(0), cfg,
                            1.0, 0.0, 0.5, 0.7, 2)
        with torch.no_grad():
            rs.decode_state_loss(model, model, batch, plan, cfg, tok.mask_token_id, tok.pad_token_id)
            s, e = P + plan.block * 32, P + plan.block * 32 + 32
            order, past = teacher_forced_order(model, ids, am, s, e, tok.mask_token_id, tok.pad_token_id)
            S, B = plan.u.shape
            k = (plan.u * (order.amax(1) + 1)).floor().long().flatten()  # (S*B,)
            gold = ids[:, s:e].repeat(S, 1)
            for row in range(S * B):
                masked = seen["x"][row] == tok.mask_token_id
                assert torch.equal(masked, order[row % B] >= k[row])
                if k[row] == 0:
                    if plan.block == 0:
                        assert not seen["has"][row].any()
                        checked["block 0, k=0"] += 1
                    continue
                before = torch.where(order[row % B] >= k[row] - 1, torch.full_like(gold[row], tok.mask_token_id),
                                     gold[row])
                if k[row] == 1:  # forward 0 is the block's full forward
                    z = stale_block_cache(model, ids[row % B:row % B + 1], am[row % B:row % B + 1], s,
                                          tok.mask_token_id)[1][:, s:e]
                else:
                    one = [tuple(x[row % B:row % B + 1] for x in layer) for layer in past]
                    z = block_forward(model, before[None], am[row % B:row % B + 1], one, s)
                p = torch.softmax(z[0].float(), -1)
                a = -(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1])
                assert seen["has"][row][masked].all()
                torch.testing.assert_close(seen["a"][row][masked], a[masked], atol=2e-3, rtol=0)
                checked["k>=1"] += 1
    assert checked["k>=1"] >= 10 and checked["block 0, k=0"] >= 1


def test_drafts_and_soft_inputs_on_hand_made_tensors():
    """Drafts go to still-masked positions of draft rows at alpha; a residual replaces the draft
    where the position has one; plain positions keep their embedding."""
    table = torch.arange(12.0).view(6, 2)  # (V=6, C=2)
    x = torch.tensor([[1, 5, 5, 2]])  # mask id 5
    drafts = torch.tensor([[3, 4, 0, -1]])
    out = rs.soft_embeds(table, x, 5, drafts, 0.5)
    assert torch.equal(out[0, 0], table[1]) and torch.equal(out[0, 3], table[2])
    assert torch.equal(out[0, 1], 0.5 * table[5] + 0.5 * table[4])
    assert torch.equal(out[0, 2], 0.5 * table[5] + 0.5 * table[0])
    a = torch.tensor([[0.9, 0.25, 0.25, 0.9]])
    d = torch.ones(1, 4, 2)
    has = torch.tensor([[True, True, False, True]])
    out = rs.soft_embeds(table, x, 5, drafts, 0.5, a, d, has)
    assert torch.equal(out[0, 1], 0.75 * table[5] + 0.25 * d[0, 1])  # the residual replaced the draft
    assert torch.equal(out[0, 2], 0.5 * table[5] + 0.5 * table[0])  # no residual: the draft stays
    assert torch.equal(out[0, 0], table[1])


def test_the_bridge_arms_drafts_reach_the_model_in_every_kind_of_state(base, monkeypatch):
    """With the stream off (residual_scale 0, the bridge arm) the drafts are what the still-masked
    positions carry in decoder states, cache states and random masks, in the block and in the cache
    (no all-zero residual replaces them); with the stream on, the residual replaces them where it
    exists, as at inference."""
    model, tok = base
    problems, batch = _batch(tok, seed=7, n=6)
    real = rs.soft_embeds
    seen = []

    def spy(table, x, mask_id, drafts, alpha, a=None, d=None, has=None):
        out = real(table, x, mask_id, drafts, alpha, a, d, has)
        if drafts is not None:
            use = (x == mask_id) & (drafts >= 0)
            mixed = (1 - alpha) * table[mask_id] + alpha * table[drafts.clamp(min=0)]
            seen.append((bool(use.any()), bool(torch.equal(out[use], mixed[use]))))
        return out

    monkeypatch.setattr(rs, "soft_embeds", spy)
    mask, pad = tok.mask_token_id, tok.pad_token_id
    for scale, drafts_kept in ((0.0, True), (1.0, False)):
        cfg = rs.SoftInputConfig(residual_scale=scale, draft_frac=1.0, draft_alpha=0.6)
        for kind, (dec, cac) in {"decode": (1.0, 0.0), "cache": (0.0, 1.0), "random": (0.0, 0.0)}.items():
            for seed in range(3):
                plan = rs.plan_step(batch, tok, problems, torch.Generator().manual_seed(seed), random.Random(seed),
                                    cfg, dec, cac, 0.5, 0.7, 2)
                seen.clear()
                with torch.no_grad():
                    if kind == "decode":
                        rs.decode_state_loss(model, model, batch, plan, cfg, mask, pad)
                    elif kind == "cache":
                        rs.cache_state_loss(model, model, batch, plan, cfg, mask)
                    else:
                        rs.random_mask_loss(model, model, batch, plan, cfg, mask)
                laid = [kept for used, kept in seen if used]
                assert laid, (kind, seed)  # the state had still-masked draft positions
                if drafts_kept:
                    assert all(laid), (kind, seed)
                elif plan.kind != "decode" or plan.block > 0:  # block 0's first decoder state has none
                    assert not any(laid), (kind, seed)


def test_draft_rows_quality_and_their_own_generator():
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    problems = tinygsm.generate_problems(9, 60)
    cfg = rs.SoftInputConfig(draft_frac=0.5, draft_wrong=0.5, draft_other=0.2)
    d = rs.draft_ids(tok, problems, random.Random(1), cfg)
    rows = (d[:, 0] >= 0)
    assert 0.3 < rows.float().mean() < 0.7
    finals = [tinygsm.extract_final(tok.decode([t for t in r.tolist() if t >= 0], skip_special_tokens=True))
              for r in d]
    right = [f == int(p["final"]) for f, p, has in zip(finals, problems, rows.tolist()) if has]
    assert 0.2 < sum(right) / len(right) < 0.8  # wrong results and other problems' drafts
    assert rs.draft_ids(tok, problems, random.Random(1), rs.SoftInputConfig()) is None
    with pytest.raises(ValueError, match="draft_alpha"):
        rs.SoftInputConfig(draft_alpha=1.5)


def _tiny_reference(path):
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    cfg = TinyLLaDAConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, mask_token_id=tok.mask_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_sequence_length=512)
    TinyLLaDAModelLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def _run(args, cwd=REPO, ok=(0,)):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode in ok, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_two_gloo_processes_and_accumulation_give_the_one_process_loss_curve(tmp_path):
    _tiny_reference(tmp_path / "ref")
    common = ["scripts/train_rcd.py", "--reference", str(tmp_path / "ref"), "--steps", "6", "--eval-every", "100",
              "--eval-n", "2", "--eval-modes", "cold", "--batch", "8", "--draft-frac", "0.5", "--lr", "0.01",
              "--warmup", "1", "--decode-frac", "0.5", "--cache-frac", "0.25", "--decode-states", "2"]
    _run([sys.executable, *common, "--work", str(tmp_path / "one")])
    _run([sys.executable, *common, "--work", str(tmp_path / "accum"), "--grad-accum", "2"])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
          *common, "--work", str(tmp_path / "two")])
    states = {n: torch.load(tmp_path / n / "ckpt.pt", weights_only=False) for n in ("one", "accum", "two")}
    assert states["two"]["state"]["hparams"]["world_size"] == 2
    one = states["one"]["state"]
    assert set(one["kinds"]) == {"decode", "cache", "random"}
    assert one["losses"][-1] < one["losses"][0]  # it trains
    for name in ("accum", "two"):
        assert states[name]["state"]["kinds"] == one["kinds"]
        torch.testing.assert_close(torch.tensor(states[name]["state"]["losses"]), torch.tensor(one["losses"]),
                                   atol=1e-5, rtol=1e-5)
        for k, w in states["one"]["model"].items():
            torch.testing.assert_close(states[name]["model"][k], w, atol=1e-5, rtol=1e-4)


def test_train_rcd_stops_resumes_exports_and_marks_the_config(tmp_path):
    _tiny_reference(tmp_path / "ref")
    common = [sys.executable, "scripts/train_rcd.py", "--reference", str(tmp_path / "ref"), "--work",
              str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--steps", "4", "--eval-every", "2",
              "--eval-n", "2", "--final-n", "2", "--batch", "4", "--draft-frac", "0.5", "--warmup", "1"]
    for bad in (["--eval-modes", "cold,xyz"], ["--draft-alpha", "2"], ["--batch", "3", "--grad-accum", "2"]):
        proc = subprocess.run(common + bad, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and bad[0] in proc.stderr and "Traceback" not in proc.stderr
    _run(common + ["--stop-at", "2"], ok=(75,))
    assert not (tmp_path / "out").exists()
    out = _run(common + ["--resume"]).stdout
    assert "resumed from" in out
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps_done"] == 4 and len(log["command"]) == 2
    assert [c["step"] for c in log["learning_curve"]] == [0, 2, 4]
    assert {"acc_cold", "acc_rcd", "acc_embed"} <= log["final_eval"]["test"].keys()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["soft_inputs"] == "rcd+bridge" and config["base_model"] == str(tmp_path / "ref")
    control = _run(common + ["--work", str(tmp_path / "c"), "--out", str(tmp_path / "c_out"), "--residual-scale",
                             "0", "--draft-alpha", "0", "--eval-modes", "cold", "--eval-every", "4"])
    assert control.returncode == 0
    assert json.loads((tmp_path / "c_out" / "config.json").read_text())["soft_inputs"] == "none"


def test_probe_residual_weights_measures_both_sides(base):
    """scripts/probe_residual_weights.py: the KS distance is 0 for one sample and 1 for disjoint
    ones; the training side collects weights in [0, 1] from every kind of state; the recording
    stream sees the weights it feeds."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import probe_residual_weights as probe
    finally:
        sys.path.pop(0)
    from fastdllm_warmstart.tasks import tinygsm
    from scripts.training import engine_decode

    x = torch.rand(500)
    assert probe.ks(x, x) == 0 and probe.ks(x * 0.4, 0.5 + x * 0.4) == 1.0
    model, tok = base
    for kind in ("decode", "cache", "random"):
        a = probe.training_weights(model, tok, 1, 4, rs.SoftInputConfig(), {kind: 1.0})
        assert len(a) > 10 and 0 <= a.min() and a.max() <= 1
    sink = []
    problems = tinygsm.generate_problems(2, 3)
    engine_decode(model, tok, [p["question"] for p in problems], "dual", 3,
                  lambda rows: [probe.RecordingResidual(1.0, sink)])
    fed = torch.cat(sink)
    assert len(fed) > 50 and 0 < fed.median() < 1


def test_validation_modes_and_their_drafts(base):
    """Every validation mode decodes; the shuffled drafts are the drafts of other problems and the
    near-miss drafts are each right in form with a wrong final result."""
    from fastdllm_warmstart.tasks import tinygsm
    from scripts.training import soft_eval

    model, tok = base
    problems = tinygsm.generate_problems(4, 6)
    plain = soft_eval.validation_drafts(tok, problems)
    near = soft_eval.validation_drafts(tok, problems, wrong=1.0, other=0.0)
    text = [tok.decode([t for t in r.tolist()], skip_special_tokens=True) for r in near]
    assert all("####" in t and tinygsm.extract_final(t) != int(p["final"]) for t, p in zip(text, problems))
    assert torch.equal(soft_eval.validation_drafts(tok, problems), plain)  # fixed by the seed
    r = soft_eval.evaluate_modes(model, tok, problems, soft_eval.MODES, 1.0, batch_size=3)
    for mode in soft_eval.MODES:
        assert 0 <= r[f"acc_{mode}"] <= 1 and r[f"nfe_{mode}"] >= 3
    assert r["acc_cold"] >= 0.5 and r["nfe_embed"] < r["nfe_cold"]
