"""The runner takes its config per call (as transformers' ``generate(inputs, generation_config)``).

A per-call config decodes exactly as a runner built with that config; the runner's own default
is left as it was; each aux set-up gets its own proposer, built once; a proposer passed per call
replaces the built one.
"""

from __future__ import annotations

import json

import pytest

from fastdllm_warmstart.auxiliary import Proposal
from fastdllm_warmstart.config import configs_from_flat
from fastdllm_warmstart.runner import WarmStartRunner

PROMPTS = ["Question: Tom has 7 apples. He buys 5 more apples. How many apples does Tom have now?\nAnswer:",
           "Question: Ann has 3 pens. She buys 4 more pens. How many pens does Ann have now?\nAnswer:"]
SMALL = {"gen_length": 32, "block_length": 16}


def _proposals_file(path, text):
    path.write_text("".join(json.dumps({"prompt": p, "proposal": text}) + "\n" for p in PROMPTS))
    return str(path)


def _key(results):
    return [(r.token_ids, r.nfe, r.injected, r.revoked, r.accepted, r.warm) for r in results]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("proposals")
    return {"good": _proposals_file(root / "good.jsonl", "7 + 5 = 12 . #### 12"),
            "other": _proposals_file(root / "other.jsonl", "3 + 4 = 7 . #### 7")}


@pytest.fixture(scope="module")
def runner(random_model_dirs):
    return WarmStartRunner.from_pretrained(random_model_dirs["dllm"], configs_from_flat(SMALL),
                                           device="cpu")


def test_per_call_config_decodes_as_a_runner_built_with_it(runner, random_model_dirs, files):
    default = runner.config
    warm = configs_from_flat({**SMALL, "warm_init": "token", "rho": 0.5, "remask": True,
                              "proposals": files["good"], "cache": "prefix"})
    per_call = runner.generate(PROMPTS, warm, batch_size=2)
    assert runner.config is default  # the runner's own config is not touched
    built = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], warm, device="cpu")
    assert _key(per_call) == _key(built.generate(PROMPTS, batch_size=2))
    assert _key(runner.generate(PROMPTS, batch_size=2)) == _key(built.generate(PROMPTS, default, batch_size=2))
    assert all(r.warm for r in per_call) and not any(r.warm for r in runner.generate(PROMPTS))


def test_one_proposer_per_aux_setup(runner, files):
    good = configs_from_flat({**SMALL, "warm_init": "token", "rho": 1.0, "proposals": files["good"]})
    other = configs_from_flat({**SMALL, "warm_init": "token", "rho": 1.0, "proposals": files["other"]})
    a = runner.generate_batch(PROMPTS, good)
    b = runner.generate_batch(PROMPTS, other)
    assert [r.proposal_text for r in a] != [r.proposal_text for r in b]
    assert runner.proposer_for(good.aux) is runner.proposer_for(good.aux)
    assert runner.proposer_for(good.aux) is not runner.proposer_for(other.aux)


def test_proposer_per_call_replaces_the_built_one(runner, files):
    config = configs_from_flat({**SMALL, "warm_init": "token", "rho": 1.0, "proposals": files["good"]})
    from_file = runner.proposer_for(config.aux).propose(PROMPTS, 32)

    class Swapped:  # each prompt gets the other prompt's draft
        def propose(self, prompts, gen_length):
            return [from_file[1 - PROMPTS.index(p)] for p in prompts]

    swapped = runner.generate_batch(PROMPTS, config, proposer=Swapped())
    assert [r.proposal_text for r in swapped] == [from_file[1].text, from_file[0].text]
    assert isinstance(from_file[0], Proposal)


def test_positional_batch_size_is_refused(runner):
    with pytest.raises(TypeError, match="batch_size= by keyword"):
        runner.generate(PROMPTS, 2)


def test_auto_remask_rule_resolves_by_what_the_model_supports():
    from fastdllm_warmstart.config import RemaskConfig

    auto = RemaskConfig(enabled=True)
    assert auto.rule == "auto" and auto.tau_accept is None
    spec = auto.resolved(transient_queries=True)
    assert (spec.rule, spec.tau_accept) == ("spec", 0.1)
    chain = auto.resolved(transient_queries=False)
    assert (chain.rule, chain.tau_accept, chain.rel) == ("chain", 0.3, 0.3)
    assert RemaskConfig(rule="wino").resolved(False).rule == "wino"
    # an explicit rule keeps its level; an explicit level is never replaced
    assert RemaskConfig(rule="accept").resolved(True).tau_accept == 0.3
    assert RemaskConfig(rule="spec", tau_accept=0.3).resolved(False).tau_accept == 0.3
    assert RemaskConfig(rule="revoke").resolved(True).rule == "revoke"


def test_the_runner_records_the_rule_it_decodes_with(random_model_dirs):
    from fastdllm_warmstart.config import RunConfig, configs_from_flat
    from fastdllm_warmstart.runner import WarmStartRunner

    runner = WarmStartRunner.from_pretrained(random_model_dirs["dllm"], RunConfig())
    cfg = runner.resolve(configs_from_flat({"warm_init": "token", "remask": True}))
    assert cfg.remask.rule == "spec" and not cfg.wino_decodes  # the tiny LLaDA takes transient queries
    wino = runner.resolve(configs_from_flat({"warm_init": "token", "remask": True, "wino": True}))
    assert wino.remask.rule == "wino" and wino.wino_decodes  # --wino judges the draft itself
    cold = runner.resolve(configs_from_flat({"remask": True, "remask_rule": "wino"}))
    assert not cold.wino_decodes  # no warm start: nothing to verify, the run stays cold
    runner.model.supports_transient_queries = False  # e.g. upstream's LLaDAModelLM
    assert runner.resolve(configs_from_flat({"warm_init": "token", "remask": True})).remask.rule == "chain"
