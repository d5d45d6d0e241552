"""``dream_warmstart``: Fast-dLLM dream/eval.py's model_args, on a tiny Dream-protocol checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from conftest import save_random_dllm  # noqa: E402

from fastdllm_warmstart.config import ConfigError  # noqa: E402
from fastdllm_warmstart.eval import main as eval_main  # noqa: E402
from fastdllm_warmstart.lm_eval_dream import DREAM_BLOCK_LENGTH, DreamWarmStartLM, dream_model_args  # noqa: E402
from fastdllm_warmstart.lm_eval_utils import EvalSettings  # noqa: E402
from fastdllm_warmstart.models import TinyDreamConfig, TinyDreamModelLM  # noqa: E402

# Fast-dLLM's dream/eval_gsm8k.sh "dual cache + parallel" model_args, with a tiny length.
UPSTREAM = {"max_new_tokens": "16", "diffusion_steps": "2", "add_bos_token": "true",
            "alg": "confidence_threshold", "threshold": "0.9", "use_cache": "true", "dual_cache": "true",
            "show_speed": "True"}


@pytest.fixture(scope="module")
def dream_path(tmp_path_factory):
    return save_random_dllm(tmp_path_factory.mktemp("tiny-dream"), TinyDreamConfig, TinyDreamModelLM)


def test_upstream_dream_names_mean_what_they_mean_upstream():
    args, add_bos = dream_model_args({"pretrained": "/m", **UPSTREAM, "max_new_tokens": "64",
                                      "trust_remote_code": "True", "alg_temp": "0.0", "top_p": "None",
                                      "escape_until": "False"})
    assert add_bos is True
    s = EvalSettings.from_model_args(args)
    assert s.model_path == "/m" and s.run.decode.gen_length == 64 and s.run.decode.steps == 2
    assert s.run.decode.block_length == DREAM_BLOCK_LENGTH
    assert s.run.decode.cache == "dual" and s.run.decode.threshold == 0.9 and s.show_speed
    prefix, _ = dream_model_args({"max_new_tokens": "256", "diffusion_steps": "8", "use_cache": "true"})
    assert EvalSettings.from_model_args(prefix).run.decode.cache == "prefix"
    assert EvalSettings.from_model_args(prefix).run.decode.block_length == DREAM_BLOCK_LENGTH


@pytest.mark.parametrize("args, expected", [
    ({"alg": "entropy"}, "alg=confidence_threshold"),
    ({"top_k": "5"}, "top_k=5 is not supported"),
    ({"pretrained": "/a", "model_path": "/b"}, "name the same setting"),
    ({"bogus": "1"}, "Unknown model_args"),
])
def test_bad_dream_model_args_are_clear_errors(args, expected):
    with pytest.raises(ConfigError, match=expected):
        EvalSettings.from_model_args(dream_model_args(args)[0])


@pytest.fixture(scope="module")
def dream_bos_path(dream_path, tmp_path_factory):
    """The tiny Dream checkpoint whose tokenizer names a BOS token (Dream's has one)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tiny-dream-bos")
    for f in Path(dream_path).iterdir():
        (root / f.name).write_bytes(f.read_bytes())
    tok = AutoTokenizer.from_pretrained(dream_path)
    tok.bos_token = tok.eos_token
    tok.save_pretrained(root)
    return str(root)


def test_add_bos_token_needs_a_bos_token(dream_path):
    with pytest.raises(ConfigError, match="no BOS token"):
        DreamWarmStartLM(pretrained=dream_path, device="cpu", max_new_tokens="16", diffusion_steps="2",
                         block_length="8", add_bos_token="true")


def test_generate_until_puts_bos_before_the_prompt(dream_bos_path):
    lm = DreamWarmStartLM(pretrained=dream_bos_path, device="cpu", max_new_tokens="16", diffusion_steps="2",
                          block_length="8", add_bos_token="true", use_cache="true", dual_cache="true")
    seen = []
    original = lm.runner.generate

    def spy(prompts, **kw):
        seen.extend(prompts)
        return original(prompts, **kw)

    lm.runner.generate = spy
    reqs = [Instance("generate_until", {}, ("Question: 1 + 1?\nAnswer:", {"until": ["Question:"]}), 0,
                     ("tinygsm", 0, 1))]
    answers = lm.generate_until(reqs)
    assert len(answers) == 1 and isinstance(answers[0], str)
    bos = lm.tokenizer.bos_token
    assert bos and seen == [bos + "Question: 1 + 1?\nAnswer:"]
    assert lm.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]["nfe_total"] >= 4  # 2 blocks x 2


def test_loglikelihood_reads_the_shifted_logits(dream_path):
    lm = DreamWarmStartLM(pretrained=dream_path, device="cpu", max_new_tokens="16", diffusion_steps="2",
                          block_length="8", mc_num="2", batch_size="2")
    ctx, cont = lm.tokenizer.encode("1 + 1 ="), lm.tokenizer.encode(" 2")
    shifted = lm._mc_loglikelihood(ctx, cont)
    lm.model.logit_shift = False  # the same model read as a mask predictor
    lm.model.config.model_type = "tiny_llada"
    try:
        assert lm._mc_loglikelihood(ctx, cont) != pytest.approx(shifted)
    finally:
        lm.model.config.model_type = "tiny_dream"
        lm.model.logit_shift = True


def _has_run_cli() -> bool:
    try:
        import lm_eval._cli.run  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.mark.skipif(not _has_run_cli(), reason="the eval command needs lm-eval 0.4.13")
def test_eval_command_takes_dream_warmstart(dream_bos_path, tmp_path, capsys):
    out = tmp_path / "out"
    args = ",".join(f"{k}={v}" for k, v in {**UPSTREAM, "pretrained": dream_bos_path, "block_length": "8"}.items())
    code = eval_main(["--model", "dream_warmstart", "--model_args", args, "--tasks", "tinygsm", "--limit", "2",
                      "--batch_size", "1", "--output_path", str(out), "--device", "cpu",
                      "--warm-init", "token", "--rho", "0.5"])
    assert code == 0
    results = json.loads(next(Path(out).glob("*/results_*.json")).read_text())
    assert "exact_match,strict-match" in results["results"]["tinygsm"]
    assert results["config"]["llada_warmstart"]["run_config"]["warm"]["warm_init"] == "token"
    capsys.readouterr()
    assert eval_main(["--model", "dream_warmstart", "--model_args", "alg=entropy", "--tasks", "tinygsm"]) == 2
    assert "alg=confidence_threshold" in capsys.readouterr().err
