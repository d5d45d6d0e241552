"""The synthetic ``tinygsm`` task: determinism, correctness, ranges and the shipped splits."""

import random
import re

import pytest

from fastdllm_warmstart.tasks import tinygsm

STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # lm-eval gsm8k strict-match
NUM = re.compile(r"-?\d+")


def test_deterministic_by_seed():
    assert tinygsm.generate_problems(3, 50) == tinygsm.generate_problems(3, 50)
    a = tinygsm.generate_problem(random.Random(11))
    b = tinygsm.generate_problem(random.Random(11))
    assert a == b


def test_different_seeds_differ():
    a = [p["question"] for p in tinygsm.generate_problems(1, 50)]
    b = [p["question"] for p in tinygsm.generate_problems(2, 50)]
    assert a != b
    assert len(set(a) & set(b)) < 5


def test_global_random_state_untouched():
    random.seed(5)
    before = random.random()
    random.seed(5)
    tinygsm.generate_problems(0, 20)
    assert random.random() == before


@pytest.fixture(scope="module")
def many():
    return tinygsm.generate_problems(123, 2000)


def test_every_problem_checks(many):
    assert all(tinygsm.check_answer(p) for p in many)


def test_steps_and_ranges(many):
    seen_ops = set()
    for p in many:
        eqs = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", p["answer"])
        assert 2 <= len(eqs) <= 4
        start = int(eqs[0][0])
        assert 2 <= start <= 20
        for a, op, b, c in eqs:
            seen_ops.add(op)
            a, b, c = int(a), int(b), int(c)
            assert 0 <= a <= 99 and 0 <= c <= 99
            if op in "+-":
                assert 1 <= b <= 9
            elif op == "*":
                assert b in (2, 3)
            else:
                assert b in (2, 3, 4) and a % b == 0
        for n in NUM.findall(p["question"] + " " + p["answer"]):
            assert 0 <= int(n) <= 99
        assert p["final"] == int(eqs[-1][3])
    assert seen_ops == {"+", "-", "*", "/"}


def test_answer_format(many):
    for p in many[:200]:
        lines = p["answer"].split("\n")
        assert len(lines) == 2
        assert lines[1] == f"#### {p['final']}"
        m = STRICT.search(p["answer"])
        assert m and int(m.group(1)) == p["final"]
        assert tinygsm.extract_final(p["answer"]) == p["final"]
        # flexible-extract: the last number in the answer is the final one
        assert int(NUM.findall(p["answer"])[-1]) == p["final"]


def test_check_answer_rejects_wrong():
    p = tinygsm.generate_problems(9, 1)[0]
    assert tinygsm.check_answer(p)
    bad_final = dict(p, answer=p["answer"].rsplit("#### ", 1)[0] + f"#### {p['final'] + 1}")
    assert not tinygsm.check_answer(bad_final)
    eq = re.search(r"(\d+) ([-+*/]) (\d+) = (\d+)", p["answer"])
    wrong = p["answer"].replace(eq.group(0), f"{eq.group(1)} {eq.group(2)} {eq.group(3)} = {int(eq.group(4)) + 1}", 1)
    assert not tinygsm.check_answer(dict(p, answer=wrong))
    assert not tinygsm.check_answer(dict(p, answer="no equations here #### 3"))


def test_extract_final():
    assert tinygsm.extract_final("1 + 2 = 3 .\n#### 3") == 3
    assert tinygsm.extract_final("#### -4") == -4
    assert tinygsm.extract_final("#### 1,200") == 1200
    assert tinygsm.extract_final("no answer") is None
    assert tinygsm.extract_final("") is None


def test_prompt_format():
    assert tinygsm.PROMPT_TEMPLATE == "Question: {question}\nAnswer:"
    assert tinygsm.format_prompt("Q?") == "Question: Q?\nAnswer:"


def test_shipped_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # package paths must not depend on the cwd
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))
    train = tinygsm.load_jsonl(tinygsm.default_split_path("train"))
    assert len(test) >= 500
    assert len(train) >= 1000
    assert all(tinygsm.check_answer(p) for p in test)
    assert all(tinygsm.check_answer(p) for p in train[:2000])
    tq = {p["question"] for p in test}
    assert len(tq) == len(test)
    assert not tq & {p["question"] for p in train}
    assert tinygsm.default_split_path("train").stat().st_size <= 5_500_000
    # the shipped test split is exactly what the generator makes with its seed
    assert test[:20] == tinygsm.generate_problems(tinygsm.DEFAULT_TEST_SEED, 20)
    with pytest.raises(ValueError):
        tinygsm.default_split_path("dev")


def test_jsonl_roundtrip_and_make_data(tmp_path):
    out = tmp_path / "sub" / "d.jsonl"
    tinygsm.make_data(5, 30, out)
    probs = tinygsm.load_jsonl(out)
    assert probs == tinygsm.generate_problems(5, 30)
    tinygsm.write_jsonl(probs[:3], tmp_path / "e.jsonl")
    assert tinygsm.load_jsonl(tmp_path / "e.jsonl") == probs[:3]
