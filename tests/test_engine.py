"""The decoding loop: parity with upstream's rules, batching, hooks, commit rule."""

import os

import pytest
import torch

from conftest import EOS, MASK, PAD, VOCAB, make_tiny_model
from fastdllm_warmstart import DecodeCallback, EventRecorder, generate
from fastdllm_warmstart.engine.transfer import get_transfer_index, num_transfer_schedule
from reference_loops import reference_generate

SETTINGS = [  # (gen_length, block_length, steps)
    (32, 8, 32), (32, 16, 16), (24, 8, 12), (16, 16, 8),
]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.9, 0.3])
def test_parity_with_reference_rules(tiny_model, cache, threshold):
    torch.manual_seed(1)
    for gen_length, block_length, steps in SETTINGS:
        if threshold is None and cache != "none" and steps // (gen_length // block_length) < 2:
            continue  # upstream's cached loops index past a one-step schedule
        prompt = torch.randint(4, VOCAB, (1, 7))
        ref, ref_nfe = reference_generate(tiny_model, prompt, steps=steps, gen_length=gen_length,
                                          block_length=block_length, threshold=threshold, cache=cache,
                                          mask_id=MASK)
        out = generate(tiny_model, prompt, steps=steps, gen_length=gen_length, block_length=block_length,
                       threshold=threshold, cache=cache, use_upstream=False)
        assert torch.equal(out.sequences, ref), (gen_length, block_length, steps)
        assert out.total_nfe == ref_nfe
        assert int(out.nfe[0]) == ref_nfe


def test_parity_covers_both_commit_regimes(tiny_model):
    """Guard against a vacuous parity test: with these weights the threshold rule must commit
    several tokens in some steps (parallel decoding) and one token in others."""
    prompt = torch.randint(4, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    fast = generate(tiny_model, prompt, steps=32, gen_length=32, block_length=8, threshold=0.3,
                    cache="none", use_upstream=False)
    slow = generate(tiny_model, prompt, steps=32, gen_length=32, block_length=8, threshold=0.99,
                    cache="none", use_upstream=False)
    assert int(fast.nfe[0]) < 32 <= int(slow.nfe[0]) + 1


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.7])
def test_batch_equals_one_by_one(tiny_model64, cache, threshold):
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16, 17, 18, 19], [20]]
    batch = generate(tiny_model64, prompts, steps=32, gen_length=32, block_length=8,
                     threshold=threshold, cache=cache, use_upstream=False)
    assert batch.sequences.shape == (4, 7 + 32)
    for r, p in enumerate(prompts):
        one = generate(tiny_model64, [p], steps=32, gen_length=32, block_length=8,
                       threshold=threshold, cache=cache, use_upstream=False)
        assert torch.equal(batch.generated[r], one.generated[0]), r
        assert int(batch.nfe[r]) == int(one.nfe[0]), r
    assert batch.total_nfe == int(batch.nfe.max())


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


@pytest.mark.skipif(not os.environ.get("FAST_DLLM_PATH"), reason="set FAST_DLLM_PATH to a Fast-dLLM checkout")
def test_parity_with_real_upstream_checkout():
    from fastdllm_warmstart.upstream import find_upstream

    up = find_upstream()
    cfg_mod = __import__("model.configuration_llada", fromlist=["LLaDAConfig"])
    torch.manual_seed(0)
    cfg = cfg_mod.LLaDAConfig(
        d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=100, embedding_size=100,
        block_type="llama", rope=True, mask_token_id=99, eos_token_id=98, pad_token_id=98,
        max_sequence_length=256, include_bias=False, weight_tying=False, layer_norm_type="rms",
        activation_type="silu", mlp_ratio=2, attention_layer_norm=False, init_device="cpu",
        init_fn="normal", init_std=0.5, use_cache=False, flash_attention=False)
    model = up.model_class(cfg, init_params=True).eval()
    model.config.use_cache = False
    with torch.no_grad():
        model.model.transformer.ff_out.weight[99] = 0
    gen = up.generate_module
    fns = {"none": gen.generate, "prefix": gen.generate_with_prefix_cache, "dual": gen.generate_with_dual_cache}
    prompt = torch.randint(0, 90, (1, 10))
    for cache, fn in fns.items():
        for threshold in (None, 0.9, 0.3):
            ref, ref_nfe = fn(model, prompt, steps=32, gen_length=32, block_length=8, temperature=0.0,
                              remasking="low_confidence", mask_id=99, threshold=threshold)
            out = generate(model, prompt, steps=32, gen_length=32, block_length=8, threshold=threshold,
                           cache=cache)
            assert torch.equal(out.sequences, ref), (cache, threshold)
            assert out.total_nfe == ref_nfe


def test_from_pretrained_round_trip_is_exact(tmp_path, tiny_model):
    """Reloading must give the same logits (a non-persistent rotary buffer once broke this)."""
    from fastdllm_warmstart.models import TinyLLaDAModelLM

    tiny_model.save_pretrained(tmp_path)
    x = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    ref = tiny_model(x).logits
    for _ in range(2):
        again = TinyLLaDAModelLM.from_pretrained(tmp_path).eval()
        assert torch.equal(again(x).logits, ref)
