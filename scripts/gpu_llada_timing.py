#!/usr/bin/env python
"""Time a random-weight LLaDA-8B-shaped model on one GPU, in bf16: no trained weights needed.

The model is the package's ``TinyLLaDAModelLM`` at LLaDA-8B's shape (32 layers, hidden 4096,
32 heads, MLP 12288, vocabulary 126464; ~8B parameters, 16 GB in bf16), so every engine feature
(dual cache, spec's transient queries, continuous batching's packed calls) runs on it.

1. Per-step cost, cold vs each hook (dual cache, threshold 0.9, drafts never accepted so every
   mode runs the cold steps): milliseconds per forward step, medians of interleaved repeats, at
   batch 1 and batch 16.
2. Batch 16, static vs refill: ``--problems`` prompts whose rows finish at different times (a
   synthetic acceptor commits a problem-dependent number of extra tokens per step, as verified
   drafts do), decoded in static batches of 16 and as one continuous batch of 16: model calls,
   calls per answer, mean NFE and seconds, medians of interleaved repeats.

    PYTHONPATH=$PWD python scripts/gpu_llada_timing.py [--repeats 3] [--problems 64] [--json out.json]
    PYTHONPATH=$PWD python scripts/gpu_llada_timing.py --device cpu --layers 1 --hidden 64 --heads 2 \\
        --vocab 2000 --gen-length 32 --prompt-len 16 --problems 6 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fastdllm_warmstart import DecodeCallback, generate
from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM


class SyntheticAccept(DecodeCallback):
    """After each commit, fills the first ``extra[problem]`` masks of the row's block with a fixed
    token: rows finish their blocks after different numbers of forwards, deterministically, in a
    static or a continuous batch alike (what verified drafts do to a batch)."""

    supports_refill = True

    def __init__(self, extra: torch.Tensor, token: int):
        self.extra, self.token = extra, token

    def after_commit(self, state) -> None:
        blk = state.x[:, state.block_start:state.block_end]  # (B, Wb) view
        masked = (blk == state.mask_id) & state.active.view(-1, 1)
        k = self.extra.to(blk.device)[state.problem.clamp(min=0)].view(-1, 1)  # (B, 1)
        fill = masked & (masked.long().cumsum(dim=1) <= k)
        blk[fill] = self.token


def build_model(args, device, dtype) -> TinyLLaDAModelLM:
    mask_id = 126336 if args.vocab > 126336 else args.vocab - 2  # LLaDA's [MASK] id
    cfg = TinyLLaDAConfig(vocab_size=args.vocab, d_model=args.hidden, n_layers=args.layers,
                          n_heads=args.heads, mlp_ratio=3.0, max_sequence_length=4096,
                          mask_token_id=mask_id, eos_token_id=mask_id - 255, pad_token_id=mask_id - 255)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: no fp32 copy of 8B weights
    try:
        with torch.device(device):
            model = TinyLLaDAModelLM(cfg)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns, repeats, device):
    """name -> list of (seconds, result) per repeat, round-robin after one warm-up each."""
    for fn in fns.values():
        fn()
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            result = fn()
            sync(device)
            out[name].append((time.perf_counter() - t0, result))
    return out


def hook_modes(batch, gen_length, mask_id, threshold):
    from fastdllm_warmstart.config import RemaskConfig
    from fastdllm_warmstart.priors import ChainAccept, SpeculativeAccept
    from fastdllm_warmstart.residual import ResidualContext
    from fastdllm_warmstart.warmstart import ConfidenceRemask, EmbeddingInterpolation, TokenInjection

    draft = torch.full((batch, gen_length), mask_id + 1)  # one odd token: never accepted
    return {
        "cold": lambda: [],
        "token+revoke": lambda: [TokenInjection(draft, rho=0.25), ConfidenceRemask(RemaskConfig(enabled=True, rule="revoke"))],
        "embed": lambda: [EmbeddingInterpolation(draft, alpha=0.6)],
        "token+chain": lambda: [TokenInjection(draft, rho=0.25), ChainAccept(draft, threshold=threshold)],
        "token+spec": lambda: [TokenInjection(draft, rho=0.25), SpeculativeAccept(draft, tau_accept=0.1, threshold=threshold)],
        "rcd": lambda: [ResidualContext(t_res=0.95)],
    }


def part1(model, args, device, report):
    mask_id = model.config.mask_token_id
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        prompt = torch.randint(10, mask_id - 300, (batch, args.prompt_len), generator=g).to(device)
        common = dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.gen_length,
                      threshold=0.9, cache="dual", mask_id=mask_id, use_upstream=False)
        modes = hook_modes(batch, args.gen_length, mask_id, 0.9)
        fns = {name: (lambda make=make: generate(model, prompt, callbacks=make(), **common).total_nfe)
               for name, make in modes.items()}
        runs = interleaved(fns, args.repeats, device)
        ms = {name: statistics.median(t / n for t, n in v) * 1e3 for name, v in runs.items()}
        print(f"\n1. per-step cost, batch {batch} (dual cache, gen {args.gen_length}/{args.block_length}, "
              f"prompt {args.prompt_len}; ms per forward step, median of {args.repeats})")
        print(f"{'mode':<14} {'ms/step':>9} {'vs cold':>8}")
        for name, value in ms.items():
            print(f"{name:<14} {value:>9.2f} {100 * (value / ms['cold'] - 1):>7.1f}%")
        report[f"per_step_ms_batch{batch}"] = ms


def part2(model, args, device, report):
    mask_id = model.config.mask_token_id
    n = args.problems
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (n,), generator=g).tolist()
    prompts = [torch.randint(10, mask_id - 300, (k,), generator=g).tolist() for k in lengths]
    extra = torch.tensor([(0, 1, 3, 7)[i % 4] for i in range(n)])  # tokens accepted per step
    common = dict(gen_length=args.gen_length, block_length=args.block_length, steps=args.gen_length,
                  threshold=0.9, cache="dual", mask_id=mask_id, use_upstream=False)
    token = mask_id - 300

    def static():
        calls, nfe, answers = 0, 0, []
        for s in range(0, n, 16):
            out = generate(model, prompts[s:s + 16], callbacks=[SyntheticAccept(extra[s:s + 16], token)], **common)
            calls, nfe = calls + out.total_nfe, nfe + int(out.nfe.sum())
            answers.append(out.generated.cpu())
        return calls, nfe, torch.cat(answers)

    def refill():
        out = generate(model, prompts, callbacks=[SyntheticAccept(extra, token)], batching="refill",
                       batch_size=16, **common)
        return out.total_nfe, int(out.nfe.sum()), out.generated.cpu()

    runs = interleaved({"static": static, "refill": refill}, args.repeats, device)
    print(f"\n2. batch 16, {n} prompts, rows finishing at different times (median of {args.repeats})")
    print(f"{'batching':<9} {'calls':>6} {'calls/answer':>13} {'mean NFE':>9} {'seconds':>8} {'answers/s':>10}")
    for name, v in runs.items():
        sec = statistics.median(t for t, _ in v)
        calls, nfe, _ = v[0][1]
        print(f"{name:<9} {calls:>6} {calls / n:>13.2f} {nfe / n:>9.2f} {sec:>8.2f} {n / sec:>10.2f}")
        report[f"batch16_{name}"] = {"calls": calls, "mean_nfe": nfe / n, "seconds": [t for t, _ in v]}
    differ = int((runs["static"][0][1][2] != runs["refill"][0][1][2]).any(dim=1).sum())
    print(f"answers that differ between static and refill ({args.dtype}): {differ}/{n}")
    report["answers_differing_static_vs_refill"] = differ


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=126464)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default="1,2", help="which parts to run (1: hooks, 2: refill)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    device = torch.device(args.device)
    model = build_model(args, device, getattr(torch, args.dtype))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"random LLaDA-shaped model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {args.dtype}, on {name}")
    report = {"device": name, "args": vars(args), "torch": torch.__version__}
    with torch.no_grad():
        if "1" in args.parts:
            part1(model, args, device, report)
        if "2" in args.parts:
            part2(model, args, device, report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
