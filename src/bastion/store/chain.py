"""The tamper-evident alert log: each alert is chained to the previous one.

``mac = HMAC-SHA256(key, prev_seq | prev_mac | seq | alert_id | data)``.  The
key (32 random bytes) lives beside the database, mode 0600; in the lsm tier
tamper protection refuses writes to the data directory, so a root attacker
who edits the database cannot forge the chain.  ``verify`` walks the alerts
in order and names every record that was edited, deleted, inserted or
reordered.  Removing the newest records leaves a shorter, valid chain: the
agent's live feed and outputs (syslog, SIEM) are the anchor for the tail.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import Location, StoreError

KEY_NAME = "alert-chain.key"


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


def mac(key: bytes, prev_seq: int, prev_mac: str, seq: int, alert_id: str, data: str) -> str:
    msg = f"{prev_seq}|{prev_mac}|{seq}|{alert_id}|".encode() + data.encode("utf-8", "surrogatepass")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    kind: str       # edited, deleted, inserted, reordered
    detail: str

    def __str__(self) -> str:
        return f"alert seq {self.seq}: {self.kind}: {self.detail}"


Row = tuple[int, str, str, int, str]   # seq, alert_id, data, prev_seq, mac


@dataclass(frozen=True)
class Anchor:
    """Alert retention deleted the records before ``first_seq``: its predecessor's seq
    and MAC, signed, so the shortened chain still verifies from its first record."""

    first_seq: int
    prev_seq: int
    prev_mac: str
    deleted: int
    mac: str


def anchor_mac(key: bytes, first_seq: int, prev_seq: int, prev_mac: str, deleted: int) -> str:
    msg = f"retention|{first_seq}|{prev_seq}|{prev_mac}|{deleted}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def verify(key: bytes, rows: list[Row], anchor: Anchor | None = None) -> list[ChainProblem]:
    """Problems in a chain given its rows in ascending seq order (empty: intact).

    ``anchor``: retention deleted the records before the first row; accepted only for
    the first row and only when its MAC verifies (a forged or misplaced anchor, or a
    record deleted after the retention point, is reported)."""
    problems: list[ChainProblem] = []
    by_seq = {r[0]: r for r in rows}
    if rows and anchor is not None and anchor.first_seq == rows[0][0] \
            and anchor.prev_seq == rows[0][3] and hmac.compare_digest(anchor.mac, anchor_mac(
                key, anchor.first_seq, anchor.prev_seq, anchor.prev_mac, anchor.deleted)):
        # the retained-out predecessor stands in, by its signed seq and MAC
        by_seq[anchor.prev_seq] = (anchor.prev_seq, "", "", 0, anchor.prev_mac)
        rows = [(anchor.prev_seq, "", "", 0, anchor.prev_mac), *rows]
        skip_first = True
    else:
        skip_first = False   # no valid anchor: a missing predecessor is reported below
    successors: dict[int, int] = {}
    for r in rows:
        successors[r[3]] = successors.get(r[3], 0) + 1
    last = rows[-1][0] if rows else 0
    prev_seq = 0
    for i, (seq, alert_id, data, rprev, rmac) in enumerate(rows):
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
        if rprev and rprev not in by_seq:
            continue  # its predecessor is gone: already reported, MAC not checkable
        pm = by_seq[rprev][4] if rprev else ""
        if hmac.compare_digest(rmac, mac(key, rprev, pm, seq, alert_id, data)):
            continue
        moved = [s for s in by_seq
                 if s != seq and hmac.compare_digest(rmac, mac(key, rprev, pm, s, alert_id, data))]
        if moved:
            problems.append(ChainProblem(seq, "reordered", f"this record was written as seq {moved[0]}"))
        elif successors.get(rprev, 0) > 1 or (seq != last and successors.get(seq, 0) == 0):
            problems.append(ChainProblem(seq, "inserted", "its MAC does not verify and it is not "
                                                          "part of the written chain"))
        else:
            problems.append(ChainProblem(seq, "edited", "its content no longer matches its MAC"
                                         + (" (or it was appended by hand)" if seq == last else "")))
    return sorted(problems, key=lambda p: (p.seq, p.kind))
