"""Finding a user's Fast-dLLM checkout and using its commit rule (with a fake checkout)."""

import sys
import textwrap

import pytest
import torch

from conftest import VOCAB
from fastdllm_warmstart import generate
from fastdllm_warmstart.upstream import UpstreamError, _import_checkout, find_upstream, llada_dir

FAKE_GENERATE = textwrap.dedent('''
    from model.modeling_llada import LLaDAModelLM  # resolved relative to the checkout, as upstream
    CALLS = []

    def get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
        import fastdllm_warmstart.engine.transfer as t
        CALLS.append(threshold)
        return t.get_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold)
''')


@pytest.fixture
def fake_checkout(tmp_path):
    def make(layout):
        root = tmp_path / layout
        llada = root / ("v1/llada" if layout == "v2" else "llada")
        (llada / "model").mkdir(parents=True)
        (llada / "generate.py").write_text(FAKE_GENERATE)
        (llada / "model" / "__init__.py").write_text("")
        (llada / "model" / "modeling_llada.py").write_text("class LLaDAModelLM:\n    pass\n")
        return root
    _import_checkout.cache_clear()
    yield make
    _import_checkout.cache_clear()
    for name in ("model", "model.modeling_llada", "fast_dllm_upstream_generate"):
        sys.modules.pop(name, None)  # the fake must not leak into other tests


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_finds_both_layouts(fake_checkout, layout):
    root = fake_checkout(layout)
    assert llada_dir(root) is not None
    up = find_upstream(str(root))
    assert up.get_transfer_index is not None and up.model_class.__name__ == "LLaDAModelLM"


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
    cfg_mod = sys.modules["model.configuration_llada"]
    tok = build_dllm_tokenizer()
    cfg = cfg_mod.LLaDAConfig(
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
        assert runner.generate(["Question: Tom has 3 apples.\nAnswer:"])[0].nfe >= 2
