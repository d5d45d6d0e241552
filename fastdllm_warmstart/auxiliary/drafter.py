"""Drafts from a Hugging Face causal LM (the aux model), aligned to the dLLM's canvas.

For every prompt the warm start needs a guess of the answer as *dLLM token ids* of exactly
``gen_length`` positions. :class:`AuxProposer` makes it in three steps:

1. The aux model drafts an answer: batched greedy decoding with left padding, optionally through
   the aux tokenizer's chat template (Instruct models).
2. The draft is decoded to text with the aux tokenizer (only the new tokens, special tokens
   dropped).
3. :func:`~.alignment.align_to_canvas` re-encodes that text with the dLLM tokenizer onto the canvas.

Nothing here stops a run: a prompt whose proposal cannot be made gets ``Proposal(ok=False)`` and a
logged warning, and the caller cold-starts it. Texts already drafted come from a
:class:`~.cache.ProposalCache` when one is given.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..chat_template import as_user_turn, use_chat_template
from ..config import AuxConfig, ConfigError
from .alignment import aligned_proposal, check_gen_length, check_target_tokenizer
from .base import Proposal
from .cache import ProposalCache
from .model_files import load_local, resolve_model_path

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


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

        model_dir, model_id = resolve_model_path(path)
        with quiet_loading():
            model, tokenizer = load_local(model_dir, dtype)
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
        check_gen_length(gen_length)
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
        return [aligned_proposal(i, p, d.text, self.target_tokenizer, gen_length,  # 4.
                                 aux_seconds=d.aux_seconds, aux_tokens=d.aux_tokens,
                                 source=s, error=d.error)
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
        return as_user_turn(self.tokenizer, prompt) if self.use_chat_template else prompt


def _resolve_chat_template(tokenizer: Any, chat_template: Optional[bool]) -> bool:
    return use_chat_template(tokenizer, chat_template, setting="aux_chat_template", which="aux",
                             fix="use an Instruct aux model or set aux_chat_template=false")


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


__all__ = ["AuxProposer"]
