"""Command-line flags, generated from the config dataclasses: one table for ``cli`` and ``eval``.

Each flat config key (``fastdllm_warmstart.config.flat_fields``) is one flag, ``--warm-init`` for
``warm_init``: its type, choices and help come from the field (``config.setting``), its default
is the field's own (written in ``config.py`` only, added to the help here). A flag that is not
given stays None, "unset", so that the precedence of ``config.py`` holds: flag > file or
``--model_args`` > defaults.

A leaf module: it imports only ``config``; the command line and its commands import it.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Mapping, Optional

from .config import ConfigError, RunConfig, configs_from_flat, flat_fields, parse_flat_value

SECTION_TITLES = {"decode": "decoding (Fast-dLLM)", "warm": "warm start", "remask": "confidence remask",
                  "aux": "auxiliary proposer", "residual": "residual context (RCD)",
                  "wino": "WINO decoding (wide-in, narrow-out)",
                  "apd": "adaptive parallel decoding (APD)"}


def flag_name(key: str, rename: Optional[Mapping[str, str]] = None) -> str:
    """``warm_init`` -> ``--warm-init`` (``rename`` maps a key to another name, e.g. to avoid a
    clash with the host command line's own flags)."""
    return "--" + (rename or {}).get(key, key).replace("_", "-")


def _default_text(value: Any, unset: Optional[str]) -> Optional[str]:
    if value is None:
        return unset
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value_parser(key: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = parse_flat_value(key, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        # An explicit "none" (``--threshold none``: the fixed schedule) stays the text "none",
        # which the config reads as None; a bare None would mean "flag not given".
        return "none" if value is None else value

    parse.__name__ = key
    return parse


def _metavar(type_text: str) -> str:
    kind = "N" if "int" in type_text else "X" if "float" in type_text else "TEXT"
    return f"{kind}|none" if "Optional" in type_text and kind != "TEXT" else kind


def add_config_flags(parser: argparse.ArgumentParser, *, dest: Callable[[str], str] = lambda key: key,
                     rename: Optional[Mapping[str, str]] = None,
                     defaults: Optional[Mapping[str, Any]] = None,
                     group_title: Optional[str] = None) -> Optional[argparse._ArgumentGroup]:
    """One flag per flat config key, in argument groups per config section (or all in one group
    named ``group_title``, which is returned). ``dest`` names each flag's attribute; ``defaults``
    replaces the defaults the help states where a front end resolves unset keys otherwise
    (lm-eval's)."""
    one_group = parser.add_argument_group(group_title) if group_title else None
    groups: Dict[str, Any] = {}
    for key, (section, f) in flat_fields().items():
        if one_group is None and section not in groups:
            groups[section] = parser.add_argument_group(SECTION_TITLES[section])
        group = one_group or groups[section]
        meta = f.metadata
        default = (defaults or {}).get(key, f.default)
        shown = _default_text(default, meta.get("unset"))
        if shown is None and default != f.default:  # a front end's own default is "none"
            shown = "none"
        text = meta["help"] + (f" (default: {shown})" if shown is not None else "")
        kwargs: Dict[str, Any] = {"dest": dest(key), "default": None, "help": text}
        if "bool" in str(f.type):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _value_parser(key)
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
                kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}"
            else:
                kwargs["metavar"] = _metavar(str(f.type))
        group.add_argument(flag_name(key, rename), **kwargs)
    return one_group


def run_config_from_args(args: argparse.Namespace, base: Optional[Mapping[str, Any]] = None) -> RunConfig:
    """Flags over ``base`` (flat keys) over defaults: the documented precedence."""
    values = dict(base or {})
    for key in flat_fields():
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return configs_from_flat(values)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Which dLLM, where and how (generate, bench, sweep, trace)."""
    parser.add_argument("--model", help="dLLM checkpoint folder (default: the embedded tiny dLLM)")
    parser.add_argument("--fast-dllm-path", help="Fast-dLLM checkout (else FAST_DLLM_PATH / sys.path)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts decoded together (default 16)")
    parser.add_argument("--threads", default="auto",
                        help="CPU threads; auto = 1 for small models on CPU (default), else torch's default")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """Every decoding setting as a flag (generate, bench, sweep, trace and trace's --compare)."""
    add_config_flags(parser)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` after the subcommand too (``fastdllm-warmstart generate --verbose``)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log diagnostics and library messages (loading bars, warnings) to stderr")


def add_data_flags(p: argparse.ArgumentParser, json_default: str = "results/bench.json") -> None:
    """The problem, seed, output and resume flags that ``bench`` and ``sweep`` share."""
    p.add_argument("--data", help="JSONL of {question, answer} (default: shipped tinygsm test split)")
    p.add_argument("--limit", type=int, help="use only the first N problems")
    p.add_argument("--seeds", default="0", help="comma-separated warm-start seeds (default 0)")
    p.add_argument("--json", default=json_default, help=f"output JSON (default {json_default})")
    p.add_argument("--resume", action="store_true", help="continue from the partial results file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shuffle-proposals", type=int, nargs="?", const=0, default=None, metavar="SEED",
                   help="warm-start every problem from the draft of another problem (a seeded "
                        "permutation without fixed points; SEED default 0): bad drafts as input")
    add_verbose_flag(p)
