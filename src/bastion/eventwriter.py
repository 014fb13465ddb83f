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
                 give_up: Callable[[Sequence[T], int], tuple[Sequence[T], list[T]]] | None = None,
                 cut: Callable[[Sequence[T], int], Sequence[T]] | None = None) -> None:
        """``on_error(batch, exc)``: a batch whose ``write`` raised (its items are lost:
        the owner counts them); the thread goes on.

        ``merge(batches)``: queued batches written as one (up to ``merge_items`` items,
        in order): one write of a backlog instead of many.  ``give_up(batch, need)``: a
        queued batch without up to ``need`` of the items :meth:`keep` may evict, newest
        first: (what is left of it, the items given up); the others (rows of events that
        raised a high finding) are never given up.  Evicted items are counted in ``shed``.
        ``cut(items, n)``: the first ``n`` of ``items`` (as their kind: a batch keeps what it
        says of its items)."""
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
        self._give_up = give_up
        self._cut = cut
        self.evicted = 0        # items keep() evicted to make room (also in ``shed``)
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

    def keep(self, items: Sequence[T], *, max_evict: int | None = None,
             evicted: list[T] | None = None) -> tuple[int, int]:
        """Queue ``items`` of a batch :meth:`offer` just shed, whatever the queue holds,
        and take them out of ``shed`` (the events that raised a high finding: their
        storage is not shed).  They take ``reserve`` items beyond ``max_items``; beyond
        that, with ``give_up``, queued items are evicted, newest first, exactly as many
        as needed and at most ``max_evict`` (the caller's budget: None, no bound), each
        appended to ``evicted`` when given (counted in ``shed`` and ``evicted``).  What
        still does not fit (nothing evictable left, the budget spent) is not queued, the
        last items first (``cut(items, n)``: the first ``n``), counted in ``kept_shed``.
        (items queued, items evicted for them)."""
        if not items:
            return 0, 0
        gone = 0
        with self._cv:
            limit = self.max_items + self.reserve
            need = self._queued + len(items) - limit
            if need > 0 and self._give_up is not None:
                gone = self._evict(need if max_evict is None else min(need, max_evict),
                                   evicted)
            room = max(0, limit - self._queued)
            if room < len(items):
                self.kept_shed += len(items) - room    # no room made for them: counted
                if room == 0:
                    return 0, gone
                items = self._cut(items, room) if self._cut is not None else items[:room]
            self.shed -= len(items)
            self._q.append(items)
            self._queued += len(items)
            self._cv.notify()
        return len(items), gone

    def _evict(self, need: int, evicted: list[T] | None) -> int:
        """Make room for ``need`` items: queued batches, newest first, give up their
        evictable items, newest first, ``need`` in all when there are as many (under
        ``_cv``); the number of items evicted."""
        assert self._give_up is not None
        q = self._q
        done = 0
        for i in range(len(q) - 1, -1, -1):
            if done >= need:
                break
            b = q[i]
            rest, gone = self._give_up(b, need - done)
            if not gone:
                continue
            if rest:
                q[i] = rest
            else:
                del q[i]
            self._queued -= len(gone)
            self.shed += len(gone)
            self.evicted += len(gone)
            done += len(gone)
            if evicted is not None:
                evicted += gone
        return done

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
