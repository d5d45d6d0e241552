"""APD (arXiv 2506.00413) as a decoding mode: the acceptance criterion on hand-made logits, then
through the engine with a scripted dLLM and a scripted AR model whose beliefs are known, so every
step's accepted prefix length is computed by hand; then the tokenizer bridge."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from scripted_model import ScriptedLM  # noqa: E402

from fastdllm_warmstart import ConfigError, DecodeCallback, configs_from_flat, generate  # noqa: E402
from fastdllm_warmstart.apd.decoding import (AdaptiveParallelDecoding, accepted_prefix,  # noqa: E402
                                             mixture_agrees)
from fastdllm_warmstart.apd.scorers import BridgeScorer, SharedVocabScorer  # noqa: E402

MASK, EOS, PAD = 2, 3, 0
B, P, G, BLOCK, V = 2, 5, 16, 8, 40
P_DLLM = 0.95  # the scripted dLLM's probability of its target token (the rest: distractors)
P_AR = 0.9     # the scripted AR model's probability of its own next token


# -- the criterion on hand-made logits ------------------------------------------------------------

def test_accepted_prefix_is_the_agreeing_run_from_its_first_token():
    run = torch.tensor([[False, True, True, True, False], [True, True, True, True, True],
                        [False, False, False, False, False]])
    agree = torch.tensor([[True, False, False, True, True], [True, True, True, False, True],
                          [True, True, True, True, True]])
    got = accepted_prefix(agree, run)
    # row 0: the first run token disagrees and is kept anyway, the second stops the run;
    # row 1: three, then a disagreement; row 2: no run, nothing
    assert got.tolist() == [[False, True, False, False, False], [True, True, True, False, False],
                            [False] * 5]


def _logp(rows):
    return torch.log(torch.tensor(rows, dtype=torch.float64))


def test_the_mixture_is_of_log_probabilities_with_shared_noise():
    # the dLLM proposes token 0 (0.6 vs 0.4); the AR prefers token 1 (0.3 vs 0.7).
    d = _logp([[[0.6, 0.4]]])
    a = _logp([[[0.3, 0.7]]])
    x0 = torch.tensor([[0]])
    zero = torch.zeros(1, 1, 2, dtype=torch.float64)
    # R log 0.6 + (1 - R) log 0.3 >= R log 0.4 + (1 - R) log 0.7  <=>  R >= R*, by hand:
    r_star = math.log(7 / 3) / (math.log(7 / 3) + math.log(6 / 4))
    assert bool(mixture_agrees(x0, d, a, zero, r_star + 0.01))
    assert not bool(mixture_agrees(x0, d, a, zero, r_star - 0.01))
    assert bool(mixture_agrees(x0, d, a, zero, 1.0)) and not bool(mixture_agrees(x0, d, a, zero, 0.0))
    # R = 1 keeps whatever the noise made the dLLM sample, even an unlikely token (shared noise)
    noise = torch.tensor([[[0.0, 5.0]]], dtype=torch.float64)
    x0_noisy = (d + noise).argmax(-1)
    assert x0_noisy.item() == 1 and bool(mixture_agrees(x0_noisy, d, a, noise, 1.0))
    # -inf (a banned token) in either model never makes nan
    a_inf = torch.tensor([[[float("-inf"), 0.0]]], dtype=torch.float64)
    assert bool(mixture_agrees(x0, d, a_inf, zero, 1.0)) and not bool(mixture_agrees(x0, d, a_inf, zero, 0.0))


# -- through the engine: scripted dLLM + scripted AR ----------------------------------------------

class ScriptedAR(torch.nn.Module):
    """An AR model on the dLLM's vocabulary: after the token at model position p it predicts
    ``table[row, p + 1]`` with probability ``P_AR`` (the rest spread). The row is recognised by
    its first prompt token; position ids are the canvas columns (prompts are not padded)."""

    def __init__(self, table: torch.Tensor, first_tokens: torch.Tensor):
        super().__init__()
        self.table, self.first = table, first_tokens.tolist()
        self.config = type("C", (), {"vocab_size": V})()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, input_ids, attention_mask, position_ids):
        self.calls += 1
        N, T = input_ids.shape
        probs = torch.full((N, T, V), (1 - P_AR) / (V - 1), dtype=torch.float64)
        for n in range(N):
            start = int(attention_mask[n].long().argmax())
            row = self.first.index(int(input_ids[n, start]))
            nxt = self.table[row, (position_ids[n] + 1).clamp(max=self.table.shape[1] - 1)]  # (T,)
            probs[n].scatter_(-1, nxt.view(-1, 1), P_AR)
        return type("O", (), {"logits": probs.log().float()})()


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(10, 40, (B, G), generator=gen)
    prompt = torch.randint(10, 40, (B, P), generator=gen)
    prompt[:, 0] = torch.tensor([10, 11])  # distinct first tokens: the scripted AR tells rows apart
    return target, prompt


class StepLog(DecodeCallback):
    def __init__(self):
        self.commits = []

    def after_commit(self, state):
        self.commits.append(state.transfer.sum(dim=1).tolist())


def run_apd(problem, disagree, mixture, temperature=0.0, cache="dual", max_parallel=BLOCK):
    """Decode with APD; the AR agrees with the dLLM's target except at generation positions
    ``disagree`` (row 0; row 1 always agrees). Returns (canvas, commits per step, AR, callback)."""
    target, prompt = problem
    table = torch.cat((prompt, target), dim=1).clone()  # (B, P + G) the AR's own text
    for g in disagree:
        table[0, P + g] = 10 + (int(table[0, P + g]) - 10 + 7) % 30  # another token
    ar = ScriptedAR(table, prompt[:, 0])
    apd = AdaptiveParallelDecoding(SharedVocabScorer(ar, V), mixture=mixture, max_parallel=max_parallel,
                                   temperature=temperature)
    log = StepLog()
    dllm = ScriptedLM(target, P, p0=P_DLLM, decay=1.0, vocab=V)
    out = generate(dllm, prompt, steps=G, gen_length=G, block_length=BLOCK, threshold=0.9, cache=cache,
                   temperature=temperature, callbacks=[apd, log], mask_id=MASK, eos_id=EOS, pad_id=PAD,
                   skip_done_rows=False, use_upstream=False)
    return out, log.commits, ar, apd


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_r0_accepts_exactly_where_the_ar_argmax_agrees(problem, cache):
    out, commits, ar, _ = run_apd(problem, disagree=[3, 11], mixture=0.0, cache=cache)
    # block 0: 0-2 agree, 3 stops the run; 3 (first, kept) and 4-7; block 1 likewise at 11
    assert [c[0] for c in commits] == [3, 5, 3, 5]
    assert [c[1] for c in commits] == [8, 0, 8, 0]  # row 1's AR always agrees; then it rides along
    assert torch.equal(out.generated, problem[0])  # the dLLM's tokens, never the AR's
    assert out.nfe.tolist() == [4, 2]
    assert out.stats["aux_forwards"].tolist() == [4, 2]  # one aux forward per step with a run of >= 2


def test_the_first_token_is_kept_even_when_the_ar_disagrees(problem):
    _, commits, _, _ = run_apd(problem, disagree=[0, 1, 2], mixture=0.0)
    # step 1: position 0 kept, 1 disagrees; step 2: 1 kept, 2 disagrees; step 3: 2 kept, 3-7 agree
    assert [c[0] for c in commits[:3]] == [1, 1, 6]


def test_r1_accepts_every_token_the_dllm_proposed(problem):
    out, commits, ar, _ = run_apd(problem, disagree=[0, 3, 5, 11], mixture=1.0)
    assert [c[0] for c in commits] == [8, 8] and out.nfe.tolist() == [2, 2]
    assert ar.calls == 0 and out.stats["aux_forwards"].tolist() == [0, 0]  # the aux has no say


def test_r1_with_sampling_keeps_the_dllm_sample_whatever_it_is(problem):
    # temperature 1: the dLLM samples distractors too; with R = 1 the mixture, sampled with the
    # same noise, is the dLLM's own sample, so every run goes through whole.
    out, commits, _, _ = run_apd(problem, disagree=[3, 11], mixture=1.0, temperature=1.0)
    assert [c[0] for c in commits] == [8, 8]
    assert not torch.equal(out.generated[0], problem[0][0])  # it did sample something else


def test_the_mixture_weight_where_the_ar_starts_to_win(problem):
    # At a disagreement: dLLM log-probs (P_DLLM on its token, ~0 on the AR's), AR log-probs
    # (eps on the dLLM's token, P_AR on its own). Accept iff R >= R*, by hand:
    eps = (1 - P_AR) / (V - 1)
    p_other = 1e-6  # the scripted dLLM's floor on a token that is neither target nor distractor
    gain_dllm = math.log(P_DLLM) - math.log(p_other)
    gain_ar = math.log(P_AR) - math.log(eps)
    r_star = gain_ar / (gain_dllm + gain_ar)
    _, below, _, _ = run_apd(problem, disagree=[3, 11], mixture=r_star - 0.02)
    _, above, _, _ = run_apd(problem, disagree=[3, 11], mixture=r_star + 0.02)
    assert [c[0] for c in below] == [3, 5, 3, 5] and [c[0] for c in above] == [8, 8]


def test_max_parallel_caps_the_run(problem):
    _, commits, _, _ = run_apd(problem, disagree=[], mixture=0.0, max_parallel=3)
    assert [c[0] for c in commits] == [3, 3, 2, 3, 3, 2]


def test_a_run_of_one_needs_no_aux_forward(problem):
    out, _, ar, _ = run_apd(problem, disagree=[], mixture=0.0, max_parallel=1)
    assert ar.calls == 0 and out.stats["aux_forwards"].tolist() == [0, 0] and out.nfe.tolist() == [G, G]


def test_config_validates_and_refuses_a_warm_start():
    cfg = configs_from_flat(apd="true", apd_mixture="0.5", apd_max_parallel="4")
    assert (cfg.apd.enabled, cfg.apd.mixture, cfg.apd.max_parallel) == (True, 0.5, 4)
    for bad in ({"apd_mixture": "1.5"}, {"apd_max_parallel": "0"}, {"apd_bridge_tau": "0"},
                {"apd": "true", "warm_init": "token"}):
        with pytest.raises(ConfigError):
            configs_from_flat(bad)


# -- across the tokenizer bridge ------------------------------------------------------------------

class IntendedAux(torch.nn.Module):
    """An aux on its own vocabulary that, at model position p, predicts ``intended[p + 1]`` with
    probability P_AR."""

    def __init__(self, intended, vocab):
        super().__init__()
        self.intended, self.V = torch.tensor(intended), vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids):
        N, T = input_ids.shape
        probs = torch.full((N, T, self.V), (1 - P_AR) / (self.V - 1), dtype=torch.float64)
        nxt = self.intended[(position_ids + 1).clamp(max=len(self.intended) - 1)]  # (N, T)
        probs.scatter_(-1, nxt.unsqueeze(-1), P_AR)
        return type("O", (), {"logits": probs.log().float()})()


@pytest.mark.parametrize("tau, accepted", [(0.3, 3), (1e-5, 5)])
def test_the_bridge_scores_each_dllm_token_by_the_aux_tokens_inside_it(tau, accepted):
    from fastdllm_warmstart.engine.state import DecodeState
    from fastdllm_warmstart.tokenization import build_aux_tokenizer, build_dllm_tokenizer

    dtok, atok = build_dllm_tokenizer(), build_aux_tokenizer()
    prompt_text = "Question: Tom has 3 apples and buys 4. How many?\nAnswer:"
    answer, run = "3 + 4 =", "7 . so 12 apples"
    prompt = dtok(prompt_text)["input_ids"]
    ids = prompt + dtok.encode(answer, add_special_tokens=False) + dtok.encode(run, add_special_tokens=False)
    n_run = len(dtok.encode(run, add_special_tokens=False))
    assert n_run == 5 and len(atok.tokenize(run)) == 6  # "12" is "1", "##2" for the aux
    # the aux believes "13": its "##2" is improbable, so the 4th dLLM token ("12") fails at tau
    # 0.3 (its text gets 0.9 x eps = 8e-5); at tau 1e-5 it passes, and everything is kept
    want = atok(prompt_text + " " + answer + " 7 . so 13 apples", add_special_tokens=False)["input_ids"]
    aux = IntendedAux(want, len(atok))
    width = len(prompt)
    block_start = len(prompt) + len(dtok.encode(answer, add_special_tokens=False))
    x = torch.tensor([ids + [dtok.eos_token_id] * 3])
    state = DecodeState(model=None, x=x, attention_mask=None, prompt_width=width,
                        prompt_lengths=torch.tensor([width]), gen_length=x.shape[1] - width,
                        block_length=8, mask_id=dtok.mask_token_id, eos_id=dtok.eos_token_id,
                        pad_id=dtok.pad_token_id, generator=torch.Generator(), problem=torch.tensor([0]))
    run_mask = torch.tensor([[True] * n_run + [False] * 3])
    scorer = BridgeScorer(aux, atok, dtok, [prompt_text], tau=tau)
    scores = scorer.score(state, torch.tensor([0]), x, run_mask, block_start)
    assert scores.forwards.tolist() == [True]
    assert int(accepted_prefix(scores.agree, run_mask).sum()) == accepted


def test_the_bridge_is_the_identity_for_an_aux_on_the_dllm_tokenizer():
    """Aux text -> dLLM canvas (alignment.align_to_canvas) gives back the aux's own ids when the aux
    speaks the dLLM's tokenizer: nothing is lost or re-split on the way."""
    from fastdllm_warmstart.auxiliary.alignment import align_to_canvas
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer

    tok = build_dllm_tokenizer()
    for p in tinygsm.generate_problems(5, 50):
        ids = tok.encode(" " + p["answer"], add_special_tokens=False)
        text = tok.decode(ids, skip_special_tokens=True)
        assert align_to_canvas(text, tok, 96) == (ids + [tok.eos_token_id] * 96)[:96]


def test_the_embedded_dllm_tokenizer_aux_shares_the_vocabulary():
    from transformers import AutoTokenizer

    from fastdllm_warmstart.apd.scorers import shares_vocabulary
    from fastdllm_warmstart.auxiliary.model_files import resolve_model_path
    from fastdllm_warmstart.tokenization import build_aux_tokenizer, build_dllm_tokenizer

    try:
        folder, model_id = resolve_model_path("embedded:tiny-aux-dllmtok")
    except FileNotFoundError:
        pytest.skip("the embedded tiny-aux-dllmtok is not in this tree")
    assert model_id.startswith("embedded:tiny-aux-dllmtok@")
    assert shares_vocabulary(AutoTokenizer.from_pretrained(folder), build_dllm_tokenizer())
    assert not shares_vocabulary(build_aux_tokenizer(), build_dllm_tokenizer())
    with pytest.raises(FileNotFoundError, match="embedded:tiny-aux"):
        resolve_model_path("embedded:no-such-aux")


def test_apd_end_to_end_through_the_runner_the_cli_and_model_args(random_model_dirs):
    """The embedded-style path: runner + aux across the bridge; aux forwards counted apart from the
    dLLM's; the CLI takes the flags (a bad value is one line, exit 2); lm-eval model_args too."""
    import subprocess

    from fastdllm_warmstart.lm_eval_utils import EvalSettings
    from fastdllm_warmstart.runner import WarmStartRunner

    cfg = configs_from_flat(apd=True, apd_max_parallel=4, aux_model=random_model_dirs["aux"], gen_length=32,
                            block_length=16)
    runner = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], cfg, threads=1)
    prompts = ["Question: Tom has 3 apples. How many?\nAnswer:", "Question: Leo has 5 pens.\nAnswer:",
               "Question: Ann has 2 cats and 4 dogs. How many pets?\nAnswer:"]
    res = runner.generate(prompts, batch_size=2)
    for r in res:
        assert r.nfe >= 32 / 4 and 0 < r.aux_forwards <= r.nfe  # at most one aux forward per step
    args = EvalSettings.from_model_args({"apd": "true", "apd_mixture": "0.5", "apd_max_parallel": "8"})
    assert (args.run.apd.enabled, args.run.apd.mixture, args.run.apd.max_parallel) == (True, 0.5, 8)
    proc = subprocess.run([sys.executable, "-m", "fastdllm_warmstart.cli", "generate", "--apd",
                           "--apd-max-parallel", "0", "--prompt", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "apd_max_parallel" in proc.stderr and "Traceback" not in proc.stderr


def test_a_continuous_batch_decodes_each_row_as_the_static_batch():
    """Refill commits several groups' rows in one call (rows at other block steps of the same
    block): every row gets its tokens, NFE and aux forwards of the static batch."""
    from fastdllm_warmstart.runner import WarmStartRunner
    from fastdllm_warmstart.tasks import tinygsm

    prompts = [tinygsm.format_prompt(p["question"]) for p in tinygsm.generate_problems(3, 8)]
    runner = WarmStartRunner.from_pretrained(None, threads=1)
    got = {}
    for batching in ("static", "refill"):
        cfg = configs_from_flat(apd=True, apd_mixture=0.5, batching=batching)
        got[batching] = [(r.token_ids, r.nfe, r.aux_forwards) for r in runner.generate(prompts, cfg, batch_size=3)]
    assert got["refill"] == got["static"]


def test_only_one_callback_may_own_the_commit(problem):
    target, prompt = problem
    owners = [AdaptiveParallelDecoding(None), AdaptiveParallelDecoding(None)]
    with pytest.raises(ValueError, match="own the commit"):
        generate(ScriptedLM(target, P, vocab=V), prompt, steps=G, gen_length=G, block_length=BLOCK,
                 callbacks=owners, mask_id=MASK, eos_id=EOS, pad_id=PAD, use_upstream=False)
