"""Proposals from a small auxiliary autoregressive (AR) model, aligned to the dLLM's canvas.

The warm start needs, for every prompt, a guess of the answer as *dLLM token ids* of exactly
``gen_length`` positions. This module produces it in three steps:

1. The aux model drafts an answer: batched greedy decoding with left padding, optionally through
   the aux tokenizer's chat template (Instruct models).
2. The draft is decoded to text with the aux tokenizer (only the new tokens, special tokens
   dropped).
3. :func:`align_to_canvas` re-encodes that text with the dLLM tokenizer, truncates it to
   ``gen_length`` and fills the tail with the dLLM's EOS id, as LLaDA's SFT data pads answers.

Going through text is what makes two unrelated tokenizers meet: the aux tokenizer may split
``"12"`` into ``"1", "##2"`` while the dLLM keeps it whole.

Nothing here stops a run: a prompt whose proposal cannot be made gets ``Proposal(ok=False)`` and a
logged warning, and the caller cold-starts it. Proposals can also come from a
:class:`~fastdllm_warmstart.auxiliary.cache.ProposalCache` or from a user file (:class:`FileProposals`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..config import AuxConfig, ConfigError
from .cache import ProposalCache

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Weight files up to this total size are content-hashed into the model id (cache key); larger
# models are identified by file names, sizes and modification times (hashing 16 GB is too slow).
_HASH_WEIGHTS_UP_TO = 256 * 1024 * 1024
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_METADATA_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ProposalError(ValueError):
    """A proposal that cannot be placed on the dLLM canvas (or a tokenizer that cannot take one)."""


@dataclass
class Proposal:
    """One prompt's proposal; ``ok=False`` means the caller should cold-start this prompt."""

    prompt: str
    # The aux model's output text (or the file's proposal). None when no text was produced; kept
    # when the text exists but could not be aligned, so the warning can be followed up.
    text: Optional[str]
    # dLLM token ids, len == gen_length, EOS-filled tail; None when ok is False.
    token_ids: Optional[List[int]]
    ok: bool
    error: Optional[str]
    # Wall time attributed to this prompt (its batch's time / batch size); 0 from cache or file.
    aux_seconds: float
    # Aux tokens generated for this prompt, up to and excluding EOS / pad (as recorded in the
    # cache for cached proposals; 0 for file proposals).
    aux_tokens: int
    source: str  # "aux" | "cache" | "file"


# ---------------------------------------------------------------------------------------------
# Alignment to the dLLM canvas
# ---------------------------------------------------------------------------------------------

def check_target_tokenizer(target_tokenizer: Any) -> int:
    """The dLLM tokenizer's EOS id; :class:`ProposalError` if it has none."""
    eos_id = getattr(target_tokenizer, "eos_token_id", None)
    if eos_id is None:
        raise ProposalError(
            "The dLLM tokenizer has no eos_token_id, so the canvas tail after a proposal cannot be "
            "filled. Set tokenizer.eos_token to the token the dLLM pads answers with.")
    return int(eos_id)


def align_to_canvas(text: str, target_tokenizer: Any, gen_length: int) -> List[int]:
    """Re-encode ``text`` with the dLLM tokenizer onto a canvas of ``gen_length`` ids.

    1. Encode without special tokens.
    2. Reject an empty encoding, or one holding the dLLM's mask id (or its pad id when that differs
       from EOS): such a canvas would pretend positions are still undecided.
    3. Truncate to ``gen_length`` and fill the tail with the dLLM's EOS id.

    Raises :class:`ProposalError` for the rejections above and when the tokenizer has no EOS id.
    """
    if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length must be a positive integer, got {gen_length!r}.")
    eos_id = check_target_tokenizer(target_tokenizer)
    ids = list(target_tokenizer.encode(text, add_special_tokens=False))       # 1.
    if not ids:                                                               # 2.
        raise ProposalError("the proposal text encodes to no dLLM tokens")
    forbidden = {"mask": getattr(target_tokenizer, "mask_token_id", None)}
    pad_id = getattr(target_tokenizer, "pad_token_id", None)
    if pad_id != eos_id:
        forbidden["pad"] = pad_id
    for name, token_id in forbidden.items():
        if token_id is not None and token_id in ids:
            raise ProposalError(f"the proposal re-encodes to the dLLM's {name} token "
                                f"(id {token_id}), which cannot sit on the canvas as a proposal")
    ids = ids[:gen_length]                                                    # 3.
    return ids + [eos_id] * (gen_length - len(ids))


def _aligned(index: int, prompt: str, text: Optional[str], target_tokenizer: Any,
             gen_length: int, *, aux_seconds: float, aux_tokens: int, source: str,
             error: Optional[str] = None) -> Proposal:
    """Build the :class:`Proposal` for one prompt, logging a warning if it failed."""
    token_ids = None
    if error is None and not (text or "").strip():
        error = "the aux output is empty" if source != "file" else "the proposal is empty"
    if error is None:
        try:
            token_ids = align_to_canvas(text, target_tokenizer, gen_length)
        except ProposalError as exc:
            error = f"cannot align the proposal to the dLLM tokenizer: {exc}"
    if error is not None:
        logger.warning("No proposal for prompt %d (%s): %s; it will be cold-started.",
                       index, _short(prompt), error)
    return Proposal(prompt=prompt, text=text, token_ids=token_ids, ok=error is None, error=error,
                    aux_seconds=aux_seconds, aux_tokens=aux_tokens, source=source)


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


# ---------------------------------------------------------------------------------------------
# The aux model
# ---------------------------------------------------------------------------------------------

@dataclass
class _Draft:
    """Raw output of the aux for one prompt."""

    text: Optional[str]
    aux_tokens: int
    aux_seconds: float
    error: Optional[str] = None


class AuxProposer:
    """Greedy proposals from a Hugging Face causal LM, aligned to the dLLM tokenizer.

    ``model_id`` names the aux model in cache keys; ``max_new_tokens=None`` means
    ``2 * gen_length`` (aux tokenizers usually split finer than the dLLM's). ``chat_template``:
    None uses the aux tokenizer's chat template iff it has one, True requires it, False never
    uses it. ``device=None`` keeps the model where it is.
    """

    def __init__(self, model: Any, tokenizer: Any, target_tokenizer: Any, *, model_id: str,
                 max_new_tokens: Optional[int] = None, batch_size: int = 8,
                 chat_template: Optional[bool] = None, cache: Optional[ProposalCache] = None,
                 device: Any = None) -> None:
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool)
                                           or not isinstance(max_new_tokens, int)
                                           or max_new_tokens < 1):
            raise ConfigError(f"aux_max_new_tokens={max_new_tokens!r} must be a positive integer.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"aux_batch_size={batch_size!r} must be a positive integer.")
        check_target_tokenizer(target_tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.target_tokenizer = target_tokenizer
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.use_chat_template = _resolve_chat_template(tokenizer, chat_template)
        self.cache = cache
        self.show_progress = True  # a progress bar while drafting more than one batch
        self.device = _place_model(model, device)
        _prepare_tokenizer(tokenizer)

    @classmethod
    def from_pretrained(cls, path: Optional[PathLike], target_tokenizer: Any, *,
                        config: AuxConfig, device: Any = "cpu", dtype: Any = None,
                        cache: Optional[ProposalCache] = None) -> "AuxProposer":
        """Load a local causal LM + tokenizer (``path=None``: the embedded ``tiny-aux``)."""
        from ..verbosity import quiet_loading

        model_dir, model_id = _resolve_model_path(path)
        with quiet_loading():
            model, tokenizer = _load_local(model_dir, dtype)
        return cls(model, tokenizer, target_tokenizer, model_id=model_id,
                   max_new_tokens=config.aux_max_new_tokens, batch_size=config.aux_batch_size,
                   chat_template=config.aux_chat_template, cache=cache, device=device)

    def settings(self, gen_length: int) -> Dict[str, Any]:
        """Everything besides prompt and model that decides the aux text (the cache key)."""
        return {"max_new_tokens": self.resolved_max_new_tokens(gen_length),
                "chat_template": self.use_chat_template, "decoding": "greedy"}

    def resolved_max_new_tokens(self, gen_length: int) -> int:
        return self.max_new_tokens if self.max_new_tokens is not None else 2 * gen_length

    def propose(self, prompts: Sequence[str], gen_length: int) -> List[Proposal]:
        """One :class:`Proposal` per prompt, in order.

        1. Look every prompt up in the cache (if any).
        2. Draft the misses with the aux model in batches of ``batch_size``; a batch that raises
           is retried prompt by prompt.
        3. Store the new non-empty texts in the cache.
        4. Align every text to the dLLM canvas; failures become ``ok=False`` proposals.
        """
        if isinstance(gen_length, bool) or not isinstance(gen_length, int) or gen_length < 1:
            raise ValueError(f"gen_length must be a positive integer, got {gen_length!r}.")
        prompts = list(prompts)
        settings = self.settings(gen_length)
        keys = [ProposalCache.key(p, self.model_id, settings) for p in prompts]
        drafts: List[Optional[_Draft]] = [None] * len(prompts)
        sources = ["aux"] * len(prompts)
        for i, key in enumerate(keys):                                           # 1.
            record = self.cache.get(key) if self.cache is not None else None
            if record is not None:
                drafts[i] = _Draft(record["text"], int(record.get("aux_tokens", 0)), 0.0)
                sources[i] = "cache"
        misses = [i for i, d in enumerate(drafts) if d is None]
        for i, draft in zip(misses, self._draft_all([prompts[i] for i in misses],  # 2.
                                                    settings["max_new_tokens"])):
            drafts[i] = draft
            if self.cache is not None and draft.error is None and draft.text:      # 3.
                self.cache.put(keys[i], {"prompt": prompts[i], "model_id": self.model_id,
                                         "settings": settings, "text": draft.text,
                                         "aux_tokens": draft.aux_tokens,
                                         "aux_seconds": draft.aux_seconds})
        return [_aligned(i, p, d.text, self.target_tokenizer, gen_length,          # 4.
                         aux_seconds=d.aux_seconds, aux_tokens=d.aux_tokens, source=s,
                         error=d.error)
                for i, (p, d, s) in enumerate(zip(prompts, drafts, sources))]

    # -- generation ----------------------------------------------------------------------------

    def _draft_all(self, prompts: List[str], max_new_tokens: int) -> List[_Draft]:
        if not prompts:
            return []
        generation_config = _greedy_generation_config(self.model, self.tokenizer, max_new_tokens)
        drafts: List[_Draft] = []
        with tqdm(total=len(prompts), desc="aux proposals", unit="prompt", leave=False,
                  disable=len(prompts) <= self.batch_size or not self.show_progress) as bar:
            for batch in _chunks(prompts, self.batch_size):
                drafts += self._draft_batch(batch, generation_config)
                bar.update(len(batch))
        return drafts

    def _draft_batch(self, prompts: List[str], generation_config: Any) -> List[_Draft]:
        """Draft one batch; if it raises, retry its prompts one by one."""
        try:
            return self._generate(prompts, generation_config)
        except Exception as exc:  # noqa: BLE001 -- a failing batch must not stop the run
            if len(prompts) == 1:
                return [_Draft(None, 0, 0.0, f"aux generation failed: {type(exc).__name__}: {exc}")]
            logger.warning("Aux generation failed for a batch of %d prompts (%s: %s); retrying "
                           "them one by one.", len(prompts), type(exc).__name__, exc)
            return [d for p in prompts for d in self._draft_batch([p], generation_config)]

    def _generate(self, prompts: List[str], generation_config: Any) -> List[_Draft]:
        """Greedy, left-padded batched generation; time is split evenly over the batch."""
        texts = [self._render(p) for p in prompts]
        start = time.perf_counter()
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True,
                                 add_special_tokens=not self.use_chat_template)
        input_ids = encoded["input_ids"].to(self.device)                  # (B, P)
        attention_mask = encoded["attention_mask"].to(self.device)        # (B, P)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                         generation_config=generation_config)
        new_tokens = output[:, input_ids.shape[1]:].cpu()                 # (B, N)
        lengths = _generated_lengths(new_tokens, _stop_ids(generation_config))  # (B,)
        decoded = [self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True).strip()
                   for row, n in zip(new_tokens, lengths.tolist())]
        seconds = (time.perf_counter() - start) / len(prompts)
        return [_Draft(text, int(n), seconds) for text, n in zip(decoded, lengths.tolist())]

    def _render(self, prompt: str) -> str:
        if not self.use_chat_template:
            return prompt
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  add_generation_prompt=True, tokenize=False)


def _resolve_chat_template(tokenizer: Any, chat_template: Optional[bool]) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_template is None:
        return has_template
    if chat_template and not has_template:
        raise ConfigError("aux_chat_template=true but the aux tokenizer has no chat template; "
                          "use an Instruct aux model or set aux_chat_template=false.")
    return bool(chat_template)


def _place_model(model: Any, device: Any) -> torch.device:
    """Put the model in eval mode on ``device`` (None: where it already is)."""
    if device is not None:
        model.to(device)
    model.eval()
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(device if device is not None else "cpu")


def _prepare_tokenizer(tokenizer: Any) -> None:
    """Left padding for batched decoding; pad with EOS when the aux tokenizer has no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError("The aux tokenizer has neither a pad nor an eos token, so prompts "
                              "cannot be batched; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token


def _as_list(ids: Any) -> List[int]:
    if ids is None:
        return []
    if isinstance(ids, int):
        return [ids]
    return [int(i) for i in ids]


def _greedy_generation_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """The model's generation config forced to greedy, with the tokenizer's EOS and pad ids."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    eos_ids = list(dict.fromkeys(_as_list(config.eos_token_id) + _as_list(tokenizer.eos_token_id)))
    config.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                  max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos_ids or None)
    return config


def _stop_ids(generation_config: Any) -> List[int]:
    return list(dict.fromkeys(_as_list(generation_config.eos_token_id)
                              + _as_list(generation_config.pad_token_id)))


def _generated_lengths(new_tokens: torch.Tensor, stop_ids: List[int]) -> torch.Tensor:
    """Per row, the number of new tokens before the first EOS / pad."""
    n_rows, n_new = new_tokens.shape                                   # (B, N)
    if not stop_ids or n_new == 0:
        return torch.full((n_rows,), n_new, dtype=torch.long)
    is_stop = torch.isin(new_tokens, torch.tensor(stop_ids))          # (B, N)
    first = is_stop.to(torch.long).argmax(dim=1)                      # (B,)
    return torch.where(is_stop.any(dim=1), first, torch.full_like(first, n_new))


def _chunks(items: List[str], size: int) -> Iterator[List[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _resolve_model_path(path: Optional[PathLike]) -> Tuple[str, str]:
    """(directory or name to load, model id for cache keys)."""
    if path is None:
        from ..assets import AUX_NAME, asset_path

        directory = asset_path(AUX_NAME)  # FileNotFoundError naming the fix when absent
        return str(directory), f"embedded:{AUX_NAME}@{model_fingerprint(directory)}"
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"aux_model={str(path)!r} is a directory without config.json; point aux_model at "
                f"a saved Hugging Face causal LM (model.save_pretrained + "
                f"tokenizer.save_pretrained).")
        # The path as given, not resolved: cache lines and result files carry no machine layout
        # (the fingerprint already tells two models apart).
        return str(local), f"{path}@{model_fingerprint(local)}"
    if local.exists() or local.is_absolute() or str(path).startswith((".", "~")):
        raise FileNotFoundError(
            f"aux_model={str(path)!r} is not a model directory; pass a local directory holding a "
            f"saved causal LM and its tokenizer, or leave aux_model unset for the embedded "
            f"tiny-aux model.")
    return str(path), str(path)  # a hub-style name, loaded from the local HF cache only


def _load_local(name: str, dtype: Any) -> Tuple[Any, Any]:
    """AutoModelForCausalLM + AutoTokenizer from local files only, with errors that name the fix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..compat import dtype_kwargs

    kwargs: Dict[str, Any] = {"local_files_only": True, **dtype_kwargs(dtype)}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"Cannot load aux_model={name!r} as a causal language model ({type(exc).__name__}: "
            f"{exc}). The aux must be an autoregressive LM that AutoModelForCausalLM can load "
            f"from local files (e.g. a Llama/Qwen checkpoint directory); download it first, "
            f"there is no network access at run time.") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"Cannot load the tokenizer of aux_model={name!r} ({exc}); save it next "
                          f"to the model with tokenizer.save_pretrained.") from exc
    return model, tokenizer


def model_fingerprint(directory: PathLike) -> str:
    """A short hash identifying a saved model, so a retrained aux does not reuse stale cache lines.

    Metadata and tokenizer files are content-hashed; weights too when small (<= 256 MiB in all),
    otherwise by name, size and modification time.
    """
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in _METADATA_FILES:
        file = directory / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    weights = sorted(f for f in directory.iterdir() if f.suffix in _WEIGHT_SUFFIXES and f.is_file())
    by_content = sum(f.stat().st_size for f in weights) <= _HASH_WEIGHTS_UP_TO
    for file in weights:
        digest.update(file.name.encode() + b"\0")
        if by_content:
            digest.update(file.read_bytes())
        else:
            stat = file.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Ready-made proposals from a file
# ---------------------------------------------------------------------------------------------

class FileProposals:
    """Proposals read from a JSONL file, one ``{"prompt": ..., "proposal": ...}`` per line.

    Prompts are matched by :func:`prompt_key` (all whitespace ignored: a prompt decoded from token
    ids may space its punctuation differently from the text the task gave). A prompt that is not
    in the file gets ``Proposal(ok=False, error="no proposal for this prompt")``.
    """

    def __init__(self, path: PathLike, target_tokenizer: Any) -> None:
        check_target_tokenizer(target_tokenizer)
        self.path = Path(path)
        self.target_tokenizer = target_tokenizer
        self._proposals = _read_proposal_file(self.path)

    def __len__(self) -> int:
        return len(self._proposals)

    def propose(self, prompts: Sequence[str], gen_length: int) -> List[Proposal]:
        """One :class:`Proposal` per prompt, in order (``source="file"``, no aux cost)."""
        results = []
        for i, prompt in enumerate(prompts):
            text = self._proposals.get(prompt_key(prompt))
            error = "no proposal for this prompt" if text is None else None
            results.append(_aligned(i, prompt, text, self.target_tokenizer, gen_length,
                                    aux_seconds=0.0, aux_tokens=0, source="file", error=error))
        return results


def prompt_key(prompt: str) -> str:
    """How a proposal file's prompt and a decoded prompt are compared: whitespace removed."""
    return "".join(prompt.split())


def _read_proposal_file(path: Path) -> Dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"Proposal file {str(path)!r} does not exist; pass a JSONL file "
                                f"with one {{\"prompt\": ..., \"proposal\": ...}} object per line.")
    proposals: Dict[str, str] = {}
    first_line: Dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            prompt, proposal = _parse_proposal_line(path, lineno, line)
            key = prompt_key(prompt)
            if key in proposals and proposals[key] != proposal:
                raise ProposalError(f"{path}:{lineno}: this prompt already has a different "
                                    f"proposal on line {first_line[key]}; keep one of them.")
            proposals[key] = proposal
            first_line.setdefault(key, lineno)
    return proposals


def _parse_proposal_line(path: Path, lineno: int, line: str) -> Tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProposalError(f"{path}:{lineno}: not valid JSON ({exc.msg}); each line must be "
                            f"{{\"prompt\": ..., \"proposal\": ...}}.") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) \
            or not isinstance(record.get("proposal"), str):
        raise ProposalError(f"{path}:{lineno}: expected an object with string fields 'prompt' "
                            f"and 'proposal'.")
    return record["prompt"], record["proposal"]


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------

def build_proposer(config: AuxConfig, target_tokenizer: Any, *, device: Any = "cpu",
                   dtype: Any = None) -> Union[AuxProposer, FileProposals]:
    """:class:`FileProposals` when ``config.proposals`` is set, else the aux model (with a
    :class:`ProposalCache` when ``config.proposal_cache`` is set)."""
    if config.proposals:
        return FileProposals(config.proposals, target_tokenizer)
    cache = ProposalCache(config.proposal_cache) if config.proposal_cache else None
    return AuxProposer.from_pretrained(config.aux_model, target_tokenizer, config=config,
                                       device=device, dtype=dtype, cache=cache)


__all__ = ["Proposal", "ProposalError", "align_to_canvas", "check_target_tokenizer",
           "AuxProposer", "FileProposals", "ProposalCache", "build_proposer", "model_fingerprint"]
