"""The tamper-evident alert log: each alert is chained to the previous one, and
the chain's length and head are anchored outside the store.

**Row MAC, scheme 2** (column ``mac_v = 2``, every row written since schema 3)::

    mac = HMAC-SHA256(key, "bastion-alert-chain-v2\\0" || enc(2, prev_seq, prev_mac, seq,
                      alert_id, ts, severity, rule, pid, exe, data))

``enc`` is length-prefixed and typed (:func:`encode`: a type tag, an 8-byte
length, the bytes), so no two different rows encode alike, and it covers
*every* column of the row (``mac`` itself aside; ``mac_v`` is the leading 2):
the columns queries filter on (``ts``, ``severity``, ``rule``, ``pid``, ``exe``)
can no longer be edited to hide an alert from ``bastion alerts --severity``.
The MAC is computed from the row *as read back* from SQLite inside the writing
transaction, so a value's stored type is what is covered.

**Scheme 1** (``mac_v = 1``: rows written before schema 3) covered only
``prev_seq | prev_mac | seq | alert_id | data``.  Such rows are verified under
scheme 1 and, since their filter columns are derived from ``data``, those
columns are checked against the MAC'd data; the report counts them.  A row
claiming scheme 1 after a scheme-2 row is a downgrade and reported.

**Anchor.** Deleting the newest rows, or restoring an older copy of the
database, leaves a valid chain.  So the writer records ``(count, head seq,
head mac)`` — the :class:`Anchor` — after every alert: in its own memory
(``bastion log verify`` through the agent's socket compares against it), in
``alert-chain.anchor`` beside the database (MAC'd, rewritten in place so its
inode keeps tamper protection's marks), and in every alert it publishes to
the outputs (``chain``), the copy a root attacker on this host cannot
rewrite.  Which copy a root attacker can rewrite on each tier is in
``docs/threat-model.md``.

**Retention** (``store.max_alerts``) deletes the oldest rows and signs a
:class:`RetentionAnchor` (the ``alert_anchor`` row: the first kept seq, its deleted
predecessor's seq and MAC, how many retention deleted in all) with
:func:`retention_mac`, keyed and :func:`encode`-d like scheme 2.  It excuses only the
missing predecessor of the first row it names, and only if its MAC verifies; the
count anchors then count ``deleted`` plus the rows present (:func:`check_anchor`).

The key (32 random bytes) lives beside the database, mode 0600.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bastion.errors import Location, StoreError

KEY_NAME = "alert-chain.key"
ANCHOR_NAME = "alert-chain.anchor"
SCHEME = 2                    # the MAC scheme new rows are written under
ANCHOR_BYTES = 512            # the anchor file is one fixed-size record, rewritten in place
_V2 = b"bastion-alert-chain-v2\0"
_ANCHOR = b"bastion-alert-chain-anchor\0"
_RETENTION = b"bastion-alert-retention\0"
#: the columns a row is read with, in :class:`ChainRow` order
COLUMNS = "seq, alert_id, data, prev_seq, mac, mac_v, ts, severity, rule, pid, exe"
#: the filter columns (``ChainRow.cols``), in order
FILTER_COLUMNS = ("ts", "severity", "rule", "pid", "exe")


def load_key(data_dir: Path, *, create: bool) -> bytes:
    path = data_dir / KEY_NAME
    try:
        if create and not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, os.urandom(32))
            finally:
                os.close(fd)
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"alert chain key: {exc.strerror or exc}", location=Location(str(path))) from exc
    if len(key) != 32:
        raise StoreError("alert chain key is not 32 bytes (damaged?)", location=Location(str(path)))
    return key


def encode(*values: object) -> bytes:
    """Typed, length-prefixed: ``tag (1 byte) | len (8 bytes, big-endian) | bytes`` per value;
    tags ``i`` int (decimal), ``f`` float (IEEE 754 big-endian), ``s`` str (UTF-8),
    ``b`` bytes, ``n`` NULL."""
    out = bytearray()
    for v in values:
        if v is None:
            tag, b = b"n", b""
        elif isinstance(v, bool):
            raise TypeError("encode: bool is not a column type")
        elif isinstance(v, int):
            tag, b = b"i", str(v).encode()
        elif isinstance(v, float):
            tag, b = b"f", struct.pack(">d", v)
        elif isinstance(v, str):
            tag, b = b"s", v.encode("utf-8", "surrogatepass")
        elif isinstance(v, bytes):
            tag, b = b"b", v
        else:
            raise TypeError(f"encode: unsupported value type {type(v).__name__}")
        out += tag + struct.pack(">Q", len(b)) + b
    return bytes(out)


def mac_v1(key: bytes, prev_seq: int, prev_mac: str, seq: int, alert_id: str, data: str) -> str:
    """Scheme 1 (rows written before schema 3): the chain fields and ``data`` only."""
    msg = f"{prev_seq}|{prev_mac}|{seq}|{alert_id}|".encode() + data.encode("utf-8", "surrogatepass")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainRow:
    """One alert row as stored (``cols``: the filter columns as SQLite returned them)."""

    seq: int
    alert_id: str
    data: str
    prev_seq: int
    mac: str
    mac_v: int
    cols: tuple[object, ...] = ()

    @classmethod
    def from_sql(cls, r: Sequence[object]) -> ChainRow:
        """A row read with :data:`COLUMNS`; a chain field of the wrong type (hand-edited)
        becomes a value that can never verify (-1, or its repr)."""
        def as_int(v: object) -> int:
            return v if isinstance(v, int) and not isinstance(v, bool) else -1

        def as_str(v: object) -> str:
            return v if isinstance(v, str) else repr(v)
        return cls(as_int(r[0]), as_str(r[1]), as_str(r[2]), as_int(r[3]), as_str(r[4]),
                   as_int(r[5]), tuple(r[6:11]))


def row_mac(key: bytes, row: ChainRow, prev_mac: str, seq: int | None = None) -> str:
    """The MAC ``row`` should carry under its own scheme (at ``seq``, default its own);
    an unknown scheme yields "" (never equal to a stored MAC)."""
    s = row.seq if seq is None else seq
    if row.mac_v == 1:
        return mac_v1(key, row.prev_seq, prev_mac, s, row.alert_id, row.data)
    if row.mac_v == 2:
        msg = _V2 + encode(2, row.prev_seq, prev_mac, s, row.alert_id, *row.cols, row.data)
        return hmac.new(key, msg, hashlib.sha256).hexdigest()
    return ""


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    kind: str       # edited, deleted, inserted, reordered, truncated, rolled-back, unanchored
    detail: str

    def __str__(self) -> str:
        where = f"alert seq {self.seq}" if self.seq else "alert store"
        return f"{where}: {self.kind}: {self.detail}"


# ---- the anchor -----------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """How many alerts the chain had and its newest record, as the writer last saw it."""

    count: int
    seq: int        # the head's seq (0: empty)
    mac: str        # the head's MAC ("" : empty)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "seq": self.seq, "mac": self.mac}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, where: str) -> Anchor:
        """From ``{"count", "seq", "mac"}`` or an alert record carrying it as ``chain``."""
        inner = d.get("chain", d)
        try:
            count, seq, mac = inner["count"], inner["seq"], inner["mac"]
        except (KeyError, TypeError) as exc:
            raise StoreError("an anchor needs count, seq and mac (or an alert's \"chain\" object)",
                             location=Location(where)) from exc
        if not (isinstance(count, int) and isinstance(seq, int) and isinstance(mac, str)) \
                or count < 0 or seq < 0:
            raise StoreError("anchor count and seq must be non-negative integers, mac a string",
                             location=Location(where))
        return cls(count, seq, mac)


def anchor_mac(key: bytes, a: Anchor) -> str:
    return hmac.new(key, _ANCHOR + encode(a.count, a.seq, a.mac), hashlib.sha256).hexdigest()


def write_anchor(path: Path, key: bytes, a: Anchor) -> None:
    """Rewrite the anchor file in place (one fixed-size write at offset 0; the inode, and
    with it any tamper-protection mark, is kept).  A torn write fails its MAC: reported."""
    doc = json.dumps({**a.to_json(), "hmac": anchor_mac(key, a)}, separators=(",", ":")).encode()
    if len(doc) >= ANCHOR_BYTES:
        raise StoreError("alert chain anchor too long", location=Location(str(path)))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, doc.ljust(ANCHOR_BYTES - 1) + b"\n", 0)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StoreError(f"cannot write the alert chain anchor: {exc.strerror or exc}",
                         location=Location(str(path))) from exc


def read_anchor(path: Path, key: bytes, *, tries: int = 3) -> Anchor | None:
    """The anchor file's anchor; None if there is none; StoreError naming the file if it
    is damaged or its MAC does not verify (forged or torn).  A read that races the
    writer's in-place rewrite can see a torn record: read again before saying so."""
    tries = max(1, tries)
    for attempt in range(tries):
        try:
            return _read_anchor(path, key)
        except StoreError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _read_anchor(path: Path, key: bytes) -> Anchor | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the alert chain anchor: {exc.strerror or exc}",
                         location=Location(str(path))) from exc
    try:
        doc = json.loads(raw)
        a = Anchor.from_json(doc, where=str(path))
        ok = hmac.compare_digest(str(doc.get("hmac", "")), anchor_mac(key, a))
    except (ValueError, AttributeError) as exc:
        raise StoreError(f"the alert chain anchor is damaged ({exc})", location=Location(str(path))) from exc
    if not ok:
        raise StoreError("the alert chain anchor's MAC does not verify (forged or damaged)",
                         location=Location(str(path)))
    return a


def check_anchor(a: Anchor, rows: Sequence[ChainRow], source: str,
                 retained: RetentionAnchor | None = None) -> tuple[list[ChainProblem], list[str]]:
    """(problems, notes) of ``rows`` against anchor ``a`` from ``source``: the anchor's head
    must still be there, unchanged, and the rows present plus those retention deleted
    must make at least its count.  ``retained``: the retention anchor, already checked
    with :func:`retention_valid` (None if there is none or it does not verify: then
    nothing is excused)."""
    problems: list[ChainProblem] = []
    notes: list[str] = []
    by_seq = {r.seq: r for r in rows}
    gone = retained.deleted if retained is not None else 0
    n = len(rows) + gone
    have = f"store has {len(rows)} rows" + (f" and {gone} deleted by retention" if gone else "")
    head = by_seq.get(a.seq)
    if retained is not None and a.seq and a.seq < retained.first_seq:
        # retention deleted the anchor's head: only its MAC, if it was the last one deleted,
        # and the count can be checked
        if a.seq == retained.prev_seq and not hmac.compare_digest(retained.prev_mac, a.mac):
            problems.append(ChainProblem(a.seq, "rolled-back", f"the record at seq {a.seq} is not "
                                         f"the one the {source} anchor names (an older or "
                                         "rewritten copy of the store)"))
        elif n < a.count:
            problems.append(ChainProblem(0, "deleted", f"{have}, anchor says {a.count} "
                                         f"({source} anchor; its head, seq {a.seq}, was "
                                         "deleted by retention)"))
        else:
            notes.append(f"the {source} anchor's head, seq {a.seq}, was deleted by retention")
    elif a.seq and head is None:
        problems.append(ChainProblem(a.seq, "truncated", f"{have}, anchor says {a.count} "
                                     f"(the {source} anchor's head, seq {a.seq}, is gone)"))
    elif a.seq and not hmac.compare_digest(head.mac if head else "", a.mac):
        problems.append(ChainProblem(a.seq, "rolled-back", f"the record at seq {a.seq} is not the one "
                                     f"the {source} anchor names (an older or rewritten copy of the store)"))
    elif n < a.count:   # the head is intact: records before it were removed
        problems.append(ChainProblem(0, "deleted", f"{have}, anchor says {a.count} "
                                     f"({source} anchor; its head, seq {a.seq}, is intact)"))
    if n > a.count and not problems:
        notes.append(f"{n - a.count} alerts were written after the {source} anchor (seq {a.seq})")
    return problems, notes


# ---- retention ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionAnchor:
    """Alert retention deleted the records before ``first_seq``: its predecessor's seq
    and MAC, and how many alerts retention has deleted in all, signed (the
    ``alert_anchor`` row), so the shortened chain still verifies from its first record
    and the count anchors still add up."""

    first_seq: int
    prev_seq: int
    prev_mac: str
    deleted: int
    mac: str


def retention_mac(key: bytes, first_seq: int, prev_seq: int, prev_mac: str, deleted: int) -> str:
    """The retention anchor's MAC: keyed and length-prefixed like row scheme 2 (:func:`encode`)."""
    msg = _RETENTION + encode(first_seq, prev_seq, prev_mac, deleted)
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def retention_valid(key: bytes, r: RetentionAnchor | None, rows: Sequence[ChainRow]) -> bool:
    """``r`` excuses the records before ``rows[0]``: it names that first row and its
    predecessor, and its MAC verifies."""
    return bool(rows) and r is not None and r.first_seq == rows[0].seq \
        and r.prev_seq == rows[0].prev_seq and hmac.compare_digest(
            r.mac, retention_mac(key, r.first_seq, r.prev_seq, r.prev_mac, r.deleted))


# ---- verification ---------------------------------------------------------------------


@dataclass
class ChainReport:
    """What ``bastion log verify`` says: problems (empty: intact), and how it knows."""

    alerts: int
    problems: list[ChainProblem] = field(default_factory=list)
    old_scheme: int = 0                                   # rows under MAC scheme 1
    anchors: list[str] = field(default_factory=list)      # sources checked against
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"alerts": self.alerts, "intact": not self.problems,
                "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in self.problems],
                "old_scheme": self.old_scheme, "anchors": self.anchors, "notes": self.notes}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ChainReport:
        return cls(int(d["alerts"]), [ChainProblem(int(p["seq"]), str(p["kind"]), str(p["detail"]))
                                      for p in d.get("problems", [])],
                   int(d.get("old_scheme", 0)), [str(x) for x in d.get("anchors", [])],
                   [str(x) for x in d.get("notes", [])])


Derive = Callable[[str], tuple[object, ...]]


def verify(key: bytes, rows: list[ChainRow], derive: Derive | None = None,
           retained: RetentionAnchor | None = None) -> list[ChainProblem]:
    """Problems in a chain given its rows in ascending seq order (empty: intact).

    ``derive(data)`` gives the filter columns a scheme-1 row's ``data`` implies; with
    it, a scheme-1 row whose columns differ is reported as edited.

    ``retained``: retention deleted the records before the first row; accepted only for
    the first row and only when its MAC verifies (:func:`retention_valid`: a forged or
    misplaced anchor, or a record deleted after the retention point, is reported)."""
    problems: list[ChainProblem] = []
    by_seq = {r.seq: r for r in rows}
    skip_first = retention_valid(key, retained, rows)
    if skip_first and retained is not None:
        # the retained-out predecessor stands in, by its signed seq and MAC (of either scheme)
        stand_in = ChainRow(retained.prev_seq, "", "", 0, retained.prev_mac, 0)
        by_seq[stand_in.seq] = stand_in
        rows = [stand_in, *rows]
    successors: dict[int, int] = {}
    for r in rows:
        successors[r.prev_seq] = successors.get(r.prev_seq, 0) + 1
    last = rows[-1].seq if rows else 0
    prev_seq = 0
    seen_v2 = False
    for i, row in enumerate(rows):
        seq, rprev = row.seq, row.prev_seq
        if skip_first and i == 0:
            prev_seq = seq
            continue
        if rprev != prev_seq:
            if rprev and rprev not in by_seq:
                problems.append(ChainProblem(seq, "deleted",
                                             f"the record before it (seq {rprev}) is missing"))
            elif rprev in by_seq and successors.get(rprev, 0) == 1:
                problems.append(ChainProblem(
                    seq, "reordered", f"it was written after seq {rprev}, now follows seq {prev_seq}"))
        prev_seq = seq
        if row.mac_v not in (1, 2):
            problems.append(ChainProblem(seq, "edited", f"unknown MAC scheme {row.mac_v}"))
            continue
        downgraded = row.mac_v == 1 and seen_v2
        seen_v2 = seen_v2 or row.mac_v == 2
        if rprev and rprev not in by_seq:
            continue  # its predecessor is gone: already reported, MAC not checkable
        pm = by_seq[rprev].mac if rprev else ""
        if hmac.compare_digest(row.mac, row_mac(key, row, pm)):
            if downgraded:
                problems.append(ChainProblem(seq, "edited", "it claims the old MAC scheme after a "
                                                            "record under the new one (downgraded)"))
            elif row.mac_v == 1 and derive is not None:
                bad = _derived_mismatch(row, derive)
                if bad:
                    problems.append(ChainProblem(seq, "edited", f"column(s) {', '.join(bad)} no longer "
                                                 "match its MAC'd data (old-scheme record)"))
            continue
        moved = [s for s in by_seq if s != seq and hmac.compare_digest(row.mac, row_mac(key, row, pm, s))]
        if moved:
            problems.append(ChainProblem(seq, "reordered", f"this record was written as seq {moved[0]}"))
        elif successors.get(rprev, 0) > 1 or (seq != last and successors.get(seq, 0) == 0):
            problems.append(ChainProblem(seq, "inserted", "its MAC does not verify and it is not "
                                                          "part of the written chain"))
        else:
            problems.append(ChainProblem(seq, "edited", "its content no longer matches its MAC"
                                         + (" (or it was appended by hand)" if seq == last else "")))
    return sorted(problems, key=lambda p: (p.seq, p.kind))


def _derived_mismatch(row: ChainRow, derive: Derive) -> list[str]:
    try:
        want = derive(row.data)
    except ValueError:   # the MAC'd data itself does not give columns: every one is suspect
        return list(FILTER_COLUMNS)
    return [name for name, have, exp in zip(FILTER_COLUMNS, row.cols, want, strict=True)
            if encode(have) != encode(exp)]
