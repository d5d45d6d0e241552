"""Dream parity with the user's Fast-dLLM checkout: tokens and forward counts of
``DreamGenerationMixin.diffusion_generate`` (the threshold, block and dual-cache loop its eval.py
binds onto ``DreamModel``) against the engine, on a tiny random-weight ``DreamModel`` built from the
checkout's own classes, in both layouts (``dream/`` and ``v1/dream/``).

Upstream's threshold loop commits by row 0's decisions, so single prompts are compared with
upstream and a batch with the engine's own batch-1 decoding. Skipped without FAST_DLLM_PATH."""

import os
import shutil
import types

import pytest
import torch

from fastdllm_warmstart import generate
from fastdllm_warmstart.upstream_dream import _import_dream, dream_dir, find_upstream_dream

pytestmark = pytest.mark.skipif(
    not os.environ.get("FAST_DLLM_PATH") or dream_dir(os.environ.get("FAST_DLLM_PATH", ".")) is None,
    reason="set FAST_DLLM_PATH to a Fast-dLLM checkout with its Dream model")

V, MASK, EOS, BOS = 300, 299, 297, 296
GEN, BLOCK = 24, 8


@pytest.fixture(scope="module", params=["dream", "v1/dream"])
def upstream(request, tmp_path_factory):
    """The checkout's Dream as found in the June-2025 layout, or in today's (a temporary root
    whose v1/dream is a copy of the checkout's dream folder)."""
    source = dream_dir(os.environ["FAST_DLLM_PATH"])
    if request.param == "dream":
        root = source.parent
    else:
        root = tmp_path_factory.mktemp("checkout")
        shutil.copytree(source, root / "v1" / "dream", ignore=shutil.ignore_patterns("__pycache__"))
    found = find_upstream_dream(str(root))
    assert found.root == (root / request.param).resolve()
    return found


def tiny_dream(upstream, seed):
    cfg = upstream.config_class(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                mask_token_id=MASK, pad_token_id=EOS, eos_token_id=EOS, bos_token_id=BOS)
    torch.manual_seed(seed)
    model = upstream.model_class(cfg).eval()
    with torch.no_grad():
        # Peaked predictions, so that some steps commit several tokens at threshold 0.9 (random
        # initialisation gives near-uniform ones); the [MASK] row is never a likely prediction.
        model.lm_head.weight.mul_(400.0)
        model.lm_head.weight[MASK] = 0
    return model


class ForwardCounter:
    def __init__(self, model):
        self.n = 0
        model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += 1


def upstream_generate(upstream, model, prompt, dual_cache, block=BLOCK):
    mixin = upstream.generation_mixin
    model.diffusion_generate = types.MethodType(mixin.diffusion_generate, model)  # as its eval.py
    model._sample = types.MethodType(mixin._sample, model)
    config = upstream.generation_config_class(mask_token_id=MASK, pad_token_id=EOS, eos_token_id=EOS,
                                              bos_token_id=BOS)
    out = model.diffusion_generate(prompt, generation_config=config, max_new_tokens=GEN,
                                   steps=GEN // block, alg="confidence_threshold", threshold=0.9,
                                   block_length=block, dual_cache=dual_cache, temperature=0.0,
                                   return_dict_in_generate=True, output_history=False)
    return out.sequences


@pytest.mark.parametrize("dual_cache", [False, True])
@pytest.mark.parametrize("seed,block", [(0, BLOCK), (1, BLOCK), (2, BLOCK), (0, 1)])
def test_tokens_and_forwards_match_upstream(upstream, dual_cache, seed, block):
    """block 1: the full forward fills the block, and Dream still runs one cached forward."""
    model = tiny_dream(upstream, seed)
    prompt = torch.randint(0, 290, (1, 5 + seed), generator=torch.Generator().manual_seed(seed))
    counter = ForwardCounter(model)
    expected = upstream_generate(upstream, model, prompt, dual_cache, block)
    upstream_forwards, counter.n = counter.n, 0
    assert not (expected == MASK).any()  # upstream finished (it never commits [MASK] here)
    # loop_variant describes LLaDA's generate.py; Dream's cache semantics come from its protocol.
    ours = generate(model, prompt, steps=GEN // block, gen_length=GEN, block_length=block, threshold=0.9,
                    cache="dual" if dual_cache else "prefix", loop_variant="current")
    assert torch.equal(ours.sequences, expected)
    assert ours.total_nfe == counter.n == upstream_forwards
    if block > 1:
        assert upstream_forwards < GEN + GEN // block  # some forward committed several tokens


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_batch_decodes_as_each_prompt_alone(upstream, cache):
    model = tiny_dream(upstream, 3)
    prompts = torch.randint(0, 290, (3, 6), generator=torch.Generator().manual_seed(3))
    kw = dict(steps=GEN // BLOCK, gen_length=GEN, block_length=BLOCK, threshold=0.9, cache=cache)
    batch = generate(model, prompts, **kw)
    for r in range(3):
        one = generate(model, prompts[r:r + 1], **kw)
        assert torch.equal(batch.sequences[r], one.sequences[0])
        assert int(batch.nfe[r]) == int(one.nfe[0])


def test_checkout_import_is_cached_and_private(upstream):
    assert _import_dream(upstream.root) is _import_dream(upstream.root)
    assert upstream.model_class.__module__.startswith("fast_dllm_dream_")
