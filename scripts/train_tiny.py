#!/usr/bin/env python
"""Train the two embedded tiny models on the synthetic ``tinygsm`` task (CPU is enough).

    python scripts/train_tiny.py dllm --seed 0 --out fastdllm_warmstart/assets/tiny-dllm --minutes 100
    python scripts/train_tiny.py aux  --seed 0 --out fastdllm_warmstart/assets/tiny-aux  --minutes 20

* ``dllm``: :class:`fastdllm_warmstart.models.TinyLLaDAModelLM` trained with the LLaDA SFT
  masked-diffusion objective. Sequence = left-[PAD]-ded prompt ``format_prompt(q)`` + a 48-token
  answer canvas (``" " + answer`` + EOS, EOS-padded to 48); per sequence ``t ~ U(eps, 1)``
  (stratified over the batch), each canvas token is replaced by [MASK] with probability ``t``; loss =
  cross-entropy on masked canvas tokens weighted ``1/t``, normalised by the number of canvas tokens.
  Evaluated with a self-contained Fast-dLLM-style threshold decoder (threshold 0.9, blocks of 16
  over a 48-token canvas, low-confidence remasking, never committing [MASK]/[PAD]).
* ``aux``: a tiny ``LlamaForCausalLM`` trained autoregressively on
  ``format_prompt(q) + " " + answer + "</s>"`` (loss on the completion), evaluated with greedy
  ``generate`` (max_new_tokens 64). The exported checkpoint is the one whose accuracy is closest to
  50% within 30-70% (it must be clearly weaker than the dLLM).

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
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM  # noqa: E402
from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from fastdllm_warmstart.tokenization import build_aux_tokenizer, build_dllm_tokenizer  # noqa: E402

GEN_LENGTH = 48
BLOCK_LENGTH = 16
THRESHOLD = 0.9
VAL_SEED = 777  # validation problems used for the learning curve / checkpoint selection
FRESH_SEED = 20241123  # a freshly drawn split for the final report


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> Dict[str, str]:
    import tokenizers
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


class ProblemStream:
    """Endless seeded stream of training problems, skipping excluded questions."""

    def __init__(self, seed: int, exclude: set):
        self.rng = random.Random(seed)
        self.exclude = exclude

    def next_batch(self, n: int, pool: int = 8) -> List[dict]:
        """Batches come from a pool of ``pool`` batches sorted by question length (less padding)."""
        if not getattr(self, "queue", None):
            out = []
            while len(out) < n * pool:
                p = tinygsm.generate_problem(self.rng)
                if p["question"] not in self.exclude:
                    out.append(p)
            out.sort(key=lambda p: len(p["question"]))
            batches = [out[i * n:(i + 1) * n] for i in range(pool)]
            self.rng.shuffle(batches)
            self.queue = batches
        return self.queue.pop()


# ---------------------------------------------------------------------------------------------
# dLLM
# ---------------------------------------------------------------------------------------------

def dllm_encode_batch(tok, problems: Sequence[dict], device) -> Dict[str, torch.Tensor]:
    """Left-padded prompt ids + 48-token EOS-padded answer canvas."""
    prompts = [tok.encode(tinygsm.format_prompt(p["question"]), add_special_tokens=False) for p in problems]
    answers = [tok.encode(" " + p["answer"], add_special_tokens=False) for p in problems]
    P = max(len(x) for x in prompts)
    B = len(problems)
    ids = torch.full((B, P + GEN_LENGTH), tok.pad_token_id, dtype=torch.long)
    am = torch.zeros((B, P + GEN_LENGTH), dtype=torch.long)
    for i, (pr, an) in enumerate(zip(prompts, answers)):
        if len(an) >= GEN_LENGTH:
            raise ValueError(f"answer too long ({len(an)} tokens)")
        ids[i, P - len(pr):P] = torch.tensor(pr)
        canvas = an + [tok.eos_token_id] * (GEN_LENGTH - len(an))
        ids[i, P:] = torch.tensor(canvas)
        am[i, P - len(pr):] = 1
    return {"ids": ids.to(device), "am": am.to(device), "P": P}


def dllm_loss(model, batch, mask_id: int, eos_id: int, gen: torch.Generator, prefix_frac: float = 0.0,
              eq_frac: float = 0.0, forced_weight: float = 2.0, eps: float = 1e-3) -> torch.Tensor:
    """LLaDA SFT loss. A fraction ``prefix_frac`` of the rows only mask at or after a random cut in
    the answer (the states semi-autoregressive decoding visits: earlier tokens already committed)."""
    ids, am, P = batch["ids"], batch["am"], batch["P"]
    B = ids.shape[0]
    u = torch.rand((), generator=gen).item()
    t = ((u + torch.arange(B, dtype=torch.float32) / B) % 1.0)
    t = (eps + (1 - eps) * t)[torch.randperm(B, generator=gen)]
    canvas = ids[:, P:]
    m = torch.rand(canvas.shape, generator=gen) < t[:, None]
    if prefix_frac > 0:
        ans_len = (canvas.cpu() != eos_id).sum(1)  # answer tokens before the EOS tail
        cut = (torch.rand(B, generator=gen) * (ans_len + 1).float()).floor().long()
        rows = torch.rand(B, generator=gen) < prefix_frac
        eligible = torch.arange(canvas.shape[1])[None, :] >= cut[:, None]
        m = torch.where(rows[:, None], m & eligible, m)
    forced = torch.zeros_like(m)
    if eq_frac > 0:
        m, forced = _equation_focus(canvas.cpu(), m, eos_id, eq_frac, gen)
    t, m, forced = t.to(ids.device), m.to(ids.device), forced.to(ids.device)
    xt = ids.clone()
    xt[:, P:] = torch.where(m, torch.full_like(canvas, mask_id), canvas)
    logits = model(xt, attention_mask=am).logits[:, P:]
    ce = F.cross_entropy(logits[m].float(), canvas[m], reduction="none")
    w = torch.where(forced, torch.full_like(t[:, None].expand_as(m), forced_weight), (1.0 / t)[:, None].expand_as(m))[m]
    return (ce * w).sum() / (B * GEN_LENGTH)


def _equation_focus(canvas: torch.Tensor, m: torch.Tensor, eos_id: int, frac: float, gen: torch.Generator):
    """Decode-state masking for a fraction of rows: for every other equation ``a op b = c .`` reveal
    ``a op b =`` and mask ``c`` together with the next copy of it (next equation's ``a`` or the final
    number), so the row carries clean "compute c from a op b" targets, as threshold decoding needs.
    The canvas layout is 6 tokens per equation then ``#### N`` (tinygsm answers)."""
    B, G = canvas.shape
    m = m.clone()
    forced = torch.zeros_like(m)
    rows = (torch.rand(B, generator=gen) < frac).nonzero(as_tuple=True)[0].tolist()
    ans_len = (canvas != eos_id).sum(1).tolist()
    for r in rows:
        n_eq = (ans_len[r] - 2) // 6
        if n_eq < 1 or 6 * n_eq + 2 != ans_len[r]:
            continue
        parity = int(torch.randint(2, (1,), generator=gen))
        for k in range(parity, n_eq, 2):
            base = 6 * k
            m[r, base:base + 4] = False  # a op b =
            nxt = base + 6 if k + 1 < n_eq else 6 * n_eq + 1  # next equation's a, or the final N
            for pos in (base + 4, nxt):
                m[r, pos] = True
                forced[r, pos] = True
            if k + 1 == n_eq:
                m[r, 6 * n_eq] = False  # keep "####" visible
    return m, forced


@torch.no_grad()
def threshold_decode(model, tok, questions: Sequence[str], gen_length: int = GEN_LENGTH,
                     block_length: int = BLOCK_LENGTH, threshold: float = THRESHOLD,
                     batch_size: int = 100):
    """Fast-dLLM-style parallel decoding. Returns (texts, nfe per problem)."""
    model.eval()
    device = next(model.parameters()).device
    mask_id, pad_id, eos_id = tok.mask_token_id, tok.pad_token_id, tok.eos_token_id
    texts: List[str] = []
    nfes: List[int] = []
    for start in range(0, len(questions), batch_size):
        qs = questions[start:start + batch_size]
        prompts = [tok.encode(tinygsm.format_prompt(q), add_special_tokens=False) for q in qs]
        P = max(len(x) for x in prompts)
        B = len(qs)
        x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=device)
        am = torch.ones((B, P + gen_length), dtype=torch.long, device=device)
        for i, pr in enumerate(prompts):
            x[i, :P - len(pr)] = pad_id
            am[i, :P - len(pr)] = 0
            x[i, P - len(pr):P] = torch.tensor(pr, device=device)
        nfe = torch.zeros(B, dtype=torch.long)
        for b in range(gen_length // block_length):
            s, e = P + b * block_length, P + (b + 1) * block_length
            while True:
                still = (x[:, s:e] == mask_id)
                active = still.any(1).nonzero(as_tuple=True)[0]
                if active.numel() == 0:
                    break
                logits = model(x[active], attention_mask=am[active]).logits[:, s:e].float()
                logits[..., mask_id] = -float("inf")
                logits[..., pad_id] = -float("inf")
                conf, pred = torch.softmax(logits, dim=-1).max(-1)
                blk_mask = still[active]
                conf = torch.where(blk_mask, conf, torch.full_like(conf, -1.0))
                commit = conf >= threshold
                commit[torch.arange(active.numel()), conf.argmax(-1)] = True
                commit &= blk_mask
                sub = x[active, s:e]
                sub[commit] = pred[commit]
                x[active, s:e] = sub
                nfe[active.cpu()] += 1
        for i in range(B):
            gen = x[i, P:].tolist()
            if eos_id in gen:
                gen = gen[:gen.index(eos_id)]
            texts.append(tok.decode(gen, skip_special_tokens=True))
        nfes += nfe.tolist()
    return texts, nfes


def score(problems: Sequence[dict], texts: Sequence[str]) -> float:
    ok = sum(1 for p, t in zip(problems, texts) if tinygsm.extract_final(t) == int(p["final"]))
    return ok / max(1, len(problems))


def eval_dllm(model, tok, problems, batch_size=100) -> Dict[str, float]:
    t0 = time.time()
    texts, nfes = threshold_decode(model, tok, [p["question"] for p in problems], batch_size=batch_size)
    model.train()
    return {"acc": score(problems, texts), "nfe": sum(nfes) / len(nfes), "eval_s": time.time() - t0,
            "example": texts[0]}


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
def eval_aux(model, tok, problems, max_new_tokens: int = 64) -> Dict[str, float]:
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


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    prog = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

def export(kind: str, args, tok, state: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    curve = state["curve"]
    if kind == "dllm":
        chosen = max((c for c in curve if "acc" in c), key=lambda c: c["acc"], default=None)
    else:
        inside = [c for c in curve if "acc" in c and 0.30 <= c["acc"] <= 0.70]
        pool = inside or [c for c in curve if "acc" in c]
        chosen = min(pool, key=lambda c: abs(c["acc"] - 0.5), default=None)
    if chosen is None:
        raise SystemExit("no evaluated checkpoint to export")
    snap = work / f"snap_{chosen['step']:07d}.pt"
    log(f"exporting step {chosen['step']} (val acc {chosen['acc']:.3f}) from {snap}")
    model = build(kind, args, tok)
    model.load_state_dict(torch.load(snap, map_location="cpu"))
    for f in out.glob("*"):
        if f.is_file() and f.name not in ("TRAINING.md",):
            f.unlink()
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if kind == "aux":
        from transformers import GenerationConfig
        GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, do_sample=False,
                         max_new_tokens=64).save_pretrained(out)

    # reload exactly as users do and measure
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok2 = AutoTokenizer.from_pretrained(out)
    test = tinygsm.load_jsonl(tinygsm.default_split_path("test"))[:args.final_n]
    fresh = tinygsm.generate_problems(FRESH_SEED, len(test))
    torch.manual_seed(0)
    if kind == "dllm":
        m2 = TinyLLaDAModelLM.from_pretrained(out, dtype=torch.float32)
        final = {"test": eval_dllm(m2, tok2, test), "fresh_seed": eval_dllm(m2, tok2, fresh)}
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
        "steps_done": state["step"],
        "exported_step": chosen["step"],
        "exported_val_acc": chosen["acc"],
        "wall_time_s": round(state["elapsed"], 1),
        "versions": versions(),
        "final_eval": final,
        "decoding": ({"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, "threshold": THRESHOLD,
                      "remasking": "low_confidence", "prompt": tinygsm.PROMPT_TEMPLATE,
                      "completion": "' ' + answer, then EOS padding to the canvas"}
                     if kind == "dllm" else
                     {"greedy": True, "max_new_tokens": 64, "prompt": tinygsm.PROMPT_TEMPLATE}),
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
    ap.add_argument("--final-n", type=int, default=500, help="problems per final eval split")
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--target", type=float, default=None, help="stop once val acc >= target")
    args = ap.parse_args(argv)

    kind = args.kind
    defaults = {
        "dllm": dict(steps=6000, batch=64, lr=2e-3, d_model=128, layers=4, eval_every=300, threads=2),
        "aux": dict(steps=3000, batch=32, lr=3e-3, d_model=64, layers=2, eval_every=200, threads=1),
    }[kind]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.work is None:
        args.work = str(REPO / ".work" / f"train_{kind}_seed{args.seed}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tok = build_dllm_tokenizer() if kind == "dllm" else build_aux_tokenizer()
    hparams = {k: getattr(args, k) for k in ("steps", "batch", "lr", "warmup", "min_lr_frac", "weight_decay",
                                               "d_model", "layers", "heads", "mlp_ratio", "eval_every",
                                               "eval_n", "threads", "prefix_frac", "eq_frac", "forced_weight")}
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
    stream = ProblemStream(args.seed * 1_000_003 + 17, exclude)
    gen = torch.Generator().manual_seed(args.seed + 1)
    state = {"step": 0, "elapsed": 0.0, "curve": [], "hparams": hparams, "commands": []}

    if (args.resume or args.export_only) and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        stream.rng.setstate(ck["data_rng"])
        stream.queue = ck.get("data_queue")
        gen.set_state(ck["gen_rng"])
        state = ck["state"]
        log(f"resumed from {ckpt_path} at step {state['step']}")
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
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "data_rng": stream.rng.getstate(),
                    "data_queue": getattr(stream, "queue", None),
                    "gen_rng": gen.get_state(), "state": state}, ckpt_path.with_suffix(".tmp"))
        os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)

    def do_eval():
        r = eval_dllm(model, tok, val) if kind == "dllm" else eval_aux(model, tok, val)
        r.update(step=state["step"], elapsed=round(state["elapsed"], 1), loss=round(run_loss, 4))
        state["curve"].append(r)
        torch.save(model.state_dict(), work / f"snap_{state['step']:07d}.pt")
        curve_f.write(json.dumps(r) + "\n")
        curve_f.flush()
        log(f"EVAL step {state['step']}: {json.dumps(r)}")
        return r

    model.train()
    t_session = time.time()
    t_last = time.time()
    last_ckpt = time.time()
    run_loss, n_loss = 0.0, 0
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
        if kind == "dllm":
            loss = dllm_loss(model, dllm_encode_batch(tok, probs, device), tok.mask_token_id,
                             tok.eos_token_id, gen, prefix_frac=args.prefix_frac,
                             eq_frac=args.eq_frac, forced_weight=args.forced_weight)
        else:
            loss = aux_loss(model, aux_encode_batch(tok, probs, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
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
