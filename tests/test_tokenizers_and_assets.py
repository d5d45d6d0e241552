"""The two tokenizers (round trip, robustness, differences) and the shipped tiny models."""

import json
from pathlib import Path

import pytest
import torch

from fastdllm_warmstart.tasks import tinygsm
from fastdllm_warmstart.tokenization import build_aux_tokenizer, build_dllm_tokenizer

ASSETS = Path(__file__).resolve().parents[1] / "fastdllm_warmstart" / "assets"
DLLM_DIR = ASSETS / "tiny-dllm"
AUX_DIR = ASSETS / "tiny-aux"


@pytest.fixture(scope="module")
def dtok():
    return build_dllm_tokenizer()


@pytest.fixture(scope="module")
def atok():
    return build_aux_tokenizer()


@pytest.fixture(scope="module")
def test_split():
    return tinygsm.load_jsonl(tinygsm.default_split_path("test"))


def test_deterministic():
    a, b = build_dllm_tokenizer(), build_dllm_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    a, b = build_aux_tokenizer(), build_aux_tokenizer()
    assert a.get_vocab() == b.get_vocab()


def test_special_tokens(dtok, atok):
    assert dtok.pad_token == "[PAD]" and dtok.unk_token == "[UNK]"
    assert dtok.mask_token == "[MASK]" and dtok.eos_token == "<|eos|>"
    ids = {dtok.pad_token_id, dtok.unk_token_id, dtok.mask_token_id, dtok.eos_token_id}
    assert None not in ids and len(ids) == 4
    assert atok.unk_token_id == 0 and atok.bos_token_id == 1
    assert atok.eos_token_id == 2 and atok.pad_token_id == 3
    assert atok.eos_token == "</s>"
    assert not getattr(dtok, "chat_template", None) and not getattr(atok, "chat_template", None)


def test_numbers_whole_vs_split(dtok, atok):
    for n in (0, 7, 12, 99, 150, 200):
        assert len(dtok.encode(str(n), add_special_tokens=False)) == 1
        assert dtok.unk_token_id not in dtok.encode(str(n), add_special_tokens=False)
    assert atok.tokenize("12") == ["1", "##2"]
    assert atok.decode(atok.encode("12", add_special_tokens=False)) == "12"
    assert dtok.tokenize("####") == ["####"]
    assert dtok.get_vocab() != atok.get_vocab()
    assert dtok.convert_tokens_to_ids("apples") != atok.convert_tokens_to_ids("apples")


def test_dllm_decode(dtok):
    ids = dtok.encode("7 + 5 = 12 . 12 - 3 = 9 .\n#### 9", add_special_tokens=False)
    assert dtok.decode(ids) == "7 + 5 = 12 . 12 - 3 = 9 . #### 9"
    ids = ids + [dtok.eos_token_id, dtok.pad_token_id, dtok.mask_token_id]
    assert dtok.decode(ids, skip_special_tokens=True) == "7 + 5 = 12 . 12 - 3 = 9 . #### 9"
    assert tinygsm.extract_final(dtok.decode(ids, skip_special_tokens=True)) == 9


def test_no_unknown_words_in_task(dtok, atok, test_split):
    for p in test_split[:100]:
        text = tinygsm.format_prompt(p["question"]) + " " + p["answer"]
        assert dtok.unk_token_id not in dtok.encode(text, add_special_tokens=False)
        assert atok.unk_token_id not in atok.encode(text, add_special_tokens=False)


def test_cross_tokenizer_round_trip(dtok, atok, test_split):
    for p in test_split:
        text = p["answer"]
        back = atok.decode(atok.encode(text, add_special_tokens=False), skip_special_tokens=True)
        assert dtok.encode(back, add_special_tokens=False) == dtok.encode(text, add_special_tokens=False)
        assert tinygsm.extract_final(back) == p["final"]


@pytest.mark.parametrize("text", [
    "", " ", "\n\t", "Janet’s ducks lay 16 eggs per day. She pays $2.50 (20%) “each” — ok?",
    "12345678901234567890123456789012345678901234567890 ∑∫ 😀 é ñ 中文 \x00 \u200b",
    "9" * 500, "a" * 300, "#### -1,234.5", "'quoted' \"double\" ‘single’",
])
def test_arbitrary_text_never_errors(dtok, atok, text):
    for tok in (dtok, atok):
        ids = tok.encode(text, add_special_tokens=False)
        assert all(isinstance(i, int) and 0 <= i < len(tok) for i in ids)
        tok.decode(ids)
        tok.decode(ids, skip_special_tokens=True)


def test_punctuation_tokens(dtok):
    for ch in ["$", "%", "'", '"', "\u201c", "\u201d", ".", ",", "?"]:
        toks = dtok.tokenize(f"a{ch}a")
        assert toks == ["a", ch, "a"], toks
        assert dtok.convert_tokens_to_ids(ch) != dtok.unk_token_id


def test_save_and_reload(tmp_path, dtok, atok):
    """compat.save_tokenizer writes files every tested transformers release reads back."""
    from transformers import AutoTokenizer

    from fastdllm_warmstart.compat import PORTABLE_TOKENIZER_CLASS, save_tokenizer

    for name, tok in (("d", dtok), ("a", atok)):
        save_tokenizer(tok, tmp_path / name)
        assert (tmp_path / name / "tokenizer.json").exists()
        saved = json.loads((tmp_path / name / "tokenizer_config.json").read_text())
        assert saved["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS
        re = AutoTokenizer.from_pretrained(tmp_path / name)
        s = "Question: Tom has 7 apples. How many?\nAnswer: 7 + 5 = 12 .\n#### 12"
        assert re.encode(s) == tok.encode(s)
        assert re.eos_token_id == tok.eos_token_id and re.pad_token_id == tok.pad_token_id
    assert AutoTokenizer.from_pretrained(tmp_path / "d").mask_token_id == dtok.mask_token_id


# ---------------------------------------------------------------------------------------------
# shipped models
# ---------------------------------------------------------------------------------------------

def _need(path: Path):
    if not (path / "config.json").exists():
        pytest.skip(f"{path.name} asset not shipped yet ({path} has no config.json)")


def test_assets_size():
    dirs = [d for d in (DLLM_DIR, AUX_DIR) if (d / "config.json").exists()]
    if not dirs:
        pytest.skip("no shipped tiny-model assets yet")
    total = sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
    assert total <= 20 * 1024 * 1024, total


def test_tiny_dllm_loads_and_runs():
    _need(DLLM_DIR)
    from transformers import AutoTokenizer

    from fastdllm_warmstart.models import TinyLLaDAModelLM

    from fastdllm_warmstart.compat import dtype_kwargs

    tok = AutoTokenizer.from_pretrained(DLLM_DIR)
    model = TinyLLaDAModelLM.from_pretrained(DLLM_DIR, **dtype_kwargs(torch.float32)).eval()
    cfg = model.config
    assert cfg.mask_token_id == tok.mask_token_id
    assert cfg.eos_token_id == tok.eos_token_id
    assert cfg.pad_token_id == tok.pad_token_id
    assert cfg.vocab_size == len(tok)
    assert any(f.suffix == ".safetensors" for f in DLLM_DIR.iterdir())
    ids = tok(tinygsm.format_prompt("Tom has 7 apples. How many apples does Tom have now?"),
              return_tensors="pt")["input_ids"]
    x = torch.cat([ids, torch.full((1, 48), tok.mask_token_id)], dim=1)
    with torch.no_grad():
        logits = model(x, attention_mask=torch.ones_like(x)).logits
    assert logits.shape == (1, x.shape[1], cfg.vocab_size)
    assert torch.isfinite(logits).all()


def test_tiny_aux_loads_and_generates():
    _need(AUX_DIR)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(AUX_DIR)
    model = AutoModelForCausalLM.from_pretrained(AUX_DIR).eval()
    assert model.config.model_type == "llama"
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.convert_tokens_to_ids("##2") != tok.unk_token_id
    enc = tok(tinygsm.format_prompt("Tom has 7 apples. How many apples does Tom have now?"), return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=8)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_train_logs_present():
    for d in (DLLM_DIR, AUX_DIR, ASSETS / "tiny-aux-dllmtok"):
        _need(d)
        assert (d / "train_log.json").exists() or (d / "TRAINING.md").exists()


@pytest.mark.parametrize("name", ["tiny-dllm", "tiny-dllm-rcd", "tiny-aux", "tiny-aux-dllmtok"])
def test_shipped_tokenizer_names_a_class_every_release_loads(name):
    """transformers 5 saves ``TokenizersBackend``, which 4.x cannot load; the shipped files name
    ``PreTrainedTokenizerFast`` and their tokenizer.json reads with the installed tokenizers."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from fastdllm_warmstart.compat import PORTABLE_TOKENIZER_CLASS

    _need(ASSETS / name)
    config = json.loads((ASSETS / name / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS
    raw = Tokenizer.from_file(str(ASSETS / name / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(ASSETS / name)
    text = tinygsm.format_prompt("Tom has 12 apples. He buys 5 more. How many apples now?")
    assert tok(text)["input_ids"] == raw.encode(text).ids
    assert list(tok(text)) == ["input_ids", "attention_mask"]  # 4.x adds token_type_ids unless told
    assert tok.unk_token_id not in tok(text)["input_ids"]


@pytest.mark.parametrize("name", ["tiny-dllm", "tiny-dllm-rcd", "tiny-aux", "tiny-aux-dllmtok"])
def test_shipped_weights_load_unchanged(name):
    """Every tensor of model.safetensors reaches the loaded model as stored (transformers 4.x
    tied the tiny dLLM's lm_head and wte, overwriting one, before its config said not to)."""
    from safetensors.torch import load_file

    from fastdllm_warmstart.auxiliary.proposer import AuxProposer
    from fastdllm_warmstart.config import AuxConfig
    from fastdllm_warmstart.loading import load_dllm

    _need(ASSETS / name)
    path = ASSETS / name
    if name.startswith("tiny-aux"):
        model = AuxProposer.from_pretrained(f"embedded:{name}", build_dllm_tokenizer(), config=AuxConfig(),
                                            dtype=torch.float32).model
    else:
        model, _, _ = load_dllm(f"embedded:{name}", dtype="float32")
    loaded = model.state_dict()
    stored = load_file(str(path / "model.safetensors"))
    for key, tensor in stored.items():
        assert torch.equal(loaded[key], tensor.float()), key
