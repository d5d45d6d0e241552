"""``tinygsm``: GSM8K-format multi-step word problems whose answers can be written many valid ways.

Every problem is ``{"question": ..., "answer": "<worked solution>\\n#### <number>", "final": int}``::

    question: Ava has 15 muffins. She eats 2 muffins. Then she buys 3 bags with 4 muffins in each
              bag. After that, she doubles her muffins. How many muffins does Ava have now?
    answer:   3 * 4 = 12 . she eats 2 , so 15 - 2 = 13 . then 13 plus 12 is 25 .
              so 50 = 25 * 2 . Ava has 50 muffins now .
              #### 50

Why many wordings: a real chain-of-thought answer (GSM8K) can be phrased in many equally valid ways,
so a diffusion LM cannot know the exact tokens of step 3 before it has committed how step 2 was
written (a wording of another length shifts every later position). That genuine ambiguity is why
LLaDA needs ~5x its NFE floor on GSM8K, and why a draft that commits to one consistent wording can
save forwards. Each choice below is drawn *uniformly* among valid forms:

* the wording of each equation ``c = a op b``: ``a op b = c``, ``a <word> b is c`` (``plus``,
  ``minus``, ``times``, ``divided by``) or ``c = a op b``;
* a connective before each equation after the first: none, ``so``, ``then``, or (for an event that
  adds or removes a count) a reason clause, ``she eats 2 , so``;
* the layout of independent sub-results (``3 bags with 4 muffins`` needs ``3 * 4 = 12`` before it is
  added): each right before its use, or all of them first, in any order;
* an optional closing sentence ``Ava has 50 muffins now .``.

Arithmetic stays learnable for ~1M-parameter models: the start is 2..20, 3-4 events (at most one
of them a group; ``max_events`` up to 6 draws longer problems), ``+``/``-`` operands 1..9, ``*`` by 2 or 3, ``/`` by 2, 3 or 4 only when exact,
group products 2..4 times 2..9,
every intermediate and final result in 1..99; a problem's longest rendering fits the 96-token
canvas (``MAX_ANSWER_TOKENS``). Every drawn answer is verified by :func:`check_answer`, which
re-derives the computation from the question text. Generation is deterministic given the seed (a
private ``random.Random``).

This module draws problems and answers; :mod:`.tinygsm_check` checks answers, :mod:`.tinygsm_files`
reads and writes problem files, :mod:`.tinygsm_words` holds the words both sides share. Every public
name of the three is importable from here too.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .tinygsm_check import (check_answer, extract_final, has_group, parse_equations, parse_question,
                            solve_question)
from .tinygsm_files import PROBLEM_FIELDS, default_split_path, load_jsonl, write_jsonl
from .tinygsm_words import (ADD_VERBS, ANSWER_WORDS, CONNECTORS, CONTAINERS, FOODS, FRIENDS, NAMES,
                            OBJECTS, OP_WORDS, OPS, PROMPT_TEMPLATE, STRICT_REGEX, SUB_VERBS, THINGS,
                            Equation, Problem, apply_op, format_prompt)

_apply = apply_op  # noqa: F401  (the name scripts/probe_decode_order.py uses)

# Events per problem (a group event writes two equations). The default stops at 4: the shipped
# 0.69M dLLM is right on ~0.89 of 3-4 event problems but ~0.78 of 5-event ones (scripts/TRAINING-tiny-dllm.md);
# ``make-data --max-events 5`` draws the longer variant. Up to LONGEST_EVENTS fit the canvas.
MIN_EVENTS, MAX_EVENTS = 3, 4
LONGEST_EVENTS = 6
MAX_GROUP_EVENTS = 1
MIN_START, MAX_START = 2, 20
MAX_VALUE = 99
# Longest answer (in the dLLM's word-level tokens) any rendering of a problem may take: the
# 96-token canvas keeps at least a few EOS after it, so the answer's end is always visible.
MAX_ANSWER_TOKENS = 88

DEFAULT_TRAIN_SEED = 1234
DEFAULT_TEST_SEED = 4321
DEFAULT_TEST_SIZE = 500


# ---------------------------------------------------------------------------------------------
# problem structure
# ---------------------------------------------------------------------------------------------
# An event is a dict: kind in {"add", "sub", "mul", "div", "group_add", "group_sub"}, its operand
# ``n`` (for group events the product k * m), and what the question's sentence needs.

def _feasible_events(v: int, groups_left: bool) -> List[Tuple[Dict, float]]:
    """(event, weight) candidates keeping every result in 1..MAX_VALUE."""
    cands: List[Tuple[Dict, float]] = []
    adds = [n for n in range(1, 10) if v + n <= MAX_VALUE]
    subs = [n for n in range(1, 10) if v - n >= 1]
    cands += [({"kind": "add", "n": n}, 3.0 / len(adds)) for n in adds]
    cands += [({"kind": "sub", "n": n}, 3.0 / len(subs)) for n in subs]
    cands += [({"kind": "mul", "n": k}, 0.6) for k in (2, 3) if v * k <= MAX_VALUE]
    cands += [({"kind": "div", "n": k}, 0.6) for k in (2, 3, 4) if v % k == 0]
    if groups_left:
        pairs = [(k, m) for k in range(2, 5) for m in range(2, 10)]
        up = [(k, m) for k, m in pairs if v + k * m <= MAX_VALUE]
        down = [(k, m) for k, m in pairs if v - k * m >= 1]
        cands += [({"kind": "group_add", "k": k, "m": m, "n": k * m}, 1.2 / len(up)) for k, m in up]
        cands += [({"kind": "group_sub", "k": k, "m": m, "n": k * m}, 1.2 / len(down)) for k, m in down]
    return cands


_EVENT_OP = {"add": "+", "sub": "-", "mul": "*", "div": "/", "group_add": "+", "group_sub": "-"}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _event_sentence(ev: Dict, subj: str, poss: str, obj: str) -> str:
    kind, n = ev["kind"], ev["n"]
    if kind == "add":
        return f"{subj} {ev['verb']} {n} more {obj}."
    if kind == "sub":
        if ev["verb"] == "gives":
            return f"{subj} gives {n} {obj} to {ev['friend']}."
        return f"{subj} {ev['verb']} {n} {obj}."
    if kind == "mul":
        return f"{subj} {'doubles' if n == 2 else 'triples'} {poss} {obj}."
    if kind == "div":
        return f"{subj} splits {poss} {obj} into {n} equal groups and keeps one."
    if kind == "group_add":
        many, one = ev["container"]
        return f"{subj} buys {ev['k']} {many} with {ev['m']} {obj} in each {one}."
    if kind == "group_sub":
        return f"{subj} gives {ev['k']} friends {ev['m']} {obj} each."
    raise ValueError(kind)


def _equations(start: int, events: Sequence[Dict]) -> Tuple[List[Equation], Dict[int, Equation]]:
    """Chain equations (one per event) and the group products keyed by event index."""
    chain, products, v = [], {}, start
    for i, ev in enumerate(events):
        if ev["kind"].startswith("group"):
            products[i] = (ev["k"], "*", ev["m"], ev["n"])
        op = _EVENT_OP[ev["kind"]]
        new = apply_op(v, op, ev["n"])
        if new is None or not 1 <= new <= MAX_VALUE:
            raise ValueError(f"event {ev} leaves the range from {v}")
        chain.append((v, op, ev["n"], new))
        v = new
    return chain, products


# ---------------------------------------------------------------------------------------------
# rendering an answer: every choice uniform among valid forms
# ---------------------------------------------------------------------------------------------

WORDINGS = ("symbol", "words", "result_first")


def render_equation(eq: Equation, wording: str) -> str:
    a, op, b, c = eq
    if wording == "symbol":
        return f"{a} {op} {b} = {c} ."
    if wording == "words":
        return f"{a} {OP_WORDS[op]} {b} is {c} ."
    if wording == "result_first":
        return f"{c} = {a} {op} {b} ."
    raise ValueError(f"unknown wording {wording!r}")


def _connectives(ev: Optional[Dict], pron: str) -> List[str]:
    """Valid connectives before an equation (``ev``: the event it computes, None for a product)."""
    out = ["", "so ", "then "]
    if ev is not None and ev["kind"] in ("add", "sub"):
        out.append(f"{pron} {ev['verb']} {ev['n']} , so ")
    return out


def answer_layouts(events: Sequence[Dict]) -> List[List[Tuple[str, int]]]:
    """Every valid order of the answer's equations: ``("chain", i)`` / ``("product", i)`` items.

    A group product either comes right before the chain step that uses it, or all products come
    first in any order (each layout is one equally valid choice)."""
    groups = [i for i, ev in enumerate(events) if ev["kind"].startswith("group")]
    inline: List[Tuple[str, int]] = []
    for i in range(len(events)):
        if i in groups:
            inline.append(("product", i))
        inline.append(("chain", i))
    layouts = [inline]
    if groups:
        from itertools import permutations
        chain = [("chain", i) for i in range(len(events))]
        for perm in permutations(groups):
            upfront = [("product", i) for i in perm] + chain
            if upfront != inline:
                layouts.append(upfront)
    return layouts


def render_answer(start: int, events: Sequence[Dict], name: str, pron: str, obj: str,
                  rng: random.Random) -> str:
    """One answer drawn uniformly over layout, wordings, connectives and the closing sentence."""
    chain, products = _equations(start, events)
    layout = rng.choice(answer_layouts(events))
    parts = []
    for j, (what, i) in enumerate(layout):
        eq = chain[i] if what == "chain" else products[i]
        conn = rng.choice(_connectives(events[i] if what == "chain" else None, pron)) if j else ""
        parts.append(conn + render_equation(eq, rng.choice(WORDINGS)))
    final = chain[-1][3]
    if rng.random() < 0.5:
        parts.append(f"{name} has {final} {obj} now .")
    return " ".join(parts) + f"\n#### {final}"


_TOKEN_RE = re.compile(r"####|[0-9]+|[^\W\d_]+|[^\s]")


def count_tokens(text: str) -> int:
    """Tokens of ``text`` in the embedded dLLM's word-level tokenizer (numbers <= 200 whole)."""
    return len(_TOKEN_RE.findall(text))


def max_answer_tokens(start: int, events: Sequence[Dict], name: str, pron: str, obj: str) -> int:
    """Length of the problem's longest rendering (layout does not change the length)."""
    chain, products = _equations(start, events)
    n = 0
    eqs = [(None, eq) for eq in products.values()] + [(ev, eq) for ev, eq in zip(events, chain)]
    for k, (ev, eq) in enumerate(eqs):
        n += max(count_tokens(render_equation(eq, w)) for w in WORDINGS)
        n += max(count_tokens(c) for c in _connectives(ev, pron))  # a first equation never has one
    n += count_tokens(f"{name} has {chain[-1][3]} {obj} now .") + 2  # closing sentence, "#### N"
    return n


def check_max_events(max_events: Optional[int]) -> int:
    """``max_events`` resolved (``None``: the module's ``MAX_EVENTS``) and checked."""
    max_events = MAX_EVENTS if max_events is None else max_events
    if not MIN_EVENTS <= max_events <= LONGEST_EVENTS:
        raise ValueError(f"max_events={max_events}: give {MIN_EVENTS}..{LONGEST_EVENTS} events per problem "
                         f"(every problem has at least {MIN_EVENTS}; more than {LONGEST_EVENTS} do not fit "
                         f"the {MAX_ANSWER_TOKENS}-token answer limit).")
    return max_events


def generate_problem(rng: random.Random, max_events: Optional[int] = None) -> Problem:
    """One problem drawn with ``rng`` (a ``random.Random``; global random state is never used),
    with ``MIN_EVENTS``..``max_events`` events (default ``MAX_EVENTS``)."""
    max_events = check_max_events(max_events)
    while True:
        name, pron, poss = rng.choice(NAMES)
        obj = rng.choice(OBJECTS)
        n_events = rng.randint(MIN_EVENTS, max_events)
        start = v = rng.randint(MIN_START, MAX_START)
        events: List[Dict] = []
        for _ in range(n_events):
            groups_left = sum(ev["kind"].startswith("group") for ev in events) < MAX_GROUP_EVENTS
            cands = _feasible_events(v, groups_left)
            ev = dict(rng.choices([c[0] for c in cands], weights=[c[1] for c in cands], k=1)[0])
            if ev["kind"] == "add":
                ev["verb"] = rng.choice(ADD_VERBS)
            elif ev["kind"] == "sub":
                ev["verb"] = rng.choice(SUB_VERBS if obj in FOODS else SUB_VERBS[:3])
                if ev["verb"] == "gives":
                    ev["friend"] = rng.choice(FRIENDS)
            elif ev["kind"] == "group_add":
                ev["container"] = rng.choice(CONTAINERS)
            events.append(ev)
            v = apply_op(v, _EVENT_OP[ev["kind"]], ev["n"])
        if max_answer_tokens(start, events, name, pron, obj) <= MAX_ANSWER_TOKENS:
            break
    sentences = [f"{name} has {start} {obj}."]
    for i, ev in enumerate(events):
        if i == 0:
            sentences.append(_event_sentence(ev, rng.choice((_cap(pron), name)), poss, obj))
        else:
            sentences.append(f"{rng.choice(CONNECTORS)} " + _event_sentence(ev, pron, poss, obj))
    sentences.append(f"How many {obj} does {name} have now?")
    answer = render_answer(start, events, name, pron, obj, rng)
    problem = {"question": " ".join(sentences), "answer": answer, "final": v}
    if not check_answer(problem):  # the generator verifies every answer it draws
        raise AssertionError(f"generated an answer that does not check: {problem}")
    return problem


def generate_problems(seed: int, n: int, exclude: Optional[Iterable[str]] = None,
                      max_events: Optional[int] = None) -> List[Problem]:
    """``n`` problems with distinct questions, deterministic in ``seed``; skips questions in ``exclude``;
    ``max_events`` as in ``generate_problem``."""
    max_events = check_max_events(max_events)
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: List[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError("could not draw enough distinct problems")
        p = generate_problem(rng, max_events)
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append(p)
    return out


# ---------------------------------------------------------------------------------------------
# draft-like answers (what an aux model writes): another wording, maybe one wrong result
# ---------------------------------------------------------------------------------------------

def draft_answer(problem: Problem, rng: random.Random, wrong_prob: float = 0.0) -> str:
    """A draft of ``problem``'s answer as an aux model of this task writes one: drawn again over
    every wording choice (so it rarely matches the reference answer token for token) and, with
    probability ``wrong_prob``, one result off by 1 or 2 that the rest of the chain carries on."""
    name, pron, obj, start, events = parse_question(str(problem["question"]))
    answer = render_answer(start, events, name, pron, obj, rng)
    if rng.random() >= wrong_prob:
        return answer
    chain, _ = _equations(start, events)
    j = rng.randrange(len(chain))
    wrong, v = {}, chain[j][3] + rng.choice((-2, -1, 1, 2))
    wrong[chain[j][3]] = v
    for a, op, b, c in chain[j + 1:]:
        new = apply_op(v, op, b)
        if new is None:
            break
        wrong[c], v = new, new
    # rewrite the numbers from the wrong step on (whole-number tokens, right to left of the step)
    head, sep, tail = answer.partition("\n####")
    out, seen_j = [], False
    for tok in head.split(" "):
        if not seen_j and tok.isdigit() and int(tok) == chain[j][3]:
            seen_j = True
        out.append(str(wrong[int(tok)]) if seen_j and tok.isdigit() and int(tok) in wrong else tok)
    final = wrong.get(chain[-1][3], chain[-1][3])
    return " ".join(out) + f"\n#### {final}"


# ---------------------------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------------------------

def make_data(seed: int, n: int, out: Union[str, Path], exclude: Optional[Iterable[str]] = None,
              max_events: Optional[int] = None) -> Path:
    """Generate ``n`` problems with ``seed`` and write them to ``out`` (JSONL)."""
    return write_jsonl(generate_problems(seed, n, exclude=exclude, max_events=max_events), out)


def make_default_splits(n_train: int = 2000, n_test: int = DEFAULT_TEST_SIZE) -> None:
    """Regenerate the shipped splits: test first, train drawn with another seed excluding test.

    The train split is only lm-eval's few-shot pool: the models train on problems drawn on the fly."""
    test = generate_problems(DEFAULT_TEST_SEED, n_test)
    write_jsonl(test, default_split_path("test"))
    train = generate_problems(DEFAULT_TRAIN_SEED, n_train, exclude={p["question"] for p in test})
    write_jsonl(train, default_split_path("train"))


__all__ = [
    # words
    "ADD_VERBS", "ANSWER_WORDS", "CONNECTORS", "CONTAINERS", "Equation", "FOODS", "FRIENDS", "NAMES",
    "OBJECTS", "OPS", "OP_WORDS", "PROMPT_TEMPLATE", "Problem", "STRICT_REGEX", "SUB_VERBS", "THINGS",
    "apply_op", "format_prompt",
    # generator
    "DEFAULT_TEST_SEED", "DEFAULT_TEST_SIZE", "DEFAULT_TRAIN_SEED", "LONGEST_EVENTS",
    "MAX_ANSWER_TOKENS", "MAX_EVENTS", "MAX_GROUP_EVENTS", "MAX_START", "MAX_VALUE", "MIN_EVENTS",
    "MIN_START", "WORDINGS", "answer_layouts", "check_max_events", "count_tokens", "draft_answer",
    "generate_problem", "generate_problems", "make_data", "make_default_splits", "max_answer_tokens",
    "render_answer", "render_equation",
    # checker
    "check_answer", "extract_final", "has_group", "parse_equations", "parse_question",
    "solve_question",
    # files
    "PROBLEM_FIELDS", "default_split_path", "load_jsonl", "write_jsonl",
]


if __name__ == "__main__":  # pragma: no cover
    make_default_splits()
