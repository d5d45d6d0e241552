"""``fastdllm-warmstart`` command line: generate, bench, sweep, trace, make-data, eval.

The CLI owns stdout. Configuration errors and bad input files print one line naming the fix (for
a file: the file, the line and the field) and exit with code 2. Imports run one way: this module
-> :mod:`fastdllm_warmstart.commands` -> the library.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .commands import COMMANDS
from .config import ConfigError


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdllm-warmstart",
                                     description="Warm-started Fast-dLLM decoding.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # InputFileError is a ValueError
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted; partial results (if any) are saved and --resume continues them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
