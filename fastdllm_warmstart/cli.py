"""``fastdllm-warmstart`` command line: generate, bench, trace, eval, make-data.

The CLI owns stdout. Configuration errors print one line naming the fix and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from .config import (CACHE_MODES, EMBED_SCHEDULES, LOOP_VARIANTS, PRIOR_CONTEXTS, REMASK_RULES, RESIDUAL_STARTS,
                     REMASK_SCHEDULES, REMASKING_RULES,
                     WARM_INITS, ConfigError, RunConfig, configs_from_flat)

logger = logging.getLogger("fastdllm_warmstart")


def _optional_float(text: str) -> Optional[float]:
    return None if text.lower() in ("none", "null") else float(text)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by generate, bench and eval; names match the flat config keys."""
    g = parser.add_argument_group("decoding (Fast-dLLM)")
    g.add_argument("--gen-length", type=int, help="answer canvas length (default 96)")
    g.add_argument("--block-length", type=int, help="semi-autoregressive block size (default 32)")
    g.add_argument("--steps", type=int, help="fixed-schedule steps when --threshold none (default gen-length)")
    g.add_argument("--threshold", type=_optional_float,
                   help="confidence threshold of parallel decoding, or 'none' for the fixed schedule (default 0.9)")
    g.add_argument("--factor", type=_optional_float,
                   help="Fast-dLLM's factor rule instead of --threshold: commit the top n while the n-th "
                        "confidence >= 1 - factor/(n+1) (default none: unused)")
    g.add_argument("--cache", choices=CACHE_MODES, help="KV cache strategy (default dual)")
    g.add_argument("--loop-variant", choices=LOOP_VARIANTS,
                   help="upstream loop to reproduce: current (a block the full forward completes costs "
                        "1 forward), snapshot-2025-06 (always 2 with a cache) or auto (the found "
                        "Fast-dLLM checkout's, else current; default)")
    g.add_argument("--remasking", choices=REMASKING_RULES, help="commit ranking rule (default low_confidence)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0: greedy)")
    g.add_argument("--early-stop", action="store_true", default=None,
                   help="stop a row once it produced EOS and only EOS follows")
    g.add_argument("--skip-done-rows", action=argparse.BooleanOptionalAction, default=None,
                   help="forwards compute only rows whose block still has masks (default on; "
                        "--no-skip-done-rows computes every row, as upstream)")
    w = parser.add_argument_group("warm start")
    w.add_argument("--warm-init", choices=WARM_INITS, help="none | token (inject, --rho) | embed (interpolate, --alpha)")
    w.add_argument("--rho", type=float, help="token injection rate (default 0.25)")
    w.add_argument("--alpha", type=float, help="embedding interpolation weight (default 0.6)")
    w.add_argument("--embed-schedule", choices=EMBED_SCHEDULES, help="when the interpolated prior is fed (default every_forward)")
    w.add_argument("--seed", type=int, help="seed of injection and remask draws (default 0)")
    r = parser.add_argument_group("confidence remask")
    r.add_argument("--remask", dest="remask", action="store_true", default=None, help="revoke unconfirmed priors")
    r.add_argument("--no-remask", dest="remask", action="store_false")
    r.add_argument("--remask-tau", type=float, help="revoke priors the model gives less than this (default 0.5)")
    r.add_argument("--remask-p-init", type=float, help="initial revocation probability (default 1.0)")
    r.add_argument("--remask-schedule", choices=REMASK_SCHEDULES, help="decay of the revocation probability")
    r.add_argument("--remask-horizon", type=int, help="linear schedule horizon in steps (default 32)")
    r.add_argument("--remask-decay", type=float, help="exp schedule decay per step (default 0.9)")
    r.add_argument("--remask-confirm", type=float, help="revoke rule: probability at which a prior counts as confirmed")
    r.add_argument("--remask-rule", choices=REMASK_RULES,
                   help="revoke (paper-style: judge injected priors, revoke unlikely ones) | accept | "
                        "chain | prefix (commit draft tokens the dLLM supports early; default chain)")
    r.add_argument("--remask-tau-accept", type=float,
                   help="accept/chain: commit a draft token the model gives >= this (default 0.3)")
    r.add_argument("--remask-rel", type=float,
                   help="chain: ... or >= this x the probability of the draft token before it (default 0.2)")
    r.add_argument("--remask-floor", type=float, help="chain: never below this probability (default 0.01)")
    r.add_argument("--remask-context", choices=PRIOR_CONTEXTS,
                   help="accept/chain/prefix: hidden (default) or visible later-block priors as context")
    r.add_argument("--remask-frontier", action="store_true", default=None,
                   help="accept/chain/prefix: put the forced guess at the first open position when the "
                        "draft is not supported there (fewer forwards with good drafts; see README)")
    a = parser.add_argument_group("auxiliary proposer")
    a.add_argument("--aux-model", help="HF causal LM folder (default: the embedded tiny aux model)")
    a.add_argument("--aux-max-new-tokens", type=int, help="aux greedy length (default 2 x gen-length)")
    a.add_argument("--aux-batch-size", type=int, help="aux batch size (default 64)")
    a.add_argument("--proposal-cache", help="JSONL cache of aux proposals, reused across runs")
    a.add_argument("--proposals", help="JSONL of ready proposals ({prompt, proposal}) instead of the aux model")
    x = parser.add_argument_group("residual context (RCD)")
    x.add_argument("--residual", action="store_true", default=None,
                   help="feed the residual stream (for an RCD-trained model, e.g. the embedded tiny-dllm-rcd)")
    x.add_argument("--residual-t-res", type=float, help="residual temperature at inference (default 0.95)")
    x.add_argument("--residual-start", choices=RESIDUAL_STARTS,
                   help="zeros (default) or reference: start the stream from one reference forward")
    x.add_argument("--residual-reference", help="reference model for --residual-start reference ('embedded': tiny dLLM)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="dLLM checkpoint folder (default: the embedded tiny dLLM)")
    parser.add_argument("--fast-dllm-path", help="Fast-dLLM checkout (else FAST_DLLM_PATH / sys.path)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (default 16)")
    parser.add_argument("--threads", default="auto",
                        help="CPU threads; auto = 1 for small models on CPU (default), else torch's default")


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` after the subcommand too (``fastdllm-warmstart generate --verbose``)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log diagnostics and library messages (loading bars, warnings) to stderr")


def run_config_from_args(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> RunConfig:
    """Flags over ``base`` over defaults (the documented precedence)."""
    from .config import FLAT_KEYS

    values = dict(base or {})
    for key in FLAT_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return configs_from_flat(values)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# -- generate ------------------------------------------------------------------------------
def format_cli_prompts(runner, prompts: Sequence[str], template: Optional[str] = None) -> List[str]:
    """``--template`` if given; else the prompt as is when the model has a chat template (it wraps
    them); else the 'Question: ...\\nAnswer:' format the embedded model knows."""
    from .tasks.tinygsm import format_prompt

    if template is not None:
        return [template.format(prompt=p) for p in prompts]
    if getattr(runner.tokenizer, "chat_template", None):
        return list(prompts)
    return [format_prompt(p) for p in prompts]


def _cmd_generate(args: argparse.Namespace) -> int:
    from .runner import WarmStartRunner

    config = run_config_from_args(args)
    runner = WarmStartRunner.from_pretrained(args.model, config, device=args.device, dtype=args.dtype,
                                             fast_dllm_path=args.fast_dllm_path, threads=args.threads)
    prompts = format_cli_prompts(runner, args.prompt, args.template)
    start = time.perf_counter()
    results = runner.generate(prompts, batch_size=args.batch_size)
    wall = time.perf_counter() - start
    if args.json:
        payload = {"config": config.to_dict(), "wall_s": wall,
                   "results": [{"prompt": r.prompt, "answer": r.text, "nfe": r.nfe,
                                "gen_tokens": r.gen_tokens, "dllm_s": r.dllm_seconds,
                                "aux_s": r.aux_seconds, "warm": r.warm, "fallback": r.fallback,
                                "proposal": r.proposal_text, "injected": r.injected,
                                "revoked": r.revoked} for r in results]}
        print(json.dumps(payload, indent=2))
        return 0
    for r in results:
        print(f"Prompt: {r.prompt}")
        if r.proposal_text is not None:
            print(f"Aux proposal: {r.proposal_text}")
        if r.fallback:
            print(f"(warm start fell back to cold: {r.fallback})")
        print(f"Answer: {r.text}")
        print(f"NFE: {r.nfe}   dLLM: {r.dllm_seconds:.3f} s   aux: {r.aux_seconds:.3f} s")
        print()
    print(f"Total wall-clock: {wall:.3f} s for {len(results)} prompt(s)")
    return 0


# -- make-data -----------------------------------------------------------------------------
def _cmd_make_data(args: argparse.Namespace) -> int:
    from .tasks.tinygsm import check_max_events, make_data

    if args.n < 1:
        return _fail("--n must be >= 1.")
    try:
        check_max_events(args.max_events)
    except ValueError as e:
        return _fail(f"--max-events {args.max_events}: {e} Leave it out for the default task.")
    make_data(args.seed, args.n, args.out, max_events=args.max_events)
    print(f"Wrote {args.n} tinygsm problems (seed {args.seed}) to {args.out}")
    if args.drafts_out:
        import json
        import random

        from .tasks.tinygsm import draft_answer, format_prompt, load_jsonl

        problems = load_jsonl(args.out)
        rng = random.Random(args.seed)
        with open(args.drafts_out, "w", encoding="utf-8") as fh:
            for p in problems:
                text = p["answer"] if args.drafts == "gold" else draft_answer(p, rng, args.drafts_wrong)
                fh.write(json.dumps({"prompt": format_prompt(p["question"]), "proposal": text}) + "\n")
        print(f"Wrote {args.drafts} proposals for them to {args.drafts_out} (use with --proposals)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdllm-warmstart",
                                     description="Warm-started Fast-dLLM decoding.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="answer prompts and print NFE and time")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--template", help="format string with {prompt}; default: the model's chat "
                                        "template, else 'Question: {prompt}\\nAnswer:'")
    gen.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_verbose_flag(gen)
    add_model_flags(gen)
    add_run_flags(gen)
    gen.set_defaults(func=_cmd_generate)

    from .bench import add_bench_parser
    from .sweep import add_sweep_parser
    from .trace import add_trace_parser

    add_bench_parser(sub)
    add_sweep_parser(sub)
    add_trace_parser(sub)

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
    data.set_defaults(func=_cmd_make_data)

    sub.add_parser("eval", help="lm-eval-harness run (all lm_eval flags plus ours)", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        from .eval import main as eval_main

        return eval_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = argv  # what was typed, for result files (paths as given)
    from .verbosity import configure

    configure(args.verbose)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted; partial results (if any) are saved and --resume continues them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
