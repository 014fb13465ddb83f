"""A failed re-entry of the control-socket gate's sockets at the maintenance tick is a
high finding for the agent to alert (s15-fixsvc): it only logged a warning, so a
restarted dockerd's new socket inode stayed reachable unseen."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from bastion.enforce.svcgate_lsm import AgentSocketGate, LsmSocketGate, SocketKind
from bastion.errors import KernelError, Location


class FakeMap:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}
        self.full = False

    def update(self, key: bytes, value: bytes) -> None:
        if self.full:
            raise KernelError("map full", errno=errno.E2BIG, location=Location("svcgate_socks"))
        self.d[key] = value

    def delete(self, key: bytes) -> None:
        del self.d[key]


def test_a_failed_socket_refresh_is_a_high_finding(tmp_path: Path) -> None:
    maps = {"svcgate_socks": FakeMap(), "svcgate_servers": FakeMap()}
    g = object.__new__(LsmSocketGate)
    g._socks = {}
    g._servers = {}
    g._map = maps.__getitem__   # type: ignore[method-assign]
    socks = []
    for name in ("a.sock", "b.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / name))
        socks.append(s)
    try:
        agent = AgentSocketGate(lambda: None,  # type: ignore[arg-type,return-value]
                                self_tgid=os.getpid(), deadline_s=None,
                                sockets={str(tmp_path / "a.sock"): SocketKind.DOCKER},
                                servers={})
        agent.gate = g
        assert agent.refresh() is None and len(maps["svcgate_socks"].d) == 1
        # the daemon restarts on a new inode; the map refuses the entry
        agent.sockets[str(tmp_path / "b.sock")] = SocketKind.SYSTEMD
        maps["svcgate_socks"].full = True
        f = agent.refresh()
        assert f is not None and f.severity == "high" and f.action == "alert"
        assert f.rule == "bastion.provenance.gate.sockets.refresh"
        assert "not re-entered" in f.title and "map full" in f.title
        assert f.evidence["sockets"] == 1 and len(maps["svcgate_socks"].d) == 1  # kept
        maps["svcgate_socks"].full = False
        assert agent.refresh() is None and len(maps["svcgate_socks"].d) == 2
    finally:
        for s in socks:
            s.close()


def test_servers_are_entered_by_their_installed_files() -> None:
    """tmux and screen servers (s18-launder) are entered by the inodes of their installed
    executables; a name with no installed file is said, not silently skipped; a second
    pass drops what is no longer installed (an upgrade's old inode)."""
    maps = {"svcgate_servers": FakeMap()}
    g = object.__new__(LsmSocketGate)
    g._servers = {}
    g._map = maps.__getitem__   # type: ignore[method-assign]
    files = {"tmux": frozenset({(8, 100), (8, 101)}), "screen": frozenset()}
    assert g.apply_servers({"tmux": SocketKind.TMUX, "screen": SocketKind.SCREEN},
                           files.__getitem__) == ["screen: no installed file: not entered"]
    assert len(maps["svcgate_servers"].d) == 2
    assert set(maps["svcgate_servers"].d.values()) == {int(SocketKind.TMUX).to_bytes(4, "little")}
    files["tmux"] = frozenset({(8, 102)})
    assert g.apply_servers({"tmux": SocketKind.TMUX}, files.__getitem__) == []
    assert len(maps["svcgate_servers"].d) == 1


def test_an_upgraded_servers_old_inode_stays_while_a_server_runs_it(tmp_path: Path) -> None:
    """s18 review item 7: after an upgrade the old tmux inode is no longer installed, but
    servers started before still run it: its entry stays while a live process runs it,
    and goes once none does.  Before: dropped at the next tick (the running server
    ungated).  The /proc scan is checked on a real process running an unlinked copy."""
    import shutil
    import subprocess
    from bastion import abi
    from bastion.enforce.svcgate_lsm import running_executables
    from bastion.policy.compile import kernel_dev

    maps = {"svcgate_servers": FakeMap()}
    g = object.__new__(LsmSocketGate)
    g._servers = {}
    g._map = maps.__getitem__   # type: ignore[method-assign]
    copy = tmp_path / "tmux"
    shutil.copy2("/bin/sleep", copy)
    st = copy.stat()
    old = (kernel_dev(st.st_dev), st.st_ino)
    files = {"tmux": frozenset({old})}
    assert g.apply_servers({"tmux": SocketKind.TMUX}, files.__getitem__) == []
    proc = subprocess.Popen([str(copy), "30"])
    try:
        copy.unlink()                       # the upgrade: a new file, the old inode runs on
        files["tmux"] = frozenset({(8, 555)})
        assert old in running_executables(frozenset({"tmux"}))
        assert g.apply_servers({"tmux": SocketKind.TMUX}, files.__getitem__) == []
        assert bytes(abi.InodeKey(ino=old[1], dev=old[0])) in maps["svcgate_servers"].d
        assert len(maps["svcgate_servers"].d) == 2
    finally:
        proc.kill()
        proc.wait()
    assert old not in running_executables(frozenset({"tmux"}))
    assert g.apply_servers({"tmux": SocketKind.TMUX}, files.__getitem__) == []
    assert len(maps["svcgate_servers"].d) == 1
