"""s24 review: a ``kill`` or ``quarantine`` finding that names another process than its
event's (a rule acting on the pty holder, the parent, a staged process) carried no start
time: ``_kill`` and ``_quarantine`` took the pid as it was *now*, so when the named process
had exited and its pid was taken (pid cycling: a fork loop), the new holder -- an
unrelated process -- was SIGKILLed, or marked in the quarantine map with its own start
time.  The process table knew the named process's start time all along.

A sleeper stands for the unrelated new holder; the table's entry for the pid is the
process the rule meant (an older start time)."""

from __future__ import annotations

import subprocess
import time
from typing import Any, Iterator

import pytest

from bastion.detect.engine import Finding
from bastion.events import Event, from_json
from bastion.proctable import ProcEntry, ProcessTable
from bastion.procstat import read_stat
from bastion.respond.dispatch import Dispatcher


class _Quarantine:
    def __init__(self) -> None:
        self.added: list[tuple[int, int]] = []

    def add(self, pid: int, start_ns: int, incident: int) -> None:
        self.added.append((pid, start_ns))


@pytest.fixture
def new_holder() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _event_of_another(pid: int) -> Event:
    obj: dict[str, Any] = {
        "type": "exec", "time": "2026-12-05T09:00:00.000000Z", "pid": pid, "tid": pid,
        "ppid": 1, "uid": 0, "euid": 0, "gid": 0, "cgroup_id": 1, "comm": "sh",
        "start_ns": 5_000_000_000, "exe": "/bin/sh", "argv": ["sh"], "cwd": "/",
        "filename": "/bin/sh"}
    return from_json(obj)


def _world(holder: int) -> ProcessTable:
    """The table saw the process the rule names at ``holder``'s pid, 10 s older."""
    procs = ProcessTable()
    procs._put(ProcEntry(holder, 1, read_stat(holder).start_ns - 10_000_000_000,
                         "/tmp/payload", ("payload",), 1000, "payload"))
    return procs


@pytest.mark.parametrize("with_event", [True, False])
def test_a_kill_of_a_reused_pid_named_by_another_process_s_finding_is_skipped(
        new_holder: subprocess.Popen[bytes], with_event: bool) -> None:
    d = Dispatcher(_world(new_holder.pid), own={})
    f = Finding(rule="behavior.pty_shell", title="t", severity="critical", attack=(),
                action="kill", pid=new_holder.pid,
                event=_event_of_another(new_holder.pid + 1) if with_event else None)
    alert = d.dispatch(f, time.time_ns())
    time.sleep(0.05)
    assert new_holder.poll() is None, "the pid's new holder was killed"
    assert alert.action == "kill-skipped: pid reused"


def test_a_quarantine_of_a_reused_pid_is_skipped(new_holder: subprocess.Popen[bytes]) -> None:
    q = _Quarantine()
    d = Dispatcher(_world(new_holder.pid), own={}, quarantine=q)
    f = Finding(rule="behavior.pty_shell", title="t", severity="critical", attack=(),
                action="quarantine", pid=new_holder.pid, event=_event_of_another(new_holder.pid + 1))
    alert = d.dispatch(f, time.time_ns())
    assert q.added == [], "the pid's new holder was quarantined"
    assert alert.action == "quarantine-skipped: pid reused"


def test_the_process_the_table_names_is_still_killed(new_holder: subprocess.Popen[bytes]) -> None:
    """Control: the table's entry is the live holder (same start time): killed."""
    procs = ProcessTable()
    procs._put(ProcEntry(new_holder.pid, 1, read_stat(new_holder.pid).start_ns, "/usr/bin/sleep",
                         ("sleep", "60"), 0, "sleep"))
    q = _Quarantine()
    d = Dispatcher(procs, own={}, quarantine=q)
    f = Finding(rule="r", title="t", severity="critical", attack=(), action="quarantine",
                pid=new_holder.pid, event=_event_of_another(new_holder.pid + 1))
    assert d.dispatch(f, time.time_ns()).action == "quarantine"
    assert q.added and q.added[0][0] == new_holder.pid
    f = Finding(rule="r", title="t", severity="critical", attack=(), action="kill",
                pid=new_holder.pid, event=_event_of_another(new_holder.pid + 1))
    assert d.dispatch(f, time.time_ns()).action == "kill"
    assert new_holder.wait(timeout=5) == -9
