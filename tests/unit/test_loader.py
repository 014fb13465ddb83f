"""The one BPF object loader's user-space half, without a kernel: draining with
decode-error counts, the wall-clock offset, pin bookkeeping, and the helpers
that live once (clock, /proc/PID/stat).

The attack: one malformed record on a ring (a kernel/user ABI slip, or a
corrupted record) raised out of ``Quarantine.poll`` and so ended
``Agent.run`` — the agent's whole event loop.  Every object now drains
through :meth:`LoadedObject.drain`, which counts and skips such a record.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import pytest

from bastion import abi
from bastion.agent import Agent, AgentParts
from bastion.detect.engine import Engine
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.config import parse_policy
from bastion.errors import DecodeError
from bastion.events import Event, HipsEvent, RepeatDecoder, decode
from bastion.guard.kernel import TamperKernel
from bastion.guard.kernel import decode as tamper_decode
from bastion.kernel import clock
from bastion.kernel.loader import LoadedObject, ObjectSpec, pinned_links
from bastion.procstat import TICK_NS, parse_stat, read_stat, start_ns_of
from bastion.respond.quarantine import Quarantine
from bastion.store import Store

pytestmark = pytest.mark.unit

OFFSET = 1_700_000_000 * 10**9


class FakeRing:
    """Stands for a ring buffer: hands out queued records, once."""

    def __init__(self, *batches: list[bytes]) -> None:
        self.batches = list(batches)
        self.closed = False

    def pending_bytes(self) -> int:
        return sum(len(r) for r in self.batches[0]) if self.batches else 0

    def drain(self, limit: int | None = None) -> list[bytes]:
        return self.batches.pop(0) if self.batches else []

    def close(self) -> None:
        self.closed = True


def _hips_record(rule_id: int, pid: int = 4242) -> bytes:
    r = abi.HipsEvent()
    h = r.hdr
    h.type = abi.EventType.HIPS
    h.size = ctypes.sizeof(r)
    h.ts_ns = 5_000_000_000
    h.pid = h.tgid = pid
    h.comm = b"victim"
    r.op = abi.HipsOp.EXEC
    r.action = abi.HipsAction.DENY
    r.rule_id = rule_id
    r.mechanism = 1
    r.enforced = 1
    r.path = b"/tmp/payload"
    return bytes(r)


BAD_RECORDS = [
    b"\x01\x02",                                              # shorter than any header
    (999).to_bytes(2, "little") + b"\0" * 200,                # unknown record type
    _hips_record(1)[:40],                                     # a hips record cut short
]


def _loaded(*batches: list[bytes], path: str = "x.bpf.o") -> LoadedObject:
    lo = LoadedObject(ObjectSpec(path=Path(path), drops=None))   # no drop counter to read
    lo.ring = FakeRing(*batches)
    return lo


# ---- LoadedObject.drain ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_RECORDS)
def test_drain_counts_a_bad_record_and_keeps_the_good_ones(bad: bytes) -> None:
    lo = _loaded([_hips_record(1), bad, _hips_record(2)])
    out = lo.drain(decode)
    assert [e.rule_id for e in out if isinstance(e, HipsEvent)] == [1, 2]
    assert lo.decode_errors == 1 and lo.decoded == 2


@pytest.mark.parametrize("bad", BAD_RECORDS)
def test_a_batch_drain_counts_a_bad_record_and_keeps_the_good_ones(bad: bytes,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The sensors' batch decode (issue 16.3): a record that does not decode is counted and
    logged with the decoder's message, as :meth:`LoadedObject.drain` does."""
    lo = _loaded([_hips_record(1), bad, _hips_record(2), _hips_record(2)])
    rep = RepeatDecoder()
    out = lo.drain_batch(rep.decode_batch)
    assert [e.rule_id for e in out if isinstance(e, HipsEvent)] == [1, 2, 2]
    assert lo.decode_errors == 1 and lo.decoded == 3 and rep.hits == 1
    want = _outcome_error(bad)
    assert any(want in r.getMessage() and "x.bpf.o" in r.getMessage() for r in caplog.records)


def _outcome_error(rec: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode(rec, 0)
    return str(info.value)


def test_drain_stamps_wall_clock_time() -> None:
    lo = _loaded([_hips_record(1)])
    before = clock.boot_to_wall_ns()
    (ev,) = lo.drain(decode)
    assert abs(ev.time_ns - (5_000_000_000 + before)) < 1_000_000_000


def test_drain_before_load_is_an_error_naming_the_object() -> None:
    lo = LoadedObject(ObjectSpec(path=Path("some.bpf.o")))
    with pytest.raises(Exception, match="ring polled before load") as info:
        lo.drain(decode)
    assert "some.bpf.o" in str(info.value)


def test_close_closes_the_ring_and_keeps_the_counters() -> None:
    lo = _loaded([BAD_RECORDS[0], _hips_record(1)])
    lo.drain(decode)
    ring = lo.ring
    lo.close()
    assert isinstance(ring, FakeRing) and ring.closed
    assert lo.closed and lo.ring is None and lo.drops() == 0
    assert (lo.decoded, lo.decode_errors) == (1, 1)


class SlowLink:
    """A link whose detach waits like a tracepoint's (an RCU grace period)."""

    def __init__(self, wait_s: float, gate: threading.Barrier | None = None,
                 section: str = "tracepoint/syscalls/sys_enter_openat") -> None:
        self.wait_s, self.gate, self.destroyed = wait_s, gate, 0
        self.section = section
        self.thread: str | None = None

    def destroy(self) -> None:
        if self.gate is not None:
            self.gate.wait(timeout=5)      # passes only when the detaches overlap
        threading.Event().wait(self.wait_s)
        self.destroyed += 1
        self.thread = threading.current_thread().name


def test_close_detaches_every_link_concurrently() -> None:
    """A closing object's links are detached at once, not one grace period after the
    other (the sensor's 56 took 3.6 s); close returns only when every one is gone."""
    gate = threading.Barrier(4)
    links = [SlowLink(0.05, gate) for _ in range(4)] + [SlowLink(0.05) for _ in range(30)]
    lo = _loaded([])
    lo.links = {f"p{i}": link for i, link in enumerate(links)}  # type: ignore[misc]
    lo.close()
    assert [link.destroyed for link in links] == [1] * len(links)
    assert lo.links == {}
    assert len({link.thread for link in links}) > 1


def test_close_detaches_trampoline_links_one_after_the_other() -> None:
    """LSM, fentry and tp_btf links (and links opened from a pin) are detached on the
    caller's thread, one at a time: concurrent trampoline detaches stay out until the VM's
    soft lockup is explained; the tracepoint links of the same object still overlap."""
    gate = threading.Barrier(2)
    tramp = [SlowLink(0.0, section=s) for s in
             ("lsm/file_open", "fentry/security_file_open", "tp_btf/sched_process_exec",
              "fexit/vfs_rename", "")]
    perf = [SlowLink(0.02, gate) for _ in range(2)]
    lo = _loaded([])
    lo.links = {f"p{i}": link for i, link in enumerate(tramp + perf)}  # type: ignore[misc]
    lo.close()
    assert [link.destroyed for link in tramp + perf] == [1] * 7
    assert {link.thread for link in tramp} == {threading.current_thread().name}
    assert len({link.thread for link in perf}) == 2


def test_close_detaches_every_link_when_no_thread_can_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    links = [SlowLink(0.0) for _ in range(20)]
    lo = _loaded([])
    lo.links = {f"p{i}": link for i, link in enumerate(links)}  # type: ignore[misc]
    lo.close()
    assert [link.destroyed for link in links] == [1] * len(links)
    assert {link.thread for link in links} == {threading.current_thread().name}


class _Interrupted(Exception):
    pass


class FailingLink(SlowLink):
    def destroy(self) -> None:
        super().destroy()
        raise OSError("detach failed")


def test_destroy_links_finishes_every_detach_before_an_exception_leaves() -> None:
    """s21 review F10: a signal handler's exception during ``join`` (SIGALRM here, 0.1 s
    into the threads' 0.5 s detaches) returned with detaches still in flight, and a link
    whose destroy raised left the links after it attached.  Every link is destroyed and
    every thread joined before the first exception is raised."""
    import signal
    from bastion.kernel.loader import destroy_links

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted()
    links = [SlowLink(0.0)] + [SlowLink(0.5) for _ in range(3)]
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_Interrupted):
            destroy_links(links)  # type: ignore[arg-type]
        assert [link.destroyed for link in links] == [1] * 4, "detaches left in flight"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    tramp = [SlowLink(0.0, section="lsm/file_open") for _ in range(3)]
    tramp[0] = FailingLink(0.0, section="lsm/file_open")
    with pytest.raises(OSError):
        destroy_links(tramp)  # type: ignore[arg-type]
    assert [link.destroyed for link in tramp] == [1] * 3


# ---- the users: a bad record does not escape poll -------------------------------------------


def _quarantine_with(*batches: list[bytes]) -> Quarantine:
    q = Quarantine(tier="compat", obj_path=Path("quarantine.bpf.o"))
    q._lo = _loaded(*batches, path="quarantine.bpf.o")
    return q


def test_quarantine_poll_counts_a_malformed_record_instead_of_raising() -> None:
    q = _quarantine_with([_hips_record(7), BAD_RECORDS[1], _hips_record(8)], [BAD_RECORDS[0]])
    assert [e.rule_id for e in q.poll() if isinstance(e, HipsEvent)] == [7, 8]
    assert q.poll() == []
    assert q.decode_errors == 2
    assert q.stats()["decode_errors"] == 2


def test_tamper_poll_counts_a_malformed_record_instead_of_raising(tmp_path: Path) -> None:
    t = abi.TamperEvent()
    t.hdr.type = abi.TamperRecord.EV_TAMPER
    t.hdr.tgid = 99
    t.op = abi.TamperOp.SIGNAL
    tk = TamperKernel("compat", pin_dir=tmp_path)
    tk._lo = _loaded([bytes(t), _hips_record(1), b"\0"])
    recs = tk.poll()
    assert [r.pid for r in recs] == [99] and recs[0].op == "signal"
    assert tk.decode_errors == 2
    with pytest.raises(Exception, match="not a tamper record"):
        tamper_decode(b"\0" * 8, 0)


class _QuietSensor:
    """A sensor with nothing to say for a few polls, then EOF."""

    name = "quiet"
    attached: list[str] = []
    missing: list[str] = []

    def __init__(self, polls: int) -> None:
        self.left = polls

    def ring_fill(self) -> float:
        return 0.0

    def open(self) -> None:
        pass

    def poll(self, timeout_s: float) -> list[Event] | None:
        self.left -= 1
        return [] if self.left > 0 else None

    def stats(self) -> dict[str, int]:
        return {"events": 0, "drops": 0}

    def close(self) -> None:
        pass


class _FakeLoadedQuarantine(Quarantine):
    """A quarantine whose ring holds a malformed record between two enforcements."""

    def open(self) -> None:
        self._lo = _loaded([_hips_record(11, pid=4_000_011), BAD_RECORDS[1]], [],
                           [_hips_record(12, pid=4_000_012)],
                           path="quarantine.bpf.o")


def test_a_malformed_quarantine_record_does_not_end_the_agent_loop(tmp_path: Path) -> None:
    policy = parse_policy("version: 1\n", "test.yaml")
    store = Store.open(tmp_path / "db")
    q = _FakeLoadedQuarantine(tier="compat", obj_path=Path("quarantine.bpf.o"))
    procs = ProcessTable()
    agent = Agent(policy=policy, sensors=[_QuietSensor(polls=5)], store=store, procs=procs,
                  engine=Engine([]), dispatcher=Dispatcher(procs, quarantine=q),
                  parts=AgentParts(quarantine=q))
    try:
        summary = agent.run(threading.Event())   # raised DecodeError before the fix
        alerts = [a.data for a in store.alerts(rule="bastion.quarantine.enforced")]
    finally:
        store.close()
    assert q.decode_errors == 1
    assert sorted(a["evidence"]["incident"] for a in alerts) == [11, 12]
    assert summary.events == 2


# ---- the wall-clock offset ------------------------------------------------------------------


def test_wall_offset_is_refreshed_after_its_period(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    step = [0]
    monkeypatch.setattr(clock.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(clock, "boot_to_wall_ns", lambda: OFFSET + step[0])
    off = clock.WallOffset(refresh_s=10.0)
    assert off() == OFFSET
    step[0] = 3_600 * 10**9          # the wall clock stepped an hour
    now[0] += 5.0
    assert off() == OFFSET           # within the period: the cached offset
    now[0] += 6.0
    assert off() == OFFSET + step[0]


def test_deadline_is_zero_without_seconds_and_in_the_future_with() -> None:
    assert clock.deadline_ns(None) == 0 and clock.deadline_ns(0) == 0
    d = clock.deadline_ns(5)
    assert 4 * 10**9 < d - clock.boot_ns() <= 5 * 10**9


# ---- pins -----------------------------------------------------------------------------------


def test_pins_complete_needs_every_map_and_a_link(tmp_path: Path) -> None:
    spec = ObjectSpec(path=Path("t.bpf.o"), pin_dir=tmp_path / "set", pin_maps=("a", "b"))
    assert not spec.pins_complete() and pinned_links(tmp_path / "set") == []
    (tmp_path / "set" / "maps").mkdir(parents=True)
    (tmp_path / "set" / "links").mkdir()
    (tmp_path / "set" / "maps" / "a").touch()
    (tmp_path / "set" / "links" / "p2").touch()
    (tmp_path / "set" / "links" / "p1").touch()
    assert not spec.pins_complete()
    (tmp_path / "set" / "maps" / "b").touch()
    assert spec.pins_complete() and spec.pinned_links() == ["p1", "p2"]


def test_an_unpinned_spec_has_no_pin_directories() -> None:
    with pytest.raises(Exception, match="not pinned") as info:
        ObjectSpec(path=Path("t.bpf.o")).maps_dir
    assert "t.bpf.o" in str(info.value)


def test_load_refuses_over_the_pins_of_a_previous_load(tmp_path: Path) -> None:
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "prog").touch()
    with pytest.raises(Exception, match="pins of a previous load") as info:
        LoadedObject.load(ObjectSpec(path=Path("t.bpf.o"), pin_dir=tmp_path))
    assert str(tmp_path) in str(info.value)


# ---- /proc/PID/stat -------------------------------------------------------------------------


def test_parse_stat_counts_fields_from_the_last_parenthesis() -> None:
    rest = " ".join(["S", "1"] + ["0"] * 17 + ["12345"] + ["0"] * 10)
    ps = parse_stat(77, f"77 (a) b (c) {rest}\n".encode())
    assert (ps.comm, ps.state, ps.ppid, ps.start_ticks) == ("a) b (c", "S", 1, 12345)
    assert ps.start_ns == 12345 * TICK_NS


@pytest.mark.parametrize("raw", [b"", b"77 (x) S 1 2", b"77 x S 1 " + b"0 " * 30])
def test_parse_stat_refuses_what_is_not_a_stat_line(raw: bytes) -> None:
    with pytest.raises(ValueError, match="/proc/77/stat"):
        parse_stat(77, raw)


def test_read_stat_of_this_process_and_of_a_gone_one(tmp_path: Path) -> None:
    me = read_stat(os.getpid())
    assert me.ppid == os.getppid() and me.state in ("R", "S")
    assert me.start_ns == start_ns_of(os.getpid())
    assert 0 < me.start_ns <= clock.boot_ns()
    assert start_ns_of(2**22 + 1, proc=tmp_path) == 0
    with pytest.raises(OSError):
        read_stat(1, proc=tmp_path)


# ---- two rings (s23-prioring) ---------------------------------------------------------------


class QueueRing:
    """A ring of queued records: ``drain(limit)`` takes the oldest ``limit``."""

    def __init__(self, records: list[bytes]) -> None:
        self.records = list(records)

    def pending_bytes(self) -> int:
        return sum(len(r) for r in self.records)

    def drain(self, limit: int | None = None) -> list[bytes]:
        n = len(self.records) if limit is None else limit
        out, self.records = self.records[:n], self.records[n:]
        return out

    def close(self) -> None:
        pass


def _rec(tag: str, ts: int) -> bytes:
    return b"\x04\x00\x00\x00\x18\x00\x00\x00" + ts.to_bytes(8, "little") + tag.encode().ljust(8)


def _tags(recs: list[bytes]) -> list[str]:
    return [r[16:].decode().strip() for r in recs]


def _two_rings(bulk: list[bytes], prio: list[bytes]) -> LoadedObject:
    lo = LoadedObject(ObjectSpec(path=Path("s.bpf.o"), drops=None, prio_ring="events_prio"))
    lo.ring, lo.prio_ring = QueueRing(bulk), QueueRing(prio)
    return lo


def test_the_priority_ring_is_drained_whole_and_merged_in_time_order() -> None:
    """A poll takes every priority record, and bulk ones up to its batch; without a
    backlog the batch comes out in time order (fork before exec, open before exec)."""
    lo = _two_rings([_rec("fork", 10), _rec("open", 30), _rec("chmod", 50)],
                    [_rec("exec", 20), _rec("exec2", 40), _rec("conn", 60)])
    assert _tags(lo.drain_raw(100)) == ["fork", "exec", "open", "exec2", "chmod", "conn"]
    assert lo.drain_raw(100) == []


def test_under_a_bulk_backlog_a_newer_priority_record_waits_for_the_older_bulk_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The flood case: the bulk ring holds a backlog older than the payload's exec.  The
    exec leaves the kernel ring at the first poll (nothing can drop it any more) but is
    handed on after the bulk records before it, so the rules see them in order."""
    from bastion.kernel import loader
    monkeypatch.setattr(loader, "boot_ns", lambda: 1_000)      # well within the hold
    bulk = [_rec(f"c{i}", 10 + i) for i in range(6)] + [_rec("late", 100)]
    lo = _two_rings(bulk, [_rec("exec", 50)])
    first = lo.drain_raw(3)
    assert _tags(first) == ["c0", "c1", "c2"]
    assert isinstance(lo.prio_ring, QueueRing) and lo.prio_ring.records == []  # out of the kernel
    assert _tags(lo.drain_raw(3)) == ["c3", "c4", "c5"]
    assert _tags(lo.drain_raw(3)) == ["exec", "late"]


def test_a_priority_record_is_held_no_longer_than_the_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog older than PRIO_HOLD_NS does not delay the payload's records past it."""
    from bastion.kernel import loader
    monkeypatch.setattr(loader, "boot_ns", lambda: 50 + loader.PRIO_HOLD_NS)
    lo = _two_rings([_rec(f"c{i}", 10 + i) for i in range(6)], [_rec("exec", 50), _rec("x", 70)])
    assert _tags(lo.drain_raw(2)) == ["c0", "c1", "exec"]
    assert _tags(lo.drain_raw(10)) == ["c2", "c3", "c4", "c5", "x"]


def test_wait_does_not_sleep_over_priority_records(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("bastion.kernel.loader.time.sleep", slept.append)
    lo = _two_rings([], [_rec("exec", 5)])
    lo.wait(0.5)
    assert slept == []
    lo.drain_raw(10)
    lo.wait(0.5)
    assert slept == [0.5]


class _TakenLink:
    """A link whose destroy takes its pointer first (as libbpf.Link.destroy: idempotent)
    and then detaches slowly; counts the detaches begun and finished."""

    section = "tracepoint/x"

    def __init__(self, wait_s: float, log: list[str]) -> None:
        self.ptr: object | None = object()
        self.wait_s = wait_s
        self.log = log

    def destroy(self) -> None:
        ptr, self.ptr = self.ptr, None
        if ptr is None:
            return
        self.log.append("begin")
        threading.Event().wait(self.wait_s)
        self.log.append("end")


def test_destroy_links_waits_for_a_thread_whose_interrupted_start_left_no_ident(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """s24 review: a signal's exception out of ``Thread.start`` after the thread was
    launched but before it set its ident (it had not run yet): its share was put on the
    caller's list *and* ran on the thread, which was not waited for: the caller found
    those links taken and returned with their detaches in flight."""
    import _thread
    from bastion.kernel.loader import destroy_links

    real_start = threading.Thread.start

    def late_start(self: threading.Thread) -> None:
        def later() -> None:
            threading.Event().wait(0.05)
            real_start(self)
        _thread.start_new_thread(later, ())   # the thread runs after start() raised
        raise _Interrupted()

    log: list[str] = []
    links = [_TakenLink(0.3, log) for _ in range(4)]
    monkeypatch.setattr(threading.Thread, "start", late_start)
    try:
        with pytest.raises(_Interrupted):
            destroy_links(links)  # type: ignore[arg-type]
        at_return = list(log)
    finally:
        monkeypatch.undo()
        threading.Event().wait(1.0)       # let a stray thread finish before the next test
    assert at_return.count("begin") == 4
    assert at_return.count("end") == 4, "detaches left in flight"
