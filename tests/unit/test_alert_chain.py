"""The tamper-evident alert log: every kind of tampering is found and named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.main import cli
from bastion.store.db import Store


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
        n, problems = s.verify_chain()
    return [(p.seq, p.kind) for p in problems]


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
    assert _verify(store_dir) == [(5, "deleted")]


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
