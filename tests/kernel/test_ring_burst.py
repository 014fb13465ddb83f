"""A burst of file events while the agent is not draining (issue 16.2, ABI 2.0).

The attack: hide an event in a burst.  With 1,144 ring bytes per file record a
16 MiB ring held ~14.7 k of them; a process that chmods (or renames, unlinks) a file
20,000 times in one go filled it before the agent's next drain, and whatever came
next in that window was dropped (counted, but unseen).  With records as long as
their strings (~200 bytes for a typical path) the same burst fits, and the event
after it is delivered."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from bastion import abi
from bastion.events import Event, FileEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup

pytestmark = pytest.mark.kernel

BURST = 20_000

WORKLOAD = """
import os, sys
p = os.path.join(sys.argv[1], "home/alice/.config/app/state.json")
os.makedirs(os.path.dirname(p))
open(p, "w").close()
for i in range(int(sys.argv[2])):
    os.chmod(p, 0o600)
os.unlink(os.path.join(sys.argv[1], "home/alice/.config/app/state.json"))   # the one that matters
"""


def test_a_burst_under_the_ring_size_does_not_hide_the_event_after_it(tmp_path: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("file",), sensitive=(),
                           ring_bytes=abi.RINGBUF_BYTES)
        sensor.open()
        try:
            # nobody drains while the burst runs (the agent busy with a batch)
            r = run_in(cg, [sys.executable, "-c", WORKLOAD, str(tmp_path), str(BURST)], timeout=120)
            assert r.returncode == 0, r.stderr
            drops = sensor.drops()
            events: list[Event] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                batch = sensor.poll(0.05)
                if not batch:
                    break
                events += batch
        finally:
            sensor.close()
    files = [e for e in events if isinstance(e, FileEvent)]
    assert drops == 0, f"{drops} of the burst's records dropped"
    assert sum(e.op == "chmod" for e in files) == BURST
    assert [e.path for e in files if e.op == "unlink"] == [
        str(tmp_path / "home/alice/.config/app/state.json")]
