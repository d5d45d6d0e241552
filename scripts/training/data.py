"""Training data for the tinygsm models: an endless seeded problem stream, the LLaDA canvas
encoding (left-padded prompt + EOS-padded answer canvas, with equation spans) and the
prompt-only canvas the decoders start from."""

from __future__ import annotations

import random
from typing import Dict, List, Optional, Sequence

import torch

from fastdllm_warmstart.tasks import tinygsm

GEN_LENGTH = 96
BLOCK_LENGTH = 32
THRESHOLD = 0.9


class ProblemStream:
    """Endless seeded stream of training problems, skipping excluded questions.

    ``group_frac``: when given, the fraction of problems with a group sub-result (``3 bags with 4
    muffins in each bag``, whose product may come before the chain or right before its use): each
    problem first draws whether it has one (probability ``group_frac``), then problems are drawn
    until one matches. A training curriculum only (the task's own mix is what the generator
    draws); None keeps the generator's mix, exactly as before."""

    def __init__(self, seed: int, exclude: set, group_frac: Optional[float] = None):
        if group_frac is not None and not 0.0 <= group_frac <= 1.0:
            raise ValueError(f"group_frac={group_frac}: use a fraction in [0, 1] (or None for the task's own mix)")
        self.rng = random.Random(seed)
        self.exclude = exclude
        self.group_frac = group_frac

    def _draw(self) -> dict:
        if self.group_frac is None:
            return tinygsm.generate_problem(self.rng)
        want = self.rng.random() < self.group_frac
        while True:
            p = tinygsm.generate_problem(self.rng)
            if tinygsm.has_group(p) == want:
                return p

    def next_batch(self, n: int, pool: int = 8) -> List[dict]:
        """Batches come from a pool of ``pool`` batches sorted by question length (less padding)."""
        if not getattr(self, "queue", None):
            out = []
            while len(out) < n * pool:
                p = self._draw()
                if p["question"] not in self.exclude:
                    out.append(p)
            out.sort(key=lambda p: len(p["question"]))
            batches = [out[i * n:(i + 1) * n] for i in range(pool)]
            self.rng.shuffle(batches)
            self.queue = batches
        return self.queue.pop()


# ---------------------------------------------------------------------------------------------
# dLLM
# ---------------------------------------------------------------------------------------------

_OP_TOKENS = {"+", "-", "*", "/", "plus", "minus", "times"}


def _is_number(t: str) -> bool:
    return t.isdigit()


def equation_spans(tokens: Sequence[str]):
    """``(first, last, result)`` canvas positions of every equation in an answer's tokens, whatever
    its wording: ``a op b = c``, ``a <word> b is c`` (``divided by`` is two tokens) or
    ``c = a op b``. ``first..last`` covers the operands, operator and ``=``/``is``; ``result`` is c."""
    spans = []
    n = len(tokens)
    for q, t in enumerate(tokens):
        if t not in ("=", "is"):
            continue
        if q + 1 < n and _is_number(tokens[q + 1]) and q >= 3 and _is_number(tokens[q - 1]):
            if tokens[q - 2] in _OP_TOKENS and _is_number(tokens[q - 3]):
                spans.append((q - 3, q, q + 1))
                continue
            if q >= 4 and tokens[q - 2] == "by" and tokens[q - 3] == "divided" and _is_number(tokens[q - 4]):
                spans.append((q - 4, q, q + 1))
                continue
        if t == "=" and q >= 1 and _is_number(tokens[q - 1]) and q + 3 < n and _is_number(tokens[q + 1]) \
                and tokens[q + 2] in _OP_TOKENS and _is_number(tokens[q + 3]):
            spans.append((q, q + 3, q - 1))
    return spans


def dllm_encode_batch(tok, problems: Sequence[dict], device) -> Dict[str, torch.Tensor]:
    """Left-padded prompt ids + GEN_LENGTH-token EOS-padded answer canvas (+ equation spans)."""
    prompts = [tok.encode(tinygsm.format_prompt(p["question"]), add_special_tokens=False) for p in problems]
    answers = [tok.encode(" " + p["answer"], add_special_tokens=False) for p in problems]
    P = max(len(x) for x in prompts)
    B = len(problems)
    ids = torch.full((B, P + GEN_LENGTH), tok.pad_token_id, dtype=torch.long)
    am = torch.zeros((B, P + GEN_LENGTH), dtype=torch.long)
    for i, (pr, an) in enumerate(zip(prompts, answers)):
        if len(an) >= GEN_LENGTH:
            raise ValueError(f"answer too long ({len(an)} tokens)")
        ids[i, P - len(pr):P] = torch.tensor(pr)
        canvas = an + [tok.eos_token_id] * (GEN_LENGTH - len(an))
        ids[i, P:] = torch.tensor(canvas)
        am[i, P - len(pr):] = 1
    spans = [equation_spans(tok.convert_ids_to_tokens(an)) for an in answers]
    result_first = torch.zeros((B, GEN_LENGTH), dtype=torch.bool)
    for i, sp in enumerate(spans):
        for first, _, res in sp:
            if res < first:
                result_first[i, res] = True
    return {"ids": ids.to(device), "am": am.to(device), "P": P, "spans": spans,
            "result_first": result_first.to(device)}


def prompt_canvas(tok, questions: Sequence[str], gen_length: int = GEN_LENGTH, device=None):
    """``(x, attention_mask, P)``: the questions' prompts left-padded with ``[PAD]`` (mask 0) to the
    longest, ``P`` tokens, followed by ``gen_length`` ``[MASK]`` tokens."""
    prompts = [tok.encode(tinygsm.format_prompt(q), add_special_tokens=False) for q in questions]
    P, B = max(len(x) for x in prompts), len(prompts)
    x = torch.full((B, P + gen_length), tok.mask_token_id, dtype=torch.long, device=device)
    am = torch.ones((B, P + gen_length), dtype=torch.long, device=device)
    for i, pr in enumerate(prompts):
        x[i, :P - len(pr)] = tok.pad_token_id
        am[i, :P - len(pr)] = 0
        x[i, P - len(pr):P] = torch.tensor(pr, device=device)
    return x, am, P
