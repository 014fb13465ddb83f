"""Cost of the compat sensor's log-rewrite programs (s17-logacts) on calls they do not
report: kernel run time per invocation (``BPF_ENABLE_STATS``, as bench_sensor_cost.py)
of ``on_mmap``, ``on_mprotect`` (they existed: the executable-memory records), and the
new ``on_fcntl``, ``on_fallocate``, ``on_pwritev2``.

``logact_loop`` runs in a fresh cgroup, a clean process (no untrusted provenance):
* ``miss``: arguments no program reports (mmap PROT_READ MAP_PRIVATE, mprotect
  PROT_READ, fcntl F_GETFL, fallocate mode 0, pwritev2 flags 0): one compare and out;
* ``args``: arguments that pass the first compare (mmap PROT_WRITE MAP_SHARED, mprotect
  adding PROT_WRITE, fcntl F_SETFL without O_APPEND, fallocate PUNCH_HOLE, pwritev2
  RWF_NOAPPEND): the provenance lookup (``prov_actor``) then decides.

Figures ``logacts_<prog>_<mode>`` (ns per run; other processes' calls on the host are
counted too: the loop dominates).  With ``BASTION_BPF_DIR`` pointing at an older build
a program it lacks is skipped (the before figures).  Target: each <= 200 ns.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import uuid

from _common import c_program, check_target, emit, finish, log, ns_per_run, prog_run_stats, require_root

from bastion.integrity.bpfinfo import prog_id_of_fd
from bastion.kernel import cgroup
from bastion.sensors.bpf import BpfSensor

ROUNDS = 100_000
PROGS = ("on_mmap", "on_mprotect", "on_fcntl", "on_fallocate", "on_pwritev2")


def main() -> None:
    require_root()
    if shutil.which("bpftool") is None:
        log("bpftool missing")
        raise SystemExit(2)
    loop = c_program("logact_loop")
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)           # BPF_STATS_RUN_TIME
    sfd = libc.syscall(321, 32, attr, 8)         # bpf(BPF_ENABLE_STATS, ...)
    if sfd < 0:
        log(f"BPF_ENABLE_STATS refused: {os.strerror(ctypes.get_errno())}")
        raise SystemExit(2)
    cg = cgroup.create(f"bastion-bench-{uuid.uuid4().hex[:10]}")
    tmp = tempfile.mkdtemp(prefix="bench-logacts-")
    sensor = BpfSensor(cgroup_id=cgroup.cgroup_id(cg))
    results: dict[str, float] = {}
    try:
        sensor.open()
        lo = sensor._lo
        assert lo is not None and lo.obj is not None
        ids = {}
        for n in PROGS:
            try:
                ids[n] = prog_id_of_fd(lo.obj.program(n).fd)
            except Exception as e:   # noqa: BLE001 - an older object lacks the program
                log(f"{n}: not in this object ({type(e).__name__}): skipped")
        shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
        for mode in ("miss", "args"):
            before = prog_run_stats(ids)
            subprocess.run(["/bin/sh", "-c", shell, "sh", str(loop), mode, str(ROUNDS),
                            os.path.join(tmp, "f")], check=True, capture_output=True, timeout=300)
            after = prog_run_stats(ids)
            while sensor.poll(0.01):
                pass
            ns_per_run(before, after, mode, results)
    finally:
        sensor.close()
        cgroup.remove(cg)
        shutil.rmtree(tmp)
        os.close(sfd)
    for key, v in results.items():
        emit(f"logacts_{key}", v, "ns", ".0f")
    for key, v in results.items():
        check_target(f"logacts_{key}", v, 200)
    finish()


if __name__ == "__main__":
    main()
