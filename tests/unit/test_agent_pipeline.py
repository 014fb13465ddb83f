"""Issue 16.3: the agent's loop above capacity.

Each test runs ``Agent.run`` (its own thread) on a sensor that floods it:

* a store that stalls (another writer holds it; a slow disk) no longer stalls detection:
  a finding for an event after the flood is raised while the store write is still
  blocked; what the writer could not take is counted and alerted (never silent);
* ``status`` answers within 1 s through the control socket during the flood;
* memory stays bounded: the writer's queue never holds more than its bound, however
  long the flood.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pytest

from bastion.agent import Agent
from bastion.config import parse_policy
from bastion.control import request
from bastion.detect.engine import Engine, Finding
from bastion.events import Event, ExecEvent, FileEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.store import Store
from support.rules import EvilExec

pytestmark = pytest.mark.unit

T0 = 1_767_225_600 * 1_000_000_000
ACTOR = Proc(4242, 4242, 1, 1000, 1000, 1000, 1, "flood", exe="/usr/bin/flood")
EVIL = Proc(6666, 6666, 1, 0, 0, 0, 1, "evil", exe="/tmp/evil")


class _FloodSensor:
    """Hands out ``batches`` of chmod events as fast as it is polled, then one exec of
    /tmp/evil, then nothing (``[]``) until stopped."""

    name = "flood"
    attached: list[str] = []
    missing: list[str] = []

    def __init__(self, batches: int, size: int = 500) -> None:
        self.left = batches
        self.size = size
        self.sent = 0
        self.evil_sent = threading.Event()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def ring_fill(self) -> float:
        return 1.0 if self.left else 0.0

    def stats(self) -> dict[str, int]:
        return {"events": self.sent, "drops": 0}

    def poll(self, timeout_s: float) -> list[Event] | None:
        if self.left > 0:
            self.left -= 1
            t = T0 + self.sent * 1000
            self.sent += self.size
            return [FileEvent(t + i, ACTOR, op="chmod", path=f"/tmp/f{i % 7}", mode=0o644)
                    for i in range(self.size)]
        if not self.evil_sent.is_set():
            self.evil_sent.set()
            return [ExecEvent(T0 + 10**12, EVIL, filename="/tmp/evil", argv=("/tmp/evil",))]
        time.sleep(min(timeout_s, 0.01))
        return []


class _Recorder(Dispatcher):
    def __init__(self, procs: ProcessTable) -> None:
        super().__init__(procs)
        self.seen = threading.Event()

    def dispatch(self, f: Finding, now_ns: int) -> Any:
        if f.rule == EvilExec.name:
            self.seen.set()
        return super().dispatch(f, now_ns)


def _run(tmp_path: Path, sensor: _FloodSensor, *, writer_max: int = 50_000,
         socket: bool = False) -> tuple[Agent, Store, threading.Event, threading.Thread]:
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[sensor],
                  store=store, procs=procs, engine=Engine([EvilExec()]),
                  dispatcher=_Recorder(procs),
                  socket_path=tmp_path / "ctl.sock" if socket else None)
    agent.procs.seed = lambda proc=Path("/proc"): 0   # type: ignore[method-assign]
    agent.writer_max_events = writer_max
    stop = threading.Event()
    th = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    th.start()
    assert agent.ready.wait(10)
    return agent, store, stop, th


def test_a_stalled_store_does_not_stall_detection_and_sheds_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: flood chmods while the store cannot write (its lock held; a slow disk),
    then exec /tmp/evil.  Before: the loop wrote every batch itself and sat in the store
    write, so the exec was not even looked at until the store came back."""
    release = threading.Event()
    real = Store.add_events

    def stalled(self: Store, events: Sequence[Any], **kw: Any) -> None:
        release.wait(30)
        real(self, events, **kw)

    monkeypatch.setattr(Store, "add_events", stalled)
    sensor = _FloodSensor(batches=40)
    agent, store, stop, th = _run(tmp_path, sensor, writer_max=5_000)
    try:
        disp = agent.dispatcher
        assert isinstance(disp, _Recorder)
        assert disp.seen.wait(10), "the exec after the flood was not evaluated"
        assert not release.is_set()          # ... while the store write is still blocked
        st = agent.status()
        assert st["store"]["events_shed"] > 0
        # the bound, plus the reserve kept for events that raised a finding (never shed)
        assert st["store"]["events_queued"] <= 5_000 + 5_000 // 16
        assert st["store"]["events_not_stored"] >= st["store"]["events_shed"]
    finally:
        release.set()
        stop.set()
        th.join(30)
    assert not th.is_alive()
    try:   # the run's last health pass alerted the shed
        shed = [a.data for a in store.alerts(rule="bastion.store.events_shed")]
        stored = store.count_events()
    finally:
        store.close()
    assert shed and shed[0]["evidence"]["shed"] > 0
    total = sensor.sent + 1
    # every event is stored or counted as not stored (none silently lost)
    assert stored + agent.store_health.events_not_stored == total


def test_status_answers_within_a_second_during_a_flood(tmp_path: Path) -> None:
    sensor = _FloodSensor(batches=400)
    agent, store, stop, th = _run(tmp_path, sensor, socket=True)
    slow: list[float] = []
    answers = 0
    try:
        deadline = time.monotonic() + 20
        while sensor.left > 0 and time.monotonic() < deadline:
            t = time.monotonic()
            st = request(tmp_path / "ctl.sock", "status", timeout=5)
            took = time.monotonic() - t
            answers += 1
            if took > 1.0:
                slow.append(took)
            assert st["pid"] == os.getpid()
            time.sleep(0.05)
    finally:
        stop.set()
        th.join(30)
        store.close()
    assert answers >= 3, "the flood ended before status was asked: make it longer"
    assert not slow, f"status took more than 1 s: {slow}"


def test_the_writer_queue_is_bounded_whatever_the_flood(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood while the store is slow: the queue of events waiting for the store holds at
    most its bound (the memory an attacker can make the agent hold), the rest is shed."""
    real = Store.add_events

    def slow(self: Store, events: Sequence[Any], **kw: Any) -> None:
        time.sleep(0.05)
        real(self, events, **kw)

    monkeypatch.setattr(Store, "add_events", slow)
    sensor = _FloodSensor(batches=200)
    agent, store, stop, th = _run(tmp_path, sensor, writer_max=2_000)
    peak = 0
    try:
        deadline = time.monotonic() + 30
        while not sensor.evil_sent.is_set() and time.monotonic() < deadline:
            w = agent._writer
            if w is not None:
                peak = max(peak, w.queued)
            time.sleep(0.001)
        shed = agent._writer.shed if agent._writer is not None else 0
    finally:
        stop.set()
        th.join(30)
        store.close()
    assert sensor.evil_sent.is_set()
    assert 0 < peak <= 2_000 and shed > 0


def test_a_batch_the_writer_cannot_write_is_counted_and_alerted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug or a crafted value that makes row building raise (not a store error): the
    batch is counted as not stored and alerted once; the writer and the loop go on."""
    def broken(self: Store, events: Sequence[Any], **kw: Any) -> None:
        raise TypeError("crafted value")

    monkeypatch.setattr(Store, "add_events", broken)
    sensor = _FloodSensor(batches=5)
    agent, store, stop, th = _run(tmp_path, sensor)
    try:
        disp = agent.dispatcher
        assert isinstance(disp, _Recorder) and disp.seen.wait(10)
    finally:
        stop.set()
        th.join(30)
    try:
        errs = [a.data for a in store.alerts(rule="bastion.store.writer_error")]
    finally:
        store.close()
    assert agent.store_health.events_not_stored == sensor.sent + 1
    assert len(errs) == 1 and "crafted value" in errs[0]["title"]
