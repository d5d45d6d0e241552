"""The decoding loop: parity with upstream's rules, batching, hooks, commit rule."""

import os

import pytest
import torch

from conftest import EOS, MASK, PAD, VOCAB, make_tiny_model
from fastdllm_warmstart import DecodeCallback, EventRecorder, generate
from fastdllm_warmstart.engine.transfer import (get_transfer_index, get_transfer_index_dynamic,
                                                num_transfer_schedule)
from reference_loops import VARIANTS, reference_generate

SETTINGS = [  # (gen_length, block_length, steps)
    (32, 8, 32), (32, 16, 16), (24, 8, 12), (16, 16, 8), (16, 8, 2),
]
RULES = {  # commit rule settings; "factor+threshold": factor wins, as upstream
    "schedule": dict(threshold=None), "threshold0.9": dict(threshold=0.9),
    "threshold0.3": dict(threshold=0.3), "factor1": dict(factor=1.0),
    "factor+threshold": dict(factor=2.0, threshold=0.9),
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("rule", RULES)
def test_parity_with_reference_rules(tiny_model, cache, rule, variant):
    torch.manual_seed(1)
    for gen_length, block_length, steps in SETTINGS:
        prompt = torch.randint(4, VOCAB, (1, 7))
        ref, ref_nfe = reference_generate(tiny_model, prompt, steps=steps, gen_length=gen_length,
                                          block_length=block_length, cache=cache, mask_id=MASK,
                                          variant=variant, **{"threshold": None, **RULES[rule]})
        out = generate(tiny_model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                       cache=cache, use_upstream=False, loop_variant=variant, **RULES[rule])
        assert torch.equal(out.sequences, ref), (gen_length, block_length, steps)
        assert out.total_nfe == ref_nfe
        assert int(out.nfe[0]) == ref_nfe
        assert out.loop_variant == variant


def test_parity_covers_both_commit_regimes(tiny_model):
    """Guard against a vacuous parity test: with these weights the threshold and factor rules
    commit several tokens in some steps (parallel decoding) and one token in others."""
    prompt = torch.randint(4, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))

    def nfe(**rule):
        return int(generate(tiny_model, prompt, steps=32, gen_length=32, block_length=8, cache="none",
                            use_upstream=False, **rule).nfe[0])

    assert nfe(threshold=0.3) < 32 <= nfe(threshold=0.99) + 1
    assert 4 < nfe(factor=1.0) < 32 and nfe(factor=2.0) < nfe(factor=1.0)
    assert nfe(factor=1.0, threshold=0.3) == nfe(factor=1.0) != nfe(threshold=0.3)  # factor wins


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_loop_variants_differ_in_nfe_only(tiny_model, cache):
    """Today's loop stops a block the full forward completed (1 forward); the June-2025 loop
    always ran one more cached forward. Same tokens, and each variant's floor is reached."""
    prompt = torch.randint(4, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    runs = {v: generate(tiny_model, prompt, steps=32, gen_length=32, block_length=8, threshold=0.3,
                        cache=cache, use_upstream=False, loop_variant=v) for v in VARIANTS}
    assert torch.equal(runs["current"].sequences, runs["snapshot-2025-06"].sequences)
    assert runs["current"].total_nfe == 4          # 4 blocks, each filled by its full forward
    assert runs["snapshot-2025-06"].total_nfe == 8  # floor 2 per block
    none = generate(tiny_model, prompt, steps=32, gen_length=32, block_length=8, threshold=0.3,
                    cache="none", use_upstream=False, loop_variant="snapshot-2025-06")
    assert none.total_nfe == 4  # without a cache both variants are the same loop


def test_auto_loop_variant_without_checkout_is_current(tiny_model, monkeypatch):
    monkeypatch.delenv("FAST_DLLM_PATH", raising=False)
    out = generate(tiny_model, [[5, 6, 7]], steps=16, gen_length=16, block_length=8, threshold=0.9)
    assert out.loop_variant == "current"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("rule", [dict(threshold=None), dict(threshold=0.7), dict(factor=1.5)])
def test_batch_equals_one_by_one(tiny_model64, cache, rule, variant):
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19], [20]]
    kw = dict(steps=32, gen_length=32, block_length=8, cache=cache, use_upstream=False,
              loop_variant=variant, **rule)
    batch = generate(tiny_model64, prompts, **kw)
    assert batch.sequences.shape == (4, 7 + 32)
    for r, p in enumerate(prompts):
        one = generate(tiny_model64, [p], **kw)
        assert torch.equal(batch.generated[r], one.generated[0]), r
        assert int(batch.nfe[r]) == int(one.nfe[0]), r
    assert batch.total_nfe >= int(batch.nfe.max())
    if rule.get("threshold") is not None or "factor" in rule:
        assert len(set(batch.nfe.tolist())) > 1  # rows finish blocks at different steps


class RowSpy(torch.nn.Module):
    """Wraps a model; counts the rows of every forward it computes."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.rows = 0

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, **kw):
        self.rows += (input_ids if input_ids is not None else inputs_embeds).shape[0]
        return self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_skip_done_rows_computes_only_counted_rows(tiny_model64, cache, variant):
    """With skip_done_rows a row whose block is done is left out of the forward: the rows
    computed equal the rows' NFE summed (not batch x forward calls), and every row's tokens
    and NFE are those of the run that computes every row."""
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19], [20], [21, 22]]
    kw = dict(steps=32, gen_length=32, block_length=8, cache=cache, use_upstream=False,
              loop_variant=variant, threshold=0.7)
    runs = {}
    for skip in (False, True):
        spy = RowSpy(tiny_model64)
        runs[skip] = (generate(spy, prompts, skip_done_rows=skip, **kw), spy.rows)
    (full, rows_full), (skip, rows_skip) = runs[False], runs[True]
    assert torch.equal(full.sequences, skip.sequences)
    assert torch.equal(full.nfe, skip.nfe) and full.total_nfe == skip.total_nfe
    assert rows_full == len(prompts) * full.total_nfe
    assert rows_skip == int(skip.nfe.sum()) < rows_full  # rows finish blocks at different steps


class ReplaceSpy(torch.nn.Module):
    """Wraps a model; records the shape of every replace_position it receives."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.shapes = []

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, *args, replace_position=None, **kw):
        if replace_position is not None:
            self.shapes.append(tuple(replace_position.shape))
        return self.inner(*args, replace_position=replace_position, **kw)


def test_dual_cache_replace_position_has_a_row_per_prompt(tiny_model):
    """Models derived from newer Fast-dLLM replace each row's block keys/values from that row's
    own replace_position row; a (1, L) mask would leave rows >= 1 with stale keys/values."""
    spy = ReplaceSpy(tiny_model)
    out = generate(spy, [[5, 6, 7], [8, 9, 10], [11, 12, 13]], steps=16, gen_length=16,
                   block_length=8, threshold=0.95, cache="dual", use_upstream=False)
    assert spy.shapes and set(spy.shapes) == {(3, out.sequences.shape[1])}


def test_step_callback_and_upstream_style_return(tiny_model):
    """upstream's step_callback(step_idx) is called after every step with the global step index,
    and ``x, nfe = generate(...)`` unpacks like upstream's return value."""
    seen, canvases = [], []

    class Canvas(DecodeCallback):
        def after_commit(self, state):
            canvases.append(state.x.clone())

    def on_step(i):
        seen.append(i)

    out = generate(tiny_model, torch.tensor([[5, 6, 7]]), 32, 32, 8, 0.0, "low_confidence", MASK,
                   0.5, None, on_step, cache="prefix", callbacks=[Canvas()], use_upstream=False)
    assert seen == list(range(out.total_nfe)) and len(canvases) == out.total_nfe
    x, nfe = out
    assert x is out.sequences and nfe == out.total_nfe


def test_left_padding_is_masked_out(tiny_model64):
    """A padded row must not see its pad tokens: changing them changes nothing."""
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    a = generate(tiny_model64, prompts, steps=16, gen_length=16, block_length=8, threshold=0.8)
    ids = a.sequences[:, :5].clone()
    mask = (a.attention_mask[:, :5]).clone()
    ids[1, :3] = 42  # different pad content
    b = generate(tiny_model64, ids, attention_mask=mask, steps=16, gen_length=16, block_length=8,
                 threshold=0.8)
    assert torch.equal(a.generated, b.generated)


def test_event_order_and_registration_order(tiny_model):
    log = []

    class Named(DecodeCallback):
        def __init__(self, name):
            self.name = name

        def before_forward(self, state):
            log.append((self.name, "before_forward", state.block, state.block_step))

        def after_commit(self, state):
            log.append((self.name, "after_commit", state.block, state.block_step))

    rec = EventRecorder()
    # Fixed schedule, one token per step: exactly block_length steps per block in every mode.
    out = generate(tiny_model, torch.tensor([[5, 6, 7]]), steps=16, gen_length=16, block_length=8,
                   threshold=None, cache="dual", callbacks=[rec, Named("a"), Named("b")])
    expected = [("on_init", 0, 0)]
    for block in range(2):
        expected.append(("on_block_start", block, 0))
        for step in range(8):
            expected += [("before_forward", block, step), ("after_forward", block, step),
                         ("after_commit", block, step)]
        expected.append(("on_block_end", block, 8))
    expected.append(("on_finish", 1, 8))
    assert rec.events == expected
    assert out.total_nfe == 16
    pairs = list(zip(log[::2], log[1::2]))
    assert all(x[0] == "a" and y[0] == "b" and x[1:] == y[1:] for x, y in pairs)


def test_on_init_can_substitute_canvas(tiny_model):
    class Fill(DecodeCallback):
        def on_init(self, state):
            state.x[:, state.prompt_width:state.prompt_width + 4] = 7

    out = generate(tiny_model, torch.tensor([[5, 6]]), steps=16, gen_length=16, block_length=8,
                   threshold=0.9, cache="prefix", callbacks=[Fill()])
    assert out.generated[0, :4].tolist() == [7, 7, 7, 7]
    assert (out.generated != MASK).all()


def test_never_commits_mask_or_pad():
    model = make_tiny_model(seed=3)
    with torch.no_grad():  # make [MASK] and [PAD] the favourites everywhere
        model.lm_head.weight[MASK] = 5 * model.lm_head.weight[7]
        model.lm_head.weight[PAD] = 4 * model.lm_head.weight[7]
    for cache in ("none", "prefix", "dual"):
        out = generate(model, torch.tensor([[5, 6, 7]]), steps=16, gen_length=16, block_length=8,
                       threshold=0.9, cache=cache)
        assert not torch.isin(out.generated, torch.tensor([MASK, PAD])).any()
        assert int(out.nfe[0]) <= 16 + 2


def test_early_stop_closes_rows_after_eos():
    model = make_tiny_model(seed=4)
    with torch.no_grad():
        model.lm_head.weight[EOS] = 50 * model.lm_head.weight[9]  # EOS wins everywhere
    plain = generate(model, torch.tensor([[5, 6, 7]]), steps=32, gen_length=32, block_length=8,
                     threshold=0.9, cache="dual")
    early = generate(model, torch.tensor([[5, 6, 7]]), steps=32, gen_length=32, block_length=8,
                     threshold=0.9, cache="dual", early_stop=True)
    assert torch.equal(plain.sequences, early.sequences)
    assert (early.generated == EOS).all()
    assert int(early.nfe[0]) < int(plain.nfe[0])
    assert bool(early.stats["finished_early"][0])


def _conf_logits(confidences, vocab=8):
    """(1, W, vocab) logits whose argmax probability at column c is confidences[c] (token c % vocab)."""
    import math

    rows = []
    for c, p in enumerate(confidences):
        rest = math.log((1 - p) / (vocab - 1))
        row = torch.full((vocab,), rest, dtype=torch.float64)
        row[c % vocab] = math.log(p)
        rows.append(row)
    return torch.stack(rows).unsqueeze(0)


@pytest.mark.parametrize("confidences, factor, expected", [
    # bars for ranks 1..4 at factor 1: -1, 2/3, 3/4, 4/5
    ([0.95, 0.9, 0.85, 0.82], 1.0, 4),      # nothing fails: all
    ([0.95, 0.7, 0.9, 0.5], 1.0, 2),        # rank 3 (0.7) fails first: the two above it
    ([0.4, 0.6, 0.95, 0.5], 1.0, 1),        # rank 2 (0.6) fails: only the best
    ([0.95, 0.9, 0.85, 0.5], 1.0, 4),       # only the last fails: upstream commits all anyway
    ([0.3], 1.0, 1),                        # one masked position: always committed
    ([0.6, 0.55, 0.5, 0.45], 4.0, 4),       # large factor: bars below zero
])
def test_factor_rule_on_handmade_confidences(confidences, factor, expected):
    logits = _conf_logits(confidences)
    W = len(confidences)
    mask_index = torch.ones((1, W), dtype=torch.bool)
    x = torch.full((1, W), MASK)
    _, t = get_transfer_index_dynamic(logits, 0.0, "low_confidence", mask_index, x, None, factor)
    order = sorted(range(W), key=lambda c: -confidences[c])
    assert t[0].tolist() == [c in order[:expected] for c in range(W)]


def test_factor_rule_in_a_batch_skips_rows_without_masks():
    logits = torch.cat([_conf_logits([0.9, 0.8, 0.7]), _conf_logits([0.9, 0.8, 0.7])])
    mask_index = torch.tensor([[True, True, True], [False, False, False]])
    x = torch.tensor([[MASK] * 3, [5, 6, 7]])
    x0, t = get_transfer_index_dynamic(logits, 0.0, "low_confidence", mask_index, x, None, 1.0)
    assert t[0].tolist() == [True, True, True] and not t[1].any()
    assert x0[1].tolist() == [5, 6, 7]


def test_transfer_rule_threshold_and_topk_on_handmade_logits():
    logits = torch.full((1, 5, 6), -10.0)
    confident = [4.0, 9.0, 1.0, 8.0, 0.5]  # winner margins -> confidences
    for col, m in enumerate(confident):
        logits[0, col, col % 6] = m
    mask_index = torch.tensor([[True, True, True, True, False]])
    x = torch.tensor([[2, 2, 2, 2, 5]])
    _, t = get_transfer_index(logits, 0.0, "low_confidence", mask_index, x, None, threshold=0.99)
    # softmax of 9 vs five -10s is > 0.99; 8 also; 4 also (>0.99); 1 -> below
    probs = torch.softmax(logits.double(), -1).amax(-1)
    assert t[0].tolist() == [bool(probs[0, c] >= 0.99) and c < 4 for c in range(5)]
    _, t = get_transfer_index(logits, 0.0, "low_confidence", mask_index, x, None, threshold=0.99999999)
    assert t[0].tolist() == [False, True, False, False, False]  # only the single best
    _, t = get_transfer_index(logits, 0.0, "low_confidence", mask_index, x, torch.tensor([2]), None)
    assert t[0].tolist() == [False, True, False, True, False]  # top-2 among masked
    assert num_transfer_schedule(torch.ones(2, 10, dtype=torch.bool), 4).tolist() == [[3, 3, 2, 2]] * 2


def _upstream_tiny_model(up):
    """A random-weight tiny LLaDAModelLM of the checkout (no download), unable to prefer [MASK]."""
    torch.manual_seed(0)
    cfg = up.config_class(
        d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=100, embedding_size=100,
        block_type="llama", rope=True, mask_token_id=99, eos_token_id=98, pad_token_id=98,
        max_sequence_length=256, include_bias=False, weight_tying=False, layer_norm_type="rms",
        activation_type="silu", mlp_ratio=2, attention_layer_norm=False, init_device="cpu",
        init_fn="normal", init_std=0.5, use_cache=False, flash_attention=False)
    model = up.model_class(cfg, init_params=True).eval()
    model.config.use_cache = False
    with torch.no_grad():
        model.model.transformer.ff_out.weight[99] = 0
    return model


needs_checkout = pytest.mark.skipif(not os.environ.get("FAST_DLLM_PATH"),
                                    reason="set FAST_DLLM_PATH to a Fast-dLLM checkout")


def _upstream_rules(up):
    # threshold 0.01 fills a block with its full forward (argmax p >= 1/V): the loop variants differ
    rules = [dict(threshold=None), dict(threshold=0.9), dict(threshold=0.3), dict(threshold=0.01)]
    if up.get_transfer_index_dynamic is not None:  # checkouts with the factor rule
        rules += [dict(factor=1.0), dict(factor=2.0)]
    return rules


@needs_checkout
def test_parity_with_real_upstream_checkout():
    """Tokens and NFE of the checkout's own three functions, for its loop variant (found by
    reading its generate.py), every commit rule it has, and our reference oracle as well."""
    from fastdllm_warmstart.upstream import find_upstream

    up = find_upstream()
    assert up.loop_variant in VARIANTS
    other = [v for v in VARIANTS if v != up.loop_variant][0]
    model = _upstream_tiny_model(up)
    gen = up.generate_module
    fns = {"none": gen.generate, "prefix": gen.generate_with_prefix_cache, "dual": gen.generate_with_dual_cache}
    prompt = torch.randint(0, 90, (1, 10), generator=torch.Generator().manual_seed(0))
    differs = 0
    for cache, fn in fns.items():
        for rule in _upstream_rules(up):
            ref, ref_nfe = fn(model, prompt, steps=32, gen_length=32, block_length=8, temperature=0.0,
                              remasking="low_confidence", mask_id=99, **rule)
            out = generate(model, prompt, steps=32, gen_length=32, block_length=8, cache=cache, **rule)
            assert out.loop_variant == up.loop_variant
            assert torch.equal(out.sequences, ref), (cache, rule)
            assert out.total_nfe == ref_nfe, (cache, rule)
            oracle, oracle_nfe = reference_generate(model, prompt, steps=32, gen_length=32, block_length=8,
                                                    cache=cache, mask_id=99, variant=up.loop_variant,
                                                    **{"threshold": None, **rule})
            assert torch.equal(oracle, ref) and oracle_nfe == ref_nfe, (cache, rule)
            wrong = generate(model, prompt, steps=32, gen_length=32, block_length=8, cache=cache,
                             loop_variant=other, **rule)
            differs += wrong.total_nfe != ref_nfe
    assert differs > 0  # the settings tell the two loop variants apart


@needs_checkout
def test_batch_parity_with_real_upstream_checkout():
    """A batch through the engine equals upstream: today's upstream decodes the batch itself
    (total forwards as NFE, per-row replace_position); the June-2025 functions take one prompt,
    so each row is compared with its own upstream run."""
    from fastdllm_warmstart.upstream import find_upstream

    up = find_upstream()
    model = _upstream_tiny_model(up)
    gen = up.generate_module
    fns = {"none": gen.generate, "prefix": gen.generate_with_prefix_cache, "dual": gen.generate_with_dual_cache}
    prompts = torch.randint(0, 90, (2, 10), generator=torch.Generator().manual_seed(3))
    for cache, fn in fns.items():
        for rule in _upstream_rules(up):
            kw = dict(steps=32, gen_length=32, block_length=8, **rule)
            out = generate(model, prompts, cache=cache, **kw)
            if up.loop_variant == "current":
                ref, ref_nfe = fn(model, prompts, temperature=0.0, remasking="low_confidence", mask_id=99, **kw)
                assert torch.equal(out.sequences, ref), (cache, rule)
                assert out.total_nfe == ref_nfe, (cache, rule)
            else:
                for r in range(2):
                    ref, ref_nfe = fn(model, prompts[r:r + 1], temperature=0.0,
                                      remasking="low_confidence", mask_id=99, **kw)
                    assert torch.equal(out.sequences[r:r + 1], ref), (cache, rule, r)
                    assert int(out.nfe[r]) == ref_nfe, (cache, rule, r)


def test_from_pretrained_round_trip_is_exact(tmp_path, tiny_model):
    """Reloading must give the same logits (a non-persistent rotary buffer once broke this)."""
    from fastdllm_warmstart.models import TinyLLaDAModelLM

    tiny_model.save_pretrained(tmp_path)
    x = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = tiny_model(x).logits
    for _ in range(2):
        again = TinyLLaDAModelLM.from_pretrained(tmp_path).eval()
        assert torch.equal(again(x).logits, ref)


@needs_checkout
def test_skip_done_rows_with_upstream_model_class():
    """Upstream's LLaDAModelLM (its own cache layout; the June-2025 one writes the block's
    keys/values in place and pools replace_position rows) gives every row the same tokens and NFE
    whether done rows are left out of the forward or not, in every cache mode."""
    from fastdllm_warmstart.upstream import find_upstream

    up = find_upstream()
    prompts = torch.randint(0, 90, (3, 10), generator=torch.Generator().manual_seed(5))
    for cache in ("none", "prefix", "dual"):
        for rule in (dict(threshold=0.9), dict(threshold=0.3)):
            runs = {}
            for skip in (False, True):
                spy = RowSpy(_upstream_tiny_model(up))
                spy.replace_position_rows = up.replace_position_rows  # the spy hides the class
                runs[skip] = (generate(spy, prompts, steps=32, gen_length=32, block_length=8, cache=cache,
                                       skip_done_rows=skip, **rule), spy.rows)
            (full, rows_full), (skip, rows_skip) = runs[False], runs[True]
            assert torch.equal(full.sequences, skip.sequences), (cache, rule)
            assert torch.equal(full.nfe, skip.nfe), (cache, rule)
            assert rows_skip == int(skip.nfe.sum()) <= rows_full, (cache, rule)
