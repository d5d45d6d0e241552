"""Validation decoding for the training scripts: threshold decoding through the package's engine
(no cache, prefix or dual), exact match against the reference answers."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fastdllm_warmstart.tasks import tinygsm

from .data import BLOCK_LENGTH, GEN_LENGTH, THRESHOLD


def score(problems: Sequence[dict], texts: Sequence[str]) -> float:
    ok = sum(1 for p, t in zip(problems, texts) if tinygsm.extract_final(t) == int(p["final"]))
    return ok / max(1, len(problems))


def engine_decode(model, tok, questions: Sequence[str], cache: str = "dual", batch_size: int = 100,
                  make_callbacks: Optional[Callable[[slice], list]] = None):
    """Threshold decoding through the package's engine (Fast-dLLM's cache strategies);
    ``make_callbacks(rows)`` gives each batch (``rows`` of ``questions``) its own fresh callbacks
    (e.g. an RCD residual stream, or an embedding warm start from those rows' drafts)."""
    from fastdllm_warmstart.engine import generate

    model.eval()
    texts: List[str] = []
    nfes: List[int] = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            rows = slice(start, min(start + batch_size, len(questions)))
            prompts = [tok.encode(tinygsm.format_prompt(q), add_special_tokens=False) for q in questions[rows]]
            out = generate(model, prompts, steps=GEN_LENGTH, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                           threshold=THRESHOLD, cache=cache, tokenizer=tok, use_upstream=False,
                           callbacks=make_callbacks(rows) if make_callbacks else None)
            nfes.extend(out.nfe.tolist())
            for row in out.generated.tolist():
                if tok.eos_token_id in row:
                    row = row[:row.index(tok.eos_token_id)]
                texts.append(tok.decode(row, skip_special_tokens=True))
    return texts, nfes


def eval_dllm(model, tok, problems, batch_size=100, cache: str = "none") -> Dict[str, float]:
    """Exact match and mean NFE of threshold decoding through the engine; ``cache``: none, prefix
    or dual (as the bench decodes)."""
    t0 = time.time()
    texts, nfes = engine_decode(model, tok, [p["question"] for p in problems], cache, batch_size)
    model.train()
    return {"acc": score(problems, texts), "nfe": sum(nfes) / len(nfes), "eval_s": time.time() - t0,
            "example": texts[0]}
