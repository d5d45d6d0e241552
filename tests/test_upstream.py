"""Finding a user's Fast-dLLM checkout and using its commit rule (with a fake checkout)."""

import sys
import textwrap

import pytest
import torch

from conftest import VOCAB
from fastdllm_warmstart import generate
from fastdllm_warmstart.upstream import (UpstreamError, _import_checkout, detect_loop_variant,
                                         detect_replace_position_rows, find_upstream, llada_dir)

FAKE_GENERATE = textwrap.dedent('''
    from {dot}model.modeling_llada import LLaDAModelLM  # both import styles occur upstream
    CALLS = []

    def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
        import fastdllm_warmstart.engine.transfer as t
        CALLS.append(threshold)
        return t.get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold)

    def get_transfer_index_dynamic(logits, temperature, remasking, mask_index, x, num_transfer_tokens, factor=1):
        import fastdllm_warmstart.engine.transfer as t
        CALLS.append(("factor", factor))
        return t.get_transfer_index_dynamic(logits, temperature, remasking, mask_index, x, None, factor)
''')

# Hand-written loop skeletons (not upstream code) in the two shapes the detector must tell apart.
LOOP_CHECK_FIRST = textwrap.dedent('''
    def generate_with_dual_cache(model, prompt):
        for block in range(3):
            full_forward()
            while True:
                if no_masks_left():
                    break
                cached_forward()
''')
LOOP_FORWARD_FIRST = textwrap.dedent('''
    def generate_with_prefix_cache(model, prompt):
        for block in range(3):
            full_forward()
            while True:
                cached_forward()
                if no_masks_left():
                    break
''')


@pytest.fixture
def fake_checkout(tmp_path):
    def make(layout, relative=False, modeling="class LLaDAModelLM:\n    pass\n", extra=""):
        root = tmp_path / f"{layout}{'-rel' if relative else ''}"
        llada = root / ("v1/llada" if layout == "v2" else "llada")
        (llada / "model").mkdir(parents=True)
        (llada / "generate.py").write_text(FAKE_GENERATE.format(dot="." if relative else "") + extra)
        (llada / "model" / "__init__.py").write_text("")
        (llada / "model" / "modeling_llada.py").write_text(modeling)
        return root
    _import_checkout.cache_clear()
    yield make
    _import_checkout.cache_clear()
    for name in list(sys.modules):
        if name in ("model", "model.modeling_llada") or name.startswith("fast_dllm_upstream_"):
            sys.modules.pop(name, None)  # the fake must not leak into other tests


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_finds_both_layouts_and_import_styles(fake_checkout, layout, relative):
    root = fake_checkout(layout, relative=relative)
    assert llada_dir(root) is not None
    up = find_upstream(str(root))
    assert up.get_transfer_index is not None and up.model_class.__name__ == "LLaDAModelLM"
    assert up.get_transfer_index_dynamic is not None


def test_detects_the_loop_variant_and_replace_position_rows():
    assert detect_loop_variant(LOOP_CHECK_FIRST) == "current"
    assert detect_loop_variant(LOOP_FORWARD_FIRST) == "snapshot-2025-06"
    assert detect_loop_variant("def generate(model, prompt):\n    pass\n") is None
    assert detect_loop_variant("def broken(:") is None
    per_row = "for b in range(n):\n    idx = replace_position[b].nonzero()\n"
    pooled = "idx = replace_position.nonzero(as_tuple=True)[1]\n"
    assert detect_replace_position_rows(per_row) == "batch"
    assert detect_replace_position_rows(pooled) == "shared"
    assert detect_replace_position_rows("no cache here") == "batch"


def test_checkout_variant_is_followed(fake_checkout, monkeypatch, tiny_model):
    """loop_variant=auto reproduces the found checkout's loop; an explicit value wins."""
    root = fake_checkout("v1", extra=LOOP_FORWARD_FIRST,
                         modeling="def attend(replace_position):\n"
                                  "    return replace_position.nonzero(as_tuple=True)[1]\n"
                                  "class LLaDAModelLM:\n    pass\n")
    monkeypatch.setenv("FAST_DLLM_PATH", str(root))
    up = find_upstream()
    assert (up.loop_variant, up.replace_position_rows) == ("snapshot-2025-06", "shared")
    kw = dict(steps=32, gen_length=32, block_length=8, threshold=0.3, cache="dual")
    prompt = torch.randint(4, VOCAB, (1, 7), generator=torch.Generator().manual_seed(1))
    auto = generate(tiny_model, prompt, **kw)
    assert auto.loop_variant == "snapshot-2025-06" and auto.total_nfe == 8
    assert generate(tiny_model, prompt, loop_variant="current", **kw).total_nfe == 4
    assert generate(tiny_model, prompt, use_upstream=False, **kw).loop_variant == "current"


def test_env_var_and_bad_path(fake_checkout, monkeypatch, tmp_path):
    root = fake_checkout("v1")
    monkeypatch.setenv("FAST_DLLM_PATH", str(root))
    assert find_upstream() is not None
    monkeypatch.setenv("FAST_DLLM_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(UpstreamError, match="FAST_DLLM_PATH"):
        find_upstream()


def test_absent_checkout_means_builtin(monkeypatch):
    monkeypatch.delenv("FAST_DLLM_PATH", raising=False)
    assert find_upstream() is None


def test_generate_uses_upstream_commit_rule_when_found(fake_checkout, monkeypatch, tiny_model):
    root = fake_checkout("v1")
    monkeypatch.setenv("FAST_DLLM_PATH", str(root))
    up = find_upstream()
    prompt = torch.randint(4, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    out = generate(tiny_model, prompt, steps=16, gen_length=16, block_length=8, threshold=0.9, cache="dual")
    assert len(up.generate_module.CALLS) == out.total_nfe > 0
    factor = generate(tiny_model, prompt, steps=16, gen_length=16, block_length=8, factor=1.5, cache="dual")
    assert up.generate_module.CALLS[out.total_nfe:] == [("factor", 1.5)] * factor.total_nfe
    monkeypatch.delenv("FAST_DLLM_PATH")
    plain = generate(tiny_model, prompt, steps=16, gen_length=16, block_length=8, threshold=0.9, cache="dual")
    assert torch.equal(out.sequences, plain.sequences)


@pytest.mark.skipif(not __import__("os").environ.get("FAST_DLLM_PATH"),
                    reason="set FAST_DLLM_PATH to a Fast-dLLM checkout")
def test_loads_llada_checkpoint_through_checkout(tmp_path):
    """A LLaDA checkpoint loads with the checkout's LLaDAModelLM (transformers 5 shim) and decodes."""
    from fastdllm_warmstart import configs_from_flat
    from fastdllm_warmstart.loading import load_dllm
    from fastdllm_warmstart.runner import WarmStartRunner
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    up = find_upstream()
    tok = build_dllm_tokenizer()
    cfg = up.config_class(
        d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64, vocab_size=len(tok), embedding_size=len(tok),
        block_type="llama", rope=True, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id, max_sequence_length=256, include_bias=False, weight_tying=False,
        layer_norm_type="rms", activation_type="silu", mlp_ratio=2, attention_layer_norm=False,
        init_device="cpu", init_fn="normal", init_std=0.5, use_cache=False, flash_attention=False)
    up.model_class(cfg, init_params=True).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tokenizer, _ = load_dllm(str(tmp_path))
    assert model.config.mask_token_id == tok.mask_token_id
    for cache in ("none", "prefix", "dual"):
        runner = WarmStartRunner(model, tokenizer, configs_from_flat(cache=cache, gen_length=16, block_length=8))
        assert runner.generate(["Question: Tom has 3 apples.\nAnswer:"])[0].nfe >= 1
