"""The training scripts validate with the package's engine: its ``none`` cache strategy decodes
exactly as the small self-contained threshold decoder the training code used to carry."""

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@torch.no_grad()
def retired_threshold_decode(model, tok, questions, gen_length=96, block_length=32, threshold=0.9):
    """The decoder ``training.threshold_decode`` was (no cache; rows leave a block's forwards once
    the block is filled; mask and pad never committed; every token at the threshold or above and at
    least the most confident one). Returns (generated ids per row, NFE per row)."""
    from scripts.training import prompt_canvas

    x, am, P = prompt_canvas(tok, questions, gen_length)
    mask_id, pad_id = tok.mask_token_id, tok.pad_token_id
    nfe = torch.zeros(x.shape[0], dtype=torch.long)
    for b in range(gen_length // block_length):
        s, e = P + b * block_length, P + (b + 1) * block_length
        while True:
            still = x[:, s:e] == mask_id
            active = still.any(1).nonzero(as_tuple=True)[0]
            if active.numel() == 0:
                break
            logits = model(x[active], attention_mask=am[active]).logits[:, s:e].float()
            logits[..., [mask_id, pad_id]] = -float("inf")
            conf, pred = torch.softmax(logits, dim=-1).max(-1)
            conf = torch.where(still[active], conf, torch.full_like(conf, -1.0))
            commit = conf >= threshold
            commit[torch.arange(active.numel()), conf.argmax(-1)] = True
            commit &= still[active]
            sub = x[active, s:e]
            sub[commit] = pred[commit]
            x[active, s:e] = sub
            nfe[active] += 1
    return x[:, P:], nfe


def test_engine_none_cache_gives_the_retired_decoders_tokens_and_nfe():
    from fastdllm_warmstart.assets import asset_path
    from fastdllm_warmstart.engine import generate
    from fastdllm_warmstart.models import TinyLLaDAModelLM
    from fastdllm_warmstart.tasks import tinygsm
    from fastdllm_warmstart.tokenization import build_dllm_tokenizer
    from scripts.training import BLOCK_LENGTH, GEN_LENGTH, THRESHOLD, eval_dllm

    tok = build_dllm_tokenizer()
    model = TinyLLaDAModelLM.from_pretrained(asset_path("tiny-dllm"), dtype=torch.float32).eval()
    problems = tinygsm.generate_problems(41, 12)
    questions = [p["question"] for p in problems]
    want_ids, want_nfe = retired_threshold_decode(model, tok, questions)
    prompts = [tok.encode(tinygsm.format_prompt(q), add_special_tokens=False) for q in questions]
    with torch.no_grad():
        out = generate(model, prompts, steps=GEN_LENGTH, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH,
                       threshold=THRESHOLD, cache="none", tokenizer=tok, use_upstream=False)
    assert torch.equal(out.generated, want_ids)
    assert out.nfe.tolist() == want_nfe.tolist()
    assert len(set(want_nfe.tolist())) > 1  # rows finish at different forwards: the row skipping is exercised
    r = eval_dllm(model, tok, problems, cache="none")
    assert r["nfe"] == sum(want_nfe.tolist()) / len(problems) and r["acc"] > 0.5
