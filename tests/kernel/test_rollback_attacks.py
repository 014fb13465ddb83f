"""Rollback under attack: `bastion rollback` runs as root on paths the user who owns
the shielded files may have rearranged since the copies were taken (issue 13, item 1).

Each test runs a scoped shield (a fanotify listener marking only this test's tmp
directories, allowing everything outside the test's cgroup, with a dead-man
deadline), lets a "ransomware" tree in the test cgroup touch the files, opens the
incident, plays the attacker's (or the user's) move, then rolls back.  The "etc"
directory is a tmp directory with a fake passwd -- never the real /etc.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner

from bastion.cli.behavior import rollback_cmd
from bastion.kernel import openat2 as o2
from bastion.respond.shadow import ShadowKeeper, rollback
from bastion.respond.shadow.beneath import fd_fstype
from support.cg import scoped_cgroup

pytestmark = pytest.mark.timeout(60)

NOBODY = 65534
ENCRYPTED = b"ENCRYPTED" * 8
FAKE_PASSWD = b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false\n"

# The incident's tree: r:PATH reads, w:PATH rewrites in place, lock:PATH writes
# PATH.locked and unlinks PATH, rmtree:PATH removes a directory tree.
TREE = r"""
import os, sys
for a in sys.argv[1:]:
    op, p = a.split(":", 1)
    if op == "r":
        open(p, "rb").read()
    elif op == "w":
        open(p, "wb").write(b"ENCRYPTED" * 8)
    elif op == "lock":
        data = open(p, "rb").read()
        open(p + ".locked", "wb").write(bytes(b ^ 0x5A for b in data))
        os.unlink(p)
    elif op == "rmtree":
        import shutil
        shutil.rmtree(p)
"""

Attack = Callable[[list[str]], int]


def _spawn_in(cg: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv])


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@contextlib.contextmanager
def shield(tmp_path: Path, prot: Path) -> Iterator[tuple[Attack, ShadowKeeper]]:
    """A scoped shield over ``prot``; ``attack(argv)`` runs argv in the test cgroup,
    waits for it and opens its incident (returns the incident id)."""
    tree = tmp_path / "tree.py"
    tree.write_text(TREE)
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([prot], tmp_path / "shadow", max_bytes=8 << 20,
                              scope_cgroup_id=cgid, deadline_s=50, self_tgid=os.getpid())
        try:
            keeper.open()

            def attack(argv: list[str]) -> int:
                p = _spawn_in(cg, argv)
                assert p.wait(20) == 0, argv
                return keeper.open_incident(p.pid, 0)

            yield attack, keeper
        finally:
            keeper.close()


def tree(tmp_path: Path, *ops: str) -> list[str]:
    return [sys.executable, str(tmp_path / "tree.py"), *ops]


def fake_etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_bytes(FAKE_PASSWD)
    return etc


def test_symlink_swap_after_incident_never_writes_outside(tmp_path: Path) -> None:
    """The user swaps a shielded directory for a symlink to "etc" after the incident
    opens: rollback must not replace etc/passwd with the user's bytes."""
    prot = tmp_path / "data"
    docs = prot / "home" / "docs"
    docs.mkdir(parents=True)
    victim = docs / "passwd"
    victim.write_bytes(b"alice's notes\n" * 20)
    etc = fake_etc(tmp_path)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{victim}"))
    # an ancestor, not the last component (O_NOFOLLOW guarded only that one)
    (prot / "home").rename(prot / "home.old")
    (prot / "home").mkdir()
    (prot / "home" / "docs").symlink_to(etc)
    rep = rollback(tmp_path / "shadow", iid)
    assert (etc / "passwd").read_bytes() == FAKE_PASSWD
    assert sorted(os.listdir(etc)) == ["passwd"]                  # no temp file either
    assert rep.restored == [] and not rep.ok
    assert [p for p, _ in rep.failed] == [str(victim)]
    assert "symlink" in rep.failed[0][1], rep.failed


def test_parent_replaced_or_removed_after_copy_is_refused(tmp_path: Path) -> None:
    """A parent directory renamed away and replaced by a new one, or removed, after
    the copy: nothing is written into the new directory, nothing is recreated."""
    prot = tmp_path / "data"
    docs, gone = prot / "docs", prot / "gone"
    docs.mkdir(parents=True)
    gone.mkdir()
    (docs / "a.txt").write_bytes(b"a original\n" * 30)
    (gone / "b.txt").write_bytes(b"b original\n" * 30)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{docs / 'a.txt'}", f"w:{gone / 'b.txt'}"))
    docs.rename(prot / "docs.elsewhere")
    docs.mkdir()
    shutil.rmtree(gone)
    rep = rollback(tmp_path / "shadow", iid)
    assert list(docs.iterdir()) == [] and not gone.exists()
    why = dict(rep.failed)
    assert "replaced" in why[str(docs / "a.txt")], why
    assert "no longer exists" in why[str(gone / "b.txt")], why
    assert rep.restored == []


def test_later_edit_is_kept_aside_not_overwritten(tmp_path: Path) -> None:
    """A file the tree encrypted and the user then saved again: the original comes
    back and the user's later bytes are kept beside it (NAME.bastion-kept-*)."""
    prot = tmp_path / "data"
    prot.mkdir()
    a, c = prot / "a.txt", prot / "c.txt"
    a.write_bytes(b"a original\n" * 30)
    c.write_bytes(b"c original\n" * 30)
    want_a, want_c = _sha(a), _sha(c)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{a}", f"w:{c}"))
    a.write_bytes(b"my work after the incident\n")
    rep = rollback(tmp_path / "shadow", iid)
    assert [p.read_bytes() for p in prot.glob("a.txt.bastion-kept-*")] == \
        [b"my work after the incident\n"]                       # the later edit survives
    assert rep.ok, rep.failed
    assert sorted(rep.restored) == [str(a), str(c)]
    assert _sha(a) == want_a and _sha(c) == want_c
    assert len(rep.kept) == 1 and rep.kept[0][0] == str(a), rep.kept
    kept = Path(rep.kept[0][1])
    assert kept.parent == prot and kept.name.startswith("a.txt.bastion-kept-")
    assert kept.read_bytes() == b"my work after the incident\n"


def test_file_the_tree_only_read_is_not_rewritten(tmp_path: Path) -> None:
    """The tree read b.txt (copied: it might have written it) and rewrote a.txt; the
    user edits b.txt after the incident: rollback restores a.txt only."""
    prot = tmp_path / "data"
    prot.mkdir()
    a, b = prot / "a.txt", prot / "b.txt"
    a.write_bytes(b"a original\n" * 30)
    b.write_bytes(b"b original\n" * 30)
    want_a = _sha(a)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{a}", f"r:{b}"))
    b.write_bytes(b"b edited later by its owner\n")
    rep = rollback(tmp_path / "shadow", iid)
    assert b.read_bytes() == b"b edited later by its owner\n"
    assert rep.ok, rep.failed
    assert rep.restored == [str(a)] and rep.untouched == [str(b)]
    assert _sha(a) == want_a
    assert not rep.kept


def test_restored_as_the_original_owner(tmp_path: Path) -> None:
    """A nobody-owned file locked by the tree comes back owned by nobody, with its
    mode and mtime, created by nobody's filesystem identity; the .locked goes."""
    prot = tmp_path / "data"
    home = prot / "nobody"
    home.mkdir(parents=True)
    os.chown(home, NOBODY, NOBODY)
    f = home / "thesis.txt"
    f.write_bytes(b"chapter one\n" * 40)
    os.chown(f, NOBODY, NOBODY)
    os.chmod(f, 0o640)
    before = f.stat()
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"lock:{f}"))
    assert not f.exists() and (home / "thesis.txt.locked").exists()
    rep = rollback(tmp_path / "shadow", iid)
    assert rep.ok, rep.failed
    assert rep.restored == [str(f)] and rep.removed == [str(home / "thesis.txt.locked")]
    now = f.stat()
    assert (now.st_uid, now.st_gid, now.st_mode, now.st_mtime_ns) == \
        (NOBODY, NOBODY, before.st_mode, before.st_mtime_ns)
    assert f.read_bytes() == b"chapter one\n" * 40
    assert sorted(os.listdir(home)) == ["thesis.txt"]


def test_restore_never_does_what_the_owner_could_not(tmp_path: Path) -> None:
    """A nobody-owned file in a root-owned 0755 directory: nobody may not create
    files there, so neither may its restore (refused, named; not written as root)."""
    prot = tmp_path / "data"
    shared = prot / "shared"
    shared.mkdir(parents=True)
    os.chmod(shared, 0o755)
    f = shared / "notes.txt"
    f.write_bytes(b"nobody's notes\n" * 20)
    os.chown(f, NOBODY, NOBODY)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{f}"))
    rep = rollback(tmp_path / "shadow", iid)
    assert f.read_bytes() == ENCRYPTED and sorted(os.listdir(shared)) == ["notes.txt"]
    assert rep.restored == [] and [p for p, _ in rep.failed] == [str(f)]
    assert f"uid {NOBODY}" in rep.failed[0][1] and "Permission denied" in rep.failed[0][1]


def test_path_recorded_in_another_mount_namespace_is_refused(tmp_path: Path) -> None:
    """The tree bind-mounts the shielded directory over "etc" in a private mount
    namespace and encrypts etc/passwd there (really docs/passwd): the path the
    kernel reports means the fake etc/passwd in ours.  Rollback must refuse it."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for the mount-namespace attack")
    prot = tmp_path / "data"
    docs = prot / "docs"
    docs.mkdir(parents=True)
    (docs / "passwd").write_bytes(b"alice's notes\n" * 20)
    etc = fake_etc(tmp_path)
    script = 'mount --bind "$1" "$2" && exec "$3" "$4" "w:$2/passwd"'
    with shield(tmp_path, prot) as (attack, keeper):
        iid = attack(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                      str(docs), str(etc), sys.executable, str(tmp_path / "tree.py")])
        stats = keeper.stats()
    assert (docs / "passwd").read_bytes() == ENCRYPTED          # the attack happened
    rep = rollback(tmp_path / "shadow", iid)
    assert (etc / "passwd").read_bytes() == FAKE_PASSWD
    assert sorted(os.listdir(etc)) == ["passwd"]
    assert [p for p, _ in rep.failed] == [str(etc / "passwd")]
    assert "not anchored" in rep.failed[0][1], rep.failed
    assert stats["unanchored"] >= 1 and stats["unrecoverable"] >= 1, stats


def test_kernel_without_openat2_restores_nothing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No openat2 (here: a syscall number nothing implements, so the kernel answers
    ENOSYS): rollback refuses every file, naming openat2 -- no fallback path walk."""
    prot = tmp_path / "data"
    prot.mkdir()
    a = prot / "a.txt"
    a.write_bytes(b"a original\n" * 30)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"lock:{a}"))
    monkeypatch.setattr(o2, "_SYS_OPENAT2", 1023)
    rep = rollback(tmp_path / "shadow", iid)
    assert not a.exists() and sorted(os.listdir(prot)) == ["a.txt.locked"]
    assert rep.restored == [] and rep.removed == []
    assert all("openat2(2) is not available" in why for _p, why in rep.failed), rep.failed
    assert str(a) in dict(rep.failed)


def test_index_from_before_anchoring_is_refused(tmp_path: Path) -> None:
    """A shadow index written before copies were anchored (schema 1) is migrated on
    open; its copies are refused by name, not restored by walking their paths."""
    prot = tmp_path / "data"
    prot.mkdir()
    a = prot / "a.txt"
    a.write_bytes(ENCRYPTED)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    db = sqlite3.connect(str(shadow / "index.db"))
    db.executescript("""
        CREATE TABLE blobs (sha TEXT PRIMARY KEY, size INTEGER NOT NULL, t_ns INTEGER NOT NULL,
            evicted INTEGER NOT NULL DEFAULT 0, inline INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE blob_data (sha TEXT PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE copies (id INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL, kind TEXT NOT NULL,
            path TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
            size INTEGER NOT NULL, mode INTEGER NOT NULL, uid INTEGER NOT NULL,
            gid INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, sha TEXT,
            pid INTEGER NOT NULL, start_ns INTEGER NOT NULL, exe TEXT NOT NULL,
            ancestry TEXT NOT NULL, late INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE incidents (id INTEGER PRIMARY KEY, root_pid INTEGER NOT NULL,
            root_start_ns INTEGER NOT NULL, opened_ns INTEGER NOT NULL, state TEXT NOT NULL,
            closed_ns INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE incident_copies (incident INTEGER NOT NULL, copy INTEGER NOT NULL,
            PRIMARY KEY (incident, copy));""")
    data = b"a original\n" * 30
    sha = hashlib.sha256(data).hexdigest()
    st = a.stat()
    now = time.time_ns()
    db.execute("INSERT INTO blobs VALUES (?, ?, ?, 0, 1)", (sha, len(data), now))
    db.execute("INSERT INTO blob_data VALUES (?, ?)", (sha, data))
    db.execute("INSERT INTO copies VALUES (1, ?, 'copy', ?, 0, ?, ?, 33188, 0, 0, 1, 1, ?, 7, 0,"
               " '/bin/x', '[[7, 0]]', 0)", (now, str(a), st.st_ino, len(data), sha))
    db.execute("INSERT INTO incidents VALUES (1, 7, 0, ?, 'open', 0)", (now,))
    db.execute("INSERT INTO incident_copies VALUES (1, 1)")
    db.commit()
    db.close()
    rep = rollback(shadow, 1)
    from bastion.respond.shadow.store import SCHEMA_VERSION
    assert a.read_bytes() == ENCRYPTED
    assert [p for p, _ in rep.failed] == [str(a)] and "not anchored" in rep.failed[0][1]
    db = sqlite3.connect(str(shadow / "index.db"))
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        cols = {r[1] for r in db.execute("PRAGMA table_info(copies)")}
        assert {"root", "root_dev", "root_ino", "parent_dev", "parent_ino"} <= cols
    finally:
        db.close()


def _fsuid() -> tuple[int, int]:
    lines = Path("/proc/thread-self/status").read_text().splitlines()
    uid = next(x for x in lines if x.startswith("Uid:")).split()
    gid = next(x for x in lines if x.startswith("Gid:")).split()
    return int(uid[4]), int(gid[4])


def test_fs_identity_is_restored_after_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x")
    os.chmod(secret, 0)                               # only CAP_DAC_OVERRIDE reads it
    assert _fsuid() == (0, 0)
    with pytest.raises(PermissionError):
        with o2.fs_identity(NOBODY, NOBODY):
            assert _fsuid() == (NOBODY, NOBODY) and os.getgroups() == []
            secret.read_bytes()
    assert _fsuid() == (0, 0)
    assert secret.read_bytes() == b"x"                # root's capabilities are back


def test_cli_names_kept_edits_and_files_only_read(tmp_path: Path) -> None:
    prot = tmp_path / "data"
    prot.mkdir()
    a, b = prot / "a.txt", prot / "b.txt"
    a.write_bytes(b"a original\n" * 30)
    b.write_bytes(b"b original\n" * 30)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{a}", f"r:{b}"))
    a.write_bytes(b"saved later\n")
    b.write_bytes(b"edited later\n")
    runner = CliRunner()
    dry = runner.invoke(rollback_cmd, ["--shadow-dir", str(tmp_path / "shadow"),
                                       "--incident", str(iid), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would restore  {a}" in dry.output and f"only read {b}" in dry.output
    assert f"would keep     {a}: later edit kept as a.txt.bastion-kept-<time>" in dry.output
    assert a.read_bytes() == b"saved later\n"
    res = runner.invoke(rollback_cmd, ["--shadow-dir", str(tmp_path / "shadow"),
                                       "--incident", str(iid), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["ok"] and out["restored"] == [str(a)] and out["untouched"] == [str(b)]
    assert [k["path"] for k in out["kept"]] == [str(a)]
    assert Path(out["kept"][0]["kept_as"]).read_bytes() == b"saved later\n"
    assert b.read_bytes() == b"edited later\n"


def test_filesystem_mounted_over_the_root_is_refused(tmp_path: Path) -> None:
    """Something mounted over the protected root after the copy (a user's FUSE
    mount over their own home would be the real one; a tmpfs here): refused before
    anything is written there, and a FUSE mount before anything asks its daemon."""
    prot = tmp_path / "data"
    prot.mkdir()
    a = prot / "a.txt"
    a.write_bytes(b"a original\n" * 30)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, f"w:{a}"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "bastion-test", str(prot)],
                   check=True)
    try:
        rep = rollback(tmp_path / "shadow", iid)
        assert os.listdir(prot) == []
    finally:
        subprocess.run(["umount", str(prot)], check=True)
    assert a.read_bytes() == ENCRYPTED
    assert [p for p, _ in rep.failed] == [str(a)]
    assert "not the directory the copy was taken under" in rep.failed[0][1], rep.failed
    fd = os.open("/proc", os.O_PATH)
    try:
        assert fd_fstype(fd) == "proc"
    finally:
        os.close(fd)


def test_directories_the_tree_removed_are_recreated_as_the_owner(tmp_path: Path) -> None:
    """A wiper reads the files, then removes their directories: rollback recreates
    them (mode 0700, owned by the files' owner, beneath the root) and restores the
    files.  A directory removed by the user after the incident is not recreated."""
    prot = tmp_path / "data"
    home = prot / "nobody"
    deep = home / "sub" / "deep"
    deep.mkdir(parents=True)
    mine = prot / "mine"
    mine.mkdir()
    for d in (home, home / "sub", deep):
        os.chown(d, NOBODY, NOBODY)
    files = {deep / "a.txt": b"a original\n" * 30, deep / "b.txt": b"b original\n" * 30}
    for f, data in files.items():
        f.write_bytes(data)
        os.chown(f, NOBODY, NOBODY)
    (mine / "c.txt").write_bytes(b"c original\n" * 30)
    with shield(tmp_path, prot) as (attack, _k):
        iid = attack(tree(tmp_path, *(f"r:{f}" for f in files), f"w:{mine / 'c.txt'}",
                          f"rmtree:{home / 'sub'}"))
    shutil.rmtree(mine)                               # the user's own move, afterwards
    dry = rollback(tmp_path / "shadow", iid, dry_run=True)
    assert dry.recreated == [str(home / "sub"), str(deep)] and not (home / "sub").exists()
    rep = rollback(tmp_path / "shadow", iid)
    assert not mine.exists()
    assert rep.recreated == [str(home / "sub"), str(deep)]
    assert sorted(rep.restored) == sorted(map(str, files))
    for f, data in files.items():
        assert f.read_bytes() == data and (f.stat().st_uid, f.stat().st_gid) == (NOBODY, NOBODY)
    for d in (home / "sub", deep):
        st = d.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (NOBODY, NOBODY, 0o700)
    assert [p for p, _ in rep.failed] == [str(mine / "c.txt")]
    assert "removed after the incident opened" in rep.failed[0][1], rep.failed
