"""Alert floods and store failure, through the agent's own alert path (issue 14.1).

Each test is an abuse: a fork loop that defeats per-pid dedupe, a kill flood, a
renamed-executable flood past the quota, drops that alert per batch, a store that
fails (a real SQLite lock held by another connection, a real read-only database).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bastion.agent import Agent, AgentParts
from bastion.config import parse_policy
from bastion.detect.engine import Engine, Finding
from bastion.events import ExecEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.store import Store

T0 = 1_767_225_600 * 1_000_000_000


class _Dispatcher(Dispatcher):
    """Takes every action (counted) without signalling anyone."""

    def __init__(self, procs: ProcessTable) -> None:
        super().__init__(procs)
        self.kills: list[int] = []

    def _kill(self, f: Finding) -> str:
        self.kills.append(f.pid)
        return "kill"


class _Sensor:
    """A sensor whose ring lost ``drops`` records so far."""

    name = "fake"
    attached: list[str] = []
    missing: list[str] = []

    def __init__(self) -> None:
        self.drops = 0
        self.by_class: dict[str, int] = {}
        self.by_ring: dict[str, int] = {}

    def ring_fill(self) -> float:
        return 1.0

    def open(self) -> None:
        pass

    def poll(self, timeout_s: float) -> list[ExecEvent] | None:
        return []

    def stats(self) -> dict[str, int]:
        return {"events": 0, "drops": self.drops,
                **{f"drops.{c}": n for c, n in self.by_class.items()},
                **{f"drops_ring.{r}": n for r, n in self.by_ring.items()}}

    def close(self) -> None:
        pass


def _finding(pid: int, exe: str = "/tmp/x/evil", action: str = "alert",
             rule: str = "behavior.test", severity: str = "high") -> Finding:
    ev = ExecEvent(T0 + pid, Proc(pid, pid, 1, 0, 0, 0, 0, "evil", exe=exe), filename=exe)
    return Finding(rule=rule, title="evil thing", severity=severity, attack=(), action=action,
                   event=ev, pid=pid)


def _agent(tmp_path: Path, sensors: list[_Sensor] | None = None,
           store: Store | None = None) -> tuple[Agent, Store, _Dispatcher, io.StringIO]:
    store = store or Store.open(tmp_path / "db")
    procs = ProcessTable()
    disp = _Dispatcher(procs)
    feed = io.StringIO()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=sensors or [],
                  store=store, procs=procs, engine=Engine([]), dispatcher=disp, feed=feed,
                  feed_json=True)
    return agent, store, disp, feed


def _fed(feed: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in feed.getvalue().splitlines()]


def test_fork_loop_alerts_are_rate_limited_per_rule_and_exe_with_an_aggregate(
        tmp_path: Path) -> None:
    """Attack: a fork loop (a new pid each time) raising the same alert; per-pid dedupe
    stored every one of them (500 alerts)."""
    agent, store, _, _ = _agent(tmp_path)
    try:
        for pid in range(1000, 1500):
            agent._alert(_finding(pid))
        full = store.count_alerts()
        assert full <= 10, f"{full} alerts stored for one rule and executable"
        agent._flush_aggregates(time.monotonic())
        aggs = [a.data for a in store.alerts() if a.data.get("action") == "aggregate"]
    finally:
        store.close()
    assert len(aggs) == 1
    ev = aggs[0]["evidence"]
    assert ev["suppressed"] == 500 - full and ev["exe"] == "/tmp/x/evil"
    assert ev["first_ns"] <= ev["last_ns"] and ev["reason"] == "rate"
    assert aggs[0]["rule"] == "behavior.test" and "more like this" in str(aggs[0]["title"])
    assert agent.status()["alerts_suppressed"] == 500 - full


def test_held_back_alerts_of_a_flood_are_never_built(tmp_path: Path) -> None:
    """Issue 16.3: an alerting finding (no act, no hook) asks the rate gate before its
    alert is built: of a 500-finding fork loop only the emitted alerts are dispatched
    (built, their event's JSON made), the rest are counted as before; a finding whose
    rule has a hook is dispatched every time (the hook runs on every outcome)."""
    agent, store, disp, _ = _agent(tmp_path)
    built: list[str] = []
    dispatch = disp.dispatch

    def counted(f: Finding, now_ns: int) -> object:
        built.append(f.rule)
        return dispatch(f, now_ns)
    disp.dispatch = counted  # type: ignore[method-assign,assignment]
    hooked: list[str] = []
    disp.after("behavior.hooked", "alert", lambda f, a: hooked.append(a.action))
    try:
        for pid in range(1000, 1500):
            agent._alert(_finding(pid))
        full = store.count_alerts()
        assert built == ["behavior.test"] * full and full <= 10
        assert agent.status()["alerts_suppressed"] == 500 - full
        for pid in range(1500, 1550):
            agent._alert(_finding(pid, rule="behavior.hooked"))
        assert built.count("behavior.hooked") == 50 and hooked == ["alert"] * 50
    finally:
        store.close()


def test_kill_flood_every_kill_happens_and_its_alerts_are_aggregated(tmp_path: Path) -> None:
    """Attack: a kill-worthy fork loop: 300 kills, 300 stored kill alerts before."""
    agent, store, disp, _ = _agent(tmp_path)
    try:
        for pid in range(2000, 2300):
            agent._alert(_finding(pid, action="kill"))
        full = store.count_alerts()
        assert len(disp.kills) == 300, "every kill is taken, whatever the alert limit"
        assert full <= 10
        agent._flush_aggregates(time.monotonic())
        aggs = [a.data for a in store.alerts() if a.data.get("action") == "aggregate"]
    finally:
        store.close()
    assert [a["evidence"]["actions"] for a in aggs] == [{"kill": 300 - full}]


def test_renamed_executables_hit_the_global_quota_and_are_summarised(tmp_path: Path) -> None:
    """Attack: one copy of the binary per run defeats a per-executable limit."""
    agent, store, _, _ = _agent(tmp_path)
    quota = 300                       # the default alerts.quota
    try:
        for i in range(quota + 200):
            agent._alert(_finding(3000 + i, exe=f"/tmp/x/evil{i}"))
        full = store.count_alerts()
        assert full == quota
        agent._flush_aggregates(time.monotonic())
        over = [a.data for a in store.alerts(rule="bastion.alerts.quota_exceeded")]
    finally:
        store.close()
    assert len(over) == 1 and over[0]["evidence"]["suppressed"] == 200
    assert over[0]["evidence"]["by_rule"] == {"behavior.test": 200}


def test_critical_alerts_held_back_always_come_out_as_an_aggregate(tmp_path: Path) -> None:
    """Attack: bury a critical tamper alert under a flood of noise past the quota."""
    agent, store, _, _ = _agent(tmp_path)
    try:
        for i in range(300):                       # noise spends the (default) quota
            agent._alert(_finding(4000 + i, exe=f"/tmp/n{i}", severity="low", rule="noise"))
        for pid in range(5000, 5020):
            agent._alert(_finding(pid, exe="/usr/bin/kill", severity="critical",
                                  rule="bastion.tamper.signal"))
        assert not store.alerts(rule="bastion.tamper.signal")
        agent._flush_aggregates(time.monotonic())
        crit = [a.data for a in store.alerts(severity="critical")]
    finally:
        store.close()
    assert crit and sum(int(a["evidence"]["suppressed"]) for a in crit) == 20


def test_drops_are_alerted_once_per_interval_with_their_classes(tmp_path: Path) -> None:
    """Before: one high alert per health round (every second) of a sustained flood."""
    sensor = _Sensor()
    agent, store, _, _ = _agent(tmp_path, [sensor])
    try:
        for i in range(1, 11):                  # ten health rounds, each with new drops
            sensor.by_class = {"file": 900 * i + i * i, "exec": 100 * i}
            sensor.drops = sum(sensor.by_class.values())
            agent._health()
        drops = [a.data for a in store.alerts(rule="bastion.sensor.drops")]
        assert len(drops) == 1, f"{len(drops)} drop alerts in one interval"
        assert drops[0]["evidence"]["by_class"] == {"file": 901, "exec": 100}
        st = agent.status()
        assert st["drops"] == 10_100 and st["drops_by_class"] == {"file": 9100, "exec": 1000}
        agent._health(final=True)               # the stop: what is left is said once more
        drops = [a.data for a in store.alerts(rule="bastion.sensor.drops")]
    finally:
        store.close()
    assert len(drops) == 2 and drops[1]["evidence"]["dropped"] == 9099
    assert drops[1]["evidence"]["by_class"] == {"file": 8199, "exec": 900}


def test_the_drop_alert_says_which_ring_was_full(tmp_path: Path) -> None:
    """s23-prioring: a flood's losses are the bulk ring's; losses of the priority ring
    (the payload's exec, connect ...) are said as such, in the title and the evidence."""
    sensor = _Sensor()
    agent, store, _, _ = _agent(tmp_path, [sensor])
    try:
        sensor.by_class, sensor.by_ring = {"file": 5000}, {"bulk": 5000, "priority": 0}
        sensor.drops = 5000
        agent._health()
        sensor.by_class, sensor.by_ring = {"file": 5000, "exec": 3}, {"bulk": 5000, "priority": 3}
        sensor.drops = 5003
        agent._health(final=True)
        drops = [a.data for a in store.alerts(rule="bastion.sensor.drops")]
        st = agent.status()
    finally:
        store.close()
    assert [d["title"] for d in drops] == [
        "5000 events lost: the bulk ring was full (file 5000)",
        "3 events lost: the priority ring was full (exec 3)"]
    assert drops[0]["evidence"]["by_ring"] == {"bulk": 5000}
    assert drops[1]["evidence"]["by_ring"] == {"priority": 3}
    assert st["drops_by_ring"] == {"bulk": 5000, "priority": 3}


def test_a_locked_store_does_not_stop_the_loop_alerts_are_held_then_written(
        tmp_path: Path) -> None:
    """Attack/failure: another writer holds the database lock (a real SQLite lock).
    Before: StoreError out of the alert path (Agent.run dies: a crash loop)."""
    store = Store.open(tmp_path / "db")
    store._conn.execute("PRAGMA busy_timeout = 50")    # what the agent's 1 s is, faster
    agent, store, disp, feed = _agent(tmp_path, store=store)
    blocker = sqlite3.connect(str(store.path), isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        agent._alert(_finding(6000, action="kill"))
        agent.process([_finding(6001).event])           # events: given to outputs, not stored
        agent._health()
        st = agent.status()
        blocker.execute("COMMIT")
        assert disp.kills == [6000]
        assert st["store"]["state"] == "failing" and st["store"]["alerts_queued"] == 2
        assert st["store"]["events_not_stored"] == 1 and "locked" in st["store"]["error"]
        assert st["store_events"] is None
        fed = [a["rule"] for a in _fed(feed)]
        assert fed == ["behavior.test", "bastion.store.failing"]   # outputs were fed
        agent._store_retry_at = 0.0                    # the retry is due
        agent._health()
        agent._health()                                # the recovery alert (queued) is raised
        rules = [a.data["rule"] for a in store.alerts()]
        assert agent.status()["store"]["state"] == "ok"
    finally:
        blocker.close()
        store.close()
    assert rules == ["behavior.test", "bastion.store.failing", "bastion.store.recovered"]


def test_the_store_queue_is_bounded_and_counts_what_it_lost(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "db")
    store._conn.execute("PRAGMA busy_timeout = 10")
    agent, store, _, feed = _agent(tmp_path, store=store)
    agent.limits = type(agent.limits)(store_queue=100, per_rule=1000, quota=1000)
    agent.gate.limits = agent.limits
    blocker = sqlite3.connect(str(store.path), isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        for pid in range(8000, 8250):
            agent._alert(_finding(pid))
        st = agent.status()["store"]
    finally:
        blocker.close()
        store.close()
    assert st["alerts_queued"] == 100 and st["alerts_lost"] == 150
    assert len(_fed(feed)) == 250          # every one reached the outputs


def test_lost_hips_decision_records_count_as_drops(tmp_path: Path) -> None:
    """Blinding: fill the HIPS decision ring (the decisions go on in the kernel, their
    records are lost).  Before: those losses were in no status figure and no alert."""
    from bastion.policy.manager import PolicyManager
    from bastion.tier import Tier

    class _Kernel:
        def stats(self) -> dict[str, int]:
            return {"drops": 700, "drops.hips": 700, "decisions.exec.deny": 9}

    mgr = PolicyManager(Tier.COMPAT)
    mgr.kernel = _Kernel()  # type: ignore[assignment]
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[_Sensor()],
                  store=store, procs=procs, engine=Engine([]), dispatcher=_Dispatcher(procs),
                  parts=AgentParts(policies=mgr))
    try:
        agent._health()
        st = agent.status()
        drops = [a.data for a in store.alerts(rule="bastion.sensor.drops")]
    finally:
        store.close()
    assert st["drops"] == 700 and st["drops_by_class"] == {"hips": 700}
    assert [a["evidence"]["by_class"] for a in drops] == [{"hips": 700}]


def test_a_malformed_alert_neither_stops_the_agent_nor_wedges_the_store(tmp_path: Path) -> None:
    """A finding whose severity the store refuses (a rule's typo, or a crafted value).
    Before: StoreError out of the alert path (the agent died)."""
    agent, store, _, feed = _agent(tmp_path)
    try:
        agent._alert(_finding(9000, severity="severe"))
        agent._alert(_finding(9001, exe="/tmp/next"))
        st = agent.status()["store"]
        rules = [a.data["process"]["pid"] for a in store.alerts()]
    finally:
        store.close()
    assert rules == [9001] and st["state"] == "ok" and st["malformed"] == 1
    assert len(_fed(feed)) == 2


def test_status_text_names_the_ring_that_lost_records() -> None:
    from bastion.cli.main import format_status
    lines = format_status({"drops": 5003, "drops_by_class": {"file": 5000, "exec": 3},
                           "drops_by_ring": {"bulk": 5000, "priority": 3}})
    assert "dropped      file 5000, exec 3; priority ring 3; bulk ring 5000" in lines
    lines = format_status({"drops": 7, "drops_by_class": {"file": 7},
                           "drops_by_ring": {"bulk": 7, "priority": 0}})
    assert "dropped      file 7; bulk ring 7" in lines
