"""The tamper-evident alert log: every kind of tampering is found and named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.store import chain
from bastion.store.db import Store, alert_columns
from bastion.store.remote import store_handlers
from bastion.store.schema import MIGRATIONS, migrate


def _alert(i: int) -> dict:  # type: ignore[type-arg]
    return {"time": f"2026-11-26T05:00:{i:02d}.000000Z", "id": f"a{i}", "rule": "r", "title": f"t{i}",
            "severity": "high", "attack": [], "action": "alert",
            "process": {"pid": i, "ppid": 1, "exe": "/bin/x", "cmdline": "", "uid": 0}}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    with Store.open(tmp_path) as s:
        for i in range(1, 7):
            s.add_alert(_alert(i))
    return tmp_path


def _sql(d: Path, sql: str, *args: object) -> None:
    c = sqlite3.connect(d / "bastion.db")
    c.execute(sql, args)
    c.commit()
    c.close()


def _verify(d: Path) -> list[tuple[int, str]]:
    with Store.open(d, readonly=True) as s:
        report = s.verify_chain()
    return [(p.seq, p.kind) for p in report.problems]


def test_intact(store_dir: Path) -> None:
    assert _verify(store_dir) == []
    r = CliRunner().invoke(cli, ["log", "verify", "--data-dir", str(store_dir)])
    assert r.exit_code == 0 and "6 alerts: chain intact" in r.output


def test_edited(store_dir: Path) -> None:
    _sql(store_dir, "UPDATE alerts SET data = replace(data, 't3', 'harmless') WHERE seq = 3")
    assert _verify(store_dir) == [(3, "edited")]
    r = CliRunner().invoke(cli, ["log", "verify", "--data-dir", str(store_dir)])
    assert r.exit_code == 1 and "alert seq 3: edited" in r.output


def test_deleted(store_dir: Path) -> None:
    _sql(store_dir, "DELETE FROM alerts WHERE seq = 4")
    # the chain names the gap; the anchor's count says one record is missing
    assert _verify(store_dir) == [(0, "deleted"), (5, "deleted")]


def test_inserted(store_dir: Path) -> None:
    _sql(store_dir, "INSERT INTO alerts(seq, alert_id, ts, severity, rule, pid, exe, data, prev_seq, mac) "
                    "SELECT 100, 'forged', ts, severity, rule, pid, exe, data, 2, mac FROM alerts WHERE seq = 3")
    _sql(store_dir, "INSERT INTO alerts(alert_id, ts, severity, rule, pid, exe, data, prev_seq, mac) "
                    "VALUES ('x', 0, 0, 'r', 0, '', '{}', 6, 'ffff')")
    got = _verify(store_dir)
    assert (100, "inserted") in got


def test_reordered(store_dir: Path) -> None:
    # swap the contents (and chain fields) of seq 2 and 5
    c = sqlite3.connect(store_dir / "bastion.db")
    rows = {r[0]: r[1:] for r in c.execute("SELECT seq, alert_id, data, prev_seq, mac FROM alerts")}
    c.execute("UPDATE alerts SET alert_id='tmp2' WHERE seq=2")
    c.execute("UPDATE alerts SET alert_id='tmp5' WHERE seq=5")
    for a, b in ((2, 5), (5, 2)):
        c.execute("UPDATE alerts SET alert_id=?, data=?, prev_seq=?, mac=? WHERE seq=?", (*rows[b], a))
    c.commit()
    c.close()
    got = _verify(store_dir)
    assert (2, "reordered") in got and (5, "reordered") in got


def test_verify_without_store(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["log", "verify", "--data-dir", str(tmp_path / "none")])
    assert r.exit_code != 0


# ---- issue 14.7: every column is covered; truncation and rollback are found -------------


def _cli_verify(d: Path, *extra: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["log", "verify", "--data-dir", str(d), *extra])
    return r.exit_code, r.output


@pytest.mark.parametrize("column, value", [
    ("severity", 0),            # a high alert demoted to info: hidden from --severity high
    ("rule", "harmless.rule"),  # renamed: hidden from --rule
    ("pid", 4242),              # pinned on another process: hidden from --pid
    ("exe", "/usr/bin/true"),   # hidden from --exe
    ("ts", 0.0),                # moved out of every --since window
])
def test_edited_filter_column_is_named(store_dir: Path, column: str, value: object) -> None:
    _sql(store_dir, f"UPDATE alerts SET {column} = ? WHERE seq = 3", value)
    code, out = _cli_verify(store_dir)
    assert code == 1 and "alert seq 3: edited" in out, out


def test_edited_action_in_data_is_named(store_dir: Path) -> None:
    _sql(store_dir, "UPDATE alerts SET data = replace(data, '\"action\":\"alert\"', "
                    "'\"action\":\"audit\"') WHERE seq = 2")
    code, out = _cli_verify(store_dir)
    assert code == 1 and "alert seq 2: edited" in out, out


def test_truncated_tail_is_found(store_dir: Path) -> None:
    _sql(store_dir, "DELETE FROM alerts WHERE seq > 4")
    code, out = _cli_verify(store_dir)
    assert code == 1 and "truncated: store has 4 rows, anchor says 6" in out, out


def test_rolled_back_copy_is_found(tmp_path: Path) -> None:
    """An older copy of the database (taken at 3 alerts) restored over the live one."""
    d = tmp_path / "live"
    with Store.open(d) as s:
        for i in range(1, 4):
            s.add_alert(_alert(i))
    old = (d / "bastion.db").read_bytes()
    with Store.open(d) as s:
        for i in range(4, 7):
            s.add_alert(_alert(i))
    (d / "bastion.db").write_bytes(old)
    for side in ("bastion.db-wal", "bastion.db-shm"):
        (d / side).unlink(missing_ok=True)
    code, out = _cli_verify(d)
    assert code == 1 and "truncated: store has 3 rows, anchor says 6" in out, out


def test_encoding_is_unambiguous() -> None:
    assert chain.encode("ab", "c") != chain.encode("a", "bc")
    assert len({chain.encode(1), chain.encode("1"), chain.encode(1.0), chain.encode(None)}) == 4
    with pytest.raises(TypeError):
        chain.encode(True)


def test_downgraded_row_is_named(store_dir: Path) -> None:
    _sql(store_dir, "UPDATE alerts SET mac_v = 1 WHERE seq = 4")
    assert _verify(store_dir) == [(4, "edited")]


def _old_store(d: Path, n: int) -> None:
    """A schema-2 store as the previous release wrote it: scheme-1 MACs (chain + data only)."""
    d.mkdir()
    conn = sqlite3.connect(d / "bastion.db", isolation_level=None)
    migrate(conn, MIGRATIONS[:2])
    key = chain.load_key(d, create=True)
    prev_seq, prev_mac = 0, ""
    for i in range(1, n + 1):
        rec = _alert(i)
        data = json.dumps(rec, separators=(",", ":"))
        ts, sev, rule, pid, exe = alert_columns(rec)
        cur = conn.execute("INSERT INTO alerts(alert_id, ts, severity, rule, pid, exe, data, prev_seq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (rec["id"], ts, sev, rule, pid, exe, data, prev_seq))
        seq = int(cur.lastrowid or 0)
        prev_mac = chain.mac_v1(key, prev_seq, prev_mac, seq, rec["id"], data)
        conn.execute("UPDATE alerts SET mac = ? WHERE seq = ?", (prev_mac, seq))
        prev_seq = seq
    conn.close()


def test_old_rows_migrate_and_verify_under_the_old_scheme(tmp_path: Path) -> None:
    d = tmp_path / "old"
    _old_store(d, 3)
    with Store.open(d) as s:          # migrates to schema 3, anchors silently
        assert s.anchor_note == "" and s.anchor == chain.Anchor(3, 3, s.anchor.mac if s.anchor else "")
        s.add_alert(_alert(4))
    with Store.open(d, readonly=True) as s:
        report = s.verify_chain()
    assert report.problems == [] and report.old_scheme == 3 and report.alerts == 4
    code, out = _cli_verify(d)
    assert code == 0 and "3 alerts written before schema 3 are verified under the old MAC scheme" in out
    # an old row's filter column is checked against its MAC'd data
    _sql(d, "UPDATE alerts SET severity = 0 WHERE seq = 2")
    with Store.open(d, readonly=True) as s:
        report = s.verify_chain()
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "edited")]
    assert "severity" in report.problems[0].detail


def test_anchor_file_removed_or_forged_is_said(store_dir: Path) -> None:
    anchor = store_dir / chain.ANCHOR_NAME
    raw = anchor.read_bytes()
    anchor.write_bytes(raw.replace(b'"count":6', b'"count":9'))
    code, out = _cli_verify(store_dir)
    assert code == 1 and "unanchored" in out and "MAC does not verify" in out
    anchor.unlink()
    code, out = _cli_verify(store_dir)
    assert code == 1 and "the anchor file" in out and "is missing" in out


def test_writer_open_reports_truncation_while_no_agent_ran(store_dir: Path) -> None:
    _sql(store_dir, "DELETE FROM alerts WHERE seq > 4")
    with Store.open(store_dir) as s:
        assert "truncated: store has 4 rows, anchor says 6" in s.anchor_note
        assert s.anchor is not None and s.anchor.count == 4   # re-anchored after saying so
    with Store.open(store_dir) as s:
        assert s.anchor_note == ""


def test_remote_anchor_catches_a_rewritten_local_anchor(store_dir: Path, tmp_path: Path) -> None:
    """Compat-tier root: truncates the store and, holding the key, re-MACs the anchor file.
    The copy in the remote log (the newest published alert's ``chain``) still says 6."""
    with Store.open(store_dir, readonly=True) as s:
        head = s._conn.execute("SELECT seq, mac FROM alerts ORDER BY seq DESC LIMIT 1").fetchone()
    remote = tmp_path / "last-remote-alert.json"
    remote.write_text(json.dumps({**_alert(6), "chain": {"count": 6, "seq": head[0], "mac": head[1]}}))
    _sql(store_dir, "DELETE FROM alerts WHERE seq > 4")
    key = chain.load_key(store_dir, create=False)
    c = sqlite3.connect(store_dir / "bastion.db")
    seq, mac = c.execute("SELECT seq, mac FROM alerts ORDER BY seq DESC LIMIT 1").fetchone()
    c.close()
    chain.write_anchor(store_dir / chain.ANCHOR_NAME, key, chain.Anchor(4, seq, mac))
    assert _cli_verify(store_dir)[0] == 0          # every local copy agrees: undetectable here
    code, out = _cli_verify(store_dir, "--anchor", str(remote))
    assert code == 1 and "truncated: store has 4 rows, anchor says 6" in out, out


def test_bad_anchor_argument_names_the_file(store_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "a.json"
    bad.write_text('{"count": -1, "seq": 2, "mac": "x"}')
    r = CliRunner().invoke(cli, ["log", "verify", "--data-dir", str(store_dir), "--anchor", str(bad)])
    assert r.exit_code != 0 and str(bad) in str(r.exception) + r.output


def test_agent_in_memory_anchor_catches_truncation_with_the_file_rewritten(store_dir: Path) -> None:
    """While the agent runs: the store and its anchor file are both rolled back; the
    agent's own anchor (checked by ``store.verify`` on its socket) still says 6."""
    with Store.open(store_dir) as writer:
        handlers = store_handlers(store_dir, lambda: writer.anchor)
        _sql(store_dir, "DELETE FROM alerts WHERE seq > 4")
        key = chain.load_key(store_dir, create=False)
        c = sqlite3.connect(store_dir / "bastion.db")
        seq, mac = c.execute("SELECT seq, mac FROM alerts ORDER BY seq DESC LIMIT 1").fetchone()
        c.close()
        chain.write_anchor(store_dir / chain.ANCHOR_NAME, key, chain.Anchor(4, seq, mac))
        report = chain.ChainReport.from_json(handlers["store.verify"]({})["report"])
    assert [(p.kind, p.detail.split(" (")[0]) for p in report.problems] == \
        [("truncated", "store has 4 rows, anchor says 6")]
    assert report.anchors[1].startswith("agent (6 alerts")


def test_two_writers_agent_and_guardian_keep_one_exact_anchor(tmp_path: Path) -> None:
    """The guardian writes tamper alerts into the agent's store: the anchor counts both."""
    with Store.open(tmp_path) as agent, Store.open(tmp_path) as guardian:
        for i in range(1, 7):
            (agent if i % 2 else guardian).add_alert(_alert(i))
        assert guardian.anchor is not None and guardian.anchor.count == 6
    assert chain.read_anchor(tmp_path / chain.ANCHOR_NAME, chain.load_key(tmp_path, create=False)) \
        == guardian.anchor
    assert _verify(tmp_path) == []


def test_unwritable_anchor_never_loses_an_alert_and_is_said(store_dir: Path) -> None:
    """A directory planted where the anchor file goes: alerts are still stored, the
    failure is kept for the agent to raise, and verify says the store is unanchored."""
    anchor = store_dir / chain.ANCHOR_NAME
    anchor.unlink()
    anchor.mkdir()
    try:
        with Store.open(store_dir) as s:
            assert "anchor" in s.anchor_note and s.anchor_error
            s.add_alert(_alert(7))
            assert s.anchor_error and s.anchor is not None and s.anchor.count == 7
        code, out = _cli_verify(store_dir)
        assert code == 1 and "alert store: unanchored: " in out and "cannot read the alert chain anchor" in out, out
    finally:
        anchor.rmdir()
