"""Shadow store (ransomware shield) costs on the listener's thread, no kernel needed.

* ``shield_put_copy``: median µs of ``ShadowStore.put`` of a new 4 KiB file
  (read from the fd, hashed, kept inline, one index row);
* ``shield_put_row``: median µs of a row only (same content, another process);
* ``shield_put_refused``: median µs of a put refused because the opener's uid
  quota is spent with young copies (nothing evictable: the 1 s back-off keeps
  the refusal cheap under a flood);
* ``shield_row_evict``: ms of the eviction pass when a uid passes its row cap
  with 10 000 old rows (drops 10 % of the cap, at most 1 024 rows, oldest first);
* ``shield_byte_evict``: ms of the eviction pass when a uid passes its byte
  quota with 20 000 old 4 KiB copies (at most 1 024 copies a pass; this pass
  took 19.5 s before the per-pass bound and the one-pass generation-cache
  purge, and the old total-budget eviction ~6 s for the same 20 000 copies).

No target: the figures show that quotas add no measurable cost to a put and
that a flood past a quota costs less than a copy.  Runs as any user.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import emit, log, median

from bastion.respond.shadow.store import Opener, Quotas, ShadowStore


def _opener(pid: int, uid: int) -> Opener:
    return Opener(pid, pid * 10**9, "/usr/bin/x", ((pid, pid * 10**9), (1, 0)), uid=uid)


def _put(store: ShadowStore, p: Path, who: Opener) -> tuple[str, float]:
    fd = os.open(p, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        t = time.perf_counter()
        kind = store.put(fd, st, str(p), who, tree="/home").kind
        return kind, (time.perf_counter() - t) * 1e6
    finally:
        os.close(fd)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-shield-") as td:
        d = Path(td)
        src = d / "src"
        src.mkdir()
        files = []
        for i in range(3000):
            p = src / f"f{i}"
            p.write_bytes(os.urandom(4096))
            files.append(p)
        store = ShadowStore(d / "shadow", max_bytes=1 << 30,
                            quotas=Quotas(uid_max_bytes=2000 * 4096, max_rows=10**6,
                                          uid_max_rows=10_000))
        try:
            copy = [_put(store, p, _opener(100, 1001)) for p in files[:2000]]
            assert all(k == "copied" for k, _ in copy), {k for k, _ in copy}
            rows = [_put(store, files[0], _opener(1000 + i, 1002)) for i in range(2000)]
            assert all(k == "dedup" for k, _ in rows)
            refused = [_put(store, p, _opener(100, 1001)) for p in files[2000:3000]]
            assert all(k == "quota_bytes" for k, _ in refused), {k for k, _ in refused}
            emit("shield_put_copy", median([u for _, u in copy]), "us", ".1f")
            emit("shield_put_row", median([u for _, u in rows]), "us", ".1f")
            emit("shield_put_refused", median([u for _, u in refused]), "us", ".1f")
            # 10 000 rows of uid 1003, made old, then one more: one eviction pass
            for i in range(10_000):
                _put(store, files[1], _opener(50_000 + i, 1003))
            store.keep_pending_ns = 0
            kind, us = _put(store, files[1], _opener(99_999, 1003))
            assert kind == "dedup" and store.stats()["row_evictions"] >= 1000, store.stats()
            log(f"row eviction pass: {store.stats()['row_evictions']} rows")
            emit("shield_row_evict", us / 1000, "ms", ".1f")
        finally:
            store.close()
        n = 20_000
        many = []
        for i in range(n + 1):
            p = src / f"g{i}"
            p.write_bytes(os.urandom(4096))
            many.append(p)
        store = ShadowStore(d / "shadow2", max_bytes=4 * n * 4096,
                            quotas=Quotas(uid_max_bytes=n * 4096))
        try:
            assert all(_put(store, p, _opener(100, 1001))[0] == "copied" for p in many[:n])
            store.keep_pending_ns = 0
            kind, us = _put(store, many[n], _opener(100, 1001))
            assert kind == "copied" and store.stats()["quota_evictions"] == 1024, store.stats()
            emit("shield_byte_evict", us / 1000, "ms", ".1f")
        finally:
            store.close()


if __name__ == "__main__":
    main()
