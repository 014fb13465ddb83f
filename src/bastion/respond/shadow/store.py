"""Ransomware shield, storage: the shadow directory (blobs + SQLite index), bounded.

Storage (:class:`ShadowStore`, ``shadow_dir``):

* ``blobs/<aa>/<sha256>`` — content-addressed copies: one blob per content
  (shared by every copy with that content); copies up to ``INLINE_MAX``
  bytes live in the index instead (no file created);
* ``index.db`` (SQLite, WAL) — ``copies``: one row per (opener process,
  content generation of an inode) with the original path, dev/inode, size,
  mode, uid/gid, mtime/ctime, sha256, the opener's pid, start time, exe and
  ancestry, the time; ``incidents`` and ``incident_copies``.
  A *content generation* is ``(dev, ino, size, mtime_ns, ctime_ns)``: the
  same generation is copied once (a dictionary hit afterwards); each further
  process of the same or another tree only adds an index row.

Space is bounded by ``max_bytes`` (each blob counted as at least 4 KiB).
Eviction policy, applied when a new copy does not fit, down to 90 % of the
budget: (1) copies that belong only to closed or rolled-back incidents,
oldest first; (2) copies that belong to no incident and are older than
``keep_pending_s``, oldest first; never a copy of an open incident, never a
pending copy younger than ``keep_pending_s`` (a ransomware run in progress
must not evict its own victims' originals).  When nothing may be evicted the
new copy is not taken (``no_space``, that file is not recoverable) and the
open is allowed.  Every eviction is counted (``evictions``,
``evicted_bytes``); an evicted copy's index rows stay while an incident
names them, so rollback reports the file as "evicted".

Quotas (:class:`Quotas`, issue 14.3): one user must not exhaust the shield
for the others.  Every index row and every blob is *charged* to a uid (the
opener's real uid, :attr:`Opener.uid`; the keeper charges a process in a user
namespace to the uid that owns the namespace) and to a tree (the protected
directory the file lies under).  A blob is charged to the row that brought
its bytes; a later row of another uid for the same content costs that uid a
row, no bytes.  Each uid and each tree has a byte and a row cap, the index
a total row cap: a new copy or row that would pass a cap first evicts, by
the policy above but only among what that uid (tree) was charged for --
the flooding user pays with its own oldest copies, never another user's --
and is refused when that frees nothing (``quota_refused_bytes``,
``quota_refused_rows``: not recoverable, the open is allowed).  Rows are
evicted like copies: rows of decided incidents first, then pending rows
older than ``keep_pending_s``, oldest first; a blob no row names any more
goes with its last row.  Why young pending copies are still never evicted,
even inside a quota: a ransomware run has read its victims before anyone
decided about it, and oldest-first eviction of young copies would let it
flush its victims' originals with a burst of junk; refusing the junk instead
loses only files it reaches after its own quota is spent (and that burst
is itself reported).  Every refusal or quota-forced eviction is recorded as
a bite (:meth:`ShadowStore.take_quota_bites`, one alert per interval naming
the uid or tree).  Rows are also bounded in age (:meth:`ShadowStore.maintain`).

:meth:`ShadowStore.put` runs on the permission listener's thread: it reads
the original only through the event fd (``pread``), never by path.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Final, Iterator, Sequence

from bastion.errors import Location, StoreError
from bastion.kernel.opener import TICK_NS
from bastion.policy.compile import kernel_dev
from bastion.respond.shadow.beneath import Anchor, FileState

INDEX_NAME: Final = "index.db"
BLOB_MIN: Final = 4096               # space accounting: a blob costs at least one block
CHUNK: Final = 1 << 20
INLINE_MAX: Final = 64 * 1024        # copies up to this size live in the index (no file create)
_LOW_WATER: Final = 0.9
_ROW_BATCH: Final = 1024             # rows evicted per pass at most (~20 ms)
_NO_VICTIMS_BACKOFF_S: Final = 1.0   # a scope with nothing evictable is not searched again sooner

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS blobs (
    sha TEXT PRIMARY KEY, size INTEGER NOT NULL, t_ns INTEGER NOT NULL,
    evicted INTEGER NOT NULL DEFAULT 0, inline INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS blob_data (sha TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS copies (
    id INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, kind TEXT NOT NULL, path TEXT NOT NULL,
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, mode INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, sha TEXT, pid INTEGER NOT NULL, start_ns INTEGER NOT NULL,
    exe TEXT NOT NULL, ancestry TEXT NOT NULL, late INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS copies_sha ON copies(sha);
CREATE INDEX IF NOT EXISTS copies_t ON copies(t_ns);
CREATE INDEX IF NOT EXISTS copies_start ON copies(start_ns);
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY, root_pid INTEGER NOT NULL, root_start_ns INTEGER NOT NULL,
    opened_ns INTEGER NOT NULL, state TEXT NOT NULL, closed_ns INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS incident_copies (
    incident INTEGER NOT NULL, copy INTEGER NOT NULL, PRIMARY KEY (incident, copy));
CREATE INDEX IF NOT EXISTS incident_copies_copy ON incident_copies(copy);
CREATE TABLE IF NOT EXISTS incident_states (
    incident INTEGER NOT NULL, path TEXT NOT NULL,
    present INTEGER NOT NULL,            -- 0 absent, 1 present, 2 a directory on the way gone
    ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, PRIMARY KEY (incident, path));
"""

# schema 2: each copy is anchored (beneath.Anchor) -- rows of schema 1 have root ''
# and are never restored automatically.
# schema 3: rows and blobs are charged to a uid and a tree (quotas); older rows are
# charged to uid -1 and tree '' (their own buckets).
SCHEMA_VERSION: Final = 3
_CHARGE_COLUMNS: Final = (("cuid", "INTEGER NOT NULL DEFAULT -1"),
                          ("tree", "TEXT NOT NULL DEFAULT ''"))
_ANCHOR_COLUMNS: Final = (("root", "TEXT NOT NULL DEFAULT ''"),
                          ("root_dev", "INTEGER NOT NULL DEFAULT 0"),
                          ("root_ino", "INTEGER NOT NULL DEFAULT 0"),
                          ("parent_dev", "INTEGER NOT NULL DEFAULT 0"),
                          ("parent_ino", "INTEGER NOT NULL DEFAULT 0"))

GenKey = tuple[int, int, int, int, int]     # (dev, ino, size, mtime_ns, ctime_ns)
ProcId = tuple[int, int]                    # (pid, start_ns CLOCK_BOOTTIME)
Scope = tuple[str, str]                     # ("uid", "1001"), ("tree", "/home"), ("total", "")
TOTAL: Final[Scope] = ("total", "")


@dataclass(frozen=True)
class Quotas:
    """Caps per uid and per tree (bytes, index rows), and of the whole index (rows).

    0 picks the default: a uid may hold a quarter of ``max_bytes`` and of
    ``max_rows``, a tree half (so no single user, and no single protected
    directory, can take the shield from the others)."""

    uid_max_bytes: int = 0
    tree_max_bytes: int = 0
    max_rows: int = 500_000          # ~150 MB of index at most
    uid_max_rows: int = 0
    tree_max_rows: int = 0

    def resolved(self, max_bytes: int) -> Quotas:
        for name in ("uid_max_bytes", "tree_max_bytes", "max_rows", "uid_max_rows",
                     "tree_max_rows"):
            if getattr(self, name) < 0:
                raise StoreError(f"shield quota {name} must be >= 0",
                                 location=Location(f"shield.{name}"))
        rows = self.max_rows or 500_000
        return Quotas(uid_max_bytes=self.uid_max_bytes or max(1, max_bytes // 4),
                      tree_max_bytes=self.tree_max_bytes or max(1, max_bytes // 2),
                      max_rows=rows, uid_max_rows=self.uid_max_rows or max(1, rows // 4),
                      tree_max_rows=self.tree_max_rows or max(1, rows // 2))


@dataclass(frozen=True)
class Usage:
    bytes: int
    rows: int


@dataclass(frozen=True)
class QuotaBite:
    """A cap was reached since the last :meth:`ShadowStore.take_quota_bites`."""

    kind: str          # "uid", "tree" or "total"
    key: str           # the uid, the protected directory, or ""
    resource: str      # "bytes" or "rows"
    refused: int       # copies/rows not taken (not recoverable)
    evicted: int       # copies/rows of that uid/tree evicted to make room


def _blob_cost(size: int) -> int:
    return max(size, BLOB_MIN)


def _same_start(a: int, b: int) -> bool:
    return not a or not b or abs(a - b) < TICK_NS


@dataclass(frozen=True)
class Opener:
    """The process that opened a protected file (from /proc, never a marked path)."""

    pid: int
    start_ns: int                       # CLOCK_BOOTTIME, clock-tick resolution
    exe: str
    ancestry: tuple[ProcId, ...]        # itself first, then its ancestors
    uid: int = -1                       # charged for its copies (quotas)

    def descends_from(self, pid: int, start_ns: int) -> bool:
        return any(p == pid and _same_start(s, start_ns) for p, s in self.ancestry)


@dataclass
class ShadowCounters:
    copies: int = 0              # blobs written (content read from the event fd)
    copied_bytes: int = 0
    refs: int = 0                # index rows (opener x content generation)
    dedup_hits: int = 0          # generation already copied: a row only, no read
    ref_hits: int = 0            # same process and generation again: nothing to do
    created_seen: int = 0        # an O_CREAT open of a new empty file (the tree made it)
    trusted_allows: int = 0
    not_regular: int = 0
    too_large: int = 0           # not recoverable
    no_space: int = 0            # not recoverable
    changed_during_copy: int = 0  # not recoverable (the watchdog let the opener go first)
    late_copies: int = 0         # finished after the watchdog allowed; file unchanged: kept
    copy_errors: int = 0         # not recoverable
    unanchored: int = 0          # path does not lead beneath a root to the inode: not restorable
    evictions: int = 0
    evicted_bytes: int = 0
    pruned_rows: int = 0
    quota_refused_bytes: int = 0  # not recoverable: the opener's uid/tree byte quota was spent
    quota_refused_rows: int = 0   # not recoverable: a row cap (uid, tree, total) was reached
    quota_evictions: int = 0      # copies evicted to make room within a uid/tree quota
    row_evictions: int = 0        # rows evicted for a row cap
    incidents: int = 0
    incident_links: int = 0
    commits: int = 0


@dataclass(frozen=True)
class CopyOutcome:
    kind: str          # "copied", "dedup", "seen", "created", "too_large", "no_space",
                       # "quota_bytes", "quota_rows", "changed"
    sha: str | None = None


class ShadowStore:
    """The shadow directory: content-addressed blobs + a SQLite index, bounded.

    Thread-safe (one lock around the connection and the space accounting).
    ``max_bytes`` 0 opens it for reading/rollback only (no new copies).
    """

    def __init__(self, shadow_dir: Path, *, max_bytes: int = 0, keep_pending_s: float = 120.0,
                 max_file_bytes: int | None = None, max_cache: int = 65536,
                 commit_interval_s: float = 0.05, create: bool = True,
                 quotas: Quotas | None = None) -> None:
        self.dir = Path(shadow_dir)
        self.max_bytes = max_bytes
        self.quotas = (quotas or Quotas()).resolved(max_bytes)
        self._bytes: collections.Counter[Scope] = collections.Counter()
        self._rows: collections.Counter[Scope] = collections.Counter()
        self._bites: dict[tuple[str, str, str], list[int]] = {}
        self._no_victims: dict[tuple[Scope, str], float] = {}
        self.keep_pending_ns = int(keep_pending_s * 1e9)
        self.max_file_bytes = (max_file_bytes if max_file_bytes is not None
                               else max(0, max_bytes // 4))
        self.c = ShadowCounters()
        self._lock = threading.RLock()
        self._max_cache = max_cache
        self._gen_blob: collections.OrderedDict[GenKey, str] = collections.OrderedDict()
        self._dead_shas: set[str] = set()
        self._seen: collections.OrderedDict[tuple[ProcId, GenKey], None] = collections.OrderedDict()
        self._open_incidents: dict[int, ProcId] = {}
        # an open incident's killed processes besides its root (fork-and-exit: the root
        # gone, its worker re-parented to init has no ancestry through it); not persisted
        self._incident_members: dict[int, frozenset[ProcId]] = {}
        self._tmp_seq = 0
        self._txn_since = 0.0
        self.commit_interval_s = commit_interval_s
        self._subdirs: set[str] = set()
        db = self.dir / INDEX_NAME
        if not create and not db.exists():
            raise StoreError(f"no shadow index at {db}", location=Location(str(db)))
        try:
            if create:
                (self.dir / "blobs").mkdir(parents=True, exist_ok=True)
                (self.dir / "tmp").mkdir(exist_ok=True)
                os.chmod(self.dir, 0o700)
            self._db = sqlite3.connect(str(db), timeout=10.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA temp_store=MEMORY")   # never a temp file elsewhere
            self._db.executescript(_SCHEMA)
            self._migrate()
            row = self._db.execute(
                "SELECT COALESCE(SUM(MAX(size, ?)), 0), COUNT(*) FROM blobs WHERE evicted = 0",
                (BLOB_MIN,)).fetchone()
            self.used_bytes = int(row[0])
            self.blob_count = int(row[1])
            for cuid, tree, cost in self._db.execute(
                    "SELECT cuid, tree, SUM(MAX(size, ?)) FROM blobs WHERE evicted = 0 "
                    "GROUP BY cuid, tree", (BLOB_MIN,)):
                self._bytes[("uid", str(cuid))] += int(cost)
                self._bytes[("tree", str(tree))] += int(cost)
            for cuid, tree, n in self._db.execute(
                    "SELECT cuid, tree, COUNT(*) FROM copies GROUP BY cuid, tree"):
                self._rows[("uid", str(cuid))] += int(n)
                self._rows[("tree", str(tree))] += int(n)
                self._rows[TOTAL] += int(n)
            for iid, pid, start in self._db.execute(
                    "SELECT id, root_pid, root_start_ns FROM incidents WHERE state = 'open'"):
                self._open_incidents[int(iid)] = (int(pid), int(start))
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"shadow store: {exc}", location=Location(str(db))) from exc

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            return
        have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(copies)")}
        for name, decl in _ANCHOR_COLUMNS + _CHARGE_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE copies ADD COLUMN {name} {decl}")
        have = {str(r[1]) for r in self._db.execute("PRAGMA table_info(blobs)")}
        for name, decl in _CHARGE_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE blobs ADD COLUMN {name} {decl}")
        self._db.executescript(
            "CREATE INDEX IF NOT EXISTS copies_cuid ON copies(cuid, t_ns);"
            "CREATE INDEX IF NOT EXISTS copies_tree ON copies(tree, t_ns);"
            "CREATE INDEX IF NOT EXISTS blobs_cuid ON blobs(cuid);"
            "CREATE INDEX IF NOT EXISTS blobs_tree ON blobs(tree);")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            try:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
                self._db.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> ShadowStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- copying (the listener thread) -------------------------------------------------

    def blob_path(self, sha: str) -> Path:
        return self.dir / "blobs" / sha[:2] / sha

    def put(self, fd: int, st: os.stat_result, path: str, opener: Opener, *,
            created: bool = False, anchor: Anchor | None = None,
            tree: str | None = None) -> CopyOutcome:
        """Keep a copy of the content behind ``fd`` (read with pread only) for ``opener``,
        charged to ``opener.uid`` and ``tree`` (default: the anchor's root)."""
        gen: GenKey = (kernel_dev(st.st_dev), st.st_ino, st.st_size, st.st_mtime_ns,
                       st.st_ctime_ns)
        me: ProcId = (opener.pid, opener.start_ns)
        charge = (("uid", str(opener.uid)),
                  ("tree", tree if tree is not None else anchor.root if anchor else ""))
        with self._lock:
            if (me, gen) in self._seen:
                self._seen.move_to_end((me, gen))
                self.c.ref_hits += 1
                return CopyOutcome("seen")
        if created:
            with self._lock:
                self._begin()
                if not self._room_for_row(charge):
                    self._maybe_commit()
                    return CopyOutcome("quota_rows")
                self._add_ref(gen, st, path, None, opener, "created", late=False, anchor=anchor,
                              charge=charge)
                self._maybe_commit()
                self.c.created_seen += 1
            return CopyOutcome("created")
        cost = _blob_cost(st.st_size)
        with self._lock:
            self._begin()
            # room for the row first: evicting rows may evict the very blob of this content
            if not self._room_for_row(charge):
                self._maybe_commit()
                return CopyOutcome("quota_rows")
            sha = self._gen_blob.get(gen)
            if sha is not None:
                self._gen_blob.move_to_end(gen)
                self._add_ref(gen, st, path, sha, opener, "copy", late=False, anchor=anchor,
                              charge=charge)
                self._maybe_commit()
                self.c.dedup_hits += 1
                return CopyOutcome("dedup", sha)
            if st.st_size > self.max_file_bytes:
                self._maybe_commit()
                self.c.too_large += 1
                return CopyOutcome("too_large")
            refused = self._make_room(cost, charge)
            self._maybe_commit()
            if refused is not None:
                if refused == TOTAL:
                    self.c.no_space += 1
                    return CopyOutcome("no_space")
                self.c.quota_refused_bytes += 1
                return CopyOutcome("quota_bytes")
            self.used_bytes += cost      # reserved while we copy
            for sc in charge:
                self._bytes[sc] += cost
            self._tmp_seq += 1
            tmp = self.dir / "tmp" / f"{os.getpid()}-{threading.get_ident()}-{self._tmp_seq}"
        data: bytes | None = None
        try:
            if st.st_size <= INLINE_MAX:
                data = _pread_all(fd, INLINE_MAX + 1)
                sha, n = hashlib.sha256(data).hexdigest(), len(data)
            else:
                sha, n = self._copy(fd, tmp)
            after = os.fstat(fd)
        except BaseException:
            with self._lock:
                self.used_bytes -= cost
                for sc in charge:
                    self._bytes[sc] -= cost
            unlink_quiet(tmp)
            raise
        with self._lock:
            self.used_bytes -= cost
            for sc in charge:
                self._bytes[sc] -= cost
            # an unlink/rename changes ctime and the link count, not the content
            if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or (
                    after.st_ctime_ns != st.st_ctime_ns and after.st_nlink == st.st_nlink):
                unlink_quiet(tmp)   # written while we read it: not a faithful copy
                self.c.changed_during_copy += 1
                return CopyOutcome("changed")
            if n != st.st_size:
                unlink_quiet(tmp)
                self.c.changed_during_copy += 1
                return CopyOutcome("changed")
            self._begin()
            self._commit_blob(tmp, sha, n, data, charge)
            self._add_ref(gen, st, path, sha, opener, "copy", late=False, anchor=anchor,
                          charge=charge)
            self._maybe_commit()
            self._gen_blob[gen] = sha
            if len(self._gen_blob) > self._max_cache:
                self._gen_blob.popitem(last=False)
            self.c.copies += 1
            self.c.copied_bytes += n
        return CopyOutcome("copied", sha)

    # ---- group commit: index rows reach the disk within commit_interval_s ---------------

    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
            self._txn_since = time.monotonic()

    def _maybe_commit(self) -> None:
        if self._db.in_transaction and time.monotonic() - self._txn_since >= self.commit_interval_s:
            self._db.execute("COMMIT")
            self.c.commits += 1

    def flush(self) -> None:
        """Commit what the listener wrote (the keeper calls it every commit_interval_s)."""
        with self._lock:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
                self.c.commits += 1

    def has_blob(self, sha: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT inline, evicted FROM blobs WHERE sha = ?",
                                   (sha,)).fetchone()
        if row is None or row[1]:
            return False
        return bool(row[0]) or self.blob_path(sha).exists()

    def read_blob(self, sha: str) -> Iterator[bytes]:
        """The kept content of ``sha`` in chunks (OSError/KeyError when gone)."""
        with self._lock:
            row = self._db.execute("SELECT data FROM blob_data WHERE sha = ?", (sha,)).fetchone()
        if row is not None:
            yield bytes(row[0])
            return
        fd = os.open(self.blob_path(sha), os.O_RDONLY | os.O_CLOEXEC)
        try:
            while buf := os.read(fd, CHUNK):
                yield buf
        finally:
            os.close(fd)

    def mark_late(self, sha: str | None) -> None:
        """The copy finished after the watchdog allowed the open (it was unchanged: kept)."""
        with self._lock:
            self.c.late_copies += 1
            if sha is not None:
                self._db.execute("UPDATE copies SET late = 1 WHERE id = "
                                 "(SELECT MAX(id) FROM copies WHERE sha = ?)", (sha,))

    def _copy(self, fd: int, tmp: Path) -> tuple[str, int]:
        h = hashlib.sha256()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        n = 0
        try:
            while True:
                buf = os.pread(fd, CHUNK, n)
                if not buf:
                    break
                h.update(buf)
                view = memoryview(buf)
                while view:
                    w = os.write(out, view)
                    view = view[w:]
                n += len(buf)
        finally:
            os.close(out)
        return h.hexdigest(), n

    def _commit_blob(self, tmp: Path, sha: str, size: int, data: bytes | None,
                     charge: tuple[Scope, Scope]) -> None:
        row = self._db.execute("SELECT evicted FROM blobs WHERE sha = ?", (sha,)).fetchone()
        if row is not None and not row[0]:
            unlink_quiet(tmp)          # same content already kept
            return
        if data is not None:
            self._db.execute("INSERT OR REPLACE INTO blob_data (sha, data) VALUES (?, ?)",
                             (sha, data))
        else:
            dst = self.blob_path(sha)
            if sha[:2] not in self._subdirs:
                dst.parent.mkdir(exist_ok=True)
                self._subdirs.add(sha[:2])
            os.replace(tmp, dst)
        self._db.execute("INSERT OR REPLACE INTO blobs (sha, size, t_ns, evicted, inline, cuid, "
                         "tree) VALUES (?,?,?,0,?,?,?)", (sha, size, time.time_ns(),
                                                         int(data is not None),
                                                         int(charge[0][1]), charge[1][1]))
        self.used_bytes += _blob_cost(size)
        for sc in charge:
            self._bytes[sc] += _blob_cost(size)
        self.blob_count += 1

    def _add_ref(self, gen: GenKey, st: os.stat_result, path: str, sha: str | None,
                 opener: Opener, kind: str, *, late: bool, anchor: Anchor | None,
                 charge: tuple[Scope, Scope]) -> None:
        now = time.time_ns()
        anc = anchor or Anchor("", 0, 0, 0, 0)
        cur = self._db.execute(
            "INSERT INTO copies (t_ns, kind, path, dev, ino, size, mode, uid, gid, mtime_ns, "
            "ctime_ns, sha, pid, start_ns, exe, ancestry, late, root, root_dev, root_ino, "
            "parent_dev, parent_ino, cuid, tree) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (now, kind, path, gen[0], gen[1], st.st_size, st.st_mode, st.st_uid, st.st_gid,
             st.st_mtime_ns, st.st_ctime_ns, sha, opener.pid, opener.start_ns, opener.exe,
             json.dumps([list(a) for a in opener.ancestry]), int(late), anc.root, anc.root_dev,
             anc.root_ino, anc.parent_dev, anc.parent_ino, int(charge[0][1]), charge[1][1]))
        for sc in (*charge, TOTAL):
            self._rows[sc] += 1
        cid = cur.lastrowid
        for iid, (rpid, rstart) in self._open_incidents.items():
            if opener.descends_from(rpid, rstart) or any(
                    opener.descends_from(p, s) for p, s in self._incident_members.get(iid, ())):
                self._db.execute("INSERT OR IGNORE INTO incident_copies VALUES (?, ?)", (iid, cid))
                self.c.incident_links += 1
        self._seen[((opener.pid, opener.start_ns), gen)] = None
        if len(self._seen) > self._max_cache:
            self._seen.popitem(last=False)
        self.c.refs += 1

    # ---- space and quotas ------------------------------------------------------------------

    def _byte_cap(self, sc: Scope) -> int:
        if sc == TOTAL:
            return self.max_bytes
        return self.quotas.uid_max_bytes if sc[0] == "uid" else self.quotas.tree_max_bytes

    def _row_cap(self, sc: Scope) -> int:
        if sc == TOTAL:
            return self.quotas.max_rows
        return self.quotas.uid_max_rows if sc[0] == "uid" else self.quotas.tree_max_rows

    def _bite(self, sc: Scope, resource: str, *, refused: int = 0, evicted: int = 0) -> None:
        b = self._bites.setdefault((sc[0], sc[1], resource), [0, 0])
        b[0] += refused
        b[1] += evicted

    def _searchable(self, sc: Scope, resource: str) -> bool:
        """False while a scope that had nothing evictable is backing off."""
        return self._no_victims.get((sc, resource), 0.0) <= time.monotonic()

    def _make_room(self, need: int, charge: tuple[Scope, Scope]) -> Scope | None:
        """Evict (policy in the module doc) until ``need`` more bytes fit the total budget
        and the quotas of ``charge``; the scope that could not make room, else None."""
        try:
            return self._make_room_in(need, charge)
        finally:
            self._purge_gens()

    def _make_room_in(self, need: int, charge: tuple[Scope, Scope]) -> Scope | None:
        if self.max_bytes <= 0:
            return TOTAL
        for sc in (charge[0], charge[1], TOTAL):
            cap = self._byte_cap(sc)
            used = self.used_bytes if sc == TOTAL else self._bytes[sc]
            if used + need <= cap:
                continue
            evicted = 0
            if need <= cap and self._searchable(sc, "bytes"):
                evicted = self._evict_bytes(sc, min(cap - need, int(cap * _LOW_WATER)),
                                            cap - need)
                if not evicted:
                    self._no_victims[(sc, "bytes")] = time.monotonic() + _NO_VICTIMS_BACKOFF_S
            used = self.used_bytes if sc == TOTAL else self._bytes[sc]
            if sc != TOTAL:
                self.c.quota_evictions += evicted
            if used + need > cap:
                self._bite(sc, "bytes", refused=1, evicted=evicted)
                return sc
            if sc != TOTAL:
                self._bite(sc, "bytes", evicted=evicted)
        return None

    def _evict_bytes(self, sc: Scope, target: int, enough: int) -> int:
        """Evict blobs charged to ``sc`` (any, for the total) until its use is at most
        ``target`` -- or at most ``enough`` once _ROW_BATCH blobs went in this pass (the
        opener waits for it: the next pass goes on); returns how many."""
        cutoff = time.time_ns() - self.keep_pending_ns

        def used() -> int:
            return self.used_bytes if sc == TOTAL else self._bytes[sc]
        where, args = self._scope_sql("b", sc)
        n = 0
        while used() > target and not (n >= _ROW_BATCH and used() <= enough):
            limit = min(_ROW_BATCH, (used() - target) // BLOB_MIN + 1)
            victims = self._db.execute(
                f"""SELECT b.sha, b.size,
                          MAX(c.t_ns) AS newest,
                          MAX(CASE WHEN ic.copy IS NULL THEN 1
                                   WHEN i.state = 'open' THEN 9 ELSE 0 END) AS cls
                   FROM blobs b JOIN copies c ON c.sha = b.sha
                   LEFT JOIN incident_copies ic ON ic.copy = c.id
                   LEFT JOIN incidents i ON i.id = ic.incident
                   WHERE b.evicted = 0 {where}
                   GROUP BY b.sha
                   HAVING cls = 0 OR (cls = 1 AND newest < ?)
                   ORDER BY cls, newest LIMIT ?""", (*args, cutoff, limit)).fetchall()
            if not victims:
                break
            for sha, size, _newest, _cls in victims:
                self._evict(str(sha), int(size))
                n += 1
                if used() <= target or (n >= _ROW_BATCH and used() <= enough):
                    break
        return n

    @staticmethod
    def _scope_sql(alias: str, sc: Scope) -> tuple[str, tuple[Any, ...]]:
        if sc == TOTAL:
            return "", ()
        if sc[0] == "uid":
            return f"AND {alias}.cuid = ?", (int(sc[1]),)
        return f"AND {alias}.tree = ?", (sc[1],)

    def _room_for_row(self, charge: tuple[Scope, Scope]) -> bool:
        """Evict rows until one more fits the row caps of ``charge`` and the index;
        False (counted, a bite) when it does not."""
        try:
            return self._room_for_row_in(charge)
        finally:
            self._purge_gens()

    def _room_for_row_in(self, charge: tuple[Scope, Scope]) -> bool:
        for sc in (charge[0], charge[1], TOTAL):
            cap = self._row_cap(sc)
            if self._rows[sc] + 1 <= cap:
                continue
            evicted = 0
            if self._searchable(sc, "rows"):
                # down to 90 %, at most _ROW_BATCH rows a pass: the opener waits for it
                evicted = self._evict_rows(sc, max(int(cap * _LOW_WATER), cap - _ROW_BATCH))
                if not evicted:
                    self._no_victims[(sc, "rows")] = time.monotonic() + _NO_VICTIMS_BACKOFF_S
            if self._rows[sc] + 1 > cap:
                self._bite(sc, "rows", refused=1, evicted=evicted)
                self.c.quota_refused_rows += 1
                return False
            self._bite(sc, "rows", evicted=evicted)
        return True

    def _evict_rows(self, sc: Scope, target: int) -> int:
        """Drop rows charged to ``sc`` (any, for the index) down to ``target``: rows only
        decided incidents name first, then pending rows older than keep_pending_s,
        oldest first; never a row of an open incident.  Blobs no row names any more go
        too.  Returns the rows dropped.  Both searches walk an index and stop at what
        is needed (the pending one in (cuid|tree, t_ns) order)."""
        cutoff = time.time_ns() - self.keep_pending_ns
        where, args = self._scope_sql("c", sc)
        want = self._rows[sc] - target
        decided = self._db.execute(
            # CROSS JOIN keeps this order: from the (few) incident rows, not all of sc's
            f"""SELECT c.id, c.sha FROM incident_copies ic
                CROSS JOIN incidents i CROSS JOIN copies c
                WHERE i.id = ic.incident AND c.id = ic.copy {where}
                GROUP BY c.id HAVING MAX(i.state = 'open') = 0
                ORDER BY c.t_ns LIMIT ?""", (*args, want)).fetchall()
        victims = list(decided)
        if len(victims) < want:
            victims += self._db.execute(
                f"""SELECT c.id, c.sha FROM copies c
                    WHERE c.t_ns < ? {where}
                      AND NOT EXISTS (SELECT 1 FROM incident_copies ic WHERE ic.copy = c.id)
                    ORDER BY c.t_ns LIMIT ?""", (cutoff, *args, want - len(victims))).fetchall()
        if not victims:
            return 0
        ids = [int(v[0]) for v in victims]
        if decided:
            self._db.executemany("DELETE FROM incident_copies WHERE copy = ?",
                                 [(int(v[0]),) for v in decided])
        n = self._delete_rows(ids)
        self.c.row_evictions += n
        self._evict_orphans({str(v[1]) for v in victims if v[1] is not None})
        return n

    def _delete_rows(self, ids: list[int]) -> int:
        """Delete the rows ``ids`` and uncharge them; returns how many."""
        n = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for cuid, tree, k in self._db.execute(
                    f"SELECT cuid, tree, COUNT(*) FROM copies WHERE id IN ({marks}) "
                    "GROUP BY cuid, tree", chunk).fetchall():
                self._rows[("uid", str(cuid))] -= int(k)
                self._rows[("tree", str(tree))] -= int(k)
                self._rows[TOTAL] -= int(k)
                n += int(k)
            self._db.execute(f"DELETE FROM copies WHERE id IN ({marks})", chunk)
        return n

    def _evict_orphans(self, shas: set[str] | None = None) -> None:
        """Evict live blobs no row names any more (among ``shas``, or all)."""
        if shas is None:
            rows = self._db.execute(
                "SELECT sha, size FROM blobs WHERE evicted = 0 AND sha NOT IN "
                "(SELECT sha FROM copies WHERE sha IS NOT NULL)").fetchall()
        else:
            rows = []
            for sha in shas:
                r = self._db.execute(
                    "SELECT size FROM blobs WHERE sha = ? AND evicted = 0 AND NOT EXISTS "
                    "(SELECT 1 FROM copies WHERE sha = ?)", (sha, sha)).fetchone()
                if r is not None:
                    rows.append((sha, r[0]))
        for sha, size in rows:
            self._evict(str(sha), int(size))

    def _purge_gens(self) -> None:
        """Drop evicted blobs from the generation cache (one pass per eviction pass)."""
        if self._dead_shas:
            dead = self._dead_shas
            for g in [g for g, s in self._gen_blob.items() if s in dead]:
                del self._gen_blob[g]
            dead.clear()

    def _evict(self, sha: str, size: int) -> None:
        unlink_quiet(self.blob_path(sha))
        charged = self._db.execute("SELECT cuid, tree FROM blobs WHERE sha = ?",
                                   (sha,)).fetchone()
        self._db.execute("DELETE FROM blob_data WHERE sha = ?", (sha,))
        self._db.execute("UPDATE blobs SET evicted = 1 WHERE sha = ?", (sha,))
        # rows no incident names go with the blob; the others stay to report "evicted"
        ids = [int(r[0]) for r in self._db.execute(
            "SELECT id FROM copies WHERE sha = ? AND id NOT IN (SELECT copy FROM incident_copies)",
            (sha,))]
        self.c.pruned_rows += self._delete_rows(ids)
        self._dead_shas.add(sha)       # out of the generation cache at the end of the pass
        self.used_bytes -= _blob_cost(size)
        if charged is not None:
            self._bytes[("uid", str(charged[0]))] -= _blob_cost(size)
            self._bytes[("tree", str(charged[1]))] -= _blob_cost(size)
        self.blob_count -= 1
        self.c.evictions += 1
        self.c.evicted_bytes += size

    def maintain(self, max_age_s: float = 86400.0) -> int:
        """Drop pending rows (no incident) older than ``max_age_s`` and blobs nothing
        references any more; returns the rows dropped.  The agent calls it each minute."""
        cutoff = time.time_ns() - int(max_age_s * 1e9)
        with self._lock:
            self.flush()
            ids = [int(r[0]) for r in self._db.execute(
                "SELECT id FROM copies WHERE t_ns < ? AND id NOT IN "
                "(SELECT copy FROM incident_copies)", (cutoff,))]
            n = self._delete_rows(ids)
            self._evict_orphans()
            self._purge_gens()
            self.c.pruned_rows += n
            self._seen.clear()
            self._no_victims.clear()
            for sc in [k for k, v in self._rows.items() if v <= 0 and k != TOTAL]:
                if self._bytes[sc] <= 0:
                    del self._rows[sc]
                    self._bytes.pop(sc, None)
        return n

    def take_quota_bites(self) -> list[QuotaBite]:
        """The caps reached since the last call (and reset): one entry per uid/tree/total
        and resource, with the copies/rows refused and evicted because of it."""
        with self._lock:
            out = [QuotaBite(k, key, res, v[0], v[1])
                   for (k, key, res), v in sorted(self._bites.items())]
            self._bites.clear()
        return out

    def usage(self, kind: str, key: str) -> Usage:
        """What the uid (``kind`` "uid") or tree ("tree") is charged for now."""
        with self._lock:
            return Usage(self._bytes[(kind, key)], self._rows[(kind, key)])

    def top_usage(self, n: int = 5) -> dict[str, dict[str, dict[str, int]]]:
        """The ``n`` uids and trees charged the most bytes (status)."""
        with self._lock:
            out: dict[str, dict[str, dict[str, int]]] = {"uid": {}, "tree": {}}
            for kind in ("uid", "tree"):
                keys = {sc for sc in (*self._bytes, *self._rows) if sc[0] == kind}
                for sc in sorted(keys, key=lambda k: (-self._bytes[k], -self._rows[k]))[:n]:
                    out[kind][sc[1]] = {"bytes": self._bytes[sc], "rows": self._rows[sc]}
        return out

    # ---- incidents -------------------------------------------------------------------------

    def open_incident(self, root_pid: int, started_ns: int,
                      members: Sequence[ProcId] = ()) -> int:
        """Group every copy made for ``root_pid`` (started at ``started_ns``, CLOCK_BOOTTIME)
        and its descendants -- and for each of ``members`` (the processes the kill
        gathered, with their start) and theirs: a copy records its ancestry from /proc, so
        a worker whose parent (the root) had exited names init, not the root (s19 review
        4: fork-and-exit left the incident empty); later copies for them join while the
        incident is open.

        Candidates are the copies whose opener started no earlier than the root (a
        descendant starts after its ancestor), both start times on CLOCK_BOOTTIME: never a
        copy's wall-clock time against a wall offset read now -- a wall-clock step forward
        between the copies and the detection (NTP at boot, where a boot-time service runs)
        would otherwise leave the tree's copies out of its incident, evictable."""
        floor = started_ns - TICK_NS if started_ns else 0
        keys = {(root_pid, started_ns), *members}
        with self._lock:
            self.flush()
            cur = self._db.execute(
                "INSERT INTO incidents (root_pid, root_start_ns, opened_ns, state) "
                "VALUES (?,?,?,'open')", (root_pid, started_ns, time.time_ns()))
            iid = int(cur.lastrowid or 0)
            # start_ns 0: the opener's start was unknown (_same_start matches it)
            rows = self._db.execute(
                "SELECT id, ancestry FROM copies WHERE start_ns >= ? OR start_ns = 0",
                (floor,)).fetchall()
            links = []
            for cid, anc in rows:
                if any(p == kp and _same_start(s, ks) for p, s in json.loads(anc)
                       for kp, ks in keys):
                    links.append((iid, int(cid)))
            self._db.executemany("INSERT OR IGNORE INTO incident_copies VALUES (?, ?)", links)
            self._open_incidents[iid] = (root_pid, started_ns)
            if members:
                self._incident_members[iid] = frozenset(members)
            self.c.incidents += 1
            self.c.incident_links += len(links)
        return iid

    def record_states(self, incident: int, state_of: Callable[[Anchor, str], FileState | None]
                      ) -> int:
        """Record what each anchored path of ``incident`` is now (the tree is dead:
        this is what it left), so rollback can tell a file the tree changed from one
        it only read, and the tree's bytes from a later legitimate edit.  Returns how
        many paths were recorded."""
        with self._lock:
            self.flush()
            rows = self._db.execute(
                "SELECT DISTINCT c.path, c.root, c.root_dev, c.root_ino, c.parent_dev, "
                "c.parent_ino FROM incident_copies ic JOIN copies c ON c.id = ic.copy "
                "WHERE ic.incident = ? AND c.root != ''", (incident,)).fetchall()
        out = []
        for path, *anc in rows:
            fs = state_of(Anchor(str(anc[0]), *map(int, anc[1:])), str(path))
            if fs is not None:
                out.append((incident, str(path), 2 if fs.parent_gone else int(fs.present),
                            fs.ino, fs.size, fs.mtime_ns, fs.ctime_ns))
        with self._lock:
            self._db.executemany("INSERT OR IGNORE INTO incident_states VALUES (?,?,?,?,?,?,?)",
                                 out)
        return len(out)

    def incident_states(self, incident: int) -> dict[str, FileState]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, present, ino, size, mtime_ns, ctime_ns FROM incident_states "
                "WHERE incident = ?", (incident,)).fetchall()
        return {str(r[0]): FileState(int(r[1]) == 1, int(r[2]), int(r[3]), int(r[4]), int(r[5]),
                                     parent_gone=int(r[1]) == 2) for r in rows}

    def incident(self, incident: int) -> dict[str, Any]:
        for r in self.incidents():
            if r["id"] == incident:
                return r
        raise StoreError(f"no incident {incident} in the shadow index",
                         location=Location(str(self.dir / INDEX_NAME)))

    def close_incident(self, incident: int, state: str = "closed") -> None:
        with self._lock:
            self.flush()
            self._db.execute("UPDATE incidents SET state = ?, closed_ns = ? WHERE id = ?",
                             (state, time.time_ns(), incident))
            self._open_incidents.pop(incident, None)
            self._incident_members.pop(incident, None)
            self._no_victims.clear()        # its copies may be evicted now

    def incidents(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT i.id, i.root_pid, i.root_start_ns, i.opened_ns, i.state, "
                "(SELECT COUNT(*) FROM incident_copies ic WHERE ic.incident = i.id) "
                "FROM incidents i ORDER BY i.id").fetchall()
        return [{"id": r[0], "root_pid": r[1], "root_start_ns": r[2], "opened_ns": r[3],
                 "state": r[4], "copies": r[5]} for r in rows]

    def incident_rows(self, incident: int) -> list[dict[str, Any]]:
        with self._lock:
            if self._db.execute("SELECT 1 FROM incidents WHERE id = ?",
                                (incident,)).fetchone() is None:
                raise StoreError(f"no incident {incident} in the shadow index",
                                 location=Location(str(self.dir / INDEX_NAME)))
            cur = self._db.execute(
                "SELECT c.id, c.t_ns, c.kind, c.path, c.dev, c.ino, c.size, c.mode, c.uid, c.gid, "
                "c.mtime_ns, c.ctime_ns, c.sha, c.pid, c.exe, COALESCE(b.evicted, 0) AS evicted, "
                "c.root, c.root_dev, c.root_ino, c.parent_dev, c.parent_ino "
                "FROM incident_copies ic JOIN copies c ON c.id = ic.copy "
                "LEFT JOIN blobs b ON b.sha = c.sha WHERE ic.incident = ? ORDER BY c.t_ns, c.id",
                (incident,))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def stats(self) -> dict[str, int]:
        c = self.c
        with self._lock:
            out = {k: getattr(c, k) for k in c.__dataclass_fields__}
            out["used_bytes"] = self.used_bytes
            out["max_bytes"] = self.max_bytes
            out["blobs"] = self.blob_count
            out["rows"] = self._rows[TOTAL]
            out["max_rows"] = self.quotas.max_rows
            out["uid_max_bytes"] = self.quotas.uid_max_bytes
            out["tree_max_bytes"] = self.quotas.tree_max_bytes
            out["uid_max_rows"] = self.quotas.uid_max_rows
            out["tree_max_rows"] = self.quotas.tree_max_rows
            out["open_incidents"] = len(self._open_incidents)
        return out


def _pread_all(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    n = 0
    while n < limit:
        buf = os.pread(fd, limit - n, n)
        if not buf:
            break
        parts.append(buf)
        n += len(buf)
    return b"".join(parts)


def unlink_quiet(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


__all__ = ["BLOB_MIN", "CHUNK", "CopyOutcome", "GenKey", "INDEX_NAME", "INLINE_MAX", "Opener", "ProcId",
           "QuotaBite", "Quotas", "Scope", "ShadowCounters", "ShadowStore", "TOTAL", "Usage",
           "unlink_quiet"]
