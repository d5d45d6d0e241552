#!/usr/bin/env python
"""Stage-2 training of Residual Context Diffusion (RCD, arXiv 2601.22954) for a LLaDA-protocol model.

    python scripts/train_rcd.py --out fastdllm_warmstart/assets/tiny-dllm-rcd --steps 3000 --minutes 60

Two stages, as published:

1. A *reference* model (default: the embedded tiny dLLM; any checkpoint ``load_dllm`` reads) is
   frozen. On every training batch, corrupted by the ordinary LLaDA masking, it predicts the masked
   positions: ``p_i = softmax(logits_i / T_res)``, weight ``a_i = H(p_i) / log V``.
2. The *target* model (initialised from ``--init``, default the reference) is trained with the
   ordinary masked cross-entropy on inputs augmented by those residuals: at a masked position
   ``(1 - a_i) E[mask] + a_i sum_j p_ij E_j`` over the target's own embedding table; other
   positions keep their plain embedding. No gradient flows through the reference, and no steps
   are unrolled.

The bridge to ``--warm-init embed`` (``--draft-frac``): in a fraction of the rows, the masked
positions carry an aux-like draft instead, as ``(1 - alpha) E[mask] + alpha E[draft_i]`` (the
interpolation warm start's input: a one-hot residual), the draft being another wording of the
answer with, with probability ``--draft-wrong``, one wrong result carried on
(``tinygsm.draft_answer``). So the model learns to read a draft as evidence, not as the answer.

Checkpoints (target weights, optimiser, RNG states, curve) go to ``--work`` every
``--ckpt-minutes`` and at the end; ``--resume`` continues from them; a ``STOP`` file in ``--work``
stops gracefully. Validation decodes with the package's engine (threshold 0.9, dual cache,
the residual stream on) and tracks accuracy and NFE; the exporter ships the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastdllm_warmstart.residual import ResidualContext, residual_inputs  # noqa: E402
from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from fastdllm_warmstart.training import (GEN_LENGTH, ProblemStream, cosine_lr, dllm_encode_batch,  # noqa: E402
                                         engine_decode, load_checkpoint, mask_canvas, masked_ce,
                                         optimizer_step, save_checkpoint, score, versions)

VAL_SEED = 777
FRESH_SEED = 20241123


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load(path: Optional[str]):
    from fastdllm_warmstart.loading import load_dllm

    model, tok, model_id = load_dllm(path, device="cpu", dtype=torch.float32)
    return model, tok, model_id


def draft_canvas(tok, problems: Sequence[dict], rng: random.Random, wrong: float) -> torch.Tensor:
    """(B, G) ids of aux-like drafts (another wording, maybe one wrong result), EOS-padded."""
    rows = []
    for p in problems:
        ids = tok.encode(" " + tinygsm.draft_answer(p, rng, wrong), add_special_tokens=False)[:GEN_LENGTH]
        rows.append(ids + [tok.eos_token_id] * (GEN_LENGTH - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def rcd_loss(target, reference, tok, batch, problems, gen: torch.Generator, rng: random.Random,
             args) -> torch.Tensor:
    """Masked CE of the target on residual-augmented inputs (module docstring, stages 1-2)."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    t, m, forced = mask_canvas(batch, tok.eos_token_id, gen, args.prefix_frac, args.eq_frac)
    canvas = ids[:, P:]
    xt = ids.clone()
    xt[:, P:] = torch.where(m, torch.full_like(canvas, tok.mask_token_id), canvas)
    table = target.get_input_embeddings().weight  # (V, C), trainable
    with torch.no_grad():
        ref_logits = reference(xt, attention_mask=am).logits[:, P:]  # (B, G, V)
        weight, _ = residual_inputs(ref_logits, table.detach(), args.t_res)
        probs = torch.softmax(ref_logits.float() / args.t_res, dim=-1)
    residual = probs.to(table.dtype) @ table  # (B, G, C): gradient reaches the target's table only
    if args.draft_frac > 0:
        rows = torch.rand(ids.shape[0], generator=gen) < args.draft_frac  # (B,)
        if bool(rows.any()):
            draft = draft_canvas(tok, problems, rng, args.draft_wrong)  # (B, G)
            residual = torch.where(rows.view(-1, 1, 1), table[draft], residual)
            weight = torch.where(rows.view(-1, 1), torch.full_like(weight, args.draft_alpha), weight)
    embeds = target.get_input_embeddings()(xt)  # (B, L, C)
    gen_emb = embeds[:, P:]
    a = (weight * m).unsqueeze(-1)  # (B, G, 1): residuals only at masked positions
    embeds = torch.cat([embeds[:, :P], (1 - a) * gen_emb + a * residual], dim=1)
    logits = target(inputs_embeds=embeds, attention_mask=am).logits[:, P:]
    return masked_ce(logits, canvas, t, m, forced, args.forced_weight)


@torch.no_grad()
def evaluate(model, tok, problems: Sequence[dict], residual: bool, t_res: float, batch_size: int = 50):
    """Engine decoding (threshold 0.9, blocks of 32, dual cache) with or without the residual stream."""
    t0 = time.time()
    texts, nfes = engine_decode(model, tok, [p["question"] for p in problems], "dual", batch_size,
                                (lambda: [ResidualContext(t_res=t_res)]) if residual else None)
    model.train()
    return {"acc": score(problems, texts), "nfe": sum(nfes) / len(problems), "eval_s": round(time.time() - t0, 1)}


def export(args, target, tok, state: dict, reference_id: str) -> None:
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    curve = [c for c in state["curve"] if "acc" in c]
    if not curve:
        raise SystemExit("no evaluated checkpoint to export")
    chosen = max(curve, key=lambda c: (c["acc"], -c["nfe"]))
    snap = work / f"snap_{chosen['step']:07d}.pt"
    if not snap.exists():
        raise SystemExit(f"the chosen checkpoint {snap} is missing (another machine?); rerun the "
                         "evaluation with --resume or pass --export-step")
    log(f"exporting step {chosen['step']} (val acc {chosen['acc']:.3f}, NFE {chosen['nfe']:.2f})")
    target.load_state_dict(torch.load(snap, map_location="cpu"))
    target.config.rcd = {"t_res": args.t_res_eval, "reference": reference_id}
    for f in out.glob("*"):
        if f.is_file() and f.name != "TRAINING.md":
            f.unlink()
    target.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    m2, tok2, _ = load(str(out))
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))[:args.final_n]
    fresh = tinygsm.generate_problems(FRESH_SEED, len(test))
    final = {split: {"rcd": evaluate(m2, tok2, probs, True, args.t_res_eval),
                     "rcd_weights_no_residual": evaluate(m2, tok2, probs, False, args.t_res_eval)}
             for split, probs in (("test", test), ("fresh_seed", fresh))}
    info = {"model": "rcd", "command": state["commands"], "reference": reference_id,
            "hyperparameters": state["hparams"], "steps_done": state["step"], "exported_step": chosen["step"],
            "wall_time_s": round(state["elapsed"], 1), "versions": versions(), "final_eval": final,
            "fresh_seed": FRESH_SEED, "learning_curve": state["curve"],
            "n_parameters": sum(p.numel() for p in m2.parameters())}
    (out / "train_log.json").write_text(json.dumps(info, indent=1))
    log(f"final: {json.dumps(final)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=None, help="frozen reference model (default: embedded tiny dLLM)")
    ap.add_argument("--init", default=None, help="target initialisation (default: the reference)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="checkpoint dir (default .work/train_rcd_seed<seed>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000, help="schedule length (cosine ends here)")
    ap.add_argument("--stop-at", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--t-res", type=float, default=1.0, help="residual temperature in training")
    ap.add_argument("--t-res-eval", type=float, default=0.95, help="residual temperature at inference")
    ap.add_argument("--draft-frac", type=float, default=0.25, help="rows whose residual is an aux-like draft")
    ap.add_argument("--draft-alpha", type=float, default=0.6, help="weight of the draft (--alpha at inference)")
    ap.add_argument("--draft-wrong", type=float, default=0.5, help="drafts with one wrong result")
    ap.add_argument("--prefix-frac", type=float, default=0.5)
    ap.add_argument("--eq-frac", type=float, default=0.5)
    ap.add_argument("--forced-weight", type=float, default=2.0)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--final-n", type=int, default=500)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.work is None:
        args.work = str(REPO / ".work" / f"train_rcd_seed{args.seed}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)

    reference, tok, reference_id = load(args.reference)
    reference.requires_grad_(False)
    target, _, _ = load(args.init or args.reference)
    target.train()
    opt = torch.optim.AdamW(target.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))
    val = tinygsm.generate_problems(VAL_SEED, args.eval_n, exclude={p["question"] for p in test})
    stream = ProblemStream(args.seed * 1_000_003 + 29, {p["question"] for p in test} | {p["question"] for p in val})
    gen = torch.Generator().manual_seed(args.seed + 1)
    rng = random.Random(args.seed + 2)
    hparams = {k: v for k, v in vars(args).items() if k not in ("out", "work", "resume", "export_only")}
    state = {"step": 0, "elapsed": 0.0, "curve": [], "hparams": hparams, "commands": []}
    ckpt = work / "ckpt.pt"
    if (args.resume or args.export_only) and ckpt.exists():
        ck = load_checkpoint(ckpt, target, opt, stream, gen)
        rng.setstate(ck["rng"])
        state = ck["state"]
        log(f"resumed from {ckpt} at step {state['step']}")
    state["commands"].append("python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]))
    if args.export_only:
        export(args, target, tok, state, reference_id)
        return

    def save_ckpt():
        save_checkpoint(ckpt, target, opt, stream, gen, state, rng=rng.getstate())

    def do_eval(loss):
        r = evaluate(target, tok, val, True, args.t_res_eval)
        # the control: the same weights decoded without the residual stream (what the extra
        # training alone buys, as opposed to reading residuals)
        plain = evaluate(target, tok, val, False, args.t_res_eval)
        r.update(acc_no_residual=plain["acc"], nfe_no_residual=plain["nfe"])
        r.update(step=state["step"], loss=round(loss, 4), elapsed=round(state["elapsed"], 1))
        state["curve"].append(r)
        torch.save(target.state_dict(), work / f"snap_{state['step']:07d}.pt")
        log(f"EVAL {json.dumps(r)}")

    if not state["curve"]:  # the starting point, for the curve: base decoding and with residuals
        base = evaluate(reference, tok, val, False, args.t_res_eval)
        state["curve"].append({"step": 0, "reference_cold": base})
        log(f"reference, cold: {base}")
    t_session, t_last, last_ckpt, ema = time.time(), time.time(), time.time(), None
    while state["step"] < args.steps:
        if args.minutes is not None and (time.time() - t_session) / 60 >= args.minutes:
            break
        if args.stop_at is not None and state["step"] >= args.stop_at:
            break
        if (work / "STOP").exists():
            (work / "STOP").unlink()
            break
        for g in opt.param_groups:
            g["lr"] = cosine_lr(state["step"], args.lr, args.warmup, args.steps)
        probs = stream.next_batch(args.batch)
        loss = rcd_loss(target, reference, tok, dllm_encode_batch(tok, probs, "cpu"), probs, gen, rng, args)
        optimizer_step(target, opt, loss)
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        state["step"] += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if state["step"] % 50 == 0:
            log(f"step {state['step']} loss {loss.item():.4f} ema {ema:.4f}")
        if state["step"] % args.eval_every == 0:
            do_eval(ema)
            t_last = time.time()
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = time.time()
    if state["curve"][-1].get("step") != state["step"]:
        do_eval(ema or 0.0)
    save_ckpt()
    export(args, target, tok, state, reference_id)


if __name__ == "__main__":
    main()
