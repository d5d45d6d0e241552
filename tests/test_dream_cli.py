"""Dream checkpoints through the front ends: generate / bench / trace with a tiny Dream-protocol
directory, and (with FAST_DLLM_PATH) a tiny DreamModel checkpoint of the checkout's own classes."""

import json
import os

import pytest
import torch

from conftest import save_random_dllm
from fastdllm_warmstart.cli import main
from fastdllm_warmstart.loading import ModelLoadError, check_cache_support, load_dllm
from fastdllm_warmstart.models import TinyDreamConfig, TinyDreamModelLM


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    """A random-weight tiny Dream-protocol checkpoint with the project's dLLM tokenizer."""
    return save_random_dllm(tmp_path_factory.mktemp("tiny-dream"), TinyDreamConfig, TinyDreamModelLM)


def test_generate_with_a_warm_start_and_remask(dream_dir, random_model_dirs, capsys):
    args = ["generate", "--model", dream_dir, "--prompt", "What is 3 + 4?", "--gen-length", "32",
            "--block-length", "16", "--json", "--device", "cpu"]
    assert main(args) == 0
    cold = json.loads(capsys.readouterr().out)["results"][0]
    # Dream's loop: a block costs its full forward and at least one cached forward.
    assert cold["nfe"] >= 4
    assert main(args + ["--warm-init", "token", "--rho", "1.0", "--remask", "--aux-model",
                        random_model_dirs["aux"]]) == 0
    warm = json.loads(capsys.readouterr().out)["results"][0]
    assert warm["warm"] and warm["injected"] == 32


def test_bench_and_trace_take_a_dream_dir(dream_dir, random_model_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FAST_DLLM_PATH", raising=False)  # the floor is Dream's, whatever LLaDA's loop
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", dream_dir, "--aux-model", random_model_dirs["aux"], "--limit", "2",
                 "--batch-size", "2", "--gen-length", "32", "--block-length", "16", "--modes",
                 "baseline,token+remask", "--json", str(out), "--quiet"]) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["mode"] for r in records] == ["aux_only", "baseline", "token+remask"]
    # two blocks of 16, each its full forward and at least one cached forward (Dream's loop)
    assert all(r["nfe_floor"] == 4 and r["mean_nfe"] >= 4 for r in records[1:])
    capsys.readouterr()
    raw = tmp_path / "trace.json"
    assert main(["trace", "--model", dream_dir, "--prompt", "What is 3 + 4?", "--gen-length", "32",
                 "--block-length", "16", "--device", "cpu", "--json", str(raw)]) == 0
    forwards = json.loads(raw.read_text())["traces"][0]["forwards"]
    assert len(forwards) >= 4  # two blocks, each its full forward and a cached one at least


@pytest.mark.skipif(not os.environ.get("FAST_DLLM_PATH"), reason="set FAST_DLLM_PATH to a Fast-dLLM checkout")
def test_a_dream_checkpoint_loads_through_the_checkout(tmp_path, capsys):
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from fastdllm_warmstart.upstream_dream import find_upstream_dream

    upstream = find_upstream_dream()
    tok = build_dllm_tokenizer()
    cfg = upstream.config_class(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                mask_token_id=tok.mask_token_id, pad_token_id=tok.eos_token_id,
                                eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    upstream.model_class(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _, _ = load_dllm(str(tmp_path), device="cpu")
    assert isinstance(model, upstream.model_class)
    for cache in ("prefix", "dual"):
        check_cache_support(model, cache)
        assert main(["generate", "--model", str(tmp_path), "--prompt", "What is 3 + 4?", "--gen-length", "16",
                     "--block-length", "8", "--cache", cache, "--json", "--device", "cpu"]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["nfe"] >= 4


def test_a_dream_model_from_its_own_code_runs_without_cache_only():
    class HubDream(torch.nn.Module):  # what trust_remote_code gives: not the checkout's class
        config = type("C", (), {"model_type": "Dream"})()

        def forward(self, input_ids=None, past_key_values=None, use_cache=None, replace_position=None):
            raise AssertionError("not called")

    check_cache_support(HubDream(), "none")
    with pytest.raises(ModelLoadError, match="FAST_DLLM_PATH"):
        check_cache_support(HubDream(), "prefix")
