"""The one Fast-dLLM decoding loop.

Algorithm (the numbers recur as comments in :func:`generate`):

1. Lay the prompts (left-padded to a common width) and ``gen_length`` [MASK] tokens on the canvas;
   callbacks' ``on_init`` may replace masks with prior tokens (warm start).
2. For each block of ``block_length`` positions, left to right:
   a. ``on_block_start``; the fixed schedule (threshold=None) splits the block's masked count
      evenly over ``steps / num_blocks`` steps.
   b. Each step: the cache strategy picks the window the forward covers; ``before_forward``
      hooks may supply input embeddings; one forward (one NFE); ``after_forward``.
   c. Commit by upstream's rule among the block's masked positions (factor: the top n while the
      n-th confidence clears 1 - factor/(n+1); threshold: all with confidence >= threshold, at
      least the most confident one; else the schedule's top-k), or by the callback that owns the
      commit (``owns_commit``: APD). [MASK]/[PAD] are never committed.
   d. ``after_commit`` hooks may revoke prior tokens back to [MASK] (an upstream-style
      ``step_callback(step_idx)`` runs last, here).
   e. Stop the block once no row has a mask left in it and the strategy's minimum number of
      forwards ran: 1 in today's upstream loop, whose cached loops check for masks before each
      cached forward (a block the full forward completes costs 1 forward); 2 for the cached
      strategies of the June-2025 snapshot (``loop_variant="snapshot-2025-06"``).
   f. ``on_block_end``; with ``early_stop``, rows whose answer ended in EOS are closed.
3. ``on_finish``; return the canvas and per-row NFE.

The model's family (:mod:`.protocol`, read from its config) says how to call it and read its
logits: a Dream-protocol model's logit at ``p`` predicts ``p + 1``, so step 2b reads them one column
on; its block-opening forward commits the block's first position alone (2c) and its cached blocks
cost at least two forwards (2e), as Dream's own loop.

A row's NFE counts the forwards it needed: those while its block still had masks, plus the
strategy's minimum per block; ``total_nfe`` counts forward calls for the whole batch, which is
upstream's counter (for a batch of one the two are equal). Rows carried along by a batch after
their block is done are marked inactive (``state.active``) and nothing of theirs changes.

This is the static batch. With ``batching="refill"`` steps 2-3 run as a continuous batch instead
(:mod:`.rows`): each row at its own block and step, a finished row refilled with the next prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import torch

from ..config import DecodeConfig
from .cache import make_cache_strategy
from .callbacks import CallbackList, DecodeCallback, as_callback_list
from .protocol import protocol_for
from .rows import RefillLoop, resolve_batching
from .state import DecodeState, row_stats
from .transfer import (BUILTIN_RULES, num_transfer_schedule, resolve_transfer_fn,
                       suppress_ids)

logger = logging.getLogger(__name__)


@dataclass
class GenerateOutput:
    sequences: torch.Tensor        # (B, P + gen_length) canvas incl. the (left-padded) prompt; with
                                   # refill one row per prompt, in the prompts' order
    nfe: torch.Tensor              # (B,) forwards each row needed
    total_nfe: int                 # forward (model) calls made for the batch
    prompt_width: int              # P: generated tokens are sequences[:, P:]
    attention_mask: Optional[torch.Tensor]  # (B, P + gen_length) or None
    stats: Dict[str, torch.Tensor]  # per-row counters (injected, revoked, model_calls, ...)
    loop_variant: str = "current"  # the upstream loop reproduced ("auto" resolved)
    batching: str = "static"       # "static" or "refill" ("auto" resolved)

    @property
    def model_calls(self) -> int:
        """Batch forward calls made (``total_nfe``); ``stats["model_calls"]`` splits each call
        equally among the rows it computed, so per-answer shares sum to this."""
        return self.total_nfe

    @property
    def generated(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_width:]

    def __iter__(self):
        """``x, nfe = generate(...)`` unpacks as upstream's return value (canvas, forward calls)."""
        return iter((self.sequences, self.total_nfe))


class StepCallback(DecodeCallback):
    """Adapts upstream's ``step_callback(step_idx)``: called after every step's commit with the
    0-based index of that step over the whole generation (upstream's ``step_idx``)."""

    def __init__(self, fn: Callable[[int], None]):
        if not callable(fn):
            raise TypeError(f"step_callback must be callable, got {type(fn).__name__}.")
        self.fn = fn

    def after_commit(self, state: DecodeState) -> None:
        self.fn(state.step)


def resolve_loop_variant(requested: str = "auto", upstream=None) -> str:
    """``auto`` -> the variant of the found checkout (``upstream``), else ``current``."""
    if requested != "auto":
        return requested
    if upstream is not None and upstream.loop_variant is not None:
        return upstream.loop_variant
    return "current"


def _replace_position_rows(model, upstream) -> str:
    """``shared`` only for a model class from a checkout whose model pools the rows' columns."""
    if (upstream is not None and upstream.model_class is not None
            and isinstance(model, upstream.model_class)):
        return upstream.replace_position_rows
    return getattr(model, "replace_position_rows", "batch")


def _config_id(model, name: str) -> Optional[int]:
    value = getattr(getattr(model, "config", None), name, None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value


def resolve_special_ids(model, tokenizer=None, mask_id: Optional[int] = None,
                        eos_id: Optional[int] = None, pad_id: Optional[int] = None):
    """mask/eos/pad ids: explicit argument > model config > tokenizer; mask is required."""
    def pick(explicit, config_name, tok_name):
        if explicit is not None:
            return int(explicit)
        value = _config_id(model, config_name)
        if value is None and tokenizer is not None:
            value = getattr(tokenizer, tok_name, None)
        return None if value is None else int(value)

    mask = pick(mask_id, "mask_token_id", "mask_token_id")
    if mask is None:
        raise ValueError("No [MASK] id: the model config has no mask_token_id and no tokenizer "
                         "with a mask token was given. Pass mask_id=... explicitly.")
    return mask, pick(eos_id, "eos_token_id", "eos_token_id"), pick(pad_id, "pad_token_id", "pad_token_id")


def _prepare_prompt(prompt, attention_mask, pad_token: int, device):
    """(B, P) ids and an attention mask (None when no row is padded); ragged lists left-padded."""
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 1:
            prompt = prompt.unsqueeze(0)
        if prompt.dim() != 2:
            raise ValueError(f"prompt must be (B, P) token ids, got shape {tuple(prompt.shape)}.")
        ids = prompt.to(device=device, dtype=torch.long)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=device, dtype=torch.long)
            if attention_mask.shape != ids.shape:
                raise ValueError("attention_mask must have the prompt's shape (B, P).")
    else:
        rows = [list(map(int, r)) for r in prompt]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("Every prompt needs at least one token.")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_token, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, device=device)
            attention_mask[i, width - len(r):] = 1
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    return ids, attention_mask


def _with_transient(state: DecodeState) -> dict:
    """Model inputs for a forward with transient queries (``state.transient``)."""
    tr = state.transient
    if not (getattr(state.model, "supports_transient_queries", False) and state.protocol.supports_transient):
        raise ValueError(f"{type(state.model).__name__} does not take transient queries "
                         "(supports_transient_queries); use another rule with this model.")
    window = state.inputs_embeds if state.inputs_embeds is not None else state.embed(state.window_view(state.x))
    return {"inputs_embeds": torch.cat((window, tr.embeds.to(window.dtype)), dim=1),  # (B, W + T, C)
            "position_ids": tr.position_ids, "attention_bias": tr.attention.unsqueeze(1),
            "n_transient": tr.embeds.shape[1]}


def _close_finished_rows(state: DecodeState, rows: Optional[torch.Tensor] = None) -> None:
    """Early stop: a row whose answer so far ends in EOS followed only by EOS is done (among
    ``rows``, the rows whose block ``state.block`` just ended; None = every row)."""
    if state.eos_id is None:
        return
    gen = state.x[:, state.prompt_width:state.block_end]  # (B, G_done)
    is_eos = gen == state.eos_id
    seen_eos = is_eos.cumsum(dim=1) > 0
    ended = is_eos.any(dim=1) & ~(seen_eos & ~is_eos).any(dim=1)  # (B,)
    if rows is not None:
        ended &= torch.zeros_like(ended).index_fill_(0, rows, True)
    newly = ended & ~state.finished
    if bool(newly.any()):
        state.x[newly, state.block_end:] = state.eos_id
        if state.injected is not None:
            state.injected[newly, state.block_end:] = False
        state.finished |= newly


def _commit(state: DecodeState, transfer_fn, config: DecodeConfig, schedule: Optional[torch.Tensor],
            banned: Sequence[int], rows: Optional[torch.Tensor] = None, row_logits=None) -> None:
    """Step 2c: upstream's commit rule on the window's logits (``transfer_fn`` is the rule in
    force: the factor rule when ``config.factor`` is set, else the threshold/schedule rule).

    Only the block's masked positions can be committed, and the rule proposes the current token
    everywhere else, so it runs on the block's columns alone (and, with ``rows``, on those rows:
    the others have no mask in the block): the same result as over the whole window, without a
    softmax over every canvas position at a block's full forward. ``row_logits`` = ``(part, pos)``
    reads the rows' logits from a call's own ``(R, W, V)`` output instead of ``state.logits``:
    rows ``pos`` of it (None: all, in the order of ``rows``)."""
    w0, w1 = state.window
    x_win = state.window_view(state.x)  # (B, W) view into the canvas
    b0, b1 = max(state.block_start, w0) - w0, min(state.block_end, w1) - w0  # block columns in the window
    only = state.protocol.commit_columns(state)  # Dream's block-opening forward: its first column
    if only is not None:
        b0, b1 = b0 + only.start, min(b1, b0 + only.stop)
    sel = (slice(None) if rows is None else rows, slice(b0, b1))
    x_blk = x_win[sel]  # (B or B_a, Wb) copy
    mask_blk = x_blk == state.mask_id
    if row_logits is None:
        logits = state.logits[sel]  # (B or B_a, Wb, V)
    else:
        part, pos = row_logits
        logits = part[:, b0:b1] if pos is None else part[:, b0:b1].index_select(0, pos)
    logits = suppress_ids(logits, mask_blk, banned)
    if schedule is None:
        k = None
    elif state.block_step < schedule.shape[1]:
        k = schedule[:, state.block_step]
    else:  # only reachable when hooks revoked tokens after the schedule ran out
        k = torch.ones(state.batch_size, dtype=torch.long, device=state.x.device)
    if config.factor is not None:
        k, last = None, config.factor  # upstream passes no counts to the factor rule
    else:
        last = config.threshold
    if k is not None and state.protocol.forced_commit(state):
        k = torch.ones_like(k)  # committed whatever the schedule's count
    if k is not None and rows is not None:
        k = k[rows]
    if isinstance(transfer_fn, DecodeCallback):  # a callback owns the commit (APD)
        x0_blk, transfer_blk = transfer_fn.commit(state, logits, mask_blk, x_blk, rows)
    else:
        x0_blk, transfer_blk = _call_rule(transfer_fn, state, config, logits, mask_blk, x_blk, k, last)
    x0, transfer = x_win.clone(), torch.zeros_like(x_win, dtype=torch.bool)
    x0[sel], transfer[sel] = x0_blk, transfer_blk & mask_blk
    x_win[transfer] = x0[transfer]
    state.x0, state.transfer = x0, transfer


def _call_rule(transfer_fn, state: DecodeState, config: DecodeConfig, logits, mask_index, x_win, k, last):
    # A built-in rule (or a functools.partial of one, e.g. wide-in without its cap) takes our
    # seeded generator; upstream's functions do not.
    if getattr(transfer_fn, "func", transfer_fn) in BUILTIN_RULES:
        return transfer_fn(logits, config.temperature, config.remasking, mask_index, x_win, k, last,
                           generator=state.generator)
    return transfer_fn(logits, config.temperature, config.remasking, mask_index, x_win, k, last)


@torch.no_grad()
def generate(model, prompt: Union[torch.Tensor, Sequence[Sequence[int]]], steps: Optional[int] = 128,
             gen_length: int = 128, block_length: int = 128, temperature: float = 0.0,
             remasking: str = "low_confidence", mask_id: Optional[int] = None,
             threshold: Optional[float] = None, factor: Optional[float] = None,
             step_callback: Optional[Callable[[int], None]] = None, *, cache: str = "dual",
             callbacks: Optional[Sequence[DecodeCallback]] = None, loop_variant: str = "auto",
             attention_mask: Optional[torch.Tensor] = None, tokenizer=None,
             eos_id: Optional[int] = None, pad_id: Optional[int] = None, early_stop: bool = False,
             skip_done_rows: bool = True, seed: int = 0, use_upstream: bool = True,
             fast_dllm_path: Optional[str] = None, transfer_fn=None, batching: str = "static",
             batch_size: Optional[int] = None, on_answers: Optional[Callable[..., None]] = None
             ) -> GenerateOutput:
    """Fast-dLLM decoding with callbacks; upstream's argument names, order and defaults.

    Args:
        model: a mask predictor with ``forward(input_ids | inputs_embeds, past_key_values,
            use_cache, replace_position) -> .logits`` (upstream ``LLaDAModelLM`` or ours).
        prompt: (B, P) token ids, or a list of B id lists of any lengths (left-padded here).
        steps: total steps of the fixed schedule (used when ``threshold`` and ``factor`` are
            None); None means ``gen_length``. Must be a multiple of the number of blocks.
        gen_length, block_length: canvas length and semi-autoregressive block size.
        temperature, remasking, threshold: upstream's commit rule settings.
        mask_id: [MASK] id; None reads it from the model config (or ``tokenizer``).
        factor: upstream's factor rule (``get_transfer_index_dynamic``); when set it is the
            commit rule and ``threshold`` is not used, as upstream.
        step_callback: upstream's hook, called as ``step_callback(step_idx)`` after every step.
        cache: ``'none'``, ``'prefix'`` or ``'dual'``.
        callbacks: :class:`DecodeCallback` objects, called in order.
        loop_variant: ``'current'`` (today's upstream), ``'snapshot-2025-06'`` (the June-2025
            release: cached loops always run one cached step after the full one) or ``'auto'``
            (the found checkout's, else current); the resolved value is ``output.loop_variant``.
        attention_mask: (B, P) for an already left-padded prompt tensor.
        eos_id, pad_id: default from the model config / tokenizer.
        early_stop: close a row once its answer ended with EOS (fills the rest with EOS).
        skip_done_rows: cached and uncached forwards after a block's first compute only the rows
            still active (``DecodeConfig.skip_done_rows``); False computes every row, as upstream.
        seed: seeds the generator handed to callbacks (and our sampler when temperature > 0).
        use_upstream / fast_dllm_path: use a Fast-dLLM checkout's commit functions and loop
            variant when one is found (``FAST_DLLM_PATH`` or ``sys.path``).
        transfer_fn: override the commit rule in force (upstream's signature for that rule).
        batching: ``'static'`` (every prompt in one batch that moves block by block, upstream's
            way), ``'refill'`` (continuous batching, :mod:`.rows`: each row at its own pace, at
            most ``batch_size`` rows at once, a finished row refilled with the next prompt) or
            ``'auto'`` (refill where it gives the static batch's answers: :func:`resolve_batching`).
        batch_size: rows decoded at once with refill; None = every prompt.
        on_answers: called as ``on_answers(problems, sequences, nfe, stats)`` with the answers
            that are complete (rows of the output's fields, for prompts ``problems`` (R,)): at each
            hand-in with refill, so a caller can save them before the call ends; once at the end
            for a static batch.

    Returns a :class:`GenerateOutput`; ``x, nfe = generate(...)`` also works, as upstream.
    """
    config = DecodeConfig(gen_length=gen_length, block_length=block_length, steps=steps,
                          temperature=temperature, remasking=remasking, threshold=threshold,
                          factor=factor, cache=cache, loop_variant=loop_variant,
                          early_stop=early_stop, skip_done_rows=skip_done_rows, batching=batching)
    mask, eos, pad = resolve_special_ids(model, tokenizer, mask_id, eos_id, pad_id)
    upstream = None
    if use_upstream:
        from ..upstream import find_upstream

        upstream = find_upstream(fast_dllm_path)
    if transfer_fn is None:
        transfer_fn, _ = resolve_transfer_fn(upstream is not None, fast_dllm_path,
                                             rule="factor" if factor is not None else "threshold",
                                             upstream=upstream)
    variant = resolve_loop_variant(config.loop_variant, upstream)
    device = next(model.parameters()).device
    fill = pad if pad is not None else (eos if eos is not None else mask)
    ids, prompt_mask = _prepare_prompt(prompt, attention_mask, fill, device)
    N, P = ids.shape
    hooks = as_callback_list(callbacks)
    if step_callback is not None:  # upstream's hook runs after every other after_commit
        hooks = CallbackList(list(hooks) + [StepCallback(step_callback)])
    protocol = protocol_for(model)  # the model family, from its config
    mode = resolve_batching(config, model, hooks, upstream)
    if mode == "refill" and not protocol.supports_refill:
        if config.batching == "refill":
            raise ValueError(f"batching='refill' is not available for {type(model).__name__} "
                             f"({protocol.name} protocol); use batching='static' or 'auto'.")
        mode = "static"
    owner = hooks.commit_owner()
    if owner is not None:  # step 2c is the callback's, in place of upstream's rule
        transfer_fn = owner
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    B = N if (mode == "static" or batch_size is None) else min(batch_size, N)
    if prompt_mask is not None and not getattr(model, "supports_padding", False):
        logger.warning("Prompts of different lengths were left-padded, but %s may ignore the "
                       "attention mask (upstream LLaDAModelLM does): padded rows can differ from "
                       "decoding them alone. Use batch_size=1 for exact per-prompt results.",
                       type(model).__name__)

    # 1. Canvas: prompt, then gen_length masks.
    L = P + config.gen_length
    x = torch.full((B, L), mask, dtype=torch.long, device=device)
    x[:, :P] = ids[:B]
    full_mask = None
    if prompt_mask is not None:
        full_mask = torch.ones((B, L), dtype=torch.long, device=device)
        full_mask[:, :P] = prompt_mask[:B]
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    state = DecodeState(
        model=model, x=x, attention_mask=full_mask, prompt_width=P,
        prompt_lengths=(prompt_mask[:B].sum(1) if prompt_mask is not None
                        else torch.full((B,), P, device=device)),
        gen_length=config.gen_length, block_length=config.block_length, mask_id=mask,
        eos_id=eos, pad_id=pad, generator=generator, protocol=protocol,
        nfe=torch.zeros(B, dtype=torch.long, device=device),
        queries=torch.zeros(B, dtype=torch.long, device=device),
        finished=torch.zeros(B, dtype=torch.bool, device=device),
        problem=torch.arange(B, device=device),
    )
    hooks.reset()
    strategy = make_cache_strategy(config.cache, variant,
                                   protocol.replace_position_rows or _replace_position_rows(model, upstream),
                                   protocol.kv_seq_dim, protocol.min_cached_block_steps)
    # Never commit [MASK]; nor a dedicated [PAD] (LLaDA's pad *is* its EOS, which must stay).
    banned = sorted({mask} | ({pad} if pad is not None and pad != eos else set()))
    hooks.fire("on_init", state)
    if mode == "refill":
        loop = RefillLoop(state, hooks, strategy, config,
                          commit=lambda st, schedule, rows, row_logits=None: _commit(
                              st, transfer_fn, config, schedule, banned, rows, row_logits),
                          close_finished=_close_finished_rows, ids=ids, prompt_mask=prompt_mask,
                          on_answers=on_answers)
        loop.run()
        stats = dict(loop.stats)
        stats["model_calls"] = loop.calls
        out_mask = None
        if prompt_mask is not None:
            out_mask = torch.ones((N, L), dtype=torch.long, device=device)
            out_mask[:, :P] = prompt_mask
        return GenerateOutput(sequences=loop.sequences, nfe=loop.nfe, total_nfe=state.total_nfe,
                              prompt_width=P, attention_mask=out_mask, stats=stats,
                              loop_variant=variant, batching=mode)
    share = _run_static(state, hooks, strategy, config, transfer_fn, banned)
    stats = row_stats(state)
    stats["model_calls"] = share
    if on_answers is not None:
        on_answers(state.problem, state.x, state.nfe, stats)
    return GenerateOutput(sequences=state.x, nfe=state.nfe, total_nfe=state.total_nfe,
                          prompt_width=P, attention_mask=full_mask, stats=stats, loop_variant=variant,
                          batching=mode)


def _run_static(state: DecodeState, hooks: CallbackList, strategy, config: DecodeConfig, transfer_fn,
                banned) -> torch.Tensor:
    """Steps 2-3 for a static batch: every row moves through the blocks together. Returns each
    row's share of the model calls (B,)."""
    B, P, mask = state.batch_size, state.prompt_width, state.mask_id
    steps_per_block = config.resolved_steps // config.num_blocks
    # Hooks may revoke tokens, so a block can need more steps than it has masks; this bound is
    # never reached by the rule itself (it commits >= 1 token per step) and guards termination.
    max_block_steps = steps_per_block + 2 * config.block_length + strategy.min_block_steps + 1
    share = torch.zeros(B, dtype=torch.float64, device=state.x.device)  # each row's share of the calls
    for block in range(config.num_blocks):
        # 2a. Block bounds and schedule.
        state.block, state.block_step = block, 0
        state.block_start = P + block * config.block_length
        state.block_end = state.block_start + config.block_length
        hooks.fire("on_block_start", state)
        schedule = None
        if config.commit_rule == "schedule":
            block_mask = state.x[:, state.block_start:state.block_end] == mask
            schedule = num_transfer_schedule(block_mask, steps_per_block)  # (B, steps_per_block)
        while True:
            # 2b. One forward over the strategy's window. Rows whose block is done ride along
            # inactive: the forward does not count for them and hooks must leave them alone.
            state.window = strategy.window(state)
            state.active = ~state.finished & ((state.block_masks() > 0)
                                              | (state.block_step < strategy.min_block_steps))
            state.inputs_embeds, state.transient, state.transient_logits = None, None, None
            hooks.fire("before_forward", state)
            if state.transient is not None:
                inputs = _with_transient(state)
            elif state.inputs_embeds is not None:
                inputs = {"inputs_embeds": state.inputs_embeds}
            else:
                inputs = {"input_ids": state.window_view(state.x)}
            rows = None  # every row, unless some are done and the strategy may leave them out
            if (config.skip_done_rows and not bool(state.active.all()) and bool(state.active.any())
                    and strategy.can_skip_rows(state)):
                rows = state.active.nonzero().squeeze(1)  # (B_a,)
            logits = strategy.forward(state, inputs, rows)  # (B or B_a, W, V), or (., W + T, V)
            share += (1.0 / B) if rows is None else torch.zeros_like(share).index_fill_(
                0, rows, 1.0 / rows.numel())
            if rows is None:
                state.queries += logits.shape[1]
            else:  # the rows left out get zero logits; nothing reads them
                state.queries[rows] += logits.shape[1]
                full = logits.new_zeros((B,) + tuple(logits.shape[1:]))
                full[rows] = logits
                logits = full
            state.logits = logits
            if state.transient is not None:
                n = state.transient.embeds.shape[1]
                state.logits, state.transient_logits = state.logits[:, :-n], state.logits[:, -n:]
            state.logits = state.protocol.position_logits(state, state.logits)  # (B, W, V) per position
            state.inputs_embeds, state.transient = None, None
            state.nfe += state.active.long()
            state.total_nfe += 1
            hooks.fire("after_forward", state)
            # 2c. Commit; 2d. hooks may revoke.
            _commit(state, transfer_fn, config, schedule, banned, rows)
            state.revoked = None
            hooks.fire("after_commit", state)
            state.block_step += 1
            state.step += 1
            # 2e. Block done?
            remaining = state.block_masks().masked_fill(state.finished, 0)
            if state.block_step >= strategy.min_block_steps and not bool(remaining.any()):
                break
            if state.block_step >= max_block_steps:
                raise RuntimeError(
                    f"Block {block} did not finish in {max_block_steps} steps: a callback keeps "
                    "revoking tokens; a callback must not revoke a position forever.")
        # 2f. Block end.
        hooks.fire("on_block_end", state)
        if config.early_stop:
            _close_finished_rows(state)
            if bool(state.finished.all()):
                break
    # 3. Finish.
    state.logits = None
    hooks.fire("on_finish", state)
    return share
