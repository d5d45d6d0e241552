"""Watch one decoding: record its trajectory with a callback, draw it as PNG / HTML, dump JSON.

    from fastdllm_warmstart.trace import trace
    t = trace("Question: Tom has 7 apples. He buys 5 more apples. How many apples does Tom have "
              "now?\nAnswer:", warm_init="token", remask=True)   # the prompt as the model sees it
    t.nfe, t.answer
    t.save_png("trace.png"); t.save_html("trace.html"); t.save_json("trace.json")

Command line: ``fastdllm-warmstart trace --prompt ... [generate flags] --out trace.png [--html
trace.html] [--json trace.json] [--compare "--warm-init none" "--warm-init token --remask"]``.

The recorder and its cell states are :mod:`fastdllm_warmstart.trace_record`; drawing and writing
is :mod:`fastdllm_warmstart.trace_render`. This module decodes one prompt with the recorder.
"""

from __future__ import annotations

from typing import Any, Optional

from .trace_record import STATES, DecodeTrace, TraceRecorder, token_texts
from .trace_render import STATE_COLORS, STATE_LABELS, draw_png, write_html, write_json

def describe(config) -> str:
    """A short label of a run config: 'cold', 'token rho=0.25 + remask', ... and the cache."""
    w = config.warm
    if not w.enabled:
        mode = "cold"
    elif w.warm_init == "token":
        mode = f"token rho={w.rho:g}"
    else:
        mode = f"embed alpha={w.alpha:g}"
    if w.enabled and config.remask.enabled:
        mode += " + remask"
    return f"{mode} | {config.decode.cache} cache"


def trace_with_runner(runner, prompt: str, *, config=None, label: Optional[str] = None,
                      apply_chat_template: Optional[bool] = None) -> DecodeTrace:
    """Decode ``prompt`` (already formatted for the model) with ``runner`` and ``config`` (None:
    the runner's own), recording it."""
    config = config if config is not None else runner.config
    recorder = TraceRecorder()
    saved = runner.extra_callbacks
    runner.extra_callbacks = list(saved) + [recorder]  # after the warm-start callbacks
    try:
        result = runner.generate_batch([prompt], config, apply_chat_template=apply_chat_template)[0]
    finally:
        runner.extra_callbacks = saved
    t = recorder.trace(0, label=label if label is not None else describe(config),
                       prompt=prompt, answer=result.text, nfe=result.nfe,
                       config=config.to_dict(), model=getattr(runner, "model_id", None))
    ids = set(t.final_tokens) | set(t.initial["tokens"]) | set(t.initial["prior"])
    for r in t.rows:
        ids |= set(r["tokens"]) | set(r["top"])
    t.vocab = token_texts(runner.tokenizer, ids, t.meta["mask_id"], t.meta["eos_id"])
    return t


def trace(prompt: str, model: Optional[str] = None, *, config=None, device: str = "cpu",
          dtype: Any = None, fast_dllm_path: Optional[str] = None, runner=None,
          apply_chat_template: Optional[bool] = None, label: Optional[str] = None,
          **settings: Any) -> DecodeTrace:
    """Decode one prompt and return its :class:`DecodeTrace`.

    ``settings`` are the flat config keys (``warm_init="token", remask=True, cache="prefix",
    gen_length=48, ...``) over ``config`` (a :class:`RunConfig`; default: the runner's config when
    a ``runner`` is given, else the defaults). Pass a loaded ``runner`` to reuse its model (it
    decodes with the traced config, its own is left as it is); else ``model`` (None = the
    embedded tiny dLLM) is loaded. The prompt is given to the model as is (plus its chat
    template, if it has one).
    """
    from .config import RunConfig, configs_from_flat
    from .runner import WarmStartRunner

    if config is None:
        config = runner.config if runner is not None else RunConfig()
    base = config.to_flat()
    run_config = configs_from_flat({**base, **settings})
    if runner is None:
        runner = WarmStartRunner.from_pretrained(model, run_config, device=device, dtype=dtype,
                                                 fast_dllm_path=fast_dllm_path)
    return trace_with_runner(runner, prompt, config=run_config, label=label,
                             apply_chat_template=apply_chat_template)


__all__ = ["STATES", "STATE_COLORS", "STATE_LABELS", "TraceRecorder", "DecodeTrace", "trace",
           "trace_with_runner", "describe", "draw_png", "write_html", "write_json", "token_texts"]
