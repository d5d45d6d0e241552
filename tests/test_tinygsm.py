"""The synthetic ``tinygsm`` task: determinism, correctness, ranges and the shipped splits."""

import json
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
    seen_ops, seen_kinds = set(), set()
    for p in many:
        start, steps = tinygsm.solve_question(p["question"])
        assert tinygsm.MIN_EVENTS <= len(steps) <= tinygsm.MAX_EVENTS
        assert tinygsm.MIN_START <= start <= tinygsm.MAX_START
        eqs = [e for e in tinygsm.parse_equations(p["answer"]) if e[1] != "has"]
        assert len(eqs) == len(steps) + sum(km is not None for _, _, km in steps)
        for a, op, b, c in eqs:
            seen_ops.add(op)
            assert 1 <= a <= 99 and 1 <= c <= 99
            if op in "+-":
                assert 1 <= b <= 36
            elif op == "*":
                assert 2 <= b <= 9
            else:
                assert b in (2, 3, 4) and a % b == 0
        seen_kinds.update("group" if km else op for op, _, km in steps)
        for n in NUM.findall(p["question"] + " " + p["answer"]):
            assert 0 <= int(n) <= 99
        assert tinygsm.count_tokens(" " + p["answer"]) <= tinygsm.MAX_ANSWER_TOKENS
    assert seen_ops == {"+", "-", "*", "/"}
    assert seen_kinds == {"+", "-", "*", "/", "group"}


def test_max_events_bounds_the_problem_length():
    """The default task stops at MAX_EVENTS; ``max_events`` draws the longer variant (the same
    stream as a default of that length), and a length the canvas cannot hold is refused."""
    def n_events(problems):
        return [len(tinygsm.solve_question(p["question"])[1]) for p in problems]

    default = n_events(tinygsm.generate_problems(11, 300))
    assert set(default) == set(range(tinygsm.MIN_EVENTS, tinygsm.MAX_EVENTS + 1))
    longer = tinygsm.generate_problems(11, 300, max_events=tinygsm.MAX_EVENTS + 1)
    assert max(n_events(longer)) == tinygsm.MAX_EVENTS + 1
    assert all(tinygsm.check_answer(p) for p in longer)
    with pytest.raises(ValueError, match="max_events=9"):
        tinygsm.generate_problems(11, 3, max_events=9)
    with pytest.raises(ValueError, match="max_events=2"):
        tinygsm.generate_problem(random.Random(0), max_events=2)


def test_answers_are_genuinely_ambiguous(many):
    """Each wording, connective kind, layout and closing choice occurs, roughly uniformly, and the
    same problem structure is rendered in many different ways (the point of the task)."""
    import collections
    wordings = collections.Counter()
    for p in many:
        body = p["answer"].split("\n")[0]
        for sent in body.split(" . "):
            if " is " in sent:
                wordings["words"] += 1
            elif re.match(r"^(?:.* )?\d+ = \d+ [-+*/] \d+", sent):
                wordings["result_first"] += 1
            elif re.search(r"\d+ [-+*/] \d+ = \d+", sent):
                wordings["symbol"] += 1
    total = sum(wordings.values())
    for w in tinygsm.WORDINGS:
        assert abs(wordings[w] / total - 1 / 3) < 0.03, wordings
    closing = sum(" now ." in p["answer"] for p in many) / len(many)
    assert 0.45 < closing < 0.55
    reasons = sum(", so" in p["answer"] for p in many) / len(many)
    assert reasons > 0.3
    # one question, drawn again with other rng states, gets different valid answers
    rng = random.Random(0)
    p = tinygsm.generate_problem(rng)
    start, steps = tinygsm.solve_question(p["question"])
    assert p["answer"]
    renders = set()
    events = _events_of(p)
    for seed in range(40):
        a = tinygsm.render_answer(start, events, *_who(p), random.Random(seed))
        assert tinygsm.check_answer(dict(p, answer=a))
        renders.add(a)
    assert len(renders) >= 30


def _who(p):
    name = p["question"].split()[0]
    pron = next(pr for n, pr, _ in tinygsm.NAMES if n == name)
    obj = p["question"].split()[3].rstrip(".")
    return name, pron, obj


def _events_of(p):
    """Rebuild render_answer's events from the question (verbs matter only for reason clauses)."""
    _, steps = tinygsm.solve_question(p["question"])
    kinds = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
    events = []
    for op, n, km in steps:
        if km:
            events.append({"kind": "group_add" if op == "+" else "group_sub", "k": km[0], "m": km[1], "n": n})
        else:
            events.append({"kind": kinds[op], "n": n, "verb": "gets" if op == "+" else "loses"})
    return events


def test_order_of_independent_steps_is_free():
    """Group products may come first in any order or right before their use; nothing else moves."""
    q = ("Tom has 10 apples. He buys 2 bags with 3 apples in each bag. Then he gives 2 friends 4 "
         "apples each. How many apples does Tom have now?")
    ok = ["2 * 3 = 6 . 10 + 6 = 16 . 2 * 4 = 8 . 16 - 8 = 8 .\n#### 8",
          "2 * 4 = 8 . 2 * 3 = 6 . 10 + 6 = 16 . 16 - 8 = 8 .\n#### 8",
          "3 * 2 = 6 . so 2 times 4 is 8 . then 16 = 10 + 6 . 16 minus 8 is 8 . Tom has 8 apples now .\n#### 8"]
    bad = ["10 + 6 = 16 . 2 * 3 = 6 . 2 * 4 = 8 . 16 - 8 = 8 .\n#### 8",    # product after its use
           "2 * 3 = 6 . 10 + 6 = 16 . 16 - 8 = 8 . 2 * 4 = 8 .\n#### 8",    # product after its use
           "2 * 3 = 6 . 10 + 6 = 16 . 2 * 4 = 8 . 16 - 8 = 8 . 8 + 0 = 8 .\n#### 8",  # extra step
           "2 * 3 = 6 . 10 + 6 = 16 . 2 * 4 = 8 . 16 - 8 = 8 . Tom has 9 apples now .\n#### 8",
           "2 * 3 = 6 . 2 * 4 = 8 . 10 + 6 = 16 . 16 - 8 = 8 .\n#### 9"]
    for a in ok:
        assert tinygsm.check_answer({"question": q, "answer": a}), a
    for a in bad:
        assert not tinygsm.check_answer({"question": q, "answer": a}), a


def test_check_answer_rejects_wrong():
    p = tinygsm.generate_problems(9, 1)[0]
    assert tinygsm.check_answer(p)
    bad_final = dict(p, answer=p["answer"].rsplit("#### ", 1)[0] + f"#### {p['final'] + 1}")
    assert not tinygsm.check_answer(bad_final)
    for k, (a, op, b, c) in enumerate(e for e in tinygsm.parse_equations(p["answer"]) if e[1] != "has"):
        for wrong in (c + 1, c - 1):  # any one result off by one breaks the chain or the arithmetic
            text = re.sub(rf"(?<!\d){c}(?!\d)", str(wrong), p["answer"], count=1) \
                if str(c) in p["answer"] else p["answer"]
            if text != p["answer"]:
                assert not tinygsm.check_answer(dict(p, answer=text)), text
    assert not tinygsm.check_answer(dict(p, answer="no equations here #### 3"))


def test_extract_final():
    assert tinygsm.extract_final("1 + 2 = 3 .\n#### 3") == 3
    assert tinygsm.extract_final("#### -4") == -4
    assert tinygsm.extract_final("#### 1,200") == 1200
    assert tinygsm.extract_final("no answer") is None
    assert tinygsm.extract_final("") is None


def test_prompt_format_matches_the_lm_eval_task():
    """The models are trained on format_prompt; lm-eval renders the task YAML's doc_to_text."""
    from pathlib import Path

    import yaml

    yml = Path(tinygsm.__file__).resolve().parent / "tinygsm" / "tinygsm.yaml"
    line = next(l for l in yml.read_text().splitlines() if l.startswith("doc_to_text:"))
    template = yaml.safe_load(line)["doc_to_text"]
    assert tinygsm.format_prompt("Q?") == template.replace("{{question}}", "Q?")


def test_shipped_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # package paths must not depend on the cwd
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))
    train = tinygsm.load_jsonl(tinygsm.default_split_path("train"))
    assert len(test) >= 500
    assert len(train) >= 1000  # lm-eval's few-shot pool; the models train on problems drawn on the fly
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


def test_has_group_matches_the_answers_sub_results(many):
    # a problem has a group event exactly when its answer computes more equations than it has steps
    for p in many[:400]:
        steps = tinygsm.solve_question(p["question"])[1]
        eqs = [e for e in tinygsm.parse_equations(p["answer"]) if e[1] != "has"]
        assert tinygsm.has_group(p) == (len(eqs) > len(steps))
    frac = sum(map(tinygsm.has_group, many)) / len(many)
    assert 0.2 < frac < 0.9  # the task's own mix has both kinds


def test_problem_files_are_checked_at_the_door(tmp_path):
    from fastdllm_warmstart.jsonl_store import InputFileError

    good = tinygsm.generate_problems(5, 2)
    path = tmp_path / "data.jsonl"
    rows = [json.dumps(good[0]), "", json.dumps({"question": good[1]["question"]})]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"data\.jsonl, line 3: .*no 'answer' field"):
        tinygsm.load_jsonl(path)
    path.write_text(json.dumps({"question": "Q?", "answer": 12}) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"line 1: field 'answer' must be a string, got 12"):
        tinygsm.load_jsonl(path)


def test_a_data_file_without_answers_stops_bench_with_one_line(tmp_path, capsys):
    from fastdllm_warmstart.cli import main

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "Tom has 3 apples. How many apples does Tom have now?"})
                    + "\n", encoding="utf-8")
    assert main(["bench", "--data", str(path), "--limit", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 1" in err and "'answer'" in err, err


def test_the_generator_reads_its_knobs_from_the_module(monkeypatch):
    # scripts/train_tiny.py sets tinygsm.MAX_EVENTS / MAX_GROUP_EVENTS for a curriculum; the
    # generator must read the names where the scripts set them.
    monkeypatch.setattr(tinygsm, "MAX_EVENTS", 5)
    monkeypatch.setattr(tinygsm, "MAX_GROUP_EVENTS", 0)
    problems = tinygsm.generate_problems(7, 200)
    lengths = {len(tinygsm.solve_question(p["question"])[1]) for p in problems}
    assert max(lengths) == 5
    assert not any(tinygsm.has_group(p) for p in problems)
