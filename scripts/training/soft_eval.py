"""Validation of a model trained to read soft inputs: the dual-cache threshold decoder cold, with
the RCD residual stream, and with aux-like drafts laid by the embedding warm start (alpha 0.6)."""

from __future__ import annotations

import random
import time
from typing import Dict, Sequence

import torch

from fastdllm_warmstart.residual import ResidualContext
from fastdllm_warmstart.tasks import tinygsm

from .data import GEN_LENGTH
from .evaluation import engine_decode, score

DRAFT_SEED = 4242  # the validation drafts are the same at every evaluation and in every run
DRAFT_WRONG = 0.5  # about the tiny aux model's rate of answers with a wrong result
DRAFT_OTHER = 0.1  # drafts written for another problem
ALPHA = 0.6


MODES = ("cold", "rcd", "rcd_other_row", "embed", "embed_shuffled", "embed_near_miss")


def validation_drafts(tok, problems: Sequence[dict], seed: int = DRAFT_SEED, wrong: float = DRAFT_WRONG,
                      other: float = DRAFT_OTHER) -> torch.Tensor:
    """(B, G) aux-like drafts for ``problems`` (EOS-padded token ids on the canvas), fixed by ``seed``:
    one wrong result carried on with probability ``wrong``, written for another problem with ``other``."""
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(problems):
        j = (i + 1 + rng.randrange(len(problems) - 1)) % len(problems) if rng.random() < other else i
        ids = tok.encode(" " + tinygsm.draft_answer(problems[j], rng, wrong), add_special_tokens=False)
        ids = ids[:GEN_LENGTH]
        rows.append(ids + [tok.eos_token_id] * (GEN_LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


class OtherRowResidual(ResidualContext):
    """The residual stream's control: each row is fed the residual of the next row of the batch."""

    def before_forward(self, state) -> None:
        if self.weight is None or state.x.shape[0] < 2:
            return super().before_forward(state)
        own = self.residual, self.weight, self.has
        self.residual, self.weight, self.has = (t.roll(1, 0) for t in own)
        try:
            super().before_forward(state)
        finally:
            self.residual, self.weight, self.has = own


def evaluate_modes(model, tok, problems: Sequence[dict], modes: Sequence[str], t_res: float,
                   batch_size: int = 100) -> Dict[str, float]:
    """``acc_<mode>`` and ``nfe_<mode>`` (mean per problem) for each mode: ``cold``; ``rcd`` (the
    residual stream at ``t_res``, zeros start) and its control ``rcd_other_row`` (each row fed the
    next row's residual); ``embed`` (aux-like drafts at alpha 0.6, no verifier) and its checks
    ``embed_shuffled`` (every draft written for another problem) and ``embed_near_miss`` (every
    draft right in form with one wrong result)."""
    from fastdllm_warmstart.warmstart import EmbeddingInterpolation

    questions = [p["question"] for p in problems]
    drafts = {"embed": lambda: validation_drafts(tok, problems),
              "embed_shuffled": lambda: validation_drafts(tok, problems).roll(1, 0),
              "embed_near_miss": lambda: validation_drafts(tok, problems, wrong=1.0, other=0.0)}

    def embed(mode):
        d = drafts[mode]()
        return lambda rows: [EmbeddingInterpolation(d[rows], alpha=ALPHA)]

    makers = {"cold": lambda: None, "rcd": lambda: lambda rows: [ResidualContext(t_res=t_res)],
              "rcd_other_row": lambda: lambda rows: [OtherRowResidual(t_res=t_res)],
              **{m: (lambda m=m: embed(m)) for m in drafts}}
    out: Dict[str, float] = {}
    t0 = time.time()
    for mode in modes:
        texts, nfes = engine_decode(model, tok, questions, "dual", batch_size, makers[mode]())
        out[f"acc_{mode}"] = score(problems, texts)
        out[f"nfe_{mode}"] = sum(nfes) / len(nfes)
    out["eval_s"] = round(time.time() - t0, 1)
    return out
