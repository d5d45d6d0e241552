"""Cache strategies: what each forward of a block computes, and what it may reuse.

They reproduce exactly what upstream Fast-dLLM recomputes:

* ``none``   every step runs the whole canvas.
* ``prefix`` step 0 runs the whole canvas and keeps the keys/values of everything before the
  block; later steps run the block *and everything after it* against that prefix cache.
* ``dual``   step 0 runs the whole canvas and keeps all keys/values; later steps run only the
  block, replacing its keys/values in the cache (``replace_position``, a ``(B, L)`` mask as
  today's upstream passes it; ``(1, L)`` for the June-2025 model, which reads the columns of all
  rows together), the suffix stays cached.

With ``rows`` (a ``(B_a,)`` index of the rows a forward still counts for; the loop passes it
when ``skip_done_rows`` is on and some row's block is done), a forward computes only those rows:
their inputs, attention mask, cache rows and ``replace_position`` rows are taken, and the
keys/values a dual-cache forward wrote go back into the full cache. The full forward that opens a
block always runs every row (``can_skip_rows``), so the cache always covers the whole batch.

A continuous batch (:mod:`fastdllm_warmstart.engine.rows`) has rows in different blocks at once.
``call_key`` says which of its groups one model call can serve, and ``forward_rows`` runs a call
for some rows, each at its own block: the full forward for the rows that open a block (their
keys/values go into a canvas-wide ``(B, H, L, Dh)`` cache, row by row), one cached call for every
other row (dual: each row replaces its own block's columns, ``replace_position`` row by row;
prefix: one call per block, since the window's width depends on it; none: one call for all).

``min_block_steps`` is the number of forwards a block costs even when step 0 fills it: 1 in
today's upstream (its cached loops check for remaining masks before each cached forward), and 2
for the cached strategies of the June-2025 snapshot, which always ran one cached step after step 0.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from .state import DecodeState

SNAPSHOT_2025_06 = "snapshot-2025-06"


def seq_index(dim: int, cols: slice, rows: Any = None) -> tuple:
    """Index of ``cols`` along the sequence dimension ``dim`` of a cache tensor (and of ``rows``)."""
    lead = (slice(None) if rows is None else rows,) + (slice(None),) * (dim - 1)
    return lead + (cols,)


class CacheStrategy:
    name = "base"
    cached = False  # True: forwards after step 0 reuse step 0's keys/values

    def __init__(self, loop_variant: str = "current", kv_seq_dim: int = 2,
                 min_cached_block_steps: int = 1) -> None:
        # The June-2025 cached loops always ran one cached forward after the full one (so does
        # Dream's loop: the model protocol's ``min_cached_block_steps``).
        snapshot = 2 if loop_variant == SNAPSHOT_2025_06 else 1
        self.min_block_steps = max(snapshot, min_cached_block_steps) if self.cached else 1
        self.kv_seq_dim = kv_seq_dim  # the sequence dimension of the model's keys/values

    def reset(self) -> None:
        pass

    def window(self, state: DecodeState) -> Tuple[int, int]:
        raise NotImplementedError

    def forward(self, state: DecodeState, inputs: dict, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of the window, ``(B, W, V)``; with ``rows``, of those rows only, ``(B_a, W, V)``."""
        raise NotImplementedError

    def can_skip_rows(self, state: DecodeState) -> bool:
        """Whether this forward may leave rows out: never the block's first forward of a cached
        strategy (it fills the cache for every row)."""
        return not self.cached or state.block_step > 0

    def call_key(self, block: int, block_step: int):
        """Groups of a continuous batch with equal keys share one model call."""
        return "full" if (self.cached and block_step == 0) else ("cached", block)

    def forward_rows(self, state: DecodeState, inputs: dict, rows: torch.Tensor, starts: torch.Tensor,
                     full: bool) -> torch.Tensor:
        """Continuous batch: logits ``(R, W, V)`` of ``rows`` (R,), whose inputs are rows of the
        ``(B, W, ...)`` ``inputs``; ``starts`` (R,) each row's block start, ``full`` the block's first
        forward (the window is the whole canvas). :meth:`rows_call` and :meth:`rows_output` are its
        halves, for a model that takes several forwards in one call (``forward_packed``)."""
        call = self.rows_call(state, inputs, rows, starts, full)
        return self.rows_output(state, _model_call(state, call), rows, full)

    def rows_call(self, state: DecodeState, inputs: dict, rows: torch.Tensor, starts: torch.Tensor,
                  full: bool) -> dict:
        """The model's keyword arguments for :meth:`forward_rows`."""
        raise NotImplementedError

    def rows_output(self, state: DecodeState, out, rows: torch.Tensor, full: bool) -> torch.Tensor:
        """Keep what the call's output adds to the cache; return its logits."""
        return out.logits

    def _store_rows(self, past, rows: torch.Tensor, batch: int) -> None:
        """Write the rows' canvas-wide keys/values into the batch's cache (allocated on first use;
        taken as it is when the call computed every row in order)."""
        if _every_row(rows, batch):
            self.past = [tuple(layer) for layer in past]
            return
        if self.past is None or self.past[0][0].shape[0] != batch:
            self.past = [tuple(t.new_zeros((batch,) + tuple(t.shape[1:])) for t in layer) for layer in past]
        for full, part in zip(self.past, past):
            for f, p in zip(full, part):
                f[rows] = p

    @staticmethod
    def _call(state: DecodeState, inputs: dict, rows: Optional[torch.Tensor] = None, **extra: Any):
        return _model_call(state, CacheStrategy._kwargs(state, inputs, rows, **extra))

    @staticmethod
    def _kwargs(state: DecodeState, inputs: dict, rows: Optional[torch.Tensor] = None, **extra: Any) -> dict:
        if state.attention_mask is not None:
            extra["attention_mask"] = state.attention_mask
        if rows is not None:
            batch = state.x.shape[0]
            inputs = {k: take_rows(v, rows, batch) for k, v in inputs.items()}
            extra = {k: take_rows(v, rows, batch) for k, v in extra.items()}
        return {**inputs, **extra}


class NoCache(CacheStrategy):
    name = "none"

    def window(self, state: DecodeState) -> Tuple[int, int]:
        return 0, state.x.shape[1]

    def forward(self, state: DecodeState, inputs: dict, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        # use_cache passed explicitly: upstream reads config.use_cache otherwise, which newer
        # transformers releases no longer define on every config.
        return self._call(state, inputs, rows, use_cache=False).logits  # (B, L, V)

    def call_key(self, block: int, block_step: int):
        return "all"  # every window is the whole canvas

    def rows_call(self, state, inputs, rows, starts, full):
        return self._kwargs(state, inputs, rows, use_cache=False)  # logits (R, L, V)


class PrefixCache(CacheStrategy):
    name = "prefix"
    cached = True

    def __init__(self, loop_variant: str = "current", kv_seq_dim: int = 2,
                 min_cached_block_steps: int = 1) -> None:
        super().__init__(loop_variant, kv_seq_dim, min_cached_block_steps)
        self.past: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None

    def reset(self) -> None:
        self.past = None

    def window(self, state: DecodeState) -> Tuple[int, int]:
        start = 0 if state.block_step == 0 else state.block_start
        return start, state.x.shape[1]

    def forward(self, state: DecodeState, inputs: dict, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        if state.block_step == 0:
            out = self._call(state, inputs, use_cache=True)
            # Keep only the keys/values before the block (the prompt and finished blocks).
            before = seq_index(self.kv_seq_dim, slice(0, state.block_start))
            self.past = [tuple(t[before] for t in layer) for layer in out.past_key_values]
            return out.logits  # (B, L, V)
        past = self.past if rows is None else [tuple(t[rows] for t in layer) for layer in self.past]
        out = self._call(state, inputs, rows, past_key_values=past, use_cache=True)
        return out.logits  # (B, L - block_start, V)

    def rows_call(self, state, inputs, rows, starts, full):
        if full:  # logits (R, L, V); rows_output keeps the keys/values
            return self._kwargs(state, inputs, rows, use_cache=True)
        start = int(starts[0])  # call_key: one block per cached call; logits (R, L - start, V)
        before = seq_index(self.kv_seq_dim, slice(0, start),
                           None if _every_row(rows, state.x.shape[0]) else rows)
        past = [tuple(t[before] for t in layer) for layer in self.past]
        return self._kwargs(state, inputs, rows, past_key_values=past, use_cache=False)

    def rows_output(self, state, out, rows, full):
        if full:
            self._store_rows(out.past_key_values, rows, state.x.shape[0])
        return out.logits


class DualCache(CacheStrategy):
    name = "dual"
    cached = True

    def __init__(self, loop_variant: str = "current", replace_position_rows: str = "batch",
                 kv_seq_dim: int = 2, min_cached_block_steps: int = 1) -> None:
        super().__init__(loop_variant, kv_seq_dim, min_cached_block_steps)
        if replace_position_rows not in ("batch", "shared"):
            raise ValueError(f"replace_position_rows={replace_position_rows!r}: use 'batch' or 'shared'.")
        self.replace_position_rows = replace_position_rows
        self.past: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None
        self.replace_position: Optional[torch.Tensor] = None

    def reset(self) -> None:
        self.past = None
        self.replace_position = None

    def window(self, state: DecodeState) -> Tuple[int, int]:
        if state.block_step == 0:
            return 0, state.x.shape[1]
        return state.block_start, state.block_end

    def forward(self, state: DecodeState, inputs: dict, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        if state.block_step == 0:
            out = self._call(state, inputs, use_cache=True)
            self.past = out.past_key_values
            # Blocks sit at the same columns in every (left-padded) row. Models derived from
            # newer Fast-dLLM replace each row from its own mask row, so every row gets one;
            # the June-2025 model pools the columns of all rows and needs a single row.
            n_rows = state.x.shape[0] if self.replace_position_rows == "batch" else 1
            self.replace_position = torch.zeros((n_rows, state.x.shape[1]), dtype=torch.bool,
                                                device=state.x.device)
            self.replace_position[:, state.block_start:state.block_end] = True
            return out.logits  # (B, L, V)
        if rows is None:
            out = self._call(state, inputs, past_key_values=self.past, use_cache=True,
                             replace_position=self.replace_position)
            if out.past_key_values is not None:
                self.past = out.past_key_values  # upstream updates in place; ours returns new tensors
            return out.logits  # (B, block_length, V)
        past = [tuple(t[rows] for t in layer) for layer in self.past]  # copies of the rows
        out = self._call(state, inputs, rows, past_key_values=past, use_cache=True,
                         replace_position=self.replace_position)
        # The rows' updated keys/values (returned, or written in place into ``past`` by
        # upstream's model) go back into the full cache; only the block's columns changed.
        new = out.past_key_values if out.past_key_values is not None else past
        cols = slice(state.block_start, state.block_end)
        dst, src = seq_index(self.kv_seq_dim, cols, rows), seq_index(self.kv_seq_dim, cols)
        for full_layer, row_layer in zip(self.past, new):
            for full, part in zip(full_layer, row_layer):
                full[dst] = part[src]
        return out.logits  # (B_a, block_length, V)

    def call_key(self, block: int, block_step: int):
        return "full" if block_step == 0 else "cached"  # every cached window is one block wide

    def rows_call(self, state, inputs, rows, starts, full):
        if full:  # logits (R, L, V); rows_output keeps the keys/values
            return self._kwargs(state, inputs, rows, use_cache=True)
        B, L = state.x.shape
        cols = torch.arange(L, device=state.x.device)
        start = torch.zeros(B, dtype=torch.long, device=state.x.device)
        start[rows] = starts
        replace = (cols >= start.view(-1, 1)) & (cols < start.view(-1, 1) + state.block_length)  # (B, L)
        every = _every_row(rows, B)
        own = not every and getattr(state.model, "supports_past_rows", False)  # model takes the rows
        past = self.past if every or own else [tuple(t[rows] for t in layer) for layer in self.past]
        kwargs = self._kwargs(state, inputs, rows, past_key_values=past, use_cache=True,
                              replace_position=replace)  # logits (R, block_length, V)
        return {**kwargs, "past_rows": rows} if own else kwargs

    def rows_output(self, state, out, rows, full):
        if full:
            self._store_rows(out.past_key_values, rows, state.x.shape[0])
        # A cached call's keys/values are not kept: they differ from the cache only in each row's
        # block columns, and every later forward of that block replaces those columns with its own
        # before attending (the next block opens with a full forward). Copying them back was
        # refill's largest cache cost (profiled).
        return out.logits


def _model_call(state: DecodeState, kwargs: dict):
    """One forward through the model family's protocol (``state.protocol``)."""
    return state.protocol.call(state.model, kwargs)


def _every_row(rows: torch.Tensor, batch: int) -> bool:
    """Whether ``rows`` is every row of the batch, in order (0, 1, ..., batch - 1)."""
    return rows.numel() == batch and bool((rows == torch.arange(batch, device=rows.device)).all())


def take_rows(value: Any, rows: torch.Tensor, batch: int) -> Any:
    """``value[rows]`` for a batch-first tensor of ``batch`` rows; anything else as it is (a
    ``(1, L)`` shared ``replace_position``, ``n_transient``, flags)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value[rows]
    return value


CACHE_STRATEGIES = {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}


def make_cache_strategy(name: str, loop_variant: str = "current",
                        replace_position_rows: str = "batch", kv_seq_dim: int = 2,
                        min_cached_block_steps: int = 1) -> CacheStrategy:
    """The strategy for cache mode ``name`` as the given upstream loop variant runs it
    (``kv_seq_dim`` and ``min_cached_block_steps`` come from the model's protocol)."""
    if name not in CACHE_STRATEGIES:
        raise ValueError(f"Unknown cache mode {name!r}; choose one of {', '.join(CACHE_STRATEGIES)}.")
    if name == "dual":
        return DualCache(loop_variant, replace_position_rows, kv_seq_dim, min_cached_block_steps)
    return CACHE_STRATEGIES[name](loop_variant, kv_seq_dim, min_cached_block_steps)
