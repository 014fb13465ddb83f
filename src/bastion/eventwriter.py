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
                 on_error: Callable[[Sequence[T], Exception], None] | None = None) -> None:
        """``on_error(batch, exc)``: a batch whose ``write`` raised (its items are lost:
        the owner counts them); the thread goes on."""
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

    def keep(self, items: Sequence[T]) -> None:
        """Queue ``items`` of a batch :meth:`offer` just shed, whatever the queue holds,
        and take them out of ``shed`` (the events that raised a finding: their storage is
        never shed while ``reserve`` items beyond ``max_items`` hold them)."""
        if not items:
            return
        with self._cv:
            if self._queued + len(items) > self.max_items + self.reserve:
                return      # beyond the reserve too: they stay shed (counted)
            self.shed -= len(items)
            self._q.append(items)
            self._queued += len(items)
            self._cv.notify()

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
