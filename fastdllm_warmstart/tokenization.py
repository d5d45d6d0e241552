"""Builders for the two tokenizers of the embedded tiny models.

* :func:`build_dllm_tokenizer` -- word-level (``WordLevel``) tokenizer of the tiny dLLM. Words,
  every punctuation character and ``####`` are single tokens, and every integer ``0..200`` is ONE
  token (so the dLLM's arithmetic is a table lookup). Special tokens ``[PAD]``, ``[UNK]``,
  ``[MASK]``, ``<|eos|>``. Decoding joins tokens with single spaces
  (``"7 + 5 = 12 . 12 - 3 = 9 . #### 9"``).
* :func:`build_aux_tokenizer` -- a deliberately *different* ``WordPiece`` tokenizer for the tiny
  autoregressive aux model: whole words but only single digits (``"12"`` -> ``"1", "##2"``),
  different special tokens (``<unk>``, ``<s>``, ``</s>``, ``<pad>``) and a different id order, as
  Llama's tokenizer differs from LLaDA's. Its decoder glues ``##`` pieces back, so text
  round-trips between the two tokenizers.

Both are deterministic, wrapped as :class:`transformers.PreTrainedTokenizerFast`, and can be saved
with ``save_pretrained`` and reloaded offline with ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

from typing import List

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .tasks import tinygsm

MAX_WHOLE_NUMBER = 200

# Every character GSM8K-style text commonly uses as punctuation or symbol; each is its own token.
PUNCTUATION: List[str] = list(".,:;?!'\"()[]{}<>$%&*+-/=#@^_|~\\`") + [
    "\u201c", "\u201d", "\u2018", "\u2019", "\u2013", "\u2014", "\u00a3", "\u20ac", "\u00b0",
]

# A few hundred common English words (GSM8K question vocabulary) on top of the template words.
COMMON_WORDS = """
a about after again all also always an and another any are as at away back be because been
before being between both but by can cost costs could day days did do does done down each
else end enough equal equally even every few first for from get gets give gives go goes good
got had half has have he her here him his how if in into is it its just keep keeps last left
less like long make makes many more most much must need needs new next no not now number of
off old on once one only or other our out over own pay pays per put rest same she should so
some spend spends still such than that the their them then there these they this those three
through time times to too total two up us used very was we week weeks were what when which
while who will with would year years you your month months hour hours minute minutes dollars
dollar cents cent money price each percent twice third quarter fourth fifth hundred thousand
ten twenty thirty forty fifty sixty seventy eighty ninety zero four five six seven eight nine
eleven twelve remaining remains remain altogether together sum difference product average
buy buys bought sell sells sold find finds found lose loses lost eat eats ate give gave given
share shares shared split splits double doubles doubled triple triples tripled earn earns
earned save saves saved make made spent take takes took bring brings brought has had have
friend friends family mother father mom dad brother sister son daughter child children kids
kid boy boys girl girls man men woman women people person teacher class student students
school store shop market farm farmer house home garden car cars bus trip miles mile feet foot
inches inch meters meter pounds pound ounces ounce gallons gallon liters liter cups cup
bag bags box boxes basket baskets pack packs packet packets bottle bottles jar jars piece
pieces slice slices group groups row rows team teams page pages book books pen pens pencil
pencils paper ticket tickets game games toy toys ball balls card cards coin coins stamp
stamps flower flowers tree trees plant plants dog dogs cat cats bird birds fish chicken
chickens cow cows egg eggs apple apples orange oranges banana bananas grape grapes cake
cakes cookie cookies candy candies muffin muffins pie pies pizza pizzas sandwich sandwiches
milk water juice food meal lunch dinner breakfast marble marbles sticker stickers shell
shells doll dolls shirt shirts shoe shoes hat hats sock socks dress dresses
morning afternoon evening night today tomorrow yesterday monday tuesday wednesday thursday
friday saturday sunday weekend january february march april may june july august september
october november december hourly daily weekly monthly yearly rate speed cost costs bill
bills tip tips tax discount sale salary wage wages profit income interest bonus
larger smaller bigger more fewer less than most least many much full empty whole part parts
answer question calculate find how long far tall old big small large each every per only
first second third last next later after before during until since already yet again
""".split()


def _template_words() -> List[str]:
    words = set()
    texts = []
    for name, pron, poss in tinygsm.NAMES:
        texts += [name, pron, poss]
    texts += list(tinygsm.FRIENDS) + list(tinygsm.OBJECTS) + list(tinygsm.CONNECTORS)
    texts += list(tinygsm.ADD_VERBS) + list(tinygsm.SUB_VERBS) + list(tinygsm.ANSWER_WORDS)
    texts += [w for pair in tinygsm.CONTAINERS for w in pair] + ["friends with in each"]
    texts += ["has more to doubles triples splits into equal groups and keeps one",
              "How many does have now", "Question Answer", tinygsm.PROMPT_TEMPLATE]
    for t in texts:
        for w in t.replace(",", " ").replace(":", " ").replace("?", " ").replace("{", " ")\
                .replace("}", " ").split():
            if w.isalpha():
                words.add(w)
    return sorted(words)


def vocabulary_words() -> List[str]:
    """All word tokens (both cases for common words), sorted, deterministic."""
    words = set(_template_words())
    for w in COMMON_WORDS:
        words.add(w)
        words.add(w[:1].upper() + w[1:])
    for name, pron, poss in tinygsm.NAMES:
        words.update((pron[:1].upper() + pron[1:], poss[:1].upper() + poss[1:]))
    return sorted(words)


# No token_type_ids: the models take none (transformers 4.x would add them by default).
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]

# One token per: ``####``, a run of digits, a run of letters, or any other single non-space char.
_SPLIT_PATTERN = r"####|[0-9]+|[^\W\d_]+|[^\s]"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
    ])


# ---------------------------------------------------------------------------------------------
# dLLM tokenizer
# ---------------------------------------------------------------------------------------------

DLLM_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[MASK]", "<|eos|>"]


def dllm_vocab() -> dict:
    tokens: List[str] = list(DLLM_SPECIAL_TOKENS)
    tokens += [str(i) for i in range(MAX_WHOLE_NUMBER + 1)]
    tokens += ["####"] + PUNCTUATION
    tokens += vocabulary_words()
    vocab: dict = {}
    for t in tokens:
        if t not in vocab:
            vocab[t] = len(vocab)
    return vocab


def build_dllm_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer of the tiny dLLM (numbers 0..200 whole)."""
    tok = Tokenizer(models.WordLevel(vocab=dllm_vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    # No decoder: tokens are joined with single spaces.
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", eos_token="<|eos|>",
        padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=512,  # the embedded models' position limit (config: 512)
        model_input_names=MODEL_INPUT_NAMES,
    )
    return fast


# ---------------------------------------------------------------------------------------------
# aux tokenizer
# ---------------------------------------------------------------------------------------------

AUX_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
_HASH_PLACEHOLDER = "\u241f"  # keeps the ``####`` token from being read as a "##" continuation


def aux_vocab() -> dict:
    tokens: List[str] = list(AUX_SPECIAL_TOKENS)
    tokens += list(reversed(PUNCTUATION)) + ["####"]
    tokens += [str(i) for i in range(10)] + [f"##{i}" for i in range(10)]
    tokens += sorted(vocabulary_words(), key=lambda w: (w.lower()[::-1], w))
    vocab: dict = {}
    for t in tokens:
        if t not in vocab:
            vocab[t] = len(vocab)
    return vocab


def wordpiece_decoder() -> decoders.Sequence:
    """WordPiece decoding (``##`` joins a continuation) that keeps the ``####`` answer marker."""
    return decoders.Sequence([
        decoders.Replace("####", _HASH_PLACEHOLDER),
        decoders.WordPiece(prefix="##", cleanup=True),
        decoders.Replace(_HASH_PLACEHOLDER, "####"),
    ])


def build_aux_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece tokenizer of the tiny aux model (digits split: ``"12"`` -> ``"1", "##2"``)."""
    tok = Tokenizer(models.WordPiece(vocab=aux_vocab(), unk_token="<unk>",
                                     continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = wordpiece_decoder()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=512,  # the embedded models' position limit (config: 512)
        model_input_names=MODEL_INPUT_NAMES,
    )
    return fast


__all__ = ["build_dllm_tokenizer", "build_aux_tokenizer", "dllm_vocab", "aux_vocab", "wordpiece_decoder"]
