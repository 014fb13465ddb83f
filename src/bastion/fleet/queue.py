"""The fleet output's on-disk queue: records wait here until the broker acks them.

SQLite in WAL mode (like the store), one file ``<data dir>/fleet-queue.db``
(mode 0600, in the data dir that tamper protection covers).  Bounded: past
``max_records`` a new record is refused and counted (the oldest, first
evidence stays), and the agent alerts on the count.  A record leaves the
queue only after JetStream acked it, so an agent restart or a broker outage
loses nothing; a record sent whose ack was lost is sent again and the
stream drops the copy by its ``Nats-Msg-Id``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from bastion.errors import StoreError

QueuedRecord = tuple[int, str, str, bytes]   # rowid, msg id, subject, payload


class DiskQueue:
    def __init__(self, path: Path, max_records: int) -> None:
        self.path = path
        self.max_records = max_records
        self.refused = 0
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "msg_id TEXT NOT NULL, subject TEXT NOT NULL, payload BLOB NOT NULL)")
            self._count = int(self._db.execute("SELECT count(*) FROM q").fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"fleet queue {path}: {exc}") from exc

    def __len__(self) -> int:
        return self._count

    def put_many(self, recs: Sequence[tuple[str, str, bytes]]) -> int:
        """Append ``(msg_id, subject, payload)`` records; returns how many were refused."""
        with self._lock:
            room = max(0, self.max_records - self._count)
            take, refused = recs[:room], len(recs) - min(room, len(recs))
            if take:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO q (msg_id, subject, payload) VALUES (?, ?, ?)", take)
                self._db.execute("COMMIT")
                self._count += len(take)
            self.refused += refused
            return refused

    def peek(self, n: int) -> list[QueuedRecord]:
        with self._lock:
            return [(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in self._db.execute(
                "SELECT id, msg_id, subject, payload FROM q ORDER BY id LIMIT ?", (n,))]

    def delete(self, rowids: Sequence[int]) -> None:
        if not rowids:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM q WHERE id = ?", [(r,) for r in rowids])
            self._db.execute("COMMIT")
            self._count = int(self._db.execute("SELECT count(*) FROM q").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["DiskQueue", "QueuedRecord"]
