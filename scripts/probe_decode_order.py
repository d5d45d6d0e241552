#!/usr/bin/env python
"""How much of a tiny dLLM's error is its decoding order rather than its knowledge?

Decodes the same ``tinygsm`` problems three ways with one model and prints strict accuracy:

  left-to-right   one token per forward, always the first masked position (no cache): what the
                  model knows when every prediction sees a consistent left context
  threshold       Fast-dLLM's threshold rule (0.9, blocks of 32), no cache
  threshold+dual  the same with the dual cache, as ``bench`` decodes

It also prints, per equation wording, the fraction of the equations written that way whose
arithmetic is wrong. A large gap between the first and the others means the model commits tokens, in the order of its
own confidence, whose place depends on a wording it has not chosen yet; that is what
``train_tiny.py --decode-frac`` trains against (``scripts.training.dllm_decode_state_loss``).

    python scripts/probe_decode_order.py [--model embedded:tiny-dllm | PATH | run/snap_*.pt]
        [--seed 99] [--n 200]

A ``.pt`` snapshot of ``train_tiny.py`` needs ``--d-model``/``--layers`` of its run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fastdllm_warmstart.loading import ModelLoadError  # noqa: E402
from fastdllm_warmstart.models import TinyLLaDAConfig, TinyLLaDAModelLM  # noqa: E402
from fastdllm_warmstart.tasks import tinygsm  # noqa: E402
from fastdllm_warmstart.tokenization import build_dllm_tokenizer  # noqa: E402
from scripts.training import GEN_LENGTH, engine_decode, prompt_canvas, score, versions  # noqa: E402


@torch.no_grad()
def left_to_right(model, tok, questions, batch_size: int = 100):
    """One token per forward at the first masked position (mask and pad never predicted)."""
    texts = []
    for start in range(0, len(questions), batch_size):
        x, am, P = prompt_canvas(tok, questions[start:start + batch_size])
        for j in range(P, P + GEN_LENGTH):
            logits = model(x, attention_mask=am).logits[:, j].float()
            logits[:, [tok.mask_token_id, tok.pad_token_id]] = -float("inf")
            x[:, j] = logits.argmax(-1)
        for row in x[:, P:].tolist():
            if tok.eos_token_id in row:
                row = row[:row.index(tok.eos_token_id)]
            texts.append(tok.decode(row, skip_special_tokens=True))
    return texts


def wording_errors(texts) -> dict:
    """Per equation wording (``a op b = c``, ``a <word> b is c``, ``c = a op b``): how many equations
    the decoded answers wrote that way, and the fraction whose arithmetic is wrong."""
    count, wrong = {}, {}
    for text in texts:
        for sent in re.split(r"\s*\.(?:\s|$)", text.split("####")[0]):
            eqs = tinygsm.parse_equations(sent + " .")
            if not eqs or eqs[0][1] == "has":
                continue
            a, op, b, c = eqs[0]
            kind = ("result_first" if re.search(r"\d+ = \d+ \S+ \d+$", sent.strip())
                    else "words" if " is " in sent else "symbol")
            count[kind] = count.get(kind, 0) + 1
            wrong[kind] = wrong.get(kind, 0) + (tinygsm._apply(a, op, b) != c)
    return {k: {"equations": count[k], "wrong": round(wrong[k] / count[k], 3)} for k in sorted(count)}


def load(spec: str, tok, d_model: int, layers: int):
    if spec.endswith(".pt"):
        cfg = TinyLLaDAConfig(vocab_size=len(tok), d_model=d_model, n_layers=layers, n_heads=4,
                              max_sequence_length=512, mask_token_id=tok.mask_token_id,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = TinyLLaDAModelLM(cfg)
        sd = torch.load(spec, map_location="cpu")
        model.load_state_dict(sd["model"] if isinstance(sd.get("model"), dict) else sd)
        return model
    from fastdllm_warmstart.loading import load_dllm
    return load_dllm(spec, device="cpu", dtype=torch.float32)[0]


def load_or_exit(spec: str, tok, d_model: int, layers: int):
    """:func:`load`, with a one-line ``SystemExit`` naming the fix for a bad ``--model``."""
    try:
        return load(spec, tok, d_model, layers)
    except FileNotFoundError:
        raise SystemExit(f"--model {spec}: no such file; give embedded:NAME, a model folder or a run's .pt")
    except RuntimeError as e:  # a .pt of another shape
        raise SystemExit(f"--model {spec}: its weights do not fit d_model {d_model}, {layers} "
                         f"layers ({str(e).splitlines()[0]}); pass its run's --d-model and --layers")
    except ModelLoadError as e:  # the loader's own message names the fix
        raise SystemExit(f"--model {spec}: {e}")


def add_max_events_flag(ap: argparse.ArgumentParser) -> None:
    """``--max-events``: the probes draw their problems with up to this many events; a bad value is
    one argparse error line naming the range."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of events") from None
        try:
            return tinygsm.check_max_events(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    ap.add_argument("--max-events", type=parse, default=None,
                    help="draw the problems with up to this many events (default: the task's)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:tiny-dllm")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d-model", type=int, default=96)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_max_events_flag(ap)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n {args.n}: decode at least 1 problem")
    torch.set_num_threads(args.threads)
    tok = build_dllm_tokenizer()
    model = load_or_exit(args.model, tok, args.d_model, args.layers).eval()
    problems = tinygsm.generate_problems(args.seed, args.n, max_events=args.max_events)
    questions = [p["question"] for p in problems]
    texts = {
        "left-to-right": left_to_right(model, tok, questions),
        "threshold": engine_decode(model, tok, questions, "none")[0],
        "threshold+dual": engine_decode(model, tok, questions, cache="dual")[0],
    }
    rows = {name: score(problems, t) for name, t in texts.items()}
    errors = {name: wording_errors(t) for name, t in texts.items()}
    for name, acc in rows.items():
        per = ", ".join(f"{k} {v['wrong']:.2f} of {v['equations']}" for k, v in errors[name].items())
        print(f"{name:16s} {acc:.3f}   wrong arithmetic per wording: {per}")
    print(json.dumps({"model": args.model, "seed": args.seed, "n": args.n,
                      "max_events": args.max_events or tinygsm.MAX_EVENTS, "accuracy": rows,
                      "wrong_per_wording": errors, "versions": versions()}))


if __name__ == "__main__":
    main()
