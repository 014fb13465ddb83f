"""The integrity response on the agent's real path: a ``bpf.rogue_program`` finding
(as the scan worker hands it back) goes through the dispatcher the composition
root builds, and every holder is killed by identity (pidfd + start time).

Attacks (issue 14.6b): a rogue program held by two processes lost only its first
holder; a holder pid reused between the scan and the kill was signalled."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from bastion.assembly import make_dispatcher
from bastion.integrity.base import IntegrityFinding
from bastion.integrity.scanner import to_finding
from bastion.proctable import ProcessTable
from bastion.procstat import read_stat
from bastion.respond.dispatch import Dispatcher


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    ps = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        yield ps
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


def _holder(pid: int, *, skew: int = 0) -> dict[str, object]:
    return {"pid": pid, "comm": "sleep", "start_ticks": read_stat(pid).start_ticks + skew}


def _rogue(holders: list[dict[str, object]]) -> IntegrityFinding:
    return IntegrityFinding("bpf_inventory", "bpf.rogue_program", "Unexpected BPF program rk", "high",
                            {"id": 7, "name": "rk", "holders": holders}, "kill",
                            int(str(holders[0]["pid"])) if holders else 0)


def _dispatcher(*, dry_run: bool = False) -> Dispatcher:
    return make_dispatcher(ProcessTable(), dry_run=dry_run, quarantine=None)


def test_every_holder_is_killed(sleepers: list[subprocess.Popen[bytes]]) -> None:
    a, b = sleepers
    f = to_finding(_rogue([_holder(a.pid), _holder(b.pid)]))
    alert = _dispatcher().dispatch(f, 0)
    assert a.wait(timeout=5) == -9
    assert b.wait(timeout=5) == -9, "the second holder of the rogue program was left running"
    assert alert.action == "kill" and alert.killed == sorted([a.pid, b.pid])
    assert [r["outcome"] for r in alert.evidence["response"]] == ["kill", "kill"]


def test_reused_pid_is_never_signalled(sleepers: list[subprocess.Popen[bytes]]) -> None:
    """The scan saw pid P at start time T; P now belongs to another process (start != T)."""
    reused, holder = sleepers
    f = to_finding(_rogue([_holder(reused.pid, skew=-7), _holder(holder.pid)]))
    alert = _dispatcher().dispatch(f, 0)
    assert holder.wait(timeout=5) == -9
    assert reused.poll() is None, "a pid reused since the scan was killed"
    assert alert.killed == [holder.pid]
    assert alert.action.startswith("kill (1 of 2 holders")
    assert "pid reused" in alert.action
    assert [r["outcome"] for r in alert.evidence["response"]] == ["kill-skipped: pid reused", "kill"]


def test_holder_without_start_time_is_not_signalled(sleepers: list[subprocess.Popen[bytes]]) -> None:
    a, _ = sleepers
    f = to_finding(_rogue([{"pid": a.pid, "comm": "sleep"}]))
    alert = _dispatcher().dispatch(f, 0)
    assert a.poll() is None
    assert alert.action == "kill-skipped: start time unknown" and alert.killed == []


def test_dry_run_names_every_holder_and_kills_none(sleepers: list[subprocess.Popen[bytes]]) -> None:
    a, b = sleepers
    f = to_finding(_rogue([_holder(a.pid), _holder(b.pid)]))
    alert = _dispatcher(dry_run=True).dispatch(f, 0)
    assert a.poll() is None and b.poll() is None
    assert alert.action == "would-kill" and alert.killed == []
    assert [r["outcome"] for r in alert.evidence["response"]] == ["would-kill", "would-kill"]
