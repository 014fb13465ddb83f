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
    maps = {"svcgate_socks": FakeMap()}
    g = object.__new__(LsmSocketGate)
    g._socks = {}
    g._map = maps.__getitem__   # type: ignore[method-assign]
    socks = []
    for name in ("a.sock", "b.sock"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / name))
        socks.append(s)
    try:
        agent = AgentSocketGate(lambda: None,  # type: ignore[arg-type,return-value]
                                self_tgid=os.getpid(), deadline_s=None,
                                sockets={str(tmp_path / "a.sock"): SocketKind.DOCKER})
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
