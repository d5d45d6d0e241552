"""Draft-verification rules (fastdllm_warmstart.priors) on a scripted model with known beliefs."""

import pytest
import torch

from fastdllm_warmstart.engine.callbacks import DecodeCallback
from fastdllm_warmstart.engine.loop import generate
from fastdllm_warmstart.engine.state import DecodeState
from fastdllm_warmstart.priors import build_verifier
from fastdllm_warmstart.priors.accept import ThresholdAccept
from fastdllm_warmstart.priors.chain import ChainAccept
from scripted_model import BLOCK, B, G, P, ScriptedLM, scripted_problem, verifier_rules

MASK, EOS, PAD = 2, 3, 0
CACHES = ("none", "prefix", "dual")
RULES = verifier_rules()


@pytest.fixture(scope="module")
def problem():
    return scripted_problem()


def decode(model, prompt, cache, callbacks=()):
    # ScriptedLM knows a row's target by the row's place in the batch, so every row is computed
    # (skip_done_rows would hand it a subset); test_rules_with_done_rows_skipped covers skipping.
    return generate(model, prompt, steps=G, gen_length=G, block_length=BLOCK, threshold=0.9, cache=cache,
                    callbacks=list(callbacks), mask_id=MASK, eos_id=EOS, pad_id=PAD, skip_done_rows=False)


class RunAudit(DecodeCallback):
    """After every step: accepted positions form a run from the block's first undecided position,
    and every token committed outside the run is one the model gave >= threshold (or the row
    accepted nothing this step)."""

    def __init__(self):
        self.violations, self.prev = [], None

    def on_init(self, state):
        self.prev = state.x.clone()

    def after_commit(self, state):
        acc = state.extras["accepted_mask"]
        new_acc = acc & (self.prev == state.mask_id)
        s, e = state.block_start, state.block_end
        for r in range(state.batch_size):
            cols = new_acc[r, s:e].nonzero(as_tuple=True)[0].tolist()
            if not cols:
                continue
            was_open = (self.prev[r, s:e] == state.mask_id).tolist()
            first_open = was_open.index(True)
            # the run starts at the first position open before this step and has no holes
            if cols[0] != first_open or any((c not in cols) and was_open[c] and state.x[r, s + c] == state.mask_id
                                            for c in range(cols[0], cols[-1] + 1)):
                self.violations.append(("not a run", r, cols))
        self.prev = state.x.clone()


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_right_draft_is_accepted_early_and_changes_nothing(problem, cache, rule):
    target, prompt = problem
    model = ScriptedLM(target, P)
    cold = decode(model, prompt, cache)
    assert torch.equal(cold.generated, target)  # the model alone gets it right, one token a forward
    audit = RunAudit()
    warm = decode(model, prompt, cache, [RULES[rule](target.clone()), audit])
    assert torch.equal(warm.generated, target)
    assert (warm.nfe < cold.nfe).all(), (warm.nfe, cold.nfe)
    assert (warm.stats["accepted"] > 0).all()
    assert not audit.violations


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_wrong_draft_token_is_caught_and_what_follows_is_judged_again(problem, cache, rule):
    target, prompt = problem
    model = ScriptedLM(target, P)
    draft = target.clone()
    draft[:, 3] = 39 - (target[:, 3] - 10)  # another token, which the model gives ~0
    assert (draft[:, 3] != target[:, 3]).all()
    audit = RunAudit()
    out = decode(model, prompt, cache, [RULES[rule](draft), audit])
    assert torch.equal(out.generated, target)  # the model's own token there, not the draft's
    assert not out.stats["accepted_mask"][:, P + 3].any()
    assert not audit.violations


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_drafts_for_other_problems_leave_the_answer_alone(problem, cache, rule):
    target, prompt = problem
    model = ScriptedLM(target, P)
    cold = decode(model, prompt, cache)
    shuffled = target.roll(1, dims=0)  # each row gets another row's draft
    out = decode(model, prompt, cache, [RULES[rule](shuffled)])
    assert torch.equal(out.generated, cold.generated)
    agree = (shuffled == target)  # only coincidences can be accepted
    assert not (out.stats["accepted_mask"][:, P:] & ~agree).any()


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_batch_equals_one_by_one(problem, cache, rule):
    target, prompt = problem
    draft = target.clone()
    draft[1, 5] = 11 if target[1, 5] != 11 else 12  # rows differ in how far their drafts get
    batch = decode(ScriptedLM(target, P), prompt, cache, [RULES[rule](draft)])
    for i in range(B):
        one = decode(ScriptedLM(target[i:i + 1], P), prompt[i:i + 1], cache, [RULES[rule](draft[i:i + 1])])
        assert torch.equal(one.sequences, batch.sequences[i:i + 1])
        assert one.nfe.item() == batch.nfe[i].item()
        assert one.stats["accepted"].item() == batch.stats["accepted"][i].item()


def test_chain_estimates_conditionals_and_accepts_longer_runs(problem):
    """Marginals halve along the block behind open choices while each conditional stays 0.6: an
    absolute level accepts a few tokens per forward, the chain rule nearly the whole block."""
    target, prompt = problem
    model = ScriptedLM(target, P, p0=0.6, decay=0.5)
    absolute = decode(model, prompt, "dual", [ThresholdAccept(target.clone(), tau_accept=0.3, argmax=False)])
    chain = decode(model, prompt, "dual", [ChainAccept(target.clone(), tau_accept=0.3, rel=0.3, floor=0.001)])
    assert torch.equal(chain.generated, target) and torch.equal(absolute.generated, target)
    assert (chain.nfe < absolute.nfe).all()
    # with the floor at 0.001 every block is one run: one forward per block (+ upstream's extra)
    assert (chain.nfe <= absolute.nfe // 2).all()


def _state(logits, x_block, transfer, active=None):
    """A one-block DecodeState over hand-made logits (window = block = generation)."""
    b, w, _ = logits.shape
    x = torch.cat([torch.full((b, 2), 20), x_block], dim=1)
    st = DecodeState(model=None, x=x, attention_mask=None, prompt_width=2, prompt_lengths=torch.full((b,), 2),
                     gen_length=w, block_length=w, mask_id=MASK, eos_id=EOS, pad_id=PAD,
                     generator=torch.Generator())
    st.block_start, st.block_end, st.window = 2, 2 + w, (2, 2 + w)
    st.logits = logits
    st.transfer = transfer
    st.active = torch.ones(b, dtype=torch.bool) if active is None else active
    return st


def _logits(rows):
    """rows: per row, per position, {token: prob}; the rest spread thin."""
    out = torch.full((len(rows), len(rows[0]), 40), -20.0)
    for r, row in enumerate(rows):
        for c, dist in enumerate(row):
            for t, p in dist.items():
                out[r, c, t] = torch.tensor(p).log()
    return out


def test_forced_guess_beside_a_run_is_taken_back_but_confident_commits_stay():
    draft = torch.tensor([[11, 12, 13, 14, 15]])
    # pos 0: draft 11 at 0.5 (supported); pos 1: draft 12 at 0.01 (not); pos 2: model's 30 at 0.7
    # was force-committed (< 0.9); pos 4: model's 31 at 0.95 was committed by the threshold.
    logits = _logits([[{11: 0.5, 30: 0.3}, {12: 0.01, 30: 0.6}, {30: 0.7, 13: 0.2}, {14: 0.1, 30: 0.5},
                       {31: 0.95}]])
    x_block = torch.tensor([[MASK, MASK, 30, MASK, 31]])
    transfer = torch.tensor([[False, False, True, False, True]])
    st = _state(logits, x_block, transfer)
    v = ThresholdAccept(draft, tau_accept=0.3, argmax=False)
    v.on_init(st)
    v.after_commit(st)
    assert st.x[0, 2:].tolist() == [11, MASK, MASK, MASK, 31]
    assert st.extras["accepted"].tolist() == [1]


def test_a_supported_draft_replaces_a_forced_guess_and_the_run_goes_through_decided_tokens():
    draft = torch.tensor([[11, 12, 13, 14]])
    # pos 0 forced to 30 (0.45 < 0.9) but the draft's 11 has 0.4 >= 0.3; pos 1 decided earlier (12);
    # pos 2 draft 13 at 0.35; pos 3 draft at 0.05 stops the run.
    logits = _logits([[{30: 0.45, 11: 0.4}, {12: 0.9}, {13: 0.35, 30: 0.5}, {14: 0.05, 30: 0.9}]])
    x_block = torch.tensor([[30, 12, MASK, MASK]])
    st = _state(logits, x_block, torch.tensor([[True, False, False, False]]))
    v = ThresholdAccept(draft, tau_accept=0.3, argmax=False)
    v.on_init(st)
    v.after_commit(st)
    assert st.x[0, 2:].tolist() == [11, 12, 13, MASK]


def test_rows_the_forward_did_not_count_for_are_not_judged():
    draft = torch.tensor([[11, 12], [11, 12]])
    logits = _logits([[{11: 0.5}, {12: 0.5}], [{11: 0.5}, {12: 0.5}]])
    x_block = torch.full((2, 2), MASK)
    st = _state(logits, x_block, torch.zeros(2, 2, dtype=torch.bool), active=torch.tensor([True, False]))
    v = ThresholdAccept(draft, tau_accept=0.3)
    v.on_init(st)
    v.after_commit(st)
    assert st.x[0, 2:].tolist() == [11, 12]
    assert st.x[1, 2:].tolist() == [MASK, MASK]


class InputSpy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner, self.seen = model, []
        self.config = model.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def parameters(self, recurse=True):
        return self.inner.parameters(recurse)

    def forward(self, input_ids=None, inputs_embeds=None, **kw):
        ids = input_ids if input_ids is not None else inputs_embeds.argmax(-1)
        self.seen.append(ids.clone())
        return self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)


@pytest.mark.parametrize("context", ["hidden", "visible"])
def test_unverified_drafts_reach_the_model_only_as_later_block_context(problem, context):
    """Token injection lays drafts on the canvas; the verifier takes them out. With context hidden
    no forward ever sees a draft token that was not accepted; with context visible only later
    blocks show them."""
    from fastdllm_warmstart.warmstart import TokenInjection

    target, prompt = problem
    draft = torch.full_like(target, 1)  # a token the model never predicts, so never accepted
    spy = InputSpy(ScriptedLM(target, P))
    decode(spy, prompt, "none", [TokenInjection(draft, rho=1.0), ThresholdAccept(draft, context=context)])
    shown = torch.stack([s == 1 for s in spy.seen])  # (steps, B, L) no-cache forwards: whole canvas
    if context == "hidden":
        assert not shown.any()
    else:
        assert shown.any()
        assert not shown[:, :, :P + BLOCK].any()  # never inside the first block being judged


def test_build_verifier_knows_its_rules(problem):
    target, _ = problem
    for name in ("accept", "prefix", "chain"):
        assert build_verifier(name, target, tau_accept=0.3, threshold=0.9).name == name
    with pytest.raises(ValueError, match="choose one of"):
        build_verifier("nope", target, tau_accept=0.3, threshold=0.9)


# -- spec: drafts and their shadows as transient queries -----------------------------------------
from conftest import make_tiny_model  # noqa: E402
from fastdllm_warmstart.priors.spec import SpeculativeAccept  # noqa: E402


class LogitsSpy(DecodeCallback):
    def __init__(self):
        self.steps = []

    def after_forward(self, state):
        self.steps.append((state.logits.clone(), state.transient_logits, state.x.clone(), state.window))


@pytest.mark.parametrize("layers", [1, 2])
def test_spec_shadows_judge_each_draft_token_given_the_drafts_before_it(layers):
    """The canvas queries see no draft (their logits are the cold ones, any depth); with one layer
    the shadow of open position j predicts exactly what the model predicts on the canvas holding
    the draft before j (deeper, the keys it sees are the cold ones: an approximation)."""
    torch.manual_seed(0)
    model = make_tiny_model(n_layers=layers, dtype=torch.float64)
    prompt = torch.randint(10, 40, (2, P))
    draft = torch.randint(10, 40, (2, G))
    spy = LogitsSpy()
    generate(model, prompt, steps=G, gen_length=G, block_length=BLOCK, threshold=0.9, cache="none",
             callbacks=[spy, SpeculativeAccept(draft, lookahead=BLOCK)], mask_id=MASK)
    logits, shadows, x, _ = spy.steps[0]
    with torch.no_grad():
        assert torch.allclose(model(x).logits, logits, atol=1e-10)
        for j in range(BLOCK):
            xj = x.clone()
            xj[:, P:P + j] = draft[:, :j]
            exact = torch.allclose(model(xj).logits[:, P + j], shadows[:, BLOCK + j], atol=1e-9)
            assert exact if (layers == 1 or j == 0) else True


@pytest.mark.parametrize("cache", CACHES)
def test_spec_never_changes_what_the_model_decides_itself(cache):
    """A draft the model never supports adds nothing: tokens and NFE equal the cold run's, in every
    cache mode; batch and one-by-one agree."""
    torch.manual_seed(1)
    model = make_tiny_model(dtype=torch.float64)
    prompt = torch.randint(10, 40, (3, P))
    never = torch.full((3, G), 1)  # logit 0 among widely spread ones: never first, never likely
    with torch.no_grad():
        model.lm_head.weight[1] = 0.0
    cold = decode(model, prompt, cache)
    out = decode(model, prompt, cache, [SpeculativeAccept(never, tau_accept=0.999)])
    assert int(out.stats["accepted"].sum()) == 0
    assert torch.equal(out.sequences, cold.sequences) and torch.equal(out.nfe, cold.nfe)
    own = cold.generated.clone()  # the model's own answer as the draft: judged, often accepted
    batch = decode(model, prompt, cache, [SpeculativeAccept(own)])
    assert int(batch.stats["accepted"].sum()) > 0
    for i in range(3):
        one = decode(model, prompt[i:i + 1], cache, [SpeculativeAccept(own[i:i + 1])])
        assert torch.equal(one.sequences, batch.sequences[i:i + 1]) and one.nfe.item() == batch.nfe[i].item()


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("rule", ["accept", "chain", "prefix", "spec"])
def test_rules_with_done_rows_skipped(cache, rule):
    """Leaving done rows out of the forward (the default) changes no row: drafts (the model's own
    answers, one row's spoiled) are accepted exactly as when every row is computed."""
    from conftest import make_tiny_model

    model = make_tiny_model(seed=3, vocab=40)
    prompt = torch.randint(10, 40, (4, P), generator=torch.Generator().manual_seed(1))
    kw = dict(steps=G, gen_length=G, block_length=BLOCK, threshold=0.9, cache=cache, mask_id=MASK,
              eos_id=EOS, pad_id=PAD)
    draft = generate(model, prompt, **kw).generated.clone()
    draft[2, 3:] = 11  # rows differ in how far their drafts get
    runs = {skip: generate(model, prompt, skip_done_rows=skip, **kw,
                           callbacks=[build_verifier(rule, draft, tau_accept=0.3, threshold=0.9)])
            for skip in (False, True)}
    assert torch.equal(runs[True].sequences, runs[False].sequences)
    assert torch.equal(runs[True].nfe, runs[False].nfe)
    assert torch.equal(runs[True].stats["accepted"], runs[False].stats["accepted"])
    assert int(runs[True].stats["accepted"].sum()) > 0 and len(set(runs[True].nfe.tolist())) > 1


def test_spec_needs_a_model_that_takes_transient_queries(problem):
    target, prompt = problem
    with pytest.raises(ValueError, match="transient queries"):
        decode(ScriptedLM(target, P), prompt, "none", [SpeculativeAccept(target.clone())])


@pytest.mark.parametrize("rule", ["accept", "chain", "prefix", "spec", "revoke"])
def test_run_config_builds_the_rule_with_its_settings(rule):
    from fastdllm_warmstart.config import configs_from_flat
    from fastdllm_warmstart.priors import RULES
    from fastdllm_warmstart.warmstart import ConfidenceRemask, TokenInjection, build_callbacks

    cfg = configs_from_flat(warm_init="token", remask="true", remask_rule=rule, remask_tau_accept="0.2",
                            remask_rel="0.15", remask_floor="0.002", remask_context="visible", threshold="0.8")
    cbs = build_callbacks(cfg, torch.full((2, 8), 5))
    assert isinstance(cbs[0], TokenInjection)
    if rule == "revoke":
        assert isinstance(cbs[1], ConfidenceRemask)
        return
    v = cbs[1]
    assert type(v) is RULES[rule] and v.context == "visible" and v.threshold == 0.8
    if rule in ("accept", "chain", "spec"):
        assert v.tau_accept == 0.2
    if rule == "chain":
        assert (v.rel, v.floor) == (0.15, 0.002)


def test_bad_rule_settings_are_one_clear_error(capsys):
    from fastdllm_warmstart.cli import main

    for flags, hint in ((["--remask-rule", "magic"], "--remask-rule"),
                        (["--remask-tau-accept", "0"], "remask_tau_accept=0.0 is out of range"),
                        (["--remask-context", "loud"], "--remask-context")):
        try:
            code = main(["generate", "--prompt", "x", "--warm-init", "token", "--remask", *flags])
        except SystemExit as exc:  # argparse's own choice check
            code = exc.code
        assert code == 2
        err = capsys.readouterr().err
        assert hint in err and "Traceback" not in err


def test_frontier_guess_moves_the_forced_commit_to_the_first_open_position():
    draft = torch.tensor([[11, 12, 13, 14]])
    # nothing supported at pos 0 (0.05); the model force-committed 30 at pos 2 (0.6 < 0.9)
    logits = _logits([[{31: 0.5, 11: 0.05, 20: 0.45}, {12: 0.5, 20: 0.5}, {30: 0.6, 13: 0.4}, {14: 0.5, 20: 0.5}]])
    x_block = torch.tensor([[MASK, MASK, 30, MASK]])
    for frontier, expected in ((False, [MASK, MASK, 30, MASK]), (True, [31, 12, 13, 14])):
        st = _state(logits.clone(), x_block.clone(), torch.tensor([[False, False, True, False]]))
        v = ThresholdAccept(draft, tau_accept=0.3, argmax=False, frontier_guess=frontier)
        v.on_init(st)
        v.after_commit(st)
        # with the guess at the frontier, the draft after it is judged (and here supported) at once
        assert st.x[0, 2:].tolist() == expected, frontier
