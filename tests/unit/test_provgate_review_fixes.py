"""Review fixes of the compat gate's re-mark pass (s16-fixgate), without a kernel."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bastion.enforce import muststop
from bastion.enforce.muststop import GateObject
from bastion.policy.compile import kernel_dev


def _key(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return (kernel_dev(st.st_dev), st.st_ino)


def _swap_to_link(ssh: Path, target: Path) -> None:
    """What the attacker's renameat2(RENAME_EXCHANGE) loop does: ~/.ssh becomes a link
    (a user's own) to ``target``."""
    os.rename(ssh, ssh.with_name(".ssh.real"))
    os.symlink(target, ssh)
    os.lchown(ssh, 12345, 12345) if os.geteuid() == 0 else None


def test_a_ssh_dir_swapped_for_a_link_to_etc_during_the_pass_never_enters_etc(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, etc = tmp_path / "home", tmp_path / "etc"
    ssh = home / ".ssh"
    (ssh / "keys").mkdir(parents=True)
    (etc / "cron.d").mkdir(parents=True)
    (etc / "sudoers.d").mkdir()
    if os.geteuid() == 0:
        os.chown(home, 12345, 12345)
        os.chown(ssh, 12345, 12345)
    bad = {_key(etc), _key(etc / "cron.d"), _key(etc / "sudoers.d")}
    real = kernel_dev
    calls = {"n": 0}

    def swap_after_first_look(dev: int) -> int:   # the swap between the check and the walk
        calls["n"] += 1
        if calls["n"] == 1:
            _swap_to_link(ssh, etc)
        return real(dev)

    monkeypatch.setattr(muststop, "kernel_dev", swap_after_first_look)
    import bastion.kernel.fanotify as fan
    monkeypatch.setattr(fan, "kernel_dev", swap_after_first_look)
    entries, _problems, _over = muststop.expand([GateObject(str(ssh), "credential")],
                                                max_dirs=100, per_object_dirs=50)
    assert calls["n"] >= 1
    assert not bad & {e.key for e in entries}, [e.path for e in entries if e.key in bad]


def test_a_ssh_that_is_a_users_link_to_etc_is_not_entered(tmp_path: Path) -> None:
    home, etc = tmp_path / "home", tmp_path / "etc"
    home.mkdir()
    (etc / "cron.d").mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(home, 12345, 12345)
    os.symlink(etc, home / ".ssh")
    if os.geteuid() == 0:
        os.lchown(home / ".ssh", 12345, 12345)
    entries, problems, _ = muststop.expand([GateObject(str(home / ".ssh"), "credential")],
                                           max_dirs=100, per_object_dirs=50)
    assert entries == [] and problems and "link" in problems[0]


def test_an_inode_no_object_places_is_not_a_credential(tmp_path: Path) -> None:
    """s16-fixgate (2): an orphan mark (a tree moved away) or an inode the state forgot
    was refused as a credential store (any read); s18-gate: it is no credential (reads
    allowed) but a tainted opener's write is refused (persistence), counted, and the
    decision says it was not placed."""
    from bastion.enforce.provgate import ProvenanceGate, _State
    from bastion.kernel.fanotify import PermEvent
    f = tmp_path / "f"
    f.write_text("x")
    g = object.__new__(ProvenanceGate)
    g.unplaced = 0
    dirs: dict[tuple[int, int], Any] = {(1, 2): "credential", (1, 3): "persistence"}
    state = _State({}, dirs, frozenset(dirs.values()), {})
    fd = os.open(f, os.O_RDONLY)
    try:
        ev = PermEvent(0, fd, os.getpid(), 0.0)
        assert g._kind(state, ev, str(f), os.getpid()) == (
            "persistence", "not placed: its directory is no marked object")
    finally:
        os.close(fd)
    assert g.unplaced == 1


def test_an_object_on_a_network_filesystem_is_not_walked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s16-fixgate (9): /home/* on NFS or autofs was walked by every pass."""
    (tmp_path / ".ssh" / "a").mkdir(parents=True)
    monkeypatch.setattr(muststop, "fs_magic", lambda _fd: 0x6969)
    entries, problems, _ = muststop.expand([GateObject(str(tmp_path / ".ssh"), "credential")],
                                           max_dirs=100, per_object_dirs=50)
    assert entries == [] and len(problems) == 1 and "nfs filesystem" in problems[0]
