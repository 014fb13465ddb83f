"""The tracepoint sensor's two sets of open programs (s16-open): the exit-only
programs with BTF-typed loads (the caller's flags and mode from its saved
registers, the file through bpf_rdonly_cast, a per-CPU verdict cache) and the
probe-read entry/exit pairs kept for kernels without them.  Each set, forced
with ``btf_loads``, must report the same records for the same workload: write
intent by every open syscall (openat, open, creat, openat2) with its flags and
mode, a sensitive read once per dedup window, no record for a plain read or an
O_PATH descriptor of a secret, and (ABI 2.10) whether the open created the file and
whether it was empty, read from the kernel's file, whatever the flags say."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bastion import abi
from bastion.events import Event, FileEvent
from bastion.sensors.bpf import BTF_OPEN_PROGRAMS, PROBE_OPEN_PROGRAMS, BpfSensor
from support.cg import run_in, scoped_cgroup
from support.live import drain_events

pytestmark = pytest.mark.kernel

WORKLOAD = textwrap.dedent("""
    import ctypes, os, sys
    w = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    def ok(fd):
        if fd < 0:
            raise OSError(ctypes.get_errno(), "workload")
        os.close(fd)
    for _ in range(3):                                   # one record per dedup window
        ok(os.open(f"{w}/vault/key", os.O_RDONLY))
    ok(os.open(f"{w}/plain", os.O_RDONLY))               # no record
    ok(os.open(f"{w}/vault/pathonly", os.O_RDONLY | os.O_PATH))  # reads nothing: no record
    ok(os.open(f"{w}/wr", os.O_WRONLY))
    ok(os.open(f"{w}/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
    ok(os.open(f"{w}/trunc", os.O_RDONLY | os.O_TRUNC))  # write intent, read access
    ok(libc.syscall(2, f"{w}/legacy".encode(), os.O_RDWR))            # open(2)
    ok(libc.creat(f"{w}/created".encode(), 0o600))                     # creat(2)
    how = (ctypes.c_uint64 * 3)(os.O_WRONLY | os.O_CREAT, 0o604, 0)
    ok(libc.syscall(437, -100, f"{w}/via2".encode(), how, 24))         # openat2(2)
    ok(os.open(f"{w}/lock", os.O_RDWR | os.O_CREAT, 0o600))  # made by this open (ABI 2.10)
    ok(os.open(f"{w}/kept", os.O_RDWR | os.O_CREAT, 0o600))  # existing, with bytes
    ok(os.open(f"{w}/hollow", os.O_RDWR | os.O_CREAT, 0o600))  # existing, empty
    """)


def _drain(sensor: BpfSensor) -> list[Event]:
    """The workload has exited: read until a poll is empty (tests/support/live.py)."""
    return drain_events(sensor)


@pytest.mark.parametrize("btf_loads", [True, False], ids=["btf", "probe-read"])
def test_both_open_program_sets_report_the_same(tmp_path: Path, btf_loads: bool) -> None:
    (tmp_path / "vault").mkdir()
    (tmp_path / "vault" / "key").write_text("k\n")
    (tmp_path / "vault" / "pathonly").write_text("p\n")
    for name in ("plain", "wr", "trunc", "legacy", "kept"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "hollow").write_text("")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, btf_loads=btf_loads, open_dedup_s=1.0,
                           sensitive=[(str(tmp_path / "vault"), abi.SensClass.CUSTOM)])
        sensor.open()
        try:
            loaded, other = ((BTF_OPEN_PROGRAMS, PROBE_OPEN_PROGRAMS) if btf_loads
                             else (PROBE_OPEN_PROGRAMS, BTF_OPEN_PROGRAMS))
            assert loaded <= set(sensor.attached) and not other & set(sensor.attached)
            proc = run_in(cg, [sys.executable, "-c", WORKLOAD, str(tmp_path)], timeout=30)
            assert proc.returncode == 0, proc.stderr
            events = _drain(sensor)
        finally:
            sensor.close()
    opens = {}
    for e in events:
        if isinstance(e, FileEvent) and e.op == "open" and e.path.startswith(str(tmp_path)):
            opens.setdefault(os.path.relpath(e.path, tmp_path), []).append(e)
    assert sorted(opens) == sorted(["vault/key", "wr", "new", "trunc", "legacy", "created", "via2",
                                    "lock", "kept", "hollow"])
    (key,) = opens["vault/key"]
    assert key.sensitive == "custom" and key.flags & os.O_ACCMODE == os.O_RDONLY
    assert all(not e.sensitive for k, v in opens.items() if k != "vault/key" for e in v)
    acc = {k: v[0].flags & os.O_ACCMODE for k, v in opens.items()}
    assert acc == {"vault/key": os.O_RDONLY, "wr": os.O_WRONLY, "new": os.O_WRONLY,
                   "trunc": os.O_RDONLY, "legacy": os.O_RDWR, "created": os.O_WRONLY,
                   "via2": os.O_WRONLY, "lock": os.O_RDWR, "kept": os.O_RDWR,
                   "hollow": os.O_RDWR}
    assert opens["trunc"][0].flags & os.O_TRUNC
    assert opens["new"][0].flags & os.O_CREAT and opens["new"][0].mode == 0o640
    assert opens["created"][0].flags & (os.O_CREAT | os.O_TRUNC) == os.O_CREAT | os.O_TRUNC
    assert opens["created"][0].mode == 0o600
    assert opens["via2"][0].flags & os.O_CREAT and opens["via2"][0].mode == 0o604
    # ABI 2.10: whether the open created the inode, and whether it held no byte, from the
    # kernel's file (FMODE_CREATED, i_size at the exit: after creat's truncation), not
    # guessed from O_CREAT: the same flags on "lock", "kept" and "hollow"
    state = {k: (v[0].created, v[0].empty) for k, v in opens.items()}
    assert state == {"vault/key": (False, False), "wr": (False, False), "new": (True, True),
                     "trunc": (False, True), "legacy": (False, False), "created": (True, True),
                     "via2": (True, True), "lock": (True, True), "kept": (False, False),
                     "hollow": (False, True)}
    # ABI 3.0 (s21): the inode's ctime at the open (at the exit: after creat's truncation),
    # what stat says now (nothing changed the files since): every open record says it
    ctimes = {k: v[0].ctime_ns for k, v in opens.items()}
    assert ctimes == {k: os.stat(tmp_path / k).st_ctime_ns for k in opens}, ctimes


# An openat2 whose open_how another thread rewrites while the call is in the kernel:
# the call blocks on a FIFO (O_WRONLY waits for a reader), a second thread then turns
# the struct's flags into O_RDONLY and opens the FIFO for reading, which lets the
# first call finish.  The kernel opened for writing; a sensor that reads the struct
# again at exit would see a read-open outside the set and report nothing.
FLIP = textwrap.dedent("""
    import ctypes, os, sys, threading, time
    fifo = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    how = (ctypes.c_uint64 * 3)(os.O_WRONLY, 0, 0)
    out = []
    t = threading.Thread(target=lambda: out.append(
        libc.syscall(437, -100, fifo.encode(), how, 24)))
    t.start()
    time.sleep(0.3)                      # the writer is blocked inside openat2
    how[0] = os.O_RDONLY
    r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    t.join(10)
    assert out and out[0] >= 0, out
    os.close(out[0]); os.close(r)
    """)


@pytest.mark.parametrize("btf_loads", [True, False], ids=["btf", "probe-read"])
def test_openat2_flags_rewritten_during_the_call_still_report_the_write(
        tmp_path: Path, btf_loads: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, btf_loads=btf_loads, sensitive=())
        sensor.open()
        try:
            proc = run_in(cg, [sys.executable, "-c", FLIP, str(fifo)], timeout=30)
            assert proc.returncode == 0, proc.stderr
            events = _drain(sensor)
        finally:
            sensor.close()
    writes = [e for e in events if isinstance(e, FileEvent) and e.op == "open"
              and e.path == str(fifo)]
    assert len(writes) == 1 and writes[0].flags & os.O_ACCMODE == os.O_WRONLY, writes
