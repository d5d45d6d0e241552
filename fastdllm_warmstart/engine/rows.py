"""Continuous batching: every row decodes at its own pace, and a finished row takes the next problem.

The static loop (:mod:`.loop`) moves the whole batch through a block together: a call is made as long
as any row of the block is unfinished, so the rows a warm start speeds up wait for the others, and
the batch's cost follows its slowest row. Here each row has its own block and block step:

1. Lay the first ``batch_size`` problems into the canvas (all prompts left-padded to one width, so
   block ``b`` sits at the same columns in every row); ``on_init``.
2. Each tick, while a row holds a problem:
   a. Rows entering a block: ``on_block_start`` (per block); the fixed schedule's counts.
   b. Group the rows by (block, block step). Each group is one step of the static loop for its
      rows: its ``before_forward`` hooks run with the group's window and ``active`` = its rows.
      Where no callback ``uses_block_step`` (and the commit rule is not the fixed schedule), the
      rows past a block's first step form one group: their windows and hook calls are the same.
   c. The forwards: the rows that open a block share a full forward, all other rows one cached
      forward (dual: each row replaces its own block's columns; prefix: one per block, its width
      depends on it; no cache: every row in one). A model with ``forward_packed`` (the embedded
      one) takes them all in one call, one pass over its weights; otherwise each is a call of its
      own, and a small one may wait a few ticks for more rows (``FILL``, ``PATIENCE``).
   d. Per group: ``after_forward``; the commit rule (one commit for the groups of a block and
      window: the rule is row by row); ``after_commit``.
   e. A row whose block is done (no mask left, and the strategy's minimum forwards ran):
      ``on_block_end`` (per block); early stop closes rows that ended with EOS.
   f. A row with no block left (or closed) hands in its answer (canvas row, NFE, per-row stats,
      its share of the calls; ``on_answers`` gets them at once, so a caller can save it) and takes the next problem from the queue: its prompt and [MASK]s
      are laid into the row, its cache rows are rewritten by its next full forward, the row's
      prior bookkeeping is cleared and ``on_refill`` lets callbacks set up the new problem.
3. ``on_finish``; outputs are indexed by problem.

Every row sees the forwards, windows and hook calls it would see in a static batch, so with a model
that ignores padding (its attention mask) and greedy commits each answer's tokens and NFE are those
of the static batch. A call's cost is shared equally among the rows it computed
(``stats["model_calls"]``; they sum to ``total_nfe``, the number of model calls).
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional

import torch

from ..config import DecodeConfig
from .callbacks import CallbackList
from .state import DecodeState, TransientInputs, row_stats
from .transfer import num_transfer_schedule

logger = logging.getLogger(__name__)


# Devices where ``auto`` may refill. A call's cost on an accelerator hardly depends on how many rows
# it carries, so fewer, fuller calls pay; on the CPU a forward costs per query position computed
# (done rows are skipped anyway), and refill, which pads every prompt to the run's longest and runs
# hooks per group, was measured slower than the static batch (median of 5 interleaved passes,
# batch 16, 300 problems: cold 14.3 s vs 13.3 s; results/bench_batching.json).
AUTO_REFILL_DEVICES = frozenset({"cuda"})


def _device_type(model) -> str:
    try:
        return next(model.parameters()).device.type
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def resolve_batching(config: DecodeConfig, model, hooks: CallbackList, upstream=None) -> str:
    """``static`` or ``refill`` for ``config.batching``.

    ``auto`` picks refill on an accelerator (``AUTO_REFILL_DEVICES``; on the CPU the static batch
    was measured faster) where each answer stays the static batch's: the model ignores padding
    (``supports_padding``; upstream's LLaDA without a mask does not, so a row's answer would depend
    on the prompts it is padded with), greedy commits (sampled draws follow the batch's order),
    every callback ``supports_refill``, and for the dual cache a model that replaces different
    columns in each row (``supports_row_windows``). ``refill`` asks for it anyway: a callback
    without refill support, or a dual cache without per-row windows, is an error; a model that
    ignores padding only gets a warning."""
    if config.batching == "static":
        return "static"
    pads = bool(getattr(model, "supports_padding", False))
    if upstream is not None and upstream.model_class is not None and isinstance(model, upstream.model_class):
        pads = False
    row_windows = config.cache != "dual" or bool(getattr(model, "supports_row_windows", False))
    unsupported = [type(cb).__name__ for cb in hooks if not getattr(cb, "supports_refill", False)]
    greedy = config.temperature == 0 and config.remasking == "low_confidence"
    if config.batching == "auto":
        fits = _device_type(model) in AUTO_REFILL_DEVICES
        return "refill" if (fits and pads and row_windows and greedy and not unsupported) else "static"
    if unsupported:
        raise ValueError(f"batching='refill' needs callbacks that support it; {', '.join(unsupported)} "
                         "does not (supports_refill). Use batching='static' or 'auto'.")
    if not row_windows:
        raise ValueError(f"batching='refill' with the dual cache needs a model whose replace_position "
                         f"may select different columns per row; {type(model).__name__} does not "
                         "(supports_row_windows). Use batching='static', or cache 'prefix' / 'none'.")
    if not pads:
        logger.warning("batching='refill' with %s, which may ignore the attention mask: a row's "
                       "answer can depend on the prompts it is padded with.", type(model).__name__)
    return "refill"


# A call runs once it would carry this share of the live rows (or is the tick's largest call, or
# one of its rows has waited PATIENCE ticks): fewer, fuller calls for the rows opening a block.
FILL = 0.5
PATIENCE = 8


def _row_block_masks(state: DecodeState, block: torch.Tensor) -> torch.Tensor:
    """(B,) [MASK]s left in each row's own block ``block`` (B,)."""
    cols = torch.arange(state.x.shape[1], device=state.x.device)
    start = (state.prompt_width + block * state.block_length).view(-1, 1)
    inside = (cols >= start) & (cols < start + state.block_length)  # (B, L)
    return ((state.x == state.mask_id) & inside).sum(dim=1)


class _Group:
    """Rows at one (block, block step): one step of the static loop for them."""

    def __init__(self, block: int, block_step: int, rows: torch.Tensor, batch_size: int):
        self.block, self.block_step, self.rows = block, block_step, rows
        self.active = torch.zeros(batch_size, dtype=torch.bool, device=rows.device)  # (B,)
        self.active[rows] = True
        self.window = (0, 0)
        self.inputs_embeds: Optional[torch.Tensor] = None
        self.transient: Optional[TransientInputs] = None


class RefillLoop:
    """The continuous-batching schedule for one :func:`~.loop.generate` call (see the module doc)."""

    def __init__(self, state: DecodeState, hooks, strategy, config, commit, close_finished,
                 ids: torch.Tensor, prompt_mask: Optional[torch.Tensor],
                 on_answers: Optional[Callable[..., None]] = None):
        self.state, self.hooks, self.strategy, self.config = state, hooks, strategy, config
        self.on_answers = on_answers  # called at each hand-in (see :func:`~.loop.generate`)
        self._commit, self._close_finished = commit, close_finished
        self.ids, self.prompt_mask = ids, prompt_mask  # (N, P) every problem's prompt
        B, dev = state.batch_size, state.x.device
        N = ids.shape[0]
        self.next_problem = B
        self.row_block = torch.zeros(B, dtype=torch.long, device=dev)
        self.row_step = torch.zeros(B, dtype=torch.long, device=dev)
        self.entering = torch.ones(B, dtype=torch.bool, device=dev)  # on_block_start still due
        self.share = torch.zeros(B, dtype=torch.float64, device=dev)
        self.waited = torch.zeros(B, dtype=torch.long, device=dev)  # ticks a row's call was put off
        self.fill, self.patience = FILL, PATIENCE
        # A model with forward_packed takes the tick's full and cached forwards in one call.
        self.packed = bool(getattr(state.model, "supports_packed_calls", False))
        # Rows past a block's first step share their hook events where no callback reads the
        # exact step and the commit rule does not (the fixed schedule does): the hooks' per-group
        # work over the whole batch was the largest host cost of a verifier's run (profiled).
        self.merge_steps = (config.commit_rule != "schedule"
                            and not any(getattr(cb, "uses_block_step", True) for cb in hooks))
        # Whether anything but the commit reads a call's logits as the batch's (B, W, V)
        # (``state.logits``): a hook after the forward or the commit, or a callback that owns the
        # commit. Where nothing does, the commit reads each call's own (R, W, V) output and the
        # batch-wide copy (_spread) is skipped.
        self.spread = (hooks.handles("after_forward", "after_commit")
                       or hooks.commit_owner() is not None)
        self.schedule: Optional[torch.Tensor] = None  # (B, steps_per_block) fixed schedule
        self.steps_per_block = config.resolved_steps // config.num_blocks
        self.max_block_steps = (self.steps_per_block + 2 * config.block_length
                                + strategy.min_block_steps + 1)
        L = state.x.shape[1]
        self.sequences = torch.zeros((N, L), dtype=torch.long, device=dev)
        self.nfe = torch.zeros(N, dtype=torch.long, device=dev)
        self.calls = torch.zeros(N, dtype=torch.float64, device=dev)
        self.stats: Dict[str, torch.Tensor] = {}
        # Per call slot of a tick: the (B, W, V) logits tensor and the rows it holds (_spread).
        self._logit_buffers: Dict[tuple, tuple] = {}

    # -- 2a-2b. groups ----------------------------------------------------------------------
    def _enter(self, block: int, block_step: int, rows: torch.Tensor,
               active: Optional[torch.Tensor] = None) -> None:
        """Point the state's scalar loop position at one group, ``active`` at its rows (the
        group's own (B,) mask when given: made once per group, not once per event)."""
        s, cfg = self.state, self.config
        s.block, s.block_step = block, block_step
        s.block_start = s.prompt_width + block * cfg.block_length
        s.block_end = s.block_start + cfg.block_length
        if active is None:
            active = torch.zeros(s.batch_size, dtype=torch.bool, device=s.x.device)
            active[rows] = True
        s.active = active.clone()  # a hook may change state.active; the group's mask stays

    def _split(self, keys: torch.Tensor, live: torch.Tensor) -> List[tuple]:
        """(key, rows) for each distinct value of ``keys`` (B,) among ``live`` rows, in order."""
        out = []
        for key in torch.unique(keys[live]).tolist():
            out.append((key, (live & (keys == key)).nonzero().squeeze(1)))
        return out

    def _start_blocks(self, live: torch.Tensor) -> None:
        s = self.state
        for block, rows in self._split(self.row_block, live & self.entering):
            self._enter(block, 0, rows)
            self.hooks.fire("on_block_start", s)
            if self.config.commit_rule == "schedule":
                block_mask = s.x[rows, s.block_start:s.block_end] == s.mask_id
                if self.schedule is None:
                    self.schedule = torch.zeros((s.batch_size, self.steps_per_block), dtype=torch.long,
                                                device=s.x.device)
                self.schedule[rows] = num_transfer_schedule(block_mask, self.steps_per_block)
        self.entering &= ~live

    def _groups(self, live: torch.Tensor) -> List[_Group]:
        """The live rows by (block, block step); with ``merge_steps`` by (block, first step or
        not), a group past the first step reporting its rows' smallest step."""
        n_steps = self.max_block_steps + 1
        step = self.row_step.clamp(max=1) if self.merge_steps else self.row_step
        key = self.row_block * n_steps + step
        groups = []
        for k, rows in self._split(key, live):
            block_step = k % n_steps
            if self.merge_steps and block_step > 0:
                block_step = int(self.row_step[rows].min())
            groups.append(_Group(k // n_steps, block_step, rows, self.state.batch_size))
        return groups

    def _pick(self, groups: List[_Group], live: torch.Tensor) -> List[_Group]:
        """The groups whose call runs this tick: the largest call, and every call that carries at
        least ``fill`` of the live rows or has a row that waited ``patience`` ticks. The others
        wait (they compute nothing and their NFE does not change): the rows opening a block
        gather into fewer full forwards instead of one small one per tick."""
        if self.packed:  # every forward of the tick goes into one call anyway
            return groups
        calls: Dict[object, List[_Group]] = {}
        for g in groups:
            calls.setdefault(self.strategy.call_key(g.block, g.block_step), []).append(g)
        sizes = {k: sum(g.rows.numel() for g in members) for k, members in calls.items()}
        largest = max(sizes, key=lambda k: sizes[k])
        need = self.fill * int(live.sum())
        picked = []
        for key, members in calls.items():
            rows = torch.cat([g.rows for g in members])
            if key == largest or sizes[key] >= need or int(self.waited[rows].max()) >= self.patience:
                picked.extend(members)
                self.waited[rows] = 0
            else:
                self.waited[rows] += 1
        return picked

    def _commit_sets(self, groups: List[_Group]) -> List[List[_Group]]:
        """Groups one commit can serve: the same block and window (and, for the fixed schedule,
        whose counts depend on the step, the same block step)."""
        sets: Dict[tuple, List[_Group]] = {}
        for g in groups:
            step = g.block_step if self.config.commit_rule == "schedule" else None
            sets.setdefault((g.block, g.window, step), []).append(g)
        return list(sets.values())

    # -- 2c. calls --------------------------------------------------------------------------
    def _inputs(self, groups: List[_Group]) -> dict:
        """The model inputs of one call, ``(B, W, ...)`` with each group's rows filled in."""
        s = self.state
        B = s.batch_size
        W = groups[0].window[1] - groups[0].window[0]
        with_embeds = any(g.inputs_embeds is not None or g.transient is not None for g in groups)
        if not with_embeds:
            ids = torch.full((B, W), s.mask_id, dtype=torch.long, device=s.x.device)
            for g in groups:
                ids[g.rows] = s.x[g.rows, g.window[0]:g.window[1]]
            return {"input_ids": ids}
        table = s.model.get_input_embeddings().weight  # (V, C)
        embeds = torch.zeros((B, W, table.shape[1]), dtype=table.dtype, device=s.x.device)
        for g in groups:
            part = (g.inputs_embeds[g.rows] if g.inputs_embeds is not None
                    else s.embed(s.x[g.rows, g.window[0]:g.window[1]]))  # (R_g, W, C)
            embeds[g.rows] = part.to(embeds.dtype)
        with_transient = [g for g in groups if g.transient is not None]
        if not with_transient:
            return {"inputs_embeds": embeds}
        # Groups without transient queries get neutral ones: queries that see only themselves,
        # keys no canvas query sees (its canvas predictions are those of a forward without them).
        ref = with_transient[0].transient
        T, L = ref.embeds.shape[1], s.x.shape[1]
        t_emb = s.embed(torch.full((B, T), s.mask_id, dtype=torch.long, device=s.x.device)).to(embeds.dtype)
        t_pos = torch.zeros((B, T), dtype=ref.position_ids.dtype, device=s.x.device)
        att = torch.zeros((B, W + T, L + T), dtype=torch.bool, device=s.x.device)
        att[:, :W, :L] = True
        att[:, W:, L:] = torch.eye(T, dtype=torch.bool, device=s.x.device)
        for g in with_transient:
            tr = g.transient
            if tr.embeds.shape[1] != T:
                raise ValueError("Callbacks gave groups of one call different numbers of transient "
                                 "queries; use batching='static' with this callback.")
            t_emb[g.rows] = tr.embeds[g.rows].to(t_emb.dtype)
            t_pos[g.rows] = tr.position_ids.expand(B, T)[g.rows].to(t_pos.dtype)
            att[g.rows] = tr.attention.expand(B, W + T, L + T)[g.rows]
        return {"inputs_embeds": torch.cat((embeds, t_emb), dim=1), "position_ids": t_pos,
                "attention_bias": att.unsqueeze(1), "n_transient": T}

    def _run_calls(self, calls: List[List[_Group]]) -> List[tuple]:
        """Run the calls (each a list of groups sharing a call key): one model call each, or one
        call for all where the model takes several forwards at once (``forward_packed``). Returns
        (logits (B, W, V) or None where nothing needs them spread, transient logits (B, T, V) or
        None, the call's own logits (R, W, V), its rows (R,)) per call."""
        s = self.state
        L = s.x.shape[1]
        prepared = []
        for groups in calls:
            rows = torch.cat([g.rows for g in groups])
            starts = torch.cat([s.prompt_width + self.row_block[g.rows] * self.config.block_length
                                for g in groups])
            inputs = self._inputs(groups)
            full = groups[0].window == (0, L) and self.strategy.cached
            prepared.append((rows, starts, inputs, full))
        if self.packed and len(prepared) > 1:
            kwargs = [self.strategy.rows_call(s, inputs, rows, starts, full)
                      for rows, starts, inputs, full in prepared]
            outs = s.model.forward_packed(kwargs)
            logits = [self.strategy.rows_output(s, out, rows, full)
                      for out, (rows, _, _, full) in zip(outs, prepared)]
            s.total_nfe += 1
            every = torch.cat([p[0] for p in prepared])
            self.share[every] += 1.0 / every.numel()
        else:
            logits = []
            for rows, starts, inputs, full in prepared:
                logits.append(self.strategy.forward_rows(s, inputs, rows, starts, full))  # (R, W (+T), V)
                s.total_nfe += 1
                self.share[rows] += 1.0 / rows.numel()
        results = []
        seen: Dict[tuple, int] = {}
        for part, (rows, _, inputs, _) in zip(logits, prepared):
            s.queries[rows] += part.shape[1]
            n = inputs.get("n_transient", 0)
            if not (self.spread or n):
                results.append((None, None, part, rows))
                continue
            shape = tuple(part.shape[1:])
            slot = (shape, seen.setdefault(shape, 0))  # the tick's first, second... call of a shape
            seen[shape] += 1
            out = self._spread(slot, part, rows)  # (B, W (+T), V)
            results.append((out[:, :-n], out[:, -n:], part, rows) if n else (out, None, part, rows))
        return results

    def _row_logits(self, part: torch.Tensor, call_rows: torch.Tensor, rows: torch.Tensor) -> tuple:
        """``(part, pos)`` for :func:`~.loop._commit`: where the commit's ``rows`` sit among the
        call's rows ``call_rows`` (None when they are the same, in the same order)."""
        if rows.numel() == call_rows.numel() and bool((rows == call_rows).all()):
            return part, None
        where = torch.full((self.state.batch_size,), -1, dtype=torch.long, device=rows.device)
        where[call_rows] = torch.arange(call_rows.numel(), device=rows.device)
        return part, where[rows]

    def _spread(self, slot: tuple, part: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The call's logits ``part`` (R, W, V) as the batch's (B, W, V), zeros in the rows the call
        did not compute (nothing reads them). The tensor is kept for the calls of the next ticks
        with the same ``slot`` (their shape, and which call of that shape in the tick): only the
        rows written now are copied and only the rows written last time and not now are zeroed,
        instead of a fresh (B, W, V) tensor per call (profiled: the copy was refill's largest host
        cost in a cold run). Hooks read it during their event; one that keeps logits for later
        must clone them."""
        B = self.state.batch_size
        shape = (B,) + tuple(part.shape[1:])
        buf, written = self._logit_buffers.get(slot, (None, None))
        if buf is None or buf.shape != shape or buf.dtype != part.dtype or buf.device != part.device:
            buf, written = part.new_zeros(shape), torch.zeros(B, dtype=torch.bool, device=part.device)
        now = torch.zeros(B, dtype=torch.bool, device=part.device)
        now[rows] = True
        stale = written & ~now
        if bool(stale.any()):
            buf[stale] = 0
        buf.index_copy_(0, rows, part)
        self._logit_buffers[slot] = (buf, now)
        return buf

    # -- 2e-2f. block ends, answers, refills ------------------------------------------------
    def _end_blocks(self, stepped: torch.Tensor) -> None:
        s, cfg = self.state, self.config
        left = _row_block_masks(s, self.row_block).masked_fill(s.finished, 0)
        done = stepped & (self.row_step >= self.strategy.min_block_steps) & (left == 0)
        stuck = stepped & ~done & (self.row_step >= self.max_block_steps)
        if bool(stuck.any()):
            raise RuntimeError(
                f"A block did not finish in {self.max_block_steps} steps: a callback keeps revoking "
                "tokens; a callback must not revoke a position forever.")
        for block, rows in self._split(self.row_block, done):
            self._enter(block, int(self.row_step[rows[0]]), rows)
            self.hooks.fire("on_block_end", s)
            if cfg.early_stop:
                self._close_finished(s, rows)
        self.row_block[done] += 1
        self.row_step[done] = 0
        self.entering |= done
        answered = (s.problem >= 0) & ((self.row_block >= cfg.num_blocks) | s.finished)
        if bool(answered.any()):
            self._hand_in(answered.nonzero().squeeze(1))

    def _hand_in(self, rows: torch.Tensor) -> None:
        """Store the rows' answers by problem, then refill them from the queue (or empty them)."""
        s = self.state
        problems = s.problem[rows]
        self.sequences[problems] = s.x[rows]
        self.nfe[problems] = s.nfe[rows]
        self.calls[problems] = self.share[rows]
        for key, value in row_stats(s).items():
            if key not in self.stats:
                self.stats[key] = torch.zeros((self.ids.shape[0],) + tuple(value.shape[1:]),
                                              dtype=value.dtype, device=value.device)
            self.stats[key][problems] = value[rows]
        if self.on_answers is not None:
            stats = {key: value[problems] for key, value in self.stats.items()}
            stats["model_calls"] = self.calls[problems]
            self.on_answers(problems, self.sequences[problems], self.nfe[problems], stats)
        N = self.ids.shape[0]
        take = min(rows.numel(), N - self.next_problem)
        refill, empty = rows[:take], rows[take:]
        s.problem[empty] = -1
        if take:
            self._refill(refill, torch.arange(self.next_problem, self.next_problem + take,
                                              device=s.x.device))
            self.next_problem += take

    def _refill(self, rows: torch.Tensor, problems: torch.Tensor) -> None:
        s = self.state
        P = s.prompt_width
        s.x[rows, :P] = self.ids[problems]
        s.x[rows, P:] = s.mask_id
        if self.prompt_mask is not None:
            s.attention_mask[rows, :P] = self.prompt_mask[problems]
            s.prompt_lengths[rows] = self.prompt_mask[problems].sum(1).to(s.prompt_lengths.dtype)
        s.problem[rows] = problems
        s.nfe[rows] = 0
        s.queries[rows] = 0
        s.finished[rows] = False
        self.share[rows] = 0
        self.row_block[rows] = 0
        self.row_step[rows] = 0
        self.entering[rows] = True
        if s.prior_ids is not None:
            s.prior_ids[rows] = -1
        for name in ("injected", "confirmed", "revisions"):
            value = getattr(s, name)
            if value is not None:
                value[rows] = 0
        for value in s.extras.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == s.batch_size:
                value[rows] = 0
        s.refilled = rows
        s.active = torch.zeros(s.batch_size, dtype=torch.bool, device=s.x.device)
        s.active[rows] = True
        self.hooks.fire("on_refill", s)
        s.refilled = None

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        s = self.state
        while True:
            live = s.problem >= 0
            if not bool(live.any()):
                break
            # 2a. Rows entering a block.
            self._start_blocks(live)
            # 2b. The calls worth making this tick, then each of their groups' before_forward.
            groups = self._pick(self._groups(live), live)
            for g in groups:
                self._enter(g.block, g.block_step, g.rows, g.active)
                g.window = s.window = self.strategy.window(s)
                s.inputs_embeds, s.transient, s.transient_logits = None, None, None
                self.hooks.fire("before_forward", s)
                g.inputs_embeds, g.transient = s.inputs_embeds, s.transient
            s.inputs_embeds, s.transient = None, None
            # 2c. One call per call key; 2d. each group's commit.
            calls: Dict[object, List[_Group]] = {}
            for g in groups:
                calls.setdefault(self.strategy.call_key(g.block, g.block_step), []).append(g)
            for members, (logits, transient_logits, part, call_rows) in zip(
                    calls.values(), self._run_calls(list(calls.values()))):
                for same in self._commit_sets(members):
                    for g in same:
                        self._enter(g.block, g.block_step, g.rows, g.active)
                        s.window = g.window
                        s.logits, s.transient_logits = logits, transient_logits
                        s.nfe[g.rows] += 1
                        self.hooks.fire("after_forward", s)
                    # One commit for groups of one block and window: the rule is row by row.
                    rows = torch.cat([g.rows for g in same])
                    self._commit(s, self.schedule, rows,
                                 None if logits is not None else self._row_logits(part, call_rows, rows))
                    x0, transfer = s.x0, s.transfer
                    for g in same:
                        self._enter(g.block, g.block_step, g.rows, g.active)
                        s.window = g.window
                        s.logits, s.transient_logits = logits, transient_logits
                        s.x0, s.transfer, s.revoked = x0, transfer, None
                        self.hooks.fire("after_commit", s)
                        self.row_step[g.rows] += 1
                        s.step += 1
            # 2e-2f. Blocks done, answers handed in, rows refilled.
            stepped = torch.zeros_like(live)
            for g in groups:
                stepped |= g.active
            self._end_blocks(stepped)
        s.logits, s.transient_logits = None, None
        self.hooks.fire("on_finish", s)
