"""Warm-start callbacks: injection statistics, interpolation inputs, remask safety, RCD."""

import math

import pytest
import torch

from conftest import EOS, MASK, PAD, VOCAB, make_tiny_model
from fastdllm_warmstart import DecodeCallback, RemaskConfig, configs_from_flat, generate
from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
from fastdllm_warmstart.warmstart import (ConfidenceRemask, EmbeddingInterpolation,
                                          TokenInjection, build_callbacks, hashed_uniform)

G = 32


def proposals_for(batch, seed=0, gen_length=G):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, gen_length), generator=g)


def prompts_for(batch, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return [torch.randint(4, VOCAB, (int(n),), generator=g).tolist()
            for n in torch.randint(2, 9, (batch,), generator=g)]


class Snapshot(DecodeCallback):
    """Copies the canvas right after on_init (runs after the warm-start callback)."""

    def on_init(self, state):
        self.canvas = state.x.clone()
        self.width = state.prompt_width


def test_token_injection_rate_and_content(tiny_model):
    B = 64
    props = proposals_for(B)
    snap = Snapshot()
    generate(tiny_model, prompts_for(B), steps=G, gen_length=G, block_length=8, threshold=0.9,
             cache="dual", callbacks=[TokenInjection(props, rho=0.25, seed=0), snap])
    gen = snap.canvas[:, snap.width:]
    injected = gen != MASK
    n = injected.numel()
    rate = injected.float().mean().item()
    assert abs(rate - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)  # within 4 sigma
    assert torch.equal(gen[injected], props[injected])  # injected tokens are the proposal's
    # independence: per-row counts spread like a binomial, not all equal
    assert injected.sum(1).float().std() > 1.0


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_token_injection_extremes(tiny_model, rho):
    props = proposals_for(3)
    props[1] = -1  # a cold row (its aux failed)
    snap = Snapshot()
    generate(tiny_model, prompts_for(3), steps=G, gen_length=G, block_length=8, threshold=0.9,
             cache="none", callbacks=[TokenInjection(props, rho=rho, seed=0), snap])
    gen = snap.canvas[:, snap.width:]
    assert (gen[1] == MASK).all()
    if rho == 0.0:
        assert (gen == MASK).all()
    else:
        assert torch.equal(gen[0], props[0]) and torch.equal(gen[2], props[2])


def test_injection_is_seeded_and_batch_invariant(tiny_model):
    props = proposals_for(4)
    prompts = prompts_for(4)

    def pattern(seed, rows):
        snap = Snapshot()
        generate(tiny_model, [prompts[r] for r in rows], steps=G, gen_length=G, block_length=8,
                 threshold=0.9, callbacks=[TokenInjection(props[rows], rho=0.5, seed=seed), snap])
        return snap.canvas[:, snap.width:] != MASK

    full = pattern(0, [0, 1, 2, 3])
    assert torch.equal(full, pattern(0, [0, 1, 2, 3]))
    assert not torch.equal(full, pattern(1, [0, 1, 2, 3]))
    assert torch.equal(full[2:3], pattern(0, [2]))


def test_hashed_uniform_is_uniform():
    u = hashed_uniform(torch.arange(8), torch.arange(4096), stream=3)
    assert abs(u.mean().item() - 0.5) < 0.01
    assert abs(u.std().item() - math.sqrt(1 / 12)) < 0.01


class EmbedSpy(torch.nn.Module):
    """Wraps a model; records what each forward receives."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.calls = []

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, **kw):
        self.calls.append({"input_ids": None if input_ids is None else input_ids.clone(),
                           "inputs_embeds": None if inputs_embeds is None else inputs_embeds.clone()})
        return self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)


class WindowRecorder(DecodeCallback):
    """Records the canvas window and priors before each forward (after the interpolation hook)."""

    def __init__(self):
        self.windows = []

    def before_forward(self, state):
        # with skip_done_rows the model sees only the rows still counted (state.active)
        rows = state.active.nonzero().squeeze(1) if not bool(state.active.all()) else slice(None)
        self.windows.append((state.window_view(state.x)[rows].clone(),
                             state.window_view(state.prior_ids)[rows].clone(), state.block_step))


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("schedule", ["every_forward", "block_first"])
def test_interpolation_reaches_model_at_exact_positions(tiny_model, cache, schedule):
    alpha = 0.6
    spy = EmbedSpy(tiny_model)
    props = proposals_for(2)
    props[1, :10] = -1  # part of a row without a prior
    rec = WindowRecorder()
    generate(spy, prompts_for(2), steps=G, gen_length=G, block_length=8, threshold=0.9, cache=cache,
             callbacks=[EmbeddingInterpolation(props, alpha=alpha, schedule=schedule), rec])
    table = tiny_model.get_input_embeddings().weight
    assert len(spy.calls) == len(rec.windows) > 0
    fed = 0
    for call, (x_win, prior_win, block_step) in zip(spy.calls, rec.windows):
        use = (x_win == MASK) & (prior_win >= 0)
        if schedule == "block_first" and block_step > 0:
            use = torch.zeros_like(use)
        if not use.any():
            assert call["inputs_embeds"] is None and torch.equal(call["input_ids"], x_win)
            continue
        fed += 1
        expected = table[x_win].clone()
        expected[use] = (1 - alpha) * table[MASK] + alpha * table[prior_win[use]]
        assert torch.allclose(call["inputs_embeds"], expected, atol=1e-6)
    assert fed > 0


def echo_model():
    """A tiny model whose prediction at a position is the token its input embedding is closest
    to (tied, large embeddings; near-zero blocks), so the direction of a prediction is known."""
    torch.manual_seed(0)
    cfg = TinyLLaDAConfig(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, init_std=0.02,
                          mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
    model = TinyLLaDAModelLM(cfg).eval()
    with torch.no_grad():
        model.wte.weight.normal_(0, 1.0)
        model.lm_head.weight.copy_(model.wte.weight)
    return model


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_interpolation_changes_predictions_toward_prior(cache):
    """Fed 0.4 E[mask] + 0.6 E[prior], the model predicts the prior (and commits it at once);
    cold, from E[mask] alone, it almost never does."""
    model = echo_model()
    props, prompts = proposals_for(2), prompts_for(2)
    kw = dict(steps=G, gen_length=G, block_length=8, threshold=0.9, cache=cache)
    cold = generate(model, prompts, **kw)
    warm = generate(model, prompts, callbacks=[EmbeddingInterpolation(props, alpha=0.6)], **kw)
    assert (warm.generated == props).float().mean() > 0.95
    assert (cold.generated == props).float().mean() < 0.2
    assert int(warm.nfe.max()) < int(cold.nfe.min())


class CommitAudit(DecodeCallback):
    """After every commit+remask, model-committed tokens must still be on the canvas."""

    def __init__(self):
        self.model_tokens = None
        self.violations = 0

    def after_commit(self, state):
        w0, w1 = state.window
        if self.model_tokens is None:
            self.model_tokens = torch.zeros_like(state.x, dtype=torch.bool)
        # tokens revoked by remask must never include model-committed ones
        if state.revoked is not None:
            committed_now = state.transfer
            self.violations += int((state.revoked & committed_now).sum())
            self.violations += int((state.revoked & self.model_tokens[:, w0:w1]).sum())
        self.model_tokens[:, w0:w1] |= state.transfer
        self.violations += int((state.x[self.model_tokens] == MASK).sum())


class RevisionAudit(DecodeCallback):
    def on_finish(self, state):
        self.max_revisions = int(state.revisions.max())


@pytest.mark.parametrize("warm_init", ["token", "embed"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_remask_never_touches_model_tokens_and_terminates(tiny_model, warm_init, cache):
    """Priors of every fate in one run: revoked, confirmed, and kept unconfirmed (the model
    neither rejects them below tau nor confirms them, or the p(t) draw spared them)."""
    config = configs_from_flat(warm_init=warm_init, rho=0.7, remask=True, remask_rule="revoke",
                               remask_tau=0.2, remask_p_init=0.5, remask_confirm=0.5, cache=cache,
                               gen_length=G, block_length=8)
    prompts = prompts_for(4)
    # Half of each proposal is the model's own cold answer (priors it can confirm), half random.
    props = generate(tiny_model, prompts, steps=G, gen_length=G, block_length=8, threshold=0.9,
                     cache=cache).generated.clone()
    props[:, ::2] = proposals_for(4)[:, ::2]
    audit, revisions = CommitAudit(), RevisionAudit()
    out = generate(tiny_model, prompts, steps=G, gen_length=G, block_length=8, threshold=0.9,
                   cache=cache, callbacks=build_callbacks(config, props) + [audit, revisions])
    assert audit.violations == 0
    assert (out.generated != MASK).all()
    revoked, confirmed = out.stats["revoked"], out.stats["confirmed"]
    assert revoked.sum() > 0 and confirmed.sum() > 0
    assert revisions.max_revisions == 1  # a revoked position is never a candidate again
    if warm_init == "token":
        kept = out.stats["injected_left"]
        assert torch.equal(revoked + kept, out.stats["injected"])
        assert (kept - confirmed).sum() > 0  # unconfirmed priors that survived
    # every step commits a token and each position is revoked at most once
    assert int(out.nfe.max()) <= G + int(revoked.max())


def test_remask_spares_confirmed_and_likely_priors():
    """Hand-made state: one prior the model confirms, one likely, one unlikely."""

    class S:  # minimal stand-in for DecodeState
        pass

    s = S()
    s.mask_id, s.prompt_width, s.step = MASK, 0, 0
    s.x = torch.tensor([[7, 8, 9, 5]])
    s.prior_ids = torch.tensor([[7, 8, 9, -1]])
    s.injected = torch.tensor([[True, True, True, False]])
    s.confirmed = torch.zeros((1, 4), dtype=torch.bool)
    s.revisions = torch.zeros((1, 4), dtype=torch.long)
    s.window, s.block_start, s.block_end = (0, 4), 0, 4
    s.extras = {"prior_row_keys": torch.tensor([1])}
    s.active, s.nfe = torch.tensor([True]), torch.tensor([1])
    logits = torch.full((1, 4, 12), -20.0)
    logits[0, 0, 7] = 10.0          # prob ~1 -> confirmed
    logits[0, 1, 8] = 0.0           # two-way tie -> 0.5 prob: kept at tau=0.4
    logits[0, 1, 3] = 0.0
    logits[0, 2, 4] = 10.0          # prior 9 unlikely -> revoked
    logits[0, 3, 5] = 10.0
    s.logits = logits
    ConfidenceRemask(RemaskConfig(enabled=True, tau=0.4, p_init=1.0)).after_commit(s)
    assert s.x.tolist() == [[7, 8, MASK, 5]]
    assert s.confirmed.tolist() == [[True, False, False, False]]
    assert s.injected.tolist() == [[True, True, False, False]]
    assert s.revisions.tolist() == [[0, 0, 1, 0]]


def test_remask_schedules_decay():
    lin = RemaskConfig(enabled=True, p_init=0.8, schedule="linear", horizon=10)
    exp = RemaskConfig(enabled=True, p_init=0.8, schedule="exp", decay=0.5)
    assert lin.probability(0) == pytest.approx(0.8) and lin.probability(5) == pytest.approx(0.4)
    assert lin.probability(20) == 0.0
    assert exp.probability(2) == pytest.approx(0.2)


def test_a_callback_that_never_stops_revoking_is_caught(tiny_model):
    class Saboteur(DecodeCallback):
        def after_commit(self, state):
            state.x[:, state.block_start] = state.mask_id

    with pytest.raises(RuntimeError, match="revoking"):
        generate(tiny_model, [[5, 6]], steps=16, gen_length=16, block_length=8, threshold=0.9,
                 callbacks=[Saboteur()])


class ForwardLog(DecodeCallback):
    """Per forward: the window, the canvas there before the forward, and the logits after it."""

    def __init__(self):
        self.steps = []

    def before_forward(self, state):
        self.steps.append({"window": state.window, "x": state.window_view(state.x).clone()})

    def after_forward(self, state):
        self.steps[-1]["logits"] = state.logits.clone()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("start", ["zeros", "reference", "embed-draft"])
def test_residual_context_feeds_rcd_inputs(tiny_model, cache, start):
    """RCD as published: every forward receives, at each masked position the model has predicted,
    (1 - a) E[mask] + a sum_j p_j E_j with p = softmax(logits / T_res) of its latest prediction
    there and a = H(p) / log V (uncertain positions get the most); unmasked positions get their own
    embedding. Before a position is predicted the stream holds its start: plain [MASK] (zeros), the
    reference model's prediction (reference), or the aux draft's interpolation (embed warm start)."""
    from fastdllm_warmstart.residual import ResidualContext

    t_res = 0.8
    spy = EmbedSpy(tiny_model)
    log = ForwardLog()
    reference = make_tiny_model(seed=5)
    callbacks = []
    draft = proposals_for(1)
    if start == "embed-draft":
        callbacks.append(EmbeddingInterpolation(draft, alpha=0.6))
    callbacks += [ResidualContext(t_res=t_res, start="reference" if start == "reference" else "zeros",
                                  reference=reference), log]
    out = generate(spy, prompts_for(1), steps=G, gen_length=G, block_length=8, threshold=0.95,
                   cache=cache, callbacks=callbacks)
    table = tiny_model.get_input_embeddings().weight.detach()  # (V, C)
    L = out.sequences.shape[1]
    P = L - G
    residual, weight, has = torch.zeros((L, table.shape[1])), torch.zeros(L), torch.zeros(L, dtype=torch.bool)

    def remember(logits, cols, masked):
        probs = torch.softmax(logits.float() / t_res, dim=-1)  # (W, V)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        c = cols[masked]
        residual[c] = (probs @ table)[masked]
        weight[c] = (entropy / math.log(VOCAB))[masked]
        has[c] = True

    if start == "reference":
        x0 = torch.cat([torch.tensor(prompts_for(1)), torch.full((1, G), MASK)], dim=1)
        with torch.no_grad():
            remember(reference(x0).logits[0], torch.arange(L), x0[0] == MASK)
    assert len(spy.calls) == len(log.steps)
    mixed_positions = 0
    for call, step in zip(spy.calls, log.steps):
        (w0, w1), x = step["window"], step["x"][0]
        cols = torch.arange(w0, w1)
        masked = x == MASK
        expected = table[x].clone()
        if start == "embed-draft":
            prior = torch.full((L,), -1)
            prior[P:] = draft[0]
            fed = masked & (prior[w0:w1] >= 0)
            expected[fed] = 0.4 * table[MASK] + 0.6 * table[prior[w0:w1].clamp(min=0)][fed]
        use = masked & has[w0:w1]
        a = weight[w0:w1].unsqueeze(-1)
        expected[use] = ((1 - a) * table[x] + a * residual[w0:w1])[use]
        mixed_positions += int(use.sum())
        got = call["inputs_embeds"][0] if call["inputs_embeds"] is not None else table[x]
        assert torch.allclose(got, expected, atol=1e-5)
        remember(step["logits"][0], cols, masked)
    assert mixed_positions > 0
    if start == "reference":
        assert spy.calls[0]["inputs_embeds"] is not None  # the stream starts before the first forward
    assert (out.generated != MASK).all()


def test_residual_weights_uncertain_positions_most():
    from fastdllm_warmstart.residual import residual_inputs

    table = torch.eye(4)
    logits = torch.tensor([[[10.0, 0, 0, 0], [0.0, 0, 0, 0]]])  # confident, uniform
    a, d = residual_inputs(logits, table)
    assert a[0, 0] < 0.01 and a[0, 1] == pytest.approx(1.0)
    assert torch.allclose(d[0, 1], torch.full((4,), 0.25))
    a_sharp, _ = residual_inputs(torch.tensor([[[1.0, 0, 0, 0]]]), table, t_res=0.5)
    a_flat, _ = residual_inputs(torch.tensor([[[1.0, 0, 0, 0]]]), table, t_res=1.0)
    assert a_sharp < a_flat  # T_res < 1 sharpens: less residual


# Remask with p(t) = 1 throughout (exp schedule, decay 1): a prior the model doubts at any step
# is revoked, so judging a row that is done (and only rides along) would change it.
CALLBACK_SETTINGS = {
    "token": dict(warm_init="token", rho=0.5),
    "token+remask": dict(warm_init="token", rho=0.5, remask=True, remask_rule="revoke", remask_tau=0.5,
                         remask_confirm=0.95, remask_schedule="exp", remask_decay=1.0),
    "embed": dict(warm_init="embed", alpha=0.6),
    "embed-block_first+remask": dict(warm_init="embed", alpha=0.6, embed_schedule="block_first",
                                     remask=True, remask_rule="revoke", remask_tau=0.5,
                                     remask_confirm=0.95, remask_schedule="exp", remask_decay=1.0),
    "residual": dict(residual=True),
    "token+remask-default-rule": dict(warm_init="token", rho=0.5, remask=True),  # draft verifier
}


@pytest.mark.parametrize("variant", ["current", "snapshot-2025-06"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("mode", CALLBACK_SETTINGS)
def test_every_callback_is_batch_invariant(tiny_model64, mode, cache, variant):
    """A row decodes the same alone and in a batch, whichever callback runs: rows whose block is
    done ride along inactive and no callback may change them (or learn from their forwards)."""
    prompts = prompts_for(4)
    kw = dict(steps=G, gen_length=G, block_length=8, threshold=0.9, cache=cache, loop_variant=variant)
    # Half of each draft is the model's own cold answer, so priors of every fate occur (kept,
    # confirmed, revoked) and rows that are done still hold unconfirmed priors a hook could touch.
    props = generate(tiny_model64, prompts, **kw).generated.clone()
    props[:, ::2] = proposals_for(4)[:, ::2]
    props[1] = -1  # a cold row among warm ones
    config = configs_from_flat(gen_length=G, block_length=8, **CALLBACK_SETTINGS[mode])
    batch = generate(tiny_model64, prompts, callbacks=build_callbacks(config, props), **kw)
    assert len(set(batch.nfe.tolist())) > 1  # rows do finish at different steps
    for r in range(4):
        one = generate(tiny_model64, [prompts[r]], callbacks=build_callbacks(config, props[r:r + 1]), **kw)
        assert torch.equal(batch.generated[r], one.generated[0]), r
        assert int(batch.nfe[r]) == int(one.nfe[0]), r


def test_bad_proposal_shape_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="shape"):
        generate(tiny_model, [[5, 6]], steps=16, gen_length=16, block_length=8, threshold=0.9,
                 callbacks=[TokenInjection(proposals_for(1, gen_length=8), rho=0.5)])


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_remask_judges_priors_through_a_masked_input(tiny_model, cache):
    """With remask, unconfirmed injected tokens of the current block reach the model as [MASK]
    (their verdict is a real prediction); injected tokens of later blocks stay visible."""
    spy = EmbedSpy(tiny_model)
    props = proposals_for(1)
    config = configs_from_flat(warm_init="token", rho=1.0, remask=True, remask_rule="revoke",
                               remask_p_init=0.0, remask_confirm=1.0, gen_length=G, block_length=8,
                               cache=cache)
    rec = WindowRecorder()
    generate(spy, prompts_for(1), steps=G, gen_length=G, block_length=8, threshold=0.9, cache=cache,
             callbacks=build_callbacks(config, props) + [rec])
    table = tiny_model.get_input_embeddings().weight
    first = spy.calls[0]["inputs_embeds"]  # (1, W, C): full canvas, block 0
    P = first.shape[1] - G
    assert torch.allclose(first[0, P:P + 8], table[MASK].expand(8, -1))          # block 0 hidden
    assert torch.allclose(first[0, P + 8:], table[props[0, 8:]])                  # later blocks visible
