"""The flood that blinds detection, on the lsm tier (s23-prioring; the host's
tests/kernel/test_prio_ring.py with the hook sensor, lsm_events.bpf.o, on Debian's
stock kernel in the test VM): the chmod flood overruns the hook sensor's bulk ring,
the payload's exec and connect cross its priority ring and arrive."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion import abi  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from support.prio_flood import (  # noqa: E402
    CHMODS, EXEC_FLOOD, SETUID_FLOOD, assert_the_payload_survived_a_priority_flood, chmods,
    flood_then_payload, payload_seen,
)

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)


def test_the_payload_after_a_flood_that_overran_the_bulk_ring_is_seen(tmp_path: Path) -> None:
    stats, events, port = flood_then_payload(
        lambda cgid, secret: HookSensor(cgroup_id=cgid, ring_bytes=2**16,
                                      sensitive=[(str(secret), abi.SensClass.CUSTOM)]), tmp_path)
    execs, reads, conns = payload_seen(events, port)
    assert stats["drops_ring.bulk"] > CHMODS // 2, stats
    assert stats["drops.file"] > CHMODS // 2, stats
    assert stats["drops_ring.priority"] == 0, stats
    assert len(execs) == 1, "the payload's exec was lost with the flood"
    assert len(conns) == 1, "the payload's connect was lost with the flood"
    assert len(reads) == 1, "the payload's read of the sensitive set was lost with the flood"
    assert reads[0].proc.pid == execs[0].proc.pid
    assert conns[0].proc.pid == execs[0].proc.pid
    at = events.index(execs[0])
    assert 0 < chmods(events[:at]) == chmods(events) < CHMODS
    assert at < events.index(conns[0])


def test_a_flood_of_cheap_priority_records_does_not_take_the_payloads_down(tmp_path: Path) -> None:
    """s23 review 1 on the hook sensor: 20,000 setuid(getuid()) calls (credential records
    from security_task_fix_setuid, priority) from one process; past its budget its
    records go to the bulk ring and the payload's stay priority."""
    stats, events, port = flood_then_payload(
        lambda cgid, secret: HookSensor(cgroup_id=cgid, ring_bytes=2**16, prio_ring_bytes=2**20,
                                      sensitive=[(str(secret), abi.SensClass.CUSTOM)]),
        tmp_path, flood=SETUID_FLOOD)
    assert_the_payload_survived_a_priority_flood(stats, events, port)


def test_an_exec_flood_of_one_image_does_not_take_the_payloads_down(tmp_path: Path) -> None:
    """s24 on the hook sensor: 300 spawns of /bin/true (~2.2 KB a record) against a
    256 KiB priority ring; past its image's budget (2 in a 60 s window here: TCG runs
    an exec in 10-100 ms) the flood goes to the bulk ring and the payload's records
    stay priority."""
    n = 300
    stats, events, port = flood_then_payload(
        lambda cgid, secret: HookSensor(cgroup_id=cgid, ring_bytes=2**16, prio_ring_bytes=2**18,
                                      prio_exec_budget=2, prio_window_s=60.0,
                                      sensitive=[(str(secret), abi.SensClass.CUSTOM)]),
        tmp_path, flood=EXEC_FLOOD, count=n)
    assert_the_payload_survived_a_priority_flood(stats, events, port, count=n)
