"""Kill sensor cost (s15-svc, issue 15 item 3; s16-sig): kernel run time per invocation
of the tracepoint sensor's ``on_kill`` program, from the kernel's BPF run-time statistics
(as bench_sensor_cost.py), and the wall time per signal of the sending loop with the
sensor loaded and without.

Since s16-sig ``on_kill`` is the ``signal:signal_generate`` tracepoint (every generated
signal, any sending path); before it was ``sys_enter_kill`` (kill(2) only).  Modes, each
200,000 signals from ``kill_loop`` (the signal is ignored by sender and target):

* ``initns`` / ``childns``: SIGWINCH to its child, the loop in the initial pid namespace /
  in a child one (``unshare --pid --fork``: the old program walked the namespace's pid idr);
  SIGWINCH is benign: since s16-sig it is dropped in the program, before it crossed;
* ``harmful``: SIGUSR1 to its child (crosses the ring: a record per signal);
* ``self``: SIGUSR1 to itself (the common benign case: dropped in the program since s16-sig).

The sensor is scoped to a fresh cgroup with only the kill class.  Figures:
``sensor_kill_prog_<mode>`` (ns per run) and ``kill_loop_<mode>_on``/``_off`` (ns per
signal of the loop, sensor loaded / not).  Target: <= 1 us per run.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import time
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


MODES = {"initns": ([], "28", ""), "childns": (["unshare", "--pid", "--fork"], "28", ""),
         "harmful": ([], "10", ""), "self": ([], "10", "self")}


def _loop(cg: Path, loop: Path, mode: str) -> float:
    """Run the loop in ``cg``; wall ns per signal."""
    pre, sig, self_ = MODES[mode]
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    argv = pre + [str(loop), str(KILLS), sig] + ([self_] if self_ else [])
    t0 = time.perf_counter_ns()
    subprocess.run(["/bin/sh", "-c", shell, "sh", *argv], check=True, capture_output=True,
                   timeout=300)
    return (time.perf_counter_ns() - t0) / KILLS


def _session(loop: Path, mode: str) -> tuple[float, float, float]:
    cg = cgroup.create(f"bastion-bench-{uuid.uuid4().hex[:10]}")
    sensor = BpfSensor(cgroup_id=cgroup.cgroup_id(cg), classes=("kill",))
    sensor.open()
    try:
        lo = sensor._lo
        assert lo is not None and lo.obj is not None
        pid = prog_id_of_fd(lo.obj.program("on_kill").fd)
        runs0, ns0 = _run_ns(pid)
        wall_on = _loop(cg, loop, mode)
        runs1, ns1 = _run_ns(pid)
        while sensor.poll(0.01):
            pass
    finally:
        sensor.close()
    try:
        wall_off = _loop(cg, loop, mode)
    finally:
        cgroup.remove(cg)
    runs, ns = runs1 - runs0, ns1 - ns0
    per = ns / runs if runs else float("nan")
    log(f"{mode}: on_kill {runs} runs, {per:.0f} ns/run; loop {wall_on:.0f} ns/signal with "
        f"the sensor, {wall_off:.0f} without")
    return per, wall_on, wall_off


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
        got = {mode: _session(loop, mode) for mode in MODES}
    finally:
        os.close(fd)
    for mode, (per, on, off) in got.items():
        emit(f"sensor_kill_prog_{mode}", per, "ns", ".0f")
        emit(f"kill_loop_{mode}_on", on, "ns", ".0f")
        emit(f"kill_loop_{mode}_off", off, "ns", ".0f")
        check_target(f"sensor_kill_prog_{mode}", per, 1_000)
    finish()


if __name__ == "__main__":
    main()
