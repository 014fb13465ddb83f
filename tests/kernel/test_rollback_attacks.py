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
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from bastion.respond.shadow import ShadowKeeper, rollback
from support.cg import scoped_cgroup

pytestmark = pytest.mark.timeout(60)

NOBODY = 65534
ENCRYPTED = b"ENCRYPTED" * 8
FAKE_PASSWD = b"root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false\n"

# The incident's tree: r:PATH reads, w:PATH rewrites in place, lock:PATH writes
# PATH.locked and unlinks PATH.
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
