#!/usr/bin/env python
"""Is a tiny dLLM's threshold-decoding error miscalibration, or a calibrated model that is not sure enough?

Fast-dLLM's threshold rule commits every masked token whose top probability is at least 0.9 (and
at least the most confident one per forward). A model whose 0.9 means 0.9 still gets one such
commit in ten wrong; over an answer of ~60 tokens a few of those decide whether it is right. This
probe separates the two causes with temperature ``T`` (logits divided by ``T``):

* calibration, in the states training draws (random masking of the reference answer) and in the
  states the dual-cache threshold decoder itself visits (``scripts.training.teacher_forced_order`` replays
  it with the reference's tokens forced in, every state kept): per ``T``, mean NLL of the
  reference token, 10-bin expected calibration error (ECE) of the top-1 confidence, the fraction
  of masked tokens at or above 0.9, and how often those are right. NLL lowest at ``T`` = 1 means
  the model is calibrated as it is: a larger ``T`` is then not a fix of the model, only a stricter
  commit rule in disguise;
* decoding: strict accuracy and mean NFE of the dual-cache threshold decoder (the bench's cold
  baseline) per ``T``, on other problems, also split into problems with and without a group
  sub-result (``tinygsm.has_group``).

    python scripts/probe_calibration.py [--model embedded:tiny-dllm | PATH | run/snap_*.pt]
        [--seed 777] [--n 200] [--decode-seed 778] [--decode-n 1000] [--temps 1,1.25,1.5,2]

The temperature is applied by dividing the model's output head (``lm_head``) by ``T``; the shipped
model is never changed. A ``.pt`` snapshot of ``train_tiny.py`` needs ``--d-model``/``--layers``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "scripts"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from probe_decode_order import add_max_events_flag, load_or_exit  # noqa: E402

from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from fastdllm_warmstart.tokenization import build_dllm_tokenizer  # noqa: E402
from scripts.training import (BLOCK_LENGTH, block_forward, dllm_encode_batch, engine_decode,  # noqa: E402
                              mask_canvas, score, teacher_forced_order, versions)


@torch.no_grad()
def collect_states(model, tok, problems, seed: int = 0, batch_size: int = 50):
    """Logits and reference tokens at the masked positions of (a) one random LLaDA masking per
    problem and (b) every state of the teacher-forced dual-cache threshold decoder, all blocks.
    Returns ``{"random-mask": (logits (N, V), targets (N,)), "decoder states": (...)}``."""
    gen = torch.Generator().manual_seed(seed)
    out = {"random-mask": ([], []), "decoder states": ([], [])}
    mask_id = tok.mask_token_id
    for i in range(0, len(problems), batch_size):
        batch = dllm_encode_batch(tok, problems[i:i + batch_size], "cpu")
        ids, am, P = batch["ids"], batch["am"], batch["P"]
        _, m, _ = mask_canvas(batch, tok.eos_token_id, gen)
        canvas = ids[:, P:]
        xt = ids.clone()
        xt[:, P:] = torch.where(m, torch.full_like(canvas, mask_id), canvas)
        logits = model(xt, attention_mask=am).logits[:, P:]
        out["random-mask"][0].append(logits[m].float())
        out["random-mask"][1].append(canvas[m])
        for s in range(P, ids.shape[1] - BLOCK_LENGTH + 1, BLOCK_LENGTH):
            e = s + BLOCK_LENGTH
            order, past = teacher_forced_order(model, ids, am, s, e, mask_id, tok.pad_token_id)
            gold = ids[:, s:e]
            for k in range(int(order.max()) + 1):
                still = order >= k  # masked in the state before forward k
                xb = torch.where(still, torch.full_like(gold, mask_id), gold)
                logits = block_forward(model, xb, am, past, s)
                out["decoder states"][0].append(logits[still].float())
                out["decoder states"][1].append(gold[still])
    return {k: (torch.cat(v[0]), torch.cat(v[1])) for k, v in out.items()}


def calibration(logits: torch.Tensor, targets: torch.Tensor, temp: float, bins: int = 10) -> dict:
    """NLL, ECE (``bins`` equal-width bins of top-1 confidence), fraction of tokens at >= 0.9 and
    the accuracy of those, with the logits divided by ``temp``."""
    logp = F.log_softmax(logits / temp, -1)
    nll = -logp.gather(1, targets[:, None]).mean().item()
    conf, pred = logp.exp().max(-1)
    right = (pred == targets).float()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    ece = sum((which == b).float().mean().item() * abs(right[which == b].mean().item() - conf[which == b].mean().item())
              for b in range(bins) if (which == b).any())
    hi = conf >= 0.9
    return {"nll": round(nll, 4), "ece": round(ece, 4), "frac_ge_0.9": round(hi.float().mean().item(), 4),
            "acc_ge_0.9": round(right[hi].mean().item(), 4) if hi.any() else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:tiny-dllm")
    ap.add_argument("--seed", type=int, default=777, help="problems for the calibration tables")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--decode-seed", type=int, default=778, help="problems for the decoding table")
    ap.add_argument("--decode-n", type=int, default=1000, help="0 skips the decoding table")
    ap.add_argument("--temps", default="1,1.25,1.5,2")
    add_max_events_flag(ap)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        temps = [float(t) for t in args.temps.split(",")]
    except ValueError:
        ap.error(f"--temps {args.temps!r}: give comma-separated numbers, e.g. 1,1.5,2")
    if not temps or min(temps) <= 0:
        ap.error(f"--temps {args.temps!r}: every temperature must be positive")
    if args.n < 1 or args.decode_n < 0:
        ap.error("--n must be at least 1 and --decode-n at least 0")
    torch.set_num_threads(args.threads)
    tok = build_dllm_tokenizer()
    model = load_or_exit(args.model, tok, args.d_model, args.layers).eval()
    test = {p["question"] for p in tinygsm.load_jsonl(tinygsm.default_split_path("test"))}

    states = collect_states(model, tok, tinygsm.generate_problems(args.seed, args.n, exclude=test,
                                                                   max_events=args.max_events))
    calib = {name: {str(t): calibration(lg, y, t) for t in temps} for name, (lg, y) in states.items()}
    for name, rows in calib.items():
        print(f"{name} ({len(states[name][1])} masked tokens, seed {args.seed}, {args.n} problems)")
        for t, r in rows.items():
            print(f"  T={t:<5} NLL {r['nll']:.4f}  ECE {r['ece']:.4f}  at >= 0.9: {r['frac_ge_0.9']:.3f} "
                  f"of tokens, right {r['acc_ge_0.9']}")

    decode = {}
    if args.decode_n:
        problems = tinygsm.generate_problems(args.decode_seed, args.decode_n, exclude=test,
                                             max_events=args.max_events)
        questions = [p["question"] for p in problems]
        groups = {name: [i for i, p in enumerate(problems) if tinygsm.has_group(p) == want]
                  for name, want in (("group", True), ("no_group", False))}  # with a group sub-result or not
        n_events = [len(tinygsm.solve_question(q)[1]) for q in questions]
        for k in sorted(set(n_events)):  # by problem length
            groups[f"events_{k}"] = [i for i, n in enumerate(n_events) if n == k]
        head = model.get_output_embeddings()
        w0 = head.weight.data.clone()
        try:
            for t in temps:
                head.weight.data = w0 / t
                texts, nfes = engine_decode(model, tok, questions, cache="dual")
                r = decode[str(t)] = {"acc": round(score(problems, texts), 4), "nfe": round(sum(nfes) / len(nfes), 3)}
                for name, idx in groups.items():
                    if idx:
                        r[f"acc_{name}"] = round(score([problems[i] for i in idx], [texts[i] for i in idx]), 4)
                        r[f"n_{name}"] = len(idx)
                by_len = ", ".join(f"{name[7:]} events {r[f'acc_{name}']}" for name in groups
                                   if name.startswith("events_") and f"acc_{name}" in r)
                print(f"decode T={t:<5} accuracy {r['acc']:.3f} (with a group {r.get('acc_group')}, without "
                      f"{r.get('acc_no_group')}; {by_len})  NFE {r['nfe']:.2f} (dual cache, threshold 0.9, "
                      f"seed {args.decode_seed}, {args.decode_n} problems)")
        finally:
            head.weight.data = w0
    print(json.dumps({"model": args.model, "seed": args.seed, "n": args.n, "decode_seed": args.decode_seed,
                      "decode_n": args.decode_n,
                      "max_events": args.max_events or tinygsm.MAX_EVENTS, "calibration": calib, "decode": decode, "versions": versions()}))


if __name__ == "__main__":
    main()
