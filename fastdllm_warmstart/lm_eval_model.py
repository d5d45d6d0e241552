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

import hashlib
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
from .config import ConfigError
from .engine.protocol import canvas_logits
from .lm_eval_utils import (MODEL_NAME, SPEED_FIELDS, UPSTREAM_ARGS, AnswerStore, EvalSettings,
                            all_gather, answer_record, barrier, format_speed_table, gather_object,
                            hook_variables, init_distributed, launcher_ranks, request_key,
                            resolve_device, summarize_speed, valid_model_args)

logger = logging.getLogger(__name__)

# Re-exported: the eval command and users import these from here.
__all__ = ["LLaDAWarmStartLM", "MODEL_NAME", "UPSTREAM_ARGS", "EvalSettings", "AnswerStore",
           "summarize_speed", "valid_model_args"]

_warned_hook_env = False


def _warn_hook_variables() -> None:
    """Once per process: ``FASTDLLM_WARMSTART_*`` variables do not configure this model."""
    global _warned_hook_env
    names = hook_variables()
    if names and not _warned_hook_env:
        _warned_hook_env = True
        logger.warning("%s ignores %s: FASTDLLM_WARMSTART_* variables configure the patch's "
                       "warmstart_hook.py (--model llada_dist), not %s. Pass the settings as "
                       "--model_args instead (e.g. warm_init=token,rho=0.25).", MODEL_NAME,
                       ", ".join(names), MODEL_NAME)


class _Console(logging.Handler):
    """Writes records to the current ``sys.stderr``, message only (show_speed's table)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


# show_speed=True: the speed table reaches the console as upstream's prints do, whatever logging
# the caller set up (lm-eval's command line configures none for this package).
speed_logger = logging.getLogger("fastdllm_warmstart.speed")
speed_logger.addHandler(_Console())
speed_logger.setLevel(logging.INFO)
speed_logger.propagate = False


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
        _warn_hook_variables()
        rank, world, local = launcher_ranks()
        device = resolve_device(self.settings.device, world, local)
        init_distributed(device, world)
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
    def device(self) -> torch.device:  # lm-eval 0.4.8's LM has no device property
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_gather(tensor, self._world_size)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[List[Any]]:
        return gather_object(obj, self._world_size, self._rank, dst)

    def barrier(self) -> None:
        barrier(self._world_size)

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
        2. Reuse answers found in ``save_dir``; hand the rest to the runner at once: one
           continuous batch of ``batch_size`` rows where it refills (``batching``), else static
           batches of ``batch_size``. Each answer is appended to ``save_dir`` as it completes
           (a static batch's at its end), so an interrupted run loses at most the rows in flight.
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

        def save(results: List[Tuple[int, Any]]) -> None:
            records = [answer_record(pending[i], r) for i, r in results]
            if self._store is not None:
                self._store.append(records)
            done.update((r["key"], r) for r in records)

        bar = tqdm(total=len(pending), desc=f"{MODEL_NAME} generate (rank {self._rank})",
                   disable=disable_tqdm or self._rank != 0 or not pending)
        if pending:
            self.runner.generate([unique[k] for k in pending], batch_size=self.settings.batch_size,
                                 apply_chat_template=chat, progress=bar, on_results=save)
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
                       injected=done[key].get("injected", 0), revoked=done[key].get("revoked", 0),
                       model_calls=done[key].get("model_calls"),
                       model_queries=done[key].get("model_queries"))
            local_rows[str(req.task_name)].append(row)
        self._merge_speed(local_rows)
        return answers

    def _merge_speed(self, local_rows: Dict[str, List[Dict[str, Any]]]) -> None:
        gathered = self.gather_object(dict(local_rows), dst=0)
        if self._rank != 0:
            return
        for part in gathered:
            for task, rows in part.items():
                self._speed_rows[task].extend(rows)
        summary = self.speed_summary()
        if self.settings.show_speed and summary:
            speed_logger.info("\nNFE / time per task (%s):\n%s", MODEL_NAME,
                              format_speed_table(summary))

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
            logits = canvas_logits(self.model, noisy.to(self._device))[:, n_ctx:]  # (b, C, V)
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
            probs = torch.softmax(canvas_logits(self.model, seq)[0].float(), dim=-1)  # (L, V)
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
