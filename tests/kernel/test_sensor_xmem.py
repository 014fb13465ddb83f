"""Executable memory on the tracepoint sensor (ABI 1.5, bpf/lib/xmem.h): what a
shellcode loader does (anonymous RWX, a W->X flip, a memfd or a staged temp file
mapped executable) crosses the ring, filtered in the kernel; what ld.so does (an
installed file mapped executable) does not; a JIT's repeated flips cross once per
window (counted in ``mmap_deduplicated``).  Before ABI 1.5 none of it was reported."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bastion.events import Event, MemfdEvent, MmapEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup
from support.xmem import WORKLOAD, xmem_records

pytestmark = pytest.mark.kernel

REPEATS = 40


def _run(tmp_path: Path, **kw: float) -> tuple[list[Event], int, BpfSensor]:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, **kw)  # type: ignore[arg-type]
        sensor.open()
        try:
            r = run_in(cg, [sys.executable, "-c", WORKLOAD, str(shared), str(REPEATS)], timeout=60)
            assert r.returncode == 0, r.stderr
            events: list[Event] = []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                events += sensor.poll(0.05) or []
            assert sensor.drops() == 0
        finally:
            sensor.close()
    return events, int(r.stdout.split()[-1]), sensor


def test_exec_memory_reported_and_ld_so_quiet(tmp_path: Path) -> None:
    events, pid, sensor = _run(tmp_path, mmap_dedup_s=30)
    stage = str(tmp_path / "shared" / "stage.so")
    got = xmem_records(events, pid)
    # exactly the loader's four: the interpreter's own libraries (ld.so) and the installed
    # file mapped executable (5.) stay quiet, the flips after the first are deduplicated
    assert got == [("mmap", ("anon", "write-exec"), ""), ("mprotect", ("anon", "w2x"), ""),
                   ("mmap", ("no-link",), "memfd:xmem-test"), ("mmap", ("tmp-file",), stage)], got
    # the memfd itself (sys_enter_memfd_create)
    assert any(isinstance(e, MemfdEvent) and e.name == "xmem-test" and e.proc.pid == pid
               for e in events)
    ev = next(e for e in events if isinstance(e, MmapEvent) and e.op == "mprotect")
    assert ev.prot == 5 and ev.addr and ev.length == 4096, ev
    assert sensor.mmap_deduplicated() >= REPEATS - 1


def test_jit_flips_without_dedup_each_cross(tmp_path: Path) -> None:
    events, pid, sensor = _run(tmp_path, mmap_dedup_s=0)
    flips = [g for g in xmem_records(events, pid) if g[0] == "mprotect" and "w2x" in g[1]]
    assert len(flips) >= REPEATS, len(flips)
    assert sensor.mmap_deduplicated() == 0
