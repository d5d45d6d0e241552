"""``fastdllm-warmstart eval`` / ``python -m fastdllm_warmstart.eval``: lm-eval with our model.

Every ``lm-eval run`` argument works unchanged (the parser *is* lm-eval's own ``run`` parser).
On top of it:

* ``--model`` defaults to ``llada_warmstart``;
* the package's task folder (task ``tinygsm``) is added to ``--include_path``; lm-eval's own
  tasks (``--tasks gsm8k``) keep working;
* our settings as flags (``--warm-init embed --alpha 0.6 --remask ...``), one per key of
  :data:`fastdllm_warmstart.config.FLAT_KEYS` plus ``--model-path --fast-dllm-path --save-dir
  --dtype``. Precedence: flag > ``--model_args`` entry > default;
* after lm-eval's results table, an NFE/time table. The same numbers are in lm-eval's results
  JSON under ``config.llada_warmstart.speed.<task>``.

Bad flags or model arguments print one ``error:`` line and exit with status 2.

Multi-process: ``torchrun --nproc_per_node N -m fastdllm_warmstart.eval ...`` (CPU: gloo) or
``accelerate launch -m fastdllm_warmstart.eval ...`` (GPUs: nccl); lm-eval shards the documents,
rank 0 merges metrics and speed numbers and writes the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

from .config import (CACHE_MODES, EMBED_SCHEDULES, FLAT_KEYS, LOOP_VARIANTS, PRIOR_CONTEXTS, REMASK_RULES,
                     RESIDUAL_STARTS,
                     REMASK_SCHEDULES,
                     REMASKING_RULES, WARM_INITS, ConfigError)

PROG = "fastdllm-warmstart eval"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"

# Flag names that would clash with lm-eval's own options.
_RENAMED = {"seed": "warm-seed"}
_CHOICES = {"warm_init": WARM_INITS, "cache": CACHE_MODES, "remasking": REMASKING_RULES,
            "embed_schedule": EMBED_SCHEDULES, "remask_schedule": REMASK_SCHEDULES,
            "loop_variant": LOOP_VARIANTS, "remask_rule": REMASK_RULES, "remask_context": PRIOR_CONTEXTS,
            "residual_start": RESIDUAL_STARTS}
_HELP = {
    "warm_init": "canvas initialisation: none (cold, upstream), token (inject proposal tokens) or "
                 "embed (interpolate embeddings)",
    "rho": "token injection rate: each answer position gets the proposal token with this probability",
    "alpha": "embedding interpolation weight: (1 - alpha) E[mask] + alpha E[proposal]",
    "embed_schedule": "when the embedding prior is fed",
    "seed": "seed of the injection / remask draws",
    "remask": "confidence remask of unverified proposal tokens",
    "remask_tau": "revoke a proposal token whose model probability is below tau",
    "aux_model": "auxiliary AR model path (default: the embedded tiny aux model)",
    "proposals": "JSONL of ready proposals ({prompt, proposal}) used instead of the aux model",
    "proposal_cache": "JSONL cache of aux proposals",
    "remask_p_init": "revocation probability at step 0",
    "remask_schedule": "how the revocation probability decays over steps",
    "remask_horizon": "linear schedule: steps until the revocation probability reaches 0",
    "remask_decay": "exp schedule: per-step decay of the revocation probability",
    "remask_confirm": "revoke rule: a proposal token the model gives at least this probability is kept",
    "remask_rule": "revoke (paper-style) or a verification rule that commits supported drafts early: "
                   "accept, chain (default) or prefix",
    "remask_tau_accept": "accept/chain: commit a draft token the model gives at least this probability",
    "remask_rel": "chain: or at least this times the probability of the draft token before it",
    "remask_floor": "chain: never a draft token the model gives less than this",
    "remask_context": "accept/chain/prefix: hidden (default) or visible later-block priors",
    "remask_frontier": "accept/chain/prefix: forced guess at the first open position when the draft "
                       "is not supported there",
    "aux_max_new_tokens": "aux proposal length in aux tokens (default 2 x gen_length)",
    "aux_batch_size": "aux model batch size",
    "aux_chat_template": "use the aux tokenizer's chat template (default: iff it has one)",
    "residual": "Residual Context Diffusion stream at masked positions (for an RCD-trained model)",
    "residual_t_res": "residual temperature at inference",
    "residual_start": "zeros or reference (one forward of residual_reference starts the stream)",
    "residual_reference": "reference model for residual_start=reference",
    "gen_length": "answer canvas length",
    "block_length": "semi-autoregressive block length",
    "steps": "fixed-schedule steps (default gen_length)",
    "threshold": "parallel decoding confidence threshold (default: none = fixed schedule, as "
                 "Fast-dLLM's eval)",
    "factor": "Fast-dLLM's factor rule (wins over threshold, as upstream): commit the top n while "
              "the n-th confidence >= 1 - factor/(n+1)",
    "loop_variant": "upstream loop to reproduce: current, snapshot-2025-06 or auto (the found "
                    "Fast-dLLM checkout's, else current)",
    "cache": "KV cache: none, prefix or dual (default none, as Fast-dLLM's eval; or use "
             "use_cache/dual_cache in --model_args)",
    "temperature": "sampling temperature of the commit rule (0 = greedy)",
    "remasking": "which masked positions to commit: low_confidence or random",
    "early_stop": "stop decoding a row once its answer has ended with EOS",
    "skip_done_rows": "forwards compute only rows whose block still has masks (default true)",
}
_BOOL_FIELDS = {"early_stop", "skip_done_rows", "remask", "residual", "aux_chat_template", "remask_frontier"}
_MODEL_FLAGS = {  # model-level keys of llada_warmstart's model_args
    "model_path": "dLLM checkpoint dir (default: the embedded tiny dLLM)",
    "fast_dllm_path": "Fast-dLLM checkout to load LLaDAModelLM from (or FAST_DLLM_PATH)",
    "save_dir": "save answers incrementally here and resume from them after an interruption",
    "dtype": "model dtype, e.g. bfloat16 (default: the runner's choice)",
}


class UsageError(Exception):
    """A command-line mistake; reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print usage and exit
        raise UsageError(message)


def _flag(key: str) -> str:
    return "--" + _RENAMED.get(key, key).replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """lm-eval 0.4.x's ``run`` parser with our flags added."""
    try:
        from lm_eval._cli.run import Run
    except ImportError:
        from .compat import lm_eval_version

        raise UsageError(
            f"this command builds on the `lm-eval run` command line (lm_eval._cli), which lm-eval "
            f"{lm_eval_version()} lacks; pip install 'lm-eval==0.4.13' (the tested release that has "
            "it). With an older lm-eval, use the model from Python: import "
            "fastdllm_warmstart.lm_eval_model, then lm_eval.simple_evaluate(model="
            "'llada_warmstart', ...).") from None

    top = _Parser(prog=PROG)
    subparsers = top.add_subparsers(dest="command")
    Run.create(subparsers)
    parser = subparsers.choices["run"]
    parser.prog = PROG
    parser.usage = (f"{PROG} --tasks <task> [--model_args k=v ...] [--warm-init token|embed ...] "
                    "[lm-eval run options]")
    parser.description = ("Evaluate Fast-dLLM decoding with a warm start through lm-evaluation-"
                          "harness. All `lm-eval run` options are accepted; --model defaults to "
                          "llada_warmstart and the tinygsm task is available.")
    parser.epilog = None
    for action in parser._actions:  # lm-eval documents its own default model
        if action.dest == "model":
            action.help = "Model name (default: llada_warmstart)"
    group = parser.add_argument_group(
        "fastdllm-warmstart settings (override the same keys in --model_args)")
    for key in FLAT_KEYS:
        kwargs: Dict[str, Any] = {"dest": f"fdw_{key}", "default": None,
                                  "help": _HELP.get(key, f"see fastdllm_warmstart.config ({key})")}
        if key in _BOOL_FIELDS:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = "<" + key.split("_")[-1] + ">"
            if key in _CHOICES:
                kwargs["choices"] = _CHOICES[key]
                kwargs["metavar"] = "{" + ",".join(_CHOICES[key]) + "}"
        group.add_argument(_flag(key), **kwargs)
    for key, text in _MODEL_FLAGS.items():
        group.add_argument(_flag(key), dest=f"fdw_{key}", default=None, metavar="<path>"
                           if key != "dtype" else "<dtype>", help=text)
    return parser


def _our_overrides(ns: argparse.Namespace) -> Dict[str, Any]:
    keys = list(FLAT_KEYS) + list(_MODEL_FLAGS)
    return {k: getattr(ns, f"fdw_{k}") for k in keys if getattr(ns, f"fdw_{k}", None) is not None}


def _strip_ours(ns: argparse.Namespace) -> None:
    for key in list(vars(ns)):
        if key.startswith("fdw_"):
            delattr(ns, key)


def _config_file(path: Optional[str]) -> Dict[str, Any]:
    """The ``--config`` YAML's top level (lm-eval reads it again; CLI values win there)."""
    if not path:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--config {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def prepare_namespace(ns: argparse.Namespace) -> argparse.Namespace:
    """Apply our defaults and flags to lm-eval's parsed arguments; validate our model args."""
    from .lm_eval_model import MODEL_NAME, UPSTREAM_ARGS, EvalSettings

    overrides = _our_overrides(ns)
    _strip_ours(ns)
    from_file = _config_file(getattr(ns, "config", None))
    if not getattr(ns, "tasks", None) and not from_file.get("tasks"):
        raise UsageError("--tasks is required, e.g. --tasks tinygsm or --tasks gsm8k.")
    if ns.model is None:
        ns.model = from_file.get("model") or MODEL_NAME
    if ns.model_args is None and isinstance(from_file.get("model_args"), dict):
        ns.model_args = dict(from_file["model_args"])  # merged with our flags below
    include = [str(TASKS_DIR)]
    if ns.include_path:
        include.append(ns.include_path)
    ns.include_path = include
    if ns.model != MODEL_NAME:
        if overrides:
            raise UsageError(f"{', '.join(_flag(k) for k in overrides)} only apply to "
                             f"--model {MODEL_NAME}, not {ns.model}.")
        return ns
    model_args = dict(ns.model_args or {})
    if "cache" in overrides:  # the flag wins over upstream's booleans in --model_args
        model_args.pop("use_cache", None)
        model_args.pop("dual_cache", None)
    model_args.update(overrides)
    ns.model_args = model_args
    # lm-eval's own defaults (batch_size=1, device=cuda:0) do not suit a dLLM on any machine.
    if not hasattr(ns, "batch_size"):
        ns.batch_size = str(model_args.get("batch_size", UPSTREAM_ARGS["batch_size"]))
    if ns.device is None:
        ns.device = str(model_args.get("device", "auto"))
    merged = {"batch_size": ns.batch_size, "device": ns.device, "max_batch_size": ns.max_batch_size}
    merged = {k: v for k, v in merged.items() if v is not None}
    merged.update(model_args)
    EvalSettings.from_model_args(merged)  # raises ConfigError before anything is loaded
    return ns


class _Capture:
    """Records what ``lm_eval.simple_evaluate`` returns while lm-eval's ``run`` executes."""

    def __init__(self) -> None:
        self.entered = False
        self.results: Optional[Dict[str, Any]] = None

    @contextlib.contextmanager
    def around_simple_evaluate(self) -> Iterator[None]:
        import lm_eval

        original = lm_eval.simple_evaluate

        def wrapped(*args: Any, **kwargs: Any):
            self.entered = True
            self.results = original(*args, **kwargs)
            return self.results

        lm_eval.simple_evaluate = wrapped
        try:
            yield
        finally:
            lm_eval.simple_evaluate = original


def speed_table(results: Dict[str, Any]) -> Optional[str]:
    """A markdown table of the per-task NFE/time numbers in lm-eval's results dict."""
    from .lm_eval_utils import MODEL_NAME, format_speed_table

    speed = (results.get("config", {}).get(MODEL_NAME) or {}).get("speed") or {}
    return format_speed_table(speed) if speed else None


def _shutdown_distributed() -> None:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _setup_logging() -> None:
    """lm-eval's log format for lm-eval and for this package (the CLI owns the handlers)."""
    from lm_eval.utils import setup_logging

    setup_logging()
    ours = logging.getLogger("fastdllm_warmstart")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-8s [%(name)s] %(message)s", datefmt="%Y-%m-%d:%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run lm-eval with ``llada_warmstart``; returns the exit status."""
    from . import lm_eval_model  # noqa: F401  (registers llada_warmstart)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # accept `lm-eval run`-style invocations too
        argv = argv[1:]
    capture = _Capture()
    try:
        parser = build_parser()
        ns = parser.parse_args(argv)
        ns = prepare_namespace(ns)
        _setup_logging()
        with capture.around_simple_evaluate():
            ns.func(ns)
    except (UsageError, ConfigError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        if capture.entered and not _is_setup_error(exc):
            raise
        # lm-eval's own argument checks (unknown task, missing --output_path, ...).
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        _shutdown_distributed()
    if capture.results is not None:
        table = speed_table(capture.results)
        if table:
            print("\nNFE / time per task (llada_warmstart):")
            print(table)
    return 0


def _is_setup_error(exc: BaseException) -> bool:
    """lm-eval raises a few ValueErrors inside simple_evaluate before any model work."""
    text = str(exc)
    return text.startswith(("No tasks specified", "Either 'limit' or 'samples'",
                            "Attempted to load model"))


if __name__ == "__main__":
    sys.exit(main())
