"""Ring drops counted per event class in the kernel (issue 14.1): a sensor with a
64 KiB bulk ring and a 4 KiB priority ring (s23-prioring), scoped to a test cgroup,
is not drained while a workload there chmods a file thousands of times and then
execs: every lost record is counted under its class and its ring (the chmods on
the bulk ring, the execs on the priority ring), and each adds up to the total."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup


def test_a_full_ring_counts_its_losses_per_event_class(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_text("x")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, ring_bytes=2**16, prio_ring_bytes=4096)
        sensor.open()
        try:
            flood = run_in(cg, [sys.executable, "-c",
                                "import os, sys\n"
                                "for i in range(20000): os.chmod(sys.argv[1], 0o600 | (i & 0o44))\n",
                                str(target)], timeout=60)
            assert flood.returncode == 0, flood.stderr
            execs = run_in(cg, ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done"],
                           timeout=60)
            assert execs.returncode == 0, execs.stderr
            time.sleep(0.1)
            stats = sensor.stats()
            events = sensor.poll(0) or []
        finally:
            sensor.close()
    by_class = {k.removeprefix("drops."): v for k, v in stats.items() if k.startswith("drops.")}
    assert stats["drops"] > 10_000, stats
    assert by_class.get("file", 0) > 10_000 and by_class.get("exec", 0) >= 10, by_class
    assert sum(by_class.values()) == stats["drops"], (by_class, stats["drops"])
    assert stats["drops_ring.priority"] == by_class["exec"], stats
    assert stats["drops_ring.bulk"] + stats["drops_ring.priority"] == stats["drops"], stats
    assert len(events) + stats["drops"] >= 20_000 + 10
