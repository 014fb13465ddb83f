"""The one event pump shared by run, record and learn."""

from __future__ import annotations

import threading
import time

from bastion.events import ExitEvent, Proc
from bastion.pump import EventPump, Source


def _ev(i: int) -> ExitEvent:
    return ExitEvent(time_ns=i, proc=Proc(pid=i, tid=i, ppid=1, uid=0, euid=0, gid=0, cgroup_id=0,
                                          comm="t"))


def _feed(batches: list[list[ExitEvent]]) -> Source:
    it = iter(batches)
    return Source("replay", lambda _t: next(it, None))


def test_ends_when_the_sensors_end_even_if_enforcement_rings_never_do() -> None:
    ring_polls = [0]

    def ring(_t: float) -> list[ExitEvent]:
        ring_polls[0] += 1
        return [_ev(100)] if ring_polls[0] == 2 else []

    got: list[tuple[str, int]] = []
    pump = EventPump([_feed([[_ev(1)], [], [_ev(2), _ev(3)]]),
                      Source("hips", ring, blocking=False)], interval_s=0.001)
    pump.run(threading.Event(), lambda s, b: got.extend((s.name, e.proc.pid) for e in b))
    assert ("replay", 1) in got and ("replay", 3) in got and ("hips", 100) in got
    assert ring_polls[0] >= 4   # drained every round and once more at the end


def test_stop_and_deadline_end_it_and_what_is_left_is_drained() -> None:
    stop = threading.Event()
    n = [0]

    def endless(_t: float) -> list[ExitEvent]:
        n[0] += 1
        return [_ev(n[0])]

    seen: list[int] = []

    def handle(_s: Source, b: list[ExitEvent]) -> None:
        seen.extend(e.proc.pid for e in b)
        if len(seen) >= 5:
            stop.set()

    EventPump([Source("s", endless)], interval_s=0.001).run(stop, handle)
    assert seen == list(range(1, 7))   # the 5th sets stop; one last drain after it
    t0 = time.monotonic()
    EventPump([Source("s", lambda _t: [])], interval_s=0.001).run(
        threading.Event(), lambda s, b: None, deadline=time.monotonic() + 0.05)
    assert time.monotonic() - t0 < 2


def test_ticks_are_called_each_round() -> None:
    ticks: list[float] = []
    EventPump([_feed([[], [], []])], interval_s=0.001).run(threading.Event(), lambda s, b: None,
                                                          tick=ticks.append)
    assert len(ticks) == 3
