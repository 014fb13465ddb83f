"""Alert retention (issue 14.1): an alert flood no longer grows the store without
bound.  Beyond ``store.max_alerts`` the oldest alerts are deleted and the chain is
anchored at the first one kept, so ``log verify`` stays clean, while a record
deleted by hand, or a forged anchor, is still reported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bastion.config import PolicyError, parse_policy
from bastion.store.db import Retention, Store


def _alert(i: int) -> dict[str, object]:
    return {"time": "2026-01-01T00:00:00Z", "id": f"a{i:05d}", "rule": "r", "title": "t",
            "severity": "high", "action": "alert", "process": {"pid": i, "exe": "/x"}}


def _fill(d: Path, n: int, keep: int) -> Store:
    s = Store.open(d, retention=Retention(max_alerts=keep))
    for i in range(n):
        s.add_alert(_alert(i))
    return s


def test_an_alert_flood_is_retained_out_and_the_chain_still_verifies(tmp_path: Path) -> None:
    """Before: alerts were never deleted (a flood filled the disk)."""
    s = _fill(tmp_path, 300, 100)
    try:
        s.enforce_retention()
        kept = [a.data["id"] for a in s.alerts()]
        r1 = s.verify_chain([("agent", s.anchor)] if s.anchor else [])
        for i in range(300, 350):                 # later rounds move the anchor on
            s.add_alert(_alert(i))
        s.enforce_retention()
        r2 = s.verify_chain([("agent", s.anchor)] if s.anchor else [])
        ids2 = [a.data["id"] for a in s.alerts()]
    finally:
        s.close()
    assert kept == [f"a{i:05d}" for i in range(200, 300)]
    assert (r1.alerts, r1.problems, len(r1.anchors)) == (100, [], 2)
    assert (r2.alerts, r2.problems, len(r2.anchors)) == (100, [], 2) and ids2[0] == "a00250"


def test_a_deletion_after_the_retention_point_is_still_reported(tmp_path: Path) -> None:
    s = _fill(tmp_path, 50, 20)
    try:
        s.enforce_retention()
        first = s.alerts()[0].rowid
    finally:
        s.close()
    with sqlite3.connect(tmp_path / "bastion.db") as c:      # the first kept one, by hand
        c.execute("DELETE FROM alerts WHERE seq = ?", (first,))
    with Store.open(tmp_path) as s:
        problems = s.verify_chain().problems
    assert [(p.seq, p.kind) for p in problems] == [(first + 1, "deleted")]


def test_a_forged_anchor_hiding_a_deletion_is_reported(tmp_path: Path) -> None:
    s = _fill(tmp_path, 30, 1000)
    s.close()
    with sqlite3.connect(tmp_path / "bastion.db") as c:      # delete the oldest ten, forge
        c.execute("DELETE FROM alerts WHERE seq <= 10")
        c.execute("INSERT INTO alert_anchor VALUES (11, 10, 'f' || hex(randomblob(31)), 10, 0, "
                  "'0000')")
    with Store.open(tmp_path) as s:
        problems = s.verify_chain().problems
    assert [(p.seq, p.kind) for p in problems] == [(11, "deleted")]


def test_max_alerts_from_the_policy() -> None:
    assert parse_policy("version: 1\nstore:\n  max_alerts: 5000\n", "p.yaml").store.max_alerts == 5000
    with pytest.raises(PolicyError, match=r"p.yaml:4:15: store.max_alerts must be at least 1000"):
        parse_policy("version: 1\nstore:\n  max_events: 100000\n  max_alerts: 10\n", "p.yaml")
