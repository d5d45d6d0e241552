"""``fastdllm-warmstart trace``: decode one prompt (or one per ``--compare`` mode) and draw it."""

from __future__ import annotations

import argparse
import shlex
from typing import List

from ..flags import add_model_flags, add_run_flags, add_verbose_flag, run_config_from_args
from ..trace import describe, draw_png, trace_with_runner, write_html, write_json
from .generate import format_cli_prompts


class _SpecParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line through the CLI's error path, exit 2
        raise ValueError(f"--compare: {message}")


def compare_configs(args, base_config) -> List[tuple]:
    """(label, RunConfig) per ``--compare`` spec: the spec's flags over the command's flags."""
    specs = list(args.compare or [])
    if len(specs) < 2:
        raise ValueError("--compare needs at least two modes, each one quoted string of flags, e.g. "
                         "--compare \"--warm-init none\" \"--warm-init token --remask\" (a mode that is "
                         "a single flag needs a trailing space inside the quotes: \"--remask \").")
    parser = _SpecParser(prog="--compare", add_help=False)
    add_run_flags(parser)
    out = []
    for spec in specs:
        ns = parser.parse_args(shlex.split(spec))
        out.append((spec.strip(), run_config_from_args(ns, base=base_config.to_flat())))
    labels = [describe(cfg) for _, cfg in out]
    if len(set(labels)) < len(labels):  # the short description does not tell them apart
        labels = [spec or "(command flags)" for spec, _ in out]
    return [(label, cfg) for label, (_, cfg) in zip(labels, out)]


def run(args: argparse.Namespace) -> int:
    from ..runner import WarmStartRunner

    config = run_config_from_args(args)
    modes = compare_configs(args, config) if args.compare is not None else [(None, config)]
    runner = WarmStartRunner.from_pretrained(args.model, modes[0][1], device=args.device,
                                             dtype=args.dtype, fast_dllm_path=args.fast_dllm_path,
                                             threads=args.threads)
    prompt = format_cli_prompts(runner.tokenizer, [args.prompt], args.template)[0]
    traces = [trace_with_runner(runner, prompt, config=cfg, label=label) for label, cfg in modes]
    out = args.out
    if out is None and args.html is None and args.json is None:
        out = "trace.png"
    written = []
    if out is not None:
        written.append(draw_png(traces, out))
    if args.html is not None:
        written.append(write_html(traces, args.html))
    if args.json is not None:
        written.append(write_json(traces, args.json))
    for t in traces:
        print(f"{t.label}: NFE {t.nfe}, answer: {t.answer}")
    for path in written:
        print(f"Wrote {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("trace", help="decode one prompt and draw its trajectory (PNG, HTML, JSON)",
                       description="Decode one prompt and draw it: generation positions across, "
                                   "forward passes down, each cell coloured by what it holds.")
    p.add_argument("--prompt", required=True, help="the prompt (formatted as for generate)")
    p.add_argument("--template", help="format string with {prompt} (as for generate)")
    p.add_argument("--out", help="PNG to draw (default trace.png unless --html/--json is given)")
    p.add_argument("--html", help="also write an interactive self-contained HTML page here")
    p.add_argument("--json", help="also write the raw recorded events here")
    p.add_argument("--compare", nargs="+", metavar="FLAGS",
                   help="decode once per quoted string of run flags (over the command's flags) and "
                        "draw them side by side, e.g. --compare \"--warm-init none\" "
                        "\"--warm-init token --remask\"")
    add_verbose_flag(p)
    add_model_flags(p)
    add_run_flags(p)
    p.set_defaults(func=run)
