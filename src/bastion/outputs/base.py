"""Outputs: where events and alerts go besides the store.

An :class:`Output` is anything with a ``name``, ``write(batch)`` and
``close()``; ``write`` may block, be slow or raise.  The :class:`OutputManager`
gives every output its own bounded queue and worker thread, so the agent's
loop only ever appends to a deque: ``publish_event`` / ``publish_alert``
never block.  A record that finds its output's queue full is dropped and
counted; :meth:`OutputManager.new_drops` tells the agent how many were lost
since it last asked, so it can raise a health alert.

Records are ``(kind, data)`` pairs: ``kind`` is ``"event"`` (the event JSON
form, :func:`bastion.events.to_json`) or ``"alert"`` (the dispatcher's alert
dict).  Alerts go to every output; events only to outputs added with
``events=True``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

log = logging.getLogger("bastion.outputs")

Kind = Literal["event", "alert"]
Record = tuple[Kind, dict[str, Any]]

DEFAULT_QUEUE = 10_000
BATCH_MAX = 512


class Output(Protocol):
    """One destination.  ``write`` is called from the output's own worker thread
    with 1..BATCH_MAX records in publish order; it may block or raise (the
    batch then counts as failed and the worker goes on with the next one)."""

    name: str

    def write(self, batch: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


@dataclass
class OutputStats:
    sent: int = 0        # records written
    dropped: int = 0     # records refused because the queue was full
    errors: int = 0      # write() calls that raised
    failed: int = 0      # records in those calls

    def as_dict(self, queued: int) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "failed": self.failed, "queued": queued}


@dataclass
class _Lane:
    """One output, its queue and its worker.  Only the publishing thread
    appends and counts drops; only the worker pops and counts sent/errors."""

    output: Output
    capacity: int
    events: bool
    queue: deque[Record] = field(default_factory=deque)
    wake: threading.Event = field(default_factory=threading.Event)
    stats: OutputStats = field(default_factory=OutputStats)
    thread: threading.Thread | None = None
    reported_drops: int = 0
    last_error_log: float = 0.0

    def offer(self, rec: Record) -> None:
        if len(self.queue) >= self.capacity:
            self.stats.dropped += 1
            return
        self.queue.append(rec)
        if not self.wake.is_set():
            self.wake.set()


class OutputManager:
    """Owns one bounded queue and one worker thread per output.

    Call :meth:`add` for each output, :meth:`start` once, then publish from
    the agent's loop (one thread).  :meth:`close` drains what it can within
    ``timeout`` seconds and closes every output.
    """

    def __init__(self) -> None:
        self._lanes: list[_Lane] = []
        self._event_lanes: list[_Lane] = []
        self._stop = threading.Event()
        self._started = False

    def add(self, output: Output, *, queue: int = DEFAULT_QUEUE, events: bool = True) -> None:
        if self._started:
            raise RuntimeError("OutputManager.add after start")
        if queue < 1:
            raise ValueError("queue must be at least 1")
        if any(lane.output.name == output.name for lane in self._lanes):
            raise ValueError(f"two outputs named {output.name!r}")
        lane = _Lane(output=output, capacity=queue, events=events)
        self._lanes.append(lane)
        if events:
            self._event_lanes.append(lane)

    @property
    def names(self) -> list[str]:
        return [lane.output.name for lane in self._lanes]

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            t = threading.Thread(target=self._work, args=(lane,), daemon=True,
                                 name=f"bastion-output-{lane.output.name}")
            lane.thread = t
            t.start()

    # ---- the publishing side (agent loop; never blocks) ---------------------------

    @property
    def wants_events(self) -> bool:
        """Does any output take events (not only alerts)?  If none, no event JSON is built for them."""
        return bool(self._event_lanes)

    def publish_event(self, ev_json: dict[str, Any]) -> None:
        rec: Record = ("event", ev_json)
        for lane in self._event_lanes:
            lane.offer(rec)

    def publish_alert(self, alert: dict[str, Any]) -> None:
        rec: Record = ("alert", alert)
        for lane in self._lanes:
            lane.offer(rec)

    def stats(self) -> dict[str, dict[str, int]]:
        return {lane.output.name: lane.stats.as_dict(len(lane.queue)) for lane in self._lanes}

    def dropped_total(self) -> int:
        return sum(lane.stats.dropped for lane in self._lanes)

    def new_drops(self) -> dict[str, int]:
        """Drops per output since the previous call (only outputs with new drops)."""
        out: dict[str, int] = {}
        for lane in self._lanes:
            d = lane.stats.dropped
            if d > lane.reported_drops:
                out[lane.output.name] = d - lane.reported_drops
                lane.reported_drops = d
        return out

    # ---- the worker side ------------------------------------------------------------

    def _work(self, lane: _Lane) -> None:
        q = lane.queue
        while True:
            if not q:
                if self._stop.is_set():
                    return
                lane.wake.wait(0.1)
                lane.wake.clear()
                continue
            n = min(len(q), BATCH_MAX)
            batch = [q.popleft() for _ in range(n)]
            try:
                lane.output.write(batch)
            except Exception as exc:  # an output's failure must not end its worker
                lane.stats.errors += 1
                lane.stats.failed += n
                now = time.monotonic()
                if now - lane.last_error_log >= 10.0:
                    lane.last_error_log = now
                    log.warning("output %s: write failed (%d records lost, %d errors so far): %s",
                                lane.output.name, n, lane.stats.errors, exc)
            else:
                lane.stats.sent += n

    def close(self, timeout: float = 5.0) -> dict[str, dict[str, int]]:
        """Let workers drain for up to ``timeout`` s in all, close the outputs, and
        return the final stats.  A worker stuck in ``write`` is left behind (it is
        a daemon thread); its output is not closed under it."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            lane.wake.set()
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
            if lane.thread is None or not lane.thread.is_alive():
                try:
                    lane.output.close()
                except Exception as exc:
                    log.warning("output %s: close failed: %s", lane.output.name, exc)
            else:
                log.warning("output %s: still busy after %.1fs; %d records not delivered",
                            lane.output.name, timeout, len(lane.queue))
        return self.stats()


__all__ = ["Output", "OutputManager", "OutputStats", "Record", "Kind", "DEFAULT_QUEUE", "BATCH_MAX"]
