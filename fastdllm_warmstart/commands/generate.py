"""``fastdllm-warmstart generate``: answer prompts and print the answers, NFE and time."""

from __future__ import annotations

import argparse
import json
import time
from typing import List, Optional, Sequence

from ..chat_template import has_chat_template
from ..flags import add_model_flags, add_run_flags, add_verbose_flag, run_config_from_args


def format_cli_prompts(tokenizer, prompts: Sequence[str], template: Optional[str] = None) -> List[str]:
    """``--template`` if given; else the prompt as is when the model has a chat template (the
    runner wraps it); else the 'Question: ...\\nAnswer:' format the embedded model knows."""
    from ..tasks.tinygsm import format_prompt

    if template is not None:
        try:
            return [template.format(prompt=p) for p in prompts]
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"--template {template!r} cannot be filled ({exc!r}); use {{prompt}} for the "
                             "prompt and double other braces ({{ }}).") from None
    if has_chat_template(tokenizer):
        return list(prompts)
    return [format_prompt(p) for p in prompts]


def run(args: argparse.Namespace) -> int:
    from ..runner import WarmStartRunner

    config = run_config_from_args(args)
    runner = WarmStartRunner.from_pretrained(args.model, config, device=args.device, dtype=args.dtype,
                                             fast_dllm_path=args.fast_dllm_path, threads=args.threads)
    prompts = format_cli_prompts(runner.tokenizer, args.prompt, args.template)
    start = time.perf_counter()
    results = runner.generate(prompts, batch_size=args.batch_size)
    wall = time.perf_counter() - start
    if args.json:
        payload = {"config": config.to_dict(), "wall_s": wall,
                   "results": [{"prompt": r.prompt, **r.to_row()} for r in results]}
        print(json.dumps(payload, indent=2))
        return 0
    for r in results:
        print(f"Prompt: {r.prompt}")
        if r.proposal_text is not None:
            print(f"Aux proposal: {r.proposal_text}")
        if r.fallback:
            print(f"(warm start fell back to cold: {r.fallback})")
        print(f"Answer: {r.text}")
        # APD's aux scores while the dLLM decodes: its forwards are counted, its time is in dLLM's
        aux = f"{r.aux_forwards} aux forwards (time in dLLM's)" if config.apd.enabled else f"aux: {r.aux_seconds:.3f} s"
        print(f"NFE: {r.nfe}   dLLM: {r.dllm_seconds:.3f} s   {aux}")
        print()
    print(f"Total wall-clock: {wall:.3f} s for {len(results)} prompt(s)")
    return 0


def add_parser(sub) -> None:
    gen = sub.add_parser("generate", help="answer prompts and print NFE and time")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--template", help="format string with {prompt}; default: the model's chat "
                                        "template, else 'Question: {prompt}\\nAnswer:'")
    gen.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_verbose_flag(gen)
    add_model_flags(gen)
    add_run_flags(gen)
    gen.set_defaults(func=run)
