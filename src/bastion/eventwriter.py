"""Store writes and event outputs off the event loop: one writer thread, one bounded queue.

The loop hands each processed batch (typed events, no JSON) to :meth:`EventWriter.offer`
and goes on; the writer thread turns them into their JSON form and writes the store and
the event outputs.  Above the writer's capacity the queue is full and whole batches are
shed: counted (``shed``), alerted by the agent, never silently lost; detection and
enforcement, which run on the loop before the hand-off, are unaffected.

The writer shares the interpreter lock with the loop.  ``share`` bounds its part of the
time while it has a backlog: after a write that took ``t`` seconds of its own CPU it
sleeps ``t * (1 / share - 1)`` (0.5: at most every other slice), so a flood sheds store
rows rather than slowing the loop that decides.  Alerts are not written here: they stay
on the loop, in order, with their hash chain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger("bastion.eventwriter")

T = TypeVar("T")


class EventWriter(Generic[T]):
    """A thread that calls ``write(batch)`` for each offered batch, in order."""

    def __init__(self, write: Callable[[Sequence[T]], None], *, max_items: int = 65536,
                 share: float = 0.5, name: str = "bastion-writer",
                 on_error: Callable[[Sequence[T], Exception], None] | None = None,
                 merge: Callable[[list[Sequence[T]]], Sequence[T]] | None = None,
                 merge_items: int = 0,
                 must_keep: Callable[[Sequence[T]], Sequence[T]] | None = None) -> None:
        """``on_error(batch, exc)``: a batch whose ``write`` raised (its items are lost:
        the owner counts them); the thread goes on.

        ``merge(batches)``: queued batches written as one (up to ``merge_items`` items,
        in order): one write of a backlog instead of many.  ``must_keep(batch)``: the
        items of a queued batch that :meth:`keep` may not evict (the rest of it may go
        to make room for kept items: counted in ``shed``)."""
        if max_items <= 0 or not 0.0 < share <= 1.0:
            raise ValueError(f"EventWriter: max_items must be > 0 and 0 < share <= 1 "
                             f"(got {max_items}, {share})")
        self._write = write
        self._on_error = on_error
        self.max_items = max_items
        self.reserve = max(1, max_items // 16)   # room beyond max_items for keep()
        self.share = share
        self._q: deque[Sequence[T]] = deque()
        self._queued = 0
        self._cv = threading.Condition()
        self._stop = False
        self._busy = False
        self.shed = 0           # items refused because the queue was full
        self.written = 0        # items handed to ``write``
        self.errors = 0         # batches whose ``write`` raised (logged, ``on_error``; goes on)
        self.failed = 0         # items of those batches
        self.kept_shed = 0      # items keep() could not queue (no room left to make)
        self._merge = merge
        self._merge_items = merge_items
        self._must_keep = must_keep
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    def offer(self, batch: Sequence[T]) -> bool:
        """Queue ``batch``; False (and counted in ``shed``) when the queue is full."""
        if not batch:
            return True
        with self._cv:
            if self._queued + len(batch) > self.max_items:
                self.shed += len(batch)
                return False
            self._q.append(batch)
            self._queued += len(batch)
            self._cv.notify()
        return True

    def keep(self, items: Sequence[T]) -> tuple[bool, int]:
        """Queue ``items`` of a batch :meth:`offer` just shed, whatever the queue holds,
        and take them out of ``shed`` (the events that raised a finding: their storage is
        never shed).  They take ``reserve`` items beyond ``max_items``; beyond that, with
        ``must_keep``, queued batches give up their other items, newest first (counted in
        ``shed``).  (queued, items evicted for them); not queued (counted in
        ``kept_shed``) only when no room can be made."""
        if not items:
            return True, 0
        evicted = 0
        with self._cv:
            limit = self.max_items + self.reserve
            if self._queued + len(items) > limit and self._must_keep is not None:
                evicted = self._evict(self._queued + len(items) - limit)
            if self._queued + len(items) > limit:
                self.kept_shed += len(items)
                return False, evicted   # beyond the reserve, nothing left to evict: counted
            self.shed -= len(items)
            self._q.append(items)
            self._queued += len(items)
            self._cv.notify()
        return True, evicted

    def _evict(self, need: int) -> int:
        """Make room for ``need`` items: queued batches, newest first, cut down to the
        items ``must_keep`` names (under ``_cv``); the number of items evicted."""
        assert self._must_keep is not None
        q = self._q
        evicted = 0
        for i in range(len(q) - 1, -1, -1):
            if need <= 0:
                break
            b = q[i]
            kept = self._must_keep(b)
            gone = len(b) - len(kept)
            if gone <= 0:
                continue
            if kept:
                q[i] = kept
            else:
                del q[i]
            self._queued -= gone
            self.shed += gone
            need -= gone
            evicted += gone
        return evicted

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stop:
                    self._busy = False
                    self._cv.wait()
                if not self._q:
                    self._busy = False
                    return
                batch = self._q.popleft()
                self._queued -= len(batch)
                if self._merge is not None and self._q and \
                        len(batch) + len(self._q[0]) <= self._merge_items:
                    parts = [batch]
                    size = len(batch)
                    while self._q and size + len(self._q[0]) <= self._merge_items:
                        nxt = self._q.popleft()
                        self._queued -= len(nxt)
                        size += len(nxt)
                        parts.append(nxt)
                    batch = self._merge(parts)
                self._busy = True
                backlog = bool(self._q)
            t0 = time.thread_time()
            try:
                self._write(batch)
            except Exception as exc:  # noqa: BLE001 - counted and logged; the writer must not die
                self.errors += 1
                self.failed += len(batch)
                log.exception("writing %d events failed", len(batch))
                if self._on_error is not None:
                    try:
                        self._on_error(batch, exc)
                    except Exception:  # noqa: BLE001 - the count above stands
                        log.exception("reporting a failed write failed")
            self.written += len(batch)
            if backlog and self.share < 1.0 and not self._stop:
                time.sleep((time.thread_time() - t0) * (1.0 / self.share - 1.0))

    def flush(self, timeout: float) -> bool:
        """Wait until every queued batch is written; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cv:
                if not self._q and not self._busy:
                    return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then stop the thread."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)


__all__ = ["EventWriter"]
