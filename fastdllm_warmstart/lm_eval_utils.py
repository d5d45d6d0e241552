"""Helpers of the lm-eval model ``llada_warmstart``, kept outside its class (as lm-eval keeps
HFLM's in ``models/utils.py``): ``--model_args`` parsing (:class:`EvalSettings`), the launcher's
ranks and devices, the ``save_dir`` answer store, and the per-task speed accounting.

Nothing here imports lm-eval, so the ``eval`` command can check ``--model_args`` before lm-eval
loads anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .config import FLAT_KEYS, ConfigError, RunConfig, configs_from_flat
from .jsonl_store import JsonlStore
from .loading import resolve_device as checked_device

logger = logging.getLogger(__name__)

MODEL_NAME = "llada_warmstart"

# Fast-dLLM eval_llada.py arguments we accept, with *our* defaults (None = unset).
UPSTREAM_ARGS: Dict[str, Any] = {
    "model_path": None,          # None or "" -> the embedded tiny dLLM
    "mask_id": None,             # None -> from the model config / tokenizer
    "max_length": 4096,          # longest sequence fed to the model (capped by the model's limit)
    "batch_size": 8,             # prompts per generate call; rows per Monte-Carlo forward
    "mc_num": 128,               # Monte-Carlo samples per loglikelihood request
    "is_check_greedy": False,    # loglikelihood: also check greedy decoding reproduces the target
    "steps": None,
    "gen_length": None,
    "block_length": None,
    "remasking": None,
    "device": None,              # None/"auto" -> cuda (per local rank) if available, else cpu
    "use_cache": False,
    "dual_cache": False,
    "threshold": None,           # None -> fixed schedule, as upstream's eval
    "save_dir": None,
    "show_speed": False,
}
# Ours, besides the FLAT_KEYS settings.
EXTRA_ARGS: Dict[str, Any] = {
    "fast_dllm_path": None,      # a Fast-dLLM checkout to load LLaDAModelLM from (or FAST_DLLM_PATH)
    "dtype": None,               # None/"auto" -> the runner's choice; e.g. bfloat16, float32
    "chat_template": None,       # None -> apply the tokenizer's chat template iff it has one
}
# lm-eval passes these through create_from_arg_* (additional_config / --trust_remote_code).
HARNESS_ARGS = ("max_batch_size", "trust_remote_code")
# Decode keys handled as upstream arguments above (the rest of FLAT_KEYS pass straight through).
_DECODE_OVERLAP = ("steps", "gen_length", "block_length", "remasking", "threshold")


def valid_model_args() -> List[str]:
    """Every key ``--model_args`` accepts for ``llada_warmstart``."""
    keys = set(UPSTREAM_ARGS) | set(EXTRA_ARGS) | set(HARNESS_ARGS) | set(FLAT_KEYS)
    return sorted(keys)


# --------------------------------------------------------------------------------------------
# Parsing of string-friendly values
# --------------------------------------------------------------------------------------------

def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value!r}: expected true or false.")


def _as_optional_bool(name: str, value: Any) -> Optional[bool]:
    if _is_unset(value) or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return _as_bool(name, value)


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r}: expected an integer.")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected an integer.") from None
    if number < minimum:
        raise ConfigError(f"{name}={number} must be >= {minimum}.")
    return number


def _as_batch_size(value: Any) -> int:
    """lm-eval's ``--batch_size`` may be ``auto`` / ``auto:N``; we use our default then."""
    if _is_unset(value):
        return UPSTREAM_ARGS["batch_size"]
    if isinstance(value, str) and value.strip().lower().startswith("auto"):
        logger.info("batch_size=%s: automatic batch sizing is not supported; using %d.",
                    value, UPSTREAM_ARGS["batch_size"])
        return UPSTREAM_ARGS["batch_size"]
    return _as_int("batch_size", value, 1)


def _as_dtype(value: Any) -> Optional[torch.dtype]:
    if _is_unset(value) or str(value).strip().lower() == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    name = str(value).strip().replace("torch.", "")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype={value!r} is not a torch dtype; use e.g. bfloat16, float16, "
                          f"float32 or auto.")
    return dtype


def _cache_mode(use_cache: bool, dual_cache: bool, cache: Any) -> Optional[str]:
    """Upstream's two booleans -> our cache mode; an explicit ``cache=`` must agree with them."""
    from_flags = ("dual" if dual_cache else "prefix") if use_cache else "none"
    if dual_cache and not use_cache:
        raise ConfigError("dual_cache=True needs use_cache=True (as in Fast-dLLM's eval_llada.py); "
                          "or pass cache=dual.")
    if cache is None or str(cache).strip() == "":  # "none" is a cache mode here, not unset
        return from_flags
    if (use_cache or dual_cache) and str(cache) != from_flags:
        raise ConfigError(f"cache={cache} contradicts use_cache={use_cache}, dual_cache={dual_cache}; "
                          f"pass only one of them.")
    return str(cache)


@dataclass(frozen=True)
class EvalSettings:
    """Everything ``llada_warmstart`` was asked for, parsed and validated (no model loaded)."""

    run: RunConfig
    model_path: Optional[str]
    mask_id: Optional[int]
    max_length: int
    batch_size: int
    mc_num: int
    is_check_greedy: bool
    device: Optional[str]
    save_dir: Optional[str]
    show_speed: bool
    fast_dllm_path: Optional[str]
    dtype: Optional[torch.dtype]
    chat_template: Optional[bool]

    @classmethod
    def from_model_args(cls, args: Mapping[str, Any]) -> "EvalSettings":
        """Parse ``--model_args`` (strings or typed values); raise :class:`ConfigError` on misuse."""
        unknown = sorted(k for k in args if k not in set(valid_model_args()))
        if unknown:
            raise ConfigError(f"Unknown model_args for {MODEL_NAME}: {', '.join(unknown)}. "
                              f"Valid keys: {', '.join(valid_model_args())}.")
        get = lambda key: args.get(key, {**UPSTREAM_ARGS, **EXTRA_ARGS}.get(key))  # noqa: E731

        flat = {k: v for k, v in args.items() if k in FLAT_KEYS and k not in _DECODE_OVERLAP}
        for key in ("steps", "gen_length", "block_length", "remasking"):
            if not _is_unset(get(key)):
                flat[key] = get(key)
        flat["cache"] = _cache_mode(_as_bool("use_cache", get("use_cache")),
                                    _as_bool("dual_cache", get("dual_cache")), args.get("cache"))
        threshold = get("threshold")
        if not _is_unset(threshold):
            flat["threshold"] = threshold
        run = configs_from_flat(flat)
        if _is_unset(threshold):
            # Upstream's eval: no threshold means the fixed schedule (configs_from_flat would keep
            # the parallel-decoding default instead).
            run = dataclasses.replace(run, decode=dataclasses.replace(run.decode, threshold=None))

        model_path = get("model_path")
        mask_id = get("mask_id")
        save_dir = get("save_dir")
        fast_dllm_path = get("fast_dllm_path")
        device = get("device")
        settings = cls(
            run=run,
            model_path=None if _is_unset(model_path) else str(model_path),
            mask_id=None if _is_unset(mask_id) else _as_int("mask_id", mask_id, 0),
            max_length=_as_int("max_length", get("max_length"), 2),
            batch_size=_as_batch_size(get("batch_size")),
            mc_num=_as_int("mc_num", get("mc_num"), 1),
            is_check_greedy=_as_bool("is_check_greedy", get("is_check_greedy")),
            device=None if _is_unset(device) or str(device).lower() == "auto" else str(device),
            save_dir=None if _is_unset(save_dir) else str(save_dir),
            show_speed=_as_bool("show_speed", get("show_speed")),
            fast_dllm_path=None if _is_unset(fast_dllm_path) else str(fast_dllm_path),
            dtype=_as_dtype(get("dtype")),
            chat_template=_as_optional_bool("chat_template", get("chat_template")),
        )
        return settings


# --------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------

def launcher_ranks() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / accelerate launch environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def resolve_device(requested: Optional[str], world_size: int, local_rank: int) -> torch.device:
    """:func:`fastdllm_warmstart.loading.resolve_device` as lm-eval asks for a device: CUDA that
    is not there falls back to the CPU with a warning (lm-eval's CLI passes ``device=cuda:0``
    unless told otherwise), and with several processes each takes the GPU of its local rank."""
    if requested and requested.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("device=%s requested but CUDA is not available; using cpu.", requested)
        return torch.device("cpu")
    device = checked_device(requested)
    if device.type == "cuda" and world_size > 1:
        return torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device: torch.device, world_size: int) -> None:
    import torch.distributed as dist

    if world_size <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    logger.info("Initialised torch.distributed (%s): rank %d of %d.", backend, dist.get_rank(),
                world_size)


def all_gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated in rank order (a scalar counts as one element)."""
    if world_size == 1:
        return tensor
    import torch.distributed as dist

    flat = tensor.reshape(1) if tensor.dim() == 0 else tensor
    parts = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(parts, flat)
    return torch.cat(parts)


def gather_object(obj: Any, world_size: int, rank: int, dst: int = 0) -> Optional[List[Any]]:
    """Every rank's ``obj`` on rank ``dst`` (None elsewhere)."""
    if world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world_size if rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------------
# Incremental answer store (save_dir)
# --------------------------------------------------------------------------------------------

class AnswerStore:
    """Finished generations in ``save_dir``, one append-only :class:`JsonlStore` per rank.

    Each line is one generation keyed by :func:`request_key` (prompt + everything that decides
    the decode), appended per batch, so a killed run loses at most the batch in flight. On resume
    every rank reads *all* rank files, so a run may be resumed with a different number of
    processes.
    """

    PATTERN = "llada_warmstart_rank*.jsonl"

    def __init__(self, save_dir: str, rank: int):
        self.dir = Path(save_dir)
        self.path = self.dir / f"llada_warmstart_rank{rank}.jsonl"
        self._own = self._store(self.path)

    @staticmethod
    def _store(path: Path) -> JsonlStore:
        return JsonlStore(path, valid=lambda r: isinstance(r.get("key"), str), label="save_dir")

    def load(self) -> Dict[str, Dict[str, Any]]:
        """Every stored generation of every rank, by key."""
        if not self.dir.is_dir():
            return {}
        return {record["key"]: record for path in sorted(self.dir.glob(self.PATTERN))
                for record in self._store(path).read()}

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        self._own.extend(records)


def request_key(prompt: str, chat: bool, fingerprint: str) -> str:
    payload = json.dumps({"prompt": prompt, "chat": chat, "run": fingerprint}, sort_keys=True,
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def answer_record(key: str, result: Any) -> Dict[str, Any]:
    """One generation (a runner result) as the answer store keeps it."""
    return {"key": key, **result.to_record()}


# --------------------------------------------------------------------------------------------
# Speed accounting
# --------------------------------------------------------------------------------------------

SPEED_FIELDS = ("nfe", "gen_tokens", "dllm_seconds", "aux_seconds")


def summarize_speed(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Per-task speed summary from one row per generated request.

    ``gen_tokens`` counts answer tokens only (no prompt, no EOS padding); ``tokens_per_second``
    divides them by dLLM plus aux time. ``calls_per_answer`` is the batch forward calls per
    answer (each call split among the rows it computed; None when a row has no count, as answers
    saved by an older version): beside ``nfe_mean`` it shows what the batch structure costs.
    Rows reused from ``save_dir`` keep the numbers measured when they were generated and are
    counted in ``cached``.
    """
    n = len(rows)
    totals = {f: float(sum(r[f] for r in rows)) for f in SPEED_FIELDS}
    seconds = totals["dllm_seconds"] + totals["aux_seconds"]
    fallbacks: Dict[str, int] = defaultdict(int)
    for r in rows:
        if r.get("fallback"):
            fallbacks[str(r["fallback"])] += 1
    return {
        "samples": n,
        "nfe_total": int(totals["nfe"]),
        "nfe_mean": totals["nfe"] / n if n else 0.0,
        "gen_tokens_total": int(totals["gen_tokens"]),
        "gen_tokens_mean": totals["gen_tokens"] / n if n else 0.0,
        "tokens_per_nfe": totals["gen_tokens"] / totals["nfe"] if totals["nfe"] else 0.0,
        "calls_per_answer": (sum(r["model_calls"] for r in rows) / n if n and all(
            r.get("model_calls") is not None for r in rows) else None),
        "queries_per_answer": (sum(r["model_queries"] for r in rows) / n if n and all(
            r.get("model_queries") for r in rows) else None),
        "dllm_seconds": totals["dllm_seconds"],
        "aux_seconds": totals["aux_seconds"],
        "tokens_per_second": totals["gen_tokens"] / seconds if seconds > 0 else 0.0,
        "warm": sum(1 for r in rows if r.get("warm")),
        # Prior tokens placed on the canvas (token injection) and revoked by the remask step.
        "injected_total": int(sum(r.get("injected", 0) for r in rows)),
        "revoked_total": int(sum(r.get("revoked", 0) for r in rows)),
        "fallbacks": sum(fallbacks.values()),
        "fallback_reasons": dict(sorted(fallbacks.items())),
        "cached": sum(1 for r in rows if r.get("cached")),
    }


def format_speed_table(speed: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :func:`summarize_speed` results by task, then any fallback reasons."""
    header = ["Task", "n", "NFE mean", "calls/answer", "gen tokens mean", "tokens/NFE", "dLLM s",
              "aux s", "tokens/s", "warm", "fallbacks", "cached"]
    rows = [header, ["---"] * len(header)]
    for task, s in speed.items():
        calls = s.get("calls_per_answer")
        rows.append([task, str(s["samples"]), f"{s['nfe_mean']:.2f}",
                     "-" if calls is None else f"{calls:.2f}", f"{s['gen_tokens_mean']:.2f}",
                     f"{s['tokens_per_nfe']:.3f}", f"{s['dllm_seconds']:.2f}",
                     f"{s['aux_seconds']:.2f}", f"{s['tokens_per_second']:.1f}", str(s["warm"]),
                     str(s["fallbacks"]), str(s["cached"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["|" + "|".join(f" {c:<{w}} " if c != "---" else "-" * (w + 2)
                            for c, w in zip(r, widths)) + "|" for r in rows]
    for task, s in speed.items():
        if s["fallback_reasons"]:
            lines.append(f"{task} warm-start fallbacks: " +
                         ", ".join(f"{why} x{n}" for why, n in s["fallback_reasons"].items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The patch's hook settings
# --------------------------------------------------------------------------------------------

HOOK_ENV_PREFIX = "FASTDLLM_WARMSTART_"


def hook_variables(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """Names of the ``FASTDLLM_WARMSTART_*`` variables set: they configure the patch's hook
    (``warmstart_hook.py``), not ``llada_warmstart``, whose settings are its ``--model_args``."""
    environ = os.environ if environ is None else environ
    return sorted(name for name in environ if name.startswith(HOOK_ENV_PREFIX))
