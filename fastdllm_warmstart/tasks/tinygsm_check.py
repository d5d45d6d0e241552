"""Checking ``tinygsm`` answers: the final number (lm-eval strict-match), the equations of a worked
answer in any wording, and whether they solve the question (:func:`check_answer`)."""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from .tinygsm_words import (ADD_VERBS, CONTAINERS, NAMES, STRICT_REGEX, SUB_VERBS, Equation, Problem,
                            apply_op)

_FINAL_RE = re.compile(STRICT_REGEX)
_WORD_OPS = ((" divided by ", " / "), (" plus ", " + "), (" minus ", " - "), (" times ", " * "),
             (" is ", " = "))
_EQ_FORWARD = re.compile(r"^(?:.*\s)?(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)$")
_EQ_BACKWARD = re.compile(r"^(?:.*\s)?(-?\d+) = (-?\d+) ([-+*/]) (-?\d+)$")


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


def parse_equations(answer_text: str) -> List[Equation]:
    """The equations ``(a, op, b, c)`` of a worked answer, in order, whatever their wording.

    Each sentence (ended by `` .``) holds at most one equation; a sentence with numbers but no
    equation (the closing ``Ava has 50 muffins now .``) is returned as ``(None, "has", None, N)``."""
    body = (answer_text or "").split("####")[0].replace("\n", " ")
    out: List[Equation] = []
    for sent in re.split(r"\s*\.(?:\s|$)", body):
        s = " " + " ".join(sent.split()) + " "
        for word, sym in _WORD_OPS:
            s = s.replace(word, sym)
        s = s.strip()
        if not s:
            continue
        m = _EQ_FORWARD.match(s)
        if m:
            out.append((int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))))
            continue
        m = _EQ_BACKWARD.match(s)
        if m:
            out.append((int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(1))))
            continue
        m = re.search(r" has (-?\d+) \w+ now$", " " + s)
        if m:
            out.append((None, "has", None, int(m.group(1))))  # type: ignore[arg-type]
    return out


def solve_question(question: str) -> Tuple[int, List[Tuple[str, int, Optional[Tuple[int, int]]]]]:
    """Re-derive ``(start, [(op, operand, (k, m) or None), ...])`` from a generated question."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?])\s+", question.strip()) if s.strip()]
    m = re.search(r" has (\d+) ", sentences[0])
    if not m:
        raise ValueError(f"no start value in {sentences[0]!r}")
    start = int(m.group(1))
    steps: List[Tuple[str, int, Optional[Tuple[int, int]]]] = []
    for s in sentences[1:-1]:
        words = s.split()
        nums = [int(x) for x in re.findall(r"\d+", s)]
        if "friends" in words and "each." in words:
            steps.append(("-", nums[0] * nums[1], (nums[0], nums[1])))
        elif "each" in words and "buys" in words:
            steps.append(("+", nums[0] * nums[1], (nums[0], nums[1])))
        elif any(w in words for w in ADD_VERBS):
            steps.append(("+", nums[0], None))
        elif any(w in words for w in SUB_VERBS):
            steps.append(("-", nums[0], None))
        elif "doubles" in words:
            steps.append(("*", 2, None))
        elif "triples" in words:
            steps.append(("*", 3, None))
        elif "splits" in words:
            steps.append(("/", nums[0], None))
        else:
            raise ValueError(f"unrecognised sentence {s!r}")
    return start, steps


def has_group(problem: Problem) -> bool:
    """True when the problem has a group event (``3 bags with 4 muffins in each bag``): its answer
    computes a sub-result ``k * m`` whose place in the answer is a free choice."""
    return any(km for _, _, km in solve_question(str(problem["question"]))[1])


def check_answer(problem: Problem) -> bool:
    """True when the worked answer is a valid solution of the question, in any of its wordings.

    Valid means: every equation is arithmetically right; the chain steps appear in the question's
    order, each starting from the previous result (the first from the start value); each group
    product ``k * m`` appears (in either operand order) before the chain step that uses it, which
    uses its result; nothing else is computed; a closing ``has N ... now`` sentence and ``#### N``
    both give the final result."""
    answer = str(problem["answer"])
    final = extract_final(answer)
    if final is None:
        return False
    try:
        start, steps = solve_question(str(problem["question"]))
    except (ValueError, AttributeError, IndexError):
        return False
    eqs = parse_equations(answer)
    if not eqs:
        return False
    pending = {i: km for i, (_, _, km) in enumerate(steps) if km is not None}
    done_products = set()
    v, k = start, 0
    closing_seen = False
    for a, op, b, c in eqs:
        if closing_seen:
            return False  # the closing sentence ends the worked solution
        if op == "has":
            if k != len(steps) or c != v:
                return False
            closing_seen = True
            continue
        if apply_op(a, op, b) != c:
            return False
        if k < len(steps):
            want_op, want_n, km = steps[k]
            if a == v and op == want_op and b == want_n and (km is None or k in done_products):
                v, k = c, k + 1  # the next chain step
                continue
        # otherwise it must be a group product (its factors in either order) a later step needs
        match = [i for i, km in pending.items() if i >= k and i not in done_products
                 and op == "*" and tuple(sorted(km)) == tuple(sorted((a, b)))]
        if not match:
            return False
        done_products.add(match[0])
    if k != len(steps) or final != v:
        return False
    if "final" in problem and int(problem["final"]) != final:
        return False
    return True



def parse_question(question: str) -> Tuple[str, str, str, int, List[Dict]]:
    """``(name, pronoun, object, start, events)`` of a generated question (inverse of the
    generator, verbs included), so an answer can be rendered again in another wording."""
    start, steps = solve_question(question)
    words = question.split()
    name, obj = words[0], words[3].rstrip(".")
    pron = next((p for n, p, _ in NAMES if n == name), "they")
    sentences = [x.strip() for x in re.split(r"(?<=[.?])\s+", question.strip()) if x.strip()][1:-1]
    events: List[Dict] = []
    kinds = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
    for (op, n, km), sent in zip(steps, sentences):
        toks = sent.rstrip(".").split()
        if km is not None:
            ev = {"kind": "group_add" if op == "+" else "group_sub", "k": km[0], "m": km[1], "n": n}
            if op == "+":
                ev["container"] = next(c for c in CONTAINERS if c[0] in toks)
        else:
            ev = {"kind": kinds[op], "n": n}
            verb = next((w for w in toks if w in ADD_VERBS + SUB_VERBS), None)
            if verb is not None:
                ev["verb"] = verb
        events.append(ev)
    return name, pron, obj, start, events



__all__ = ["check_answer", "extract_final", "has_group", "parse_equations", "parse_question",
           "solve_question"]
