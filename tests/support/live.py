"""Draining the live sensor after a test's workload: until the workload has exited and
the ring is empty, instead of a fixed window.

Every event of a process is written to the ring during its own syscalls (the exit
tracepoint runs before its parent's wait returns), so once the workload has exited,
a poll that returns nothing proves nothing of it is left to read; the rules act only
on events (Engine has no timers).  The deadline only bounds a hung workload."""

from __future__ import annotations

import subprocess
import time

from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event
from bastion.proctable import ProcessTable
from bastion.sensors.bpf import BpfSensor


def drain_findings(sensor: BpfSensor, procs: ProcessTable, engine: Engine, ctx: RuleContext,
                   workload: subprocess.Popen[bytes], timeout: float = 20.0) -> list[Finding]:
    """Every finding of the events read until ``workload`` has exited and a poll after
    its exit returned nothing (or ``timeout`` passed: the caller's assertions fail)."""
    found: list[Finding] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = workload.poll() is not None     # before the poll: an empty poll after it
        evs = sensor.poll(0.1) or []             # means the exited workload left nothing
        for ev in evs:
            procs.update(ev)
            found += engine.evaluate(procs.enrich(ev), ctx)
        if exited and not evs:
            break
    return found


def drain_events(sensor: BpfSensor, timeout: float = 10.0) -> list[Event]:
    """Every event left in the ring once the workload (and every process of it) has
    exited: read until a poll returns nothing (or ``timeout`` passed)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        evs = sensor.poll(0.1) or []
        if not evs:
            break
        events += evs
    return events
