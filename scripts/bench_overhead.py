#!/usr/bin/env python
"""Per-step overhead of the callback machinery vs a plain decoding loop (target <= 3%).

Times, on the same model, prompts and settings (threshold decoding, cold start):
  plain      a minimal hand-written loop (no state object, no hooks, no strategy objects)
  engine     fastdllm_warmstart.generate with no callbacks
  engine+3   the engine with three no-op callbacks that override every event
  +residual  the engine with the RCD residual stream (fastdllm_warmstart.residual; target <= 15%)
  +chain     the engine with the default draft verifier judging a draft it never accepts (the
             same steps as the cold run: the per-step cost of judging)
  upstream   Fast-dLLM's own generate function, when a checkout is found (FAST_DLLM_PATH)
and prints milliseconds per forward step (median over repeats) and the overhead vs plain. Every
loop computes every row of the batch (the engine with ``skip_done_rows=False``) and commits from the
block's columns only: this measures what the machinery costs per step, not what batching saves.

    python scripts/bench_overhead.py [--cache dual] [--batch 8] [--repeats 7] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from fastdllm_warmstart import DecodeCallback, generate
from fastdllm_warmstart.engine.callbacks import EVENTS
from fastdllm_warmstart.engine.transfer import get_transfer_index


@torch.no_grad()
def plain_loop(model, x_prompt, gen_length, block_length, threshold, cache, mask_id):
    """The same algorithm with nothing around it (none or dual cache, threshold rule, today's
    upstream loop: a block the full forward completes costs one forward)."""
    B, P = x_prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = x_prompt
    steps = 0
    for b in range(gen_length // block_length):
        s, e = P + b * block_length, P + (b + 1) * block_length
        first = True
        while True:
            if cache == "none" or first:
                out = model(input_ids=x, use_cache=cache == "dual")
                logits, lo = out.logits, 0
                if cache == "dual":
                    past = out.past_key_values
                    rp = torch.zeros((B, x.shape[1]), dtype=torch.bool)
                    rp[:, s:e] = True
            else:
                out = model(input_ids=x[:, s:e], past_key_values=past, use_cache=True, replace_position=rp)
                past, logits, lo = out.past_key_values, out.logits, s
            steps += 1
            blk = x[:, s:e]  # only the block's masked positions can be committed
            logits = logits[:, s - lo:e - lo]
            x0, tr = get_transfer_index(logits, 0.0, "low_confidence", blk == mask_id, blk, None, threshold)
            blk[tr] = x0[tr]
            if not bool((x[:, s:e] == mask_id).any()):  # today's upstream: no step after a full block
                break
            first = False
    return x, steps


class NoOp(DecodeCallback):
    pass


for _event in EVENTS:  # override every event so the dispatcher really calls them
    setattr(NoOp, _event, lambda self, state: None)


def time_interleaved(fns, repeats):
    """Median ms per step of each fn, run round-robin so background load hits all alike."""
    for fn in fns.values():
        fn()  # warm-up
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            steps = fn()
            samples[name].append((time.perf_counter() - t0) / steps)
    return {name: statistics.median(v) * 1e3 for name, v in samples.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="dLLM folder (default: embedded tiny dLLM, else a random tiny model)")
    ap.add_argument("--cache", default="dual", choices=["none", "dual"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=55)
    ap.add_argument("--gen-length", type=int, default=96)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fastdllm_warmstart.loading import load_dllm
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM

    try:
        model, tok, model_id = load_dllm(args.model, device="cpu")
        mask_id = model.config.mask_token_id
    except FileNotFoundError:
        torch.manual_seed(0)
        model = TinyLLaDAModelLM(TinyLLaDAConfig(vocab_size=1000, d_model=128, n_layers=4, n_heads=4,
                                                 mask_token_id=2, eos_token_id=3, pad_token_id=0)).eval()
        mask_id, model_id = 2, "random tiny (d128 x 4)"
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, model.config.vocab_size, (args.batch, args.prompt_len), generator=g)
    common = dict(gen_length=args.gen_length, block_length=args.block_length, threshold=args.threshold)

    def run_plain():
        return plain_loop(model, prompt, cache=args.cache, mask_id=mask_id, **common)[1]

    def run_engine(callbacks=None):
        def fn():
            out = generate(model, prompt, steps=args.gen_length, cache=args.cache, mask_id=mask_id,
                           callbacks=callbacks, use_upstream=False, skip_done_rows=False, **common)
            return out.total_nfe
        return fn

    # Same tokens first: the comparison is only meaningful if both do the same work.
    ref = plain_loop(model, prompt, cache=args.cache, mask_id=mask_id, **common)
    out = generate(model, prompt, steps=args.gen_length, cache=args.cache, mask_id=mask_id,
                   use_upstream=False, skip_done_rows=False, **common)
    assert torch.equal(ref[0], out.sequences) and ref[1] == out.total_nfe, "plain loop and engine disagree"

    from fastdllm_warmstart.priors import ChainAccept
    from fastdllm_warmstart.residual import ResidualContext

    never = torch.full((args.batch, args.gen_length), mask_id + 1 if mask_id + 1 < 5 else 1)  # a draft of
    fns = {"plain": run_plain, "engine": run_engine(),                                      # one odd token
           "engine+3 no-op callbacks": run_engine([NoOp(), NoOp(), NoOp()]),
           "engine+residual (RCD)": run_engine([ResidualContext(t_res=0.95)]),
           "engine+chain verifier": run_engine([ChainAccept(never, threshold=args.threshold)])}
    from fastdllm_warmstart.upstream import find_upstream

    up = find_upstream()
    if up is not None and args.batch == 1:
        fn = {"none": up.generate_module.generate, "dual": up.generate_module.generate_with_dual_cache}[args.cache]
        fns["upstream Fast-dLLM"] = lambda: fn(model, prompt, steps=args.gen_length, mask_id=mask_id, **common)[1]
    rows = time_interleaved(fns, args.repeats)
    base = rows["plain"]
    print(f"model: {model_id}; cache={args.cache}; batch={args.batch}; prompt={args.prompt_len}; "
          f"gen={args.gen_length}/{args.block_length}; threshold={args.threshold}; steps/run={out.total_nfe}; "
          f"threads={args.threads}; repeats={args.repeats} (median)")
    print(f"{'loop':<26} {'ms/step':>9} {'overhead vs plain':>18}")
    for name, ms in rows.items():
        print(f"{name:<26} {ms:>9.3f} {100 * (ms / base - 1):>17.1f}%")
    print(json.dumps({"versions": {"torch": torch.__version__, "python": platform.python_version()},
                      "args": vars(args), "ms_per_step": rows}))


if __name__ == "__main__":
    main()
