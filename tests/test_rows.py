"""Continuous batching (batching="refill", engine/rows.py): every answer's tokens and NFE are the
static batch's, a refilled row's answer does not depend on its slot, callbacks work per problem,
and each answer's share of the model calls adds up to the calls made."""

import pytest
import torch

from conftest import EOS, MASK, make_tiny_model
from fastdllm_warmstart import DecodeCallback, EventRecorder, generate
from fastdllm_warmstart.config import ConfigError, DecodeConfig, configs_from_flat
from fastdllm_warmstart.warmstart import build_callbacks
from reference_loops import VARIANTS

G, BL = 24, 8
KW = dict(steps=G, gen_length=G, block_length=BL, threshold=0.7, use_upstream=False)


@pytest.fixture(scope="module")
def model32():
    return make_tiny_model(seed=3)  # fp32, as the package's model runs


def mixed_batch(model, n=10, seed=0, cache="dual"):
    """Prompts of 1-7 tokens and drafts that make rows finish at very different times: the cold
    answer itself (a few forwards with a verifier), a random draft, or none."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 8, (n,), generator=g).tolist()
    prompts = [torch.randint(5, 48, (k,), generator=g).tolist() for k in lengths]
    cold = generate(model, prompts, cache=cache, **KW)
    drafts = cold.generated.clone()
    drafts[1::3] = torch.randint(5, 48, drafts[1::3].shape, generator=g)
    drafts[2::3] = -1
    return prompts, drafts


def callbacks(settings, drafts, reference=None):
    return build_callbacks(configs_from_flat(settings), drafts, reference=reference)


def same_answers(a, b):
    assert torch.equal(a.generated, b.generated)
    assert torch.equal(a.nfe, b.nfe)
    for key in a.stats:
        if key not in ("model_calls", "model_queries"):  # costs, which batching changes
            assert torch.equal(a.stats[key], b.stats[key]), key


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("early_stop", [False, True])
def test_refill_gives_the_static_batch_answers(model32, cache, variant, early_stop):
    """A batch that mixes fast rows (a good draft, a verifier) and slow ones (cold, bad drafts):
    refilling 3 rows at a time gives each answer the static batch's tokens, NFE and counters."""
    prompts, drafts = mixed_batch(model32, cache=cache)
    chain = dict(warm_init="token", remask=True, remask_rule="chain")
    kw = dict(KW, cache=cache, loop_variant=variant, early_stop=early_stop)
    static = generate(model32, prompts, callbacks=callbacks(chain, drafts), **kw)
    refill = generate(model32, prompts, callbacks=callbacks(chain, drafts), batching="refill",
                      batch_size=3, **kw)
    assert static.batching == "static" and refill.batching == "refill"
    same_answers(static, refill)
    assert len(set(static.nfe.tolist())) > 3  # rows really finish at different times
    assert int(static.nfe.max()) - int(static.nfe.min()) >= BL  # a block or more apart


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_refilled_answer_does_not_depend_on_its_row(model32, cache):
    """The same problems in another queue order (so each lands in another row, next to other
    neighbours, after other problems) and with other batch sizes: the same answer each, and the
    answer it gets decoded alone."""
    prompts, drafts = mixed_batch(model32, n=8, seed=1, cache=cache)
    chain = dict(warm_init="token", remask=True)
    kw = dict(KW, cache=cache, batching="refill")
    base = generate(model32, prompts, callbacks=callbacks(chain, drafts), batch_size=3, **kw)
    order = [5, 2, 7, 0, 3, 6, 1, 4]
    for batch_size in (2, 5):
        moved = generate(model32, [prompts[i] for i in order], callbacks=callbacks(chain, drafts[order]),
                         batch_size=batch_size, **kw)
        assert torch.equal(moved.generated, base.generated[order])
        assert torch.equal(moved.nfe, base.nfe[order])
    for i in (0, 7):
        alone = generate(model32, [prompts[i]], callbacks=callbacks(chain, drafts[i:i + 1]), **KW, cache=cache)
        assert torch.equal(alone.generated[0], base.generated[i, -G:])
        assert int(alone.nfe[0]) == int(base.nfe[i])


MODES = {
    "token+chain": dict(warm_init="token", remask=True, remask_rule="chain"),
    "token+revoke": dict(warm_init="token", rho=0.6, remask=True, remask_rule="revoke"),
    "token+prefix-visible": dict(warm_init="token", remask=True, remask_rule="prefix", remask_context="visible"),
    "embed+accept": dict(warm_init="embed", remask=True, remask_rule="accept"),
    "token+spec": dict(warm_init="token", remask=True, remask_rule="spec"),
    "embed+rcd": dict(warm_init="embed", residual=True),
    "rcd-reference": dict(residual=True, residual_start="reference", residual_reference="embedded"),
}


@pytest.mark.parametrize("mode", MODES)
def test_every_callback_gives_the_same_answers_with_refill(mode):
    """Warm starts, verifiers (spec's transient queries too), revoke and RCD (its stream, and
    its reference forward for a refilled row) keep per-problem state across refills."""
    model = make_tiny_model(seed=3, dtype=torch.float64)  # spec's shadows: no float-noise ties
    prompts, drafts = mixed_batch(model, n=9, seed=2)
    static = generate(model, prompts, callbacks=callbacks(MODES[mode], drafts, model), cache="dual", **KW)
    refill = generate(model, prompts, callbacks=callbacks(MODES[mode], drafts, model), cache="dual",
                      batching="refill", batch_size=4, **KW)
    same_answers(static, refill)


def test_call_shares_add_up_and_refill_makes_fewer_calls(model32):
    """stats["model_calls"] splits each call among the rows it computed: the shares sum to the
    calls made; at batch 1 a row's share is its NFE. With rows that finish at different times a
    continuous batch of 3 makes fewer calls than static batches of 3."""
    prompts, drafts = mixed_batch(model32, n=12, seed=4)
    chain = dict(warm_init="token", remask=True)
    refill = generate(model32, prompts, callbacks=callbacks(chain, drafts), batching="refill",
                      batch_size=3, **KW)
    assert refill.stats["model_calls"].sum().item() == pytest.approx(refill.model_calls)
    static_calls = 0
    for s in range(0, 12, 3):
        part = generate(model32, prompts[s:s + 3], callbacks=callbacks(chain, drafts[s:s + 3]), **KW)
        assert part.stats["model_calls"].sum().item() == pytest.approx(part.model_calls)
        static_calls += part.model_calls
    assert refill.model_calls < static_calls
    one = generate(model32, prompts[:1], **KW)
    assert one.stats["model_calls"].tolist() == [float(one.nfe[0])]


def test_refill_events_per_problem(model32):
    """on_refill announces each refilled row once, with its new problem; every problem then sees
    its blocks' events in order, as in a batch of its own."""
    log = []

    class PerProblem(DecodeCallback):
        supports_refill = True

        def on_refill(self, state):
            log.append(("refill", state.refilled.tolist(), state.problem[state.refilled].tolist()))

        def on_block_start(self, state):
            for p in state.problem[state.active].tolist():
                log.append(("start", p, state.block))

        def on_block_end(self, state):
            for p in state.problem[state.active].tolist():
                log.append(("end", p, state.block))

    prompts, _ = mixed_batch(model32, n=7, seed=5)
    generate(model32, prompts, callbacks=[PerProblem()], batching="refill", batch_size=3, **KW)
    refills = [e for e in log if e[0] == "refill"]
    assert sorted(p for e in refills for p in e[2]) == [3, 4, 5, 6]
    for p in range(7):
        mine = [e[0] + str(e[2]) for e in log if e[0] != "refill" and e[1] == p]
        assert mine == ["start0", "end0", "start1", "end1", "start2", "end2"], p


class NoRefill(DecodeCallback):
    def after_commit(self, state):
        pass


class NoPadding(torch.nn.Module):
    """A model that says nothing about padding (as upstream's LLaDA without a mask)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, **kw):
        return self.inner(**kw)


def test_auto_batching_stays_static_on_the_cpu(model32):
    """On the CPU the static batch was measured faster: auto does not refill there."""
    prompts = [[5, 6, 7], [8, 9], [10]]
    assert generate(model32, prompts, batching="auto", **KW).batching == "static"
    assert generate(model32, prompts, batching="refill", **KW).batching == "refill"


def test_auto_batching_refills_only_where_answers_stay_the_same(model32, monkeypatch):
    from fastdllm_warmstart.engine import rows

    monkeypatch.setattr(rows, "AUTO_REFILL_DEVICES", frozenset({"cpu"}))  # as on an accelerator
    prompts = [[5, 6, 7], [8, 9], [10]]
    assert generate(model32, prompts, batching="auto", **KW).batching == "refill"
    assert generate(NoPadding(model32), prompts, batching="auto", **KW).batching == "static"
    assert generate(model32, prompts, batching="auto", callbacks=[NoRefill()], **KW).batching == "static"
    sampled = dict(KW, temperature=0.5)
    assert generate(model32, prompts, batching="auto", **sampled).batching == "static"
    assert generate(model32, prompts, batching="auto", callbacks=[EventRecorder()], **KW).batching == "refill"


def test_forced_refill_errors_name_the_fix(model32):
    with pytest.raises(ValueError, match="NoRefill.*batching='static'"):
        generate(model32, [[5, 6]], batching="refill", callbacks=[NoRefill()], **KW)
    with pytest.raises(ValueError, match="supports_row_windows"):
        generate(NoPadding(model32), [[5, 6]], batching="refill", cache="dual", **KW)
    out = generate(NoPadding(model32), [[5, 6], [7]], batching="refill", cache="prefix", **KW)
    assert out.batching == "refill"
    with pytest.raises(ConfigError, match="batching='continuous'.*auto, static, refill"):
        DecodeConfig(batching="continuous")
    with pytest.raises(ValueError, match="batch_size=0"):
        generate(model32, [[5, 6]], batching="refill", batch_size=0, **KW)


def test_model_replaces_different_columns_per_row(model32):
    """The dual cache of a continuous batch: rows in different blocks replace their own columns;
    each row's logits and new cache equal those of a call for that row alone."""
    torch.manual_seed(0)
    ids = torch.randint(5, 48, (2, 20))
    past = model32(input_ids=ids, use_cache=True).past_key_values
    block = torch.randint(5, 48, (2, 4))
    replace = torch.zeros((2, 20), dtype=torch.bool)
    replace[0, 8:12] = True
    replace[1, 14:18] = True
    both = model32(input_ids=block, past_key_values=past, use_cache=True, replace_position=replace)
    for r in range(2):
        alone = model32(input_ids=block[r:r + 1], past_key_values=[tuple(t[r:r + 1] for t in layer) for layer in past],
                        use_cache=True, replace_position=replace[r:r + 1])
        assert torch.allclose(both.logits[r], alone.logits[0], atol=1e-5)
        assert torch.allclose(both.past_key_values[0][0][r], alone.past_key_values[0][0][0], atol=1e-5)
    with pytest.raises(ValueError, match="columns per row"):
        bad = replace.clone()
        bad[1, 18] = True
        model32(input_ids=block, past_key_values=past, use_cache=True, replace_position=bad)


def test_early_stop_hands_in_a_closed_row_at_once(model32):
    """A row closed by early stop leaves the batch at its block end (EOS-filled) and its slot
    takes the next problem; the static batch gives the same answer."""

    class EosAfterFirstBlock(DecodeCallback):  # problem 0 writes EOS over its first block
        supports_refill = True

        def after_commit(self, state):
            rows = (state.problem == 0) & state.active
            state.x[rows, state.block_start:state.block_end] = EOS

    prompts = [[5, 6], [7, 8, 9], [10], [11, 12]]
    kw = dict(KW, early_stop=True)
    static = generate(model32, prompts, callbacks=[EosAfterFirstBlock()], **kw)
    refill = generate(model32, prompts, callbacks=[EosAfterFirstBlock()], batching="refill", batch_size=2, **kw)
    same_answers(static, refill)
    assert bool(refill.stats["finished_early"][0]) and int(refill.nfe[0]) == 1
    assert (refill.generated[0] == EOS).all() and not (refill.generated == MASK).any()


def test_packed_call_equals_separate_calls(model32):
    """forward_packed: a full forward, a dual-cache block forward with per-row columns and a
    prefix-cache forward in one pass give each forward's own logits and keys/values."""
    torch.manual_seed(1)
    ids = torch.randint(5, 48, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    past = model32(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
    replace = torch.zeros((2, 20), dtype=torch.bool)
    replace[0, 8:12] = True
    replace[1, 12:16] = True
    calls = [dict(input_ids=ids[:1], attention_mask=mask[:1], use_cache=True),
             dict(input_ids=ids[1:, :4], past_key_values=[tuple(t[1:] for t in kv) for kv in past],
                  use_cache=True, replace_position=replace),
             dict(input_ids=ids[:1, 12:], attention_mask=mask[:1],
                  past_key_values=[tuple(t[:1, :, :12] for t in kv) for kv in past], use_cache=False)]
    packed = model32.forward_packed(calls)
    for call, out in zip(calls, packed):
        alone = model32(**call)
        assert torch.allclose(out.logits, alone.logits, atol=1e-5)
        assert (out.past_key_values is None) == (alone.past_key_values is None)
        if alone.past_key_values is not None:
            assert torch.allclose(out.past_key_values[1][1], alone.past_key_values[1][1], atol=1e-5)


class Unpacked(NoPadding):
    """The package's model without forward_packed: one call per kind of forward each tick."""

    supports_padding = True
    supports_row_windows = True


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_separate_calls_give_the_same_answers(model32, cache):
    """Without forward_packed, the full and the cached forwards (prefix: each block's) are
    separate calls, and a small one may wait a tick for more rows: the answers are the same."""
    prompts, drafts = mixed_batch(model32, n=9, seed=6, cache=cache)
    chain = dict(warm_init="token", remask=True)
    kw = dict(KW, cache=cache)
    static = generate(model32, prompts, callbacks=callbacks(chain, drafts), **kw)
    refill = generate(Unpacked(model32), prompts, callbacks=callbacks(chain, drafts), batching="refill",
                      batch_size=4, **kw)
    same_answers(static, refill)
    assert refill.stats["model_calls"].sum().item() == pytest.approx(refill.model_calls)


def test_runner_refills_and_reports_each_answers_calls():
    """The runner decodes all prompts in one continuous batch (batch_size rows at once): the
    embedded dLLM gives every answer the text and NFE of static batches, the answers' call shares
    sum to the calls made, and the progress bar counts every answer."""
    from fastdllm_warmstart.runner import WarmStartRunner
    from fastdllm_warmstart.tasks.tinygsm import default_split_path, format_prompt, load_jsonl

    prompts = [format_prompt(p["question"]) for p in load_jsonl(default_split_path("test"))[:10]]
    runner = WarmStartRunner.from_pretrained(None, configs_from_flat(dict(gen_length=64, batching="refill")),
                                             device="cpu", threads=1)
    assert runner.batching() == "refill"

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    static = runner.generate(prompts, configs_from_flat(dict(gen_length=64, batching="static")), batch_size=4)
    handed_in = []
    refill = runner.generate(prompts, batch_size=4, progress=bar, on_results=handed_in.append)
    # on_results hears of the answers as rows hand them in, several times, each answer once
    assert len(handed_in) > 2 and sorted(i for done in handed_in for i, _ in done) == list(range(10))
    assert all(refill[i] is r for done in handed_in for i, r in done)
    assert [r.text for r in refill] == [r.text for r in static]
    assert [r.nfe for r in refill] == [r.nfe for r in static]
    assert bar.n == len(prompts)
    assert sum(r.model_calls for r in refill) < sum(r.model_calls for r in static)
    assert all(0 < r.model_calls < r.nfe for r in refill)


def test_call_logits_keep_zeros_in_rows_the_call_left_out():
    """A call's logits fill the batch's (B, W, V) tensor kept per call slot: the rows it computed
    hold its logits, every other row zeros, also the rows an earlier call of that slot wrote."""
    from types import SimpleNamespace

    from fastdllm_warmstart.engine.rows import RefillLoop

    loop = SimpleNamespace(state=SimpleNamespace(batch_size=4), _logit_buffers={})
    a = torch.randn(2, 3, 5)
    out = RefillLoop._spread(loop, "s", a, torch.tensor([2, 0]))
    assert torch.equal(out[[2, 0]], a) and not out[[1, 3]].any()
    b = torch.randn(1, 3, 5)
    out = RefillLoop._spread(loop, "s", b, torch.tensor([1]))
    assert torch.equal(out[1], b[0]) and not out[[0, 2, 3]].any()  # rows 0 and 2 were zeroed
    other = RefillLoop._spread(loop, "t", torch.randn(4, 7, 5), torch.tensor([3, 1, 0, 2]))
    assert other.shape == (4, 7, 5) and torch.equal(loop._logit_buffers["s"][0], out)  # one per slot


def test_rows_past_a_blocks_first_step_share_events_unless_a_callback_reads_the_step(model32):
    """Where no callback uses_block_step, the rows past a block's first step fire their per-step
    events together (fewer events, the same answers); one callback that reads the exact step (the
    default), or the fixed schedule's commit rule, keeps an event per (block, step)."""
    prompts, drafts = mixed_batch(model32, n=9, seed=7)
    chain = dict(warm_init="token", remask=True, remask_rule="chain")

    class Count(DecodeCallback):
        supports_refill, uses_block_step = True, False

        def __init__(self):
            self.steps = []

        def after_commit(self, state):
            self.steps.append((state.block, state.block_step, int(state.active.sum())))

    class CountEachStep(Count):
        uses_block_step = True

    def run(counter, **kw):
        out = generate(model32, prompts, callbacks=callbacks(chain, drafts) + [counter], batching="refill",
                       batch_size=4, **{**KW, **kw})
        return out, counter.steps

    merged, few = run(Count())
    exact, many = run(CountEachStep())
    same_answers(merged, exact)
    assert len(few) < len(many)
    assert sum(n for *_, n in few) == sum(n for *_, n in many) == int(exact.nfe.sum())  # each row-step once
    schedule = dict(threshold=None)
    _, sched_few = run(Count(), **schedule)
    _, sched_many = run(CountEachStep(), **schedule)
    assert sched_few == sched_many


@pytest.mark.parametrize("batching", ["static", "refill"])
def test_each_answer_counts_the_queries_the_model_computed_for_it(model32, batching):
    """Cold, dual cache, no early stop: every block opens with a full forward over the canvas and
    each later forward computes the block alone, so an answer's query count is
    blocks x canvas + (NFE - blocks) x block length, in a static batch as with refill; a
    verifier's transient queries add to it."""
    prompts, drafts = mixed_batch(model32, n=7, seed=2)
    out = generate(model32, prompts, batching=batching, batch_size=3, cache="dual", **KW)
    blocks, canvas = G // BL, out.sequences.shape[1]
    expected = blocks * canvas + (out.nfe - blocks) * BL
    assert torch.equal(out.stats["model_queries"], expected)
    spec = generate(model32, prompts, batching=batching, batch_size=3, cache="dual",
                    callbacks=callbacks(dict(warm_init="token", remask=True, remask_rule="spec"), drafts),
                    **KW)
    plain = blocks * canvas + (spec.nfe - blocks) * BL
    assert bool((spec.stats["model_queries"] > plain).any())


def test_past_rows_equals_a_forward_on_the_gathered_cache(model32):
    """The embedded model's ``past_rows`` (a cached call of some rows of the batch's dual cache)
    gives the logits and keys/values of the same call on the rows' gathered cache, and leaves the
    batch's cache untouched."""
    g = torch.Generator().manual_seed(4)
    B, L, W = 5, 20, 4
    x = torch.randint(5, 48, (B, L), generator=g)
    past = model32(input_ids=x, use_cache=True).past_key_values
    before = [tuple(t.clone() for t in layer) for layer in past]
    rows = torch.tensor([3, 0, 4])
    starts = torch.tensor([8, 12, 4])
    cols = torch.arange(L)
    replace = (cols >= starts.view(-1, 1)) & (cols < starts.view(-1, 1) + W)
    ids = torch.randint(5, 48, (3, W), generator=g)
    gathered = [tuple(t[rows] for t in layer) for layer in past]
    want = model32(input_ids=ids, past_key_values=gathered, use_cache=True, replace_position=replace)
    got = model32(input_ids=ids, past_key_values=past, use_cache=True, replace_position=replace,
                  past_rows=rows)
    assert torch.allclose(got.logits, want.logits, atol=1e-6)
    for a, b in zip(got.past_key_values, want.past_key_values):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(past, before):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="past_rows has 2 rows"):
        model32(input_ids=ids, past_key_values=past, use_cache=True, replace_position=replace,
                past_rows=rows[:2])
