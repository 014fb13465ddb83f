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
from bastion.events import OPEN_WRITE_FLAGS, Event, FileEvent
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


# s22 review M9: openat2's how.flags are read from the caller's memory at sys_enter,
# before the kernel copies them; a second process sharing the struct flips it without
# pause, so some calls open otherwise than the sensor's copy says.  Each call opens a
# name of its own (no dedup across them) and the client reports what the kernel did
# (F_GETFL of the descriptor; whether the file exists): "w" files exist and flip
# O_RDONLY <-> O_WRONLY|O_CREAT; "c" files do not, and flip O_RDONLY <-> O_RDONLY|O_CREAT
# (a read-only descriptor of a file the open created).
RACE = textwrap.dedent("""
    import ctypes, fcntl, mmap, os, struct, sys, time
    w, n = sys.argv[1], int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    m = mmap.mmap(-1, 4096)              # shared with the flipper; its open_how at 0
    how = ctypes.addressof(ctypes.c_char.from_buffer(m))
    cpus = sorted(os.sched_getaffinity(0))
    go = os.fork()
    if go == 0:                          # the flipper, on a CPU of its own where there is one
        os.sched_setaffinity(0, {cpus[-1]})
        a, b = struct.pack("<Q", os.O_RDONLY), struct.pack("<Q", os.O_WRONLY | os.O_CREAT)
        c = struct.pack("<Q", os.O_RDONLY | os.O_CREAT)
        end = time.monotonic() + 20
        m[65] = 1
        while m[64] != 2 and time.monotonic() < end:
            one = c if m[64] else b
            for _ in range(1000):   # (the first "c" opens may still see O_WRONLY|O_CREAT)
                m[0:8] = a
                m[0:8] = one
        os._exit(0)
    os.sched_setaffinity(0, {cpus[0]})
    while not m[65]:
        time.sleep(0.001)
    done = []
    for kind, cap in (("w", 3), ("c", 2)):
        m[64] = kind == "c"
        seen = [0, 0]                    # w: read-, write-opens; c: ENOENT, created
        end = time.monotonic() + cap     # until 20 of each (a loaded host: the flipper
        for i in range(n):               # may sit still for a while)
            if min(seen) >= 20 or time.monotonic() > end:
                break
            fd = libc.syscall(437, -100, f"{w}/{kind}{i}".encode(), ctypes.c_void_p(how), 24)
            if fd >= 0:
                acc = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
                done.append(f"{kind}{i} {acc}")
                os.close(fd)
            seen[kind == "c" and fd >= 0 or kind == "w" and fd >= 0 and acc != 0] += 1
    m[64] = 2
    os.waitpid(go, 0)
    print("\\n".join(done))
    """)


@pytest.mark.parametrize("btf_loads", [True, False], ids=["btf", "probe-read"])
def test_openat2_flags_flipped_before_the_kernel_copies_them(tmp_path: Path,
                                                              btf_loads: bool) -> None:
    """Every open the kernel made for writing, or that created its file, is reported
    with write intent; no read-only open of an existing file is reported as a write.
    Failed before (the flags as read at entry: write-opens missing, read-opens
    reported O_WRONLY|O_CREAT)."""
    n = 600
    for i in range(n):
        (tmp_path / f"w{i}").write_text("x")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, btf_loads=btf_loads, sensitive=())
        sensor.open()
        try:
            proc = run_in(cg, [sys.executable, "-c", RACE, str(tmp_path), str(n)], timeout=60)
            assert proc.returncode == 0, proc.stderr
            events = _drain(sensor)
            assert sensor.stats()["drops"] == 0
        finally:
            sensor.close()
    did = dict(line.split() for line in proc.stdout.splitlines())
    kernel_write = {k for k, acc in did.items() if int(acc) != os.O_RDONLY}
    created = {k for k in did if k.startswith("c")}
    kernel_read = set(did) - kernel_write - created
    # the flipping took effect both ways: the attack happened
    assert kernel_write and kernel_read and created, did
    recs: dict[str, list[FileEvent]] = {}
    for e in events:
        if isinstance(e, FileEvent) and e.op == "open" and e.path.startswith(str(tmp_path)):
            recs.setdefault(os.path.relpath(e.path, tmp_path), []).append(e)
    intent = {k for k, v in recs.items() if any(e.flags & OPEN_WRITE_FLAGS for e in v)}
    assert kernel_write | created <= intent, sorted((kernel_write | created) - intent)
    assert not intent & kernel_read, sorted(intent & kernel_read)
    for k in kernel_write:
        assert recs[k][0].flags & os.O_ACCMODE == os.O_WRONLY, (k, recs[k])
    for k in created:
        assert recs[k][0].flags & os.O_CREAT and recs[k][0].created is True, (k, recs[k])
