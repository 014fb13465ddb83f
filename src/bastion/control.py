"""The agent's control socket: root-only, one JSON request per connection.

The socket lives in a 0700 directory, is itself 0600, and every peer's
credentials (SO_PEERCRED) are checked: only uid 0 is served.  A request is
one JSON object line ``{"cmd": "status"}``; the answer is one JSON line
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Commands that need the maintenance token never carry it (issue 13 item 11):
the client asks ``{"cmd": "auth.kdf"}`` for the token's public derivation
parameters (the ``challenge`` callable the server was given) and derives its
key (slow, no server waiting); then, on a new connection, it sends
``{"cmd": "auth.challenge"}``; the server answers a fresh random nonce (with
the same parameters), then reads the real request on the same connection and hands it to the handler with the nonce under
``"_nonce"`` (a client cannot set that key).  The client signs with the
token (:func:`bastion.guard.token.prove`); the handler verifies.

Before a client sends anything it may check who listens
(``verify_server``): the peer's SO_PEERCRED (uid, pid) is read from the
connected socket, so a root impostor bound at the socket path is refused
before it sees a byte.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from bastion.errors import BastionError, ControlError, Location

log = logging.getLogger("bastion.control")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
_MAX_REQUEST = 64 * 1024
#: A request line must arrive whole within this (s24: a 2 s timeout per ``recv`` let a
#: client trickling a byte a second hold the server for hours).
REQUEST_DEADLINE_S = 2.0
#: An answer must be taken within this, or the connection is dropped.
ANSWER_DEADLINE_S = 2.0
#: Connections served at once; a new one beyond drops the oldest still reading its
#: request or not reading its answer.
MAX_CONNECTIONS = 16
#: Commands answered without waiting for the one running (the guardian's heartbeat: a
#: long rollback must not look like a stalled agent).  Their handlers must be
#: thread-safe.
UNLOCKED = frozenset({"ping"})


NONCE_KEY = "_nonce"
PEER_KEY = "_peer_pid"      # the client's pid from SO_PEERCRED (set by the server only)
CHALLENGE_CMD = "auth.challenge"
KDF_CMD = "auth.kdf"


@dataclass(frozen=True)
class Peer:
    """The other end of a connected unix socket (SO_PEERCRED, taken by the kernel at
    connect/listen time)."""

    pid: int
    uid: int
    gid: int


def peer_of(conn: socket.socket) -> Peer:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(int(pid), int(uid), int(gid))


def _peer_uid(conn: socket.socket) -> int:
    return peer_of(conn).uid


PeerCheck = Callable[[Peer], None]
"""Raises :class:`ControlError` when the peer is not who the client means to talk to."""
class Prover(Protocol):
    """What a token-proving client brings to :func:`request`."""

    def prepare(self, params: dict[str, Any]) -> None:
        """The slow part (key derivation) from the server's public parameters."""

    def __call__(self, challenge: dict[str, Any], peer: Peer) -> dict[str, Any]:
        """(the server's challenge, the server peer) -> fields added to the request."""


def _read_line(conn: socket.socket, deadline: float | None = None) -> bytes:
    """One request line; by ``deadline`` (monotonic) as a whole, else TimeoutError."""
    data = b""
    while not data.endswith(b"\n") and len(data) < _MAX_REQUEST:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive whole in time")
            conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@dataclass
class _Conn:
    sock: socket.socket
    since: float
    state: str = "read"      # read (its request), run (a handler), send (its answer)
    closed: bool = False


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler],
                 challenge: Callable[[], dict[str, Any]] | None = None) -> None:
        self.path = path
        self.handlers = handlers
        self.challenge = challenge
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._run_lock = threading.Lock()       # one command at a time (but UNLOCKED)
        self._conns_lock = threading.Lock()     # _conns, and every shutdown/close of theirs
        self._conns: list[_Conn] = []
        self.dropped = 0                        # connections dropped for a newer one

    def start(self) -> None:
        run_dir = self.path.parent
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(run_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ControlError("the socket directory is not a directory of ours (a symlink, or "
                               f"owned by uid {st.st_uid}): refusing to serve there",
                               location=Location(str(run_dir)))
        os.chmod(run_dir, 0o700)
        if self.path.exists():
            if ping(self.path):
                raise ControlError("another Bastion agent is already running on this socket",
                                   location=Location(str(self.path)))
            self.path.unlink()  # stale, from an agent that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="bastion-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Accept; each connection is served on its own thread (s24: one at a time, a slow
        or silent client held every other, the guardian's heartbeat too)."""
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            c = _Conn(conn, time.monotonic())
            with self._conns_lock:
                if len(self._conns) >= MAX_CONNECTIONS:
                    old = next((o for o in self._conns if o.state != "run"), None)
                    if old is None:     # every slot runs a command: the newcomer waits
                        self.dropped += 1
                        conn.close()
                        continue
                    self._drop(old)
                self._conns.append(c)
            threading.Thread(target=self._serve_one, args=(c,), daemon=True,
                             name="bastion-control-conn").start()

    def _drop(self, c: _Conn) -> None:
        """(``_conns_lock`` held) End ``c``'s reads and writes: its thread sees EOF/EPIPE."""
        self.dropped += 1
        self._conns.remove(c)
        log.warning("control: %d connections open; the oldest (%.1f s, %s) dropped",
                    MAX_CONNECTIONS, time.monotonic() - c.since, c.state)
        if not c.closed:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve_one(self, c: _Conn) -> None:
        try:
            self._handle(c.sock, c)
        except (OSError, ValueError) as exc:
            log.warning("control request failed: %s", exc)
        except Exception:   # noqa: BLE001 -- one request's bug must not end the server
            # s21: a handler's KernelError (status during start-up, before the shadow
            # keeper was open) ended this thread: the agent never answered again.
            log.exception("control request failed (the server goes on)")
        finally:
            with self._conns_lock:   # never closed while _drop may shut it down (fd reuse)
                if c in self._conns:
                    self._conns.remove(c)
                c.closed = True
                c.sock.close()

    def _run(self, c: _Conn | None, cmd: object, fn: Callable[[], dict[str, Any]]
             ) -> dict[str, Any]:
        if c is not None:
            c.state = "run"
        try:
            if cmd in UNLOCKED:
                return fn()
            with self._run_lock:
                return fn()
        finally:
            if c is not None:
                c.state = "send"

    def _handle(self, conn: socket.socket, c: _Conn | None = None) -> None:
        peer = peer_of(conn)
        conn.settimeout(ANSWER_DEADLINE_S)
        if peer.uid != 0:
            conn.sendall(b'{"ok": false, "error": "permission denied: root only"}\n')
            return
        nonce: bytes | None = None
        try:
            req = self._read_request(conn)
            if req.get("cmd") == CHALLENGE_CMD:
                nonce = os.urandom(32)
                extra = self._run(c, CHALLENGE_CMD, lambda: self.challenge()
                                  if self.challenge is not None else {})
                conn.settimeout(ANSWER_DEADLINE_S)
                conn.sendall(json.dumps({"ok": True, "nonce": nonce.hex(), **extra}).encode()
                             + b"\n")
                if c is not None:
                    c.state = "read"
                req = self._read_request(conn)      # the client only signs meanwhile (fast)
            req.pop(NONCE_KEY, None)
            req[PEER_KEY] = peer.pid
            if nonce is not None:
                req[NONCE_KEY] = nonce
            cmd = req.get("cmd")
            handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
            if cmd == KDF_CMD:
                resp: dict[str, Any] = {"ok": True, **self._run(
                    c, cmd, lambda: self.challenge() if self.challenge else {})}
            elif handler is None:
                resp = {"ok": False, "error": f"unknown command {cmd!r}"}
            else:
                h = handler
                resp = {"ok": True, **self._run(c, cmd, lambda: h(req))}
        except ValueError as exc:
            resp = {"ok": False, "error": f"bad request: {exc}"}
        except BastionError as exc:
            log.warning("control command failed: %s", exc)
            resp = {"ok": False, "error": str(exc)}
        conn.settimeout(ANSWER_DEADLINE_S)    # sendall: the whole answer within it
        conn.sendall(json.dumps(resp).encode() + b"\n")

    @staticmethod
    def _read_request(conn: socket.socket) -> dict[str, Any]:
        req = json.loads(_read_line(conn, time.monotonic() + REQUEST_DEADLINE_S))
        if not isinstance(req, dict):
            raise ValueError("request must be an object")
        return req

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._conns_lock:      # clients still reading or unread: dropped
            for c in self._conns:
                if c.state != "run" and not c.closed:
                    try:
                        c.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        # a command still running ends before its owner tears down what it uses (at most
        # 2 s more, as the one-at-a-time server's join waited)
        if self._run_lock.acquire(timeout=2.0):
            self._run_lock.release()
        if self._sock is None:
            return  # never bound: the socket path is not ours to remove
        self._sock.close()
        self._sock = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _answer(s: socket.socket, path: Path) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    try:
        resp = json.loads(data)
    except ValueError as exc:
        raise ControlError("garbled answer from the agent", location=Location(str(path))) from exc
    if not isinstance(resp, dict) or not resp.get("ok"):
        err = resp.get("error", "unknown error") if isinstance(resp, dict) else "unknown error"
        raise ControlError(f"the agent refused: {err}", location=Location(str(path)))
    return resp


def request(path: Path, cmd: str, timeout: float = 5.0, *, verify_server: PeerCheck | None = None,
            prover: Prover | None = None, **args: Any) -> dict[str, Any]:
    """Send one request to a running agent; ControlError when none answers.

    ``verify_server``: checked on the connected socket's peer before anything
    is sent.  ``prover``: the request is preceded by a challenge on the same
    connection and carries what ``prover`` returns (a proof, never a secret)."""
    if prover is not None:       # the slow key derivation first, with no server waiting on us
        prover.prepare(request(path, KDF_CMD, timeout=timeout, verify_server=verify_server))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            if verify_server is not None:
                verify_server(peer_of(s))
            if prover is not None:
                s.sendall(json.dumps({"cmd": CHALLENGE_CMD}).encode() + b"\n")
                args = {**args, **prover(_answer(s, path), peer_of(s))}
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            return _answer(s, path)
    except FileNotFoundError:
        raise ControlError("no Bastion agent is running (no control socket)",
                           location=Location(str(path))) from None
    except PermissionError:
        raise ControlError("permission denied: the control socket is root-only",
                           location=Location(str(path))) from None
    except (ConnectionRefusedError, TimeoutError) as exc:
        raise ControlError(f"the agent does not answer: {exc}", location=Location(str(path))) from exc


def ping(path: Path) -> bool:
    try:
        request(path, "ping", timeout=1.0)
        return True
    except ControlError:
        return False
