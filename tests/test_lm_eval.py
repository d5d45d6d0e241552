"""The lm-eval model ``llada_warmstart``, the ``eval`` command and the ``tinygsm`` task.

Everything runs on CPU with no download: the embedded tiny dLLM when its asset is present, else a
random-weight tiny model saved with the real tiny tokenizer. Outputs of a random model are noise,
so the end-to-end checks compare runs with each other (resume, one vs two processes) rather than
with gold answers.

The slowest test, ``test_two_processes_match_one_process``, launches ``torchrun --nproc_per_node 2``
on CPU (gloo); set ``FASTDLLM_SKIP_DISTRIBUTED=1`` to skip it.
"""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from fastdllm_warmstart.config import ConfigError  # noqa: E402
from fastdllm_warmstart.eval import main as eval_main  # noqa: E402
from fastdllm_warmstart.lm_eval_model import LLaDAWarmStartLM  # noqa: E402
from fastdllm_warmstart.lm_eval_utils import (  # noqa: E402
    AnswerStore, EvalSettings, format_speed_table, summarize_speed, valid_model_args)

TASK_DIR = Path(__file__).resolve().parents[1] / "fastdllm_warmstart" / "tasks"


def _has_run_cli() -> bool:
    try:
        import lm_eval._cli.run  # noqa: F401
        return True
    except ImportError:
        return False


HAS_RUN_CLI = _has_run_cli()
# The `eval` command builds on lm-eval 0.4.13's `run` command line; the model works on 0.4.8 too.
needs_run_cli = pytest.mark.skipif(not HAS_RUN_CLI, reason="the eval command needs lm-eval 0.4.13")
TEST_JSONL = TASK_DIR / "data" / "tinygsm_test.jsonl"
UNTIL = ["Question:", "</s>", "<|im_end|>"]
SMALL = {"gen_length": 16, "block_length": 8, "threshold": 0.9}


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------

def _embedded_available() -> bool:
    try:
        from fastdllm_warmstart.assets import asset_path
        asset_path("tiny-dllm")
        return True
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """None (the embedded model) when shipped, else a random tiny checkpoint directory."""
    if _embedded_available():
        return None
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    torch.manual_seed(0)
    # init_std 0.5 spreads the logits, so argmax ties (and batch-dependent flips) do not occur.
    cfg = TinyLLaDAConfig(vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, init_std=0.5,
                          mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_dllm")
    TinyLLaDAModelLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def make_lm(model_path, **args) -> LLaDAWarmStartLM:
    merged = dict(SMALL, device="cpu", batch_size=4)
    if model_path is not None:
        merged["model_path"] = model_path
    merged.update(args)
    return LLaDAWarmStartLM(**merged)


@pytest.fixture(scope="module")
def lm(model_path):
    return make_lm(model_path)


def tinygsm_docs(n):
    with TEST_JSONL.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(n), handle)]


def gen_requests(prompts, until=UNTIL, task="tinygsm", **gen_kwargs):
    kwargs = {"until": list(until), **gen_kwargs}
    return [Instance("generate_until", {}, (p, dict(kwargs)), 0, (task, i, 1))
            for i, p in enumerate(prompts)]


def tinygsm_prompts(n):
    return [f"Question: {d['question']}\nAnswer:" for d in tinygsm_docs(n)]


# ----------------------------------------------------------------------------------------------
# model_args
# ----------------------------------------------------------------------------------------------

def test_upstream_model_args_keep_upstream_meaning():
    s = EvalSettings.from_model_args({"gen_length": "32", "steps": "32", "block_length": "8",
                                      "use_cache": "True", "dual_cache": "True",
                                      "show_speed": "True", "mask_id": "2", "batch_size": "4"})
    assert s.run.decode.cache == "dual"
    assert s.run.decode.threshold is None  # no threshold: upstream's fixed schedule
    assert (s.run.decode.gen_length, s.run.decode.steps, s.run.decode.block_length) == (32, 32, 8)
    assert s.show_speed and s.mask_id == 2 and s.batch_size == 4
    assert EvalSettings.from_model_args({}).run.decode.cache == "none"  # upstream eval default
    assert EvalSettings.from_model_args({"use_cache": True}).run.decode.cache == "prefix"
    assert EvalSettings.from_model_args({"threshold": "0.9"}).run.decode.threshold == 0.9
    # upstream eval_llada.py's factor: the factor rule, which wins over a threshold
    both = EvalSettings.from_model_args({"factor": "1.5", "threshold": "0.9"}).run.decode
    assert (both.factor, both.commit_rule) == (1.5, "factor")
    assert EvalSettings.from_model_args({"factor": "1.0"}).run.decode.commit_rule == "factor"
    assert EvalSettings.from_model_args({"loop_variant": "snapshot-2025-06"}).run.decode.loop_variant \
        == "snapshot-2025-06"


def test_our_model_args_pass_through():
    s = EvalSettings.from_model_args({"warm_init": "token", "rho": "0.4", "remask": "true",
                                      "remask_tau": 0.3, "proposals": "p.jsonl", "dtype": "float32",
                                      "batch_size": "auto", "max_batch_size": 64})
    assert s.run.warm.warm_init == "token" and s.run.warm.rho == 0.4
    assert s.run.remask.enabled and s.run.remask.tau == 0.3
    assert s.run.aux.proposals == "p.jsonl" and s.dtype == torch.float32
    assert s.batch_size == 8  # 'auto' falls back to the default


@pytest.mark.parametrize("args, expected", [
    ({"pretrained": "x"}, "Unknown model_args for llada_warmstart: pretrained"),
    ({"rho": "2"}, "rho=2.0 is out of range"),
    ({"warm_init": "hot"}, "warm_init='hot' is not valid"),
    ({"dual_cache": True}, "dual_cache=True needs use_cache=True"),
    ({"use_cache": True, "cache": "none"}, "contradicts"),
    ({"threshold": "high"}, "threshold='high': expected a number"),
    ({"factor": "0"}, "factor=0.0 is out of range"),
    ({"loop_variant": "2024"}, "loop_variant='2024' is not valid"),
    ({"gen_length": 30, "block_length": 8}, "must be a multiple of block_length"),
    ({"dtype": "float99"}, "dtype='float99' is not a torch dtype"),
    ({"show_speed": "maybe"}, "show_speed='maybe': expected true or false"),
])
def test_bad_model_args_raise_clear_errors(args, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        EvalSettings.from_model_args(args)


def test_unknown_key_error_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        EvalSettings.from_model_args({"temprature": 0})
    assert "Valid keys:" in str(info.value)
    for key in ("model_path", "use_cache", "warm_init", "remask_tau", "save_dir"):
        assert key in str(info.value) and key in valid_model_args()


def test_model_args_win_over_harness_defaults(model_path):
    arg_string = "batch_size=3,gen_length=16,block_length=8"
    if model_path is not None:
        arg_string += f",model_path={model_path}"
    lm = LLaDAWarmStartLM.create_from_arg_string(
        arg_string, {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"})
    assert lm.settings.batch_size == 3
    # lm-eval's CLI default device=cuda:0 falls back to cpu without a GPU; set without a setter.
    assert lm.device == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert (lm.rank, lm.world_size) == (0, 1)
    t = torch.tensor(5)
    assert lm.all_gather(t) is t and lm.gather_object({"a": 1}) == [{"a": 1}]
    lm.barrier()


def test_bad_model_path_and_mask_id(model_path, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LLaDAWarmStartLM(model_path=str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ConfigError, match="disagrees with the model's"):
        make_lm(model_path, mask_id=123456)
    with pytest.raises(ConfigError, match="no chat template"):
        make_lm(model_path, chat_template=True)
    with pytest.raises(ConfigError, match="does not exist"):
        make_lm(model_path, warm_init="token", proposals=str(tmp_path / "none.jsonl"))


# ----------------------------------------------------------------------------------------------
# generate_until
# ----------------------------------------------------------------------------------------------

def test_generate_until_on_tinygsm_docs(lm):
    prompts = tinygsm_prompts(4)
    answers = lm.generate_until(gen_requests(prompts))
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)
    specials = [t for t in lm.tokenizer.all_special_tokens if t]
    assert not any(t in a for a in answers for t in specials)
    speed = lm.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]
    assert speed["samples"] == 4 and speed["nfe_total"] >= 4
    assert speed["gen_tokens_total"] <= 4 * SMALL["gen_length"]
    assert speed["warm"] == 0 and speed["fallbacks"] == 0


def test_until_cuts_at_first_stop_string(lm):
    prompts = tinygsm_prompts(6)
    plain = lm.generate_until(gen_requests(prompts, until=[]))
    wordy = [a for a in plain if len(a.split()) >= 3]
    assert wordy, f"the model should produce a few words for some prompt: {plain}"
    stop = wordy[0].split()[2]
    cut = lm.generate_until(gen_requests(prompts, until=["@@never@@", stop]))
    assert cut == [p.split(stop, 1)[0] for p in plain]
    assert stop not in cut[plain.index(wordy[0])]


def test_finish_answer_max_gen_toks_and_special_stops(lm):
    tok = lm.tokenizer
    ids = tok("7 + 5 = 12 . #### 12")["input_ids"]
    record = {"text": tok.decode(ids, skip_special_tokens=True), "token_ids": ids + [tok.eos_token_id] * 3}
    assert lm._finish_answer(record, {"until": ["####"]}).strip() == "7 + 5 = 12 ."
    assert lm._finish_answer(record, {"until": [], "max_gen_toks": 3}) == "7 + 5"
    assert lm._finish_answer(record, {"until": "="}).strip() == "7 + 5"  # a bare string works
    # A stop string that is a special token cuts at that token even though decoding drops it.
    mid = tok("7 + 5")["input_ids"] + [tok.eos_token_id] + tok("= 12")["input_ids"]
    record = {"text": "7 + 5 = 12", "token_ids": mid}
    assert lm._finish_answer(record, {"until": [tok.eos_token]}) == "7 + 5"


def test_gsm8k_style_text_goes_through(lm):
    prompts = [
        "Question: A store sells pens for $1.50 each. Maria buys 12 pens and pays with a $20 bill. "
        "How much change does she get?\nAnswer:",
        "Question: Tom\u2019s salary was $2,000 a month and rose by 15%. What is it now?\nAnswer:",
        "Question: \u201cHow many?\u201d asked Ann \u2014 she had \u00bd of 10 caf\u00e9 cookies "
        "(\u20ac3 each) \U0001F36A.\nAnswer:",
        "Question:\n\n  \t\nAnswer:",
    ]
    answers = lm.generate_until(gen_requests(prompts, max_gen_toks=8))
    assert len(answers) == len(prompts) and all(isinstance(a, str) for a in answers)
    lls = lm.loglikelihood([Instance("loglikelihood", {}, (prompts[0], " $8.50"), 0, ("t", 0, 1))])
    assert math.isfinite(lls[0][0])


# ----------------------------------------------------------------------------------------------
# save_dir: incremental saving and resume
# ----------------------------------------------------------------------------------------------

def spy_on_runner(lm, monkeypatch):
    """The prompt lists ``lm``'s runner is asked to decode, call by call."""
    calls, real = [], lm.runner.generate

    def spy(batch, *args, **kwargs):
        calls.append(list(batch))
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(lm.runner, "generate", spy)
    return calls


def test_resume_after_kill_reuses_saved_answers(model_path, tmp_path, monkeypatch):
    prompts = tinygsm_prompts(5)
    save = tmp_path / "answers"
    # batch_size=1: every prompt is decoded alone in every run, so outputs are bitwise comparable.
    first = make_lm(model_path, save_dir=str(save), batch_size=1)
    expected = first.generate_until(gen_requests(prompts))
    files = glob.glob(str(save / "llada_warmstart_rank*.jsonl"))
    assert len(files) == 1
    lines = Path(files[0]).read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 5

    # A kill while writing the third answer: two whole lines and half of the third remain.
    Path(files[0]).write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2], encoding="utf-8")
    second = make_lm(model_path, save_dir=str(save), batch_size=1)
    calls = spy_on_runner(second, monkeypatch)
    assert second.generate_until(gen_requests(prompts)) == expected
    assert sum(calls, []) == prompts[2:]  # the two saved answers were not decoded again
    speed = second.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]
    assert speed["samples"] == 5 and speed["cached"] == 2

    third = make_lm(model_path, save_dir=str(save), batch_size=1)
    monkeypatch.setattr(third.runner, "generate", lambda *a, **k: pytest.fail("runner called"))
    assert third.generate_until(gen_requests(prompts)) == expected
    assert len(AnswerStore(str(save), 0).load()) == 5


def test_refill_takes_every_request_at_once_and_saves_answers_as_they_complete(model_path, tmp_path,
                                                                               monkeypatch):
    """With batching=refill, generate_until hands every pending request to the runner in one
    continuous batch (not in chunks of batch_size) and saves each answer when its row hands it
    in; a run cut off after two saves resumes with the rest and gives the static batches' answers."""
    prompts = tinygsm_prompts(6)
    expected = make_lm(model_path, batching="static", batch_size=2).generate_until(gen_requests(prompts))
    save = tmp_path / "answers"
    first = make_lm(model_path, save_dir=str(save), batching="refill", batch_size=2)
    calls, appends, real_append = spy_on_runner(first, monkeypatch), [], AnswerStore.append

    def cut_after_two(store, records):
        real_append(store, records)
        appends.append(len(records))
        if len(appends) == 2:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(AnswerStore, "append", cut_after_two)
    with pytest.raises(KeyboardInterrupt):
        first.generate_until(gen_requests(prompts))
    assert calls == [prompts]  # every request in one call
    saved = sum(appends)
    assert 2 <= saved < 6  # two hand-ins were saved before the cut; the rest were still in flight
    assert len(AnswerStore(str(save), 0).load()) == saved
    monkeypatch.setattr(AnswerStore, "append", real_append)

    second = make_lm(model_path, save_dir=str(save), batching="refill", batch_size=2)
    resumed = spy_on_runner(second, monkeypatch)
    assert second.generate_until(gen_requests(prompts)) == expected
    assert len(resumed) == 1 and len(resumed[0]) == 6 - saved and set(resumed[0]) <= set(prompts)
    speed = second.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]
    assert speed["samples"] == 6 and speed["cached"] == saved


def test_changed_settings_do_not_reuse_answers(model_path, tmp_path):
    save = str(tmp_path / "answers")
    prompts = tinygsm_prompts(2)
    make_lm(model_path, save_dir=save).generate_until(gen_requests(prompts))
    other = make_lm(model_path, save_dir=save, threshold=0.5)
    other.generate_until(gen_requests(prompts))
    assert other.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]["cached"] == 0
    assert len(AnswerStore(save, 0).load()) == 4
    # The batch size decides answers on models that ignore padding (upstream LLaDA): a new key.
    third = make_lm(model_path, save_dir=save, batch_size=1)
    third.generate_until(gen_requests(prompts))
    assert third.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]["cached"] == 0
    assert len(AnswerStore(save, 0).load()) == 6
    again = make_lm(model_path, save_dir=save, batch_size=1)
    again.generate_until(gen_requests(prompts))
    assert again.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]["cached"] == 2


# ----------------------------------------------------------------------------------------------
# warm start accounting
# ----------------------------------------------------------------------------------------------

def test_warm_start_and_fallbacks_are_counted(model_path, tmp_path):
    docs = tinygsm_docs(4)
    prompts = [f"Question: {d['question']}\nAnswer:" for d in docs]
    proposals = tmp_path / "proposals.jsonl"
    proposals.write_text("".join(json.dumps({"prompt": p, "proposal": d["answer"]}) + "\n"
                                 for p, d in zip(prompts[:2], docs[:2])), encoding="utf-8")
    lm = make_lm(model_path, warm_init="token", rho=1.0, proposals=str(proposals))
    lm.generate_until(gen_requests(prompts))
    speed = lm.get_model_info()["llada_warmstart"]["speed"]["tinygsm"]
    assert speed["warm"] == 2 and speed["fallbacks"] == 2
    assert speed["fallback_reasons"] == {"no proposal for this prompt": 2}
    # rho=1 puts the whole aligned proposal (gen_length tokens) on each warm row's canvas.
    assert speed["injected_total"] == 2 * SMALL["gen_length"]


def test_show_speed_prints_the_table_to_the_console(model_path, capsys):
    """As upstream's eval prints its NFE: to the console, whatever logging lm-eval set up."""
    prompts = tinygsm_prompts(2)
    make_lm(model_path).generate_until(gen_requests(prompts))
    assert "NFE / time per task" not in capsys.readouterr().err
    make_lm(model_path, show_speed="True").generate_until(gen_requests(prompts))
    err = capsys.readouterr().err
    assert "NFE / time per task (llada_warmstart):" in err
    row = next(line for line in err.splitlines() if line.startswith("| tinygsm"))
    assert row.split("|")[2].strip() == "2"  # samples


def test_hook_variables_are_named_once_and_not_applied(model_path, monkeypatch, caplog):
    from fastdllm_warmstart import lm_eval_model

    monkeypatch.setattr(lm_eval_model, "_warned_hook_env", False)
    monkeypatch.setenv("FASTDLLM_WARMSTART_WARM_INIT", "token")
    with caplog.at_level("WARNING", logger="fastdllm_warmstart.lm_eval_model"):
        first, _ = make_lm(model_path), make_lm(model_path)
    warnings = [r.getMessage() for r in caplog.records if "FASTDLLM_WARMSTART_WARM_INIT" in r.getMessage()]
    assert len(warnings) == 1 and "--model_args" in warnings[0]
    assert not first.settings.run.warm.enabled


def test_harness_device_falls_back_to_the_cpu_and_follows_the_local_rank(monkeypatch, caplog):
    """lm-eval passes device=cuda:0 by default: without CUDA that is the CPU with a warning; a bad
    device string is the loader's one-line error; with CUDA each process takes its local rank's GPU."""
    from fastdllm_warmstart.loading import ModelLoadError
    from fastdllm_warmstart.lm_eval_utils import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("WARNING"):
        assert resolve_device("cuda:0", 1, 0) == torch.device("cpu")
    assert "CUDA is not available" in caplog.text
    assert resolve_device(None, 2, 1) == resolve_device("auto", 1, 0) == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="use cpu, cuda, cuda:0 or auto"):
        resolve_device("gpu0", 1, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", 2, 1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", 1, 0) == torch.device("cuda:0")


def test_summarize_speed_by_hand():
    rows = [{"nfe": 4, "gen_tokens": 8, "dllm_seconds": 1.0, "aux_seconds": 1.0, "warm": True,
             "fallback": None, "cached": True},
            {"nfe": 6, "gen_tokens": 2, "dllm_seconds": 2.0, "aux_seconds": 0.0, "warm": False,
             "fallback": "empty proposal", "cached": False}]
    s = summarize_speed(rows)
    assert (s["samples"], s["nfe_total"], s["nfe_mean"], s["gen_tokens_total"]) == (2, 10, 5.0, 10)
    assert s["tokens_per_nfe"] == 1.0 and s["tokens_per_second"] == 2.5
    assert (s["warm"], s["fallbacks"], s["cached"]) == (1, 1, 1)
    assert s["fallback_reasons"] == {"empty proposal": 1}
    assert s["calls_per_answer"] is None  # rows saved without a count
    rows[0]["model_calls"], rows[1]["model_calls"] = 1.5, 2.5
    s = summarize_speed(rows)
    assert s["calls_per_answer"] == 2.0
    table = format_speed_table({"tinygsm": s})
    assert "calls/answer" in table.splitlines()[0] and "| 2.00 " in table.splitlines()[2]


# ----------------------------------------------------------------------------------------------
# loglikelihood
# ----------------------------------------------------------------------------------------------

def test_monte_carlo_loglikelihood(model_path):
    lm = make_lm(model_path, mc_num=8, is_check_greedy=True)
    reqs = [Instance("loglikelihood", {}, ("Question: Tom has 3 apples.\nAnswer:", " 3 ."), 0,
                     ("t", 0, 1)),
            Instance("loglikelihood", {}, ("", "Tom has 3 apples"), 0, ("t", 1, 1))]
    first = lm.loglikelihood(reqs)
    assert [type(g) for _, g in first] == [bool, bool]
    assert all(math.isfinite(ll) and ll < 0 for ll, _ in first)
    assert lm.loglikelihood(reqs[::-1]) == first[::-1]  # seeded per request, not by order


def test_rolling_loglikelihood_is_refused(lm):
    with pytest.raises(NotImplementedError, match="generate_until"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("text",), 0, ("t", 0, 1))])


# ----------------------------------------------------------------------------------------------
# the eval command
# ----------------------------------------------------------------------------------------------

@needs_run_cli
@pytest.mark.parametrize("argv, expected", [
    (["--tasks", "tinygsm", "--rho", "2"], "rho=2.0 is out of range"),
    (["--tasks", "tinygsm", "--warm-init", "hot"], "invalid choice: 'hot'"),
    (["--tasks", "tinygsm", "--bogus"], "unrecognized arguments: --bogus"),
    (["--tasks", "tinygsm", "--model_args", "pretrained=x"], "Unknown model_args"),
    (["--tasks", "tinygsm", "--model_args", "use_cache=maybe"], "use_cache='maybe'"),
    (["--limit", "2"], "--tasks is required"),
    (["--tasks", "gsm8k", "--model", "hf", "--rho", "0.5"], "only apply to --model llada_warmstart"),
])
def test_eval_usage_errors_are_one_line_exit_2(argv, expected, capsys):
    assert eval_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "Traceback" not in err and len(err.splitlines()) == 1


def _eval_argv(model_path, out, *extra):
    argv = ["--tasks", "tinygsm", "--limit", "6", "--batch_size", "1", "--output_path", str(out),
            "--log_samples", "--gen-length", "16", "--block-length", "8", "--threshold", "0.9",
            "--warm-init", "token", "--rho", "0.5", *extra]
    if model_path is not None:
        argv += ["--model-path", model_path]
    return argv


def _proposal_file(tmp_path):
    docs = tinygsm_docs(6)
    path = tmp_path / "proposals.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question: {d['question']}\nAnswer:",
                                        "proposal": d["answer"]}) + "\n" for d in docs[::2]),
                    encoding="utf-8")
    return str(path)


def _load_outputs(out):
    results = json.loads(Path(glob.glob(str(out / "*" / "results_*.json"))[0]).read_text())
    samples = {}
    for line in Path(glob.glob(str(out / "*" / "samples_tinygsm_*.jsonl"))[0]).read_text().splitlines():
        s = json.loads(line)
        samples[(s["doc_id"], s["filter"])] = (s["resps"], s["filtered_resps"])
    return results, samples


@pytest.fixture(scope="module")
def single_process_run(model_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval_single")
    proposals = _proposal_file(tmp)
    out = tmp / "out"
    code = eval_main(_eval_argv(model_path, out, "--proposals", proposals))
    assert code == 0
    return proposals, _load_outputs(out)


@needs_run_cli
def test_eval_command_writes_metrics_and_speed(single_process_run, capsys):
    _, (results, samples) = single_process_run
    metrics = results["results"]["tinygsm"]
    assert "exact_match,strict-match" in metrics and "exact_match,flexible-extract" in metrics
    info = results["config"]["llada_warmstart"]
    assert info["run_config"]["warm"]["warm_init"] == "token"
    speed = info["speed"]["tinygsm"]
    assert speed["samples"] == 6 and speed["warm"] == 3 and speed["fallbacks"] == 3
    assert len(samples) == 12  # 6 docs x 2 filters


@needs_run_cli
def test_two_processes_match_one_process(model_path, single_process_run, tmp_path):
    """torchrun --nproc_per_node 2 on CPU (gloo): the merged metrics, answers and speed counts
    equal the single-process run's."""
    if os.environ.get("FASTDLLM_SKIP_DISTRIBUTED") == "1":
        pytest.skip("FASTDLLM_SKIP_DISTRIBUTED=1")
    proposals, (results1, samples1) = single_process_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastdllm_warmstart.eval", *_eval_argv(model_path, out, "--proposals", proposals)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NFE / time per task" in proc.stdout
    results2, samples2 = _load_outputs(out)
    assert results2["results"]["tinygsm"] == results1["results"]["tinygsm"]
    assert samples2 == samples1
    speed1 = results1["config"]["llada_warmstart"]["speed"]["tinygsm"]
    speed2 = results2["config"]["llada_warmstart"]["speed"]["tinygsm"]
    for key in ("samples", "nfe_total", "gen_tokens_total", "warm", "fallbacks"):
        assert speed2[key] == speed1[key], key
    assert results2["config"]["llada_warmstart"]["harness"]["world_size"] == 2


def test_tinygsm_task_loads_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(TASK_DIR / "tinygsm"))
    try:
        import utils as tinygsm_utils  # the file lm-eval loads via !function
    finally:
        sys.path.remove(str(TASK_DIR / "tinygsm"))
        sys.modules.pop("utils", None)
    data = tinygsm_utils.load_tinygsm(model_path="ignored", version=1.0)
    assert set(data) == {"train", "test"} and len(data["test"]) == 500
    assert data["test"][0]["answer"].split("#### ")[-1].strip().isdigit()


@needs_run_cli
def test_eval_unknown_task_is_a_usage_error(capsys):
    assert eval_main(["--tasks", "no_such_task_xyz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("error: Tasks not found: no_such_task_xyz")
    assert not any("Traceback" in line for line in err)


@needs_run_cli
def test_eval_reads_tasks_and_model_args_from_config_file(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("tasks: [tinygsm]\nmodel_args: {rho: 3}\n", encoding="utf-8")
    assert eval_main(["--config", str(config)]) == 2
    assert "rho=3.0 is out of range" in capsys.readouterr().err


@pytest.mark.skipif(HAS_RUN_CLI, reason="this lm-eval has the run command line")
def test_eval_on_an_older_lm_eval_names_the_fix(capsys):
    from fastdllm_warmstart.compat import lm_eval_version

    assert eval_main(["--tasks", "tinygsm"]) == 2
    err = capsys.readouterr().err
    assert f"lm-eval {lm_eval_version()} lacks" in err and "lm-eval==0.4.13" in err


TASK_YAML = """task: tinygsm_json
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Question:"]
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_harness_evaluator_runs_the_model(model_path, tmp_path, capsys):
    """lm-eval's own simple_evaluate drives the model on every tested lm-eval, 0.4.8 included
    (on a plain JSON task, so the model is tested apart from the tinygsm task class). 0.4.8
    keeps model info out of its results, so the speed figures are read from show_speed's table."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    (tmp_path / "tinygsm_json.yaml").write_text(TASK_YAML.format(data=TEST_JSONL))
    embedded = model_path is None  # then the embedded aux model drafts the warm start
    args = dict(SMALL, device="cpu", batch_size=2, show_speed=True, **(
        {"warm_init": "token"} if embedded else {"model_path": model_path}))
    results = simple_evaluate(model="llada_warmstart", model_args=args, tasks=["tinygsm_json"],
                              limit=2, task_manager=TaskManager(include_path=str(tmp_path)))
    assert "exact_match,none" in results["results"]["tinygsm_json"]
    row = next(line for line in capsys.readouterr().err.splitlines()
               if line.startswith("| tinygsm_json "))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]  # Task, n, ..., warm, fallbacks, cached
    assert cells[1] == "2" and cells[-3] == ("2" if embedded else "0")
    assert float(cells[3]) > 0  # calls per answer


@pytest.fixture(scope="module")
def task_manager():
    """lm-eval's own task manager with the package's tasks, as ``--tasks tinygsm`` uses it
    (indexing lm-eval's task folders is the slow part, so it is built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR))


def _load_tinygsm_with_lm_eval(task_manager):
    """A freshly built ``tinygsm`` task (its YAML and Python file read, its data loaded)."""
    import warnings

    from lm_eval.tasks import get_task_dict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 0.4.13 prefers TaskManager.load
        return get_task_dict(["tinygsm"], task_manager)["tinygsm"]


def test_tinygsm_task_loads_through_the_task_manager(task_manager, tmp_path, monkeypatch):
    """Every tested lm-eval (0.4.8 and 0.4.13) builds the task offline from any working directory,
    with the shipped test split as its documents and the gsm8k-style prompt."""
    monkeypatch.chdir(tmp_path)
    task = _load_tinygsm_with_lm_eval(task_manager)
    shipped = [json.loads(line) for line in TEST_JSONL.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    docs = list(task.test_docs())
    assert len(docs) == len(shipped)
    for doc, row in ((docs[0], shipped[0]), (docs[-1], shipped[-1])):
        assert (doc["question"], doc["answer"]) == (row["question"], row["answer"])
    assert task.doc_to_text(docs[0]) == f"Question: {shipped[0]['question']}\nAnswer:"
    assert task.doc_to_target(docs[0]) == shipped[0]["answer"]


def test_tinygsm_task_scores_through_its_filters(task_manager):
    """Both filters pull the final number out of a gsm8k-style answer and exact_match compares it
    with the gold answer's, so the gold text scores 1 and a wrong final number 0."""
    task = _load_tinygsm_with_lm_eval(task_manager)
    task.build_all_requests(limit=2)
    gold = [inst.doc["answer"] for inst in task.instances]
    final = [answer.split("#### ")[-1].strip() for answer in gold]
    responses = [gold[0], gold[1].rsplit("#### ", 1)[0] + f"#### {int(final[1]) + 1}"]
    for inst, response in zip(task.instances, responses):
        inst.resps = [response]
    task.apply_filters()
    for name in ("strict-match", "flexible-extract"):
        extracted = [inst.filtered_resps[name] for inst in task.instances]
        assert extracted == [final[0], str(int(final[1]) + 1)], name
        scores = [task.process_results(inst.doc, [inst.filtered_resps[name]])["exact_match"]
                  for inst in task.instances]
        assert scores == [1.0, 0.0], name
