"""The training scripts run end to end on tiny random models: train, checkpoint, resume, export."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _run(*args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_train_tiny_dllm_trains_resumes_and_exports(tmp_path):
    common = ["scripts/train_tiny.py", "dllm", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
              "--d-model", "16", "--layers", "1", "--heads", "2", "--batch", "4", "--steps", "6",
              "--eval-every", "3", "--eval-n", "3", "--final-n", "3", "--eq-frac", "0.5", "--threads", "1",
              "--decode-frac", "0.5", "--decode-states", "2", "--decode-block", "content", "--rf-weight", "3",
              "--group-frac", "0.8"]
    for bad in (["--decode-states", "0"], ["--rf-weight", "0"], ["--group-frac", "2"]):
        proc = subprocess.run([sys.executable, *common, *bad], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode != 0 and bad[0] in proc.stderr and "Traceback" not in proc.stderr
    _run(*common, "--stop-at", "3", cwd=REPO)
    _run(*common, "--resume", "--select-top", "1", "--select-n", "4", cwd=REPO)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["steps_done"] == 6 and [c["step"] for c in log["learning_curve"]] == [3, 6]
    assert log["hyperparameters"]["decode_states"] == 2 and log["hyperparameters"]["decode_block"] == "content"
    assert log["hyperparameters"]["rf_weight"] == 3.0 and log["hyperparameters"]["group_frac"] == 0.8
    # the exported step is the best re-measured candidate (the best-validated one and the last)
    cands = log["selection"]["candidates"]
    assert {c["step"] for c in cands} <= {3, 6} and 6 in {c["step"] for c in cands}
    assert log["exported_step"] == max(cands, key=lambda c: (c["select_acc"], c["step"]))["step"]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # On another machine only ckpt.pt and best.pt travel (committed): the export still works.
    for snap in (tmp_path / "work").glob("snap_*.pt"):
        snap.unlink()
    (tmp_path / "out" / "model.safetensors").unlink()
    _run(*common, "--export-only", cwd=REPO)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "train_log.json").read_text())["exported_step"] == log["exported_step"]


def test_optimizer_step_steps_and_clips():
    """One call takes one optimiser step with the gradient norm clipped to ``clip`` (the move to
    scripts/training once lost both lines: every train_tiny run then kept its initial weights)."""
    from scripts.training import optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = (model(torch.full((1, 4), 100.0)) ** 2).sum()  # a gradient of norm >> 1
    optimizer_step(model, opt, loss, clip=0.5)
    step = (model.weight.detach() - before).norm().item()
    assert step == pytest.approx(0.5, rel=1e-4)  # lr 1 x the clipped gradient norm


def test_train_tiny_aux_on_the_dllm_tokenizer(tmp_path):
    """``aux --tokenizer dllm`` trains the aux on the dLLM's vocabulary and exports that tokenizer;
    the dLLM itself refuses another tokenizer in one line."""
    from transformers import AutoTokenizer

    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    common = ["scripts/train_tiny.py", "aux", "--tokenizer", "dllm", "--out", str(tmp_path / "out"),
              "--work", str(tmp_path / "work"), "--d-model", "16", "--layers", "1", "--heads", "2",
              "--batch", "4", "--steps", "2", "--eval-every", "2", "--eval-n", "2", "--final-n", "2",
              "--threads", "1"]
    _run(*common, cwd=REPO)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    assert log["hyperparameters"]["tokenizer"] == "dllm"
    exported = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert exported.get_vocab() == build_dllm_tokenizer().get_vocab()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == len(exported) and config["model_type"] == "llama"
    proc = subprocess.run([sys.executable, "scripts/train_tiny.py", "dllm", "--tokenizer", "aux", "--out",
                           str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "--tokenizer aux" in proc.stderr and "Traceback" not in proc.stderr


def test_problem_stream_group_frac_sets_the_training_mix_only():
    from fastdllm_warmstart.tasks import tinygsm
    from scripts.training import ProblemStream

    def frac(stream, n=240):
        probs = [p for _ in range(n // 24) for p in stream.next_batch(24, pool=1)]
        return sum(map(tinygsm.has_group, probs)) / len(probs)

    own = frac(ProblemStream(5, set()))
    assert 0.35 < own < 0.85
    assert frac(ProblemStream(5, set(), group_frac=1.0)) == 1.0
    assert frac(ProblemStream(5, set(), group_frac=0.0)) == 0.0
    assert 0.6 < frac(ProblemStream(5, set(), group_frac=0.8)) < 0.95
    # None draws exactly the generator's problems, as before the option existed
    import random
    rng = random.Random(5)
    first = ProblemStream(5, set()).next_batch(8, pool=1)
    assert sorted(p["question"] for p in first) == sorted(
        tinygsm.generate_problem(rng)["question"] for _ in range(8))
    with pytest.raises(ValueError, match="group_frac"):
        ProblemStream(5, set(), group_frac=1.5)


def test_dual_cache_loss_trains_a_block_against_stale_context():
    """training.dllm_cache_loss: the block runs against cached keys/values of a canvas masked from
    the block on (constants: no gradient reaches them), and a model fits a fixed batch with it."""
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from scripts.training import dllm_cache_loss, dllm_encode_batch

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    model = TinyLLaDAModelLM(TinyLLaDAConfig(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2,
                                             mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id))
    batch = dllm_encode_batch(tok, tinygsm.generate_problems(5, 4), "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_at(seed):
        return dllm_cache_loss(model, batch, tok.mask_token_id, tok.eos_token_id,
                               torch.Generator().manual_seed(seed))

    first = [loss_at(s).item() for s in range(3)]
    for step in range(40):
        opt.zero_grad()
        loss = loss_at(step % 3)
        loss.backward()
        assert model.wte.weight.grad is not None and torch.isfinite(loss)
        opt.step()
    last = [loss_at(s).item() for s in range(3)]
    assert sum(last) < 0.5 * sum(first)


def test_grow_state_dict_keeps_the_function_and_trains_the_new_layers(tmp_path):
    """training.grow_state_dict: a 1-layer model grown to 3 layers and a wider MLP computes the same
    logits in every cache state, its new blocks' branches start at zero and receive gradient; a
    shallower target or another width is refused; train_tiny.py --init-from grows a snapshot."""
    import pytest

    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from scripts.training import grow_state_dict

    tok = build_dllm_tokenizer()

    def make(layers, ratio=4.0, d=16):
        torch.manual_seed(layers)
        return TinyLLaDAModelLM(TinyLLaDAConfig(vocab_size=len(tok), d_model=d, n_layers=layers, n_heads=2,
                                                mlp_ratio=ratio, mask_token_id=tok.mask_token_id,
                                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))

    small, big = make(1).eval(), make(3, ratio=6.0).eval()
    info = grow_state_dict(small.state_dict(), big)
    assert info == {"layers_from": 1, "layers_to": 3, "mlp_from": 64, "mlp_to": 96}
    x = torch.randint(4, len(tok), (2, 20))
    torch.testing.assert_close(big(x).logits, small(x).logits, atol=1e-5, rtol=1e-5)
    # the dual-cache path too: a block recomputed against cached keys/values
    rp = torch.zeros_like(x, dtype=torch.bool)
    rp[:, 8:12] = True
    outs = [m(x[:, 8:12], past_key_values=m(x, use_cache=True).past_key_values, use_cache=True,
              replace_position=rp).logits for m in (small, big)]
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    fresh = big.blocks[1]
    assert fresh.attn_out.weight.abs().sum() == 0 and fresh.down.weight.abs().sum() == 0
    big.train()
    big(x).logits.logsumexp(-1).mean().backward()
    assert fresh.attn_out.weight.grad.abs().sum() > 0 and fresh.down.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="--layers"):
        grow_state_dict(big.state_dict(), make(2))
    with pytest.raises(ValueError, match="d_model"):
        grow_state_dict(small.state_dict(), make(2, d=32))

    snap = tmp_path / "small.pt"
    torch.save({"step": 1, "model": small.state_dict()}, snap)
    common = ["scripts/train_tiny.py", "dllm", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w"),
              "--d-model", "16", "--heads", "2", "--batch", "4", "--steps", "2", "--eval-every", "2",
              "--eval-n", "2", "--final-n", "2", "--threads", "1", "--init-from", str(snap)]
    out = _run(*common, "--layers", "2", cwd=REPO)
    assert "'layers_from': 1, 'layers_to': 2" in out
    proc = subprocess.run([sys.executable, *common, "--layers", "2", "--d-model", "32", "--work",
                           str(tmp_path / "w2")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "--init-from" in proc.stderr and "Traceback" not in proc.stderr


def test_teacher_forced_order_replays_the_engines_dual_cache_trajectory():
    """training.teacher_forced_order: given the embedded dLLM's own dual-cache decoding as the
    reference, the teacher-forced decoder visits the very states the engine visited, so the forwards
    it counts per block add up to the engine's NFE for every row; and dllm_decode_state_loss trains."""
    from fastdllm_warmstart.assets import asset_path
    from fastdllm_warmstart.engine import generate
    from fastdllm_warmstart.models import TinyLLaDAModelLM
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from scripts.training import (BLOCK_LENGTH, GEN_LENGTH, THRESHOLD, dllm_decode_state_loss,
                                             dllm_encode_batch, teacher_forced_order)

    tok = build_dllm_tokenizer()
    model = TinyLLaDAModelLM.from_pretrained(asset_path("tiny-dllm"), dtype=torch.float32).eval()
    problems = tinygsm.generate_problems(31, 12)
    prompts = [tok.encode(tinygsm.format_prompt(p["question"]), add_special_tokens=False) for p in problems]
    out = generate(model, prompts, steps=GEN_LENGTH, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                   threshold=THRESHOLD, cache="dual", tokenizer=tok, use_upstream=False)
    ids = out.sequences
    P = ids.shape[1] - GEN_LENGTH
    am = torch.ones_like(ids)
    for i, pr in enumerate(prompts):
        am[i, :P - len(pr)] = 0
    counted = torch.zeros(len(prompts), dtype=torch.long)
    with torch.no_grad():
        for b in range(GEN_LENGTH // BLOCK_LENGTH):
            s = P + b * BLOCK_LENGTH
            order, _ = teacher_forced_order(model, ids, am, s, s + BLOCK_LENGTH, tok.mask_token_id, tok.pad_token_id)
            assert (order >= 0).all()
            counted += order.amax(1) + 1
    assert counted.tolist() == out.nfe.tolist()
    assert out.nfe.float().mean() > 3 * (GEN_LENGTH // BLOCK_LENGTH) / 2  # far from trivially one forward per block

    batch = dllm_encode_batch(tok, problems, "cpu")
    model.train()
    loss = dllm_decode_state_loss(model, batch, tok.mask_token_id, tok.pad_token_id,
                                  torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and model.wte.weight.grad.abs().sum() > 0


def test_decode_state_loss_draws_several_states_and_skips_filler_blocks(monkeypatch):
    """dllm_decode_state_loss(states=K): each of the K draws of a row is run against that row's own
    cache (the batched forward equals the row's forward alone), their masks differ, and
    block_choice="content" rarely replays a block that holds only end-of-canvas filler."""
    from scripts import training
    from scripts.training import objectives
    from fastdllm_warmstart.assets import asset_path
    from fastdllm_warmstart.models import TinyLLaDAModelLM
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    model = TinyLLaDAModelLM.from_pretrained(asset_path("tiny-dllm"), dtype=torch.float32).eval()
    problems = tinygsm.generate_problems(5, 6)
    batch = training.dllm_encode_batch(tok, problems, "cpu")
    B, P = batch["ids"].shape[0], batch["P"]
    seen = {}
    real_block_forward = training.block_forward

    def spy(model_, xb, am, past, s):
        seen.update(xb=xb, am=am, past=past, s=s)
        return real_block_forward(model_, xb, am, past, s)

    monkeypatch.setattr(objectives, "block_forward", spy)
    with torch.no_grad():
        loss = training.dllm_decode_state_loss(model, batch, tok.mask_token_id, tok.pad_token_id,
                                               torch.Generator().manual_seed(3), states=3)
        assert torch.isfinite(loss) and loss > 0
        xb, past, s = seen["xb"], seen["past"], seen["s"]
        assert xb.shape[0] == 3 * B and not all(torch.equal(xb[:B], xb[j * B:(j + 1) * B]) for j in (1, 2))
        together = real_block_forward(model, xb, seen["am"], past, s)
        for j in range(3):
            for r in (0, B - 1):
                row = j * B + r
                orig = [tuple(x[r:r + 1] for x in layer) for layer in past]  # copy 0 holds the original rows
                alone = real_block_forward(model, xb[row:row + 1], batch["am"][r:r + 1],
                                           [tuple(x[row:row + 1] for x in layer) for layer in past], s)
                assert torch.allclose(together[row], alone[0], atol=1e-5)
                assert all(torch.equal(a[row], b[0]) for la, lb in zip(past, orig) for a, b in zip(la, lb))

    canvas = batch["ids"][:, P:]
    filler = [b for b in range(canvas.shape[1] // training.BLOCK_LENGTH)
              if (canvas[:, b * training.BLOCK_LENGTH:(b + 1) * training.BLOCK_LENGTH] == canvas[:, -1:]).all()]
    assert filler, "the test needs a batch whose last block is filler only"
    picks = []
    monkeypatch.setattr(objectives, "teacher_forced_order",
                        lambda m, ids, am, s, e, *a, **k: (picks.append((s - P) // training.BLOCK_LENGTH),
                                                           (torch.zeros(ids.shape[0], e - s, dtype=torch.long),
                                                            training.stale_block_cache(m, ids, am, s,
                                                                                       tok.mask_token_id)[0]))[1])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(40):
            training.dllm_decode_state_loss(model, batch, tok.mask_token_id, tok.pad_token_id, g,
                                            block_choice="content")
    assert sum(b in filler for b in picks) <= 4 and len(set(picks) - set(filler)) >= 2


def test_result_first_boost_weights_only_the_results_of_result_first_equations():
    """dllm_encode_batch marks the result c of every ``c = a op b`` equation of the reference answers
    (and nothing of the other wordings); result_first_boost(W) multiplies by W the cross-entropy of
    exactly those masked results whose "=" is visible, in every loss; W = 1 leaves the loss as it was."""
    from scripts import training
    from fastdllm_warmstart.assets import asset_path
    from fastdllm_warmstart.models import TinyLLaDAModelLM
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    problems = tinygsm.generate_problems(5, 24)
    batch = training.dllm_encode_batch(tok, problems, "cpu")
    P = batch["P"]
    marked = batch["result_first"]
    assert marked.any()
    expected = torch.zeros_like(marked)
    for r, p in enumerate(problems):
        words = tok.convert_ids_to_tokens(batch["ids"][r, P:].tolist())
        for j in range(1, len(words) - 3):  # "<c> = <a> <op> <b>" not preceded by an "... =" equation
            if (words[j] == "=" and words[j - 1].isdigit() and words[j + 1].isdigit()
                    and words[j + 3].isdigit() and not (j >= 3 and words[j - 2] in training.data._OP_TOKENS)):
                expected[r, j - 1] = True
    assert torch.equal(marked, expected)

    # masked_ce with the boost adds (W - 1) * weight * ce where a marked result is masked and the "="
    # right after it is visible (its wording fixed), nothing where "=" is masked too (a wording choice)
    B, G = marked.shape
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, G, 50, generator=g)
    canvas = torch.randint(50, (B, G), generator=g)
    m = torch.rand(B, G, generator=g) < 0.5
    assert training.result_first_boost(marked, m, 1.0) is None
    fixed = torch.zeros_like(m)
    for r, j in marked.nonzero().tolist():
        fixed[r, j] = bool(m[r, j]) and not bool(m[r, j + 1])
    assert fixed.any() and (marked & m & ~fixed).any()
    t = torch.full((B,), 0.5)
    none = torch.zeros_like(m)
    base = training.masked_ce(logits, canvas, t, m, none)
    boosted = training.masked_ce(logits, canvas, t, m, none, boost=training.result_first_boost(marked, m, 4.0))
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), canvas, reduction="none")
    extra = (3.0 * 2.0 * ce * fixed).sum() / (B * G)
    assert torch.allclose(boosted - base, extra, rtol=1e-5)

    # each loss: W = 1 is the old loss; W > 1 raises it when a marked result is masked
    model = TinyLLaDAModelLM.from_pretrained(asset_path("tiny-dllm"), dtype=torch.float32).eval()
    with torch.no_grad():
        for fn, kw in ((training.dllm_loss, {"eos_id": tok.eos_token_id, "eq_frac": 0.5}),
                       (training.dllm_decode_state_loss, {"pad_id": tok.pad_token_id, "states": 2,
                                                          "block_choice": "content"})):
            raised = []
            for seed in range(6):  # the drawn states differ per seed; some hold a weighted result
                default = fn(model, batch, tok.mask_token_id, gen=torch.Generator().manual_seed(seed), **kw)
                one, four = (fn(model, batch, tok.mask_token_id, gen=torch.Generator().manual_seed(seed),
                                rf_weight=w, **kw) for w in (1.0, 4.0))
                assert torch.equal(default, one) and four >= one
                raised.append(bool(four > one))
            assert any(raised), fn.__name__
    try:
        training.result_first_boost(marked, m, 0.0)
    except ValueError as err:
        assert "rf_weight" in str(err)
    else:
        raise AssertionError("a zero weight must be refused")


def test_probe_decode_order_runs_on_the_embedded_model():
    """scripts/probe_decode_order.py: one-token left-to-right decoding really decodes (the embedded
    dLLM solves most of a few problems that way), and the script prints all three accuracies."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import probe_decode_order as probe
    finally:
        sys.path.pop(0)
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from scripts.training import score

    tok = build_dllm_tokenizer()
    model = probe.load("embedded:tiny-dllm", tok, 96, 3).eval()
    problems = tinygsm.generate_problems(5, 10)
    texts = probe.left_to_right(model, tok, [p["question"] for p in problems])
    assert all("####" in t for t in texts) and score(problems, texts) >= 0.5
    gold = probe.wording_errors([p["answer"] for p in problems])
    assert sum(v["equations"] for v in gold.values()) >= 30 and all(v["wrong"] == 0 for v in gold.values())
    bad = probe.wording_errors(["3 + 4 = 8 . 9 = 2 * 4 . 2 times 5 is 10 . #### 10"])
    assert bad == {"symbol": {"equations": 1, "wrong": 1.0}, "result_first": {"equations": 1, "wrong": 1.0},
                   "words": {"equations": 1, "wrong": 0.0}}
    out = _run("scripts/probe_decode_order.py", "--n", "3", "--threads", "1", "--max-events", "5", cwd=REPO)
    rec = json.loads(out.strip().splitlines()[-1])
    assert set(rec["accuracy"]) == {"left-to-right", "threshold", "threshold+dual"} and rec["max_events"] == 5
    for bad in (["--model", "/nonexistent/model.pt"], ["--model", "/nonexistent-folder"], ["--max-events", "2"]):
        proc = subprocess.run([sys.executable, "scripts/probe_decode_order.py", *bad], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and bad[0] in proc.stderr and "Traceback" not in proc.stderr


def test_probe_calibration_measures_temperature_and_decoder_states():
    """scripts/probe_calibration.py: its calibration figures find the temperature that generated
    the data, its decoder states are the replayed trajectory's, and the script runs end to end."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import probe_calibration as probe
    finally:
        sys.path.pop(0)
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 12, generator=g) * 3
    for true_t in (1.0, 2.0):  # targets drawn from softmax(logits / true_t): NLL is lowest there
        y = torch.multinomial(torch.softmax(logits / true_t, -1), 1, generator=g)[:, 0]
        nll = {t: probe.calibration(logits, y, t)["nll"] for t in (0.5, 1.0, 2.0, 4.0)}
        assert min(nll, key=nll.get) == true_t
        assert probe.calibration(logits, y, true_t)["ece"] < 0.02 < probe.calibration(logits, y, 4 * true_t)["ece"]
    r = probe.calibration(logits, logits.argmax(-1), 1.0)  # always right: every confident token is right
    assert r["acc_ge_0.9"] == 1.0 and 0 < r["frac_ge_0.9"] < 1

    tok = build_dllm_tokenizer()
    model = probe.load_or_exit("embedded:tiny-dllm", tok, 96, 3).eval()
    problems = tinygsm.generate_problems(5, 3)
    states = probe.collect_states(model, tok, problems)
    lg, y = states["decoder states"]
    assert lg.shape[0] == y.shape[0] >= 96 * len(problems)  # each block's first state is all masked
    assert set(y.tolist()) <= {t for p in problems for t in tok.encode(" " + p["answer"], add_special_tokens=False)} | {
        tok.eos_token_id}
    out = _run("scripts/probe_calibration.py", "--n", "2", "--decode-n", "6", "--temps", "1,2", "--threads", "1",
               "--max-events", "5", cwd=REPO)
    rec = json.loads(out.strip().splitlines()[-1])
    assert set(rec["calibration"]) == {"random-mask", "decoder states"} and set(rec["decode"]) == {"1.0", "2.0"}
    d = rec["decode"]["1.0"]
    assert d.get("n_group", 0) + d.get("n_no_group", 0) == 6 and rec["max_events"] == 5
    by_len = {k: v for k, v in d.items() if k.startswith("n_events_")}
    assert sum(by_len.values()) == 6 and set(by_len) <= {"n_events_3", "n_events_4", "n_events_5"}
    for bad in (["--temps", "0,1"], ["--temps", "x"], ["--model", "/nonexistent-folder"], ["--max-events", "8"]):
        proc = subprocess.run([sys.executable, "scripts/probe_calibration.py", *bad], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and bad[0] in proc.stderr and "Traceback" not in proc.stderr
