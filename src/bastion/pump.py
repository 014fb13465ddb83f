"""The one event pump: ``run``, ``record`` and ``learn`` drain their sources here.

A :class:`Source` is anything that yields batches of events — the kernel
sensor, a replay, the HIPS and quarantine enforcement rings, the BPF-load
guard — with, optionally, how one of its events becomes a finding.  The
pump polls them round-robin (blocking sources share the poll interval,
non-blocking ones are drained each round), hands every non-empty batch to
the caller's handler, calls a periodic tick, and stops at the caller's stop
event, at a deadline, or when every source reached its end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from bastion.detect.engine import Finding
from bastion.events import Event


@dataclass
class Source:
    """One event source: ``poll(timeout_s)`` returns a batch, ``[]``, or ``None`` at its end.

    ``blocking`` sources may wait up to their share of the poll interval, and the
    pump ends when all of them ended; non-blocking ones are drained each round;
    ``findings`` turns one of its events into a finding (enforcement records
    are decisions already taken: each is reported as an alert)."""

    name: str
    poll: Callable[[float], list[Event] | None]
    blocking: bool = True
    findings: Callable[[Event], Finding | None] | None = None
    done: bool = False


Handler = Callable[[Source, list[Event]], None]


class EventPump:
    """Drains its sources until stopped; owns no source (callers open and close them)."""

    def __init__(self, sources: Sequence[Source] = (), interval_s: float = 0.02,
                 idle_factor: int = 4) -> None:
        """``interval_s``: the poll interval while events flow; after empty rounds the
        wait doubles up to ``idle_factor`` times it (an idle agent wakes less), and the
        first event brings it back (the kernel ring absorbs what arrives meanwhile)."""
        self.sources = list(sources)
        self.interval_s = interval_s
        self.idle_factor = max(1, idle_factor)
        self._slowdown = 1

    def add(self, source: Source) -> None:
        self.sources.append(source)

    def step(self, handle: Handler, *, wait: bool = True) -> bool:
        """One round over every source; False once every source has ended."""
        blocking = [s for s in self.sources if s.blocking and not s.done]
        share = self.interval_s * self._slowdown / len(blocking) if wait and blocking else 0.0
        busy = False
        for s in self.sources:
            if s.done:
                continue
            batch = s.poll(share if s.blocking else 0.0)
            if batch is None:
                s.done = True
                continue
            if batch:
                busy = True
                handle(s, batch)
        self._slowdown = 1 if busy else min(self.idle_factor, self._slowdown * 2)
        # the blocking sources (sensors, replays) drive the pump; the non-blocking ones
        # (enforcement rings) are drained alongside and never end it on their own
        primary = [s for s in self.sources if s.blocking] or self.sources
        return not all(s.done for s in primary) if primary else False

    def run(self, stop: threading.Event, handle: Handler, *,
            tick: Callable[[float], None] | None = None, deadline: float | None = None) -> None:
        """Pump until ``stop`` is set, the monotonic ``deadline`` passes, or every source
        ended; then drain what is left without waiting, so nothing seen is lost."""
        while not stop.is_set():
            if not self.step(handle):
                break
            now = time.monotonic()
            if tick is not None:
                tick(now)
            if deadline is not None and now >= deadline:
                break
        self.step(handle, wait=False)


__all__ = ["EventPump", "Handler", "Source"]
