#!/usr/bin/env python
"""RCD's second stage (arXiv 2601.22954) and the embedding bridge, trained in the decoder's states.

    python scripts/train_rcd.py --work scripts/resume/rcd-s0 --out .work/rcd-s0 --steps 2000
    accelerate launch --num_processes 8 scripts/train_rcd.py --device cuda --dtype bf16 ...

A frozen *reference* (default: the embedded tiny dLLM, the shipped base) and a *target*
initialised from it (``--init``). Each step trains the target in one of the base's three kinds
of state (``--decode-frac`` decoder states of a teacher-forced threshold replay, ``--cache-frac``
a block against the stale dual cache, otherwise random masks with prefix cuts and equation focus,
``--rf-weight`` on result-first results), with soft inputs at the still-masked positions
(``scripts.training.residual_states``): the reference's residuals (``--residual-scale 1``; 0 is
the control) and, in ``--draft-frac`` of the rows, aux-like drafts at ``--draft-alpha``
(0 withholds them: the control). The loss is the ordinary masked cross-entropy.

Runs through Accelerate: one process, or ``accelerate launch`` / ``torchrun`` over several (DDP;
gloo on CPU). ``--batch`` is the global batch per optimiser step, split over processes and
``--grad-accum`` micro-batches; every random draw is made for the global batch, so the loss curve
does not depend on how it is split. Checkpoints (target weights, optimiser, RNG and data states,
curve) go to ``--work/ckpt.pt`` every ``--ckpt-minutes``; ``--resume`` continues; a ``STOP`` file in
``--work`` stops gracefully. Validation (``--eval-every``) decodes a fixed held-out set with the
dual-cache threshold decoder: cold (stream off), with the residual stream, and with drafts laid by
``--warm-init embed`` at alpha 0.6. The export (the last step; ``--out``) marks the model's config
with ``soft_inputs`` and ``base_model`` (the reference's fingerprinted id).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastdllm_warmstart.compat import save_tokenizer  # noqa: E402
from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from scripts.training import ProblemStream, cosine_lr, dllm_encode_batch, versions  # noqa: E402
from scripts.training.residual_states import (SoftInputConfig, cache_state_loss, decode_state_loss,  # noqa: E402
                                              plan_step, random_mask_loss, slice_rows)
from scripts.training.soft_eval import MODES as EVAL_MODES, evaluate_modes  # noqa: E402

VAL_SEED = 777
FRESH_SEED = 20241123
EXIT_STOPPED = 75  # stopped before the schedule's end (STOP file, --minutes, --stop-at)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=None, help="frozen reference (default: the embedded tiny dLLM)")
    ap.add_argument("--init", default=None, help="target initialisation (default: the reference)")
    ap.add_argument("--out", default=None, help="export folder (default: none, the run only trains)")
    ap.add_argument("--work", required=True, help="run folder: ckpt.pt, curve.jsonl, STOP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000, help="schedule length (the cosine ends here)")
    ap.add_argument("--stop-at", type=int, default=None, help="stop at this step, the schedule unchanged")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this much wall time")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--batch", type=int, default=64, help="global batch per optimiser step")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per process and step")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--decode-frac", type=float, default=0.6)
    ap.add_argument("--cache-frac", type=float, default=0.15)
    ap.add_argument("--decode-states", type=int, default=4)
    ap.add_argument("--prefix-frac", type=float, default=0.5)
    ap.add_argument("--eq-frac", type=float, default=0.7)
    ap.add_argument("--forced-weight", type=float, default=3.0)
    ap.add_argument("--rf-weight", type=float, default=4.0)
    ap.add_argument("--t-train", type=float, default=1.0, help="reference temperature of the residuals")
    ap.add_argument("--residual-scale", type=float, default=1.0, help="1: RCD; 0: the a = 0 control")
    ap.add_argument("--draft-frac", type=float, default=0.0, help="rows with an aux-like draft")
    ap.add_argument("--draft-alpha", type=float, default=0.6, help="draft weight; 0 withholds them (control)")
    ap.add_argument("--draft-wrong", type=float, default=0.5)
    ap.add_argument("--draft-other", type=float, default=0.1)
    ap.add_argument("--t-res-eval", type=float, default=1.0, help="residual temperature at validation")
    ap.add_argument("--eval-modes", default="cold,rcd,embed", help=f"comma list of {', '.join(EVAL_MODES)}")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--final-n", type=int, default=500)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="mixed precision")
    args = ap.parse_args(argv)
    modes = tuple(m for m in args.eval_modes.split(",") if m)
    if not modes or set(modes) - set(EVAL_MODES):
        ap.error(f"--eval-modes {args.eval_modes!r}: use a comma list of {', '.join(EVAL_MODES)}")
    args.eval_modes = modes
    if not (0 <= args.decode_frac and 0 <= args.cache_frac and args.decode_frac + args.cache_frac <= 1):
        ap.error("--decode-frac / --cache-frac: fractions of steps that sum to at most 1")
    if args.decode_states < 1 or args.grad_accum < 1 or args.batch < 1:
        ap.error("--decode-states, --grad-accum and --batch must be at least 1")
    try:
        args.soft = SoftInputConfig(args.t_train, args.residual_scale, args.draft_frac, args.draft_alpha,
                                    args.draft_wrong, args.draft_other)
    except ValueError as e:
        ap.error(str(e))
    return args


def soft_inputs_label(cfg: SoftInputConfig) -> str:
    """config.json's ``soft_inputs``: what the model was trained to read at masked positions."""
    parts = (["rcd"] if cfg.residual_scale > 0 else []) + (["bridge"] if cfg.draft_frac * cfg.draft_alpha > 0 else [])
    return "+".join(parts) or "none"


def load(path):
    from fastdllm_warmstart.loading import load_dllm

    return load_dllm(path, device="cpu", dtype=torch.float32)


def step_loss(target, reference, tok, sub, plan, args) -> torch.Tensor:
    mask_id, cfg = tok.mask_token_id, args.soft
    if plan.kind == "decode":
        return decode_state_loss(target, reference, sub, plan, cfg, mask_id, tok.pad_token_id, args.rf_weight)
    if plan.kind == "cache":
        return cache_state_loss(target, reference, sub, plan, cfg, mask_id, args.forced_weight, args.rf_weight)
    return random_mask_loss(target, reference, sub, plan, cfg, mask_id, args.forced_weight, args.rf_weight)


def save_ckpt(path: Path, model, opt, stream, gen, rng, state) -> None:
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "data_rng": stream.rng.getstate(),
                "data_queue": getattr(stream, "queue", None), "gen_rng": gen.get_state(),
                "draft_rng": rng.getstate(), "state": state}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_ckpt(path: Path, model, opt, stream, gen, rng) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    stream.rng.setstate(ck["data_rng"])
    stream.queue = ck["data_queue"]
    gen.set_state(ck["gen_rng"])
    rng.setstate(ck["draft_rng"])
    return ck["state"]


def export(args, target, tok, state, reference_id: str) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target.config.soft_inputs = soft_inputs_label(args.soft)
    target.config.base_model = reference_id
    target.config.rcd = {"t_res": args.t_res_eval, "reference": reference_id}
    for f in out.glob("*"):
        if f.is_file():
            f.unlink()
    target.to(torch.float16).save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    model, tok2, _ = load(str(out))
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))[:args.final_n]
    fresh = tinygsm.generate_problems(FRESH_SEED, len(test))
    final = {name: evaluate_modes(model, tok2, probs, args.eval_modes, args.t_res_eval)
             for name, probs in (("test", test), ("fresh_seed", fresh))}
    info = {"model": "rcd-decoder-states", "soft_inputs": model.config.soft_inputs, "base_model": reference_id,
            "command": state["commands"], "hyperparameters": state["hparams"], "steps_done": state["step"],
            "exported_step": state["step"], "wall_time_s": round(state["elapsed"], 1), "versions": versions(),
            "final_eval": final, "fresh_seed": FRESH_SEED, "learning_curve": state["curve"]}
    (out / "train_log.json").write_text(json.dumps(info, indent=1))
    log(f"exported step {state['step']} to {out}: {json.dumps(final)}")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu",
                              mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[args.dtype])
    world, rank = accelerator.num_processes, accelerator.process_index
    per_micro = args.batch // (world * args.grad_accum)
    if per_micro * world * args.grad_accum != args.batch:
        raise SystemExit(f"--batch {args.batch} must split evenly over {world} processes x --grad-accum "
                         f"{args.grad_accum}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    reference, tok, reference_id = load(args.reference)
    reference.requires_grad_(False).to(accelerator.device)
    target, _, _ = load(args.init or args.reference)
    target.train()
    opt = torch.optim.AdamW(target.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))
    val = tinygsm.generate_problems(VAL_SEED, args.eval_n, exclude={p["question"] for p in test})
    stream = ProblemStream(args.seed * 1_000_003 + 29, {p["question"] for p in test} | {p["question"] for p in val})
    gen = torch.Generator().manual_seed(args.seed + 1)
    rng = random.Random(args.seed + 2)
    hparams = {k: v for k, v in vars(args).items() if k not in ("out", "work", "resume", "export_only", "soft")}
    hparams.update(world_size=world, eval_modes=list(args.eval_modes))
    state = {"step": 0, "elapsed": 0.0, "curve": [], "hparams": hparams, "commands": [], "hparams_history": []}
    ckpt = work / "ckpt.pt"
    if (args.resume or args.export_only) and ckpt.exists():
        state = load_ckpt(ckpt, target, opt, stream, gen, rng)
        log(f"resumed from {ckpt} at step {state['step']}")
    elif args.resume or args.export_only:
        raise SystemExit(f"--resume / --export-only: no checkpoint at {ckpt}")
    state["commands"].append("python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]))
    if args.export_only:
        export(args, target, tok, state, reference_id)
        return
    state["hparams_history"].append(dict(hparams, from_step=state["step"]))
    state["hparams"] = hparams
    model, opt = accelerator.prepare(target, opt)
    inner = accelerator.unwrap_model(model)
    main_proc = accelerator.is_main_process

    def do_eval(loss) -> None:
        if main_proc:
            r = evaluate_modes(inner, tok, val, args.eval_modes, args.t_res_eval)
            r.update(step=state["step"], loss=None if loss is None else round(loss, 4),
                     elapsed=round(state["elapsed"], 1))
            state["curve"].append(r)
            with (work / "curve.jsonl").open("a") as f:
                f.write(json.dumps(r) + "\n")
            log(f"EVAL {json.dumps(r)}")
        inner.train()
        accelerator.wait_for_everyone()

    if not state["curve"]:
        do_eval(None)
    t_session = t_last = last_ckpt = time.time()
    ema, reason = state.get("ema"), "steps"
    while state["step"] < args.steps:
        if args.minutes is not None and (time.time() - t_session) / 60 >= args.minutes:
            reason = "minutes"
            break
        if args.stop_at is not None and state["step"] >= args.stop_at:
            reason = "stop-at"
            break
        if (work / "STOP").exists():
            reason = "STOP file"
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(state["step"], args.lr, args.warmup, args.steps, args.min_lr_frac)
        problems = stream.next_batch(args.batch)
        batch = dllm_encode_batch(tok, problems, "cpu")
        plan = plan_step(batch, tok, problems, gen, rng, args.soft, args.decode_frac, args.cache_frac,
                         args.prefix_frac, args.eq_frac, args.decode_states)
        total = torch.zeros((), device=accelerator.device)
        for micro in range(args.grad_accum):
            first = (micro * world + rank) * per_micro
            sub, sub_plan = slice_rows(batch, plan, slice(first, first + per_micro))
            sub = {k: (v.to(accelerator.device) if torch.is_tensor(v) else v) for k, v in sub.items()}
            sync = micro == args.grad_accum - 1
            with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss = step_loss(model, reference, tok, sub, sub_plan, args) / args.grad_accum
                accelerator.backward(loss)
            total += loss.detach()
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = accelerator.reduce(total, reduction="mean").item()
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        state["step"] += 1
        state.setdefault("losses", []).append(round(lv, 6))  # every step's loss, and its kind of state
        state.setdefault("kinds", []).append(plan.kind)
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        state["ema"] = ema
        if state["step"] % 25 == 0 and main_proc:
            log(f"step {state['step']} loss {lv:.4f} ema {ema:.4f} "
                f"{state['step'] / max(1e-9, state['elapsed']):.3f} steps/s")
        if state["step"] % args.eval_every == 0:
            do_eval(ema)
            t_last = time.time()
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            if main_proc:
                save_ckpt(ckpt, inner, opt, stream, gen, rng, state)
            last_ckpt = time.time()
    log(f"stopping ({reason}) at step {state['step']}") if main_proc else None
    if main_proc:
        save_ckpt(ckpt, inner, opt, stream, gen, rng, state)
        if (work / "STOP").exists():
            (work / "STOP").unlink()
    accelerator.wait_for_everyone()
    if state["step"] < args.steps:
        raise SystemExit(EXIT_STOPPED)  # a queue of runs stops here too; --resume continues
    if main_proc and args.out:
        export(args, inner, tok, state, reference_id)


if __name__ == "__main__":
    main()
