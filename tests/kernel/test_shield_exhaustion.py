"""Ransomware shield exhaustion (issue 14 item 3), on the host kernel.

An unprivileged user floods the shield (bytes and index rows) and another
user's files must still be shadowed; ``trusted`` executables are decided by
the executable's inode, not by the path ``/proc/PID/exe`` reads as.

Kernel safety: the fanotify marks are inode marks on this test's own
directories only; the keeper is scoped to a test cgroup (everything else is
allowed at once), has a dead-man deadline and a watchdog; the protected
directory lives in a 0755 directory under /tmp (the users must reach it) and
is removed in ``finally`` with the keeper, the cgroup and any helper binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from bastion.respond.shadow import ShadowKeeper, rollback
from bastion.respond.shadow.store import Quotas
from support.cg import scoped_cgroup

pytestmark = pytest.mark.timeout(90)

USER_A = 1001
USER_B = 1002
ENCRYPTED = b"ENCRYPTED\n"


def _spawn_in(cg: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv])


def _as(uid: int, script: str) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "/bin/sh", "-c", script]


@pytest.fixture
def homes() -> Iterator[Path]:
    """/tmp/bastion-shield-*/ (0755) with a 0700 home for user A and one for user B."""
    top = Path(tempfile.mkdtemp(prefix="bastion-shield-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        for uid, name in ((USER_A, "a"), (USER_B, "b")):
            d = top / name
            d.mkdir(mode=0o700)
            os.chown(d, uid, uid)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_user_flooding_the_shield_leaves_room_for_another_user(homes: Path,
                                                               tmp_path: Path) -> None:
    """User A writes and re-reads 96 files of 16 KiB (1.5 MiB of fresh content,
    more than the whole 1 MiB shield) within keep_pending_s; user B then
    rewrites its thesis in place.  B's original must have been copied (A's
    quota bites, not B's copies) and the bite is reported naming uid A."""
    thesis = homes / "b" / "thesis.txt"
    thesis.write_bytes(b"chapter one\n" * 300)
    os.chown(thesis, USER_B, USER_B)
    want = thesis.read_bytes()
    flood = ("cd " + str(homes / "a") + " && i=0; while [ $i -lt 96 ]; do "
             "head -c 16384 /dev/urandom > f$i; cat f$i > /dev/null; i=$((i+1)); done")
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([homes], tmp_path / "shadow", max_bytes=1 << 20,
                              scope_cgroup_id=cgid, deadline_s=80, self_tgid=os.getpid())
        try:
            keeper.open()
            a = _spawn_in(cg, _as(USER_A, flood))
            assert a.wait(60) == 0
            b = _spawn_in(cg, _as(USER_B, f"printf 'ENCRYPTED\\n' > {thesis}"))
            assert b.wait(20) == 0
            st = keeper.stats()
            assert st["copies"] >= 1 and st["used_bytes"] <= 1 << 20, st
            iid = keeper.open_incident(b.pid, 0)
            rows = keeper.store.incident_rows(iid)
            assert [(r["path"], r["kind"], bool(r["sha"])) for r in rows] == \
                [(str(thesis), "copy", True)], (rows, st)
            alert = keeper.quota_finding(os.getpid())       # what the agent raises
            assert alert is not None and alert.rule == "bastion.shield.quota", alert
            bites = alert.evidence["bites"]
            assert any(q["kind"] == "uid" and q["key"] == str(USER_A) and q["refused"]
                       for q in bites), bites
            assert not any(q["kind"] == "uid" and q["key"] == str(USER_B) for q in bites), bites
            assert f"uid {USER_A} bytes:" in alert.title
            assert keeper.quota_finding(os.getpid()) is None   # once per interval
        finally:
            keeper.close()
    assert thesis.read_bytes() == ENCRYPTED
    rep = rollback(tmp_path / "shadow", iid)
    assert rep.ok and rep.restored == [str(thesis)], rep.failed
    assert thesis.read_bytes() == want


def test_row_flood_is_bounded_and_another_user_keeps_a_row(homes: Path,
                                                          tmp_path: Path) -> None:
    """User A re-opens one file from 600 processes (each adds an index row, no
    bytes): the index stays within its caps, and user B's copy is still taken."""
    f = homes / "a" / "f"
    f.write_bytes(b"a" * 5000)
    os.chown(f, USER_A, USER_A)
    thesis = homes / "b" / "thesis.txt"
    thesis.write_bytes(b"chapter two\n" * 300)
    os.chown(thesis, USER_B, USER_B)
    flood = f"i=0; while [ $i -lt 600 ]; do cat {f} > /dev/null; i=$((i+1)); done"
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([homes], tmp_path / "shadow", max_bytes=8 << 20,
                              quotas=Quotas(max_rows=400, uid_max_rows=100),
                              scope_cgroup_id=cgid, deadline_s=80,
                              self_tgid=os.getpid())
        try:
            keeper.open()
            a = _spawn_in(cg, _as(USER_A, flood))
            assert a.wait(60) == 0
            b = _spawn_in(cg, _as(USER_B, f"printf 'ENCRYPTED\\n' > {thesis}"))
            assert b.wait(20) == 0
            st = keeper.stats()
            assert st["rows"] <= 400 and st["quota_refused_rows"] > 0, st
            assert keeper.store.usage("uid", str(USER_A)).rows <= 100
            iid = keeper.open_incident(b.pid, 0)
        finally:
            keeper.close()
    rep = rollback(tmp_path / "shadow", iid)
    assert rep.ok and rep.restored == [str(thesis)], rep.failed


OPENER_C = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[64];
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || read(fd, buf, sizeof buf) < 0) return 2;
    close(fd);
    execv(argv[2], argv + 2);
    return 3;
}
"""


@pytest.fixture
def root_only_dir() -> Iterator[Path]:
    """A root-owned 0755 directory under /run (a trusted binary must sit in one)."""
    d = Path("/run") / f"bastion-test-{uuid.uuid4().hex[:10]}"
    d.mkdir(mode=0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _shielded(tmp_path: Path, trusted: str) -> tuple[Path, Path]:
    prot = tmp_path / "data"
    prot.mkdir()
    (prot / "one.txt").write_bytes(b"one " * 100)
    (prot / "two.txt").write_bytes(b"two " * 100)
    return prot, Path(trusted)


def test_trusted_binary_bind_mounted_over_in_a_mount_namespace_is_not_trusted(
        tmp_path: Path) -> None:
    """A copy of the trusted /usr/bin/cat in /tmp, bind-mounted over /usr/bin/cat in
    a private mount namespace: /proc/PID/exe reads "/usr/bin/cat" but the inode is
    the copy's, so its open is copied.  The genuine cat stays trusted."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    prot, _ = _shielded(tmp_path, "/usr/bin/cat")
    fake = tmp_path / "cat"
    shutil.copy2("/usr/bin/cat", fake)
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([prot], tmp_path / "shadow", max_bytes=1 << 20,
                              trusted_exes=frozenset({"/usr/bin/cat"}), scope_cgroup_id=cgid,
                              deadline_s=40, self_tgid=os.getpid())
        try:
            keeper.open()
            genuine = _spawn_in(cg, ["/usr/bin/cat", str(prot / "one.txt")])
            assert genuine.wait(10) == 0
            assert keeper.stats()["trusted_allows"] == 1 and keeper.stats()["copies"] == 0
            ns = _spawn_in(cg, ["unshare", "-m", "--propagation", "private", "/bin/sh", "-c",
                                f"mount --bind {fake} /usr/bin/cat && "
                                f"exec /usr/bin/cat {prot / 'two.txt'}"])
            assert ns.wait(10) == 0
            st = keeper.stats()
            assert st["copies"] == 1 and st["trusted_allows"] == 1, st
        finally:
            keeper.close()


def test_renamed_copy_of_a_trusted_binary_is_not_trusted(tmp_path: Path) -> None:
    """A copy of the trusted cat in /tmp, run under the name "cat" (comm and
    argv[0] both "cat"), is copied like any untrusted opener."""
    prot, _ = _shielded(tmp_path, "/usr/bin/cat")
    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy2("/usr/bin/cat", d / "cat")
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([prot], tmp_path / "shadow", max_bytes=1 << 20,
                              trusted_exes=frozenset({"/usr/bin/cat", "cat"}),
                              scope_cgroup_id=cgid, deadline_s=40, self_tgid=os.getpid())
        try:
            keeper.open()
            p = _spawn_in(cg, [str(d / "cat"), str(prot / "one.txt")])
            assert p.wait(10) == 0
            st = keeper.stats()
            assert st["copies"] == 1 and st["trusted_allows"] == 0, st
        finally:
            keeper.close()


def test_trusted_process_that_execs_an_untrusted_binary_loses_trust(
        tmp_path: Path, root_only_dir: Path) -> None:
    """A trusted tool opens one file, then execve()s cat in the same process (same
    pid, same start time): cat's open of the second file must be copied."""
    prot, _ = _shielded(tmp_path, "")
    src = tmp_path / "opener.c"
    src.write_text(OPENER_C)
    tool = root_only_dir / "opener"
    subprocess.run(["cc", "-O1", "-o", str(tool), str(src)], check=True)
    os.chmod(tool, 0o755)
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([prot], tmp_path / "shadow", max_bytes=1 << 20,
                              trusted_exes=frozenset({str(tool)}), scope_cgroup_id=cgid,
                              deadline_s=40, self_tgid=os.getpid())
        try:
            keeper.open()
            p = _spawn_in(cg, [str(tool), str(prot / "one.txt"), "/usr/bin/cat",
                               str(prot / "two.txt")])
            assert p.wait(10) == 0
            st = keeper.stats()
            assert st["trusted_allows"] == 1 and st["copies"] == 1, st
        finally:
            keeper.close()


SUBUID = 231072           # a subordinate uid of user A (as /etc/subuid would grant)


def test_subordinate_uids_in_a_user_namespace_are_charged_to_their_owner(
        homes: Path, tmp_path: Path) -> None:
    """User A spends its byte quota, then makes a user namespace in which it runs as
    a subordinate uid (root writes the map, as newuidmap would for a rootless
    container: A is 0 inside, 1 is the subuid) and floods again:
    those copies are charged to A (refused), not to a fresh quota of the subuid."""
    sub = homes / "sub"
    sub.mkdir(mode=0o700)
    os.chown(sub, SUBUID, SUBUID)
    go = homes / "go"                  # where A's namespace can see it

    def flood(d: Path, n: int) -> str:
        return (f"cd {d} && i=0; while [ $i -lt {n} ]; do head -c 16384 /dev/urandom > f$i; "
                "cat f$i > /dev/null; i=$((i+1)); done")
    inner = (f"while [ ! -e {go} ]; do sleep 0.05; done; "
             f"exec setpriv --reuid=1 --regid=1 --clear-groups /bin/sh -c '{flood(sub, 32)}'")
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([homes], tmp_path / "shadow", max_bytes=1 << 20,
                              scope_cgroup_id=cgid, deadline_s=80, self_tgid=os.getpid())
        ns: subprocess.Popen[bytes] | None = None
        try:
            keeper.open()
            a = _spawn_in(cg, _as(USER_A, flood(homes / "a", 24)))
            assert a.wait(60) == 0
            spent = keeper.store.usage("uid", str(USER_A)).bytes
            assert spent >= (1 << 20) // 4 - 16384, spent
            ns = _spawn_in(cg, ["setpriv", f"--reuid={USER_A}", f"--regid={USER_A}",
                                "--clear-groups", "unshare", "-U", "/bin/sh", "-c", inner])
            for _ in range(100):      # wait for the unshare (its own user namespace)
                try:
                    if os.readlink(f"/proc/{ns.pid}/ns/user") != os.readlink("/proc/self/ns/user"):
                        break
                except OSError:
                    pass
                subprocess.run(["sleep", "0.05"], check=True)
            # as newuidmap maps it for rootless containers: A is root inside, uid 1 a subuid
            Path(f"/proc/{ns.pid}/uid_map").write_text(f"0 {USER_A} 1\n1 {SUBUID} 1\n")
            Path(f"/proc/{ns.pid}/gid_map").write_text(f"0 {USER_A} 1\n1 {SUBUID} 1\n")
            go.touch()
            assert ns.wait(60) == 0
            assert len(os.listdir(sub)) == 32 and (sub / "f0").stat().st_uid == SUBUID
            assert keeper.store.usage("uid", str(SUBUID)).bytes == 0
            assert keeper.store.usage("uid", str(USER_A)).bytes <= (1 << 20) // 4
            assert keeper.stats()["quota_refused_bytes"] >= 32
        finally:
            if ns is not None and ns.poll() is None:
                ns.kill()
                ns.wait(5)
            keeper.close()


def test_setuid_program_is_charged_to_the_user_who_ran_it(
        homes: Path, tmp_path: Path, root_only_dir: Path) -> None:
    """User A spends its byte quota, then has a setuid-root program open 8 fresh files
    of its own: those copies are charged to A (refused), not to root's quota."""
    src = tmp_path / "opener.c"
    src.write_text(OPENER_C)
    tool = root_only_dir / "suid-opener"
    subprocess.run(["cc", "-O1", "-o", str(tool), str(src)], check=True)
    os.chmod(tool, 0o4755)
    a_home = homes / "a"
    flood = (f"cd {a_home} && i=0; while [ $i -lt 24 ]; do head -c 16384 /dev/urandom > f$i; "
             "cat f$i > /dev/null; i=$((i+1)); done")
    via_suid = (f"cd {a_home} && i=0; while [ $i -lt 8 ]; do head -c 16384 /dev/urandom > s$i; "
                f"{tool} s$i /bin/true || exit 9; i=$((i+1)); done")
    with scoped_cgroup() as (cg, cgid):
        keeper = ShadowKeeper([homes], tmp_path / "shadow", max_bytes=1 << 20,
                              scope_cgroup_id=cgid, deadline_s=80, self_tgid=os.getpid())
        try:
            keeper.open()
            assert _spawn_in(cg, _as(USER_A, flood)).wait(60) == 0
            refused = keeper.stats()["quota_refused_bytes"]
            assert _spawn_in(cg, _as(USER_A, via_suid)).wait(60) == 0
            assert keeper.store.usage("uid", "0").bytes == 0
            assert keeper.stats()["quota_refused_bytes"] >= refused + 8
        finally:
            keeper.close()
