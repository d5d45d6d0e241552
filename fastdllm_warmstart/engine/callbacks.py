"""Decoding callbacks: small classes with named no-op methods, called in registration order.

The loop calls, per generation::

    on_init                      # may replace the all-[MASK] canvas (warm start)
    for each block:
        on_block_start
        repeat:
            before_forward       # may set state.inputs_embeds for the window
            after_forward        # state.logits holds the window's logits
            after_commit         # state.transfer holds what was committed; may remask
        on_block_end
        [on_refill]              # continuous batch: a finished row took the next problem
    on_finish

Stateful callbacks reset their state in ``reset()``; the loop calls it before ``on_init``.

One callback per run may also *own the commit* (``owns_commit = True``, e.g. APD's
``fastdllm_warmstart.apd``): the loop then calls its :meth:`DecodeCallback.commit` at step 2c
instead of upstream's threshold / factor / schedule rule.

In a continuous batch (``batching="refill"``) rows advance at their own pace: each event fires
once per group of rows in the same block and block step (``state.active`` marks the group; where
no callback ``uses_block_step``, the rows past the first step of a block form one group, which
reports its smallest step), and a
row whose answer is done receives the next problem: the loop lays its prompt and [MASK]s into the
canvas, clears the row in the prior bookkeeping (``prior_ids`` -1, ``injected`` / ``confirmed``
False, ``revisions`` 0, every ``(B, ...)`` tensor in ``extras`` zero), then fires ``on_refill``
with ``state.refilled`` the rows' indices and ``state.problem`` their problems; the row's
``on_block_start`` follows. A callback that keeps per-row state does for those rows what
``on_init`` does for all, and says so with ``supports_refill = True``; the loop keeps the static
batch with any callback that does not.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from .state import DecodeState

EVENTS = ("on_init", "on_block_start", "before_forward", "after_forward", "after_commit",
          "on_block_end", "on_refill", "on_finish")


class DecodeCallback:
    """Base class: override the events you need; every method is a no-op here."""

    # True once the callback handles a continuous batch: per-row state only, set up again for the
    # rows ``on_refill`` announces, and nothing of a row left out of ``state.active`` changed.
    supports_refill = False
    # False when the per-step events (before_forward, after_forward, after_commit) read
    # ``state.block_step`` at most to tell a block's first forward (0) from later ones: then a
    # continuous batch may serve rows at different later steps of one block in one event.
    uses_block_step = True
    # True for the one callback that decides each step's commits itself (:meth:`commit`).
    owns_commit = False

    def reset(self) -> None:
        pass

    def commit(self, state: DecodeState, logits, mask_index, x, rows):
        """Only for ``owns_commit``: the step's commit among the block's columns, in place of
        upstream's rule. ``logits`` (R, Wb, V) the block's columns of the rows ``rows`` ((R,) long,
        None = every row), [MASK]/[PAD] already kept from winning; ``mask_index`` / ``x`` (R, Wb).
        Returns ``(x0, transfer)``, both (R, Wb): proposed tokens and the positions to commit."""
        raise NotImplementedError(f"{type(self).__name__} sets owns_commit but has no commit().")

    def on_init(self, state: DecodeState) -> None:
        pass

    def on_block_start(self, state: DecodeState) -> None:
        pass

    def before_forward(self, state: DecodeState) -> None:
        pass

    def after_forward(self, state: DecodeState) -> None:
        pass

    def after_commit(self, state: DecodeState) -> None:
        pass

    def on_block_end(self, state: DecodeState) -> None:
        pass

    def on_refill(self, state: DecodeState) -> None:
        pass

    def on_finish(self, state: DecodeState) -> None:
        pass


class CallbackList:
    """Dispatches each event to the callbacks in order; skips callbacks that do not override it."""

    def __init__(self, callbacks: Optional[Iterable[DecodeCallback]] = None):
        self.callbacks: List[DecodeCallback] = []
        for cb in callbacks or ():
            self.add(cb)
        self._handlers = {}
        self._rebuild()

    def add(self, callback: DecodeCallback) -> None:
        if not isinstance(callback, DecodeCallback):
            raise TypeError(f"Callbacks must subclass DecodeCallback; got {type(callback).__name__}.")
        self.callbacks.append(callback)
        self._rebuild()

    def _rebuild(self) -> None:
        # Only callbacks that override an event are called for it: the hot path of a plain run
        # (no callbacks, or callbacks that ignore per-step events) costs one empty loop.
        self._handlers = {
            event: [getattr(cb, event) for cb in self.callbacks
                    if getattr(type(cb), event) is not getattr(DecodeCallback, event)]
            for event in EVENTS
        }

    def handles(self, *events: str) -> bool:
        """Whether any callback overrides one of ``events``."""
        return any(self._handlers[event] for event in events)

    def __len__(self) -> int:
        return len(self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def reset(self) -> None:
        for cb in self.callbacks:
            cb.reset()

    def commit_owner(self) -> Optional[DecodeCallback]:
        """The callback that owns the commit (``owns_commit``), None when upstream's rule decides;
        two such callbacks in one run are refused."""
        owners = [cb for cb in self.callbacks if cb.owns_commit]
        if len(owners) > 1:
            raise ValueError("Only one callback may own the commit; got "
                             f"{', '.join(type(cb).__name__ for cb in owners)}.")
        return owners[0] if owners else None

    def fire(self, event: str, state: DecodeState) -> None:
        for handler in self._handlers[event]:
            handler(state)


class EventRecorder(DecodeCallback):
    """Records ``(event, block, block_step)`` for every event (for tests and debugging)."""

    supports_refill = True

    def __init__(self) -> None:
        self.events: List[tuple] = []

    def reset(self) -> None:
        self.events = []

    def _record(self, name: str, state: DecodeState) -> None:
        self.events.append((name, state.block, state.block_step))


def _make_recorder(name: str):
    def method(self, state: DecodeState) -> None:
        self._record(name, state)
    method.__name__ = name
    return method


for _event in EVENTS:
    setattr(EventRecorder, _event, _make_recorder(_event))


def as_callback_list(callbacks: Optional[Sequence[DecodeCallback]]) -> CallbackList:
    if isinstance(callbacks, CallbackList):
        return callbacks
    return CallbackList(callbacks)
