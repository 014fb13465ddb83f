"""Compat HIPS fail-opens reach ``status`` and raise one alert per health interval.

The file enforcer here is a stand-in with the counters
:meth:`bastion.enforce.fanotify.FanotifyEnforcer.stats` reports (the kernel
test tests/kernel/test_fanotify.py shows the real ones move).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bastion.agent import Agent, AgentParts
from bastion.config import parse_policy
from bastion.detect.engine import Engine
from bastion.events import HipsEvent
from bastion.policy.compile import FileTarget, MapPlan
from bastion.policy.manager import PolicyManager
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.store import Store
from bastion.tier import Tier


class _Files:
    def __init__(self) -> None:
        self.s: dict[str, int | float] = {"fail_opens": 0, "watchdog_allows": 0,
                                          "watchdog_denies": 0, "errors": 0,
                                          "error_allows": 0, "overflows": 0}

    def apply(self, plan: MapPlan, targets: Sequence[FileTarget]) -> None:
        pass

    def clear(self) -> None:
        pass

    def poll(self, timeout_s: float) -> list[HipsEvent] | None:
        return []

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, int | float]:
        return dict(self.s)

    def read_check(self) -> str:
        return "the opener's stack (open context off: test)"


def test_each_interval_with_new_fail_opens_or_stalls_raises_one_alert(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    mgr = PolicyManager(Tier.COMPAT)
    files = _Files()
    mgr.files = files
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[], store=store,
                  procs=procs, engine=Engine([]), dispatcher=Dispatcher(procs),
                  parts=AgentParts(policies=mgr))
    try:
        agent._health()
        assert not store.alerts(rule="bastion.hips.fail_open")
        files.s.update(fail_opens=3, watchdog_allows=2, overflows=1, watchdog_denies=5)
        agent._health()
        agent._health()                       # nothing new: no second alert
        files.s.update(fail_opens=4, error_allows=1)
        agent._health()
        files.s.update(watchdog_denies=7)       # a stall that only refused
        agent._health()
        alerts = [a.data for a in store.alerts(rule="bastion.hips.fail_open")]
        closed = [a.data for a in store.alerts(rule="bastion.hips.fail_closed")]
        assert agent.status()["hips_files"]["fail_opens"] == 4
        st = agent.status()
        assert st["file_read_check"] == "the opener's stack (open context off: test)"
        from bastion.cli.main import format_status
        assert "file reads   the opener's stack (open context off: test)" in format_status(st)
    finally:
        store.close()
    assert len(alerts) == 2, alerts
    ev = sorted((a["evidence"] for a in alerts), key=lambda e: e["fail_opens_total"])
    assert ev[0]["fail_opens"] == 3 and ev[0]["overflows"] == 1 and ev[0]["watchdog_denies"] == 5
    assert ev[1]["fail_opens"] == 1 and ev[1]["fail_opens_total"] == 4
    assert all(a["severity"] == "high" for a in alerts)
    assert [(a["severity"], a["evidence"]["fail_closed"]) for a in closed] == [("medium", 2)]
