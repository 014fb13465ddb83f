"""Ransomware shield on the host kernel: shadow copies before the first open, the
behaviour rule stops a real encryptor, rollback restores every file byte-for-byte.

Kernel safety: the fanotify marks are inode marks on directories under this
test's tmp_path only (never a mount or a filesystem); the keeper is scoped to
a test cgroup, has a dead-man deadline and a watchdog; every program and
process is torn down in ``finally``.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.detect.behavior.rules import Ransomware, live_probes
from bastion.detect.engine import Engine, RuleContext
from bastion.errors import ConfigError
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.respond.shadow import Opener, ShadowKeeper, ShadowStore, rollback
from bastion.respond.shadow.store import Quotas
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup

pytestmark = pytest.mark.timeout(90)

DEADLINE_S = 100.0      # dead-man switch of the keeper (the test itself stays < 90 s)
NFILES = 2500

# A real encryptor: AES-256-GCM over every file, NAME.locked written, original unlinked.
ENCRYPTOR = r"""
import os, signal, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
signal.alarm(60)                      # its own dead-man switch
aes = AESGCM(AESGCM.generate_key(bit_length=256))
n = 0
for root, dirs, files in os.walk(sys.argv[1]):
    dirs.sort()
    for name in sorted(files):
        if name.endswith(".locked"):
            continue
        p = os.path.join(root, name)
        with open(p, "rb") as fh:
            data = fh.read()
        nonce = os.urandom(12)
        with open(p + ".locked", "wb") as fh:
            fh.write(nonce + aes.encrypt(nonce, data, None))
        os.unlink(p)
        n += 1
print(n, flush=True)
"""


def spawn_in(cg: Path, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], **kw)  # type: ignore[call-overload]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def make_tree(top: Path, n: int, *, seed: int = 7) -> dict[Path, str]:
    """n small text-like files in 10 subdirectories (600-3000 bytes each)."""
    rnd = random.Random(seed)
    words = [f"w{i:03d}" for i in range(400)]
    out: dict[Path, str] = {}
    for i in range(n):
        d = top / f"d{i % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"doc{i:05d}.txt"
        size = rnd.randint(600, 3000)
        text = " ".join(rnd.choice(words) for _ in range(size // 4))[:size]
        p.write_text(text)
        os.chmod(p, rnd.choice([0o600, 0o640, 0o644]))
        out[p] = hashlib.sha256(text.encode()).hexdigest()
    return out


def in_cgroup(pid: int, cg: Path) -> bool:
    try:
        line = Path(f"/proc/{pid}/cgroup").read_text().strip().split("\n")[-1]
    except OSError:
        return False
    return line.startswith("0::") and cg.name in line


def test_encryptor_stopped_and_rolled_back(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")   # a dev dependency: the encryptor uses AES-GCM
    t_start = time.monotonic()
    prot = tmp_path / "data"
    shadow = tmp_path / "shadow"
    originals = make_tree(prot, NFILES)
    meta = {p: p.stat() for p in originals}
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([prot], shadow, max_bytes=64 << 20, scope_cgroup_id=cgid,
                              deadline_s=DEADLINE_S, self_tgid=os.getpid())
        sensor = BpfSensor(cgroup_id=cgid, self_tgid=os.getpid())
        proc: subprocess.Popen[bytes] | None = None
        try:
            keeper.open()
            assert keeper.stats()["marked_dirs"] == 11
            sensor.open()
            procs = ProcessTable()
            engine = Engine([Ransomware(probes=live_probes(), data_dirs=(str(prot),))])
            ctx = RuleContext(procs)
            disp = Dispatcher(procs)
            proc = spawn_in(cg, [sys.executable, "-c", ENCRYPTOR, str(prot)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            alerts = []
            incident = 0
            t_spawn = time.monotonic()
            t_kill = 0.0
            deadline = t_spawn + 60
            while time.monotonic() < deadline and proc.poll() is None:
                for ev in sensor.poll(0.01) or []:
                    procs.update(ev)
                    ev = procs.enrich(ev)
                    for f in engine.evaluate(ev, ctx):
                        if alerts or f.rule != "behavior.ransomware":
                            continue
                        # never let a test kill anything outside its own cgroup
                        assert in_cgroup(f.pid, cg), f"finding targets pid {f.pid} outside the test"
                        alerts.append(disp.dispatch(f, time.time_ns()).to_json())
                        t_kill = time.monotonic()
                        entry = procs.get(f.pid)
                        start = (f.event.proc.start_ns if f.event is not None
                                 and f.event.proc.pid == f.pid else entry.start_ns if entry else 0)
                        incident = keeper.open_incident(f.pid, start)
            rc = proc.wait(10)
            assert alerts, f"the encryptor was not stopped (rc {rc})"
            a = alerts[0]
            assert a["action"] == "kill-tree" and a["severity"] == "critical", a
            assert rc == -signal.SIGKILL
            assert incident > 0
            st = keeper.stats()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            sensor.close()
            keeper.close()
    locked = sorted(prot.rglob("*.locked"))
    touched = [p for p, h in originals.items() if not p.exists() or sha(p) != h]
    print(f"\nransomware shield: {len(touched)} of {NFILES} files touched before the kill "
          f"({len(locked)} .locked), kill {1e3 * (t_kill - t_spawn):.0f} ms after spawn; "
          f"copies {st['copies']} ({st['copied_bytes']} B), created seen {st['created_seen']}, "
          f"copy per open median {st['copy_us_median']:.0f} us p99 {st['copy_us_p99']:.0f} us, "
          f"decision median {st['decision_us_median']:.0f} us, watchdog {st['watchdog_allows']}, "
          f"unrecoverable {st['unrecoverable']}")
    assert 0 < len(touched) < 400, len(touched)       # stopped within a bounded number of files
    assert st["unrecoverable"] == 0 and st["watchdog_allows"] == 0, st
    assert st["copies"] >= len(touched)

    dry = rollback(shadow, incident, dry_run=True)
    assert dry.ok and len(dry.restored) == len(touched) and set(dry.removed) == set(map(str, locked))
    assert sorted(prot.rglob("*.locked")) == locked            # dry run changed nothing
    rep = rollback(shadow, incident)
    print(f"rollback: {rep.summary()}")
    assert rep.ok, rep.failed
    assert set(rep.restored) == set(map(str, touched))
    assert not list(prot.rglob("*.locked"))
    assert not list(prot.rglob(".bastion-restore-*"))
    for p, h in originals.items():                              # every file, byte-for-byte
        assert sha(p) == h, p
    for p in touched:
        now = p.stat()
        assert (now.st_mode, now.st_uid, now.st_mtime_ns) == \
            (meta[p].st_mode, meta[p].st_uid, meta[p].st_mtime_ns), p
    again = rollback(shadow, incident)                            # idempotent
    assert again.ok and not again.restored and not again.removed
    assert time.monotonic() - t_start < 90


def test_copy_before_truncate_and_out_of_scope(tmp_path: Path) -> None:
    """An in-place rewrite (O_TRUNC) is copied before the kernel truncates; opens by
    processes outside the scope cgroup and by this process are not copied."""
    prot = tmp_path / "data"
    prot.mkdir()
    f = prot / "a.txt"
    f.write_bytes(b"original " * 100)
    g = prot / "b.txt"
    g.write_bytes(b"untouched")
    want = sha(f)
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([prot], tmp_path / "shadow", max_bytes=1 << 20,
                              scope_cgroup_id=cgid, deadline_s=30, self_tgid=os.getpid())
        try:
            keeper.open()
            code = ("import sys\n"
                    "open(sys.argv[1], 'wb').write(b'x' * 10)\n")
            p = spawn_in(cg, [sys.executable, "-c", code, str(f)])
            assert p.wait(10) == 0
            subprocess.run([sys.executable, "-c", code, str(g)], check=True)  # out of scope
            assert f.read_bytes() == b"x" * 10
            assert g.read_bytes() == b"x" * 10
            st = keeper.stats()
            assert st["copies"] == 1 and st["out_of_scope"] >= 1, st
            iid = keeper.open_incident(p.pid, 0)
        finally:
            keeper.close()
    rep = rollback(tmp_path / "shadow", iid)
    assert rep.ok and rep.restored == [str(f)]
    assert sha(f) == want


def test_shadow_dir_inside_protected_dir_is_refused(tmp_path: Path) -> None:
    prot = tmp_path / "data"
    prot.mkdir()
    for bad in (prot / "shadow", prot, tmp_path):
        with pytest.raises(ConfigError, match="overlaps the protected directory"):
            ShadowKeeper([prot], bad, max_bytes=1 << 20)
    ShadowKeeper([prot], tmp_path / "elsewhere", max_bytes=1 << 20)   # constructed, not opened


def _put(store: ShadowStore, path: Path, opener: Opener) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return store.put(fd, os.fstat(fd), str(path), opener).kind
    finally:
        os.close(fd)


def test_eviction_policy(tmp_path: Path) -> None:
    """Closed incidents' copies go first, then old pending copies; an open
    incident's copies are never evicted; young pending copies are never evicted
    (the new copy is refused instead and counted)."""
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for i in range(12):
        p = src / f"f{i}"
        p.write_bytes(os.urandom(8192))
        files.append(p)
    victim = Opener(4242, 10**12, "/usr/bin/evil", ((4242, 10**12), (1, 0)))
    other = Opener(5151, 2 * 10**12, "/usr/bin/other", ((5151, 2 * 10**12), (1, 0)))
    # the total budget's policy alone: no uid/tree quota below it (tests/unit/test_shadow_quota.py)
    store = ShadowStore(tmp_path / "shadow", max_bytes=5 * 8192, keep_pending_s=0,
                        quotas=Quotas(uid_max_bytes=1 << 30, tree_max_bytes=1 << 30))
    try:
        for p in files[:3]:
            assert _put(store, p, victim) == "copied"
        iid = store.open_incident(4242, 10**12)
        for p in files[3:5]:
            assert _put(store, p, other) == "copied"          # full: 5 x 8 KiB
        assert _put(store, files[5], other) == "copied"       # evicts the oldest pending
        s = store.stats()
        assert s["evictions"] >= 1 and s["used_bytes"] <= 5 * 8192
        rows = store.incident_rows(iid)
        assert len(rows) == 3 and not any(r["evicted"] for r in rows)
        for p in files[6:9]:                                  # pending churn: incident kept
            assert _put(store, p, other) == "copied"
        assert not any(r["evicted"] for r in store.incident_rows(iid))
        assert _put(store, files[9], victim) == "copied"      # joins the open incident
        assert len(store.incident_rows(iid)) == 4
        store.close_incident(iid)
        before = store.stats()["evictions"]
        assert _put(store, files[10], other) == "copied"      # closed incident goes first
        evicted = [r for r in store.incident_rows(iid) if r["evicted"]]
        assert evicted and store.stats()["evictions"] > before
        # young pending copies are protected: with keep_pending_s large nothing may go
        store.keep_pending_ns = 10**15
        for p in files[:5]:
            p.write_bytes(os.urandom(8192))
        kinds = [_put(store, p, other) for p in files[:5]]
        assert "no_space" in kinds and store.stats()["no_space"] >= 1
        assert store.stats()["used_bytes"] <= 5 * 8192
        assert store.stats()["blobs"] > 0
    finally:
        store.close()
    # rollback reports an evicted copy as failed, with the reason
    rep = rollback(tmp_path / "shadow", iid, dry_run=True)
    assert any("evicted" in why for _p, why in rep.failed)
