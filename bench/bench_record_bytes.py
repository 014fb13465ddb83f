"""Ring bytes per file record (issue 16.2: variable-size records).

The tracepoint sensor (file events only) scoped to a test cgroup; a workload in it
does file operations on typical paths (a write-open, chmod, rename, unlink of files
under a temp dir laid out like /home, /var/lib and /etc).  Before draining, the ring's
pending bytes (record headers and 8-byte alignment included) are divided by the
records then decoded.  Under ABI 1.x every file record was 1,128 bytes (1,136 on the
ring); under 2.0 it is 120 bytes plus its strings.

Figures: ``record_bytes_file`` (mean ring bytes per file record of the mix),
``records_per_ring`` (file records of the mix a 16 MiB ring holds before it drops) and
``burst_drops`` (records dropped from a burst of 40,000 chmods of one typical path
while nobody drains: what a burst shorter than the ring costs).
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import emit, finish, log, require_root  # noqa: E402

from bastion import abi  # noqa: E402
from bastion.events import Event, FileEvent  # noqa: E402
from bastion.sensors.bpf import BpfSensor  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

ROUNDS = 200
BURST = 40_000

WORKLOAD = textwrap.dedent("""
    import os, sys
    base, rounds = sys.argv[1], int(sys.argv[2])
    dirs = [os.path.join(base, d) for d in
            ("home/alice/.cache/pip/http", "var/lib/dpkg/info", "etc/ssh", "tmp")]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    for i in range(rounds):
        for d in dirs:
            p = os.path.join(d, f"file{i}.tmp")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(p, 0o640)
            os.rename(p, p + ".new")
            os.unlink(p + ".new")
""")


def main() -> None:
    require_root()
    with tempfile.TemporaryDirectory(prefix="bastion-bench-rec-") as base, \
            scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("file",), sensitive=(),
                           ring_bytes=abi.RINGBUF_BYTES)
        sensor.open()
        try:
            r = run_in(cg, [sys.executable, "-c", WORKLOAD, base, str(ROUNDS)], timeout=120)
            if r.returncode != 0:
                log(f"workload failed: {r.stderr}")
                sys.exit(1)
            time.sleep(0.2)
            pending = round(sensor.ring_fill() * sensor.ring_bytes)
            events: list[Event] = []
            while batch := sensor.poll(0.05):
                events += batch
            files = [e for e in events if isinstance(e, FileEvent)]
            drops = sensor.drops()
        finally:
            sensor.close()
    if not files or drops:
        log(f"{len(files)} file records, {drops} drops: no figure")
        sys.exit(1)
    by_op: dict[str, int] = {}
    for e in files:
        by_op[e.op] = by_op.get(e.op, 0) + 1
    mean = pending / len(files)
    lens = {op: max(len(e.path.encode()) + len(e.path2.encode()) for e in files if e.op == op)
            for op in by_op}
    log(f"{len(files)} file records {by_op}, {pending} ring bytes; longest strings by op {lens}")
    emit("record_bytes_file", mean, "bytes", ".1f")
    emit("records_per_ring", abi.RINGBUF_BYTES / mean, "records", ".0f")
    emit("burst_drops", burst(), "records", ".0f")
    finish()


def burst() -> int:
    """A burst of BURST chmods of one file (a typical path) while nobody drains: the
    records the 16 MiB ring could not hold (a burst the agent absorbs without loss)."""
    with tempfile.TemporaryDirectory(prefix="bastion-bench-rec-") as base, \
            scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("file",), sensitive=(),
                           ring_bytes=abi.RINGBUF_BYTES)
        sensor.open()
        try:
            code = ("import os, sys\np = os.path.join(sys.argv[1], 'home/alice/.config/app/state.json')\n"
                    "os.makedirs(os.path.dirname(p)); open(p, 'w').close()\n"
                    "for i in range(int(sys.argv[2])): os.chmod(p, 0o600 | (i & 0o44))\n")
            r = run_in(cg, [sys.executable, "-c", code, base, str(BURST)], timeout=120)
            if r.returncode != 0:
                log(f"burst workload failed: {r.stderr}")
                sys.exit(1)
            drops = sensor.drops()
            log(f"burst of {BURST} chmods with nobody draining: {drops} dropped")
            return drops
        finally:
            sensor.close()


if __name__ == "__main__":
    main()
