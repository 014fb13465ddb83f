"""The event/alert store: one SQLite database in WAL mode under the data dir.

The agent is the only writer (one thread at a time; a lock makes sharing the
handle between threads safe).  The CLI reads from other processes through a
read-only handle (``Store.open(..., readonly=True)``); WAL lets them read while
the agent writes.  Each record is kept as its compact JSON form (the stable
event/alert JSON) plus the columns that queries filter on.

Every ``sqlite3.Error`` becomes a :class:`~bastion.errors.StoreError` naming the
database path, with the sqlite error chained.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bastion.store import chain
from bastion.errors import Location, StoreError
from bastion.severity import SEVERITIES
from bastion.store.schema import SCHEMA_VERSION, NewerSchemaError, current_version, migrate
from bastion.timefmt import parse_time

__all__ = [
    "DB_NAME",
    "SEVERITIES",
    "MalformedRecordError",
    "Retention",
    "Store",
    "StoreNotFoundError",
    "StoreStats",
    "StoredRecord",
    "severity_rank",
]

DB_NAME = "bastion.db"
#: the data dir's owner lock: an agent holds it for its lifetime, a replay for its run
#: (s26: a replay given a live agent's non-default data dir wrote into its store); the
#: holder is what /proc/locks says
OWNER_LOCK = "agent.lock"
_GLOB_CHARS = frozenset("*?[")
# Retention deletes in chunks so one call never holds the write lock (or grows
# the WAL) for a whole multi-million-row delete.
_DELETE_CHUNK = 50_000
_JSON_SEPARATORS = (",", ":")
#: a coalesced event row (exact repeats, store/eventproc.py) spans at most this many
#: seconds from its first time (``ts``) to its last (``ts_last``)
REPEAT_WINDOW_S = 1.0
# one encoder for the event rows (json.dumps with separators builds one per call)
_ENCODER = json.JSONEncoder(separators=_JSON_SEPARATORS)
log = logging.getLogger("bastion.store")


class StoreNotFoundError(StoreError):
    """A read-only open found no database at the path."""


class MalformedRecordError(StoreError):
    """A record that cannot be stored as it is (the store itself works)."""


class StoredRecord(NamedTuple):
    """One stored event or alert: its row id (monotonic) and its JSON dict."""

    rowid: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Retention:
    """Limits on stored events, and on alerts by count only (``max_alerts``: the oldest
    beyond it are deleted, with a signed anchor that keeps the alert chain verifiable)."""

    max_age_s: float = 7 * 86400
    max_events: int = 5_000_000
    max_bytes: int = 2 * 2**30
    max_alerts: int = 1_000_000


@dataclass(frozen=True)
class StoreStats:
    path: Path
    schema_version: int
    events: int
    alerts: int
    oldest_event_ts: float | None
    newest_event_ts: float | None
    db_bytes: int  # page_count * page_size: the measure retention enforces
    wal_bytes: int
    alerts_by_severity: Mapping[str, int]


_INSERT_ROWS = "INSERT INTO events(ts, type, pid, exe, data, n, ts_last) VALUES "
# event rows per INSERT in add_rows (7 parameters each; fewer under a build whose limit on
# parameters is lower than the default 32,766)
_ROWS_PER_INSERT = 256


def severity_rank(severity: str) -> int:
    """``info`` -> 0 … ``critical`` -> 4; ValueError for anything else."""
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(
            f"unknown severity {severity!r} (expected one of {', '.join(SEVERITIES)})"
        ) from None


def _text(value: object) -> str:
    """A str that SQLite can store: lone surrogates (undecodable bytes in a path,
    from ``surrogateescape``) become U+FFFD in the *column*; the JSON keeps them
    exactly as ``\\udcXX`` escapes."""
    s = value if isinstance(value, str) else str(value)
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in s)
    return s


def alert_columns(record: Mapping[str, Any]) -> tuple[float, int, str, int, str]:
    """The filter columns an alert record gives: (ts, severity rank, rule, pid, exe)."""
    process = record.get("process") or {}
    return (parse_time(record["time"]), severity_rank(record["severity"]),
            _text(record.get("rule", "")), int(process.get("pid", 0)), _text(process.get("exe") or ""))


def _derive_columns(data: str) -> tuple[object, ...]:
    """:func:`alert_columns` of a stored alert's JSON (ValueError if it gives none)."""
    try:
        return alert_columns(json.loads(data))
    except ValueError:
        raise
    except Exception as exc:   # KeyError, TypeError, ConfigError from a malformed record
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def _is_glob(pattern: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(pattern)


class DataDirBusy(StoreError):
    """Another process (an agent, a replay) holds the data dir's owner lock."""


def lock_holders(st: os.stat_result) -> list[int]:
    """The pids that hold a ``flock`` on the file ``st`` describes, from /proc/locks
    (what the kernel says, not what a file says); [] when none or unreadable."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out: list[int] = []
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
                    if fields[4].isdigit():
                        out.append(int(fields[4]))
    except OSError:
        return []
    return out


def make_data_dir(data_dir: Path) -> None:
    """``data_dir`` made 0700 when missing (mkdir's mode is masked by the umask)."""
    created = not data_dir.exists()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(data_dir, 0o700)


def lock_data_dir(data_dir: Path, wait_s: float = 0.0) -> int:
    """Take the data dir's owner lock: an exclusive ``flock`` on ``<data_dir>/agent.lock``
    (the dir made as the store makes it, the file 0600 if missing), held for as long as
    the returned descriptor is open; a holder is waited for up to ``wait_s`` (an agent a
    guardian just killed is still exiting while its successor starts).

    The file is looked at before it is opened (``O_PATH``, never through a symlink): it
    must be a regular file of this user's with one link and no group or other access
    (a device node planted there is never opened, a hard link to another file never
    taken), then opened read-only through that handle; nothing is written to it.
    Raises :class:`DataDirBusy` naming the holders (from /proc/locks) when another
    process holds it, and :class:`StoreError` when the file is not acceptable or
    cannot be opened (a tamper-protected data dir refuses it to anyone but its
    agent)."""
    try:
        make_data_dir(Path(data_dir))
    except OSError as exc:
        raise StoreError(f"cannot create the data dir: {exc.strerror or exc}",
                         location=Location(str(data_dir))) from exc
    end = time.monotonic() + wait_s
    while True:
        try:
            return _lock_once(Path(data_dir) / OWNER_LOCK)
        except DataDirBusy:
            if time.monotonic() >= end:
                raise
            time.sleep(0.05)


def _lock_once(path: Path) -> int:
    """One try of :func:`lock_data_dir`."""
    where = Location(str(path))
    try:
        try:
            handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK, 0o600))
            except FileExistsError:
                pass            # made by another opener meanwhile: looked at below
            handle = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise StoreError(f"cannot open the data dir's owner lock: {exc.strerror or exc}",
                         location=where) from exc
    try:
        st = os.fstat(handle)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError("the data dir's owner lock is not a regular file (a symlink, "
                             "a device, a fifo...)", location=where)
        if st.st_nlink != 1 or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise StoreError(
                f"the data dir's owner lock is not this user's own private file "
                f"(links {st.st_nlink}, owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
                location=where)
        try:
            fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
                         | os.O_NONBLOCK)
        except OSError as exc:
            raise StoreError(f"cannot open the data dir's owner lock: {exc.strerror or exc}",
                             location=where) from exc
    finally:
        os.close(handle)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):   # the same inode, always
            raise StoreError("the data dir's owner lock changed while it was opened",
                             location=where)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pids = [p for p in lock_holders(st) if p != os.getpid()] or lock_holders(st)
            raise DataDirBusy(
                "another Bastion process holds this data dir (pid "
                f"{', '.join(map(str, pids)) if pids else 'unknown'}): an agent or a replay "
                "writes into its store", location=where) from None
        except OSError as exc:
            raise StoreError(f"cannot lock the data dir: {exc.strerror or exc}",
                             location=where) from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


class Store:
    """Handle on ``<data_dir>/bastion.db``.  Create with :meth:`open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        retention: Retention,
        readonly: bool,
    ) -> None:
        self._conn = conn
        self._path = path
        self._key: bytes | None = None
        self._retention = retention
        self._readonly = readonly
        self._immutable = False
        self._lock = threading.RLock()
        self._closed = False
        #: the writer's anchor of the alert chain (count, head): kept in memory, in the
        #: anchor file, and published with every alert (store/chain.py)
        self.anchor: chain.Anchor | None = None
        #: set by a writer's open when the anchor file disagreed with the store (truncated
        #: or rolled back while the agent was down, or the file was removed or forged)
        self.anchor_note = ""
        #: why the anchor file could not be written the last time ("" : it was)
        self.anchor_error = ""
        #: events retention deleted (rows of coalesced repeats count their ``n``)
        self.event_facts_deleted = 0
        #: the data dir's owner lock (:func:`lock_data_dir`) this handle holds, if any:
        #: released by :meth:`close`
        self.owner_lock: int | None = None

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        retention: Retention | None = None,
        readonly: bool = False,
        immutable: bool = False,
        busy_timeout_s: float = 10.0,
    ) -> Store:
        """Open (creating and migrating unless ``readonly``) the store in ``data_dir``.

        Writer: creates ``data_dir`` (0700) and ``bastion.db`` (0600), WAL mode,
        ``synchronous=NORMAL``, incremental auto-vacuum, pending migrations.
        Reader (``readonly=True``): creates nothing; raises
        :class:`StoreNotFoundError` if the database is missing and
        :class:`StoreError` if its schema is not this version's.
        A database with a newer schema is refused untouched in both modes.
        ``busy_timeout_s``: how long a write waits for another writer's lock (the
        agent keeps it short: its event loop must not stall on a locked store).
        """
        data_dir = Path(data_dir)
        path = data_dir / DB_NAME
        if readonly:
            return cls._open_reader(path, retention or Retention(), immutable=immutable)
        try:
            make_data_dir(data_dir)
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store: {exc.strerror or exc}", location=Location(str(path))
            ) from exc
        try:
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open: {exc}", location=Location(str(path))) from exc
        try:
            version = current_version(conn)
            if version > SCHEMA_VERSION:
                raise NewerSchemaError(version, SCHEMA_VERSION)
            os.chmod(path, 0o600)
            fresh = conn.execute(
                "SELECT count(*) FROM sqlite_master"
            ).fetchone()[0] == 0
            if fresh:
                # Must precede the first table; lets retention give pages back.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"cannot switch to WAL mode (journal_mode is {mode})",
                    location=Location(str(path)),
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {64 * 2**20}")
            retention_v3 = _upgrade_retention_v3(conn)
            before, _ = migrate(conn)
        except NewerSchemaError as exc:
            conn.close()
            raise StoreError(
                f"database schema version {exc.found} is newer than this Bastion supports "
                f"({exc.known}); upgrade Bastion — the database was left untouched",
                location=Location(str(path)),
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise StoreError(f"cannot open: {exc}", location=Location(str(path))) from exc
        except BaseException:
            conn.close()
            raise
        store = cls(conn, path, retention=retention or Retention(), readonly=False)
        try:
            if retention_v3:
                store._resign_retention_v3()
            store._take_anchor(first=before < 3 or retention_v3)
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_event_writer(cls, data_dir: Path, *, busy_timeout_s: float = 10.0) -> Store:
        """A second writer that only inserts event rows (the agent's writer process,
        :mod:`bastion.store.eventproc`): the store must exist at this schema version
        (the agent opened and migrated it); nothing is created or migrated and the
        alert chain and its anchor are never read or written here."""
        path = Path(data_dir) / DB_NAME
        if not path.exists():
            raise StoreNotFoundError("no Bastion store (the agent creates it)",
                                     location=Location(str(path)))
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=busy_timeout_s)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open: {exc}", location=Location(str(path))) from exc
        try:
            version = current_version(conn)
            if version != SCHEMA_VERSION:
                raise StoreError(f"schema version {version}, expected {SCHEMA_VERSION} (the agent "
                                 "migrates the store before it starts its writer)",
                                 location=Location(str(path)))
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                raise StoreError(f"journal_mode is {mode}, not wal", location=Location(str(path)))
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open: {exc}", location=Location(str(path))) from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, retention=Retention(), readonly=False)

    def _resign_retention_v3(self) -> None:
        """A store of the alert-retention build (see :func:`_upgrade_retention_v3`): its
        retention anchor was signed over ``retention|first|prev|mac|deleted``; one whose
        old MAC verifies is signed again under :func:`chain.retention_mac`.  One that does
        not verify is left as it is (verify reports the deletion it claims to excuse)."""
        key = self._chain_key()
        with self._write("re-signing the alert retention anchor") as conn:
            for first, prev, pmac, deleted, mac in conn.execute(
                    "SELECT first_seq, prev_seq, prev_mac, deleted, mac FROM alert_anchor").fetchall():
                old = hmac.new(key, f"retention|{first}|{prev}|{pmac}|{deleted}".encode(),
                               hashlib.sha256).hexdigest()
                if isinstance(mac, str) and hmac.compare_digest(mac, old):
                    conn.execute("UPDATE alert_anchor SET mac = ? WHERE first_seq = ?",
                                 (chain.retention_mac(key, int(first), int(prev), str(pmac),
                                                      int(deleted)), first))

    def _anchor_path(self) -> Path:
        return self._path.parent / chain.ANCHOR_NAME

    def _head(self, conn: sqlite3.Connection, key: bytes) -> chain.Anchor:
        """The chain's anchor now: its count is the rows present plus those retention deleted."""
        n = int(conn.execute("SELECT count(*) FROM alerts").fetchone()[0]) + self._retained(conn, key)
        last = conn.execute("SELECT seq, mac FROM alerts ORDER BY seq DESC LIMIT 1").fetchone()
        return chain.Anchor(n, int(last[0]), str(last[1])) if last else chain.Anchor(n, 0, "")

    def _take_anchor(self, *, first: bool) -> None:
        """Writer open: compare the anchor file with the store (what happened while no agent
        ran), say so in :attr:`anchor_note` if they disagree, then anchor the store's head.
        ``first``: the store predates anchors (schema < 3): its head is anchored silently."""
        key = self._chain_key()
        with self._read("anchoring the alert chain") as conn:
            head = self._head(conn, key)
            rows = [chain.ChainRow.from_sql(r) for r in conn.execute(
                "SELECT seq, '', '', prev_seq, mac, 0, NULL, NULL, NULL, NULL, NULL "
                "FROM alerts ORDER BY seq")] if not first else []
            stored = self._retention_anchor(conn, rows)
        retained = stored if chain.retention_valid(key, stored, rows) else None
        if not first:
            try:
                saved = chain.read_anchor(self._anchor_path(), key)
            except StoreError as exc:
                self.anchor_note = f"{exc}"
            else:
                if saved is None:
                    self.anchor_note = (f"the alert chain anchor {self._anchor_path()} is missing "
                                        f"(removed?); re-anchored at {head.count} alerts")
                else:
                    problems, _ = chain.check_anchor(saved, rows, "file", retained)
                    if problems:
                        self.anchor_note = "; ".join(str(p) for p in problems)
        self.anchor = head
        self._write_anchor(key)
        if self.anchor_error:
            self.anchor_note = "; ".join(x for x in (self.anchor_note, self.anchor_error) if x)

    @classmethod
    def _open_reader(cls, path: Path, retention: Retention, *, immutable: bool = False) -> Store:
        """``immutable``: read the main file only, never opening ``-wal``/``-shm`` (a
        protected store with no agent to ask; rows still in the WAL are not seen)."""
        try:
            if not path.exists():
                raise StoreNotFoundError("no Bastion store", location=Location(str(path)))
        except PermissionError as exc:
            raise StoreError(
                "permission denied (the store is readable by root only)",
                location=Location(str(path)),
            ) from exc
        try:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else ""),
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=10.0,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open: {exc}", location=Location(str(path))) from exc
        try:
            version = current_version(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot read: {exc}", location=Location(str(path))) from exc
        if version != SCHEMA_VERSION:
            conn.close()
            if version > SCHEMA_VERSION:
                why = (
                    f"database schema version {version} is newer than this Bastion "
                    f"supports ({SCHEMA_VERSION}); upgrade Bastion"
                )
            elif version == 0:
                why = "the store is not initialised yet (start the agent first)"
            else:
                why = (
                    f"database schema version {version} is older than this Bastion's "
                    f"({SCHEMA_VERSION}); start the agent once to migrate it"
                )
            raise StoreError(why, location=Location(str(path)))
        store = cls(conn, path, retention=retention, readonly=True)
        store._immutable = immutable
        return store

    @property
    def path(self) -> Path:
        return self._path

    @property
    def retention(self) -> Retention:
        return self._retention

    def close(self) -> None:
        """Close the handle (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self._readonly:
                    self._conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass  # best effort; closing must not fail on it
            finally:
                self._conn.close()
                if self.owner_lock is not None:
                    os.close(self.owner_lock)
                    self.owner_lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"{what}: {exc}", location=Location(str(self._path)))

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError(f"{what}: the store is closed", location=Location(str(self._path)))
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error."""
        with self._lock:
            if self._closed:
                raise StoreError(f"{what}: the store is closed", location=Location(str(self._path)))
            if self._readonly:
                raise StoreError(f"{what}: the store is open read-only",
                                 location=Location(str(self._path)))
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._error(what, exc) from exc

    # -- writes ------------------------------------------------------------

    def add_events(self, events: Sequence[Mapping[str, Any]], *,
                   times_ns: Sequence[int] | None = None) -> None:
        """Store ``events`` in one transaction (all or none).

        Each needs ``type``, ``time`` (RFC 3339), ``pid``; ``exe`` may be absent.
        ``times_ns``: the events' times as epoch ns, when the caller has them (the
        agent's writer): ``time`` is then not parsed back (same column value).
        A malformed event raises :class:`StoreError` naming its index and nothing
        of the batch is stored.
        """
        if not events:
            return
        if times_ns is not None and len(times_ns) != len(events):
            raise MalformedRecordError(f"{len(times_ns)} times for {len(events)} events",
                                       location=Location(str(self._path)))
        rows = []
        dumps = _ENCODER.encode
        for i, ev in enumerate(events):
            try:
                rows.append((
                    parse_time(ev["time"]) if times_ns is None else times_ns[i] // 1000 / 1e6,
                    _text(ev["type"]),
                    int(ev["pid"]),
                    _text(ev.get("exe") or ""),
                    dumps(ev if isinstance(ev, dict) else dict(ev)),
                ))
            except Exception as exc:  # KeyError, ConfigError, TypeError, ValueError
                raise MalformedRecordError(
                    f"event {i} of {len(events)} is malformed ({type(exc).__name__}: {exc})",
                    location=Location(str(self._path)),
                ) from exc
        with self._write(f"storing {len(rows)} events") as conn:
            conn.executemany(
                "INSERT INTO events(ts, type, pid, exe, data) VALUES (?, ?, ?, ?, ?)", rows
            )

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store event rows made by the writer process (:class:`~bastion.store.eventproc.RowMaker`):
        ``(ts, type, pid, exe, data, n, ts_last)`` each, in one transaction."""
        if not rows:
            return
        widths = set(map(len, rows))
        if widths != {7}:
            raise MalformedRecordError(f"event rows of {sorted(widths)} values (7 each)",
                                       location=Location(str(self._path)))
        with self._write(f"storing {len(rows)} event rows") as conn:
            k = min(_ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 7)
            full = len(rows) // k * k
            if full:
                # k rows per statement (one multi-row VALUES, in order: seq follows the
                # rows): ~25 % less CPU a row than one statement a row (the statement's
                # setup and the AUTOINCREMENT counter's update once per k rows)
                stmt = _INSERT_ROWS + ",".join(("(?,?,?,?,?,?,?)",) * k)
                chain_of = itertools.chain.from_iterable
                for i in range(0, full, k):
                    conn.execute(stmt, tuple(chain_of(rows[i:i + k])))
            if full < len(rows):
                conn.executemany(_INSERT_ROWS + "(?,?,?,?,?,?,?)", rows[full:])

    def add_alert(self, alert: Mapping[str, Any]) -> str:
        """Store one alert and return its id (a uuid4 hex is assigned if absent).

        ``alert`` itself is not modified; the stored dict carries the id.
        """
        record = dict(alert)
        if not record.get("id"):
            record["id"] = uuid.uuid4().hex
        alert_id = str(record["id"])
        try:
            ts, sev, rule, pid, exe = alert_columns(record)
            data = json.dumps(record, separators=_JSON_SEPARATORS)
        except Exception as exc:
            raise MalformedRecordError(
                f"alert {alert_id} is malformed ({type(exc).__name__}: {exc})",
                location=Location(str(self._path)),
            ) from exc
        key = self._chain_key()
        with self._write(f"storing alert {alert_id}") as conn:
            last = conn.execute("SELECT seq, mac FROM alerts ORDER BY seq DESC LIMIT 1").fetchone()
            prev_seq, prev_mac = (int(last[0]), str(last[1])) if last else (0, "")
            cur = conn.execute(
                "INSERT INTO alerts(alert_id, ts, severity, rule, pid, exe, data, prev_seq, mac_v) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (alert_id, ts, sev, rule, pid, exe, data, prev_seq, chain.SCHEME),
            )
            seq = int(cur.lastrowid or 0)
            # the MAC covers the row as SQLite will give it back (stored types included)
            row = chain.ChainRow.from_sql(conn.execute(
                f"SELECT {chain.COLUMNS} FROM alerts WHERE seq = ?", (seq,)).fetchone())
            mac = chain.row_mac(key, row, prev_mac)
            conn.execute("UPDATE alerts SET mac = ? WHERE seq = ?", (mac, seq))
            # counted under the write lock: the guardian writes alerts into the same store
            count = int(conn.execute("SELECT count(*) FROM alerts").fetchone()[0]) \
                + self._retained(conn, key)
        # after the commit: an anchor never names a row that is not committed (two writers
        # may leave the file one alert behind the store: shorter is never a false alarm)
        self.anchor = chain.Anchor(count, seq, mac)
        self._write_anchor(key)
        return alert_id

    def _write_anchor(self, key: bytes) -> None:
        """The anchor file follows :attr:`anchor`.  A failure (the file made unwritable, a
        directory planted in its place) never fails the alert, which is committed: it is
        kept in :attr:`anchor_error` for the agent to raise, and the file stays behind
        (shorter, so never a false alarm; the agent's and the remote anchors go on)."""
        assert self.anchor is not None
        try:
            chain.write_anchor(self._anchor_path(), key, self.anchor)
        except StoreError as exc:
            if str(exc) != self.anchor_error:
                log.warning("%s", exc)
            self.anchor_error = str(exc)
        else:
            self.anchor_error = ""

    def _chain_key(self) -> bytes:
        if self._key is None:
            self._key = chain.load_key(self._path.parent, create=not self._readonly)
        return self._key

    def verify_chain(self, anchors: Sequence[tuple[str, chain.Anchor]] = ()) -> chain.ChainReport:
        """The tamper-evident alert chain checked row by row, then against the anchor file
        and each of ``anchors`` (``(source, anchor)``: the agent's own, one given by hand)."""
        key = self._chain_key()
        # the anchors first: every row they name is committed, so the rows read next hold it
        unanchored = ""
        try:
            saved = chain.read_anchor(self._anchor_path(), key)
        except StoreError as exc:
            unanchored, saved = str(exc), None
        with self._read("verifying the alert chain") as conn:
            rows = [chain.ChainRow.from_sql(r) for r in conn.execute(
                f"SELECT {chain.COLUMNS} FROM alerts ORDER BY seq")]
            stored = self._retention_anchor(conn, rows)
        retained = stored if chain.retention_valid(key, stored, rows) else None
        report = chain.ChainReport(len(rows), chain.verify(key, rows, _derive_columns, stored),
                                   sum(1 for r in rows if r.mac_v == 1))
        if retained is not None:
            report.notes.append(f"{retained.deleted} alerts before seq {retained.first_seq} were "
                                "deleted by retention (store.max_alerts; signed anchor verified)")
        if saved is None and rows and not unanchored:
            unanchored = (f"the anchor file {self._anchor_path()} is missing: truncation cannot "
                          "be ruled out")
        if unanchored:
            report.problems.append(chain.ChainProblem(0, "unanchored", unanchored))
        checks = ([("file", saved)] if saved is not None else []) + list(anchors)
        for source, a in checks:
            problems, notes = chain.check_anchor(a, rows, source, retained)
            report.anchors.append(f"{source} ({a.count} alerts, head seq {a.seq})")
            if problems and self._immutable:
                # a snapshot does not see rows still in the WAL: shorter is expected
                notes += [f"snapshot read, not decided: {p}" for p in problems]
                problems = []
            report.problems += problems
            report.notes += notes
        report.problems.sort(key=lambda p: (p.seq, p.kind))
        return report

    @staticmethod
    def _retention_anchor(conn: sqlite3.Connection,
                          rows: Sequence[chain.ChainRow]) -> chain.RetentionAnchor | None:
        """The retention anchor row naming the first alert kept (None: none; not verified)."""
        if not rows:
            return None
        r = conn.execute("SELECT first_seq, prev_seq, prev_mac, deleted, mac FROM alert_anchor "
                         "WHERE first_seq = ?", (rows[0].seq,)).fetchone()
        if r is None:
            return None
        try:
            return chain.RetentionAnchor(int(r[0]), int(r[1]), str(r[2]), int(r[3]), str(r[4]))
        except (TypeError, ValueError):     # hand-edited to a non-number: never verifies
            return None

    def _retained(self, conn: sqlite3.Connection, key: bytes) -> int:
        """How many alerts retention deleted, by the verified retention anchor (0 if there
        is none, or it does not verify: a forged anchor excuses nothing)."""
        first = conn.execute(f"SELECT {chain.COLUMNS} FROM alerts ORDER BY seq LIMIT 1").fetchone()
        rows = [chain.ChainRow.from_sql(first)] if first else []
        r = self._retention_anchor(conn, rows)
        return r.deleted if r is not None and chain.retention_valid(key, r, rows) else 0

    def retain_alerts(self) -> int:
        """Delete the oldest alerts beyond ``max_alerts`` (in chunks) and anchor the
        chain at the first one kept; the number deleted.  The count anchors go on
        counting the deleted ones (the retention anchor's signed ``deleted``)."""
        excess = self.count_alerts() - max(0, self._retention.max_alerts)
        if excess <= 0:
            return 0
        key = self._chain_key()
        deleted = 0
        while excess > 0:
            n = min(excess, _DELETE_CHUNK)
            with self._write("retaining alerts") as conn:
                before = self._retained(conn, key)
                cut = conn.execute("SELECT seq, mac FROM alerts ORDER BY seq LIMIT 1 OFFSET ?",
                                   (n - 1,)).fetchone()
                first = conn.execute("SELECT seq, prev_seq FROM alerts WHERE seq > ? "
                                     "ORDER BY seq LIMIT 1", (int(cut[0]),)).fetchone()
                if first is None:
                    break
                gone = conn.execute("DELETE FROM alerts WHERE seq <= ?", (int(cut[0]),)).rowcount
                total = before + gone
                conn.execute("DELETE FROM alert_anchor")
                conn.execute(
                    "INSERT INTO alert_anchor(first_seq, prev_seq, prev_mac, deleted, at, mac) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (int(first[0]), int(first[1]), str(cut[1]), total, time.time(),
                     chain.retention_mac(key, int(first[0]), int(first[1]), str(cut[1]), total)))
            deleted += gone
            excess -= gone
        if deleted:
            self._reclaim()
        return deleted

    # -- queries -----------------------------------------------------------

    def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        pid: int | None = None,
        exe: str | None = None,
        types: Sequence[str] | None = None,
        after_rowid: int = 0,
        max_rowid: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[StoredRecord]:
        """Events matching every given filter, in row-id (insertion) order.

        ``since <= ts < until`` (epoch seconds; a row of coalesced repeats matches when
        its first-to-last span meets the range: its JSON says ``count`` and
        ``last_time``); ``exe`` is an exact path or, if it
        contains ``* ? [``, a GLOB pattern; ``types`` empty matches nothing;
        ``after_rowid < rowid <= max_rowid``.  ``limit`` keeps the first N rows,
        or the last N with ``newest=True`` (still returned oldest first).
        """
        where, params = _filters(
            since=since, until=until, pid=pid, exe=exe, after_rowid=after_rowid,
            max_rowid=max_rowid, spans=True,
        )
        if types is not None:
            if isinstance(types, str):
                types = [types]
            where.append(f"type IN ({','.join('?' * len(types))})")
            params.extend(types)
        return self._select("events", where, params, limit, newest)

    def alerts(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        pid: int | None = None,
        exe: str | None = None,
        severity: str | None = None,
        rule: str | None = None,
        after_rowid: int = 0,
        max_rowid: int | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[StoredRecord]:
        """Alerts matching every filter; ``severity`` is a minimum (``high`` keeps
        high and critical); ``rule`` is exact or a GLOB.  Otherwise as :meth:`events`."""
        where, params = _filters(
            since=since, until=until, pid=pid, exe=exe, after_rowid=after_rowid,
            max_rowid=max_rowid,
        )
        if severity is not None:
            try:
                rank = severity_rank(severity)
            except ValueError as exc:
                raise StoreError(str(exc), location=Location(str(self._path))) from exc
            where.append("severity >= ?")
            params.append(rank)
        if rule is not None:
            where.append("rule GLOB ?" if _is_glob(rule) else "rule = ?")
            params.append(_text(rule))
        return self._select("alerts", where, params, limit, newest)

    def _select(
        self, table: str, where: list[str], params: list[object], limit: int | None,
        newest: bool,
    ) -> list[StoredRecord]:
        sql = f"SELECT seq, data FROM {table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        with self._read(f"querying {table}") as conn:
            rows = conn.execute(sql, params).fetchall()
        if newest:
            rows.reverse()
        loads = json.loads
        return [StoredRecord(seq, loads(data)) for seq, data in rows]

    def last_event_rowid(self) -> int:
        """The highest event row id now stored (0 if none)."""
        with self._read("reading the last event") as conn:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])

    def last_alert_rowid(self) -> int:
        """The highest alert row id now stored (0 if none)."""
        with self._read("reading the last alert") as conn:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM alerts").fetchone()[0])

    def count_events(self) -> int:
        with self._read("counting events") as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])

    def count_event_facts(self) -> int:
        """Events the rows stand for (a row of coalesced repeats counts its ``n``)."""
        with self._read("counting events") as conn:
            return int(conn.execute("SELECT coalesce(sum(n), 0) FROM events").fetchone()[0])

    def count_alerts(self) -> int:
        with self._read("counting alerts") as conn:
            return int(conn.execute("SELECT count(*) FROM alerts").fetchone()[0])

    def db_bytes(self) -> int:
        """``page_count * page_size``: the size retention's byte limit measures."""
        with self._read("measuring the database") as conn:
            return _db_bytes(conn)

    def stats(self) -> StoreStats:
        with self._read("reading statistics") as conn:
            n_events, oldest, newest = conn.execute(
                "SELECT count(*), min(ts), max(ts) FROM events"
            ).fetchone()
            by_sev = {name: 0 for name in SEVERITIES}
            for rank, n in conn.execute(
                "SELECT severity, count(*) FROM alerts GROUP BY severity"
            ):
                if 0 <= rank < len(SEVERITIES):
                    by_sev[SEVERITIES[rank]] = int(n)
            version = current_version(conn)
            size = _db_bytes(conn)
        wal = self._path.with_name(self._path.name + "-wal")
        try:
            wal_bytes = wal.stat().st_size
        except OSError:
            wal_bytes = 0
        return StoreStats(
            path=self._path,
            schema_version=version,
            events=int(n_events),
            alerts=sum(by_sev.values()),
            oldest_event_ts=oldest,
            newest_event_ts=newest,
            db_bytes=size,
            wal_bytes=wal_bytes,
            alerts_by_severity=by_sev,
        )

    # -- retention ---------------------------------------------------------

    def enforce_retention(self, *, now: float | None = None) -> int:
        """Delete the oldest events beyond the age, count and byte limits.

        Returns the number of events deleted.  Alerts are deleted by count only
        (:meth:`retain_alerts`, called here), never by age or bytes.  Works
        in chunks of at most 50 000 rows, each its own transaction, and gives
        freed pages back to the file system (incremental vacuum).
        """
        r = self._retention
        now = time.time() if now is None else now
        self.retain_alerts()
        deleted = 0
        # Age: by event time.
        cutoff = now - r.max_age_s
        while True:
            n = self._delete_chunk(
                "DELETE FROM events WHERE seq IN "
                "(SELECT seq FROM events WHERE ts < ? LIMIT ?)",
                (cutoff, _DELETE_CHUNK),
            )
            deleted += n
            if n < _DELETE_CHUNK:
                break
        # Count: oldest by row id (insertion order).
        excess = self.count_events() - max(0, r.max_events)
        while excess > 0:
            n = self._delete_oldest(min(excess, _DELETE_CHUNK))
            if n == 0:
                break
            deleted += n
            excess -= n
        # Bytes: page_count * page_size, after giving free pages back.
        self._reclaim()
        while True:
            size = self.db_bytes()
            over = size - r.max_bytes
            if over <= 0:
                break
            count = self.count_events()
            if count == 0:
                break  # alerts alone exceed the limit: they are kept
            per_event = size / count  # overestimates (alerts, indexes): fine
            want = min(_DELETE_CHUNK, count, max(1, math.ceil(over / per_event)))
            n = self._delete_oldest(want)
            if n == 0:
                break
            deleted += n
        return deleted

    def _reclaim(self) -> None:
        """Give the free pages back to the file system (auto_vacuum=INCREMENTAL).

        Through ``executescript``: ``execute`` steps the pragma once, freeing one
        page.  Runs in its own implicit transaction, never inside ``_write``.
        """
        with self._read("reclaiming free pages") as conn:
            conn.executescript("PRAGMA incremental_vacuum;")

    def _delete_oldest(self, n: int) -> int:
        return self._delete_chunk(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
            (n,),
        )

    def _delete_chunk(self, sql: str, params: tuple[object, ...]) -> int:
        """``sql``: ``DELETE FROM events WHERE seq IN (<subquery>)``; the events the rows
        stood for (a coalesced row's ``n``) are added to :attr:`event_facts_deleted`."""
        sub = sql.split(" WHERE seq IN ", 1)[1]
        with self._write("enforcing retention") as conn:
            facts = int(conn.execute(f"SELECT coalesce(sum(n), 0) FROM events WHERE seq IN {sub}",
                                     params).fetchone()[0])
            n = conn.execute(sql, params).rowcount
        self.event_facts_deleted += facts
        if n > 0:
            self._reclaim()
        return max(0, n)


def _upgrade_retention_v3(conn: sqlite3.Connection) -> bool:
    """A store written by the alert-retention build (never released) recorded schema
    version 3 as its ``alert_anchor`` table, without this version 3's ``mac_v``.  Give
    it ``mac_v`` (its rows are scheme 1) and record version 4 (migration 4 then has
    nothing to do); True if this was such a store.  Under the write lock, so two
    writers opening it at once upgrade it once."""
    if current_version(conn) != 3:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        cols = {str(r[1]) for r in conn.execute("PRAGMA table_info(alerts)")}
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if current_version(conn) != 3 or "mac_v" in cols or "alert_anchor" not in tables:
            conn.execute("COMMIT")
            return False
        conn.execute("ALTER TABLE alerts ADD COLUMN mac_v INTEGER NOT NULL DEFAULT 1")
        conn.execute("INSERT INTO schema(version, applied_at) VALUES (4, ?)", (time.time(),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return True


def _db_bytes(conn: sqlite3.Connection) -> int:
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    return int(pages) * int(size)


def _filters(
    *,
    since: float | None,
    until: float | None,
    pid: int | None,
    exe: str | None,
    after_rowid: int,
    max_rowid: int | None,
    spans: bool = False,
) -> tuple[list[str], list[object]]:
    """``spans``: event rows, whose coalesced repeats span ``ts`` to ``ts_last`` (at most
    :data:`REPEAT_WINDOW_S`): ``since`` keeps a row whose span reaches it (the index
    range on ``ts`` widened by the window, then the span checked)."""
    where: list[str] = []
    params: list[object] = []
    if after_rowid > 0:
        where.append("seq > ?")
        params.append(after_rowid)
    if max_rowid is not None:
        where.append("seq <= ?")
        params.append(max_rowid)
    if since is not None and spans:
        where.append("ts >= ? AND coalesce(ts_last, ts) >= ?")
        params += [since - REPEAT_WINDOW_S, since]
    elif since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    if pid is not None:
        where.append("pid = ?")
        params.append(pid)
    if exe is not None:
        where.append("exe GLOB ?" if _is_glob(exe) else "exe = ?")
        params.append(_text(exe))
    return where, params
