"""Tests of the auxiliary proposer (fastdllm_warmstart.auxiliary), CPU only, tiny local models."""

from __future__ import annotations

import json
import logging
from typing import Callable, List, Optional

import pytest
import torch
from tiny_tokenizers import (CHAT_TEMPLATE, build_aux_model, build_aux_tokenizer,
                             build_dllm_tokenizer)

from fastdllm_warmstart.auxiliary import (AuxProposer, FileProposals, Proposal, ProposalCache,
                                          ProposalError, Proposer, align_to_canvas, build_proposer)
from fastdllm_warmstart.jsonl_store import InputFileError
from fastdllm_warmstart.config import AuxConfig, ConfigError

PROMPTS = [
    "Question : Tom has 3 apples .",
    "Question : Ann has 17 pears and she eats 4 . How many pears does Ann have now ?",
    "Tom",
    "Question : How many apples does Tom have now ? 12 + 5",
    "Ann buys 2 more apples .",
]
GEN_LENGTH = 8


@pytest.fixture
def dllm_tok():
    return build_dllm_tokenizer()


@pytest.fixture
def aux_tok():
    return build_aux_tokenizer()


def dllm_ids(tok, tokens: List[str]) -> List[int]:
    ids = tok.convert_tokens_to_ids(tokens)
    assert tok.unk_token_id not in ids, tokens  # the expectation itself must be in-vocabulary
    return ids


def record_generate(model, hook: Optional[Callable] = None) -> list:
    """Wrap ``model.generate``; returns the list of recorded calls (input_ids, attention_mask)."""
    calls = []
    real = model.generate

    def generate(*args, **kwargs):
        calls.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        if hook is not None:
            hook(kwargs["input_ids"])
        return real(*args, **kwargs)

    model.generate = generate
    return calls


def scripted_generate(model, tokenizer, answer_for: Callable[[str], List[int]]) -> None:
    """Replace ``model.generate`` by one that appends ``answer_for(prompt)`` ids (+ pad) per row."""
    def generate(input_ids, attention_mask, generation_config):
        rows = [answer_for(tokenizer.decode(ids[mask.bool()], skip_special_tokens=True))
                for ids, mask in zip(input_ids, attention_mask)]
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    model.generate = generate


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> List[List[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


# ---------------------------------------------------------------------------------------------
# align_to_canvas
# ---------------------------------------------------------------------------------------------

def test_align_cross_tokenizer_digit_split_to_whole_numbers(dllm_tok, aux_tok):
    source = "7 + 5 = 12 .\n#### 12"
    aux_ids = aux_tok.encode(source, add_special_tokens=False)
    assert aux_tok.convert_ids_to_tokens(aux_ids).count("##2") == 2  # the aux really splits "12"
    text = aux_tok.decode(aux_ids, skip_special_tokens=True)
    expected = dllm_ids(dllm_tok, ["7", "+", "5", "=", "12", ".", "####", "12"])
    eos = dllm_tok.eos_token_id

    canvas = align_to_canvas(text, dllm_tok, 12)
    assert canvas == expected + [eos] * 4
    assert align_to_canvas(text, dllm_tok, 8) == expected           # exact fit: no tail
    assert align_to_canvas(text, dllm_tok, 5) == expected[:5]       # truncated


def test_align_with_the_project_tokenizers_on_a_tinygsm_answer():
    from fastdllm_warmstart.tokenization import build_aux_tokenizer as project_aux
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer as project_dllm

    dllm, aux = project_dllm(), project_aux()
    answer = "15 - 2 = 13 . 13 + 1 = 14 . 14 + 6 = 20 .\n#### 20"
    text = aux.decode(aux.encode(answer, add_special_tokens=False), skip_special_tokens=True)
    expected = dllm.encode(answer, add_special_tokens=False)
    assert dllm.unk_token_id not in expected
    assert align_to_canvas(text, dllm, 48) == expected + [dllm.eos_token_id] * (48 - len(expected))


def test_align_errors(dllm_tok):
    with pytest.raises(ProposalError, match="eos"):
        align_to_canvas("7 + 5 = 12", build_dllm_tokenizer(with_eos=False), 8)
    for text in ("", "   \n"):
        with pytest.raises(ProposalError, match="no dLLM tokens"):
            align_to_canvas(text, dllm_tok, 8)
    with pytest.raises(ProposalError, match="mask"):
        align_to_canvas("12 [MASK] 3", dllm_tok, 8)
    with pytest.raises(ProposalError, match="pad"):
        align_to_canvas("12 [PAD]", dllm_tok, 8)
    with pytest.raises(ValueError, match="gen_length"):
        align_to_canvas("12", dllm_tok, 0)


# ---------------------------------------------------------------------------------------------
# AuxProposer: batching, chat template
# ---------------------------------------------------------------------------------------------

def test_batched_greedy_equals_one_by_one(dllm_tok, aux_tok):
    model = build_aux_model(aux_tok)
    lengths = {len(aux_tok.encode(p)) for p in PROMPTS}
    assert len(lengths) >= 4  # prompts of different lengths: rows really get padded
    assert aux_tok.padding_side == "right"  # the proposer itself must switch to left padding

    batched = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", batch_size=4)
    together = batched.propose(PROMPTS, GEN_LENGTH)
    single = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", batch_size=1)
    alone = [single.propose([p], GEN_LENGTH)[0] for p in PROMPTS]

    assert all(p.ok and p.source == "aux" for p in together), together
    assert [p.text for p in together] == [p.text for p in alone]
    assert [p.token_ids for p in together] == [p.token_ids for p in alone]
    assert [p.aux_tokens for p in together] == [p.aux_tokens for p in alone]
    assert all(len(p.token_ids) == GEN_LENGTH for p in together)
    assert all(0 < p.aux_tokens <= 2 * GEN_LENGTH for p in together)
    # The batch's time is split evenly over its prompts: batches of 4 and 1.
    assert together[0].aux_seconds == together[3].aux_seconds > 0
    assert not model.training


def test_new_tokens_decoded_and_counted_up_to_eos(dllm_tok, aux_tok):
    model = build_aux_model(aux_tok)
    answer = aux_tok.encode("12 + 5 = 17", add_special_tokens=False)
    tail = [aux_tok.eos_token_id, aux_tok.pad_token_id]
    scripted_generate(model, aux_tok, lambda prompt: answer + tail if "Tom" in prompt else tail)
    out = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny").propose(PROMPTS[:2], GEN_LENGTH)
    assert out[0].ok and out[0].text == "12 + 5 = 17"
    assert out[0].aux_tokens == len(answer)
    assert out[0].token_ids == dllm_ids(dllm_tok, ["12", "+", "5", "=", "17"]) \
        + [dllm_tok.eos_token_id] * 3
    assert not out[1].ok and "empty" in out[1].error and out[1].token_ids is None


def test_chat_template_used_when_present(dllm_tok):
    aux_tok = build_aux_tokenizer(chat_template=CHAT_TEMPLATE)
    model = build_aux_model(aux_tok)
    calls = record_generate(model)
    proposer = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny")
    assert proposer.use_chat_template
    proposer.propose(PROMPTS[:2], GEN_LENGTH)

    rendered = [aux_tok.apply_chat_template([{"role": "user", "content": p}],
                                            add_generation_prompt=True, tokenize=False)
                for p in PROMPTS[:2]]
    assert all(r.startswith("User : ") and r.endswith("Assistant :") for r in rendered)
    expected = [aux_tok.encode(r, add_special_tokens=False) for r in rendered]
    (ids, mask), = calls
    assert unpadded(ids, mask) == expected

    calls.clear()
    AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", chat_template=False) \
        .propose(PROMPTS[:2], GEN_LENGTH)
    (ids, mask), = calls
    assert unpadded(ids, mask) == [aux_tok.encode(p) for p in PROMPTS[:2]]


def test_chat_template_not_used_when_absent(dllm_tok, aux_tok):
    model = build_aux_model(aux_tok)
    calls = record_generate(model)
    proposer = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny")
    assert not proposer.use_chat_template
    proposer.propose(PROMPTS[:2], GEN_LENGTH)
    (ids, mask), = calls
    assert unpadded(ids, mask) == [aux_tok.encode(p) for p in PROMPTS[:2]]
    with pytest.raises(ConfigError, match="chat template"):
        AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", chat_template=True)


def test_constructor_validation(dllm_tok, aux_tok):
    model = build_aux_model(aux_tok)
    with pytest.raises(ProposalError, match="eos"):
        AuxProposer(model, aux_tok, build_dllm_tokenizer(with_eos=False), model_id="tiny")
    with pytest.raises(ConfigError, match="aux_batch_size"):
        AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", batch_size=0)
    aux_no_pad = build_aux_tokenizer()
    aux_no_pad.pad_token = None
    AuxProposer(model, aux_no_pad, dllm_tok, model_id="tiny")
    assert aux_no_pad.pad_token == aux_no_pad.eos_token and aux_no_pad.padding_side == "left"


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------

def test_cache_reuse_and_setting_miss(tmp_path, dllm_tok, aux_tok):
    path = tmp_path / "cache" / "proposals.jsonl"
    model = build_aux_model(aux_tok)
    calls = record_generate(model)

    def proposer(max_new_tokens):
        return AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", batch_size=2,
                           max_new_tokens=max_new_tokens, cache=ProposalCache(path))

    first = proposer(6).propose(PROMPTS[:3], GEN_LENGTH)
    assert len(calls) == 2 and all(p.source == "aux" and p.ok for p in first)
    second = proposer(6).propose(PROMPTS[:3], GEN_LENGTH)  # reloaded from disk
    assert len(calls) == 2, "cache hits must not call the model"
    assert [p.source for p in second] == ["cache"] * 3
    for a, b in zip(first, second):
        assert (a.text, a.token_ids, a.aux_tokens) == (b.text, b.token_ids, b.aux_tokens)
        assert b.aux_seconds == 0.0
    # The cache holds text: the same entries serve another canvas length.
    longer = proposer(6).propose(PROMPTS[:3], 2 * GEN_LENGTH)
    assert len(calls) == 2 and all(len(p.token_ids) == 2 * GEN_LENGTH for p in longer)
    # A different generation setting is a different key.
    proposer(7).propose(PROMPTS[:1], GEN_LENGTH)
    assert len(calls) == 3
    assert len(ProposalCache(path)) == 4


def test_cache_tolerates_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "proposals.jsonl"
    cache = ProposalCache(path)
    key_a = cache.key("a", "m", {"max_new_tokens": 4})
    cache.put(key_a, {"text": "1 + 2 = 3", "aux_tokens": 5, "aux_seconds": 0.1})
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"key": "deadbeef", "text": "4 +')  # a killed run's half-written line

    with caplog.at_level(logging.WARNING, logger="fastdllm_warmstart.jsonl_store"):
        reloaded = ProposalCache(path)
    assert "cut-off last line 2" in caplog.text and str(path) in caplog.text
    assert reloaded.get(key_a)["text"] == "1 + 2 = 3" and len(reloaded) == 1

    key_b = reloaded.key("b", "m", {"max_new_tokens": 4})
    reloaded.put(key_b, {"text": "5", "aux_tokens": 1, "aux_seconds": 0.0})
    again = ProposalCache(path)  # the new record starts on its own line
    assert again.get(key_b)["text"] == "5" and again.get(key_a) is not None


def test_cache_key_covers_prompt_model_and_settings():
    key = ProposalCache.key
    base = key("p", "m", {"max_new_tokens": 4, "chat_template": False})
    assert base == key("p", "m", {"chat_template": False, "max_new_tokens": 4})
    assert len({base, key("q", "m", {"max_new_tokens": 4, "chat_template": False}),
                key("p", "n", {"max_new_tokens": 4, "chat_template": False}),
                key("p", "m", {"max_new_tokens": 4, "chat_template": True})}) == 4


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------

def test_generation_failure_isolated_to_its_prompt(dllm_tok, aux_tok, caplog):
    model = build_aux_model(aux_tok)
    poison = aux_tok.convert_tokens_to_ids("pears")  # only in PROMPTS[1]

    def explode(input_ids):
        if (input_ids == poison).any():
            raise RuntimeError("simulated CUDA OOM")

    record_generate(model, explode)
    with caplog.at_level(logging.WARNING, logger="fastdllm_warmstart.auxiliary.alignment"):
        out = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", batch_size=4) \
            .propose(PROMPTS, GEN_LENGTH)
    assert [p.ok for p in out] == [True, False, True, True, True]
    assert "simulated CUDA OOM" in out[1].error and out[1].token_ids is None
    assert out[1].text is None
    assert "prompt 1 " in caplog.text and "simulated CUDA OOM" in caplog.text
    reference = AuxProposer(build_aux_model(aux_tok), aux_tok, dllm_tok, model_id="tiny") \
        .propose([PROMPTS[0], PROMPTS[4]], GEN_LENGTH)
    assert [out[0].text, out[4].text] == [p.text for p in reference]


def test_no_exception_escapes_and_failures_are_not_cached(tmp_path, dllm_tok, aux_tok):
    model = build_aux_model(aux_tok)

    def always(input_ids):
        raise ValueError("broken aux")

    record_generate(model, always)
    cache = ProposalCache(tmp_path / "c.jsonl")
    out = AuxProposer(model, aux_tok, dllm_tok, model_id="tiny", cache=cache) \
        .propose(PROMPTS[:3], GEN_LENGTH)
    assert [p.ok for p in out] == [False] * 3
    assert all("broken aux" in p.error for p in out)
    assert len(cache) == 0


# ---------------------------------------------------------------------------------------------
# FileProposals
# ---------------------------------------------------------------------------------------------

def write_jsonl(path, lines: List[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_file_proposals_hit_miss_and_unalignable(tmp_path, dllm_tok):
    path = tmp_path / "proposals.jsonl"
    write_jsonl(path, [json.dumps({"prompt": PROMPTS[0], "proposal": "3 + 2 = 5 .\n#### 5"}),
                       "",
                       json.dumps({"prompt": PROMPTS[1], "proposal": "[MASK]"})])
    out = FileProposals(path, dllm_tok).propose([PROMPTS[0], PROMPTS[1], "unknown"], GEN_LENGTH)
    assert out[0] == Proposal(prompt=PROMPTS[0], text="3 + 2 = 5 .\n#### 5",
                              token_ids=align_to_canvas("3 + 2 = 5 .", dllm_tok, GEN_LENGTH)[:6]
                              + dllm_ids(dllm_tok, ["####", "5"]),
                              ok=True, error=None, aux_seconds=0.0, aux_tokens=0, source="file")
    assert not out[1].ok and "mask" in out[1].error
    assert not out[2].ok and out[2].error == "no proposal for this prompt"
    assert out[2].source == "file"


def test_file_proposals_match_prompts_whatever_their_spacing(tmp_path, dllm_tok):
    path = tmp_path / "proposals.jsonl"
    write_jsonl(path, [json.dumps({"prompt": "Question: Tom has 3 apples.\nAnswer:", "proposal": "3"})])
    decoded = "Question : Tom has 3 apples .\nAnswer :"  # a prompt decoded from token ids
    out, other = FileProposals(path, dllm_tok).propose([decoded, "Question: Tom has 4 apples."], GEN_LENGTH)
    assert out.ok and out.text == "3"
    assert not other.ok


def test_file_proposals_errors_name_file_line_and_field(tmp_path, dllm_tok):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileProposals(tmp_path / "missing.jsonl", dllm_tok)
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [json.dumps({"prompt": "a", "proposal": "1"}), "",
                      '{"prompt": "b", "proposal": '])
    with pytest.raises(InputFileError, match=r"bad\.jsonl, line 3: not valid JSON") as caught:
        FileProposals(bad, dllm_tok)
    assert isinstance(caught.value, ProposalError)  # the lm-eval model turns these into one line
    write_jsonl(bad, [json.dumps({"prompt": "a", "answer": "1"})])
    with pytest.raises(InputFileError, match=r"bad\.jsonl, line 1: .*no 'proposal' field"):
        FileProposals(bad, dllm_tok)
    write_jsonl(bad, [json.dumps({"prompt": "a", "proposal": 7})])
    with pytest.raises(InputFileError, match=r"line 1: field 'proposal' must be a string, got 7"):
        FileProposals(bad, dllm_tok)
    write_jsonl(bad, [json.dumps({"prompt": "a", "proposal": "1"}),
                      json.dumps({"prompt": "b", "proposal": "2"}),
                      json.dumps({"prompt": " a ", "proposal": "3"})])
    with pytest.raises(InputFileError, match=r"line 3: field 'prompt' repeats the prompt of line 1"):
        FileProposals(bad, dllm_tok)


def test_cache_with_another_files_lines_is_refused_naming_line_and_field(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = ProposalCache(path)
    cache.put(cache.key("a", "m", {}), {"text": "1 + 2 = 3"})
    with path.open("a", encoding="utf-8") as handle:  # a proposals file's line, not a cache line
        handle.write(json.dumps({"prompt": "b", "proposal": "2"}) + "\n")
    with pytest.raises(InputFileError, match=r"cache\.jsonl, line 2: .*no 'key' field"):
        ProposalCache(path)


def test_every_proposer_follows_the_protocol(tmp_path, dllm_tok, aux_tok):
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [json.dumps({"prompt": "a", "proposal": "1"})])
    aux = AuxProposer(build_aux_model(aux_tok), aux_tok, dllm_tok, model_id="tiny")
    assert isinstance(aux, Proposer) and isinstance(FileProposals(path, dllm_tok), Proposer)
    assert not isinstance(object(), Proposer)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def test_from_pretrained_local_dir_and_build_proposer(tmp_path, dllm_tok, aux_tok):
    model = build_aux_model(aux_tok)
    model_dir = tmp_path / "aux"
    model.save_pretrained(model_dir)
    aux_tok.save_pretrained(model_dir)
    config = AuxConfig(aux_model=str(model_dir), aux_max_new_tokens=6,
                       proposal_cache=str(tmp_path / "cache.jsonl"))

    loaded = build_proposer(config, dllm_tok)
    assert isinstance(loaded, AuxProposer) and loaded.cache is not None
    assert not loaded.model.training and loaded.tokenizer.padding_side == "left"
    reference = AuxProposer(model, aux_tok, dllm_tok, model_id="x", max_new_tokens=6)
    assert [p.text for p in loaded.propose(PROMPTS[:2], GEN_LENGTH)] == \
        [p.text for p in reference.propose(PROMPTS[:2], GEN_LENGTH)]

    half = AuxProposer.from_pretrained(model_dir, dllm_tok, config=config, dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16

    file_config = AuxConfig(proposals=str(tmp_path / "p.jsonl"))
    write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "a", "proposal": "1"})])
    assert isinstance(build_proposer(file_config, dllm_tok), FileProposals)


def test_from_pretrained_errors_name_the_fix(tmp_path, dllm_tok):
    from transformers import DistilBertConfig

    with pytest.raises(FileNotFoundError, match="aux_model"):
        AuxProposer.from_pretrained(tmp_path / "nope", dllm_tok, config=AuxConfig())
    with pytest.raises(FileNotFoundError, match="config.json"):
        AuxProposer.from_pretrained(tmp_path, dllm_tok, config=AuxConfig())
    not_causal = tmp_path / "bert"
    DistilBertConfig(vocab_size=64, dim=32, hidden_dim=64, n_layers=1, n_heads=2) \
        .save_pretrained(not_causal)
    with pytest.raises(ConfigError, match="causal language model"):
        AuxProposer.from_pretrained(not_causal, dllm_tok, config=AuxConfig())


def test_embedded_tiny_aux_loads():
    from fastdllm_warmstart.assets import AUX_NAME, asset_path
    from fastdllm_warmstart.tasks.tinygsm import format_prompt, load_jsonl, default_split_path
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer as project_dllm

    try:
        asset_path(AUX_NAME)
    except FileNotFoundError as exc:
        pytest.skip(f"embedded tiny-aux model not built yet: {exc}")
    dllm = project_dllm()
    proposer = AuxProposer.from_pretrained(None, dllm, config=AuxConfig(aux_max_new_tokens=64))
    assert proposer.model_id.startswith("embedded:tiny-aux@")
    problem = load_jsonl(default_split_path("test"))[0]
    out, = proposer.propose([format_prompt(problem["question"])], 48)
    assert out.source == "aux" and out.ok, out
    assert len(out.token_ids) == 48 and out.aux_tokens > 0


@pytest.mark.parametrize("flag, line", [
    ("--proposals", json.dumps({"prompt": "Question: a\nAnswer:", "answer": "1"})),
    ("--proposal-cache", json.dumps({"prompt": "a", "proposal": "1"})),
])
def test_a_malformed_proposals_file_or_cache_stops_the_cli_with_one_line(tmp_path, capsys, flag, line):
    from fastdllm_warmstart.cli import main

    path = tmp_path / "file.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    assert main(["generate", "--prompt", "Tom has 3 apples.", "--warm-init", "token", flag, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.jsonl, line 1" in err and "field" in err, err
