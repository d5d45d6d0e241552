"""Locating and importing a user's own Fast-dLLM checkout (never vendored here).

Search order: an explicit path argument, the ``FAST_DLLM_PATH`` environment variable, then every
``sys.path`` entry. A checkout root may use the v1 layout (``llada/generate.py``) or the newer one
(``v1/llada/generate.py``); pointing directly at the ``llada`` folder also works. Both import
styles of ``generate.py`` load: ``from model.modeling_llada import ...`` (run from ``llada/``)
and the package-relative ``from .model.modeling_llada import ...``.

Two properties of the checkout decide how the engine must behave to reproduce it, and are read
from its source (nothing is executed for them):

* the **loop variant** of ``generate.py`` (:func:`detect_loop_variant`): whether the cached loops
  test for remaining masks before each cached forward (``current``) or always run one cached
  forward after the full one (``snapshot-2025-06``, the June-2025 release);
* how ``model/modeling_llada.py`` reads ``replace_position`` (:func:`detect_replace_position_rows`):
  newer models replace each row's block keys/values from that row's own ``(B, L)`` mask
  (``batch``); the June-2025 model takes the columns of all rows together, so it needs a single
  shared row (``shared``) for a batch.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import logging
import os
import re
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

ENV_VAR = "FAST_DLLM_PATH"


class UpstreamError(ValueError):
    """The named Fast-dLLM checkout exists but cannot be used (a user's setting: the CLI prints it
    as one line)."""


@dataclass(frozen=True)
class Upstream:
    root: Path                      # the folder holding generate.py and model/
    get_transfer_index: Optional[Callable[..., Any]]
    generate_module: Any
    model_class: Any                # LLaDAModelLM, or None if its imports fail
    get_transfer_index_dynamic: Optional[Callable[..., Any]] = None  # factor rule (newer checkouts)
    loop_variant: Optional[str] = None      # "current" / "snapshot-2025-06"; None = not recognised
    replace_position_rows: str = "batch"    # "batch" ((B, L) per row) or "shared" ((1, L))
    config_class: Any = None                # LLaDAConfig of the checkout, when importable


def _inner_loops(func: ast.AST):
    """Loops nested inside another loop of ``func`` (the per-step loops inside the block loop)."""
    loops = (ast.For, ast.While)
    for outer in ast.walk(func):
        if isinstance(outer, loops):
            for node in ast.walk(outer):
                if node is not outer and isinstance(node, loops):
                    yield node


def detect_loop_variant(generate_source: str) -> Optional[str]:
    """``current`` when the cached loops of a ``generate.py`` source begin each iteration with a
    test that can ``break`` (no cached forward once the block is full), ``snapshot-2025-06`` when
    they run their forward first; None when there is no cached loop to read."""
    try:
        tree = ast.parse(generate_source)
    except SyntaxError:
        return None
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in ("generate_with_dual_cache", "generate_with_prefix_cache"):
        func = functions.get(name)
        if func is None:
            continue
        inner = list(_inner_loops(func))
        if not inner:
            continue
        for loop in inner:
            first = loop.body[0]
            if isinstance(first, ast.If) and any(isinstance(n, ast.Break) for n in ast.walk(first)):
                return "current"
        return "snapshot-2025-06"
    return None


def detect_replace_position_rows(modeling_source: str) -> str:
    """``batch`` when the model indexes ``replace_position`` row by row (``replace_position[b]``),
    ``shared`` when it only takes the columns of the whole mask (June-2025 ``modeling_llada``)."""
    if "replace_position" not in modeling_source:
        return "batch"
    if re.search(r"replace_position\s*\[\s*[A-Za-z_]\w*\s*\]", modeling_source):
        return "batch"
    return "shared"


def llada_dir(path: os.PathLike) -> Optional[Path]:
    """The ``llada`` folder inside a checkout (either layout), or None."""
    base = Path(path).expanduser()
    for cand in (base, base / "llada", base / "v1" / "llada"):
        if (cand / "generate.py").is_file() and (cand / "model" / "modeling_llada.py").is_file():
            return cand.resolve()
    return None


def package_name(root: Path, prefix: str = "fast_dllm_upstream_") -> str:
    """The module name a checkout folder (``llada``, ``dream``) is imported under (one per checkout)."""
    return prefix + hashlib.sha1(str(root).encode()).hexdigest()[:10]


def private_package(root: Path, prefix: str = "fast_dllm_upstream_") -> str:
    """Register ``root`` as an empty package under :func:`package_name` (so that its modules'
    relative imports resolve) and return that name; the checkout's files are never touched."""
    name = package_name(root, prefix)
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(root)]
        pkg.__package__ = name
        sys.modules[name] = pkg
    return name


def _load_generate(root: Path):
    """Import ``root/generate.py`` as ``<package>.generate``: the folder is a package (for
    ``from .model...``) and on ``sys.path`` while importing (for ``from model...``)."""
    pkg_name = private_package(root)
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        name = f"{pkg_name}.generate"
        spec = importlib.util.spec_from_file_location(name, root / "generate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    finally:
        if added:
            sys.path.remove(str(root))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@lru_cache(maxsize=8)
def _import_checkout(root: Path) -> Upstream:
    try:
        gen = _load_generate(root)
    except Exception as exc:  # noqa: BLE001 - report any import failure of user code clearly
        raise UpstreamError(f"Found a Fast-dLLM checkout at {root} but importing its generate.py "
                            f"failed: {exc!r}. Install its requirements (e.g. `pip install einops`) "
                            "or unset FAST_DLLM_PATH.") from exc
    model_module = (sys.modules.get(f"{package_name(root)}.model.modeling_llada")
                    or sys.modules.get("model.modeling_llada"))
    model_class = getattr(gen, "LLaDAModelLM", None) or getattr(model_module, "LLaDAModelLM", None)
    defining = sys.modules.get(getattr(model_class, "__module__", ""), model_module)
    variant = detect_loop_variant(_read(root / "generate.py"))
    if variant is None:
        logger.warning("Could not tell which Fast-dLLM loop %s implements; following today's "
                       "upstream (loop_variant=current). Set loop_variant explicitly to choose.",
                       root / "generate.py")
    return Upstream(root=root, get_transfer_index=getattr(gen, "get_transfer_index", None),
                    generate_module=gen, model_class=model_class,
                    get_transfer_index_dynamic=getattr(gen, "get_transfer_index_dynamic", None),
                    loop_variant=variant,
                    replace_position_rows=detect_replace_position_rows(
                        _read(root / "model" / "modeling_llada.py")),
                    config_class=getattr(defining, "LLaDAConfig", None))


def candidate_roots(explicit: Optional[str] = None):
    if explicit:
        yield explicit, True
    env = os.environ.get(ENV_VAR)
    if env:
        yield env, True
    for entry in sys.path:
        if entry:
            yield entry, False


def first_checkout(explicit: Optional[str], locate: Callable[[str], Optional[str]], load: Callable[[str], Any],
                   what: str, expected: str) -> Any:
    """``load(root)`` for the first candidate checkout in which ``locate`` finds ``what`` (its
    folder); None when there is none. A path the user named that lacks it is an error saying
    which files were ``expected``."""
    for path, named in candidate_roots(explicit):
        root = locate(path)
        if root is None:
            if named:
                raise UpstreamError(f"No Fast-dLLM {what} at {path!r}: expected {expected}. Fix the "
                                    f"path or unset {ENV_VAR}.")
            continue
        logger.info("Using Fast-dLLM %s at %s", what, root)
        return load(root)
    return None


def find_upstream(explicit: Optional[str] = None) -> Optional[Upstream]:
    """The user's Fast-dLLM checkout, imported; None when there is none."""
    return first_checkout(explicit, llada_dir, _import_checkout, "checkout",
                          "llada/generate.py and llada/model/modeling_llada.py (or v1/llada/...)")
