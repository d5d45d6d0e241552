"""Text in, answers out: the dLLM, the aux proposer and the callbacks wired together.

The CLI, the benchmark and the lm-eval model all decode through :class:`WarmStartRunner`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .chat_template import as_user_turn, use_chat_template
from .config import RunConfig
from .engine import CallbackList, DecodeCallback, generate
from .engine.loop import resolve_special_ids
from .engine.protocol import protocol_for
from .engine.rows import resolve_batching
from .loading import check_cache_support, load_dllm, model_max_length, tune_cpu_threads
from .warmstart import build_callbacks, proposals_to_tensor, warn_unread_soft_inputs

logger = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    prompt: str
    text: str                       # answer, special tokens skipped, cut at the first EOS
    token_ids: List[int]            # the generation region's ids
    nfe: int                        # forwards this row needed
    gen_tokens: int                 # answer tokens before the first EOS (no padding, no prompt)
    dllm_seconds: float             # this row's share of its batch's decoding time
    # This answer's share of the batch forward calls (each call split equally among the rows it
    # computed): summed over answers, the model calls made. At batch 1 it equals nfe.
    model_calls: float = 0.0
    aux_seconds: float = 0.0        # this row's share of the aux proposer's time
    warm: bool = False              # a proposal was used for this row
    fallback: Optional[str] = None  # why the warm start fell back to a cold start
    proposal_text: Optional[str] = None
    injected: int = 0               # prior tokens put on the canvas (token injection)
    revoked: int = 0                # priors revoked by the remask step
    accepted: int = 0               # draft tokens committed by a verification rule
    aux_forwards: int = 0           # aux forwards that scored this row while decoding (APD)
    # Query positions the model computed for this answer (windows and transient queries): on a
    # CPU, where a forward costs per query, the time follows this rather than the calls.
    model_queries: int = 0
    extra: dict = field(default_factory=dict)

    def to_record(self) -> Dict[str, Any]:
        """Every field but ``extra``, under its own name (the lm-eval answer store's record)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        record["token_ids"] = [int(t) for t in self.token_ids]
        return record

    def to_row(self) -> Dict[str, Any]:
        """The answer and its costs under the short names of the bench's rows and of
        ``generate --json`` (``answer``, ``dllm_s``, ``aux_s``, ``proposal``)."""
        return {"answer": self.text, "nfe": self.nfe, "gen_tokens": self.gen_tokens,
                "dllm_s": self.dllm_seconds, "aux_s": self.aux_seconds, "model_calls": self.model_calls,
                "warm": self.warm, "fallback": self.fallback, "proposal": self.proposal_text,
                "injected": self.injected, "revoked": self.revoked, "accepted": self.accepted,
                "model_queries": self.model_queries,
                "aux_forwards": self.aux_forwards}


class PromptTooLongError(ValueError):
    """A prompt plus the answer canvas exceeds what the model supports."""


class WarmStartRunner:
    """Holds a dLLM, its tokenizer, a default run config and the proposers warm starts need.

    The config is passed per call, as transformers' ``generate(inputs, generation_config)``:
    ``runner.generate(prompts, config)`` decodes with ``config``, and ``config=None`` with the
    runner's own default (``runner.config``, set at construction). Nothing outside the runner
    needs to rewrite its attributes to change a setting.

    ``max_length`` bounds prompt + canvas: the model config's declared limit
    (``max_sequence_length`` / ``max_position_embeddings``), None when it declares none; lower it
    to cap further. A longer prompt raises :class:`PromptTooLongError`, or with
    ``truncation="left"`` keeps its last tokens (with a warning), as lm-eval's HF models do.
    """

    def __init__(self, model, tokenizer, config: Optional[RunConfig] = None, *, proposer=None,
                 model_id: str = "model", fast_dllm_path: Optional[str] = None,
                 callbacks: Sequence[DecodeCallback] = ()):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RunConfig()
        self.model_id = model_id
        self.fast_dllm_path = fast_dllm_path
        self.extra_callbacks = list(callbacks)
        self.device = next(model.parameters()).device
        self.mask_id, self.eos_id, self.pad_id = resolve_special_ids(model, tokenizer)
        check_cache_support(model, self.config.decode.cache)
        # One proposer per aux set-up (AuxConfig is frozen, hence hashable), built on first use:
        # a per-call config with another aux model or proposals file gets its own.
        self._proposers: dict = {} if proposer is None else {self.config.aux: proposer}
        self.max_length: Optional[int] = model_max_length(model)
        self.truncation = "error"  # or "left"
        self._references: dict = {}

    @classmethod
    def from_pretrained(cls, model_path: Optional[str] = None, config: Optional[RunConfig] = None, *,
                        device: Optional[str] = "cpu", dtype=None, fast_dllm_path: Optional[str] = None,
                        callbacks: Sequence[DecodeCallback] = (), threads="auto") -> "WarmStartRunner":
        """Load a dLLM (None = the embedded one); ``threads`` see :func:`tune_cpu_threads`."""
        model, tokenizer, model_id = load_dllm(model_path, device=device, dtype=dtype,
                                               fast_dllm_path=fast_dllm_path)
        tune_cpu_threads(model, threads)
        return cls(model, tokenizer, config, model_id=model_id, fast_dllm_path=fast_dllm_path,
                   callbacks=callbacks)

    @property
    def proposer(self):
        """The aux proposer of the default config, built on first use (only warm starts need one)."""
        return self.proposer_for(self.config.aux)

    def proposer_for(self, aux) -> Any:
        """The proposer of an :class:`~fastdllm_warmstart.config.AuxConfig`, built once per set-up."""
        if aux not in self._proposers:
            from .auxiliary import build_proposer

            self._proposers[aux] = build_proposer(aux, self.tokenizer, device=self.device)
        return self._proposers[aux]

    def reference_model(self, config: Optional[RunConfig] = None):
        """The model that starts the residual stream (``residual_start=reference``), loaded once."""
        rc = (config or self.config).residual
        if not (rc.enabled and rc.start == "reference"):
            return None
        if rc.reference not in self._references:
            path = None if rc.reference == "embedded" else rc.reference
            model, _, _ = load_dllm(path, device=str(self.device), dtype=next(self.model.parameters()).dtype,
                                    fast_dllm_path=self.fast_dllm_path)
            self._references[rc.reference] = model
        return self._references[rc.reference]

    # -- prompts ---------------------------------------------------------------------------
    def format_prompt(self, prompt: str, apply_chat_template: Optional[bool] = None) -> str:
        """The dLLM's input text: its chat template when it has one (Instruct models)."""
        if not use_chat_template(self.tokenizer, apply_chat_template, setting="apply_chat_template"):
            return prompt
        return as_user_turn(self.tokenizer, prompt)

    def encode(self, texts: Sequence[str]) -> List[List[int]]:
        ids = [list(self.tokenizer(t)["input_ids"]) for t in texts]
        for i, row in enumerate(ids):
            if not row:
                raise ValueError(f"Prompt {i} encodes to no tokens; give a non-empty prompt.")
        return ids

    def fit_to_length(self, ids: List[List[int]], gen_length: Optional[int] = None) -> List[List[int]]:
        """Check (or left-truncate) encoded prompts so that prompt + gen_length <= max_length
        (``gen_length`` None: the default config's)."""
        if gen_length is None:
            gen_length = self.config.decode.gen_length
        if self.max_length is None:
            return ids
        room = self.max_length - gen_length
        longest = max((len(row) for row in ids), default=0)
        if longest <= room:
            return ids
        if room < 1:
            raise PromptTooLongError(
                f"gen_length {gen_length} leaves no room for a prompt within the model's limit of "
                f"{self.max_length} positions (max sequence length in its config); lower gen_length.")
        if self.truncation != "left":
            where = "" if len(ids) == 1 else f"prompt {max(range(len(ids)), key=lambda i: len(ids[i]))}: "
            raise PromptTooLongError(
                f"{where}{longest} prompt tokens + gen_length {gen_length} = {longest + gen_length} "
                f"positions exceed the model's limit of {self.max_length} (max sequence length in its "
                f"config); shorten the prompt to at most {room} tokens or lower gen_length.")
        for i, row in enumerate(ids):
            if len(row) > room:
                logger.warning("Left truncation applied. Original sequence length was %d, "
                               "truncating to last %d tokens (model limit %d - gen_length %d). "
                               "Some content will be lost.", len(row), room, self.max_length,
                               gen_length)
                ids[i] = row[-room:]
        return ids

    # -- decoding --------------------------------------------------------------------------
    def _proposals(self, prompts: Sequence[str], config: RunConfig, proposer: Any):
        """(B, G) aligned proposal ids (-1 for cold rows) and the per-row Proposal records."""
        gen_length = config.decode.gen_length
        if not config.warm.enabled:
            return None, [None] * len(prompts)
        if proposer is None:
            proposer = self.proposer_for(config.aux)
        records = proposer.propose(list(prompts), gen_length)
        ids = [r.token_ids if (r is not None and r.ok) else None for r in records]
        for i, r in enumerate(records):
            if r is None or not r.ok:
                logger.warning("Prompt %d: no usable proposal (%s); decoding it cold.", i,
                               getattr(r, "error", "missing"))
        return proposals_to_tensor(ids, gen_length, device=self.device), records

    def _decode_row(self, ids: List[int]) -> tuple:
        cut = ids.index(self.eos_id) if (self.eos_id is not None and self.eos_id in ids) else len(ids)
        answer = ids[:cut]
        text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
        n = sum(1 for t in answer if t not in (self.pad_id, self.mask_id))
        return text, n

    def _config(self, config: Optional[RunConfig]) -> RunConfig:
        """``config``, or the runner's own for None; anything else is refused in one line."""
        if config is None:
            return self.resolve(self.config)
        if not isinstance(config, RunConfig):
            raise TypeError(f"config must be a RunConfig (or None for the runner's own), got "
                            f"{type(config).__name__}; pass batch_size= by keyword.")
        check_cache_support(self.model, config.decode.cache)
        return self.resolve(config)

    def resolve(self, config: RunConfig) -> RunConfig:
        """``config`` with its model-dependent defaults made explicit for this model: the
        ``auto`` remask rule (spec where the model takes transient queries, else chain; wino with
        ``--wino``, which judges the draft itself) and the rule's own ``tau_accept``; what decodes,
        and what result files record."""
        if config.wino.enabled and config.remask.rule == "auto":  # --wino judges the draft itself
            remask = dataclasses.replace(config.remask, rule="wino")
        else:
            transient = (bool(getattr(self.model, "supports_transient_queries", False))
                         and protocol_for(self.model).supports_transient)
            remask = config.remask.resolved(transient)
        return config if remask is config.remask else dataclasses.replace(config, remask=remask)

    def batching(self, config: Optional[RunConfig] = None) -> str:
        """``static`` or ``refill``: how :meth:`generate` decodes with ``config`` (its
        ``decode.batching`` resolved for this model and the runner's extra callbacks; the
        built-in callbacks all support refill)."""
        from .upstream import find_upstream

        config = self._config(config)
        upstream = find_upstream(self.fast_dllm_path) if config.decode.batching != "static" else None
        return resolve_batching(config.decode, self.model, CallbackList(self.extra_callbacks), upstream)

    def generate_batch(self, prompts: Sequence[str], config: Optional[RunConfig] = None, *,
                       apply_chat_template: Optional[bool] = None, proposer: Any = None,
                       batch_size: Optional[int] = None, progress: Any = None,
                       on_results: Optional[Callable[[List[Tuple[int, GenerationResult]]], None]] = None
                       ) -> List[GenerationResult]:
        """Decode ``prompts`` in one engine call with ``config`` (None: the runner's default).
        ``proposer`` (anything with ``propose(prompts, gen_length)``) replaces the one built from
        ``config.aux``. ``batch_size`` caps the rows decoded at once with continuous batching
        (``config.decode.batching``; None = all); a static batch takes every prompt at once.
        ``on_results`` gets ``(index, result)`` pairs as answers complete (with continuous batching
        while the call runs, so a caller can save them; a static batch's at the end), and
        ``progress`` (a tqdm bar) advances with them. With continuous batching an answer's
        ``dllm_seconds`` is its share of the time since the previous answers were handed in, so
        the shares add up to the call's time as they do for a static batch."""
        config = self._config(config)
        d = config.decode
        # Length first: an over-long prompt fails before the aux model drafts anything for it.
        input_ids = self.fit_to_length(self.encode([self.format_prompt(p, apply_chat_template)
                                                    for p in prompts]), d.gen_length)
        proposals, records = self._proposals(prompts, config, proposer)
        warn_unread_soft_inputs(self.model, config)
        callbacks = build_callbacks(config, proposals, self.reference_model(config)) + self.extra_callbacks
        results: dict = {}
        clock = [0.0]

        def hand_in(problems, sequences, nfe, stats) -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            seconds, clock[0] = (now - clock[0]) / max(len(problems), 1), now
            counts = {k: stats[k].tolist() for k in ("injected", "revoked", "accepted", "aux_forwards",
                                                      "model_queries") if k in stats}
            done = [(i, self._result(prompts[i], row, n, calls, seconds, records[i],
                                     proposals is not None and bool((proposals[i] >= 0).any()), config,
                                     {k: int(v[j]) for k, v in counts.items()}))
                    for j, (i, row, n, calls) in enumerate(zip(
                        problems.tolist(), sequences[:, -d.gen_length:].tolist(), nfe.tolist(),
                        stats["model_calls"].tolist()))]
            results.update(done)
            if progress is not None:
                progress.update(len(done))
            if on_results is not None:
                on_results(done)

        if config.apd.enabled:  # APD owns the commit: the aux accepts the dLLM's agreeing prefix
            callbacks.append(self._apd(config, prompts))
        threshold, transfer_fn = d.threshold, None
        if config.wino_decodes:  # WINO's wide-in is the commit rule
            from .wino.decoding import wide_in_rule

            threshold, transfer_fn = config.wino.tau_in, wide_in_rule(config.wino)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        clock[0] = time.perf_counter()
        generate(self.model, input_ids, steps=d.steps, gen_length=d.gen_length,
                 block_length=d.block_length, temperature=d.temperature, remasking=d.remasking,
                 mask_id=self.mask_id, threshold=threshold, factor=d.factor, cache=d.cache,
                 transfer_fn=transfer_fn, callbacks=callbacks, loop_variant=d.loop_variant, eos_id=self.eos_id,
                 pad_id=self.pad_id, early_stop=d.early_stop, skip_done_rows=d.skip_done_rows,
                 seed=config.warm.seed, fast_dllm_path=self.fast_dllm_path,
                 batching=d.batching, batch_size=batch_size, on_answers=hand_in)
        return [results[i] for i in range(len(prompts))]

    def _result(self, prompt: str, token_ids: List[int], nfe: int, model_calls: float, seconds: float,
                record: Any, warm: bool, config: RunConfig, counts: Dict[str, int]) -> GenerationResult:
        """One answer: the generation region's ids decoded, with its costs and its proposal's."""
        text, n_tokens = self._decode_row(token_ids)
        fallback = None
        if config.warm.enabled and not warm:
            fallback = getattr(record, "error", None) or "no proposal"
        return GenerationResult(
            prompt=prompt, text=text, token_ids=token_ids, nfe=int(nfe), gen_tokens=n_tokens,
            dllm_seconds=seconds, model_calls=float(model_calls),
            aux_seconds=float(getattr(record, "aux_seconds", 0.0) or 0.0), warm=warm,
            fallback=fallback, proposal_text=getattr(record, "text", None), **counts)

    def _apd(self, config: RunConfig, prompts: Sequence[str]) -> DecodeCallback:
        """APD's commit callback, with the aux model of ``config.aux`` as its AR verifier."""
        from .apd.decoding import build_apd
        from .chat_template import as_user_turn
        from .config import ConfigError

        aux = self.proposer_for(config.aux)
        if getattr(aux, "model", None) is None:
            raise ConfigError("apd needs an aux model to score the dLLM's runs; unset proposals "
                              "(a file of drafts cannot score anything) and set aux_model if needed.")
        render = (lambda text: as_user_turn(aux.tokenizer, text)) if aux.use_chat_template else None
        return build_apd(config, aux.model, aux.tokenizer, self.tokenizer, list(prompts), render=render)

    def generate(self, prompts: Sequence[str], config: Optional[RunConfig] = None, *,
                 batch_size: int = 8, apply_chat_template: Optional[bool] = None, progress: Any = None,
                 proposer: Any = None,
                 on_results: Optional[Callable[[List[Tuple[int, GenerationResult]]], None]] = None
                 ) -> List[GenerationResult]:
        """Decode ``prompts`` with ``config`` (None: the runner's default), ``batch_size`` rows at a
        time: one continuous batch over every prompt where :meth:`batching` says ``refill``, else
        static batches of ``batch_size``. ``progress`` is an optional tqdm bar; ``proposer`` see
        :meth:`generate_batch`; ``on_results`` gets ``(index into prompts, result)`` pairs as
        answers complete (each static batch's at its end)."""
        if isinstance(prompts, str):
            raise TypeError("generate() takes a list of prompts; wrap a single prompt in a list.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        config = self._config(config)
        if not prompts:
            return []
        if self.batching(config) == "refill":
            # Decided once: the engine must not fall back to one static batch of every prompt.
            refill = dataclasses.replace(config, decode=dataclasses.replace(config.decode, batching="refill"))
            return self.generate_batch(list(prompts), refill, apply_chat_template=apply_chat_template,
                                       proposer=proposer, batch_size=batch_size, progress=progress,
                                       on_results=on_results)
        results: List[GenerationResult] = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            shifted = None if on_results is None else partial(_shifted, on_results, start)
            results.extend(self.generate_batch(chunk, config, apply_chat_template=apply_chat_template,
                                               proposer=proposer, progress=progress, on_results=shifted))
        return results


def _shifted(on_results: Callable, start: int, done: List[Tuple[int, GenerationResult]]) -> None:
    """``on_results`` for a chunk of prompts starting at ``start``: indices into all prompts."""
    on_results([(start + i, r) for i, r in done])
