"""Executable memory on the tracepoint sensor (ABI 2.1, bpf/lib/xmem.h): what a
shellcode loader does (anonymous RWX, a W->X flip, a memfd or a staged temp file
mapped executable) crosses the ring, filtered in the kernel; what ld.so does (an
installed file mapped executable) does not; a JIT's repeated flips cross once per
window (counted in ``mmap_deduplicated``).  Before ABI 2.1 none of it was reported."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bastion.events import Event, MemfdEvent, MmapEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup
from support.xmem import REPEATS, collect_workload, xmem_records

pytestmark = pytest.mark.kernel



def _run(tmp_path: Path, **kw: float) -> tuple[list[Event], int, BpfSensor]:
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, **kw)  # type: ignore[arg-type]
        sensor.open()
        try:
            events, pid = collect_workload(sensor, cg, tmp_path, timeout=60, settle_s=10,
                                           until_empty=True)
        finally:
            sensor.close()
    return events, pid, sensor


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


LOADER_C = r"""
#include <string.h>
#include <sys/mman.h>
int main(void) {
    unsigned char *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 2;
    p[0] = 0xc3;                     /* ret */
    ((void (*)(void))p)();
    return 0;
}
"""

DOWNLOAD = ("import shutil, socket, sys\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); s.close()\n"
            "shutil.copyfile(sys.argv[2], sys.argv[3])\n")


def test_downloaded_loader_is_stopped_live(tmp_path: Path) -> None:
    """The live chain: a process connects out and writes a binary; the binary maps
    RWX memory and runs it -> the tracepoint sensor's record reaches
    behavior.exec_memory, which stops it (untrusted provenance: network-binary)."""
    import shutil
    import socket
    import subprocess

    from bastion.detect.behavior import behavior_rules
    from bastion.detect.engine import Engine, Finding, RuleContext
    from bastion.proctable import ProcessTable

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    src, built, ldr = tmp_path / "l.c", tmp_path / "built", tmp_path / "ldr"
    src.write_text(LOADER_C)
    subprocess.run(["gcc", "-O1", "-o", str(built), str(src)], check=True, timeout=60)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    with lst, scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, mmap_dedup_s=10)
        sensor.open()
        try:
            procs, engine = ProcessTable(), Engine(behavior_rules())
            ctx = RuleContext(procs)
            r = run_in(cg, [sys.executable, "-c", DOWNLOAD, str(lst.getsockname()[1]), str(built),
                            str(ldr)], timeout=60)
            assert r.returncode == 0, r.stderr
            os.chmod(ldr, 0o755)
            r = run_in(cg, [str(ldr)], timeout=60)
            assert r.returncode == 0, r.stderr
            # both have exited: every event is in the ring, read until a poll is empty
            found: list[Finding] = []
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                evs = sensor.poll(0.05) or []
                if not evs:
                    break
                for ev in evs:
                    procs.update(ev)
                    found += engine.evaluate(ev, ctx)
        finally:
            sensor.close()
    xm = [f for f in found if f.rule == "behavior.exec_memory"]
    assert len(xm) == 1, [f.title for f in found]
    assert (xm[0].severity, xm[0].action) == ("high", "kill"), xm[0]
    assert "network-binary" in xm[0].evidence["provenance"]
    assert "ldr mapped writable+executable memory" in xm[0].title, xm[0].title
