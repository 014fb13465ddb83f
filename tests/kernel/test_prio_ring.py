"""A flood of cheap file events does not blind detection (issues 16/15, s23-prioring).

The attack (docs/threat-model.md, "a sustained flood above what Python drains"): one
unprivileged process chmods its own files over and over, faster than the agent
drains, and the payload's exec and connect that follow are lost with the flood on
the one ring.  The sensor now has two: the flood overruns the bulk ring (its losses
counted there, as file records), the exec and the connect cross the priority ring
and arrive."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion import abi
from bastion.events import ExecEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup
from support.prio_flood import (
    BIND_FLOOD, CHMODS, EXEC_FLOOD, assert_the_payload_survived_a_priority_flood, chmods,
    flood_then_payload, payload_seen,
)

pytestmark = pytest.mark.kernel


def test_the_payload_after_a_flood_that_overran_the_bulk_ring_is_seen(tmp_path: Path) -> None:
    stats, events, port = flood_then_payload(
        lambda cgid, secret: BpfSensor(cgroup_id=cgid, ring_bytes=2**16,
                                      sensitive=[(str(secret), abi.SensClass.CUSTOM)]), tmp_path)
    execs, reads, conns = payload_seen(events, port)
    assert stats["drops_ring.bulk"] > CHMODS // 2, stats          # the flood did overrun it
    assert stats["drops.file"] > CHMODS // 2, stats
    assert stats["drops_ring.priority"] == 0, stats
    assert len(execs) == 1, "the payload's exec was lost with the flood"
    assert len(conns) == 1, "the payload's connect was lost with the flood"
    assert len(reads) == 1, "the payload's read of the sensitive set was lost with the flood"
    assert reads[0].proc.pid == execs[0].proc.pid
    assert conns[0].proc.pid == execs[0].proc.pid
    assert 0 < chmods(events) < CHMODS      # what the bulk ring held is still delivered
    # in time order: every flood record delivered comes before the payload's exec
    at = events.index(execs[0])
    assert chmods(events[:at]) == chmods(events) and at < events.index(conns[0])


def test_a_full_priority_ring_counts_its_losses_under_it_and_their_class(tmp_path: Path) -> None:
    """The priority ring can be overrun too (an exec loop): its losses are counted per
    ring and per class, and both sums match the total."""
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, ring_bytes=2**16, prio_ring_bytes=4096, sensitive=())
        sensor.open()
        try:
            r = run_in(cg, ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done"],
                       timeout=60)
            assert r.returncode == 0, r.stderr
            stats = sensor.stats()
        finally:
            sensor.close()
    by_class = {k[6:]: v for k, v in stats.items() if k.startswith("drops.")}
    assert stats["drops_ring.priority"] == by_class.get("exec", 0) >= 9, stats
    assert stats["drops_ring.bulk"] + stats["drops_ring.priority"] == stats["drops"]
    assert sum(by_class.values()) == stats["drops"], stats


def test_a_flood_of_cheap_priority_records_does_not_take_the_payloads_down(tmp_path: Path) -> None:
    """s23 review 1: 20,000 failing bind(-1) calls from one process (priority net records
    that prove nothing, ~120 ns a call) overran the priority ring and the payload's exec,
    read and connect behind them were lost.  Past its budget a thread group's priority
    records go to the bulk ring (counted as demoted): the payload's few stay priority."""
    stats, events, port = flood_then_payload(
        lambda cgid, secret: BpfSensor(cgroup_id=cgid, ring_bytes=2**16, prio_ring_bytes=2**20,
                                      sensitive=[(str(secret), abi.SensClass.CUSTOM)]),
        tmp_path, flood=BIND_FLOOD)
    assert_the_payload_survived_a_priority_flood(stats, events, port)


def test_an_exec_flood_of_one_image_does_not_take_the_payloads_down(tmp_path: Path) -> None:
    """s24: an exec was never demoted (each exec is a new thread group, so the group
    budget never applied): 300 spawns of /bin/true (~2.2 KB a record) overran a
    256 KiB priority ring and the payload's exec, read and connect behind them were
    lost.  An exec is charged to its image: past the image's budget (here 2 in a 60 s
    window, so that the flood spends it however slowly the host runs; 256 per 100 ms
    by default) its execs go to the bulk ring; the payload's own stay priority (its
    python3 is the flood runner's image too: the second exec of it in the window).
    Review 3: the budget is the image's as spawned by one parent of one uid -- by image
    alone, the flood demoted every other process's execs of /bin/true (any user's
    /bin/sh loop every shell exec on the host): another parent's /bin/true after the
    flood stays priority."""
    n = 300
    stats, events, port = flood_then_payload(
        lambda cgid, secret: BpfSensor(cgroup_id=cgid, ring_bytes=2**16, prio_ring_bytes=2**18,
                                      prio_exec_budget=2, prio_window_s=60.0,
                                      sensitive=[(str(secret), abi.SensClass.CUSTOM)]),
        tmp_path, flood=EXEC_FLOOD, count=n, victim=("/bin/true", "prio-victim"))
    assert_the_payload_survived_a_priority_flood(stats, events, port, count=n)
    victims = [e for e in events if isinstance(e, ExecEvent) and "prio-victim" in e.argv]
    assert len(victims) == 1, f"another parent's exec of the flood's image was demoted: {stats}"
