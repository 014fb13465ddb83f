"""Where alert retention (issue 14.1) meets the alert chain's count anchor (14.6/14.7):
rows retention deleted, by the signed retention anchor's ``deleted``, plus the rows
present make the count the anchors say; retention is never "deleted" or "truncated",
and a deletion it did not do is still reported."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from pathlib import Path

import pytest

from bastion.errors import StoreError
from bastion.store import chain
from bastion.store.db import Retention, Store, alert_columns
from bastion.store.schema import MIGRATIONS, SCHEMA_VERSION, current_version, migrate


def _alert(i: int) -> dict[str, object]:
    return {"time": "2026-01-01T00:00:00Z", "id": f"a{i:05d}", "rule": "r", "title": f"t{i}",
            "severity": "high", "action": "alert", "process": {"pid": i, "exe": "/x"}}


def _sql(d: Path, sql: str, *args: object) -> None:
    c = sqlite3.connect(d / "bastion.db")
    c.execute(sql, args)
    c.commit()
    c.close()


def _kinds(report: chain.ChainReport) -> list[tuple[int, str]]:
    return [(p.seq, p.kind) for p in report.problems]


def _retained_store(d: Path, n: int = 60, keep: int = 20) -> tuple[Store, chain.Anchor]:
    s = Store.open(d, retention=Retention(max_alerts=keep))
    for i in range(n):
        s.add_alert(_alert(i))
    assert s.retain_alerts() == n - keep
    assert s.anchor is not None
    return s, s.anchor


def test_retention_then_the_file_and_memory_anchors_are_intact_and_one_more_deletion_is_reported(
        tmp_path: Path) -> None:
    """Before the integration the count anchor ignored retention: 20 rows against an anchor
    of 60 was reported "deleted" (or "truncated" by an anchor whose head retention took)."""
    s, mem = _retained_store(tmp_path)
    try:
        assert mem.count == 60                      # 20 present + 40 deleted by retention
        report = s.verify_chain([("agent", mem)])
        assert (report.alerts, report.problems) == (20, [])
        assert [a.split(" ")[0] for a in report.anchors] == ["file", "agent"]
        assert any("40 alerts before seq 41 were deleted by retention" in n for n in report.notes)
        s.add_alert(_alert(60))                     # anchors keep counting the deleted ones
        assert s.anchor is not None and s.anchor.count == 61
        mem = s.anchor
    finally:
        s.close()
    _sql(tmp_path, "DELETE FROM alerts WHERE seq = (SELECT max(seq) FROM alerts)")   # the tail
    with Store.open(tmp_path, readonly=True) as r:
        report = r.verify_chain([("agent", mem)])
    assert _kinds(report) == [(61, "truncated"), (61, "truncated")]
    assert "store has 20 rows and 40 deleted by retention, anchor says 61" in report.problems[0].detail


def test_the_oldest_kept_row_deleted_is_reported(tmp_path: Path) -> None:
    s, mem = _retained_store(tmp_path)
    s.close()
    _sql(tmp_path, "DELETE FROM alerts WHERE seq = 41")
    with Store.open(tmp_path, readonly=True) as r:
        report = r.verify_chain([("agent", mem)])
    # the retention anchor no longer names the first row: it excuses nothing
    assert (42, "deleted") in _kinds(report)
    assert [k for _, k in _kinds(report)].count("deleted") == 3   # the chain, file and agent


def test_a_re_signed_retention_anchor_that_keeps_its_count_does_not_excuse_a_deletion(
        tmp_path: Path) -> None:
    """An attacker with the key moves the retention anchor past a row he deleted; the
    chain then verifies, but the count anchors do not add up."""
    s, mem = _retained_store(tmp_path)
    s.close()
    key = chain.load_key(tmp_path, create=False)
    c = sqlite3.connect(tmp_path / "bastion.db")
    (mac41,) = c.execute("SELECT mac FROM alerts WHERE seq = 41").fetchone()
    c.execute("DELETE FROM alerts WHERE seq = 41")
    c.execute("DELETE FROM alert_anchor")
    c.execute("INSERT INTO alert_anchor VALUES (42, 41, ?, 40, 0, ?)",
              (mac41, chain.retention_mac(key, 42, 41, mac41, 40)))
    c.commit()
    c.close()
    with Store.open(tmp_path, readonly=True) as r:
        report = r.verify_chain([("agent", mem)])
    assert _kinds(report) == [(0, "deleted"), (0, "deleted")]
    assert "store has 19 rows and 40 deleted by retention, anchor says 60" in report.problems[0].detail


def test_an_old_anchor_whose_head_retention_deleted_is_not_truncation(tmp_path: Path) -> None:
    s = Store.open(tmp_path, retention=Retention(max_alerts=20))
    try:
        for i in range(10):
            s.add_alert(_alert(i))
        published = s.anchor                        # a remote copy from early on
        for i in range(10, 60):
            s.add_alert(_alert(i))
        s.retain_alerts()
        assert published is not None and published.seq == 10
        report = s.verify_chain([("remote", published)])
        assert report.problems == []
        assert any("seq 10, was deleted by retention" in n for n in report.notes)
        # the same anchor, claiming more alerts than ever existed up to its head
        inflated = chain.Anchor(published.count + 100, published.seq, published.mac)
        assert _kinds(s.verify_chain([("remote", inflated)])) == [(0, "deleted")]
    finally:
        s.close()


def test_retention_deletes_old_scheme_rows_and_the_rest_verifies(tmp_path: Path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    conn = sqlite3.connect(d / "bastion.db", isolation_level=None)
    migrate(conn, MIGRATIONS[:2])                   # the release before schema 3
    key = chain.load_key(d, create=True)
    prev_seq, prev_mac = 0, ""
    for i in range(1, 11):
        rec = _alert(i)
        data = json.dumps(rec, separators=(",", ":"))
        ts, sev, rule, pid, exe = alert_columns(rec)
        cur = conn.execute("INSERT INTO alerts(alert_id, ts, severity, rule, pid, exe, data, prev_seq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (rec["id"], ts, sev, rule, pid, exe, data, prev_seq))
        seq = int(cur.lastrowid or 0)
        prev_mac = chain.mac_v1(key, prev_seq, prev_mac, seq, str(rec["id"]), data)
        conn.execute("UPDATE alerts SET mac = ? WHERE seq = ?", (prev_mac, seq))
        prev_seq = seq
    conn.close()
    with Store.open(d, retention=Retention(max_alerts=8)) as s:
        assert current_version(s._conn) == SCHEMA_VERSION
        for i in range(11, 15):
            s.add_alert(_alert(i))
        assert s.retain_alerts() == 6             # seq 1..6, all old-scheme
        report = s.verify_chain([("agent", s.anchor)] if s.anchor else [])
    assert (report.alerts, report.problems, report.old_scheme) == (8, [], 4)
    # and again, past the last old-scheme row (the retention anchor names a scheme-1 MAC)
    with Store.open(d, retention=Retention(max_alerts=3)) as s:
        assert s.retain_alerts() == 5
        report = s.verify_chain([("agent", s.anchor)] if s.anchor else [])
    assert (report.alerts, report.problems, report.old_scheme) == (3, [], 0)


def _retention_v3_store(d: Path, *, forge: bool = False) -> None:
    """A store of the alert-retention build (unreleased): its schema 3 was ``alert_anchor``
    without ``mac_v``; its retention anchor MAC'd over ``retention|first|prev|mac|deleted``."""
    d.mkdir()
    conn = sqlite3.connect(d / "bastion.db", isolation_level=None)
    migrate(conn, MIGRATIONS[:2] + ("""
        CREATE TABLE alert_anchor (first_seq INTEGER PRIMARY KEY, prev_seq INTEGER NOT NULL,
            prev_mac TEXT NOT NULL, deleted INTEGER NOT NULL, at REAL NOT NULL, mac TEXT NOT NULL);
    """,))
    key = chain.load_key(d, create=True)
    prev_seq, prev_mac = 0, ""
    for i in range(1, 9):
        rec = _alert(i)
        data = json.dumps(rec, separators=(",", ":"))
        ts, sev, rule, pid, exe = alert_columns(rec)
        conn.execute("INSERT INTO alerts(alert_id, ts, severity, rule, pid, exe, data, prev_seq) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (rec["id"], ts, sev, rule, pid, exe, data, prev_seq))
        mac = chain.mac_v1(key, prev_seq, prev_mac, i, str(rec["id"]), data)
        conn.execute("UPDATE alerts SET mac = ? WHERE seq = ?", (mac, i))
        prev_seq, prev_mac = i, mac
        if i == 3:
            cut_mac = mac
    conn.execute("DELETE FROM alerts WHERE seq <= 3")
    old = hmac.new(key, f"retention|4|3|{cut_mac}|3".encode(), hashlib.sha256).hexdigest()
    conn.execute("INSERT INTO alert_anchor VALUES (4, 3, ?, 3, 0, ?)",
                 (cut_mac, "0" * 64 if forge else old))
    conn.close()


def test_a_store_of_the_retention_builds_schema_3_is_upgraded(tmp_path: Path) -> None:
    d = tmp_path / "r3"
    _retention_v3_store(d)
    with Store.open(d) as s:
        assert current_version(s._conn) == SCHEMA_VERSION == 5
        assert s.anchor == chain.Anchor(8, 8, s.anchor.mac if s.anchor else "")  # 5 + 3 retained
        assert s.anchor_note == ""
        s.add_alert(_alert(9))
        report = s.verify_chain([("agent", s.anchor)] if s.anchor else [])
    assert (report.alerts, report.problems, report.old_scheme) == (6, [], 5)
    with Store.open(d) as s:          # opened again: nothing more to do
        assert _kinds(s.verify_chain()) == []


def test_a_forged_anchor_in_a_retention_build_store_is_not_re_signed(tmp_path: Path) -> None:
    d = tmp_path / "r3"
    _retention_v3_store(d, forge=True)
    with Store.open(d) as s:
        report = s.verify_chain()
    assert _kinds(report) == [(4, "deleted")]


def test_reader_of_a_retention_build_store_names_the_file(tmp_path: Path) -> None:
    d = tmp_path / "r3"
    _retention_v3_store(d)
    with pytest.raises(StoreError, match=r"older than this Bastion's \(5\); start the agent once") as e:
        Store.open(d, readonly=True)
    assert str(d / "bastion.db") in str(e.value)
