"""Shadow store quotas (issue 14.3): per-uid and per-tree caps of bytes and rows,
a total row cap, eviction within the scope that is over, bites reported."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bastion.config import PolicyError, parse_policy
from bastion.errors import StoreError
from bastion.kernel.clock import boot_ns
from bastion.respond.shadow.keeper import ShieldTrust, charged_uid, quota_finding
from bastion.respond.shadow.store import Opener, QuotaBite, Quotas, ShadowStore

KIB8 = 8192


def opener(pid: int, uid: int) -> Opener:
    return Opener(pid, pid * 10**9, f"/usr/bin/p{pid}", ((pid, pid * 10**9), (1, 0)), uid=uid)


A = opener(1001, 1001)
A2 = opener(1003, 1001)        # another process of user A
B = opener(1002, 1002)


def put(store: ShadowStore, p: Path, who: Opener, tree: str = "/home") -> str:
    fd = os.open(p, os.O_RDONLY)
    try:
        return store.put(fd, os.fstat(fd), str(p), who, tree=tree).kind
    finally:
        os.close(fd)


def files(d: Path, n: int, size: int = KIB8, prefix: str = "f") -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{prefix}{i}"
        p.write_bytes(os.urandom(size))
        out.append(p)
    return out


def test_defaults_are_fractions_of_the_budget() -> None:
    q = Quotas().resolved(2 << 30)
    assert (q.uid_max_bytes, q.tree_max_bytes) == (512 << 20, 1 << 30)
    assert (q.max_rows, q.uid_max_rows, q.tree_max_rows) == (500_000, 125_000, 250_000)
    with pytest.raises(StoreError, match="uid_max_rows"):
        Quotas(uid_max_rows=-1).resolved(1 << 20)


def test_one_uid_cannot_take_the_space_of_another(tmp_path: Path) -> None:
    """A's young copies fill A's quota (a quarter): A is refused, B still copied."""
    fa = files(tmp_path / "a", 8)
    fb = files(tmp_path / "b", 2)
    store = ShadowStore(tmp_path / "shadow", max_bytes=16 * KIB8)
    try:
        kinds = [put(store, p, A) for p in fa]
        assert kinds[:4] == ["copied"] * 4 and set(kinds[4:]) == {"quota_bytes"}
        assert [put(store, p, B) for p in fb] == ["copied", "copied"]
        assert store.usage("uid", "1001").bytes == 4 * KIB8
        st = store.stats()
        assert st["quota_refused_bytes"] == 4 and st["no_space"] == 0
        bites = store.take_quota_bites()
        assert [(q.kind, q.key, q.resource, q.refused) for q in bites] == \
            [("uid", "1001", "bytes", 4)]
        assert store.take_quota_bites() == []          # reported once per interval
    finally:
        store.close()


def test_quota_evicts_the_flooders_oldest_copies_not_anothers(tmp_path: Path) -> None:
    """B's copy is the oldest in the store; A's flood (old enough to be evicted) evicts
    A's own oldest copies, never B's."""
    fb = files(tmp_path / "b", 1)
    fa = files(tmp_path / "a", 8)
    store = ShadowStore(tmp_path / "shadow", max_bytes=16 * KIB8, keep_pending_s=0)
    try:
        assert put(store, fb[0], B) == "copied"
        assert all(put(store, p, A) == "copied" for p in fa)
        assert store.usage("uid", "1001").bytes <= 4 * KIB8
        assert store.usage("uid", "1002").bytes == KIB8
        st = store.stats()
        assert st["quota_evictions"] >= 4 and st["quota_refused_bytes"] == 0
        kept = {r[0] for r in store._db.execute("SELECT path FROM copies WHERE sha IS NOT NULL")}
        assert str(fb[0]) in kept and str(fa[-1]) in kept and str(fa[0]) not in kept
        assert any(q.key == "1001" and q.evicted for q in store.take_quota_bites())
    finally:
        store.close()


def test_open_incident_copies_are_never_evicted_by_a_quota(tmp_path: Path) -> None:
    fa = files(tmp_path / "a", 6)
    store = ShadowStore(tmp_path / "shadow", max_bytes=16 * KIB8, keep_pending_s=0)
    try:
        assert all(put(store, p, A) == "copied" for p in fa[:4])
        iid = store.open_incident(A.pid, A.start_ns)
        assert put(store, fa[4], A2) == "quota_bytes"      # nothing of A's may go
        assert not any(r["evicted"] for r in store.incident_rows(iid))
        store.close_incident(iid)                          # decided: may go now
        assert put(store, fa[4], A2) == "copied"
    finally:
        store.close()


def test_a_wall_clock_step_does_not_unlink_an_incidents_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ransomware started as a boot-time service copies its victims before NTP steps the
    wall clock forward (an hour); it is detected after the step.  Its copies still join
    its incident -- judged on CLOCK_BOOTTIME, the clock of the process start, not by a
    wall-clock offset read later -- so the flooding user's quota cannot evict them."""
    start = boot_ns() - 10**9                      # a real past start: up 1 s ago
    evil = Opener(4000, start, "/usr/bin/evil", ((4000, start), (1, 0)), uid=1001)
    fa = files(tmp_path / "a", 6)
    store = ShadowStore(tmp_path / "shadow", max_bytes=16 * KIB8, keep_pending_s=0)
    try:
        assert all(put(store, p, evil) == "copied" for p in fa[:4])
        wall = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: wall() + 3600 * 10**9)
        iid = store.open_incident(evil.pid, evil.start_ns)
        assert sorted(r["path"] for r in store.incident_rows(iid)) == sorted(map(str, fa[:4]))
        assert put(store, fa[4], A2) == "quota_bytes"      # nothing of the incident's may go
        assert not any(r["evicted"] for r in store.incident_rows(iid))
    finally:
        store.close()


def test_tree_quota(tmp_path: Path) -> None:
    """Two users filling /srv cannot take /home's share."""
    fs = files(tmp_path / "srv", 10)
    fh = files(tmp_path / "home", 1)
    store = ShadowStore(tmp_path / "shadow", max_bytes=16 * KIB8,
                        quotas=Quotas(uid_max_bytes=16 * KIB8))
    try:
        kinds = [put(store, p, A if i % 2 else B, tree="/srv") for i, p in enumerate(fs)]
        assert kinds.count("copied") == 8 and kinds.count("quota_bytes") == 2
        assert put(store, fh[0], A, tree="/home") == "copied"
        assert [(q.kind, q.key) for q in store.take_quota_bites()] == [("tree", "/srv")]
    finally:
        store.close()


def test_rows_are_capped_per_uid_and_in_total(tmp_path: Path) -> None:
    """One file re-opened by many processes: a row each, no bytes.  Young rows are
    refused over the cap; old ones are evicted oldest first; totals stay bounded."""
    f = files(tmp_path / "a", 1, size=100)[0]
    g = files(tmp_path / "b", 1, size=100)[0]
    store = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20,
                        quotas=Quotas(max_rows=40, uid_max_rows=10))
    try:
        kinds = [put(store, f, opener(5000 + i, 1001)) for i in range(30)]
        assert kinds.count("quota_rows") == 20 and store.usage("uid", "1001").rows == 10
        assert put(store, g, B) == "copied"                 # B has its own rows
        assert store.stats()["quota_refused_rows"] == 20
        store.keep_pending_ns = 0                            # now they are old: evictable
        store._no_victims.clear()                            # (a fruitless search backs off 1 s)
        kinds = [put(store, f, opener(6000 + i, 1001)) for i in range(30)]
        assert "quota_rows" not in kinds and store.usage("uid", "1001").rows <= 10
        assert store.stats()["row_evictions"] >= 20
        newest = store._db.execute("SELECT MAX(pid) FROM copies WHERE cuid = 1001").fetchone()
        assert newest[0] == 6029
        for u in range(2000, 2010):                          # many uids: the total cap
            put(store, f, opener(u, u))
        assert store.stats()["rows"] <= 40
        n = store._db.execute("SELECT COUNT(*) FROM copies").fetchone()[0]
        assert n == store.stats()["rows"]
    finally:
        store.close()


def test_counters_survive_a_restart_and_maintain(tmp_path: Path) -> None:
    fa = files(tmp_path / "a", 3)
    store = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20)
    for p in fa:
        put(store, p, A)
    put(store, fa[0], B)
    before = (store.usage("uid", "1001"), store.usage("uid", "1002"),
              store.usage("tree", "/home"), store.stats()["rows"])
    store.close()
    again = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20)
    try:
        assert (again.usage("uid", "1001"), again.usage("uid", "1002"),
                again.usage("tree", "/home"), again.stats()["rows"]) == before
        assert again.maintain(max_age_s=0) == 4             # every pending row is old
        assert again.usage("uid", "1001").bytes == 0 and again.stats()["rows"] == 0
        assert again.stats()["used_bytes"] == 0
    finally:
        again.close()


def test_schema_2_index_is_migrated(tmp_path: Path) -> None:
    """An index from before quotas gains the charge columns; its rows are charged to
    uid -1 and tree ''."""
    fa = files(tmp_path / "a", 1)
    store = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20)
    put(store, fa[0], A)
    store.close()
    db = sqlite3.connect(tmp_path / "shadow" / "index.db")
    db.execute("UPDATE copies SET cuid = -1, tree = ''")
    db.execute("UPDATE blobs SET cuid = -1, tree = ''")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    again = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20)
    try:
        assert again.usage("uid", "-1").rows == 1 and again.usage("tree", "").bytes == KIB8
    finally:
        again.close()


def test_trust_is_the_inode_of_a_root_only_file(tmp_path: Path) -> None:
    cat = os.stat("/usr/bin/cat")
    if cat.st_uid != 0 or cat.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        pytest.skip("/usr/bin/cat is not a root-only file here")
    from bastion.abi import kernel_dev

    ident = (kernel_dev(cat.st_dev), cat.st_ino)
    bad = tmp_path / "tool"
    bad.write_bytes(b"\x7fELF")
    trust = ShieldTrust(frozenset({"/usr/bin/cat", str(bad), "no-such-tool-here"}))
    assert trust.trusted(ident)
    assert not trust.trusted((kernel_dev(bad.stat().st_dev), bad.stat().st_ino))
    assert trust.unresolved == (str(bad), "no-such-tool-here")
    assert ShieldTrust(frozenset({"cat"})).trusted(ident)      # a bare name: system dirs
    assert not ShieldTrust(frozenset()).trusted(ident)


def test_charged_uid_of_a_process_in_our_namespace_is_its_euid() -> None:
    own = os.stat("/proc/self/ns/user").st_ino
    assert charged_uid(os.getpid(), 4321, own) == 4321
    assert charged_uid(2**22 + 12345, 77, own) == 77       # gone: its euid


def test_quota_finding_names_each_uid_and_tree() -> None:
    assert quota_finding([], 1) is None
    f = quota_finding([QuotaBite("uid", "1001", "bytes", 40, 3),
                       QuotaBite("tree", "", "rows", 0, 12)], 77)
    assert f is not None and f.rule == "bastion.shield.quota" and f.severity == "high"
    assert "uid 1001 bytes: 40 copies refused, 3 evicted" in f.title
    assert "tree (unanchored) rows: 0 index rows refused, 12 evicted" in f.title
    assert f.evidence["refused"] == 40 and f.pid == 77
    low = quota_finding([QuotaBite("tree", "/srv", "bytes", 0, 5)], 77)
    assert low is not None and low.severity == "low" and "tree /srv" in low.title


def test_quota_config() -> None:
    p = parse_policy("version: 1\nshield:\n  protect: [/home]\n  max_bytes: 1GiB\n"
                     "  quota: {uid_bytes: 100MiB, tree_rows: 5000, max_age: 2h}\n", "p.yaml")
    sh = p.shield
    assert (sh.uid_max_bytes, sh.tree_max_bytes, sh.tree_max_rows, sh.max_age_s) == \
        (100 * 2**20, 0, 5000, 7200)
    with pytest.raises(PolicyError) as ei:
        parse_policy("version: 1\nshield:\n  max_bytes: 1GiB\n"
                     "  quota: {uid_bytes: 2GiB, rows: 10, max_age: 1s, bogus: 1}\n", "p.yaml")
    got = [str(x) for x in ei.value.problems]
    assert any("p.yaml:4:" in g and "shield.quota.rows must be at least 100" in g for g in got), got
    assert any("shield.quota.max_age must be at least 10m" in g for g in got), got
    assert any("unknown key 'bogus' in shield.quota" in g for g in got), got
    assert any("shield.quota.uid_bytes 2147483648 exceeds shield.max_bytes" in g for g in got), got


def test_row_cap_evicts_decided_incidents_first_never_an_open_one(tmp_path: Path) -> None:
    f = files(tmp_path / "a", 1, size=100)[0]
    store = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20,
                        quotas=Quotas(uid_max_rows=10), keep_pending_s=0)
    try:
        closed_tree, open_tree = opener(700, 1001), opener(800, 1001)
        for i in range(3):
            assert put(store, f, opener(500 + i, 1001)) in ("copied", "dedup")   # pending
        put(store, f, closed_tree)
        put(store, f, open_tree)
        closed = store.open_incident(closed_tree.pid, closed_tree.start_ns)
        store.close_incident(closed)
        live = store.open_incident(open_tree.pid, open_tree.start_ns)
        for i in range(5):
            put(store, f, opener(600 + i, 1001))
        assert store.usage("uid", "1001").rows == 10
        assert put(store, f, opener(900, 1001)) == "dedup"      # evicts down to 9, then adds
        pids = {r[0] for r in store._db.execute("SELECT pid FROM copies")}
        # one row had to go (down to 9): the decided incident's, though 500 is older
        assert 700 not in pids and {500, 800, 900} <= pids and len(pids) == 10
        assert store.incident(closed)["copies"] == 0 and store.incident(live)["copies"] == 1
    finally:
        store.close()


def test_row_eviction_that_takes_the_content_s_last_row_copies_it_afresh(tmp_path: Path) -> None:
    """The row cap evicts the only row of f (its blob goes with it); the next open of
    the same f must take a fresh copy, not a row pointing at the evicted blob."""
    f = files(tmp_path / "a", 1)[0]
    gs = files(tmp_path / "g", 9, prefix="g")
    store = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20,
                        quotas=Quotas(uid_max_rows=10), keep_pending_s=0)
    try:
        assert put(store, f, opener(100, 1001)) == "copied"
        assert all(put(store, g, opener(200 + i, 1001)) == "copied" for i, g in enumerate(gs))
        out = put(store, f, opener(300, 1001))
        assert out == "copied", out
        sha = store._db.execute("SELECT sha FROM copies WHERE pid = 300").fetchone()[0]
        assert store.has_blob(sha)
    finally:
        store.close()
