"""lm-evaluation-harness model ``llada_warmstart``: Fast-dLLM decoding with an AR warm start.

Importing this module registers the model with lm-eval (``--model llada_warmstart``). Its
``__init__`` keywords *are* the ``--model_args``: flat and string-friendly.

* Fast-dLLM's ``llada/eval_llada.py`` arguments keep upstream's names and meanings:
  ``model_path, mask_id, max_length, batch_size, mc_num, is_check_greedy, steps, gen_length,
  block_length, remasking, device, use_cache, dual_cache, threshold, factor, save_dir,
  show_speed``. As upstream's eval: no ``threshold`` means the fixed step schedule, a ``factor``
  selects the factor rule (and wins over ``threshold``), and ``use_cache``/``dual_cache`` both
  false means no KV cache. ``loop_variant`` (ours) picks the upstream loop to reproduce.
* Ours: ``fast_dllm_path, dtype, chat_template`` and every key of
  :data:`fastdllm_warmstart.config.FLAT_KEYS` (``warm_init, alpha, rho, remask, remask_tau,
  aux_model, proposals, proposal_cache, ...``), validated by
  :func:`~fastdllm_warmstart.config.configs_from_flat`.

Requests arrive already sharded by rank (lm-eval's ``build_all_requests``); this class supplies
the collectives lm-eval needs for data parallelism (``all_gather``, ``gather_object``,
``barrier``) over ``torch.distributed`` when launched with ``torchrun`` or ``accelerate launch``.

Answers are returned raw (stop sequences cut, special tokens removed); extracting the number is the
task YAML's job (``strict-match`` / ``flexible-extract`` filters).
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
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

# lm-eval fills its own model table only while its registry is empty: load it before registering
# ours so that --model hf (and the rest) keep working.
import lm_eval.models  # noqa: F401
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from . import __version__
from .chat_template import use_chat_template
from .config import FLAT_KEYS, ConfigError, RunConfig, configs_from_flat

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

def _launcher_ranks() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / accelerate launch environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def _resolve_device(requested: Optional[str], world_size: int, local_rank: int) -> torch.device:
    has_cuda = torch.cuda.is_available()
    if requested is None:
        requested = "cuda" if has_cuda else "cpu"
    if requested.startswith("cuda"):
        if not has_cuda:
            # lm-eval's CLI passes device=cuda:0 unless told otherwise.
            logger.warning("device=%s requested but CUDA is not available; using cpu.", requested)
            return torch.device("cpu")
        if world_size > 1:
            return torch.device(f"cuda:{local_rank}")
    return torch.device(requested)


def _init_distributed(device: torch.device, world_size: int) -> None:
    import torch.distributed as dist

    if world_size <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    logger.info("Initialised torch.distributed (%s): rank %d of %d.", backend, dist.get_rank(),
                world_size)


# --------------------------------------------------------------------------------------------
# Incremental answer store (save_dir)
# --------------------------------------------------------------------------------------------

class AnswerStore:
    """Finished generations in ``save_dir``, one append-only JSONL file per rank.

    Each line is one generation keyed by :func:`request_key` (prompt + everything that decides
    the decode). Lines are appended and flushed per batch, so a killed run loses at most the batch
    in flight; a truncated last line is skipped on reading. On resume every rank reads *all* rank
    files, so a run may be resumed with a different number of processes.
    """

    PATTERN = "llada_warmstart_rank*.jsonl"

    def __init__(self, save_dir: str, rank: int):
        self.dir = Path(save_dir)
        self.path = self.dir / f"llada_warmstart_rank{rank}.jsonl"

    def load(self) -> Dict[str, Dict[str, Any]]:
        records: Dict[str, Dict[str, Any]] = {}
        if not self.dir.is_dir():
            return records
        skipped = 0
        for path in sorted(self.dir.glob(self.PATTERN)):
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        records[record["key"]] = record
                    except (json.JSONDecodeError, KeyError, TypeError):
                        skipped += 1
        if skipped:
            logger.warning("save_dir %s: skipped %d unreadable line(s) (an interrupted write); "
                           "those prompts are generated again.", self.dir, skipped)
        return records

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        # A run killed mid-line leaves no trailing newline: start on a fresh line.
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as handle:
                handle.seek(-1, os.SEEK_END)
                needs_newline = handle.read(1) != b"\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(("\n" if needs_newline else "") + lines)
            handle.flush()
            os.fsync(handle.fileno())


def request_key(prompt: str, chat: bool, fingerprint: str) -> str:
    payload = json.dumps({"prompt": prompt, "chat": chat, "run": fingerprint}, sort_keys=True,
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Speed accounting
# --------------------------------------------------------------------------------------------

SPEED_FIELDS = ("nfe", "gen_tokens", "dllm_seconds", "aux_seconds")


def summarize_speed(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Per-task speed summary from one row per generated request.

    ``gen_tokens`` counts answer tokens only (no prompt, no EOS padding); ``tokens_per_second``
    divides them by dLLM plus aux time. Rows reused from ``save_dir`` keep the numbers measured
    when they were generated and are counted in ``cached``.
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


# --------------------------------------------------------------------------------------------
# The lm-eval model
# --------------------------------------------------------------------------------------------

@register_model(MODEL_NAME)
class LLaDAWarmStartLM(LM):
    """Fast-dLLM (LLaDA) decoding with an auxiliary-AR warm start, for lm-eval-harness.

    ``generate_until`` (GSM8K-style tasks) decodes through
    :class:`~fastdllm_warmstart.runner.WarmStartRunner`. ``loglikelihood`` (multiple choice)
    uses a Monte-Carlo estimate of the masked-diffusion likelihood bound as LLaDA does.
    ``loglikelihood_rolling`` (perplexity) is not supported.

    Notes on ``generate_until``:

    * The answer canvas is ``gen_length`` tokens; a request's ``max_gen_toks`` shorter than that
      truncates the answer to its first ``max_gen_toks`` tokens (the canvas itself keeps its
      block structure), a longer one is capped at ``gen_length``.
    * ``until`` stop strings cut the decoded answer at their first occurrence; a stop string that
      is a special token of the dLLM tokenizer cuts at that token. Answers carry no special tokens.
    * Decoding settings come from the model args; the task's ``temperature``/``do_sample`` are
      ignored (a warning says so when they ask for sampling).
    """

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        self.settings = EvalSettings.from_model_args(model_args)
        rank, world, local = _launcher_ranks()
        device = _resolve_device(self.settings.device, world, local)
        _init_distributed(device, world)
        self._rank, self._world_size, self._device = rank, world, device

        self.runner = self._load_runner(device)
        self.loop_variant = self._resolve_loop_variant()
        # Longest sequence fed to the model: max_length, capped by the model's own declared limit.
        # Over-long contexts keep their last tokens with a warning, as lm-eval's HF models do.
        if self.runner.max_length is None or self.settings.max_length < self.runner.max_length:
            self.runner.max_length = self.settings.max_length
        self.runner.truncation = "left"
        self.tokenizer = self.runner.tokenizer
        self.model = self.runner.model
        self.mask_id = self._check_mask_id(self.settings.mask_id)
        self.use_chat = use_chat_template(self.tokenizer, self.settings.chat_template,
                                          setting="chat_template", fix="omit chat_template or set it to false")
        # Set when lm-eval formats prompts itself (--apply_chat_template): no second template.
        self._harness_templated = False
        self._store = (AnswerStore(self.settings.save_dir, rank)
                       if self.settings.save_dir is not None else None)
        self._speed_rows: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        self._warned: set = set()

    def _resolve_loop_variant(self) -> str:
        """The upstream loop decoding reproduces (``auto`` resolved against the found checkout)."""
        from .engine import resolve_loop_variant
        from .upstream import find_upstream

        return resolve_loop_variant(self.settings.run.decode.loop_variant,
                                    find_upstream(self.settings.fast_dllm_path))

    def _load_runner(self, device: torch.device):
        """The runner (and, for a warm start, its proposer now rather than at the first request);
        unusable paths or checkouts become :class:`ConfigError` naming the fix."""
        from .auxiliary.proposer import ProposalError
        from .loading import ModelLoadError
        from .runner import WarmStartRunner
        from .upstream import UpstreamError

        s = self.settings
        try:
            runner = WarmStartRunner.from_pretrained(s.model_path, config=s.run, device=str(device),
                                                     dtype=s.dtype, fast_dllm_path=s.fast_dllm_path)
            if s.run.warm.enabled:
                runner.proposer  # noqa: B018  (builds the aux model / reads the proposals file)
        except (ModelLoadError, UpstreamError, ProposalError, FileNotFoundError) as exc:
            raise ConfigError(str(exc)) from exc
        return runner

    # ---- lm-eval construction: --model_args win over lm-eval's own defaults ----------------

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string or ""), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: Mapping[str, Any], additional_config: Optional[dict] = None):
        """lm-eval adds ``batch_size``, ``max_batch_size`` and ``device`` from its CLI (with its own
        defaults, e.g. ``batch_size=1``); a key also given in ``--model_args`` keeps that value."""
        merged = {k: v for k, v in (additional_config or {}).items() if v is not None}
        merged.update(arg_dict)
        return cls(**merged)

    # ---- distributed primitives used by lm-eval's evaluate() --------------------------------

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._world_size == 1:
            return tensor
        import torch.distributed as dist

        flat = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.zeros_like(flat) for _ in range(self._world_size)]
        dist.all_gather(parts, flat)
        return torch.cat(parts)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[List[Any]]:
        if self._world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # ---- chat templates ----------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or "tiny-dllm"

    def chat_template(self, chat_template: Any = False) -> Optional[str]:
        return getattr(self.tokenizer, "chat_template", None)

    def apply_chat_template(self, chat_history: List[Dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("--apply_chat_template was given but the dLLM tokenizer has no chat "
                              "template; drop the flag.")
        self._harness_templated = True
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    # ---- results metadata (lm-eval puts this into results["config"]) --------------------------

    def speed_summary(self) -> Dict[str, Dict[str, Any]]:
        """Per-task speed numbers (merged over ranks on rank 0)."""
        return {task: summarize_speed(rows) for task, rows in sorted(self._speed_rows.items())}

    def get_model_info(self) -> Dict[str, Any]:
        s = self.settings
        return {MODEL_NAME: {
            "version": __version__,
            "model_path": s.model_path or "embedded:tiny-dllm",
            "run_config": s.run.to_dict(),
            "loop_variant": self.loop_variant,
            "harness": {"batch_size": s.batch_size, "mc_num": s.mc_num,
                        "is_check_greedy": s.is_check_greedy, "max_length": s.max_length,
                        "chat_template": bool(self.use_chat and not self._harness_templated),
                        "mask_id": self.mask_id, "world_size": self._world_size,
                        "save_dir": s.save_dir},
            "speed": self.speed_summary(),
        }}

    # ---- helpers ------------------------------------------------------------------------------

    def _check_mask_id(self, requested: Optional[int]) -> int:
        mask = int(self.runner.mask_id)
        if requested is not None and requested != mask:
            raise ConfigError(f"mask_id={requested} disagrees with the model's [MASK] id {mask}; "
                              f"omit mask_id (it is read from the model config / tokenizer).")
        return mask

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def _fingerprint(self) -> str:
        """What besides the prompt decides an answer (save_dir keys). Paths, not checkpoint
        contents: use a fresh save_dir after retraining a model. The batch size is part of it: a
        model that ignores padding (upstream's LLaDA) decodes a prompt differently next to other
        prompts, and the resolved loop variant decides the NFE recorded with each answer."""
        s = self.settings
        proposals = s.run.aux.proposals
        proposals_sha = (hashlib.sha256(Path(proposals).read_bytes()).hexdigest()
                         if proposals and Path(proposals).is_file() else None)
        return json.dumps({"model": s.model_path or "embedded:tiny-dllm", "dtype": str(s.dtype),
                           "run": s.run.to_dict(), "proposals_sha256": proposals_sha,
                           "batch_size": s.batch_size, "loop_variant": self.loop_variant},
                          sort_keys=True)

    def _special_stop_ids(self, until: Sequence[str]) -> List[int]:
        specials = set(getattr(self.tokenizer, "all_special_tokens", []) or [])
        specials |= {t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values()
                     if getattr(t, "special", False)}
        ids = []
        for stop in until:
            if stop in specials:
                tid = self.tokenizer.convert_tokens_to_ids(stop)
                if isinstance(tid, int) and tid >= 0:
                    ids.append(tid)
        return ids

    def _finish_answer(self, record: Mapping[str, Any], gen_kwargs: Mapping[str, Any]) -> str:
        """Apply ``max_gen_toks`` and ``until`` to a generation; no special tokens remain."""
        text = record["text"]
        token_ids = list(record.get("token_ids") or [])
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        cut = len(token_ids)
        max_gen = gen_kwargs.get("max_gen_toks")
        if max_gen is not None and int(max_gen) < cut:
            cut = int(max_gen)
        for tid in self._special_stop_ids(until):
            if tid in token_ids[:cut]:
                cut = token_ids.index(tid)
        if cut < len(token_ids):
            # Stripped like the runner's text, so the two compare by content.
            shorter = self.tokenizer.decode(token_ids[:cut], skip_special_tokens=True).strip()
            if len(shorter) < len(text):
                text = shorter
        for stop in until:
            if stop:
                text = text.split(stop, 1)[0]
        return text

    def _check_gen_kwargs(self, gen_kwargs: Mapping[str, Any]) -> None:
        sampling = bool(gen_kwargs.get("do_sample")) or float(gen_kwargs.get("temperature") or 0) > 0
        if sampling:
            self._warn_once("sampling", "The task asks for sampling (%s); %s decodes with the "
                            "model_args settings (temperature=%s) and ignores it.",
                            {k: gen_kwargs.get(k) for k in ("do_sample", "temperature")},
                            MODEL_NAME, self.settings.run.decode.temperature)
        max_gen = gen_kwargs.get("max_gen_toks")
        if max_gen is not None and int(max_gen) > self.settings.run.decode.gen_length:
            self._warn_once("max_gen", "max_gen_toks=%s exceeds gen_length=%d: answers are at most "
                            "gen_length tokens; raise gen_length to allow longer ones.", max_gen,
                            self.settings.run.decode.gen_length)

    # ---- generate_until -------------------------------------------------------------------

    def generate_until(self, requests: List[Any], disable_tqdm: bool = False) -> List[str]:
        """Decode every request's context; see the class docstring for ``until``/``max_gen_toks``.

        1. Key each request (prompt + run settings); identical requests are decoded once (lm-eval
           pads ranks with repeated requests).
        2. Reuse answers found in ``save_dir``; decode the rest in batches of ``batch_size``,
           appending each finished batch to ``save_dir``.
        3. Cut each answer by its request's ``max_gen_toks`` / ``until``.
        4. Record one speed row per distinct decode of each task and merge them on rank 0.
        """
        chat = bool(self.use_chat and not self._harness_templated)
        fingerprint = self._fingerprint()
        # 1. Keys.
        keys, unique = [], {}
        for req in requests:
            context, gen_kwargs = req.args[0], req.args[1]
            self._check_gen_kwargs(gen_kwargs)
            key = request_key(context, chat, fingerprint)
            keys.append(key)
            unique.setdefault(key, context)
        # 2. Cached answers, then batches of new ones.
        done: Dict[str, Dict[str, Any]] = {}
        if self._store is not None:
            stored = self._store.load()
            done = {k: dict(stored[k], cached=True) for k in unique if k in stored}
            if done:
                logger.info("save_dir: reusing %d of %d answers from %s.", len(done), len(unique),
                            self._store.dir)
        pending = [k for k in unique if k not in done]
        bs = self.settings.batch_size
        batches = [pending[i:i + bs] for i in range(0, len(pending), bs)]
        bar = tqdm(total=len(pending), desc=f"{MODEL_NAME} generate (rank {self._rank})",
                   disable=disable_tqdm or self._rank != 0 or not pending)
        for batch in batches:
            results = self.runner.generate([unique[k] for k in batch], batch_size=bs,
                                           apply_chat_template=chat)
            records = [self._record(k, r) for k, r in zip(batch, results)]
            if self._store is not None:
                self._store.append(records)
            done.update((r["key"], r) for r in records)
            bar.update(len(batch))
        bar.close()
        # 3. Answers.
        answers = [self._finish_answer(done[k], req.args[1]) for k, req in zip(keys, requests)]
        # 4. Speed rows: one per decode a task asked for (lm-eval's padding repeats requests).
        local_rows: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        seen = set()
        for key, req in zip(keys, requests):
            if (req.task_name, key) in seen:
                continue
            seen.add((req.task_name, key))
            row = {f: done[key][f] for f in SPEED_FIELDS}
            row.update(warm=done[key]["warm"], fallback=done[key]["fallback"],
                       cached=bool(done[key].get("cached")),
                       injected=done[key].get("injected", 0), revoked=done[key].get("revoked", 0))
            local_rows[str(req.task_name)].append(row)
        self._merge_speed(local_rows)
        return answers

    @staticmethod
    def _record(key: str, result: Any) -> Dict[str, Any]:
        return {
            "key": key, "prompt": result.prompt, "text": result.text,
            "token_ids": [int(t) for t in result.token_ids],
            "nfe": int(result.nfe), "gen_tokens": int(result.gen_tokens),
            "dllm_seconds": float(result.dllm_seconds), "aux_seconds": float(result.aux_seconds),
            "warm": bool(result.warm), "fallback": result.fallback,
            "proposal_text": result.proposal_text,
            "injected": int(getattr(result, "injected", 0) or 0),
            "revoked": int(getattr(result, "revoked", 0) or 0),
        }

    def _merge_speed(self, local_rows: Dict[str, List[Dict[str, Any]]]) -> None:
        gathered = self.gather_object(dict(local_rows), dst=0)
        if self._rank != 0:
            return
        for part in gathered:
            for task, rows in part.items():
                self._speed_rows[task].extend(rows)
        summary = self.speed_summary()
        level = logging.INFO if self.settings.show_speed else logging.DEBUG
        for task, s in summary.items():
            logger.log(level, "%s: %d samples, NFE mean %.2f, %d generated tokens (%.2f per NFE), "
                       "dLLM %.2fs, aux %.2fs, %.1f tokens/s, warm %d, fallbacks %d, cached %d",
                       task, s["samples"], s["nfe_mean"], s["gen_tokens_total"], s["tokens_per_nfe"],
                       s["dllm_seconds"], s["aux_seconds"], s["tokens_per_second"], s["warm"],
                       s["fallbacks"], s["cached"])

    # ---- loglikelihood (Monte Carlo) ------------------------------------------------------------

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """Token ids of context and continuation; trailing context whitespace joins the
        continuation so the pair tokenizes as the whole string does."""
        stripped = context.rstrip()
        if len(stripped) < len(context):
            continuation = context[len(stripped):] + continuation
            context = stripped
        whole = self.tokenizer(context + continuation)["input_ids"]
        ctx = self.tokenizer(context)["input_ids"] if context else []
        n = len(ctx)
        if whole[:n] != ctx:  # the tokenizer merged across the boundary: keep the whole prefix
            n = max(0, min(n, len(whole) - 1))
        return list(whole[:n]), list(whole[n:])

    def _truncate(self, ctx: List[int], cont: List[int]) -> List[int]:
        limit = self.runner.max_length
        room = limit - len(cont)
        if room < 0:
            raise ValueError(f"A continuation of {len(cont)} tokens exceeds max_length={limit} (the "
                             f"smaller of max_length and the model's limit); shorten it.")
        return ctx[-room:] if room else []

    def _mc_generator(self, ctx: Sequence[int], cont: Sequence[int]) -> torch.Generator:
        """Seeded per request so estimates do not depend on order, batching or rank."""
        digest = hashlib.sha256(json.dumps([list(ctx), list(cont)]).encode()).digest()
        gen = torch.Generator()
        gen.manual_seed(int.from_bytes(digest[:6], "big") ^ self.settings.run.warm.seed)
        return gen

    @torch.no_grad()
    def _mc_loglikelihood(self, ctx: List[int], cont: List[int]) -> float:
        """Monte-Carlo estimate of log p(cont | ctx) under the masked-diffusion bound.

        1. Draw a masked count ``l`` per sample, stratified over ``1..|cont|`` within a batch.
        2. Mask ``l`` random continuation positions; one forward predicts them.
        3. The sample's estimate is ``(|cont| / l) * sum of log p(true token)`` over masked
           positions; the result averages ``mc_num`` samples.
        """
        n_cont, n_ctx = len(cont), len(ctx)
        gen = self._mc_generator(ctx, cont)
        seq = torch.tensor(ctx + cont, dtype=torch.long)  # (L,)
        target = seq[n_ctx:]  # (C,)
        total, done = 0.0, 0
        while done < self.settings.mc_num:
            b = min(self.settings.batch_size, self.settings.mc_num - done)
            # 1. Stratified masked counts in 1..C.
            start = torch.randint(0, n_cont, (1,), generator=gen)
            counts = (start + torch.floor(torch.arange(b) * n_cont / b).long()) % n_cont + 1  # (b,)
            # 2. Random positions: the `counts` smallest of uniform noise.
            order = torch.rand((b, n_cont), generator=gen).argsort(dim=1).argsort(dim=1)
            is_mask = order < counts.unsqueeze(1)  # (b, C)
            noisy = seq.repeat(b, 1)  # (b, L)
            noisy[:, n_ctx:][is_mask] = self.mask_id
            logits = self.model(input_ids=noisy.to(self._device)).logits[:, n_ctx:]  # (b, C, V)
            logp = F.log_softmax(logits.float(), dim=-1).cpu()
            token_logp = logp.gather(-1, target.expand(b, -1).unsqueeze(-1)).squeeze(-1)  # (b, C)
            # 3. Importance weight C / l.
            est = (token_logp * is_mask).sum(dim=1) * (n_cont / counts.float())  # (b,)
            total += float(est.sum())
            done += b
        return total / done

    @torch.no_grad()
    def _greedy_reproduces(self, ctx: List[int], cont: List[int]) -> bool:
        """Unmask the continuation one most-confident token at a time; True iff it equals cont."""
        seq = torch.tensor(ctx + [self.mask_id] * len(cont), dtype=torch.long,
                           device=self._device).unsqueeze(0)  # (1, L)
        for _ in range(len(cont)):
            masked = seq[0] == self.mask_id  # (L,)
            probs = torch.softmax(self.model(input_ids=seq).logits[0].float(), dim=-1)  # (L, V)
            conf, pred = probs.max(dim=-1)  # (L,)
            conf = conf.masked_fill(~masked, -1.0)
            pos = int(conf.argmax())
            seq[0, pos] = pred[pos]
        return seq[0, len(ctx):].tolist() == list(cont)

    def loglikelihood(self, requests: List[Any], disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc=f"{MODEL_NAME} loglikelihood",
                        disable=disable_tqdm or self._rank != 0):
            context, continuation = req.args[0], req.args[1]
            ctx, cont = self._encode_pair(context, continuation)
            if not cont:
                out.append((0.0, True))
                continue
            ctx = self._truncate(ctx, cont)
            ll = self._mc_loglikelihood(ctx, cont)
            greedy = self._greedy_reproduces(ctx, cont) if self.settings.is_check_greedy else False
            out.append((ll, greedy))
        return out

    def loglikelihood_rolling(self, requests: List[Any], disable_tqdm: bool = False) -> List[float]:
        raise NotImplementedError(
            f"{MODEL_NAME} does not compute rolling log-likelihoods (perplexity tasks such as "
            "wikitext): a masked diffusion model has no left-to-right factorisation to roll. Use "
            "generate_until tasks (gsm8k, tinygsm, ...) or loglikelihood / multiple-choice tasks.")
