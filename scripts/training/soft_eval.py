"""Validation of a model trained to read soft inputs: the dual-cache threshold decoder cold, with
the RCD residual stream, and with aux-like drafts laid by the embedding warm start (alpha 0.6)."""

from __future__ import annotations

import random
import time
from typing import Dict, Sequence

import torch

from fastdllm_warmstart.tasks import tinygsm

from .data import GEN_LENGTH
from .evaluation import engine_decode, score

DRAFT_SEED = 4242  # the validation drafts are the same at every evaluation and in every run
DRAFT_WRONG = 0.5  # about the tiny aux model's rate of answers with a wrong result
DRAFT_OTHER = 0.1  # drafts written for another problem
ALPHA = 0.6


def validation_drafts(tok, problems: Sequence[dict], seed: int = DRAFT_SEED) -> torch.Tensor:
    """(B, G) aux-like drafts for ``problems`` (EOS-padded token ids on the canvas), fixed by ``seed``."""
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(problems):
        j = (i + 1 + rng.randrange(len(problems) - 1)) % len(problems) if rng.random() < DRAFT_OTHER else i
        ids = tok.encode(" " + tinygsm.draft_answer(problems[j], rng, DRAFT_WRONG), add_special_tokens=False)
        ids = ids[:GEN_LENGTH]
        rows.append(ids + [tok.eos_token_id] * (GEN_LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def evaluate_modes(model, tok, problems: Sequence[dict], modes: Sequence[str], t_res: float,
                   batch_size: int = 100) -> Dict[str, float]:
    """``acc_<mode>`` and ``nfe_<mode>`` (mean per problem) for each of ``cold``, ``rcd`` (the
    residual stream at ``t_res``, zeros start) and ``embed`` (drafts at alpha 0.6, no verifier)."""
    from fastdllm_warmstart.residual import ResidualContext
    from fastdllm_warmstart.warmstart import EmbeddingInterpolation

    questions = [p["question"] for p in problems]
    drafts = validation_drafts(tok, problems) if "embed" in modes else None
    makers = {"cold": None, "rcd": lambda rows: [ResidualContext(t_res=t_res)],
              "embed": lambda rows: [EmbeddingInterpolation(drafts[rows], alpha=ALPHA)]}
    out: Dict[str, float] = {}
    t0 = time.time()
    for mode in modes:
        texts, nfes = engine_decode(model, tok, questions, "dual", batch_size, makers[mode])
        out[f"acc_{mode}"] = score(problems, texts)
        out[f"nfe_{mode}"] = sum(nfes) / len(nfes)
    out["eval_s"] = round(time.time() - t0, 1)
    return out
