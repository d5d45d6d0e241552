#!/usr/bin/env python
"""Train the two embedded tiny models on the synthetic ``tinygsm`` task (CPU is enough).

    python scripts/train_tiny.py dllm --seed 0 --out fastdllm_warmstart/assets/tiny-dllm --minutes 100
    python scripts/train_tiny.py aux  --seed 0 --out fastdllm_warmstart/assets/tiny-aux  --minutes 20
    python scripts/train_tiny.py aux  --seed 0 --out fastdllm_warmstart/assets/tiny-aux-dllmtok --tokenizer dllm

* ``dllm``: :class:`fastdllm_warmstart.models.TinyLLaDAModelLM` trained with the LLaDA SFT
  masked-diffusion objective. Sequence = left-[PAD]-ded prompt ``format_prompt(q)`` + a 96-token
  answer canvas (``" " + answer`` + EOS, EOS-padded to 96); per sequence ``t ~ U(eps, 1)``
  (stratified over the batch), each canvas token is replaced by [MASK] with probability ``t``; loss =
  cross-entropy on masked canvas tokens weighted ``1/t``, normalised by the number of canvas tokens.
  Evaluated with a self-contained Fast-dLLM-style threshold decoder (threshold 0.9, blocks of 16
  over a 96-token canvas, low-confidence remasking, never committing [MASK]/[PAD]).
* ``aux``: a tiny ``LlamaForCausalLM`` trained autoregressively on
  ``format_prompt(q) + " " + answer + "</s>"`` (loss on the completion), evaluated with greedy
  ``generate`` (max_new_tokens 128). The exported checkpoint is the one whose accuracy is closest to
  50% within 30-70% (it must be clearly weaker than the dLLM). ``--tokenizer dllm`` trains it on the
  tiny dLLM's tokenizer instead of its own WordPiece one, so both models share one vocabulary (APD's
  mixture of logits needs that; the tokenizer bridge becomes the identity).

For ``dllm``, ``--cache-frac`` / ``--decode-frac`` give fractions of the steps trained in the
dual cache's stale-context state (``scripts.training.dllm_cache_loss``) and in the states the dual-cache
threshold decoder itself visits, commits teacher-forced (``scripts.training.dllm_decode_state_loss``;
``--decode-states K`` draws K states per row from one replay, ``--decode-block content`` replays
the blocks that hold answer tokens rather than end-of-canvas filler);
``--init-from`` a smaller snapshot grows it (``scripts.training.grow_state_dict``); ``--select-top K``
exports the best of the K best-validated snapshots and the last, re-measured on more problems.

Training data are drawn on the fly from the generator (seeded), never containing a test or
validation question. Checkpoints (model, optimiser, data-RNG state, learning curve) go to
``--work`` every ``--ckpt-minutes`` and at the end; ``--resume`` continues from them. Creating the
file ``<work>/STOP`` stops training gracefully (then it exports). ``--export-only`` exports the
best checkpoint without training. The learning curve is logged to ``<work>/curve.jsonl`` and to
``train_log.json`` in the output directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastdllm_warmstart.compat import save_tokenizer  # noqa: E402
from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM  # noqa: E402
from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from fastdllm_warmstart.tokenization import build_aux_tokenizer, build_dllm_tokenizer  # noqa: E402
from scripts.training import (BLOCK_LENGTH, GEN_LENGTH, THRESHOLD, ProblemStream, cosine_lr,  # noqa: E402
                              dllm_cache_loss, dllm_decode_state_loss, dllm_encode_batch, dllm_loss, eval_dllm,
                              grow_state_dict, load_checkpoint, optimizer_step, save_checkpoint, score, versions)

VAL_SEED = 777  # validation problems used for the learning curve / checkpoint selection
FRESH_SEED = 20241123  # a freshly drawn split for the final report
SELECT_SEED = 778  # a larger validation draw for choosing the exported checkpoint (--select-top)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# aux
# ---------------------------------------------------------------------------------------------

def aux_encode_batch(tok, problems: Sequence[dict], device) -> Dict[str, torch.Tensor]:
    seqs, labels = [], []
    for p in problems:
        pr = tok.encode(tinygsm.format_prompt(p["question"]), add_special_tokens=False)
        an = tok.encode(" " + p["answer"], add_special_tokens=False) + [tok.eos_token_id]
        seqs.append(pr + an)
        labels.append([-100] * len(pr) + an)
    L = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((B, L), -100, dtype=torch.long)
    am = torch.zeros((B, L), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):  # right padding: positions start at 0
        ids[i, :len(s)] = torch.tensor(s)
        lab[i, :len(l)] = torch.tensor(l)
        am[i, :len(s)] = 1
    return {"ids": ids.to(device), "am": am.to(device), "labels": lab.to(device)}


def aux_loss(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["ids"], attention_mask=batch["am"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


@torch.no_grad()
def eval_aux(model, tok, problems, max_new_tokens: int = 128) -> Dict[str, float]:
    model.eval()
    t0 = time.time()
    texts, ntok = [], 0
    device = next(model.parameters()).device
    for p in problems:
        enc = tok(tinygsm.format_prompt(p["question"]), return_tensors="pt").to(device)
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        gen = out[0, enc["input_ids"].shape[1]:]
        ntok += gen.numel()
        texts.append(tok.decode(gen, skip_special_tokens=True))
    model.train()
    return {"acc": score(problems, texts), "eval_s": time.time() - t0,
            "mean_new_tokens": ntok / len(problems), "example": texts[0]}


# ---------------------------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------------------------

def build(kind: str, args, tok):
    if kind == "dllm":
        cfg = TinyLLaDAConfig(
            vocab_size=len(tok), d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
            mlp_ratio=args.mlp_ratio, max_sequence_length=512,
            mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        return TinyLLaDAModelLM(cfg)
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.d_model, intermediate_size=int(args.mlp_ratio * args.d_model),
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        use_cache=True,
    )
    return LlamaForCausalLM(cfg)


def init_from(model, tok, path: str) -> Dict[str, int]:
    """Start ``model`` from an earlier checkpoint of the same architecture whose vocabulary may
    differ: every weight is copied; embedding and output rows are matched by token *string*, so
    tokens the old vocabulary lacked keep their fresh initialisation. Returns counts for the log."""
    from transformers import AutoTokenizer
    if path.endswith(".pt"):  # a run with this very vocabulary: its snap_*.pt, or best.pt
        sd = torch.load(path, map_location="cpu")
        sd = sd["model"] if "model" in sd and isinstance(sd["model"], dict) else sd
        if all(sd[k].shape == v.shape for k, v in model.state_dict().items() if k in sd) and \
                set(sd) == set(model.state_dict()):
            model.load_state_dict(sd)
            return {"tokens_matched": len(tok), "tokens_new": 0}
        try:  # a smaller model of the same width: grow it without changing what it computes
            return dict(grow_state_dict(sd, model), tokens_matched=len(tok), tokens_new=0)
        except (ValueError, KeyError) as e:
            raise SystemExit(f"--init-from {path}: cannot load or grow it into this model ({e}); "
                             f"use the same --d-model and at least its --layers and --mlp-ratio")
    old_tok = AutoTokenizer.from_pretrained(path)
    old = TinyLLaDAModelLM.from_pretrained(path, dtype=torch.float32)
    old_sd, new_sd = old.state_dict(), model.state_dict()
    old_vocab = old_tok.get_vocab()
    matched = 0
    with torch.no_grad():
        for name, tensor in new_sd.items():
            src = old_sd[name]
            if name in ("wte.weight", "lm_head.weight"):
                for t, i in tok.get_vocab().items():
                    j = old_vocab.get(t)
                    if j is not None:
                        tensor[i].copy_(src[j])
                        matched += name == "wte.weight"
            else:
                if src.shape != tensor.shape:
                    raise SystemExit(f"--init-from: {name} has shape {tuple(src.shape)} there, "
                                     f"{tuple(tensor.shape)} here: use the same --d-model/--layers")
                tensor.copy_(src)
    return {"tokens_matched": matched, "tokens_new": len(tok) - matched}


def lr_at(step: int, args) -> float:
    return cosine_lr(step, args.lr, args.warmup, args.steps, args.min_lr_frac)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

def select_checkpoint(args, tok, curve: list, work: Path):
    """Validation on ``--eval-n`` problems is noisy (threshold decoding of a tiny model moves by
    several points between neighbouring checkpoints): re-measure the ``--select-top`` best snapshots
    and the last one on ``--select-n`` problems of another seed (no test question) and pick the best."""
    ranked = sorted((c for c in curve if "acc" in c), key=lambda c: (c["acc"], c["step"]), reverse=True)
    cands = {c["step"]: c for c in ranked[:args.select_top] + [curve[-1]]}
    test = {p["question"] for p in tinygsm.load_jsonl(tinygsm.default_split_path("test"))}
    problems = tinygsm.generate_problems(SELECT_SEED, args.select_n, exclude=test)
    model = build("dllm", args, tok)
    rows = []
    for step, c in sorted(cands.items()):
        snap = work / f"snap_{step:07d}.pt"
        if not snap.exists():
            log(f"selection: {snap} is missing, skipped")
            continue
        model.load_state_dict(torch.load(snap, map_location="cpu"))
        r = eval_dllm(model, tok, problems, cache=args.eval_cache)
        rows.append({"step": step, "val_acc": c["acc"], "select_acc": r["acc"], "select_nfe": r["nfe"]})
        log(f"selection: step {step}: {rows[-1]}")
    if not rows:
        raise SystemExit("--select-top: none of the candidate snapshots is here; resume the run where they are")
    best = max(rows, key=lambda r: (r["select_acc"], r["step"]))
    return cands[best["step"]], {"seed": SELECT_SEED, "n": args.select_n, "cache": args.eval_cache,
                                 "candidates": rows}


def export(kind: str, args, tok, state: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    curve = state["curve"]
    selection = None
    if kind == "dllm":
        chosen = max((c for c in curve if "acc" in c), key=lambda c: (c["acc"], c["step"]), default=None)
        if chosen is not None and args.select_top > 0:
            chosen, selection = select_checkpoint(args, tok, curve, work)
    else:
        inside = [c for c in curve if "acc" in c and 0.30 <= c["acc"] <= 0.70]
        pool = inside or [c for c in curve if "acc" in c]
        chosen = min(pool, key=lambda c: abs(c["acc"] - 0.5), default=None)
    if chosen is None:
        raise SystemExit("no evaluated checkpoint to export")
    snap = work / f"snap_{chosen['step']:07d}.pt"
    if not snap.exists():  # a run that spans machines keeps only ckpt.pt and best.pt
        best = torch.load(work / "best.pt", map_location="cpu") if (work / "best.pt").exists() else None
        if kind == "aux" or best is None or best["step"] != chosen["step"]:
            raise SystemExit(f"the chosen checkpoint {snap} is missing and best.pt does not hold step "
                             f"{chosen['step']}; resume the run where its snapshots are")
        snap = work / "best.pt.weights"
        torch.save(best["model"], snap)
    log(f"exporting step {chosen['step']} (val acc {chosen['acc']:.3f}) from {snap}")
    model = build(kind, args, tok)
    model.load_state_dict(torch.load(snap, map_location="cpu"))
    for f in out.glob("*"):
        if f.is_file() and f.name not in ("TRAINING.md",):
            f.unlink()
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)  # files every tested transformers release loads
    if kind == "aux":
        from transformers import GenerationConfig
        GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, do_sample=False,
                         max_new_tokens=128).save_pretrained(out)

    # reload exactly as users do and measure
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok2 = AutoTokenizer.from_pretrained(out)
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))[:args.final_n]
    fresh = tinygsm.generate_problems(FRESH_SEED, len(test))
    torch.manual_seed(0)
    if kind == "dllm":
        m2 = TinyLLaDAModelLM.from_pretrained(out, dtype=torch.float32)
        final = {"test": eval_dllm(m2, tok2, test), "fresh_seed": eval_dllm(m2, tok2, fresh),
                 # as the bench decodes (Fast-dLLM's dual cache)
                 "test_dual_cache": eval_dllm(m2, tok2, test, cache="dual"),
                 "fresh_seed_dual_cache": eval_dllm(m2, tok2, fresh, cache="dual")}
    else:
        m2 = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        final = {"test": eval_aux(m2, tok2, test), "fresh_seed": eval_aux(m2, tok2, fresh)}
    final["fresh_seed"]["seed"] = FRESH_SEED
    log(f"final: {json.dumps(final)}")
    size = sum(f.stat().st_size for f in out.glob("*") if f.is_file())
    info = {
        "model": kind,
        "command": state.get("commands", []),
        "seed": args.seed,
        "hyperparameters": state["hparams"],
        "hyperparameters_per_session": state.get("hparams_history", []),
        "init_from": state.get("init_from"),
        "steps_done": state["step"],
        "exported_step": chosen["step"],
        "exported_val_acc": chosen["acc"],
        "selection": selection,
        "wall_time_s": round(state["elapsed"], 1),
        "versions": versions(),
        "final_eval": final,
        "decoding": ({"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, "threshold": THRESHOLD,
                      "remasking": "low_confidence", "prompt": tinygsm.PROMPT_TEMPLATE,
                      "completion": "' ' + answer, then EOS padding to the canvas"}
                     if kind == "dllm" else
                     {"greedy": True, "max_new_tokens": 128, "prompt": tinygsm.PROMPT_TEMPLATE}),
        "n_parameters": sum(p.numel() for p in m2.parameters()),
        "dir_size_bytes": size,
        "learning_curve": curve,
    }
    (out / "train_log.json").write_text(json.dumps(info, indent=1))
    log(f"wrote {out} ({size / 1e6:.2f} MB)")


# ---------------------------------------------------------------------------------------------
# main loop
# ---------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["dllm", "aux"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None, help="checkpoint dir (default .work/train_<kind>_seed<seed>)")
    ap.add_argument("--steps", type=int, default=None, help="schedule length (cosine ends here)")
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop (and export) at this step without changing the --steps schedule")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--d-model", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--mlp-ratio", type=float, default=4.0)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--prefix-frac", type=float, default=0.5,
                    help="dllm: fraction of rows masked only after a random cut in the answer")
    ap.add_argument("--eq-frac", type=float, default=0.0,
                    help="dllm: fraction of rows with equation-focused (decode-state) masking")
    ap.add_argument("--forced-weight", type=float, default=2.0,
                    help="dllm: loss weight of the tokens forced masked by --eq-frac")
    ap.add_argument("--rf-weight", type=float, default=1.0,
                    help="dllm: loss weight of the result c of result-first equations ('c = a + b'), in "
                         "every loss (scripts.training.result_first_boost; 1 = none)")
    ap.add_argument("--select-top", type=int, default=0,
                    help="dllm: export the best of the K best-validated snapshots and the last one, "
                         "re-measured on --select-n problems of another seed (0: the best validation)")
    ap.add_argument("--select-n", type=int, default=1000)
    ap.add_argument("--final-n", type=int, default=500, help="problems per final eval split")
    ap.add_argument("--cache-frac", type=float, default=0.0,
                    help="dllm: fraction of steps trained in the dual-cache decoding state "
                         "(scripts.training.dllm_cache_loss: a block against stale cached context)")
    ap.add_argument("--decode-frac", type=float, default=0.0,
                    help="dllm: fraction of steps trained in the states the dual-cache threshold decoder "
                         "visits, commits teacher-forced (scripts.training.dllm_decode_state_loss)")
    ap.add_argument("--decode-states", type=int, default=1,
                    help="dllm: decoder states drawn per row from one teacher-forced replay (--decode-frac)")
    ap.add_argument("--decode-block", choices=["uniform", "content"], default="uniform",
                    help="dllm: which block --decode-frac replays: uniform, or in proportion to the answer "
                         "tokens it holds (rarely a block of end-of-canvas filler only)")
    ap.add_argument("--eval-cache", choices=["none", "dual"], default="none",
                    help="dllm: decode validation with no cache (default) or the engine's dual cache")
    ap.add_argument("--max-events", type=int, default=None,
                    help="curriculum: train on problems with up to this many events (default: the task's)")
    ap.add_argument("--max-groups", type=int, default=None,
                    help="curriculum: ... and up to this many group events (default: the task's)")
    ap.add_argument("--group-frac", type=float, default=None,
                    help="curriculum: fraction of training problems with a group sub-result (default: the "
                         "task's own mix; validation and selection always use the task's mix)")
    ap.add_argument("--init-from", default=None,
                    help="dllm: start a fresh run from this earlier checkpoint (weights matched by "
                         "token string where the vocabulary changed); ignored on --resume")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokenizer", choices=["aux", "dllm"], default=None,
                    help="aux: train on this tokenizer (default: the aux's own WordPiece one; dllm: the "
                         "tiny dLLM's, so the two models share one vocabulary, as APD's logit mixture needs)")
    ap.add_argument("--target", type=float, default=None, help="stop once val acc >= target")
    args = ap.parse_args(argv)
    if not 0.0 <= args.cache_frac <= 1.0:
        ap.error(f"--cache-frac {args.cache_frac}: give a fraction of steps in [0, 1].")
    if not (0.0 <= args.decode_frac <= 1.0 and args.cache_frac + args.decode_frac <= 1.0):
        ap.error(f"--decode-frac {args.decode_frac}: give a fraction of steps in [0, 1] that, with "
                 f"--cache-frac {args.cache_frac}, sums to at most 1.")
    if args.decode_states < 1:
        ap.error(f"--decode-states {args.decode_states}: draw at least 1 state per row.")
    if not args.rf_weight > 0:
        ap.error(f"--rf-weight {args.rf_weight}: give a positive loss weight (1 = no boost).")
    if args.group_frac is not None and not 0.0 <= args.group_frac <= 1.0:
        ap.error(f"--group-frac {args.group_frac}: give a fraction of problems in [0, 1].")
    if args.kind == "dllm" and args.tokenizer == "aux":
        ap.error("--tokenizer aux: the dLLM trains on its own tokenizer; drop --tokenizer.")

    kind = args.kind
    if args.max_events is not None:  # curriculum: the training stream and the validation draw follow it
        try:
            tinygsm.MAX_EVENTS = tinygsm.check_max_events(args.max_events)
        except ValueError as e:
            ap.error(f"--max-events: {e}")
    if args.max_groups is not None:
        tinygsm.MAX_GROUP_EVENTS = args.max_groups
    defaults = {
        "dllm": dict(steps=6000, batch=64, lr=2e-3, d_model=128, layers=4, eval_every=300, threads=2,
                     tokenizer="dllm"),
        "aux": dict(steps=3000, batch=32, lr=3e-3, d_model=64, layers=2, eval_every=200, threads=1,
                    tokenizer="aux"),
    }[kind]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.work is None:
        tag = "_dllmtok" if kind == "aux" and args.tokenizer == "dllm" else ""
        args.work = str(REPO / ".work" / f"train_{kind}{tag}_seed{args.seed}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tok = build_dllm_tokenizer() if args.tokenizer == "dllm" else build_aux_tokenizer()
    hparams = {k: getattr(args, k) for k in ("steps", "batch", "lr", "warmup", "min_lr_frac", "weight_decay",
                                               "d_model", "layers", "heads", "mlp_ratio", "eval_every",
                                               "eval_n", "threads", "prefix_frac", "eq_frac", "forced_weight",
                                               "max_events", "max_groups", "cache_frac", "decode_frac",
                                               "decode_states", "decode_block", "eval_cache", "rf_weight",
                                               "group_frac", "tokenizer")}
    hparams.update(gen_length=GEN_LENGTH, vocab_size=len(tok), device=str(device))
    ckpt_path = work / "ckpt.pt"
    command = "python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:])

    torch.manual_seed(args.seed)
    model = build(kind, args, tok).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98),
                            weight_decay=args.weight_decay)
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))
    val = tinygsm.generate_problems(VAL_SEED, args.eval_n, exclude={p["question"] for p in test})
    exclude = {p["question"] for p in test} | {p["question"] for p in val}
    stream = ProblemStream(args.seed * 1_000_003 + 17, exclude, args.group_frac)
    gen = torch.Generator().manual_seed(args.seed + 1)
    state = {"step": 0, "elapsed": 0.0, "curve": [], "hparams": hparams, "commands": []}

    if (args.resume or args.export_only) and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model, opt, stream, gen)["state"]
        log(f"resumed from {ckpt_path} at step {state['step']}")
    elif args.init_from and kind == "dllm" and not args.export_only:
        info = init_from(model, tok, args.init_from)
        state["init_from"] = dict(info, path=args.init_from)
        log(f"initialised from {args.init_from}: {info}")
    state["commands"].append(command)
    if not args.export_only:  # record the hyper-parameters of every (resumed) training session
        state.setdefault("hparams_history", []).append(dict(hparams, from_step=state["step"]))
        state["hparams"] = hparams
    if args.export_only:
        export(kind, args, tok, state)
        return

    n_params = sum(p.numel() for p in model.parameters())
    log(f"{kind}: {n_params / 1e6:.3f}M params, vocab {len(tok)}, hparams {hparams}")
    curve_f = (work / "curve.jsonl").open("a")

    def save_ckpt():
        save_checkpoint(ckpt_path, model, opt, stream, gen, state)

    def do_eval():
        r = eval_dllm(model, tok, val, cache=args.eval_cache) if kind == "dllm" else eval_aux(model, tok, val)
        r.update(step=state["step"], elapsed=round(state["elapsed"], 1), loss=round(run_loss, 4))
        state["curve"].append(r)
        torch.save(model.state_dict(), work / f"snap_{state['step']:07d}.pt")
        if kind == "dllm" and r["acc"] >= max(c["acc"] for c in state["curve"]):
            # the best weights so far, small enough to commit beside ckpt.pt when a run spans sessions
            torch.save({"step": state["step"], "acc": r["acc"], "model": model.state_dict()}, work / "best.pt")
        curve_f.write(json.dumps(r) + "\n")
        curve_f.flush()
        log(f"EVAL step {state['step']}: {json.dumps(r)}")
        return r

    model.train()
    t_session = time.time()
    t_last = time.time()
    last_ckpt = time.time()
    run_loss = 0.0
    loss_ema = None
    stop_reason = "steps"
    while state["step"] < args.steps:
        if args.minutes is not None and (time.time() - t_session) / 60 >= args.minutes:
            stop_reason = "minutes"
            break
        if args.stop_at is not None and state["step"] >= args.stop_at:
            stop_reason = "stop-at"
            break
        if (work / "STOP").exists():
            stop_reason = "STOP file"
            (work / "STOP").unlink()
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(state["step"], args)
        probs = stream.next_batch(args.batch)
        u = float(torch.rand(1, generator=gen)) if kind == "dllm" and args.cache_frac + args.decode_frac > 0 else 1.0
        if u < args.decode_frac:
            loss = dllm_decode_state_loss(model, dllm_encode_batch(tok, probs, device), tok.mask_token_id,
                                          tok.pad_token_id, gen, states=args.decode_states,
                                          block_choice=args.decode_block, rf_weight=args.rf_weight)
        elif u < args.decode_frac + args.cache_frac:
            loss = dllm_cache_loss(model, dllm_encode_batch(tok, probs, device), tok.mask_token_id,
                                   tok.eos_token_id, gen, eq_frac=args.eq_frac,
                                   forced_weight=args.forced_weight, rf_weight=args.rf_weight)
        elif kind == "dllm":
            loss = dllm_loss(model, dllm_encode_batch(tok, probs, device), tok.mask_token_id,
                             tok.eos_token_id, gen, prefix_frac=args.prefix_frac,
                             eq_frac=args.eq_frac, forced_weight=args.forced_weight,
                             rf_weight=args.rf_weight)
        else:
            loss = aux_loss(model, aux_encode_batch(tok, probs, device))
        optimizer_step(model, opt, loss)
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        state["step"] += 1
        lv = loss.item()
        loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
        run_loss = loss_ema
        if state["step"] % 50 == 0:
            log(f"step {state['step']} loss {lv:.4f} ema {loss_ema:.4f} lr {lr_at(state['step'], args):.2e} "
                f"{state['step'] / max(1e-9, state['elapsed']):.2f} steps/s overall")
        if state["step"] % args.eval_every == 0:
            r = do_eval()
            t_last = time.time()  # eval time is not training time
            if args.target is not None and r["acc"] >= args.target:
                stop_reason = "target"
                break
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            save_ckpt()
            last_ckpt = time.time()
    log(f"stopping ({stop_reason}) at step {state['step']}")
    if not state["curve"] or state["curve"][-1]["step"] != state["step"]:
        do_eval()
    save_ckpt()
    export(kind, args, tok, state)


if __name__ == "__main__":
    main()
