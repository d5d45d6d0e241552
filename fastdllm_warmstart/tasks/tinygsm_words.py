"""The words and arithmetic of ``tinygsm`` that both its generator and its checker read: the
prompt, names, objects, verbs, operators, and ``apply_op``."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

# lm-eval gsm8k "strict-match" regex.
STRICT_REGEX = r"#### (\-?[0-9\.\,]+)"

NAMES: Tuple[Tuple[str, str, str], ...] = (
    # name, subject pronoun, possessive pronoun
    ("Tom", "he", "his"), ("Ann", "she", "her"), ("Sam", "he", "his"), ("Mia", "she", "her"),
    ("Ben", "he", "his"), ("Lily", "she", "her"), ("Max", "he", "his"), ("Emma", "she", "her"),
    ("Leo", "he", "his"), ("Zoe", "she", "her"), ("Jack", "he", "his"), ("Lucy", "she", "her"),
    ("Noah", "he", "his"), ("Ava", "she", "her"), ("Ryan", "he", "his"), ("Sara", "she", "her"),
)
FRIENDS: Tuple[str, ...] = ("Kim", "Joe", "Eva", "Dan", "Amy", "Ian", "Liz", "Bob")
FOODS: Tuple[str, ...] = ("apples", "cookies", "candies", "oranges", "cakes", "eggs", "grapes", "muffins")
THINGS: Tuple[str, ...] = ("books", "pens", "marbles", "stickers", "cards", "toys", "coins", "shells")
OBJECTS: Tuple[str, ...] = FOODS + THINGS
CONNECTORS: Tuple[str, ...] = ("Then", "Next", "Later", "After that,")
CONTAINERS: Tuple[Tuple[str, str], ...] = (("bags", "bag"), ("boxes", "box"), ("packs", "pack"))

ADD_VERBS = ("buys", "finds", "gets")
SUB_VERBS = ("gives", "loses", "sells", "eats")
OPS = ("+", "-", "*", "/")
OP_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
# Words the answers use besides numbers, names, pronouns and verbs (the tokenizers need them).
ANSWER_WORDS = ("plus", "minus", "times", "divided", "by", "is", "so", "then", "has", "now")

Problem = Dict[str, Union[str, int]]
# One computation c = a op b.
Equation = Tuple[int, str, int, int]


def format_prompt(question: str) -> str:
    """The prompt both tiny models are trained on (lm-eval gsm8k zero-shot's ``doc_to_text``)."""
    return PROMPT_TEMPLATE.format(question=question)


def apply_op(a: int, op: str, b: int) -> Optional[int]:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0 or a % b:
            return None
        return a // b
    raise ValueError(f"unknown operator {op!r}")



__all__ = ["ADD_VERBS", "ANSWER_WORDS", "CONNECTORS", "CONTAINERS", "Equation", "FOODS", "FRIENDS",
           "NAMES", "OBJECTS", "OPS", "OP_WORDS", "PROMPT_TEMPLATE", "Problem", "STRICT_REGEX",
           "SUB_VERBS", "THINGS", "apply_op", "format_prompt"]
