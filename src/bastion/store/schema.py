"""The store's schema as an ordered list of migrations.

``MIGRATIONS[i]`` takes the database from version ``i`` to ``i + 1``.  Released
migrations are never edited, only appended to.  Each pending migration runs in
its own ``BEGIN IMMEDIATE`` transaction together with the row recording it in
``schema``, so a crash leaves the database at a whole version.  A database whose
version is newer than ``SCHEMA_VERSION`` is refused and left untouched.

Row ids (``seq``) are AUTOINCREMENT so they never go backwards, even when
retention deletes every event: ``bastion events --follow`` relies on that.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "NewerSchemaError",
    "current_version",
    "migrate",
]

MIGRATIONS: tuple[str, ...] = (
    # 1: events and alerts, JSON text plus the indexed columns queries filter on.
    """
    CREATE TABLE events (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,
        ts   REAL    NOT NULL,   -- epoch seconds, from the event's "time"
        type TEXT    NOT NULL,
        pid  INTEGER NOT NULL,
        exe  TEXT    NOT NULL,
        data TEXT    NOT NULL    -- the event's compact JSON form
    );
    -- Only time and pid are indexed: an exe index halves the insert rate (it
    -- dirties one leaf page per distinct exe per batch), while an exe query
    -- without it scans ~70 ms per million rows (globs like */curl scan anyway).
    -- pid's index ends in the rowid, so "newest N of a pid" needs no sort.
    CREATE INDEX events_ts  ON events(ts);
    CREATE INDEX events_pid ON events(pid);

    CREATE TABLE alerts (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        alert_id TEXT    NOT NULL UNIQUE,
        ts       REAL    NOT NULL,
        severity INTEGER NOT NULL,   -- 0 info .. 4 critical
        rule     TEXT    NOT NULL,
        pid      INTEGER NOT NULL,
        exe      TEXT    NOT NULL,
        data     TEXT    NOT NULL
    );
    CREATE INDEX alerts_ts  ON alerts(ts);
    CREATE INDEX alerts_pid ON alerts(pid);
    CREATE INDEX alerts_rule ON alerts(rule);
    """,
    # 2: the tamper-evident alert chain (store/chain.py).
    """
    ALTER TABLE alerts ADD COLUMN prev_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN mac TEXT NOT NULL DEFAULT '';
    """,
    # 3: the chain's MAC covers every column (scheme 2); rows written before keep scheme 1
    # and are verified under it (store/chain.py).
    """
    ALTER TABLE alerts ADD COLUMN mac_v INTEGER NOT NULL DEFAULT 1;
    """,
    # 4: alert retention (issue 14.1): where the oldest alerts were deleted, a signed
    # anchor for the first kept one (its deleted predecessor's seq and MAC).  IF NOT
    # EXISTS: a store of the unreleased alert-retention build recorded this table as
    # its version 3 (store/db.py adds its missing mac_v first, then this is a no-op).
    """
    CREATE TABLE IF NOT EXISTS alert_anchor (
        first_seq INTEGER PRIMARY KEY,  -- the first alert kept
        prev_seq  INTEGER NOT NULL,     -- its deleted predecessor
        prev_mac  TEXT    NOT NULL,
        deleted   INTEGER NOT NULL,     -- alerts deleted by retention so far
        at        REAL    NOT NULL,
        mac       TEXT    NOT NULL
    );
    """,
    # 5: exact repeats coalesced into one event row (issue 16.3, store/eventproc.py): how
    # many events the row stands for and the last one's time (NULL: a row of one event).
    # The first time stays in ts (indexed); a coalesced row spans at most
    # store.db.REPEAT_WINDOW_S, which time filters widen their index range by.
    """
    ALTER TABLE events ADD COLUMN n INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE events ADD COLUMN ts_last REAL;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

_SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS schema (
    version    INTEGER PRIMARY KEY,
    applied_at REAL    NOT NULL
)
"""


class NewerSchemaError(Exception):
    """The database was written by a newer Bastion (internal; db.py wraps it)."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"schema version {found} is newer than this Bastion knows ({known})")
        self.found = found
        self.known = known


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in ``conn`` (0 for an empty database). Read-only."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema'"
    ).fetchone()
    if row is None:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema").fetchone()
    return int(version)


def _statements(script: str) -> Iterator[str]:
    """Split a script into complete statements (triggers and quoted ';' are safe)."""
    buf = ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                yield buf
            buf = ""
    if buf.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")


def migrate(
    conn: sqlite3.Connection, migrations: tuple[str, ...] = MIGRATIONS
) -> tuple[int, int]:
    """Apply the pending ``migrations``; return (version before, version after).

    ``conn`` must be in autocommit mode (``isolation_level=None``).  Raises
    :class:`NewerSchemaError` before writing anything when the database is newer,
    and ``sqlite3.Error`` (after rolling back that migration) when a script fails.
    """
    known = len(migrations)
    before = current_version(conn)
    if before > known:
        raise NewerSchemaError(before, known)
    if before == known:
        return before, before
    version = before
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_SCHEMA_TABLE)
            # Re-read under the write lock: another process may have migrated.
            version = current_version(conn)
            if version > known:
                raise NewerSchemaError(version, known)
            if version == known:
                conn.execute("COMMIT")
                return before, version
            for stmt in _statements(migrations[version]):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema(version, applied_at) VALUES (?, ?)",
                (version + 1, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
