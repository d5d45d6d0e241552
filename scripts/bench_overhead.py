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

``--llada-shaped`` instead times each hook on a random-weight model of LLaDA-8B's width (vocabulary
126464, hidden 4096, 32 heads, MLP 12288; bf16 where the CPU has it) with two layers, and with one
(the same embeddings, LM head and first layer): a step's cost is ``head + layers x layer``, so each
mode's step at LLaDA-8B's 32 layers is extrapolated from the two, and every hook's per-step cost is reported in
layers' worth and as a share of the full-depth step. The drafts are never accepted, so warm modes
run the cold steps and the difference is the hooks' own work (spec: its shadow queries too).

    python scripts/bench_overhead.py --llada-shaped [--batch 8] [--repeats 3]
    python scripts/bench_overhead.py --llada-shaped --hidden 64 --heads 2 --vocab 2000  # smoke test
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


def llada_modes(batch: int, gen_length: int, mask_id: int, threshold: float):
    """name -> callbacks factory: cold and each hook, with drafts the model never accepts."""
    from fastdllm_warmstart.priors import ChainAccept, SpeculativeAccept
    from fastdllm_warmstart.residual import ResidualContext
    from fastdllm_warmstart.warmstart import ConfidenceRemask, EmbeddingInterpolation, TokenInjection
    from fastdllm_warmstart.config import RemaskConfig

    draft = torch.full((batch, gen_length), mask_id + 1)  # one odd token: never accepted
    return {
        "cold": lambda: [],
        "token (rho 0.25)": lambda: [TokenInjection(draft, rho=0.25)],
        "token+revoke": lambda: [TokenInjection(draft, rho=0.25), ConfidenceRemask(RemaskConfig(enabled=True, rule="revoke"))],
        "embed (alpha 0.6)": lambda: [EmbeddingInterpolation(draft, alpha=0.6)],
        "token+chain": lambda: [TokenInjection(draft, rho=0.25), ChainAccept(draft, threshold=threshold)],
        "token+spec": lambda: [TokenInjection(draft, rho=0.25), SpeculativeAccept(draft, tau_accept=0.1, threshold=threshold)],
        "rcd (residual)": lambda: [ResidualContext(t_res=0.95)],
    }


def hook_rows(args) -> None:
    """--llada-shaped: per-step cost of each hook at LLaDA-8B's width, extrapolated in depth."""
    from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM

    dtype = torch.float32
    if args.dtype == "bfloat16" or (args.dtype == "auto" and _cpu_has_bf16()):
        dtype = torch.bfloat16
    mask_id = 126336 if args.vocab > 126336 else args.vocab - 2  # LLaDA's [MASK] id
    models = {}
    for layers in (1, 2):
        torch.manual_seed(0)
        cfg = TinyLLaDAConfig(vocab_size=args.vocab, d_model=args.hidden, n_layers=layers, n_heads=args.heads,
                              mlp_ratio=3.0, mask_token_id=mask_id, eos_token_id=mask_id - 255,
                              pad_token_id=mask_id - 255)  # LLaDA's MLP is 3x; its EOS is its pad
        model = TinyLLaDAModelLM(cfg).eval().to(dtype)
        if layers == 2:
            model.load_state_dict(models[1].state_dict(), strict=False)  # the same head, first layer
        models[layers] = model
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, mask_id - 300, (args.batch, args.prompt_len), generator=g)
    common = dict(gen_length=args.gen_length, block_length=args.block_length, threshold=args.threshold,
                  steps=args.gen_length, cache=args.cache, mask_id=mask_id, use_upstream=False,
                  skip_done_rows=False)
    modes = llada_modes(args.batch, args.gen_length, mask_id, args.threshold)

    def run(model, make):
        def fn():
            return generate(model, prompt, callbacks=make(), **common).total_nfe
        return fn

    fns = {(name, layers): run(models[layers], make) for name, make in modes.items() for layers in (1, 2)}
    ms = time_interleaved(fns, args.repeats)
    layer = ms[("cold", 2)] - ms[("cold", 1)]  # one layer's share of a cold step
    full = {name: ms[(name, 1)] + (args.depth - 1) * (ms[(name, 2)] - ms[(name, 1)]) for name in modes}
    print(f"LLaDA-shaped random model: vocab {args.vocab}, hidden {args.hidden}, heads {args.heads}, "
          f"MLP {3 * args.hidden}, {dtype}; cache={args.cache}; batch={args.batch}; prompt={args.prompt_len}; "
          f"gen={args.gen_length}/{args.block_length}; threads={args.threads}; repeats={args.repeats} (median)")
    print(f"one layer: {layer:.2f} ms/step; head, embeddings, loop: {ms[('cold', 1)] - layer:.2f} ms/step; "
          f"cold step at {args.depth} layers: {full['cold']:.1f} ms (extrapolated)")
    print(f"{'mode':<20} {'ms/step 2 layers':>17} {'hook ms/step':>13} {'in layers':>10} "
          f"{f'step at {args.depth} layers':>20} {'vs cold':>8}")
    for name in modes:
        hook = ms[(name, 2)] - ms[("cold", 2)]
        print(f"{name:<20} {ms[(name, 2)]:>17.2f} {hook:>13.2f} {hook / layer:>10.2f} {full[name]:>20.1f} "
              f"{100 * (full[name] / full['cold'] - 1):>7.1f}%")
    print(json.dumps({"versions": {"torch": torch.__version__, "python": platform.python_version()},
                      "args": vars(args), "dtype": str(dtype), "layer_ms": layer,
                      "ms_per_step": {f"{k[0]}@{k[1]}": v for k, v in ms.items()},
                      "ms_per_step_full_depth": full}))


def _cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 or AMX); else bf16 is emulated and slow."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None) or getattr(getattr(torch, "_C", None), probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a probe missing from this build means no
            pass
    return False


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
    ap.add_argument("--llada-shaped", action="store_true",
                    help="time each hook on a random LLaDA-8B-wide model (two layers, extrapolated to 32)")
    ap.add_argument("--vocab", type=int, default=126464, help="--llada-shaped: vocabulary (LLaDA-8B's)")
    ap.add_argument("--hidden", type=int, default=4096, help="--llada-shaped: hidden size (LLaDA-8B's)")
    ap.add_argument("--heads", type=int, default=32, help="--llada-shaped: attention heads (LLaDA-8B's)")
    ap.add_argument("--depth", type=int, default=32, help="--llada-shaped: layers to extrapolate to")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                    help="--llada-shaped: auto = bf16 where the CPU computes it natively")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.llada_shaped:
        return hook_rows(args)
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
