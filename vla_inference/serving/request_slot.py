"""One-in-flight, one-pending backpressure between request callbacks and the single inference worker.

A policy server that falls behind should run the newest observation, not a queue of stale ones:
the slot holds at most one item being processed (``in_flight``) and at most one waiting
(``pending``). A newer ``offer`` replaces the waiting item and hands it back, so the caller answers
it SUPERSEDED.

Ownership rule (what makes "every request answered exactly once" checkable): every offered item
comes back exactly once, through one of

* ``take`` (the worker runs it, then calls ``finish``),
* ``offer`` (it was superseded by a newer item before it started),
* ``close`` (it never started; the node answers it NOT_READY).

``offer`` on a closed slot raises ``SlotClosedError`` and keeps nothing, so the caller still owns
(and answers) that item. Items that are already in flight when ``close`` runs are not returned: the
worker finishes and answers them.
"""
from __future__ import annotations

import threading
import time
from typing import Generic, List, Optional, TypeVar

Item = TypeVar("Item")


class SlotClosedError(RuntimeError):
    """``offer`` after ``close``: the item was not stored and is still the caller's to answer."""


class RequestSlot(Generic[Item]):
    """Thread-safe; any number of offering threads, exactly one worker calling ``take``/``finish``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: Optional[Item] = None
        self._has_pending = False
        self._in_flight: Optional[Item] = None
        self._has_in_flight = False
        self._closed = False

    def offer(self, item: Item) -> Optional[Item]:
        """Store ``item`` as pending; return the pending item it replaced (to answer SUPERSEDED), if any."""
        with self._cond:
            if self._closed:
                raise SlotClosedError("the request slot is closed")
            superseded = self._pending if self._has_pending else None
            self._pending, self._has_pending = item, True
            self._cond.notify_all()
            return superseded

    def take(self, timeout: Optional[float] = None) -> Optional[Item]:
        """Move the pending item in flight and return it; None on timeout or once closed.

        The worker must ``finish`` the previous item first: taking a second one would break the
        one-in-flight bound, so that raises ``RuntimeError``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._has_in_flight:
                raise RuntimeError("take() while an item is in flight: call finish() first")
            while not self._has_pending and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closed:
                return None
            item = self._pending
            self._pending, self._has_pending = None, False
            self._in_flight, self._has_in_flight = item, True
            return item

    def finish(self) -> None:
        """Mark the in-flight item done (after its response was sent)."""
        with self._cond:
            if not self._has_in_flight:
                raise RuntimeError("finish() with no item in flight")
            self._in_flight, self._has_in_flight = None, False
            self._cond.notify_all()

    def close(self) -> List[Item]:
        """Refuse further offers, wake the worker, and return the items that never started."""
        with self._cond:
            self._closed = True
            never_started = [self._pending] if self._has_pending else []
            self._pending, self._has_pending = None, False
            self._cond.notify_all()
            return never_started

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until nothing is in flight; False on timeout (for an orderly deactivate)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._has_in_flight, timeout)

    @property
    def in_flight(self) -> Optional[Item]:
        with self._cond:
            return self._in_flight

    @property
    def pending(self) -> Optional[Item]:
        with self._cond:
            return self._pending

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed
