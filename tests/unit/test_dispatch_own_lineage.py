"""s21 review F4/F9: no acting path of the dispatcher reaches the agent, its ancestors or
its guardian -- quarantine and registered handlers (the rogue-BPF ``kill_loader``) too, not
only kill and kill-tree -- and the lineage follows a parent change and a guardian that
adopted the agent (not its parent).  A refusal keeps the finding's alert and raises a
critical ``bastion.respond.own-lineage`` notice.  Fake quarantine backend; sleepers stand
for the guardian."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from bastion.assembly import make_dispatcher
from bastion.detect.engine import Finding
from bastion.guard.mutual import ENV_PID, ENV_START
from bastion.integrity.base import IntegrityFinding
from bastion.integrity.scanner import to_finding
from bastion.proctable import ProcessTable
from bastion.procstat import read_stat
from bastion.respond import dispatch
from bastion.respond.dispatch import OWN_REFUSED, Dispatcher
from tests.unit.test_integrity_response import sleepers  # noqa: F401  (the fixture: two sleep 60)


class _Quarantine:
    def __init__(self) -> None:
        self.added: list[int] = []

    def add(self, pid: int, start_ns: int, incident: int) -> None:
        self.added.append(pid)


def _q(pid: int) -> Finding:
    return Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                   action="quarantine", event=None, pid=pid)


def test_a_rogue_bpf_kill_never_reaches_the_guardian_and_says_so(
        sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A rogue-program finding whose holders are the guardian (named in the agent's
    environment, as the guardian starts it) and an attacker: before, ``kill_loader``
    spared only this process and init, and SIGKILLed the guardian."""
    guardian, attacker = sleepers
    monkeypatch.setenv(ENV_PID, str(guardian.pid))
    monkeypatch.setenv(ENV_START, str(read_stat(guardian.pid).start_ticks))
    holders = [{"pid": p.pid, "comm": "sleep", "start_ticks": read_stat(p.pid).start_ticks}
               for p in (guardian, attacker)]
    d = make_dispatcher(ProcessTable(), dry_run=False, quarantine=None)
    f = to_finding(IntegrityFinding("bpf_inventory", "bpf.rogue_program", "rogue", "high",
                                    {"id": 7, "name": "rk", "holders": holders}, "kill",
                                    guardian.pid))
    alert = d.dispatch(f, time.time_ns())
    assert attacker.wait(timeout=5) == -9
    assert guardian.poll() is None, "the guardian was killed"
    assert [r["outcome"] for r in alert.evidence["response"]] == [
        "kill-skipped: the agent's own lineage", "kill"]
    assert [r["pid"] for r in alert.evidence["own_lineage_refused"]] == [guardian.pid]
    notes = d.take_notices()
    assert [(n.rule, n.severity, n.pid) for n in notes] == [(OWN_REFUSED, "critical", guardian.pid)]
    assert d.take_notices() == []


def test_a_refused_quarantine_is_a_critical_notice() -> None:
    q = _Quarantine()
    d = Dispatcher(ProcessTable(), quarantine=q)
    alert = d.dispatch(_q(os.getppid()), time.time_ns())
    assert q.added == [] and alert.action == "quarantine-skipped: the agent's own lineage"
    assert [n.rule for n in d.take_notices()] == [OWN_REFUSED]


def test_a_guardian_that_adopted_the_agent_later_is_spared(
        sleepers: list[subprocess.Popen[bytes]]) -> None:
    """F9: a guardian restarted after a crash adopts the running agent (it is not its
    parent) and is enrolled: the lineage read at start does not hold it."""
    new, other = sleepers
    enrolled: dict[int, int] = {}
    q = _Quarantine()
    d = Dispatcher(ProcessTable(), quarantine=q, guardians=lambda: dict(enrolled))
    enrolled[new.pid] = read_stat(new.pid).start_ns            # enrolled after our start
    assert d.dispatch(_q(new.pid), time.time_ns()).action.startswith("quarantine-skipped")
    assert d.dispatch(_q(other.pid), time.time_ns()).action == "quarantine"
    assert q.added == [other.pid]


def test_the_lineage_is_read_again_when_the_parent_changes(
        sleepers: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    """F9: the agent re-parented (its guardian died; a new supervisor or subreaper is its
    parent now): the lineage taken once at start missed the new parent."""
    parent, _ = sleepers
    real = dispatch.own_lineage()
    q = _Quarantine()
    d = Dispatcher(ProcessTable(), quarantine=q)
    monkeypatch.setattr(dispatch.os, "getppid", lambda: parent.pid)
    monkeypatch.setattr(dispatch, "own_lineage", lambda pid=None: {
        os.getpid(): real[os.getpid()], parent.pid: read_stat(parent.pid).start_ns})
    assert d.dispatch(_q(parent.pid), time.time_ns()).action.startswith("quarantine-skipped")
    assert q.added == []
