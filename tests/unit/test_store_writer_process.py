"""Issue 16.3: the store's event rows in a writer process of their own.

* the packing between the agent and the writer process gives back the same events;
* an attack event interleaved in a flood, while the writer process cannot keep up
  (stopped: its pipe fills, the queue fills, batches are shed), still raises its alert,
  and its row is stored: what is shed is only storage of benign events, counted;
* a writer process that is killed is restarted and alerted (high), and storage goes on;
  never a silent stop.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bastion.agent import Agent
from bastion.config import parse_policy
from bastion.containers import Container
from bastion.detect.engine import Engine
from bastion.events import Event, ExecEvent, FileEvent, NetEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.store import Store
from bastion.store.eventproc import pack, unpack
from support.rules import EvilExec

pytestmark = pytest.mark.unit

T0 = 1_767_225_600 * 1_000_000_000
ACTOR = Proc(4242, 4242, 1, 1000, 1000, 1000, 1, "flood", exe="/usr/bin/flood")
EVIL = Proc(6666, 6666, 1, 0, 0, 0, 1, "evil", exe="/tmp/evil")


def test_packing_gives_back_the_same_events() -> None:
    ctr = Container(runtime="docker", id="a" * 64, verified=True, cgroup="/docker/" + "a" * 64)
    boxed = Proc(7, 8, 1, 0, 0, 0, 99, "c\udcff", exe="/bin/sh", container=ctr)
    evs: list[Event] = [
        FileEvent(T0, ACTOR, op="chmod", path="/tmp/f", mode=0o644),
        FileEvent(T0 + 1, ACTOR, True, op="rename", path="/a", path2="/b\udcfe", sensitive="cloud"),
        ExecEvent(T0 + 2, boxed, argv=("sh", "-c", "x"), env=("LD_PRELOAD=/x",), filename="/bin/sh"),
        NetEvent(T0 + 3, EVIL, op="connect", family="inet", daddr="10.0.0.1", dport=4444),
    ]
    back = unpack(pack(evs))
    assert [b.event for b in back] == evs
    assert [b.n for b in back] == [1, 1, 1, 1]
    assert back[2].event.proc.container == ctr


class _Sensor:
    """Floods chmods by ACTOR; ``attack_at`` (batch numbers) carry one exec of /tmp/evil
    in the middle of the batch; ``hold`` pauses the flood until set."""

    name = "flood"
    attached: list[str] = []
    missing: list[str] = []

    def __init__(self, batches: int, size: int = 500, attack_at: tuple[int, ...] = (),
                 distinct: bool = False) -> None:
        self.distinct = distinct   # a new name for every chmod (nothing to coalesce)
        self.left = batches
        self.size = size
        self.attack_at = attack_at
        self.sent = 0
        self.batch_no = 0
        self.hold = threading.Event()
        self.hold.set()
        self.done = threading.Event()

    def open(self) -> None: ...
    def close(self) -> None: ...
    def ring_fill(self) -> float:
        return 0.0

    def stats(self) -> dict[str, int]:
        return {"events": self.sent, "drops": 0}

    def poll(self, timeout_s: float) -> list[Event] | None:
        if self.left <= 0 or not self.hold.is_set():
            if self.left <= 0:
                self.done.set()
            time.sleep(min(timeout_s, 0.01))
            return []
        self.left -= 1
        t = T0 + self.sent * 1000
        out: list[Event] = [FileEvent(t + i, ACTOR, op="chmod", path=(
            f"/tmp/flood/{self.sent + i}" if self.distinct else f"/tmp/f{i % 7}"),
            mode=0o644) for i in range(self.size)]
        if self.batch_no in self.attack_at:
            out.insert(self.size // 2, ExecEvent(t + self.size // 2, EVIL, filename="/tmp/evil",
                                                 argv=("/tmp/evil", str(self.batch_no))))
        self.batch_no += 1
        self.sent += len(out)
        return out


def _agent(tmp_path: Path, sensor: _Sensor, writer_max: int, stall_s: float | None = None
           ) -> tuple[Agent, threading.Event, threading.Thread]:
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[sensor],
                  store=store, procs=procs, engine=Engine([EvilExec()]),
                  dispatcher=Dispatcher(procs), store_process=True)
    agent.procs.seed = lambda proc=Path("/proc"): 0   # type: ignore[method-assign]
    agent.writer_max_events = writer_max
    if stall_s is not None:
        agent.writer_stall_s = stall_s
    stop = threading.Event()
    th = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    th.start()
    assert agent.ready.wait(30)
    assert agent._store_proc is not None, "the writer process did not start"
    return agent, stop, th


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_an_attack_event_inside_a_flood_alerts_and_is_stored_only_benign_shed(
        tmp_path: Path) -> None:
    """Attack: flood chmods so the store falls behind, with an exec of /tmp/evil in the
    middle of flood batches.  The writer process is stopped (SIGSTOP: a slow disk, a
    stalled writer) so its pipe and queue fill and batches are shed.  The exec must still
    raise its alert, and its row must be stored: shedding drops only benign rows,
    counted.  Before (the thread writer, PR 16.3 first step): the whole batch with the
    attack event in it was shed, the attack's row lost with the benign ones."""
    # distinct names: the store coalesces exact repeats, so a flood of them no longer fills
    # the stopped writer's pipe (s15); one that cannot be coalesced does
    sensor = _Sensor(batches=120, attack_at=(60, 90), distinct=True)
    sensor.hold.clear()
    agent, stop, th = _agent(tmp_path, sensor, writer_max=2_000)
    sp = agent._store_proc
    assert sp is not None and sp.pid is not None
    child = sp.pid
    os.kill(child, signal.SIGSTOP)
    try:
        sensor.hold.set()
        assert sensor.done.wait(30)
        _wait(lambda: agent.summary.events >= sensor.sent, 30, "the loop to see every event")
        assert agent.summary.alerts >= 2   # both attack execs alerted while storage was stuck
        assert sp.shed > 0                 # ... and storage was shed meanwhile
    finally:
        os.kill(child, signal.SIGCONT)
    assert sp.flush(30)
    stop.set()
    th.join(60)
    assert not th.is_alive()
    store = Store.open(tmp_path / "db")
    try:
        evil_rows = [r.data for r in store.events(types=["exec"])]
        stored = store.count_event_facts()
        alerts = [a.data for a in store.alerts(rule=EvilExec.name)]
        shed_alerts = [a.data for a in store.alerts(rule="bastion.store.events_shed")]
    finally:
        store.close()
    assert len(alerts) == 2
    assert sorted(r["argv"][1] for r in evil_rows) == ["60", "90"]   # both attack rows kept
    assert shed_alerts and shed_alerts[-1]["evidence"]["shed_total"] > 0
    # every event is stored or counted as not stored: nothing silently lost
    assert stored + agent.store_health.events_not_stored == sensor.sent
    assert agent.store_health.events_not_stored > 0


def test_a_distinct_name_flood_never_sheds_the_rows_that_raised_a_finding(
        tmp_path: Path) -> None:
    """Attack: chmod a new name each time (nothing to coalesce) faster than the store
    writes, then an exec of /tmp/evil in every other batch: more attack events than the
    queue's reserve for kept rows (31 at a queue of 500).  The writer is stopped (SIGSTOP)
    and the flood fills its pipe (the feeder blocks writing) and queue, so every later
    batch is shed.  Every attack row must be stored; only benign rows are shed (counted).
    Before: each attack event was queued beyond the full queue until the reserve ran out,
    then shed with the benign ones (their rows lost)."""
    sensor = _Sensor(batches=100_000, size=200, distinct=True)
    sensor.hold.clear()
    agent, stop, th = _agent(tmp_path, sensor, writer_max=500, stall_s=300.0)
    sp = agent._store_proc
    assert sp is not None and sp.pid is not None
    # (the eviction budget is the global-budget test's: here the queue's reserve and
    # eviction; a queue of 500 has a budget of 5 rows a second by default)
    sp.evict_per_s = sp.evict_per_actor_s = 1_000.0
    child = sp.pid
    os.kill(child, signal.SIGSTOP)
    try:
        sensor.hold.set()
        blocked_since = [0.0]

        def blocked() -> bool:      # the feeder stuck writing to the full pipe for 0.5 s
            c = sp._child
            if c is None or not c.writing or sp.queued < sp.max_items - 200:
                blocked_since[0] = 0.0
                return False
            blocked_since[0] = blocked_since[0] or time.monotonic()
            return time.monotonic() - blocked_since[0] > 0.5
        _wait(blocked, 90, "a full pipe and queue")
        sensor.left = 320       # (a margin: the loop polls on while these are set)
        nxt = sensor.batch_no + 10
        attacks = tuple(range(nxt, nxt + 300, 2))          # 150 attack events
        sensor.attack_at = attacks
        assert sensor.done.wait(60)
        _wait(lambda: agent.summary.events >= sensor.sent, 60, "the loop to see every event")
        assert sp.shed > 0
    finally:
        os.kill(child, signal.SIGCONT)
    assert sp.flush(60)
    stop.set()
    th.join(60)
    assert not th.is_alive()
    store = Store.open(tmp_path / "db")
    try:
        evil_rows = [r.data for r in store.events(types=["exec"])]
        alerts = [a.data for a in store.alerts(rule=EvilExec.name)]
    finally:
        store.close()
    assert alerts      # alerted (the alert gate folds the rest into "N more like this")
    assert sorted(int(r["argv"][1]) for r in evil_rows) == list(attacks)   # every one kept
    store = Store.open(tmp_path / "db")
    try:
        stored = store.count_event_facts()
        shed_alerts = [a.data for a in store.alerts(rule="bastion.store.events_shed")]
        kept_shed = store.alerts(rule="bastion.store.finding_rows_shed")
    finally:
        store.close()
    assert sp.kept_shed == 0 and kept_shed == []
    assert shed_alerts and shed_alerts[-1]["evidence"]["shed_total"] > 0
    assert stored + agent.store_health.events_not_stored == sensor.sent
    assert stored < sensor.sent       # benign rows were shed: what the test floods for


def test_a_killed_writer_process_is_restarted_and_alerted(tmp_path: Path) -> None:
    """Attack: kill the writer process (root, or a crash) so that events stop being
    stored while detection runs on.  It must be restarted, the death alerted (high), and
    events after it stored."""
    sensor = _Sensor(batches=4)
    agent, stop, th = _agent(tmp_path, sensor, writer_max=50_000)
    sp = agent._store_proc
    assert sp is not None
    try:
        assert sensor.done.wait(30)
        assert sp.flush(30)
        first = sp.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: sp.pid not in (None, first), 15, "a new writer process")
        sensor.left = 4          # more events after the restart
        sensor.done.clear()
        assert sensor.done.wait(30)
        _wait(lambda: agent.summary.events >= sensor.sent, 30, "the loop")
        assert sp.flush(30)
        st = agent.status()
        assert st["store"]["writer"]["kind"] == "process"
        assert st["store"]["writer"]["restarts"] == 1
        assert st["store"]["writer"]["pid"] != first
    finally:
        stop.set()
        th.join(60)
    assert not th.is_alive()
    store = Store.open(tmp_path / "db")
    try:
        died = [a.data for a in store.alerts(rule="bastion.store.writer_died")]
        stored = store.count_event_facts()
    finally:
        store.close()
    assert len(died) == 1 and died[0]["severity"] == "high"
    assert "killed by signal 9" in died[0]["title"]
    assert stored == sensor.sent    # nothing was in flight at the kill: all stored


def test_a_stopped_writer_process_is_killed_restarted_and_alerted(tmp_path: Path) -> None:
    """Attack (root): SIGSTOP the event writer process and leave it stopped, then act
    inside a flood.  Before: nothing noticed the stop: the pipe filled, every later row
    was shed (the attack's row kept in the queue but never written) and no alert named
    the stop.  After: a writer that answers nothing for ``writer_stall_s`` while it has
    work is killed and replaced, ``bastion.store.writer_stalled`` (high) is raised, and
    the attack rows are stored by the new writer: the one kept in the queue and the one
    already in the stopped writer's pipe (its unanswered batches are sent again)."""
    sensor = _Sensor(batches=60, attack_at=(2, 40))   # 2: in the stopped writer's pipe
    sensor.hold.clear()
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[sensor],
                  store=store, procs=procs, engine=Engine([EvilExec()]),
                  dispatcher=Dispatcher(procs), store_process=True)
    agent.procs.seed = lambda proc=Path("/proc"): 0   # type: ignore[method-assign]
    agent.writer_max_events = 2_000
    agent.writer_stall_s = 2.0
    stop = threading.Event()
    th = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    th.start()
    assert agent.ready.wait(30)
    sp = agent._store_proc
    assert sp is not None and sp.pid is not None
    first = sp.pid
    os.kill(first, signal.SIGSTOP)
    try:
        sensor.hold.set()
        assert sensor.done.wait(30)
        _wait(lambda: agent.summary.events >= sensor.sent, 30, "the loop to see every event")
        _wait(lambda: sp.pid not in (None, first), 20, "the stopped writer to be replaced")
        assert sp.flush(30)
    finally:
        stop.set()
        th.join(60)
        try:
            os.kill(first, signal.SIGKILL)      # before the fix: still there, stopped
        except ProcessLookupError:
            pass
    assert not th.is_alive()
    with pytest.raises(ProcessLookupError):     # the stopped writer was killed and reaped
        os.kill(first, 0)
    store = Store.open(tmp_path / "db")
    try:
        evil_rows = [r.data for r in store.events(types=["exec"])]
        stalled = [a.data for a in store.alerts(rule="bastion.store.writer_stalled")]
        alerts = [a.data for a in store.alerts(rule=EvilExec.name)]
        stored = store.count_event_facts()
    finally:
        store.close()
    assert len(alerts) == 2
    # both attack rows stored: the one kept in the queue, and the one in the stopped
    # writer's pipe (sent again to the new writer)
    assert sorted(r["argv"][1] for r in evil_rows) == ["2", "40"]
    assert len(stalled) == 1 and stalled[0]["severity"] == "high"
    assert stalled[0]["evidence"]["pid"] == first
    assert stored + agent.store_health.events_not_stored == sensor.sent


def _open_fd_of(pid: int, fd: int) -> int:
    return os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY)


def test_frames_injected_into_the_writer_pipe_store_no_row(tmp_path: Path) -> None:
    """Attack (root): open the writer process's stdin through /proc/PID/fd/0 and write
    frames of made-up events (fake history in a store whose files tamper protection
    guards).  Before: the rows were stored as if the sensor had seen them.  After: each
    frame carries a sequence number and a MAC under a key only the agent and the child
    hold; the child refuses the frame and exits, the agent replaces it and raises
    ``bastion.store.writer_tampered`` (critical); no fake row is stored."""
    import struct
    sensor = _Sensor(batches=2)
    agent, stop, th = _agent(tmp_path, sensor, writer_max=50_000)
    sp = agent._store_proc
    assert sp is not None
    try:
        assert sensor.done.wait(30)
        _wait(lambda: agent.summary.events >= sensor.sent, 30, "the loop")
        assert sp.flush(30)
        first = sp.pid
        assert first is not None
        fake = ExecEvent(T0, EVIL, filename="/usr/bin/innocent", argv=("/usr/bin/innocent",))
        payload = pack([fake])
        fd = _open_fd_of(first, 0)
        try:
            os.write(fd, struct.pack("<II", len(payload), 1) + payload)
        finally:
            os.close(fd)
        _wait(lambda: sp.pid not in (None, first), 15, "the writer to refuse the frame")
        assert sp.flush(30)
    except AssertionError:
        stop.set()
        th.join(60)
        raise
    stop.set()
    th.join(60)
    assert not th.is_alive()
    store = Store.open(tmp_path / "db")
    try:
        fake_rows = [r.data for r in store.events(types=["exec"])]
        tampered = [a.data for a in store.alerts(rule="bastion.store.writer_tampered")]
        stored = store.count_event_facts()
    finally:
        store.close()
    assert fake_rows == []
    assert len(tampered) == 1 and tampered[0]["severity"] == "critical"
    assert stored == sensor.sent


def test_answers_forged_into_the_agents_pipe_are_refused(tmp_path: Path) -> None:
    """Attack (root): stop the writer (or steal its frames) and write ``stored N`` lines
    into the pipe the agent reads its answers from (/proc/PID/fd/1 of the writer), so the
    agent counts rows as stored that never were and sees progress.  Before: the agent
    took the answer (its stored count grew by N, nothing alerted).  After: answers carry
    the sequence number and a MAC; a forged one kills the writer, alerted
    (``bastion.store.writer_tampered``), and the count is unchanged."""
    sensor = _Sensor(batches=2)
    agent, stop, th = _agent(tmp_path, sensor, writer_max=50_000)
    sp = agent._store_proc
    assert sp is not None
    try:
        assert sensor.done.wait(30)
        _wait(lambda: agent.summary.events >= sensor.sent, 30, "the loop")
        assert sp.flush(30)
        _wait(lambda: agent._stored_events is not None and agent._stored_events >= sensor.sent,
              15, "the stored count")
        before = agent._stored_events
        first = sp.pid
        assert first is not None
        fd = _open_fd_of(first, 1)
        try:
            os.write(fd, b"stored 100000\n")
        finally:
            os.close(fd)
        _wait(lambda: sp.pid not in (None, first), 15, "the writer to be replaced")
        assert agent._stored_events == before
    finally:
        stop.set()
        th.join(60)
    assert not th.is_alive()
    store = Store.open(tmp_path / "db")
    try:
        tampered = [a.data for a in store.alerts(rule="bastion.store.writer_tampered")]
    finally:
        store.close()
    assert len(tampered) == 1 and tampered[0]["severity"] == "critical"


def test_a_batch_resent_once_is_lost_if_its_second_writer_dies_too(tmp_path: Path) -> None:
    """A batch a dead writer had not answered is sent once more; if the second writer
    dies with it unanswered as well (a batch that crashes the writer), it is counted as
    lost, never sent a third time (no crash loop), and storage goes on."""
    from bastion.store.eventproc import EventStoreProcess

    Store.open(tmp_path / "db").close()
    results: list[tuple[str, int]] = []
    died: list[tuple[str, int, str]] = []
    sp = EventStoreProcess(tmp_path / "db", max_items=10_000,
                           on_result=lambda k, n, d: results.append((k, n)),
                           on_died=lambda why, lost, cause, pid: died.append((why, lost, cause)))
    sp.start()
    try:
        batch = [FileEvent(T0 + i, ACTOR, op="chmod", path=f"/tmp/r{i}", mode=0o644)
                 for i in range(7)]
        for n in range(2):                       # two writers die with the batch unanswered
            pid = sp.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            if n == 0:
                assert sp.offer(batch)
            _wait(lambda: sp._child is not None and sp._child.sent >= len(batch), 15,
                  "the batch in the stopped writer's pipe")
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: sp.pid not in (None, pid), 15, "a new writer")
        assert sp.flush(30)
        assert [d[1] for d in died] == [0, 7]    # resent after the first, lost after the second
        assert sp.lost == 7 and sp.restarts == 2
        assert sp.offer(batch[:3]) and sp.flush(30)
        assert ("stored", 3) in results and ("stored", 7) not in results
    finally:
        sp.close()


# ---- s16: a flood of cheap findings must not evict an attack's quiet steps ----------------


class _CheapChmod:
    """A finding of ``severity`` for every chmod by ACTOR: a rule an attacker triggers in
    a loop (a medium rule in real life; a high one for the budget test)."""

    event_types = frozenset({"chmod"})

    def __init__(self, severity: str) -> None:
        self.severity = severity
        self.name = f"behavior.test_cheap_chmod_{severity}"

    def on_event(self, ev: Event, ctx: Any) -> list[Any]:
        from bastion.detect.engine import Finding

        if isinstance(ev, FileEvent) and ev.op == "chmod" and ev.proc.pid == ACTOR.pid:
            return [Finding(rule=self.name, title="cheap chmod", severity=self.severity,
                            attack=(), action="alert", event=ev, pid=ev.proc.pid)]
        return []


def _flood(i: int, n: int = 200) -> list[Event]:
    t = T0 + i * 10_000
    return [FileEvent(t + k, ACTOR, op="chmod", path=f"/tmp/flood/{i}/{k}", mode=0o644)
            for k in range(n)]


def _step(i: int) -> Event:
    """One quiet step of the real attack: no rule fires on it."""
    return FileEvent(T0 + i * 10_000 + 500, EVIL, op="open", path=f"/home/victim/.ssh/key{i}")


def _stopped_writer_agent(tmp_path: Path, severity: str, writer_max: int
                          ) -> tuple[Agent, Any]:
    """An agent (not running: the test calls process() itself, in order) whose writer
    process is started then stopped (SIGSTOP): a slow or stalled store."""
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[], store=store,
                  procs=procs, engine=Engine([EvilExec(), _CheapChmod(severity)]),
                  dispatcher=Dispatcher(procs), store_process=True)
    agent.writer_max_events = writer_max
    agent.writer_stall_s = 300.0
    agent._start_store_process()
    sp = agent._store_proc
    assert sp is not None and sp.pid is not None
    os.kill(sp.pid, signal.SIGSTOP)
    return agent, sp


def _blocked(sp: Any) -> bool:
    """The feeder stuck writing to the stopped writer's full pipe: the queue cannot drain."""
    c = sp._child
    if c is None or not c.writing:
        return False
    q = sp.queued
    time.sleep(0.3)
    return bool(c.writing) and sp.queued == q


def _fill(agent: Agent, sp: Any) -> tuple[list[int], int]:
    """Flood batches with one quiet attack step each until the pipe and the queue are
    full (a batch shed while the feeder is stuck on the pipe); (the steps of the batches
    queued, the next batch number).  A batch shed before (a busy host: the feeder late
    to move batches to the pipe) takes its step with it, counted: not a queued step."""
    queued: list[int] = []
    for i in range(10_000):
        shed = sp.shed
        agent.process([*_flood(i), _step(i)])
        if sp.shed == shed:
            queued.append(i)
        elif _blocked(sp):
            return queued, i + 1
        time.sleep(0.002)      # the feeder moves batches to the pipe until it is full
    raise AssertionError("the pipe and the queue never filled")


def _finish(tmp_path: Path, agent: Agent, sp: Any) -> tuple[list[int], list[dict[str, Any]]]:
    """Resume the writer, store what is queued, raise the health alerts; (the attack steps
    stored, the alerts)."""
    assert sp.pid is not None
    os.kill(sp.pid, signal.SIGCONT)
    try:
        assert sp.flush(60)
        agent._health(final=True)
    finally:
        sp.close()
        agent.store.close()
    with Store.open(tmp_path / "db") as store:
        steps = sorted(int(r.data["path"].rpartition("key")[2])
                       for r in store.events(pid=EVIL.pid))
        alerts = [a.data for a in store.alerts()]
    return steps, alerts


def test_a_flood_of_medium_findings_does_not_evict_an_attacks_quiet_steps(
        tmp_path: Path) -> None:
    """Attack (threat model, left by the s15 review): a flood of cheap findings makes the
    store's queue evict the newest benign rows.  The attacker loops a medium-rule trigger
    (every chmod a finding) while the store is slow (writer stopped) and takes their real
    steps (opens no rule fires on) among it.  Once the queue is full, the flood's medium
    rows must be shed like any other (counted), not take the place of the queued steps:
    every step queued before the queue filled is stored.  Before (s15): each medium row
    of a shed batch evicted a queued benign row, newest first: the attack's steps went."""
    agent, sp = _stopped_writer_agent(tmp_path, "medium", writer_max=2_000)
    try:
        queued, nxt = _fill(agent, sp)
        assert len(queued) >= 5
        low0 = agent.finding_rows_shed_low
        for i in range(nxt, nxt + 59):       # the cheap flood goes on: every batch shed
            agent.process(_flood(i))
        assert sp.evicted == 0
        assert agent.finding_rows_shed_low - low0 == 59 * 200
    finally:
        steps, alerts = _finish(tmp_path, agent, sp)
    assert steps[:len(queued)] == queued           # every queued step survived
    shed = [a for a in alerts if a["rule"] == "bastion.store.events_shed"]
    assert shed and shed[-1]["evidence"]["finding_rows_shed_low_medium"] >= 59 * 200
    assert not [a for a in alerts if a["rule"] == "bastion.store.rows_evicted"]


def test_a_flood_of_one_high_rule_evicts_at_most_its_budget_and_says_what_was_lost(
        tmp_path: Path) -> None:
    """The same attack with a high rule in the loop: its rows may take the place of
    queued ones, but one rule evicts at most ``evict_per_s`` rows a second; past it its
    rows are not kept (counted, alerted high by rule), and what was evicted is alerted
    with what it was (the attack's steps by actor and type), never silently lost."""
    agent, sp = _stopped_writer_agent(tmp_path, "high", writer_max=2_000)
    sp.evict_per_s = 50.0
    try:
        t0 = time.monotonic()          # (the rule's rows may evict from the first shed on)
        queued, nxt = _fill(agent, sp)
        for i in range(nxt, nxt + 10):
            agent.process(_flood(i))
        elapsed = time.monotonic() - t0
        assert 0 < sp.evicted <= 50 * (1 + elapsed) + 1
        not_kept = sp.not_kept_by["behavior.test_cheap_chmod_high"]
        assert not_kept >= 10 * 200 - sp.evicted - sp._feeder.reserve - 200
        assert sp.kept_shed == not_kept
        evicted = sp.evicted
    finally:
        steps, alerts = _finish(tmp_path, agent, sp)
    lost_steps = set(queued) - set(steps)
    assert len(lost_steps) <= evicted          # evicted rows: flood rows and attack steps
    ev_alerts = [a for a in alerts if a["rule"] == "bastion.store.rows_evicted"]
    assert ev_alerts
    ev = ev_alerts[-1]["evidence"]
    assert ev["evicted_total"] == evicted
    assert ev["by_rule"] == {"behavior.test_cheap_chmod_high": evicted}
    lost = {(k["pid"], k["type"]): k["rows"] for k in ev["lost"]}
    assert lost.get((EVIL.pid, "open"), 0) == len(lost_steps)
    assert sum(lost.values()) == evicted
    capped = [a for a in alerts if a["rule"] == "bastion.store.finding_rows_shed"]
    assert capped and capped[-1]["severity"] == "high"
    assert capped[-1]["evidence"]["by_rule_total"] == {"behavior.test_cheap_chmod_high": not_kept}


class _EvictAll:
    """A feeder whose queue is full of rows it may evict (as many as asked): what
    :meth:`EventStoreProcess.keep` lets evict is the budget alone."""

    evicted = 0

    def keep(self, batch: Any, max_evict: int, evicted: list[Event]) -> tuple[int, int]:
        n = min(max_evict, len(batch))
        self.evicted += n
        evicted.extend(batch[:n])
        return n, n


def test_a_flood_of_high_findings_of_several_rules_evicts_at_most_the_global_budget(
        tmp_path: Path) -> None:
    """Attack (s16 review, finding 3): every rule had its own eviction budget (a quarter
    of the queue a second) and budgets added across rules: an actor raising high findings
    of several rules (failed mount_setattr, fspick, ...) evicted the queue many times over.
    One global budget is shared by every rule, and one (rule, executable) takes at most a
    part of it (s16-fixlog)."""
    from bastion.store.eventproc import EventStoreProcess
    sp = EventStoreProcess(tmp_path, max_items=50_000, on_result=lambda *a: None,
                           on_died=lambda *a: None)
    assert sp.evict_per_s == 500.0 and sp.evict_per_actor_s == 125.0
    feeder = _EvictAll()
    sp._feeder = feeder     # type: ignore[assignment]
    t0 = time.monotonic()
    for rnd in range(3):
        for r in range(8):
            for j in range(4):
                actor = Proc(5000 + j, 5000 + j, 1, 1000, 1000, 1000, 1, f"a{j}",
                             exe=f"/tmp/a{j}")
                evs = [FileEvent(T0 + k, actor, op="chmod", path=f"/tmp/x/{rnd}/{k}")
                       for k in range(1_000)]
                sp.keep(evs, f"behavior.rule{r}")
    elapsed = time.monotonic() - t0
    assert 0 < feeder.evicted <= 500 * (1 + elapsed) + 1
    by_rule, lost, _ = sp.take_evictions()
    assert sum(by_rule.values()) == feeder.evicted
    # one actor of one rule: at most its part
    sp2 = EventStoreProcess(tmp_path, max_items=50_000, on_result=lambda *a: None,
                            on_died=lambda *a: None)
    f2 = _EvictAll()
    sp2._feeder = f2        # type: ignore[assignment]
    t0 = time.monotonic()
    for _ in range(5):
        sp2.keep([FileEvent(T0 + k, ACTOR, op="chmod", path=f"/tmp/y/{k}")
                  for k in range(1_000)], "behavior.rule0")
    assert 0 < f2.evicted <= 125 * (1 + time.monotonic() - t0) + 1
