"""Executable-memory workload (ABI 2.1 records) shared by the host test (tracepoint
sensor, tests/kernel/test_sensor_xmem.py) and the VM test (hook sensor,
tests/vm/test_xmem_lsm.py): what a shellcode loader does, and what ld.so does.

``python -c WORKLOAD SHARED_DIR REPEATS`` (SHARED_DIR: a sticky world-writable
directory) exits 0 after, in this order:

1. ``mmap`` anonymous RWX (a classic shellcode buffer);
2. ``mmap`` anonymous RW, write a ``ret``, ``mprotect`` RX (the W->X flip), call it,
   then REPEATS more flips of one region (a JIT's pattern: one record per window);
3. ``memfd_create("xmem-test")``, write, ``mmap`` it RX (fileless code);
4. a file in SHARED_DIR mapped RX (a dropper's staged library);
5. the benign control: an installed file (the interpreter) mapped RX again, as ld.so
   maps libraries.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

REPEATS = 40


class _Sensor(Protocol):
    def poll(self, timeout_s: float) -> list[Any]: ...
    def drops(self) -> int: ...

WORKLOAD = r'''
import ctypes, os, sys
shared, repeats = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
R, W, X = 1, 2, 4
PRIVATE, SHARED, ANON = 2, 1, 0x20
FAIL = ctypes.c_void_p(-1).value
def mm(prot, flags, fd=-1):
    p = libc.mmap(None, 4096, prot, flags, fd, 0)
    if p in (None, FAIL):
        sys.exit("mmap: errno %d" % ctypes.get_errno())
    return p
mm(R | W | X, PRIVATE | ANON)                              # 1
code = mm(R | W, PRIVATE | ANON)                           # 2
ctypes.memmove(code, b"\xc3", 1)
if libc.mprotect(code, 4096, R | X):
    sys.exit("mprotect: errno %d" % ctypes.get_errno())
ctypes.CFUNCTYPE(None)(code)()
for _ in range(repeats):
    libc.mprotect(code, 4096, R | W)
    libc.mprotect(code, 4096, R | X)
fd = os.memfd_create("xmem-test", 0)                       # 3
os.write(fd, b"\xc3" * 4096)
mm(R | X, SHARED, fd)
staged = os.path.join(shared, "stage.so")                  # 4
with open(staged, "wb") as f:
    f.write(b"\xc3" * 4096)
sfd = os.open(staged, os.O_RDONLY)
mm(R | X, PRIVATE, sfd)
lib = os.open("/proc/self/exe", os.O_RDONLY)               # 5: an installed binary
mm(R | X, PRIVATE, lib)
print(os.getpid())
'''


def xmem_records(events: list[Any], pid: int) -> list[tuple[str, tuple[str, ...], str]]:
    """(op, why, path) of the workload process's executable-memory records, in order."""
    from bastion.events import MmapEvent

    return [(e.op, e.why, e.path) for e in events if isinstance(e, MmapEvent) and e.proc.pid == pid]


def collect_workload(sensor: _Sensor, cg: Path, tmp_path: Path, *, timeout: float,
                     settle_s: float, until_empty: bool = False) -> tuple[list[Any], int]:
    """Run WORKLOAD in the test cgroup ``cg`` with an open ``sensor``; the events it
    polled for ``settle_s`` after the workload exited (none dropped) and the pid.
    ``until_empty``: stop at the first poll that returns nothing (the workload has
    exited: every event of it is in the ring already, tests/support/live.py);
    ``settle_s`` then only bounds the read."""
    from support.cg import run_in

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    r = run_in(cg, [sys.executable, "-c", WORKLOAD, str(shared), str(REPEATS)], timeout=timeout)
    assert r.returncode == 0, r.stderr
    events: list[Any] = []
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        evs = sensor.poll(0.05) or []
        if until_empty and not evs:
            break
        events += evs
    assert sensor.drops() == 0
    return events, int(r.stdout.split()[-1])
