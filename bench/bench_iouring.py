"""Cost of the compat sensor's io_uring programs (s22-uring, issue 15.3): kernel run
time per invocation (``BPF_ENABLE_STATS``, as bench_logacts.py) of ``on_iou_submit_req``,
``on_iou_connect_req`` (every submitted request) and ``on_iou_complete`` (every
completion).  They sit on the ring's own tracepoints: no syscall pays anything.

A raw io_uring client (ctypes) in a fresh cgroup submits, one request per
``io_uring_enter``:
* ``nop``: IORING_OP_NOP: every program reads the opcode and leaves;
* ``open_ro``: IORING_OP_OPENAT O_RDONLY of a plain file (closed after): the completion
  takes the descriptor's file and the sensitive-set verdict cache, no record.

Figures ``iouring_<prog>_<mode>`` (ns per run).  Target: each <= 300 ns.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

from _common import check_target, emit, finish, log, ns_per_run, prog_run_stats, require_root

from bastion.integrity.bpfinfo import prog_id_of_fd
from bastion.kernel import cgroup
from bastion.sensors.bpf import BpfSensor

ROUNDS = 20_000
PROGS = ("on_iou_submit_req", "on_iou_connect_req", "on_iou_complete")

CLIENT = r'''
import ctypes, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
mode, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
p = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 8, p)
assert fd >= 0
n_sq, n_cq = struct.unpack_from("<II", p, 0)
sqo = struct.unpack_from("<7I", p, 40)
cqo = struct.unpack_from("<6I", p, 80)
sq = mmap.mmap(fd, sqo[6] + n_sq * 4, offset=0)
sqes = mmap.mmap(fd, n_sq * 64, offset=0x10000000)
cq = mmap.mmap(fd, cqo[5] + n_cq * 16, offset=0x8000000)
buf = ctypes.create_string_buffer(path)
op = 0 if mode == "nop" else 18
sqe = struct.pack("<BBHiQQIIQHHiQQ", op, 0, 0, -100, 0, ctypes.addressof(buf) if op else 0,
                  0, 0, 1, 0, 0, 0, 0, 0)
u32 = lambda m, o: struct.unpack_from("<I", m, o)[0]
for _ in range(n):
    tail = u32(sq, sqo[1]); i = tail & u32(sq, sqo[2])
    sqes[i * 64:(i + 1) * 64] = sqe
    struct.pack_into("<I", sq, sqo[6] + i * 4, i)
    struct.pack_into("<I", sq, sqo[1], tail + 1)
    assert libc.syscall(426, fd, 1, 1, 1, None, 0) >= 0
    head = u32(cq, cqo[0])
    res = struct.unpack_from("<i", cq, cqo[5] + (head & u32(cq, cqo[2])) * 16 + 8)[0]
    struct.pack_into("<I", cq, cqo[0], head + 1)
    if op:
        assert res >= 0, res
        os.close(res)
'''


def main() -> None:
    require_root()
    if shutil.which("bpftool") is None:
        log("bpftool missing")
        raise SystemExit(2)
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)           # BPF_STATS_RUN_TIME
    sfd = libc.syscall(321, 32, attr, 8)         # bpf(BPF_ENABLE_STATS, ...)
    if sfd < 0:
        log(f"BPF_ENABLE_STATS refused: {os.strerror(ctypes.get_errno())}")
        raise SystemExit(2)
    cg = cgroup.create(f"bastion-bench-{uuid.uuid4().hex[:10]}")
    tmp = tempfile.mkdtemp(prefix="bench-iouring-")
    plain = os.path.join(tmp, "plain")
    with open(plain, "w") as f:
        f.write("x\n")
    sensor = BpfSensor(cgroup_id=cgroup.cgroup_id(cg))
    results: dict[str, float] = {}
    try:
        sensor.open()
        lo = sensor._lo
        assert lo is not None and lo.obj is not None
        ids = {n: prog_id_of_fd(lo.obj.program(n).fd) for n in PROGS}
        shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
        for mode in ("nop", "open_ro"):
            before = prog_run_stats(ids)
            subprocess.run(["/bin/sh", "-c", shell, "sh", sys.executable, "-c", CLIENT, mode,
                            str(ROUNDS), plain], check=True, capture_output=True, timeout=300)
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
        emit(f"iouring_{key}", v, "ns", ".0f")
    for key, v in results.items():
        check_target(f"iouring_{key}", v, 300)
    finish()


if __name__ == "__main__":
    main()
