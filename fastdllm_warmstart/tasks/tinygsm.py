"""``tinygsm``: GSM8K-format multi-step arithmetic word problems small enough for ~1M-param models.

Every problem is ``{"question": ..., "answer": "<equations> #### <number>", "final": int}``. The
answer holds only the chained equations then the final line, e.g.::

    question: Tom has 7 apples. He buys 5 more apples. Then he gives 3 apples to Ann.
              How many apples does Tom have now?
    answer:   7 + 5 = 12 . 12 - 3 = 9 .
              #### 9

Arithmetic is kept learnable: the start is 2..20, each problem has 2-4 steps, ``+``/``-`` operands
are 1..9, ``*`` is by 2 or 3, ``/`` by 2, 3 or 4 only when exact, and every intermediate and final
result lies in 1..99. Generation is deterministic given the seed (a private ``random.Random``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

PROMPT_TEMPLATE = "Question: {question}\nAnswer:"

MIN_STEPS, MAX_STEPS = 2, 4
MIN_START, MAX_START = 2, 20
MAX_VALUE = 99

# lm-eval gsm8k "strict-match" regex.
STRICT_REGEX = r"#### (\-?[0-9\.\,]+)"

DEFAULT_TRAIN_SEED = 1234
DEFAULT_TEST_SEED = 4321
DEFAULT_TEST_SIZE = 500

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

ADD_VERBS = ("buys", "finds", "gets")
SUB_VERBS = ("gives", "loses", "sells", "eats")
OPS = ("+", "-", "*", "/")

Problem = Dict[str, Union[str, int]]


def format_prompt(question: str) -> str:
    """The prompt both tiny models are trained on (lm-eval gsm8k zero-shot's ``doc_to_text``)."""
    return PROMPT_TEMPLATE.format(question=question)


def _apply(a: int, op: str, b: int) -> Optional[int]:
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


def _feasible_ops(v: int) -> List[Tuple[str, int, float]]:
    """(op, operand, weight) candidates keeping every result in 1..MAX_VALUE."""
    cands: List[Tuple[str, int, float]] = []
    adds = [n for n in range(1, 10) if v + n <= MAX_VALUE]
    subs = [n for n in range(1, 10) if v - n >= 1]
    for n in adds:
        cands.append(("+", n, 3.0 / len(adds)))
    for n in subs:
        cands.append(("-", n, 3.0 / len(subs)))
    for k in (2, 3):
        if v * k <= MAX_VALUE:
            cands.append(("*", k, 0.6))
    for k in (2, 3, 4):
        if v % k == 0 and v // k >= 1:
            cands.append(("/", k, 0.6))
    return cands


def _sentence(op: str, n: int, subj: str, poss: str, obj: str, rng: random.Random) -> str:
    if op == "+":
        verb = rng.choice(ADD_VERBS)
        return f"{subj} {verb} {n} more {obj}."
    if op == "-":
        verbs = SUB_VERBS if obj in FOODS else SUB_VERBS[:3]
        verb = rng.choice(verbs)
        if verb == "gives":
            return f"{subj} gives {n} {obj} to {rng.choice(FRIENDS)}."
        return f"{subj} {verb} {n} {obj}."
    if op == "*":
        return f"{subj} {'doubles' if n == 2 else 'triples'} {poss} {obj}."
    if op == "/":
        return f"{subj} splits {poss} {obj} into {n} equal groups and keeps one."
    raise ValueError(op)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def generate_problem(rng: random.Random) -> Problem:
    """One problem drawn with ``rng`` (a ``random.Random``; global random state is never used)."""
    name, pron, poss = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    n_steps = rng.randint(MIN_STEPS, MAX_STEPS)
    v = rng.randint(MIN_START, MAX_START)
    sentences = [f"{name} has {v} {obj}."]
    equations = []
    for i in range(n_steps):
        cands = _feasible_ops(v)
        op, n, _ = rng.choices(cands, weights=[c[2] for c in cands], k=1)[0]
        new = _apply(v, op, n)
        assert new is not None and 1 <= new <= MAX_VALUE
        if i == 0:
            subj = rng.choice((_cap(pron), name))
            sentences.append(_sentence(op, n, subj, poss, obj, rng))
        else:
            conn = rng.choice(CONNECTORS)
            sentences.append(f"{conn} " + _sentence(op, n, pron, poss, obj, rng))
        equations.append(f"{v} {op} {n} = {new} .")
        v = new
    sentences.append(f"How many {obj} does {name} have now?")
    question = " ".join(sentences)
    answer = " ".join(equations) + f"\n#### {v}"
    return {"question": question, "answer": answer, "final": v}


def generate_problems(seed: int, n: int, exclude: Optional[Iterable[str]] = None) -> List[Problem]:
    """``n`` problems with distinct questions, deterministic in ``seed``; skips questions in ``exclude``."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: List[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError("could not draw enough distinct problems")
        p = generate_problem(rng)
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append(p)
    return out


_EQ_RE = re.compile(r"(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)")
_FINAL_RE = re.compile(STRICT_REGEX)


def extract_final(answer_text: str) -> Optional[int]:
    """The integer after ``####`` (lm-eval strict-match), or ``None``."""
    m = _FINAL_RE.search(answer_text or "")
    if not m:
        return None
    s = m.group(1).replace(",", "").rstrip(".")
    try:
        f = float(s)
    except ValueError:
        return None
    return int(f) if f == int(f) else None


def solve_question(question: str) -> Tuple[int, List[Tuple[str, int]]]:
    """Re-derive (start, [(op, operand), ...]) from a generated question's text."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?])\s+", question.strip()) if s.strip()]
    m = re.search(r" has (\d+) ", sentences[0])
    if not m:
        raise ValueError(f"no start value in {sentences[0]!r}")
    start = int(m.group(1))
    steps: List[Tuple[str, int]] = []
    for s in sentences[1:-1]:
        words = s.split()
        if any(w in words for w in ADD_VERBS):
            steps.append(("+", int(re.search(r"(\d+)", s).group(1))))
        elif any(w in words for w in SUB_VERBS):
            steps.append(("-", int(re.search(r"(\d+)", s).group(1))))
        elif "doubles" in words:
            steps.append(("*", 2))
        elif "triples" in words:
            steps.append(("*", 3))
        elif "splits" in words:
            steps.append(("/", int(re.search(r"into (\d+) ", s).group(1))))
        else:
            raise ValueError(f"unrecognised sentence {s!r}")
    return start, steps


def check_answer(problem: Problem) -> bool:
    """True when the answer's equations are correct, chained from the question's numbers, and final."""
    answer = str(problem["answer"])
    eqs = _EQ_RE.findall(answer)
    if not eqs:
        return False
    final = extract_final(answer)
    if final is None:
        return False
    prev = None
    for a, op, b, c in eqs:
        a, b, c = int(a), int(b), int(c)
        if _apply(a, op, b) != c:
            return False
        if prev is not None and a != prev:
            return False
        prev = c
    if final != prev:
        return False
    if "final" in problem and int(problem["final"]) != final:
        return False
    try:
        start, steps = solve_question(str(problem["question"]))
    except (ValueError, AttributeError, IndexError):
        return False
    if len(steps) != len(eqs):
        return False
    v = start
    for (op, n), (a, eop, b, c) in zip(steps, eqs):
        if int(a) != v or eop != op or int(b) != n:
            return False
        v = _apply(v, op, n)
        if v is None:
            return False
    return v == final


def write_jsonl(problems: Sequence[Problem], path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return path


def load_jsonl(path: Union[str, Path]) -> List[Problem]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def default_split_path(split: str) -> Path:
    """Path of the shipped ``train`` / ``test`` split (works from any working directory)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return Path(__file__).resolve().parent / "data" / f"tinygsm_{split}.jsonl"


def make_data(seed: int, n: int, out: Union[str, Path], exclude: Optional[Iterable[str]] = None) -> Path:
    """Generate ``n`` problems with ``seed`` and write them to ``out`` (JSONL)."""
    return write_jsonl(generate_problems(seed, n, exclude=exclude), out)


def make_default_splits(n_train: int = 15000, n_test: int = DEFAULT_TEST_SIZE) -> None:
    """Regenerate the shipped splits: test first, train drawn with another seed excluding test."""
    test = generate_problems(DEFAULT_TEST_SEED, n_test)
    write_jsonl(test, default_split_path("test"))
    train = generate_problems(DEFAULT_TRAIN_SEED, n_train, exclude={p["question"] for p in test})
    write_jsonl(train, default_split_path("train"))


if __name__ == "__main__":  # pragma: no cover
    make_default_splits()
