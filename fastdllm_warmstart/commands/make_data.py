"""``fastdllm-warmstart make-data``: draw a fresh tinygsm split (and proposals for it)."""

from __future__ import annotations

import argparse
import json
import random

from ..flags import add_verbose_flag


def run(args: argparse.Namespace) -> int:
    from ..tasks.tinygsm import check_max_events, draft_answer, format_prompt, load_jsonl, make_data

    if args.n < 1:
        raise ValueError("--n must be >= 1.")
    try:
        check_max_events(args.max_events)
    except ValueError as e:
        raise ValueError(f"--max-events {args.max_events}: {e} Leave it out for the default task.") from None
    make_data(args.seed, args.n, args.out, max_events=args.max_events)
    print(f"Wrote {args.n} tinygsm problems (seed {args.seed}) to {args.out}")
    if args.drafts_out:
        problems = load_jsonl(args.out)
        rng = random.Random(args.seed)
        with open(args.drafts_out, "w", encoding="utf-8") as fh:
            for p in problems:
                text = p["answer"] if args.drafts == "gold" else draft_answer(p, rng, args.drafts_wrong)
                fh.write(json.dumps({"prompt": format_prompt(p["question"]), "proposal": text}) + "\n")
        print(f"Wrote {args.drafts} proposals for them to {args.drafts_out} (use with --proposals)")
    return 0


def add_parser(sub) -> None:
    data = sub.add_parser("make-data", help="draw a fresh tinygsm split")
    data.add_argument("--seed", type=int, required=True)
    data.add_argument("--n", type=int, required=True)
    data.add_argument("--out", required=True)
    data.add_argument("--drafts-out", help="also write proposals for these problems (a --proposals file)")
    data.add_argument("--drafts", choices=["gold", "reworded"], default="gold",
                      help="gold: the reference answers; reworded: each answer drawn again in another "
                           "wording, with one wrong result in a --drafts-wrong fraction (an aux-like draft)")
    data.add_argument("--drafts-wrong", type=float, default=0.5)
    data.add_argument("--max-events", type=int, default=None,
                      help="most events per problem (default: the task's, 4; 5 draws the longer "
                           "variant the README also measures)")
    add_verbose_flag(data)
    data.set_defaults(func=run)
