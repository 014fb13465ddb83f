"""kill(2) sensor cost with the pid-namespace translation (s15-svc, issue 15 item 3):
kernel run time per invocation of the tracepoint sensor's ``on_kill`` program, from the
kernel's BPF run-time statistics (as bench_sensor_cost.py), for a caller in the initial
pid namespace (no walk: three reads) and for one in a child namespace (``unshare --pid
--fork``: the walk of the namespace's pid idr to the target's struct pid).

The sensor is scoped to a fresh cgroup with only the kill class; ``kill_loop`` sends
SIGWINCH (ignored) to its own child.  Figures: ``sensor_kill_prog_initns`` and
``sensor_kill_prog_childns`` (ns per run).  Target: <= 1 us each (a kill(2) is ~1 us).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from _common import c_program, check_target, emit, finish, log, require_root

from bastion.integrity.bpfinfo import prog_id_of_fd
from bastion.kernel import cgroup
from bastion.sensors.bpf import BpfSensor

KILLS = 200_000


def _run_ns(prog_id: int) -> tuple[int, int]:
    j = json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"],
                                  capture_output=True, text=True, check=True).stdout)
    return int(j.get("run_cnt", 0)), int(j.get("run_time_ns", 0))


def _session(loop: Path, child_ns: bool) -> float:
    cg = cgroup.create(f"bastion-bench-{uuid.uuid4().hex[:10]}")
    sensor = BpfSensor(cgroup_id=cgroup.cgroup_id(cg), classes=("kill",))
    sensor.open()
    try:
        lo = sensor._lo
        assert lo is not None and lo.obj is not None
        pid = prog_id_of_fd(lo.obj.program("on_kill").fd)
        runs0, ns0 = _run_ns(pid)
        shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
        argv = (["unshare", "--pid", "--fork"] if child_ns else []) + [str(loop), str(KILLS)]
        subprocess.run(["/bin/sh", "-c", shell, "sh", *argv], check=True, capture_output=True,
                       timeout=300)
        runs1, ns1 = _run_ns(pid)
        while sensor.poll(0.01):
            pass
    finally:
        sensor.close()
        cgroup.remove(cg)
    runs, ns = runs1 - runs0, ns1 - ns0
    per = ns / runs if runs else float("nan")
    log(f"{'child' if child_ns else 'initial'} pid namespace: on_kill {runs} runs, "
        f"{per:.0f} ns/run")
    return per


def main() -> None:
    require_root()
    if shutil.which("bpftool") is None:
        log("bpftool missing")
        raise SystemExit(2)
    loop = c_program("kill_loop")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)           # BPF_STATS_RUN_TIME
    fd = libc.syscall(321, 32, attr, 8)          # bpf(BPF_ENABLE_STATS, ...)
    if fd < 0:
        log(f"BPF_ENABLE_STATS refused: {os.strerror(ctypes.get_errno())}")
        raise SystemExit(2)
    try:
        init = _session(loop, False)
        child = _session(loop, True)
    finally:
        os.close(fd)
    emit("sensor_kill_prog_initns", init, "ns", ".0f")
    emit("sensor_kill_prog_childns", child, "ns", ".0f")
    check_target("sensor_kill_prog_initns", init, 1_000)
    check_target("sensor_kill_prog_childns", child, 1_000)
    finish()


if __name__ == "__main__":
    main()
