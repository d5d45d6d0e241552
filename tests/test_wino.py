"""WINO (fastdllm_warmstart.wino): the wide-in rule on hand-made logits, the narrow-out step by step
on a scripted model whose canvas and shadow beliefs are set per forward, the shadow's attention
layout on the tiny model, and the mode end to end (cache modes, batch, refill, settings)."""

import pytest
import torch

from conftest import EOS, MASK, PAD, make_tiny_model
from fastdllm_warmstart import DecodeCallback, generate
from fastdllm_warmstart.config import ConfigError, WinoConfig, configs_from_flat
from fastdllm_warmstart.engine.transfer import get_transfer_index_wide_in, wide_in_cap
from fastdllm_warmstart.warmstart import TokenInjection, build_callbacks
from fastdllm_warmstart.wino.decoding import NarrowOut, wide_in_rule

NEG = float("-inf")


# -- 2. wide in ----------------------------------------------------------------------------------
def _logits_with_confidence(conf, V=8):
    """(1, W, V) logits whose softmax gives token 1 probability ``conf[c]`` at column c exactly
    where conf is 0.5 (two equal logits), else approximately."""
    conf = torch.tensor(conf, dtype=torch.float64)
    probs = torch.full((1, len(conf), V), 1e-12, dtype=torch.float64)
    probs[0, :, 1] = conf
    probs[0, :, 2] = 1 - conf
    return probs.log()


def test_wide_in_commits_above_tau_in_strictly_and_at_least_one():
    logits = _logits_with_confidence([0.5, 0.9, 0.5, 0.7, 0.55])
    mask = torch.tensor([[True, True, True, True, False]])
    x = torch.zeros((1, 5), dtype=torch.long)
    _, t = get_transfer_index_wide_in(logits, 0.0, "low_confidence", mask, x, None, 0.5)
    assert t.tolist() == [[False, True, False, True, False]]  # 0.5 is not above 0.5; col 4 not masked
    _, t = get_transfer_index_wide_in(logits, 0.0, "low_confidence", mask, x, None, 0.95)
    assert t.tolist() == [[False, True, False, False, False]]  # none above: the most confident
    _, t = get_transfer_index_wide_in(logits, 0.0, "low_confidence", mask & False, x, None, 0.5)
    assert not t.any()  # nothing masked, nothing committed


def test_wide_in_cap_keeps_the_most_confident():
    assert wide_in_cap(torch.tensor([1, 7, 8, 16, 29, 40])).tolist() == [5, 5, 5, 11, 20, 20]
    conf = [0.61 + 0.02 * i for i in range(16)]  # 16 masked, all above 0.6: the cap is 11
    logits = _logits_with_confidence(conf)
    mask = torch.ones((1, 16), dtype=torch.bool)
    x = torch.zeros((1, 16), dtype=torch.long)
    _, capped = get_transfer_index_wide_in(logits, 0.0, "low_confidence", mask, x, None, 0.6)
    assert capped[0].nonzero().squeeze(1).tolist() == list(range(5, 16))
    _, free = get_transfer_index_wide_in(logits, 0.0, "low_confidence", mask, x, None, 0.6, cap=False)
    assert bool(free.all())


# -- 3. narrow out, step by step on a scripted model ------------------------------------------------
P, G = 3, 8
DISTRACTORS = (4, 5, 6, 7, 8, 9)  # the rest, spread: a distractor never outranks a target >= 0.15


class ShadowScript(torch.nn.Module):
    """Scripted beliefs per forward: at a masked generation column c the canvas gives ``target[c]``
    probability ``canvas[call][c]``; the shadow query of column c gives ``target[c]`` probability
    ``shadow[call][c]``; the rest is spread over six distractors. Takes transient queries (no cache)."""

    supports_transient_queries = True
    supports_padding = True

    def __init__(self, target, canvas, shadow, V=16):
        super().__init__()
        self.target, self.canvas, self.shadow, self.V = target, canvas, shadow, V
        self.emb = torch.nn.Embedding(V, V)
        with torch.no_grad():
            self.emb.weight.copy_(torch.eye(V))
        self.config = type("C", (), dict(mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD))()
        self.calls = 0

    def get_input_embeddings(self):
        return self.emb

    def _logits(self, cols, conf):  # cols (B, T) generation columns, conf (B, G)
        B, T = cols.shape
        c = cols.clamp(0, G - 1)
        p = torch.gather(conf, 1, c).double()  # (B, T)
        probs = torch.full((B, T, self.V), 1e-9, dtype=torch.float64)
        probs.scatter_(-1, torch.gather(self.target, 1, c).unsqueeze(-1), p.unsqueeze(-1))
        for d in DISTRACTORS:
            probs[..., d] += (1 - p) / len(DISTRACTORS)
        return probs.log().float()

    def forward(self, input_ids=None, inputs_embeds=None, n_transient=0, position_ids=None, **_):
        ids = input_ids if input_ids is not None else inputs_embeds.argmax(-1)
        B, T = ids.shape
        n = T - n_transient
        step = min(self.calls, len(self.canvas) - 1)
        self.calls += 1
        canvas_cols = torch.arange(n).expand(B, n) - P
        logits = self._logits(canvas_cols, self.canvas[step])
        if n_transient:
            logits = torch.cat((logits, self._logits(position_ids - P, self.shadow[step])), dim=1)
        return type("Out", (), dict(logits=logits, past_key_values=None))()

    def parameters(self, recurse=True):
        return self.emb.parameters(recurse)


class Steps(DecodeCallback):
    """Per step: the block columns committed and those re-masked (generation columns)."""

    def __init__(self):
        self.committed, self.remasked, self.prev = [], [], None

    def before_forward(self, state):
        self.prev = state.x.clone()

    def after_commit(self, state):  # runs after NarrowOut (registered later)
        com = state.transfer[0, P:P + G].nonzero().squeeze(1).tolist()
        self.committed.append(com)
        now = state.x[0, P:P + G]
        was = self.prev[0, P:P + G]
        self.remasked.append(((was != MASK) & (now == MASK)).nonzero().squeeze(1).tolist())


def _run(model, cap=True, extra=()):
    steps = Steps()
    cfg = WinoConfig(enabled=True, tau_in=0.6, tau_out=0.9, cap=cap)
    out = generate(model, torch.full((1, P), 10), gen_length=G, block_length=G, cache="none",
                   threshold=cfg.tau_in, transfer_fn=wide_in_rule(cfg), mask_id=MASK, eos_id=EOS,
                   pad_id=PAD, use_upstream=False,
                   callbacks=[*extra, NarrowOut(cfg.tau_out, cap=cfg.cap), steps])
    return out, steps


TARGET = torch.tensor([[11, 12, 13, 14, 15, 11, 12, 13]])
HI = 0.95
CANVAS = torch.tensor([
    [[0.95, 0.7, 0.65, 0.3, 0.2, 0.61, 0.1, 0.05]],  # step 0: 0 1 2 5 above 0.6
    [[HI, 0.3, HI, 0.8, 0.7, 0.2, 0.2, 0.1]],        # step 1: 3 4 (masked: 1 3 4 5 6 7 after... see test)
    [[HI, 0.3, HI, HI, HI, 0.2, 0.1, 0.05]],         # step 2: only the forced one (col 1)
    [[HI, HI, HI, HI, HI, 0.9, 0.9, 0.9]],           # step 3: 5 6 7
    [[0.95] * G],                                    # step 4 on: everything
])
SHADOW = torch.tensor([
    [[HI] * G],                                      # step 0: nothing was decoded before it
    [[HI, 0.5, HI, HI, HI, 0.3, HI, HI]],            # step 1: 1 and 5 lose their support
    [[HI, HI, HI, 0.1, HI, HI, HI, HI]],             # step 2: 3 would go, but one commit only
    [[0.2, HI, HI, 0.1, 0.1, HI, HI, HI]],           # step 3: 0 3 4 fall below 0.9
    [[HI] * G],
])


def test_narrow_out_remasks_what_the_shadow_no_longer_supports():
    out, steps = _run(ShadowScript(TARGET, CANVAS, SHADOW))
    assert steps.committed[:4] == [[0, 1, 2, 5], [3, 4], [1], [5, 6, 7]]
    # step 0 judges nothing (nothing was decoded); step 1 re-masks 1 and 5 (shadow < 0.9);
    # step 2 committed one token only: no re-mask though the shadow doubts 3; step 3 doubts
    # 0, 3, 4 but step 2 committed one token: WINO's cap allows 1 - 1 = 0 re-masks
    assert steps.remasked[:4] == [[], [1, 5], [], []]
    assert out.nfe.item() == 4 and torch.equal(out.generated, TARGET)
    assert out.stats["wino_remasked"].item() == 2 and out.stats["revoked"].item() == 2


def test_without_the_cap_every_unsupported_token_is_remasked():
    out, steps = _run(ShadowScript(TARGET, CANVAS, SHADOW), cap=False)
    assert steps.remasked[:4] == [[], [1, 5], [], [0, 3, 4]]
    assert steps.committed[4] == [0, 3, 4] and steps.remasked[4] == []
    assert out.nfe.item() == 5 and torch.equal(out.generated, TARGET)


def test_remask_cap_keeps_the_best_supported():
    out = torch.tensor([[True, True, True, False], [True, True, False, False]])
    p = torch.tensor([[0.5, 0.1, 0.3, 0.0], [0.2, 0.4, 0.0, 0.0]])
    # row 0 would re-mask 3 >= last 3: only the 2 least supported; row 1: 2 < last 5, all
    capped = NarrowOut._cap(out, p, torch.tensor([3, 5]))
    assert capped.tolist() == [[False, True, True, False], [True, True, False, False]]


def test_priors_are_the_first_wide_in_and_wrong_ones_are_remasked():
    """The aux draft laid on the canvas (rho 1): the block's first step judges every prior on the
    shadow; the two wrong ones (the shadow gives them nothing) go back to [MASK] and are decoded."""
    draft = TARGET.clone()
    draft[0, 2], draft[0, 6] = 9, 9
    canvas = torch.full((2, 1, G), HI)
    shadow = torch.full((2, 1, G), HI)
    out, steps = _run(ShadowScript(TARGET, canvas, shadow), extra=[TokenInjection(draft, rho=1.0)])
    assert steps.committed[0] == [] and steps.remasked[0] == [2, 6]
    assert steps.committed[1] == [2, 6]
    assert torch.equal(out.generated, TARGET) and out.nfe.item() == 2
    assert out.stats["injected_left"].item() == 6  # the supported priors stay, counted as such


# -- 1. the shadow's layout on a real model --------------------------------------------------------
class Spy(DecodeCallback):
    def __init__(self):
        self.seen, self.inputs = [], None

    def before_forward(self, state):  # after NarrowOut's: the canvas and the shadow it sends
        self.inputs = (state.x.clone(), state.transient)

    def after_forward(self, state):
        self.seen.append(self.inputs + (state.logits.clone(), state.transient_logits.clone()))


def test_shadow_sees_everything_but_its_own_column_and_leaves_the_canvas_alone():
    torch.manual_seed(0)
    model = make_tiny_model(n_layers=1, dtype=torch.float64)
    B, Pw, Gl, BLK = 2, 4, 8, 4
    prompt = torch.randint(10, 40, (B, Pw))
    spy = Spy()
    generate(model, prompt, gen_length=Gl, block_length=BLK, threshold=0.6, cache="none", mask_id=MASK,
             transfer_fn=wide_in_rule(WinoConfig(enabled=True)), callbacks=[NarrowOut(), spy],
             use_upstream=False, skip_done_rows=False)  # every row computed at every step
    x, tr, logits, shadow = spy.seen[1]  # a step with decoded tokens in the block
    L = x.shape[1]
    expected = torch.ones((L + BLK, L + BLK), dtype=torch.bool)
    expected[:L, L:] = False
    for j in range(BLK):
        expected[L + j, Pw + j] = False
    assert torch.equal(tr.attention[0], expected) and torch.equal(tr.attention[1], expected)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, logits, atol=1e-10)  # the canvas is a plain forward

        def shadows(canvas):
            return model(inputs_embeds=torch.cat((model.get_input_embeddings()(canvas), tr.embeds), 1),
                         position_ids=tr.position_ids, attention_bias=tr.attention.unsqueeze(1),
                         n_transient=BLK).logits[:, L:]

        assert torch.allclose(shadows(x), shadow, atol=1e-10)
        for j in range(BLK):
            other = x.clone()
            other[:, Pw + j] = 33  # its own column: the shadow of j cannot see it
            changed = shadows(other)
            assert torch.allclose(changed[:, j], shadow[:, j], atol=1e-10)
            k = (j + 1) % BLK  # another column of the block: it can
            assert not torch.allclose(changed[:, k], shadow[:, k], atol=1e-6)


# -- the mode end to end --------------------------------------------------------------------------
GE, BE = 24, 8


def _wino(model, prompts, cache="dual", tau_in=0.6, tau_out=0.9, cap=True, extra=(), **kw):
    cfg = WinoConfig(enabled=True, tau_in=tau_in, tau_out=tau_out, cap=cap)
    return generate(model, prompts, steps=GE, gen_length=GE, block_length=BE, threshold=tau_in, cache=cache,
                    transfer_fn=wide_in_rule(cfg), callbacks=[*extra, NarrowOut(tau_out, cap)],
                    mask_id=MASK, eos_id=EOS, pad_id=PAD, use_upstream=False, **kw)


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_a_shadow_that_never_judges_changes_nothing(cache):
    """tau_out ~ 0 (no re-mask) and no cap: WINO is the threshold rule (> vs >=), so tokens and NFE
    are the cold run's although every forward carries the shadow."""
    model = make_tiny_model(seed=3, dtype=torch.float64)
    prompts = torch.randint(5, 48, (3, 5), generator=torch.Generator().manual_seed(0))
    cold = generate(model, prompts, steps=GE, gen_length=GE, block_length=BE, threshold=0.7, cache=cache,
                    mask_id=MASK, eos_id=EOS, pad_id=PAD, use_upstream=False)
    wino = _wino(model, prompts, cache, tau_in=0.7, tau_out=1e-12, cap=False)
    assert torch.equal(wino.sequences, cold.sequences) and torch.equal(wino.nfe, cold.nfe)
    assert int(wino.stats["wino_remasked"].sum()) == 0


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("drafts", [False, True])
def test_batch_one_by_one_and_refill_agree(cache, drafts):
    """Cold, and with drafts laid as priors (some the model's own answer, some random): each row's
    tokens, NFE and re-masks are the same in a batch, alone, and refilled two rows at a time."""
    model = make_tiny_model(seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, 48, (k,), generator=g).tolist() for k in (3, 5, 2, 6, 4)]
    draft = None
    if drafts:
        draft = _wino(model, prompts, cache, tau_in=0.3).generated.clone()
        draft[1::2] = torch.randint(5, 48, draft[1::2].shape, generator=g)

    def run(rows, **kw):
        extra = [] if draft is None else [TokenInjection(draft[rows], rho=1.0)]
        return _wino(model, [prompts[i] for i in rows], cache, tau_in=0.3, extra=extra, **kw)

    every = list(range(len(prompts)))
    batch = run(every, skip_done_rows=True)
    assert int(batch.stats["wino_remasked"].sum()) > 0  # the narrow-out does work here
    assert len(set(batch.nfe.tolist())) > 1  # rows at their own pace
    refill = run(every, batching="refill", batch_size=2)
    assert torch.equal(refill.generated, batch.generated) and torch.equal(refill.nfe, batch.nfe)
    assert torch.equal(refill.stats["wino_remasked"], batch.stats["wino_remasked"])
    for i in every:
        one = run([i])
        assert torch.equal(one.generated[0], batch.generated[i]) and one.nfe[0] == batch.nfe[i]


def test_wino_needs_a_model_with_transient_queries():
    from scripted_model import ScriptedLM

    model = ScriptedLM(torch.randint(10, 40, (1, GE)), 5)
    with pytest.raises(ValueError, match="transient queries"):
        _wino(model, torch.randint(10, 40, (1, 5)), "none")


def test_settings_build_the_mode_and_bad_ones_name_the_fix():
    cfg = configs_from_flat({"wino": "true", "wino_tau_in": "0.5", "wino_tau_out": "0.8"})
    cbs = build_callbacks(cfg, None)
    assert [type(c).__name__ for c in cbs] == ["NarrowOut"] and cbs[0].tau_out == 0.8
    for bad, hint in (({"wino_tau_in": 1.0}, "wino_tau_in"), ({"wino_tau_out": 0}, "wino_tau_out"),
                      ({"wino": True, "factor": 1.0}, "drop factor"),
                      ({"wino": True, "warm_init": "token", "remask": True, "remask_rule": "chain"},
                       "drop remask"),
                      ({"warm_init": "token", "remask": True, "remask_rule": "wino", "factor": 1.0},
                       "drop factor"),
                      ({"wino": True, "warm_init": "embed"}, "warm_init=token")):
        with pytest.raises(ConfigError, match=hint):
            configs_from_flat(bad)


def test_lm_eval_model_args_take_the_wino_settings():
    from fastdllm_warmstart.lm_eval_utils import EvalSettings

    run = EvalSettings.from_model_args({"wino": "true", "wino_tau_in": "0.5", "wino_cap": "false"}).run
    assert (run.wino.enabled, run.wino.tau_in, run.wino.cap) == (True, 0.5, False)


def test_runner_decodes_with_wino_on_the_embedded_model():
    """NFE and accuracy sanity on the embedded tiny model and the shipped test split: WINO's answers
    are real answers (most right) at fewer forwards than one per token."""
    from fastdllm_warmstart.runner import WarmStartRunner
    from fastdllm_warmstart.scoring import score
    from fastdllm_warmstart.tasks.tinygsm import format_prompt
    from fastdllm_warmstart.tasks.tinygsm_files import default_split_path, load_jsonl

    problems = load_jsonl(default_split_path("test"))[:12]
    cfg = configs_from_flat({"wino": True})
    runner = WarmStartRunner.from_pretrained(config=cfg)
    results = runner.generate([format_prompt(p["question"]) for p in problems], batch_size=12)
    right = sum(score(r.text, p["answer"])[0] for r, p in zip(results, problems))
    assert right >= 8, right
    assert all(r.nfe < cfg.decode.gen_length for r in results)
    assert sum(r.revoked for r in results) > 0


def test_the_wino_rule_is_the_draft_laid_whole_and_judged_by_the_narrow_out():
    """``--remask --remask-rule wino`` decodes exactly as the draft injected at rho 1 with
    ``--wino``: the same tokens, NFE and re-masks, whatever ``warm_init`` / ``rho`` say (the draft
    is laid as tokens in full); and a run without a warm start stays cold."""
    from fastdllm_warmstart.runner import WarmStartRunner
    from fastdllm_warmstart.tasks.tinygsm import format_prompt
    from fastdllm_warmstart.tasks.tinygsm_files import default_split_path, load_jsonl

    problems = load_jsonl(default_split_path("test"))[:6]
    prompts = [format_prompt(p["question"]) for p in problems]
    runner = WarmStartRunner.from_pretrained()
    by_hand = configs_from_flat({"warm_init": "token", "rho": 1.0, "wino": True})
    ref = runner.generate(prompts, by_hand, batch_size=6)
    assert sum(r.revoked for r in ref) + sum(r.injected for r in ref) > 0
    for flags in ({"warm_init": "token", "remask": True, "remask_rule": "wino"},
                  {"warm_init": "token", "rho": 0.1, "remask": True, "remask_rule": "wino"},
                  {"warm_init": "embed", "remask": True, "remask_rule": "wino"},
                  {"warm_init": "token", "rho": 1.0, "wino": True, "remask": True}):
        out = runner.generate(prompts, configs_from_flat(flags), batch_size=6)
        assert [(r.token_ids, r.nfe, r.revoked) for r in out] == \
               [(r.token_ids, r.nfe, r.revoked) for r in ref], flags
    cold = runner.generate(prompts, configs_from_flat({}), batch_size=6)
    cold_remask = runner.generate(prompts, configs_from_flat({"remask": True, "remask_rule": "wino"}),
                                  batch_size=6)
    assert [(r.token_ids, r.nfe) for r in cold_remask] == [(r.token_ids, r.nfe) for r in cold]
    # and the rule matters: the default (spec here) on the same drafts decodes differently
    spec = runner.generate(prompts, configs_from_flat({"warm_init": "token", "remask": True}), batch_size=6)
    assert [r.nfe for r in spec] != [r.nfe for r in ref]


def test_narrow_out_stops_after_block_length_forwards_of_the_row_itself():
    """The narrow-out re-masks only while a row has run fewer than block_length forwards in its
    block, counted per row (rows at different steps share one event in a continuous batch): the
    same verdicts, one row past the bound, and only the other re-masks."""
    from fastdllm_warmstart.engine.state import DecodeState

    B, T, V = 2, 4, 12
    x = torch.cat([torch.full((B, 2), 20 % V), torch.tensor([[3, 4, 5, 6], [3, 4, 5, 6]])], dim=1)
    st = DecodeState(model=None, x=x.clone(), attention_mask=None, prompt_width=2,
                     prompt_lengths=torch.full((B,), 2), gen_length=T, block_length=T, mask_id=MASK,
                     eos_id=EOS, pad_id=PAD, generator=torch.Generator())
    st.block_start, st.block_end, st.window, st.block_step = 2, 2 + T, (2, 2 + T), 1
    st.active = torch.ones(B, dtype=torch.bool)
    st.transfer = torch.tensor([[False, False, True, True]] * B)  # 2 and 3 committed now
    st.transient_logits = torch.zeros((B, T, V))  # the shadow: every token 1/V, far below tau_out
    st.revisions = torch.zeros_like(st.x)
    st.extras["wino_remasked"] = torch.zeros(B, dtype=torch.long)
    narrow = NarrowOut(tau_out=0.9, cap=False)
    narrow.judged = torch.tensor([[True, True, False, False]] * B)  # 0 and 1 decoded before
    narrow.last = torch.full((B,), 99)
    narrow.steps = torch.tensor([T - 1, T])  # row 1 has run block_length forwards already
    narrow.after_commit(st)
    assert st.x[0, 2:].tolist() == [MASK, MASK, 5, 6]
    assert st.x[1, 2:].tolist() == [3, 4, 5, 6]
    assert narrow.steps.tolist() == [T, T + 1]
