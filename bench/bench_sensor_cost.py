"""Sensor program cost (issue 15.1/15.2): kernel run time per invocation of the
tracepoint sensor's exec program and openat-exit program, from the kernel's own
BPF run-time statistics (``BPF_ENABLE_STATS``, on only while this script holds
the fd), not from wall-clock loops: on a shared 2-vCPU host those swing by 10-20 %,
these do not.

The sensor is scoped to a fresh cgroup; the C loops run inside it:
* ``exec_loop`` (fork + exec /bin/true): ``on_exec`` reads the script, fds 0/1 and
  scans the new image's environment for loader variables;
* ``open_loop read`` of /etc/hostname: a read-open outside the sensitive set —
  ``on_openat_ret`` checks the file and its ancestors against ``sens_inodes`` and
  reports nothing; once with the default set, once with the set off (the floor).

Figures: ``sensor_exec_prog`` and ``sensor_read_open_prog`` (ns per run, the
sensitive set on) and ``sensor_read_open_prog_off`` (set off).  Targets: exec
<= 10 us (fork+exec is ~600 us here), read-open <= 1 us.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from _common import c_program, check_target, emit, finish, log, require_root

from bastion.integrity.bpfinfo import prog_id_of_fd
from bastion.kernel import cgroup
from bastion.sensors.bpf import BpfSensor

EXECS = 2000
OPENS = 200_000
PROGS = ("on_exec", "on_openat_ret")


def _stats(ids: dict[str, int]) -> dict[str, dict[str, Any]]:
    """This sensor's programs by id (other agents and tests on the host load programs
    of the same names)."""
    out = {}
    for name, pid in ids.items():
        out[name] = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"],
                                              capture_output=True, text=True, check=True).stdout)
    return out


def _session(sensitive_on: bool, execs: Path, opens: Path) -> dict[str, float]:
    cg = cgroup.create(f"bastion-bench-{uuid.uuid4().hex[:10]}")
    sensor = BpfSensor(cgroup_id=cgroup.cgroup_id(cg), **({} if sensitive_on else {"sensitive": ()}))
    sensor.open()
    try:
        lo = sensor._lo
        assert lo is not None and lo.obj is not None
        ids = {n: prog_id_of_fd(lo.obj.program(n).fd) for n in PROGS}
        before = _stats(ids)
        shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
        subprocess.run(["/bin/sh", "-c", shell, "sh", str(execs), str(EXECS)], check=True,
                       capture_output=True, timeout=300)
        subprocess.run(["/bin/sh", "-c", shell, "sh", str(opens), "read", str(OPENS), "/etc/hostname"],
                       check=True, capture_output=True, timeout=300)
        after = _stats(ids)
        while sensor.poll(0.01):
            pass
    finally:
        sensor.close()
        cgroup.remove(cg)
    out = {}
    for name in PROGS:
        runs = after[name].get("run_cnt", 0) - before[name].get("run_cnt", 0)
        ns = after[name].get("run_time_ns", 0) - before[name].get("run_time_ns", 0)
        out[name] = ns / runs if runs else float("nan")
        log(f"sensitive {'on ' if sensitive_on else 'off'}: {name} {runs} runs, {out[name]:.0f} ns/run")
    return out


def main() -> None:
    require_root()
    if shutil.which("bpftool") is None:
        log("bpftool missing")
        raise SystemExit(2)
    execs, opens = c_program("exec_loop"), c_program("open_loop")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)           # BPF_STATS_RUN_TIME
    fd = libc.syscall(321, 32, attr, 8)          # bpf(BPF_ENABLE_STATS, ...)
    if fd < 0:
        log(f"BPF_ENABLE_STATS refused: {os.strerror(ctypes.get_errno())}")
        raise SystemExit(2)
    try:
        on = _session(True, execs, opens)
        off = _session(False, execs, opens)
    finally:
        os.close(fd)
    emit("sensor_exec_prog", on["on_exec"], "ns", ".0f")
    emit("sensor_read_open_prog", on["on_openat_ret"], "ns", ".0f")
    emit("sensor_read_open_prog_off", off["on_openat_ret"], "ns", ".0f")
    check_target("sensor_exec_prog", on["on_exec"], 10_000)
    check_target("sensor_read_open_prog", on["on_openat_ret"], 1_000)
    finish()


if __name__ == "__main__":
    main()
