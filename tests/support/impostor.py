"""A fake control server at a Bastion socket path: what root can bind there.

Run as its own process so that the client's SO_PEERCRED names it; its
command line imitates Bastion's (``... bastion.cli.guard guardian`` or
``... bastion.cli.main run``), which is all a check by name could see.

    python impostor.py SOCKET CAPTURE_FILE plain|relay[=REAL_SOCKET] WORDS...

Every byte a client sends is appended to CAPTURE_FILE.  ``plain`` answers
like a server (a strong challenge, then ``done``); ``relay`` passes the
client's challenge request and proof to the real server at REAL_SOCKET and
its answers back (a man in the middle).  Serves until killed.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def _line(conn: socket.socket, capture: str) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    with open(capture, "ab") as fh:
        fh.write(data)
    return data


def _serve(conn: socket.socket, capture: str, real: str | None) -> None:
    up: socket.socket | None = None
    if real is not None:
        up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        up.settimeout(30)
        up.connect(real)
    try:
        while True:
            line = _line(conn, capture)
            if not line:
                return
            if up is not None:
                up.sendall(line)
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = up.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
                conn.sendall(answer)
                continue
            req = json.loads(line)
            if req.get("cmd") == "auth.challenge":
                resp = {"ok": True, "nonce": os.urandom(32).hex(),
                        "kdf": {"alg": "scrypt", "salt": os.urandom(16).hex(), "n": 1 << 15,
                                "r": 8, "p": 1}}
            else:
                resp = {"ok": True, "done": True, "applied": False, "error": "impostor"}
            conn.sendall(json.dumps(resp).encode() + b"\n")
    finally:
        if up is not None:
            up.close()


def main() -> None:
    path, capture, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    real = mode.split("=", 1)[1] if mode.startswith("relay=") else None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    print("listening", flush=True)
    while True:
        conn, _ = s.accept()
        with conn:
            conn.settimeout(30)
            try:
                _serve(conn, capture, real)
            except (OSError, ValueError) as exc:
                print(f"impostor: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
