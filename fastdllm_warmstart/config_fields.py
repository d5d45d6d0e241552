"""The pieces every config section is built from: :class:`ConfigError`, the range checks and
:func:`setting` (a field with what the command line needs to know). A leaf module, so that a
method's own section (``fastdllm_warmstart.apd.config``) can use them without an import circle."""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Optional, Tuple


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message says how to fix it."""


def _check_choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {', '.join(choices)}.")


def _check_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(f"{name}={value} is out of range; it must lie in {left}{lo}, {hi}{right}.")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}.")
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}.")


def setting(default: Any, help: str, *, choices: Optional[Tuple[str, ...]] = None,
            unset: Optional[str] = None) -> Any:
    """A config field with what the command line needs to know about it: ``help`` (one line; the
    default is added from here, never restated), ``choices``, and ``unset``, what None means when
    None is the default (e.g. ``"gen_length"``). The flag table (``fastdllm_warmstart.flags``)
    is generated from these."""
    return field(default=default, metadata={"help": help, "choices": choices, "unset": unset})


__all__ = ["ConfigError", "setting"]
