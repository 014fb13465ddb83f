"""In-kernel dedup on the tracepoint sensor (issue 16.2, bpf/lib/dedup.h): a repeat
write-open of one inode, or a repeat connect to one address and port, by one process
within the window crosses the ring once; a different inode, port or process, and
every repeat with the window off, still does.

The flood this answers: a loop of write-opens of one file (or of connects to one
service) fills the ring faster than the agent drains it, and whatever else
happens in that second is dropped with it (the agent is blinded)."""

from __future__ import annotations

import socket
import sys
import textwrap
from pathlib import Path

import pytest

from bastion.events import Event, FileEvent, KillEvent, NetEvent, PtraceEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup
from support.extfs import REUSE_SCRIPT, ext4_mount
from support.floods import KILL_SCRIPT, XMEM_SCRIPT
from support.live import drain_events

pytestmark = pytest.mark.kernel

REPEATS = 50

WORKLOAD = textwrap.dedent("""
    import os, socket, sys
    work, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for name in ("a", "b"):
        for _ in range(n):
            fd = os.open(os.path.join(work, name), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    for p in (port, port + 1 if port < 65535 else port - 1):
        for _ in range(n):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect(("127.0.0.1", p))
            except OSError:
                pass
            s.close()
    """)


def _record(tmp: Path, port: int, **kw: float) -> tuple[list[Event], BpfSensor]:
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, **kw)  # type: ignore[arg-type]
        sensor.open()
        try:
            for _ in range(2):   # two processes: the window is per process
                proc = run_in(cg, [sys.executable, "-c", WORKLOAD, str(tmp), str(port),
                                   str(REPEATS)], timeout=60)
                assert proc.returncode == 0, proc.stderr
            events: list[Event] = []
            events += drain_events(sensor)   # the workload has exited
            assert sensor.drops() == 0
        finally:
            sensor.close()
    return events, sensor


def _counts(events: list[Event], tmp: Path, port: int) -> dict[str, int]:
    out = {}
    for name in ("a", "b"):
        out[name] = sum(1 for e in events if isinstance(e, FileEvent) and e.op == "open"
                        and e.path == str(tmp / name))
    out["port"] = sum(1 for e in events if isinstance(e, NetEvent) and e.op == "connect"
                      and e.dport == port and e.daddr == "127.0.0.1")
    return out


@pytest.fixture()
def listener() -> object:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(256)
    try:
        yield srv
    finally:
        srv.close()


def test_repeats_cross_the_ring_once_per_process(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    events, sensor = _record(tmp_path, port, open_dedup_s=30, net_dedup_s=30)
    # one report per process and object, not REPEATS
    assert _counts(events, tmp_path, port) == {"a": 2, "b": 2, "port": 2}
    st = sensor.stats()
    assert st["open_deduplicated"] >= 2 * 2 * (REPEATS - 1)
    assert st["net_deduplicated"] >= 2 * (REPEATS - 1)


def test_window_off_reports_every_repeat(tmp_path: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    events, sensor = _record(tmp_path, port)
    assert _counts(events, tmp_path, port) == {"a": 2 * REPEATS, "b": 2 * REPEATS,
                                               "port": 2 * REPEATS}
    assert sensor.stats()["open_deduplicated"] == 0
    assert sensor.stats()["net_deduplicated"] == 0


# s19 review: the open key was (process, inode number, device, access, flags), and ext4
# gives the inode number an unlink freed to the next new file at once.  One shell, two
# ways in: (1) the finding's, a new authorized_keys2 made by the same redirection as a
# scratch file just removed (the open creates the file: FMODE_CREATED); (2) an
# authorized_keys another process made, on the number of a file the shell appended to
# and removed, appended to in turn (no create: only the inode's generation tells).
# Echoes "$$ a b c d": the shell's pid and the inode numbers (a == b, c == d).
REUSE = REUSE_SCRIPT + 'echo "$$ $a $b $c $d"\n'


def test_new_file_on_a_freed_inode_number_is_reported(tmp_path: Path) -> None:
    with ext4_mount(tmp_path) as mnt, scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, open_dedup_s=30)
        sensor.open()
        try:
            proc = run_in(cg, ["/bin/bash", "-c", REUSE, "bash", str(mnt)], timeout=60)
            assert proc.returncode == 0, proc.stderr
            events = drain_events(sensor)
            assert sensor.drops() == 0
        finally:
            sensor.close()
    pid, a, b, c, d = (int(x) for x in proc.stdout.split())
    assert (a, c) == (b, d), "the filesystem did not reuse the inode numbers: no attack"
    opens = {e.path: e for e in events if isinstance(e, FileEvent) and e.op == "open"
             and e.proc.pid == pid}
    keys2, keys = opens.get(str(mnt / "authorized_keys2")), opens.get(str(mnt / "authorized_keys"))
    assert keys2 is not None and keys2.ino == b and keys2.created, sorted(opens)
    assert keys is not None and keys.ino == d and not keys.created, sorted(opens)
    # the two opens that came first were sent too (what the dedup had hidden behind)
    assert {str(mnt / ".x"), str(mnt / "y")} <= set(opens), sorted(opens)


# s30: any user may read its own child's memory with process_vm_readv(2) in a loop (1.2 M
# calls/s here): each call was a ptrace record, an agent under such a loop dropped 1.8 M
# records in 3 s, and with them the file and kill records of those seconds.  Now one
# record per (process image, request, target) per window (support/floods.py: child A
# and B read REPEATS times, an exec of the same pid, A read again; the new image's read
# is its own act: the exec is in the key, for opens too).


def _xmem(tmp: Path, script_text: str = XMEM_SCRIPT,
          **kw: float) -> tuple[list[Event], BpfSensor, tuple[int, int, int]]:
    script = tmp / "flood.py"
    script.write_text(script_text)
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, **kw)  # type: ignore[arg-type]
        sensor.open()
        try:
            proc = run_in(cg, [sys.executable, str(script), str(tmp), str(REPEATS)], timeout=60)
            assert proc.returncode == 0, proc.stderr
            events = drain_events(sensor)
            assert sensor.drops() == 0
        finally:
            sensor.close()
    me, a, b = (int(x) for x in proc.stdout.split())
    return events, sensor, (me, a, b)


def _reads(events: list[Event], me: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for e in events:
        if isinstance(e, PtraceEvent) and e.proc.pid == me and e.request_name == "VM_READV":
            out[e.target_pid] = out.get(e.target_pid, 0) + 1
    return out


def test_a_memory_read_loop_crosses_once_per_target_and_image(tmp_path: Path) -> None:
    events, sensor, (me, a, b) = _xmem(tmp_path, open_dedup_s=30)   # ptrace: the default
    assert _reads(events, me) == {a: 2, b: 1}      # A before and after the exec, B once
    assert sensor.stats()["ptrace_deduplicated"] >= 3 * (REPEATS - 1)
    # the open dedup keys the image too: the new image's write-open crossed
    opens = [e for e in events if isinstance(e, FileEvent) and e.op == "open"
             and e.proc.pid == me and e.path == str(tmp_path / "f")]
    assert len(opens) == 2, len(opens)


def test_the_ptrace_window_off_reports_every_read(tmp_path: Path) -> None:
    events, sensor, (me, a, b) = _xmem(tmp_path, ptrace_dedup_s=0)
    assert _reads(events, me) == {a: 2 * REPEATS, b: REPEATS}
    assert sensor.stats()["ptrace_deduplicated"] == 0


# s30: the same with signals: a kill(2) loop sending one's own child SIGUSR1 (1.3 M calls/s
# here) was a record per call.  One per (process image, signal, target) per window now.
def _signals(events: list[Event], me: int) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for e in events:
        if isinstance(e, KillEvent) and e.proc.pid == me and e.signal in (10, 12):
            k = (e.target_pid, e.signal)
            out[k] = out.get(k, 0) + 1
    return out


def test_a_signal_loop_crosses_once_per_signal_target_and_image(tmp_path: Path) -> None:
    events, sensor, (me, a, b) = _xmem(tmp_path, KILL_SCRIPT)   # the kill window: the default
    assert _signals(events, me) == {(a, 10): 2, (a, 12): 1, (b, 10): 1}
    assert sensor.stats()["kill_deduplicated"] >= 4 * (REPEATS - 1)


def test_the_kill_window_off_reports_every_signal(tmp_path: Path) -> None:
    events, sensor, (me, a, b) = _xmem(tmp_path, KILL_SCRIPT, kill_dedup_s=0)
    assert _signals(events, me) == {(a, 10): 2 * REPEATS, (a, 12): REPEATS, (b, 10): REPEATS}
    assert sensor.stats()["kill_deduplicated"] == 0
