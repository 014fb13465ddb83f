"""Executable memory and memfd on the hook sensor (ABI 2.1), Debian's stock kernel.

``fentry/security_mmap_file`` and ``security_file_mprotect`` see every mapping made
executable, whatever the path into the kernel (the vma and file are the kernel's own:
a W->X flip is told from the region's flags before the change, not from arguments);
``fexit/__x64_sys_memfd_create`` reports the memfd from the file the kernel made.
The same workload as the host test (tests/support/xmem.py): a loader's four mappings
cross the ring, ld.so's and an installed file's do not, a JIT's repeated flips cross
once per window.  Before ABI 2.1 the hook sensor reported none of it (no record
type) and no memfd_create."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.events import Event, MemfdEvent  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402
from support.xmem import REPEATS, collect_workload, xmem_records  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)")


def run_workload(tmp_path: Path, mmap_dedup_s: float) -> tuple[list[Event], int, HookSensor]:
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, mmap_dedup_s=mmap_dedup_s)
        sensor.open()
        try:
            assert {"on_mmap_file", "on_file_mprotect", "on_memfd_create"} <= set(sensor.attached), \
                sensor.missing
            events, pid = collect_workload(sensor, cg, tmp_path, timeout=120, settle_s=2.0)
        finally:
            sensor.close()
    return events, pid, sensor


def check_loader_records(tmp_path: Path) -> None:
    events, pid, sensor = run_workload(tmp_path, mmap_dedup_s=30)
    got = xmem_records(events, pid)
    stage = str(tmp_path / "shared" / "stage.so")
    memfd = [g for g in got if "no-link" in g[1]]
    assert len(memfd) == 1 and memfd[0][2].lstrip("/").startswith("memfd:xmem-test"), got
    assert got == [("mmap", ("anon", "write-exec"), ""), ("mprotect", ("anon", "w2x"), ""),
                   memfd[0], ("mmap", ("tmp-file",), stage)], got
    flip = [e for e in events if getattr(e, "op", "") == "mprotect" and e.proc.pid == pid][0]
    assert flip.addr and flip.length == 4096 and flip.prot == 5, flip   # the kernel's vma
    assert sensor.mmap_deduplicated() >= REPEATS - 1
    # memfd_create from the kernel's file: its name and flags
    mf = [e for e in events if isinstance(e, MemfdEvent) and e.proc.pid == pid]
    assert [(e.name, e.flags) for e in mf] == [("xmem-test", 0)], mf


def test_loader_mappings_reported_ld_so_quiet(tmp_path: Path) -> None:
    check_loader_records(tmp_path)


def test_jit_flips_without_dedup_each_cross(tmp_path: Path) -> None:
    events, pid, sensor = run_workload(tmp_path, mmap_dedup_s=0)
    flips = [g for g in xmem_records(events, pid) if g[0] == "mprotect" and "w2x" in g[1]]
    assert len(flips) >= REPEATS, len(flips)
    assert sensor.mmap_deduplicated() == 0
