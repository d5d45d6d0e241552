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

from .config import FLAT_KEYS, ConfigError
from .flags import add_config_flags, flag_name

PROG = "fastdllm-warmstart eval"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"

# Flag names that would clash with lm-eval's own options.
_RENAMED = {"seed": "warm-seed"}
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
    return flag_name(key, _RENAMED)


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
    from .lm_eval_model import EvalSettings

    title = "fastdllm-warmstart settings (override the same keys in --model_args)"
    # The defaults the help states are the ones the eval model resolves (Fast-dLLM's eval: no
    # threshold, no cache), from the same config fields as the other commands' flags.
    group = add_config_flags(parser, dest=lambda key: f"fdw_{key}", rename=_RENAMED, group_title=title,
                             defaults=EvalSettings.from_model_args({}).run.to_flat())
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
    from .lm_eval_dream import DREAM_MODEL_NAME, dream_model_args
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
    if ns.model not in (MODEL_NAME, DREAM_MODEL_NAME):
        if overrides:
            raise UsageError(f"{', '.join(_flag(k) for k in overrides)} only apply to "
                             f"--model {MODEL_NAME} or {DREAM_MODEL_NAME}, not {ns.model}.")
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
    if ns.model == DREAM_MODEL_NAME:  # Dream eval.py's names -> ours
        merged = dream_model_args(merged)[0]
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


@contextlib.contextmanager
def _package_logging() -> Iterator[None]:
    """lm-eval's log format for lm-eval and for this package while the command runs (the CLI
    owns the handlers); the package logger is put back as it was afterwards, so that a caller in
    the same process (a test, a notebook) keeps its own logging."""
    from lm_eval.utils import setup_logging

    setup_logging()
    ours = logging.getLogger("fastdllm_warmstart")
    if ours.handlers:
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)-8s [%(name)s] %(message)s", datefmt="%Y-%m-%d:%H:%M:%S"))
    level, propagate = ours.level, ours.propagate
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.setLevel(level)
        ours.propagate = propagate


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run lm-eval with ``llada_warmstart``; returns the exit status."""
    from . import lm_eval_dream  # noqa: F401  (registers dream_warmstart and llada_warmstart)

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # accept `lm-eval run`-style invocations too
        argv = argv[1:]
    capture = _Capture()
    try:
        parser = build_parser()
        ns = parser.parse_args(argv)
        ns = prepare_namespace(ns)
        with _package_logging(), capture.around_simple_evaluate():
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
