"""How much the libraries underneath may print.

transformers draws a "Loading weights" progress bar for every ``from_pretrained``, even for the
20 tensors of the embedded tiny model, and logs advice meant for model authors. Neither helps a
user of this package, so:

* :func:`quiet_loading` hides transformers' progress bars while a model loads, unless
  :func:`set_verbose` was called (the CLI's ``--verbose``); the loaders use it, so the Python API
  and ``eval`` (lm-eval's command line) load quietly too.
* :func:`configure` is what the command line calls once: logging level, and (unless verbose)
  transformers / huggingface_hub warnings and progress bars off. Our own progress bars (one per
  long phase: aux proposals, decoding) are tqdm bars of this package and stay.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


_verbose = False


def set_verbose(flag: bool) -> None:
    """Let library output through (transformers' loading bars): the CLI's ``--verbose``."""
    global _verbose
    _verbose = bool(flag)


def verbose_enabled() -> bool:
    return _verbose


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' progress bars inside the block (restored afterwards), unless verbose."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        yield
        return
    if verbose_enabled() or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def configure(verbose: bool) -> None:
    """Command-line set-up: our diagnostics at INFO when verbose; library noise off otherwise."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    set_verbose(verbose)
    if verbose:
        return
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # also turns off huggingface_hub's bars
    except ImportError:  # pragma: no cover
        pass
