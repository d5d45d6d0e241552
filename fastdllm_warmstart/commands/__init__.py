"""The subcommands of ``fastdllm-warmstart``, one module each.

Each module has ``add_parser(subparsers)`` (its flags, from :mod:`fastdllm_warmstart.flags`) and
``run(args) -> int``: it turns the parsed flags into typed settings, calls the library and owns
what is printed. Imports run one way: ``cli`` -> ``commands`` -> the library.
"""

from . import bench, generate, make_data, sweep, trace

COMMANDS = (generate, bench, sweep, trace, make_data)

__all__ = ["COMMANDS"]
