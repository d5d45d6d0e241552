"""Shared fixtures: tiny random-weight masked-diffusion models (no download)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (reference_loops, tiny_tokenizers)

from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM  # noqa: E402

torch.set_num_threads(1)  # tiny models: one thread is fastest and leaves the other core free

MASK, EOS, PAD = 2, 3, 0
VOCAB = 50


def make_tiny_model(seed: int = 0, vocab: int = VOCAB, dtype=torch.float32, d_model: int = 32,
                    n_layers: int = 2) -> TinyLLaDAModelLM:
    torch.manual_seed(seed)
    cfg = TinyLLaDAConfig(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=2,
                          mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD, init_std=0.5)
    model = TinyLLaDAModelLM(cfg).eval().to(dtype)
    with torch.no_grad():
        # Random weights should not make [MASK] the favourite: the reference oracle (like
        # upstream) would re-commit [MASK] forever. Logit 0 for it; others are spread widely.
        model.lm_head.weight[MASK] = 0
        model.lm_head.weight[PAD] = 0  # the engine never commits a dedicated [PAD] either
    return model


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def tiny_model64():
    return make_tiny_model(dtype=torch.float64)


def save_random_dllm(path, config_cls=TinyLLaDAConfig, model_cls=TinyLLaDAModelLM):
    """A random-weight tiny dLLM of ``model_cls`` (seed 0, 2 layers of width 32) with the project's
    dLLM tokenizer, saved as a checkpoint folder at ``path``."""
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    cfg = config_cls(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, mask_token_id=tok.mask_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model_cls(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def random_model_dirs(tmp_path_factory):
    """A random-weight tiny dLLM and aux model saved as checkpoints, with the project's real
    tokenizers: the full load -> propose -> decode path without needing the trained assets."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from fastdllm_warmstart.tokenization import build_aux_tokenizer

    root = tmp_path_factory.mktemp("models")
    save_random_dllm(root / "dllm")
    atok = build_aux_tokenizer()
    acfg = LlamaConfig(vocab_size=len(atok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       eos_token_id=atok.eos_token_id, pad_token_id=atok.pad_token_id,
                       bos_token_id=atok.bos_token_id)
    aux = LlamaForCausalLM(acfg)
    aux.generation_config.eos_token_id = atok.eos_token_id
    aux.generation_config.pad_token_id = atok.pad_token_id
    aux.save_pretrained(root / "aux")
    atok.save_pretrained(root / "aux")
    return {"dllm": str(root / "dllm"), "aux": str(root / "aux")}
