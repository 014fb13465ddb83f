"""s24 review: the control server served one connection at a time, with a 2 s timeout per
``recv`` and no bound on a request's whole read.  One client trickling a byte a second held
the server for as long as it liked (64 KiB of request: ~18 hours); so did a client that
never read a large answer (2 s each), and a long command (a rollback) held every other.
The guardian pings the agent's socket every few seconds with a 2 s timeout and, after
``stall_after_s`` (30 s) without an answer, SIGKILLs and restarts the agent: any root
process could keep the agent in a kill-and-restart loop, blind while it starts.

Now each connection has its own thread and a whole-request deadline, ``ping`` never waits
for another command, and at most ``MAX_CONNECTIONS`` are held (the oldest still reading or
unread is dropped for a new one)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bastion import control
from bastion.control import ControlServer, request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the control server serves root only")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    release = threading.Event()

    def slow(req: dict[str, Any]) -> dict[str, Any]:
        release.wait(3.0)
        return {"slow": True}

    path = tmp_path / "run" / "c.sock"
    srv = ControlServer(path, {"ping": lambda req: {"pid": os.getpid()},
                               "status": lambda req: {"n": 1},
                               "big": lambda req: {"blob": "x" * (8 << 20)},
                               "slow": slow})
    srv.start()
    try:
        yield path, release
    finally:
        release.set()
        srv.stop()


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def _ping_in_time(path: Path, within: float = 1.0) -> None:
    t0 = time.monotonic()
    assert request(path, "ping", timeout=within)["pid"] == os.getpid()
    assert time.monotonic() - t0 < within


def test_a_trickling_client_neither_blocks_a_ping_nor_holds_its_connection(
        server: tuple[Path, threading.Event]) -> None:
    path, _ = server
    slow = _connect(path)
    connected = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        try:
            slow.sendall(b'{"cmd": ')
            while not stop.wait(0.5):
                slow.sendall(b" ")
        except OSError:
            pass          # the server dropped us: what the test wants

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        _ping_in_time(path)
        # the trickler is dropped at the request deadline, not served for ever
        slow.settimeout(control.REQUEST_DEADLINE_S + 2.0)
        while slow.recv(4096):
            pass
        assert time.monotonic() - connected < control.REQUEST_DEADLINE_S + 1.0
    finally:
        stop.set()
        t.join(timeout=5)
        slow.close()


def test_many_silent_clients_do_not_starve_a_ping(server: tuple[Path, threading.Event]) -> None:
    path, _ = server
    idle = [_connect(path) for _ in range(control.MAX_CONNECTIONS + 8)]
    try:
        time.sleep(0.2)
        _ping_in_time(path)
    finally:
        for s in idle:
            s.close()


def test_a_client_that_never_reads_its_answer_does_not_block_a_ping(
        server: tuple[Path, threading.Event]) -> None:
    path, _ = server
    greedy = [_connect(path) for _ in range(3)]
    try:
        for s in greedy:
            s.sendall(json.dumps({"cmd": "big"}).encode() + b"\n")
        time.sleep(0.3)
        _ping_in_time(path)
    finally:
        for s in greedy:
            s.close()


def test_a_long_command_does_not_delay_a_ping(server: tuple[Path, threading.Event]) -> None:
    """(a long rollback or policy apply looked like a stalled agent to the guardian)"""
    path, release = server
    out: list[dict[str, Any]] = []
    t = threading.Thread(target=lambda: out.append(request(path, "slow", timeout=10.0)),
                         daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        _ping_in_time(path)
    finally:
        release.set()
        t.join(timeout=10)
    assert out == [{"ok": True, "slow": True}]


def test_commands_still_answer_one_after_another(server: tuple[Path, threading.Event]) -> None:
    path, _ = server
    for _ in range(20):
        assert request(path, "status", timeout=2.0) == {"ok": True, "n": 1}
    s = _connect(path)
    s.sendall(b"not json\n")
    s.settimeout(2.0)
    assert b'"ok": false' in s.recv(4096)
    s.close()
