"""The agent's control socket: root-only, one JSON request per connection.

The socket lives in a 0700 directory, is itself 0600, and every peer's
credentials (SO_PEERCRED) are checked: only uid 0 is served.  A request is
one JSON object line ``{"cmd": "status"}``; the answer is one JSON line
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any, Callable

from bastion.errors import ControlError, Location

log = logging.getLogger("bastion.control")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
_MAX_REQUEST = 64 * 1024


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)
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
            with conn:
                conn.settimeout(2.0)
                try:
                    self._handle(conn)
                except (OSError, ValueError) as exc:
                    log.warning("control request failed: %s", exc)

    def _handle(self, conn: socket.socket) -> None:
        if _peer_uid(conn) != 0:
            conn.sendall(b'{"ok": false, "error": "permission denied: root only"}\n')
            return
        data = b""
        while not data.endswith(b"\n") and len(data) < _MAX_REQUEST:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            req = json.loads(data)
            if not isinstance(req, dict):
                raise ValueError("request must be an object")
            cmd = req.get("cmd")
            handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
            if handler is None:
                resp: dict[str, Any] = {"ok": False, "error": f"unknown command {cmd!r}"}
            else:
                resp = {"ok": True, **handler(req)}
        except ValueError as exc:
            resp = {"ok": False, "error": f"bad request: {exc}"}
        conn.sendall(json.dumps(resp).encode() + b"\n")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is None:
            return  # never bound: the socket path is not ours to remove
        self._sock.close()
        self._sock = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def request(path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Send one request to a running agent; ControlError when none answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise ControlError("no Bastion agent is running (no control socket)",
                           location=Location(str(path))) from None
    except PermissionError:
        raise ControlError("permission denied: the control socket is root-only",
                           location=Location(str(path))) from None
    except (ConnectionRefusedError, TimeoutError) as exc:
        raise ControlError(f"the agent does not answer: {exc}", location=Location(str(path))) from exc
    try:
        resp = json.loads(data)
    except ValueError as exc:
        raise ControlError("garbled answer from the agent", location=Location(str(path))) from exc
    if not isinstance(resp, dict) or not resp.get("ok"):
        err = resp.get("error", "unknown error") if isinstance(resp, dict) else "unknown error"
        raise ControlError(f"the agent refused: {err}", location=Location(str(path)))
    return resp


def ping(path: Path) -> bool:
    try:
        request(path, "ping", timeout=1.0)
        return True
    except ControlError:
        return False
