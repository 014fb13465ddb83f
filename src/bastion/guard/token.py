"""The maintenance token: the only way to turn tamper protection off.

Set at install or with ``bastion run|guardian --maintenance-token-file F``;
kept ONLY as a salted scrypt hash in ``<data dir>/maintenance-token`` (0600);
compared in constant time (:func:`hmac.compare_digest` over the derived
keys); failed attempts are rate-limited with an exponential back-off kept in
``<data dir>/maintenance-attempts`` (so restarting the CLI does not reset
it).  A valid token opens a maintenance window (:class:`MaintenanceWindow`)
that is logged as an alert and closes by itself.
"""

from __future__ import annotations

import hashlib
import logging
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bastion.errors import BastionError, ConfigError, Location

HASH_FILE: Final = "maintenance-token"
ATTEMPTS_FILE: Final = "maintenance-attempts"
WINDOW_FILE: Final = "maintenance-window"
MIN_TOKEN_BYTES: Final = 16
SCRYPT_N: Final = 1 << 15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
BACKOFF_MAX_S: Final = 300.0
DEFAULT_WINDOW_S: Final = 600.0


log = logging.getLogger("bastion.guard.token")


class TokenError(BastionError):
    """A missing, wrong or rate-limited maintenance token."""


def read_token_file(path: Path) -> bytes:
    try:
        raw = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}",
                          location=Location(str(path))) from exc
    if len(raw) < MIN_TOKEN_BYTES:
        raise ConfigError(f"the maintenance token must have at least {MIN_TOKEN_BYTES} bytes",
                          location=Location(str(path)))
    return raw


def generate_token_file(path: Path) -> bytes:
    """First run: a new random token written to ``path`` (created, never overwritten, 0600,
    not through a symlink).  Returns the token."""
    import secrets

    token = secrets.token_urlsafe(32).encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise TokenError("a token file is already there and no token is set for this data dir: "
                         "pass it with --maintenance-token-file, or move it away",
                         location=Location(str(path))) from exc
    except OSError as exc:
        raise TokenError(f"cannot create the token file: {exc.strerror}",
                         location=Location(str(path))) from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return token


def _derive(token: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(token, salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=32)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str             # "ok", "wrong token", "rate limited", "no token set"
    retry_after_s: float = 0.0
    failures: int = 0


class TokenStore:
    """The token's hash and the attempt counter, in the data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def hash_path(self) -> Path:
        return self.data_dir / HASH_FILE

    @property
    def attempts_path(self) -> Path:
        return self.data_dir / ATTEMPTS_FILE

    def is_set(self) -> bool:
        return self.hash_path.is_file()

    def set_token(self, token: bytes) -> None:
        if len(token) < MIN_TOKEN_BYTES:
            raise ConfigError(f"the maintenance token must have at least {MIN_TOKEN_BYTES} bytes",
                              location=Location(str(self.hash_path)))
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        salt = os.urandom(16)
        rec = {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
               "hash": _derive(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()}
        _write_private(self.hash_path, json.dumps(rec).encode())
        self._save_attempts(0, 0.0)

    def _load_attempts(self) -> tuple[int, float]:
        try:
            rec = json.loads(self.attempts_path.read_bytes())
            return int(rec["failures"]), float(rec["next_allowed"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0.0

    def _save_attempts(self, failures: int, next_allowed: float) -> None:
        try:
            _write_private(self.attempts_path, json.dumps(
                {"failures": failures, "next_allowed": next_allowed}).encode())
        except OSError as exc:
            # read-only here (a protected data dir seen by a process that is not the
            # agent): the agent, which may write there, keeps the persistent counter
            log.warning("token attempt counter not persisted (%s): %s", self.attempts_path, exc)

    def verify(self, token: bytes, *, now: float | None = None) -> Verdict:
        """Check ``token``; a failure doubles the wait before the next attempt."""
        now = time.time() if now is None else now
        failures, next_allowed = self._load_attempts()
        if now < next_allowed:
            return Verdict(False, "rate limited", next_allowed - now, failures)
        try:
            rec = json.loads(self.hash_path.read_bytes())
            salt = bytes.fromhex(rec["salt"])
            want = bytes.fromhex(rec["hash"])
            n, r, p = int(rec["n"]), int(rec["r"]), int(rec["p"])
        except FileNotFoundError:
            return Verdict(False, "no token set")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"the token hash is unreadable: {exc}",
                             location=Location(str(self.hash_path))) from exc
        if hmac.compare_digest(_derive(token, salt, n, r, p), want):
            self._save_attempts(0, 0.0)
            return Verdict(True, "ok")
        failures += 1
        wait = min(BACKOFF_MAX_S, 2.0 ** (failures - 1))
        self._save_attempts(failures, now + wait)
        return Verdict(False, "wrong token", wait, failures)


class MaintenanceWindow:
    """An open window closes by itself ``duration_s`` after it opened (persisted)."""

    def __init__(self, data_dir: Path, duration_s: float = DEFAULT_WINDOW_S) -> None:
        self.path = data_dir / WINDOW_FILE
        self.duration_s = duration_s

    def open(self, reason: str, *, now: float | None = None) -> float:
        until = (time.time() if now is None else now) + self.duration_s
        _write_private(self.path, json.dumps({"until": until, "reason": reason}).encode())
        return until

    def until(self) -> float:
        try:
            return float(json.loads(self.path.read_bytes())["until"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def is_open(self, *, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.until()

    def close(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


__all__ = ["MaintenanceWindow", "TokenError", "TokenStore", "Verdict", "read_token_file"]
