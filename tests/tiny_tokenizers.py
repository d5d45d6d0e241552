"""Tiny, deterministic tokenizers and a random-weight aux model for tests (no downloads).

Mirrors the project's tokenizer pair on a vocabulary of a few dozen words:

* :func:`build_dllm_tokenizer` -- ``WordLevel``; every integer ``0..max_number`` is ONE token,
  special tokens ``[PAD] [UNK] [MASK] <|eos|>``.
* :func:`build_aux_tokenizer` -- ``WordPiece`` with single digits only (``"12"`` -> ``"1", "##2"``),
  special tokens ``<unk> <s> </s> <pad>`` in a different id order; optional chat template.
* :func:`build_aux_model` -- a ``LlamaForCausalLM`` of a few thousand parameters whose special
  ids come from the tokenizer.

Import as ``from tiny_tokenizers import ...`` from a test module in ``tests/``.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fastdllm_warmstart.tokenization import wordpiece_decoder

WORDS: List[str] = [
    "Question", "Answer", "Tom", "Ann", "has", "apples", "pears", "he", "she", "buys", "eats",
    "more", "How", "many", "does", "have", "now", "the", "a", "and", "is", "User", "Assistant",
]
PUNCTUATION: List[str] = list(".,:;?!+-*/=()$")
# A chat template in the style of Instruct models: the rendered text is what the model must see.
CHAT_TEMPLATE = ("{% for message in messages %}User : {{ message['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant :{% endif %}")

_SPLIT_PATTERN = r"####|[0-9]+|[^\W\d_]+|[^\s]"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
    ])


def _index(tokens: List[str]) -> Dict[str, int]:
    vocab: Dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_dllm_tokenizer(max_number: int = 200, *,
                         with_eos: bool = True) -> PreTrainedTokenizerFast:
    """Word-level dLLM tokenizer; whole numbers up to ``max_number`` are single tokens."""
    specials = ["[PAD]", "[UNK]", "[MASK]"] + (["<|eos|>"] if with_eos else [])
    vocab = _index(specials + [str(i) for i in range(max_number + 1)] + ["####"] + PUNCTUATION
                   + WORDS)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    extra = {"eos_token": "<|eos|>"} if with_eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   mask_token="[MASK]", padding_side="left",
                                   clean_up_tokenization_spaces=False, **extra)


def build_aux_tokenizer(chat_template: Optional[str] = None) -> PreTrainedTokenizerFast:
    """WordPiece aux tokenizer (digits split, ``##`` continuations), optional chat template."""
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = _index(specials + list(reversed(PUNCTUATION)) + ["####"]
                   + [str(i) for i in range(10)] + [f"##{i}" for i in range(10)]
                   + sorted(WORDS, key=lambda w: w[::-1]))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>",
                                     continuing_subword_prefix="##"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = wordpiece_decoder()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", padding_side="right",
                                   clean_up_tokenization_spaces=False)
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_aux_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0,
                    initializer_range: float = 0.5) -> LlamaForCausalLM:
    """A 2-layer random-weight Llama over ``tokenizer``'s vocabulary (peaked logits: no ties)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=initializer_range, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


__all__ = ["build_dllm_tokenizer", "build_aux_tokenizer", "build_aux_model", "CHAT_TEMPLATE",
           "WORDS", "PUNCTUATION"]
