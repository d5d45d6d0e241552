#!/usr/bin/env python
"""The distribution of RCD's residual weight ``a = H(p) / log V`` in training and at inference, and
the inference temperature T_res that matches them (issue 21: set T_res by matching, not by sweeping
accuracy).

    python scripts/probe_residual_weights.py                       # the base as the target (step 0)
    python scripts/probe_residual_weights.py --model scripts/resume/rcd-s0/ckpt.pt

* training: ``a`` at every position that receives a residual in ``train_rcd.py``'s states (the
  reference's residuals at ``--t-train``, in decoder states, dual-cache states and random masks,
  drawn in the trainer's mix);
* inference: ``a`` at every position the residual stream feeds while the target decodes
  (dual cache, threshold 0.9, ``zeros`` start) at each temperature of ``--temps``.

Prints one JSON line: quantiles of both, and per temperature the Kolmogorov-Smirnov distance to
the training distribution; ``t_res`` is the temperature with the smallest.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastdllm_warmstart.residual import ResidualContext  # noqa: E402
from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from scripts.training import ProblemStream, dllm_encode_batch, engine_decode  # noqa: E402
from scripts.training import residual_states as rs  # noqa: E402

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


class RecordingResidual(ResidualContext):
    """The residual stream, recording the weight of every position it feeds."""

    def __init__(self, t_res: float, sink: list):
        super().__init__(t_res=t_res)
        self.sink = sink

    def before_forward(self, state) -> None:
        if self.weight is not None:
            use = state.window_view(self.has) & (state.window_view(state.x) == state.mask_id)
            self.sink.append(state.window_view(self.weight)[use].float().cpu())
        super().before_forward(state)


def training_weights(reference, tok, batches: int, batch: int, cfg, mix, seed: int = 0) -> torch.Tensor:
    """``a`` at the positions that receive a residual in ``batches`` training steps of each kind,
    each kind's values repeated in proportion to its share of the steps."""
    seen = []
    real = rs.soft_embeds

    def spy(table, x, mask_id, drafts, alpha, a=None, d=None, has=None):
        if a is not None:
            use = (x == mask_id) if has is None else (x == mask_id) & has
            seen.append(a[use].float().cpu())
        return real(table, x, mask_id, drafts, alpha, a, d, has)

    stream = ProblemStream(seed * 7919 + 5, set())
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    out = []
    rs.soft_embeds = spy
    try:
        for kind, share in mix.items():
            got = []
            for _ in range(batches):
                problems = stream.next_batch(batch)
                data = dllm_encode_batch(tok, problems, "cpu")
                fr = {"decode": (1.0, 0.0), "cache": (0.0, 1.0), "random": (0.0, 0.0)}[kind]
                plan = rs.plan_step(data, tok, problems, gen, rng, cfg, *fr, 0.5, 0.7, 4)
                seen.clear()
                with torch.no_grad():
                    {"decode": lambda: rs.decode_state_loss(reference, reference, data, plan, cfg, tok.mask_token_id,
                                                            tok.pad_token_id),
                     "cache": lambda: rs.cache_state_loss(reference, reference, data, plan, cfg, tok.mask_token_id),
                     "random": lambda: rs.random_mask_loss(reference, reference, data, plan, cfg,
                                                           tok.mask_token_id)}[kind]()
                got.append(seen[-1])  # the trained forward's residuals (not the cache's)
            vals = torch.cat(got)
            reps = max(1, round(share * 20))
            out.append(vals.repeat(reps))
    finally:
        rs.soft_embeds = real
    return torch.cat(out)


def quantiles(x: torch.Tensor) -> dict:
    q = torch.quantile(x[torch.randperm(len(x))[:200000]], torch.tensor(QUANTILES))
    out = {f"q{int(p * 100)}": round(v, 4) for p, v in zip(QUANTILES, q.tolist())}
    return dict(out, mean=round(x.mean().item(), 4), n=len(x))


def ks(a: torch.Tensor, b: torch.Tensor) -> float:
    grid = torch.linspace(0, 1, 501)
    fa = torch.searchsorted(a.sort().values, grid, right=True).float() / len(a)
    fb = torch.searchsorted(b.sort().values, grid, right=True).float() / len(b)
    return round((fa - fb).abs().max().item(), 4)


def load_target(path, tok):
    from fastdllm_warmstart.loading import load_dllm

    if path and str(path).endswith(".pt"):
        model, _, _ = load_dllm(None, device="cpu", dtype=torch.float32)
        ck = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        return model.eval()
    return load_dllm(path, device="cpu", dtype=torch.float32)[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=None, help="the frozen reference (default: the embedded tiny dLLM)")
    ap.add_argument("--model", default=None, help="the target: a folder or train_rcd's ckpt.pt (default: reference)")
    ap.add_argument("--temps", default="0.7,0.8,0.9,1.0,1.1,1.25")
    ap.add_argument("--t-train", type=float, default=1.0)
    ap.add_argument("--batches", type=int, default=3, help="training batches per kind of state")
    ap.add_argument("--n", type=int, default=100, help="problems decoded per temperature")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        temps = [float(t) for t in args.temps.split(",")]
    except ValueError:
        ap.error(f"--temps {args.temps!r}: give a comma list of numbers")
    torch.set_num_threads(args.threads)
    from fastdllm_warmstart.loading import load_dllm

    reference, tok, ref_id = load_dllm(args.reference, device="cpu", dtype=torch.float32)
    target = load_target(args.model, tok) if args.model else reference
    cfg = rs.SoftInputConfig(t_train=args.t_train)
    train = training_weights(reference, tok, args.batches, 32, cfg, {"decode": 0.6, "cache": 0.15, "random": 0.25})
    problems = tinygsm.generate_problems(99, args.n)
    rec = {"reference": ref_id, "model": args.model or ref_id, "t_train": args.t_train, "training": quantiles(train),
           "inference": {}}
    for t in temps:
        sink: list = []
        engine_decode(target, tok, [p["question"] for p in problems], "dual", 50,
                      lambda rows: [RecordingResidual(t, sink)])
        vals = torch.cat(sink)
        rec["inference"][str(t)] = dict(quantiles(vals), ks=ks(train, vals))
    rec["t_res"] = float(min(rec["inference"], key=lambda k: rec["inference"][k]["ks"]))
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
