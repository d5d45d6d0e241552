"""The Dream protocol without a checkout: a scripted shifted model with known beliefs (the logit
at column c speaks about c + 1) and the tiny Dream-protocol model (random weights)."""

import pytest
import torch

from conftest import EOS, MASK, PAD, VOCAB
from fastdllm_warmstart import DecodeCallback, configs_from_flat, generate
from fastdllm_warmstart.engine.protocol import MaskPredictor, ShiftedPredictor, UpstreamDream, protocol_for
from fastdllm_warmstart.models import TinyDreamConfig, TinyDreamModelLM, TinyLLaDAConfig
from fastdllm_warmstart.priors.spec import SpeculativeAccept
from fastdllm_warmstart.residual import ResidualContext
from fastdllm_warmstart.warmstart import build_callbacks
from scripted_model import BLOCK, B, G, P, ScriptedLM, scripted_problem, verifier_rules

CACHES = ("none", "prefix", "dual")
RULES = verifier_rules()


@pytest.fixture(scope="module")
def problem():
    return scripted_problem()


def decode(model, prompt, cache, callbacks=(), block=BLOCK):
    return generate(model, prompt, steps=G, gen_length=G, block_length=block, threshold=0.9, cache=cache,
                    callbacks=list(callbacks), mask_id=2, eos_id=3, pad_id=0, skip_done_rows=False)


@pytest.mark.parametrize("cache", CACHES)
def test_the_shift_is_what_makes_a_shifted_model_right(problem, cache):
    target, prompt = problem
    model = ScriptedLM(target, P, shift=True)
    cold = decode(model, prompt, cache)
    assert torch.equal(cold.generated, target)
    # Dream's loop: the block-opening forward commits the block's first position, then one token
    # a forward (p0 < threshold) with the cached ones: block_length forwards a block.
    assert cold.nfe.tolist() == [G] * B
    model.logit_shift = False  # the same logits read as a mask predictor's
    assert not torch.equal(decode(model, prompt, cache).generated, target)


class Commits(DecodeCallback):
    def __init__(self):
        self.log = []

    def after_commit(self, state):
        w0 = state.window[0]
        cols = (state.transfer.nonzero(as_tuple=True)[1] + w0).unique().tolist()
        self.log.append((state.block_step, state.block_start, cols))


@pytest.mark.parametrize("cache", CACHES)
def test_a_block_opens_by_committing_its_first_position_alone(problem, cache):
    target, prompt = problem
    rec = Commits()
    decode(ScriptedLM(target, P, p0=0.95, decay=1.0, shift=True), prompt, cache, [rec])  # all clear 0.9
    opening = [(start, cols) for step, start, cols in rec.log if step == 0]
    assert opening == [(P, [P]), (P + BLOCK, [P + BLOCK])]
    later = [cols for step, _, cols in rec.log if step > 0]
    assert max(len(c) for c in later) > 1  # confident positions are committed together after it


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_right_drafts_save_forwards_and_drafts_one_off_save_nothing(problem, cache, rule):
    target, prompt = problem
    model = ScriptedLM(target, P, shift=True)
    cold = decode(model, prompt, cache)
    warm = decode(model, prompt, cache, [RULES[rule](target.clone())])
    assert torch.equal(warm.generated, target)
    assert (warm.nfe < cold.nfe).all(), (warm.nfe, cold.nfe)
    for shifted in (target.roll(1, dims=1), target.roll(-1, dims=1)):  # the draft one column off
        off = decode(model, prompt, cache, [RULES[rule](shifted)])
        assert torch.equal(off.generated, target)
        assert torch.equal(off.nfe, cold.nfe)


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_rules_batch_equals_one_by_one(problem, cache, rule):
    target, prompt = problem
    draft = target.clone()
    draft[1, 5] = 11 if target[1, 5] != 11 else 12
    batch = decode(ScriptedLM(target, P, shift=True), prompt, cache, [RULES[rule](draft)])
    assert len(set(batch.nfe.tolist())) > 1
    for i in range(B):
        one = decode(ScriptedLM(target[i:i + 1], P, shift=True), prompt[i:i + 1], cache,
                     [RULES[rule](draft[i:i + 1])])
        assert torch.equal(one.sequences, batch.sequences[i:i + 1])
        assert one.nfe.item() == batch.nfe[i].item()


@pytest.mark.parametrize("warm_init", ["token", "embed"])
@pytest.mark.parametrize("cache", CACHES)
def test_warm_start_from_the_run_config_on_the_shifted_model(problem, warm_init, cache):
    """Token injection / embedding interpolation with the default verifier: the cold answer as the
    draft gives the same tokens in fewer forwards; the same draft one column off saves nothing."""
    target, prompt = problem
    model = ScriptedLM(target, P, shift=True)
    config = configs_from_flat(gen_length=G, block_length=BLOCK, warm_init=warm_init, rho=1.0, alpha=1.0,
                               remask=True)
    cold = decode(model, prompt, cache)
    warm = decode(model, prompt, cache, build_callbacks(config, cold.generated.clone()))
    assert torch.equal(warm.generated, target)
    assert (warm.nfe < cold.nfe).all(), (warm.nfe, cold.nfe)
    off = decode(model, prompt, cache, build_callbacks(config, cold.generated.roll(1, dims=1)))
    assert torch.equal(off.generated, target)
    assert (off.nfe >= cold.nfe).all(), (off.nfe, cold.nfe)


class Residuals(DecodeCallback):
    """Reads the RCD stream (runs after ResidualContext) at every masked column after each step."""

    def __init__(self, rcd):
        self.rcd, self.seen = rcd, []

    def after_commit(self, state):
        has = self.rcd.has & (state.x == state.mask_id)  # (B, L)
        r, c = has.nonzero(as_tuple=True)
        # ScriptedLM's embedding table is the identity: E[p] = p, so its argmax is the token the
        # stream holds for that column.
        self.seen.append((c, self.rcd.residual[r, c].argmax(-1), r))


@pytest.mark.parametrize("cache", CACHES)
def test_rcd_residuals_sit_at_the_column_they_predict(problem, cache):
    target, prompt = problem
    rcd = ResidualContext()
    spy = Residuals(rcd)
    # decay 1: the target is each column's favourite however many masks precede it
    decode(ScriptedLM(target, P, decay=1.0, shift=True), prompt, cache, [rcd, spy])
    cols = torch.cat([c for c, _, _ in spy.seen])
    tokens = torch.cat([t for _, t, _ in spy.seen])
    rows = torch.cat([r for _, _, r in spy.seen])
    assert cols.numel() > 0
    assert torch.equal(tokens, target[rows, cols - P])


def test_spec_and_refill_are_clear_errors_on_a_shifted_model(problem):
    target, prompt = problem
    model = ScriptedLM(target, P, shift=True)
    model.supports_transient_queries = True  # the model could; the protocol says the column is off
    with pytest.raises(ValueError, match="transient queries"):
        decode(model, prompt, "none", [SpeculativeAccept(target.clone())])
    with pytest.raises(ValueError, match="refill"):
        generate(model, prompt, gen_length=G, block_length=BLOCK, threshold=0.9, cache="none", mask_id=2,
                 batching="refill")


def test_protocol_is_chosen_by_the_model_config():
    def fake(model_type):
        return type("M", (), {"config": type("C", (), {"model_type": model_type})()})()

    assert type(protocol_for(fake("Dream"))) is UpstreamDream
    assert type(protocol_for(fake("tiny_dream"))) is ShiftedPredictor
    assert type(protocol_for(fake("llada"))) is MaskPredictor
    assert type(protocol_for(fake("tiny_llada"))) is MaskPredictor


# -- the tiny Dream-protocol model -------------------------------------------------------------

def make_tiny_dream(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    cfg = TinyDreamConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, mask_token_id=MASK,
                          eos_token_id=EOS, pad_token_id=PAD, init_std=0.5)
    model = TinyDreamModelLM(cfg).eval().to(dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)  # confident enough that rows commit at different paces
        model.lm_head.weight[MASK] = 0
        model.lm_head.weight[PAD] = 0
    return model


def prompts_for(batch, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return [torch.randint(4, VOCAB, (int(n),), generator=g).tolist()
            for n in torch.randint(2, 9, (batch,), generator=g)]


SETTINGS = {
    "token+remask": dict(warm_init="token", rho=0.5, remask=True),
    "embed": dict(warm_init="embed", alpha=0.6),
    "embed+remask": dict(warm_init="embed", alpha=0.6, remask=True, remask_rule="chain"),
    "residual": dict(residual=True),
}


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("mode", sorted(SETTINGS))
def test_tiny_dream_callbacks_are_batch_invariant(cache, mode):
    model = make_tiny_dream()
    prompts = prompts_for(4)
    kw = dict(steps=G, gen_length=G, block_length=8, threshold=0.9, cache=cache)
    props = generate(model, prompts, **kw).generated.clone()
    props[:, ::2] = torch.randint(4, VOCAB, (4, G), generator=torch.Generator().manual_seed(1))[:, ::2]
    props[1] = -1  # a cold row among warm ones
    config = configs_from_flat(gen_length=G, block_length=8, **SETTINGS[mode])
    batch = generate(model, prompts, callbacks=build_callbacks(config, props), **kw)
    assert len(set(batch.nfe.tolist())) > 1
    for r in range(4):
        one = generate(model, [prompts[r]], callbacks=build_callbacks(config, props[r:r + 1]), **kw)
        assert torch.equal(batch.generated[r], one.generated[0]), r
        assert int(batch.nfe[r]) == int(one.nfe[0]), r


class Snapshot(DecodeCallback):
    def on_init(self, state):
        self.canvas = state.x.clone()


@pytest.mark.parametrize("cache", CACHES)
def test_tiny_dream_canvas_is_cold_without_callbacks(cache):
    model = make_tiny_dream()
    prompts = prompts_for(3)
    kw = dict(steps=G, gen_length=G, block_length=8, threshold=0.9, cache=cache)
    config = configs_from_flat(gen_length=G, block_length=8)  # no warm start, no verifier, no RCD
    callbacks = build_callbacks(config, torch.randint(4, VOCAB, (3, G)))
    assert callbacks == []
    snap = Snapshot()
    plain = generate(model, prompts, **kw)
    watched = generate(model, prompts, callbacks=[snap], **kw)
    assert (snap.canvas[:, -G:] == MASK).all()
    assert torch.equal(plain.sequences, watched.sequences) and torch.equal(plain.nfe, watched.nfe)


def test_tiny_dream_saves_and_loads_as_dream_protocol(tmp_path):
    from transformers import AutoModel

    make_tiny_dream(dtype=torch.float32).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(str(tmp_path))
    assert type(loaded) is TinyDreamModelLM and protocol_for(loaded).shifted
    assert TinyLLaDAConfig.model_type != TinyDreamConfig.model_type


@pytest.mark.parametrize("cache", CACHES)
def test_a_revoked_block_start_is_decided_from_the_position_before_it(problem, cache):
    """Injected drafts that are wrong exactly at the block starts: the block-opening forward has
    nothing to commit there (the draft holds it), the revoke rule puts [MASK] back, and a cached
    forward decides the block start, whose logit comes from the previous position."""
    target, prompt = problem
    draft = target.clone()
    draft[:, ::BLOCK] = 39 - (target[:, ::BLOCK] - 10)  # another token, which the model gives ~0
    config = configs_from_flat(gen_length=G, block_length=BLOCK, warm_init="token", rho=1.0, remask=True,
                               remask_rule="revoke")
    out = decode(ScriptedLM(target, P, shift=True), prompt, cache, build_callbacks(config, draft))
    assert torch.equal(out.generated, target)
    assert (out.stats["revoked"] >= G // BLOCK).all()
