from __future__ import annotations

import hashlib
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from bastion.errors import BastionError, StoreError
from bastion.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Retention,
    Store,
    StoreNotFoundError,
)
from bastion.store.schema import current_version, migrate
from bastion.timefmt import format_time, parse_time

T0 = 1_795_670_447  # 2026-11-26T05:20:47Z


def ev(i: int, *, t: float | None = None, type_: str = "exec", pid: int | None = None,
       exe: str = "/usr/bin/true", **extra: Any) -> dict[str, Any]:
    ts = T0 + i if t is None else t
    d: dict[str, Any] = {
        "type": type_,
        "time": format_time(int(ts * 10**9)),
        "pid": 1000 + i if pid is None else pid,
        "ppid": 1,
        "exe": exe,
    }
    if type_ == "exec":
        d["argv"] = [exe, f"arg{i}"]
    d.update(extra)
    return d


def alert(i: int, *, severity: str = "high", rule: str = "shadow-read", t: float | None = None,
          **extra: Any) -> dict[str, Any]:
    ts = T0 + i if t is None else t
    d: dict[str, Any] = {
        "time": format_time(int(ts * 10**9)),
        "rule": rule,
        "title": f"alert {i}",
        "severity": severity,
        "attack": ["T1003.008"],
        "action": "alert",
        "process": {"pid": 2000 + i, "ppid": 1, "exe": "/usr/bin/cat",
                    "cmdline": "cat /etc/shadow", "uid": 0},
    }
    d.update(extra)
    return d


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def pids(records: list[Any]) -> list[int]:
    return [r.data["pid"] for r in records]


# -- open, files, migrations ---------------------------------------------------


def test_open_creates_private_dir_and_db_in_wal_mode(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    with Store.open(data) as s:
        assert s.path == data / "bastion.db"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    conn = sqlite3.connect(data / "bastion.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()


def test_migrations_from_empty_record_every_version(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        rows = s._conn.execute("SELECT version FROM schema ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == len(MIGRATIONS)


def test_reopen_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    with Store.open(tmp_path) as s:
        s.add_events([ev(1)])
        aid = s.add_alert(alert(1))
    for _ in range(2):
        with Store.open(tmp_path) as s:
            assert s.count_events() == 1
            assert [r.data["id"] for r in s.alerts()] == [aid]
            assert s._conn.execute("SELECT count(*) FROM schema").fetchone()[0] == SCHEMA_VERSION


def test_a_new_migration_is_applied_once_in_order(tmp_path: Path) -> None:
    with Store.open(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / "bastion.db", isolation_level=None)
    extra = MIGRATIONS + ("CREATE TABLE extra(x INTEGER); INSERT INTO extra VALUES (7);",)
    assert migrate(conn, extra) == (SCHEMA_VERSION, SCHEMA_VERSION + 1)
    assert migrate(conn, extra) == (SCHEMA_VERSION + 1, SCHEMA_VERSION + 1)
    assert conn.execute("SELECT x FROM extra").fetchall() == [(7,)]
    conn.close()


def test_a_failing_migration_rolls_back_whole(tmp_path: Path) -> None:
    with Store.open(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / "bastion.db", isolation_level=None)
    bad = MIGRATIONS + ("CREATE TABLE half(x INTEGER); INSERT INTO nowhere VALUES (1);",)
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, bad)
    assert current_version(conn) == SCHEMA_VERSION
    assert not conn.in_transaction
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half" not in names
    conn.close()


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "bastion.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE schema (version INTEGER PRIMARY KEY, applied_at REAL)")
    conn.execute("INSERT INTO schema VALUES (?, 0)", (SCHEMA_VERSION + 5,))
    conn.commit()
    conn.close()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    mode_before = db.stat().st_mode
    with pytest.raises(StoreError) as ei:
        Store.open(tmp_path)
    msg = str(ei.value)
    assert f"version {SCHEMA_VERSION + 5} is newer" in msg
    assert str(db) in msg
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert db.stat().st_mode == mode_before
    assert not (tmp_path / "bastion.db-wal").exists()  # not even switched to WAL
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path, readonly=True)


def test_a_corrupt_file_is_a_store_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "bastion.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as ei:
        Store.open(tmp_path)
    assert ei.value.location is not None and ei.value.location.source == str(tmp_path / "bastion.db")
    assert isinstance(ei.value.__cause__, sqlite3.DatabaseError)


def test_readonly_open_creates_nothing_and_refuses_writes(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StoreNotFoundError):
        Store.open(missing, readonly=True)
    assert not missing.exists()
    with Store.open(tmp_path) as w:
        w.add_events([ev(1)])
        with Store.open(tmp_path, readonly=True) as r:
            assert r.count_events() == 1
            with pytest.raises(StoreError, match="read-only"):
                r.add_events([ev(2)])
            w.add_events([ev(2)])  # the writer is not blocked by the reader
            assert r.count_events() == 2  # and the reader sees each commit


def test_readonly_open_of_an_uninitialised_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "bastion.db").touch()
    with pytest.raises(StoreError, match="not initialised"):
        Store.open(tmp_path, readonly=True)


def test_closed_store_raises_store_error(tmp_path: Path) -> None:
    s = Store.open(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.count_events()


# -- events --------------------------------------------------------------------


def test_events_round_trip_exactly(store: Store) -> None:
    batch = [ev(1), ev(2, type_="open", path="/etc/shadow", flags=0),
             ev(3, type_="connect", daddr="10.0.0.1", dport=443),
             ev(4, exe="/tmp/caf\u00e9 \udcff\n")]  # non-UTF-8 byte, newline
    store.add_events(batch)
    got = store.events()
    assert [r.data for r in got] == batch
    assert [r.rowid for r in got] == sorted(r.rowid for r in got)
    assert store.events(exe="/tmp/caf\u00e9 \udcff\n")[0].data == batch[3]


def test_add_events_is_all_or_nothing_and_names_the_bad_event(store: Store) -> None:
    store.add_events([])
    batch = [ev(1), ev(2), {"type": "exec", "time": "not a time", "pid": 3}]
    with pytest.raises(StoreError, match=r"event 2 of 3 is malformed.*not a time"):
        store.add_events(batch)
    with pytest.raises(StoreError, match="event 0 of 1.*KeyError"):
        store.add_events([{"type": "exec", "pid": 1}])
    assert store.count_events() == 0


def test_time_filters_are_half_open(store: Store) -> None:
    store.add_events([ev(i) for i in range(10)])
    assert pids(store.events(since=T0 + 3)) == [1003 + i for i in range(7)]
    assert pids(store.events(until=T0 + 3)) == [1000, 1001, 1002]
    assert pids(store.events(since=T0 + 2, until=T0 + 4)) == [1002, 1003]
    assert pids(store.events(since=T0 + 2.5, until=T0 + 2.9)) == []


def test_pid_exe_and_type_filters(store: Store) -> None:
    store.add_events([
        ev(1, pid=7, exe="/usr/bin/curl", type_="connect"),
        ev(2, pid=7, exe="/usr/bin/curl", type_="exit"),
        ev(3, pid=8, exe="/usr/bin/wget", type_="connect"),
        ev(4, pid=9, exe="/tmp/.x/curl", type_="exec"),
        ev(5, pid=10, exe="/usr/bin/[weird]", type_="exec"),
    ])
    assert [r.data["time"] for r in store.events(pid=7)] == [ev(1)["time"], ev(2)["time"]]
    assert pids(store.events(exe="/usr/bin/curl")) == [7, 7]
    assert pids(store.events(exe="/usr/bin/*")) == [7, 7, 8, 10]
    assert pids(store.events(exe="*/curl")) == [7, 7, 9]
    assert pids(store.events(exe="/usr/bin/?get")) == [8]
    assert pids(store.events(exe="/usr/bin/[[]weird]")) == [10]
    assert pids(store.events(exe="/usr/bin/cur")) == []  # exact, not a prefix
    assert pids(store.events(types=["connect"])) == [7, 8]
    assert pids(store.events(types=["connect", "exec"])) == [7, 8, 9, 10]
    assert pids(store.events(types="exit")) == [7]  # a lone string is one type
    assert store.events(types=[]) == []
    assert pids(store.events(pid=7, types=["exit"], exe="*curl")) == [7]


def test_rowid_window_and_limits(store: Store) -> None:
    store.add_events([ev(i) for i in range(10)])
    rows = store.events()
    ids = [r.rowid for r in rows]
    assert pids(store.events(after_rowid=ids[6])) == [1007, 1008, 1009]
    assert pids(store.events(after_rowid=ids[2], max_rowid=ids[4])) == [1003, 1004]
    assert pids(store.events(limit=3)) == [1000, 1001, 1002]
    assert pids(store.events(limit=3, newest=True)) == [1007, 1008, 1009]  # oldest first
    assert pids(store.events(limit=0)) == []
    assert store.last_event_rowid() == ids[-1]


def test_query_plans_use_the_indexes(store: Store) -> None:
    def plan(sql: str) -> str:
        return " ".join(r[-1] for r in store._conn.execute("EXPLAIN QUERY PLAN " + sql, (1,)))
    assert "events_pid" in plan("SELECT seq FROM events WHERE pid = ? ORDER BY seq DESC")
    assert "events_ts" in plan("SELECT seq FROM events WHERE ts >= ?")
    assert "alerts_pid" in plan("SELECT seq FROM alerts WHERE pid = ?")


# -- alerts --------------------------------------------------------------------


def test_add_alert_assigns_an_id_without_touching_the_input(store: Store) -> None:
    a = alert(1)
    aid = store.add_alert(a)
    assert "id" not in a
    assert len(aid) == 32 and int(aid, 16) >= 0
    (rec,) = store.alerts()
    assert rec.data == {**a, "id": aid}
    assert store.add_alert(alert(2, id="given-id")) == "given-id"


def test_duplicate_alert_id_is_a_chained_store_error(store: Store) -> None:
    store.add_alert(alert(1, id="x"))
    with pytest.raises(StoreError) as ei:
        store.add_alert(alert(2, id="x"))
    assert isinstance(ei.value.__cause__, sqlite3.IntegrityError)
    assert str(store.path) in str(ei.value)
    assert store.count_alerts() == 1


def test_malformed_alerts_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="unknown severity 'urgent'"):
        store.add_alert(alert(1, severity="urgent"))
    with pytest.raises(StoreError, match="KeyError"):
        store.add_alert({"severity": "low", "rule": "r"})
    assert store.count_alerts() == 0


def test_alert_filters(store: Store) -> None:
    for i, sev in enumerate(["info", "low", "medium", "high", "critical"]):
        store.add_alert(alert(i, severity=sev, rule=f"rule-{sev}"))
    store.add_alert(alert(9, severity="low", rule="other"))

    def sev_of(recs: list[Any]) -> list[str]:
        return [r.data["severity"] for r in recs]

    assert sev_of(store.alerts(severity="high")) == ["high", "critical"]
    assert sev_of(store.alerts(severity="info")) == ["info", "low", "medium", "high", "critical", "low"]
    assert sev_of(store.alerts(rule="other")) == ["low"]
    assert sev_of(store.alerts(rule="rule-*", severity="medium")) == ["medium", "high", "critical"]
    assert sev_of(store.alerts(pid=2003)) == ["high"]
    assert sev_of(store.alerts(exe="/usr/bin/c?t", since=T0 + 4)) == ["critical", "low"]
    assert sev_of(store.alerts(limit=2, newest=True)) == ["critical", "low"]
    with pytest.raises(StoreError, match="unknown severity"):
        store.alerts(severity="bad")


# -- retention -----------------------------------------------------------------


def test_retention_by_age_keeps_alerts(tmp_path: Path) -> None:
    with Store.open(tmp_path, retention=Retention(max_age_s=3600)) as s:
        s.add_events([ev(i, t=T0 - 7200 + i) for i in range(5)] + [ev(10 + i) for i in range(3)])
        s.add_alert(alert(1, t=T0 - 86400 * 30))
        assert s.enforce_retention(now=T0 + 10) == 5
        assert pids(s.events()) == [1010, 1011, 1012]
        assert s.count_alerts() == 1
        assert s.enforce_retention(now=T0 + 10) == 0


def test_retention_by_count_deletes_oldest_first(tmp_path: Path) -> None:
    with Store.open(tmp_path, retention=Retention(max_events=4, max_age_s=1e12)) as s:
        # insertion order, not event time, defines "oldest" for the count limit
        s.add_events([ev(i, t=T0 + 100 - i) for i in range(10)])
        s.add_alert(alert(1))
        assert s.enforce_retention(now=T0) == 6
        assert pids(s.events()) == [1006, 1007, 1008, 1009]
        assert s.count_alerts() == 1


def test_retention_by_bytes_shrinks_the_file_and_keeps_alerts(tmp_path: Path) -> None:
    with Store.open(tmp_path, retention=Retention(max_bytes=300_000, max_age_s=1e12)) as s:
        for b in range(10):
            s.add_events([ev(b * 500 + i, path="/x" * 40) for i in range(500)])
        for i in range(20):
            s.add_alert(alert(i))
        assert s.db_bytes() > 1_000_000
        deleted = s.enforce_retention(now=T0)
        assert 0 < deleted < 5000
        assert s.db_bytes() <= 300_000
        remaining = pids(s.events())
        assert remaining == list(range(1000 + 5000 - len(remaining), 1000 + 5000))  # newest kept
        assert s.count_alerts() == 20


def test_retention_stops_when_alerts_alone_exceed_the_byte_limit(tmp_path: Path) -> None:
    with Store.open(tmp_path, retention=Retention(max_bytes=1, max_age_s=1e12)) as s:
        s.add_events([ev(i) for i in range(100)])
        s.add_alert(alert(1))
        assert s.enforce_retention(now=T0) == 100
        assert s.count_alerts() == 1


def test_row_ids_never_go_back_after_retention_empties_the_table(tmp_path: Path) -> None:
    with Store.open(tmp_path, retention=Retention(max_events=0)) as s:
        s.add_events([ev(i) for i in range(5)])
        last = s.last_event_rowid()
        s.enforce_retention(now=T0)
        assert s.count_events() == 0
        s.add_events([ev(9)])
        assert s.events()[0].rowid > last


# -- stats and threads -----------------------------------------------------------


def test_stats(store: Store) -> None:
    store.add_events([ev(1), ev(5)])
    store.add_alert(alert(1, severity="critical"))
    st = store.stats()
    assert (st.events, st.alerts, st.schema_version) == (2, 1, SCHEMA_VERSION)
    assert st.oldest_event_ts == pytest.approx(T0 + 1)
    assert st.newest_event_ts == pytest.approx(T0 + 5)
    assert st.alerts_by_severity["critical"] == 1 and st.alerts_by_severity["info"] == 0
    assert st.db_bytes == store.db_bytes() > 0
    assert st.path == store.path


def test_handle_can_be_shared_between_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for j in range(20):
                store.add_events([ev(k * 1000 + j * 10 + i) for i in range(10)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for _ in range(20):
        store.events(limit=5, newest=True)
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_events() == 800


def test_store_errors_are_bastion_errors() -> None:
    assert issubclass(StoreNotFoundError, StoreError)
    assert issubclass(StoreError, BastionError)


def test_stored_time_column_matches_event_time(store: Store) -> None:
    e = ev(0, t=T0 + 0.123456)
    store.add_events([e])
    (ts,) = store._conn.execute("SELECT ts FROM events").fetchone()
    assert ts == pytest.approx(parse_time(e["time"]), abs=1e-6)
