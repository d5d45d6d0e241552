"""GSM8K-style answer scoring with lm-eval's two gsm8k filters and metric normalisation.

* strict-match: the number after ``#### `` (regex ``#### (\\-?[0-9\\.\\,]+)``, first match).
* flexible-extract: the last number-like span (``(-?[$0-9.,]{2,})|(-?[0-9]+)``).
* exact_match after removing ``,`` and ``$``, everything up to ``#### `` and a final ``.``.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Tuple

STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = [re.compile(p) for p in (r",", r"\$", r"(?s).*#### ", r"\.$")]
INVALID = "[invalid]"


def strict_extract(text: str) -> str:
    match = STRICT_RE.search(text)
    return match.group(1).strip() if match else INVALID


def flexible_extract(text: str) -> str:
    matches = FLEXIBLE_RE.findall(text)
    if not matches:
        return INVALID
    last = matches[-1]
    return (last[0] or last[1]).strip()


def normalize(answer: str) -> str:
    for pattern in _IGNORE:
        answer = pattern.sub("", answer)
    return answer.strip().lower()


def gold_answer(answer_text: str) -> str:
    """The reference number of a GSM8K-format answer (text after ``####``)."""
    return normalize(answer_text)


def score(prediction: str, gold: str) -> Tuple[bool, bool]:
    """(strict-match correct, flexible-extract correct) for one prediction."""
    target = normalize(gold)
    return (normalize(strict_extract(prediction)) == target,
            normalize(flexible_extract(prediction)) == target)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_number(text: str) -> Optional[float]:
    try:
        return float(normalize(text))
    except ValueError:
        return None
