"""The maintenance token: the only way to turn tamper protection off.

Set at install or with ``bastion run|guardian --maintenance-token-file F``;
kept ONLY as the public half of a key pair in ``<data dir>/maintenance-token``
(0600): ``K = scrypt(token, salt)``, an Ed25519 key derived from ``K``, and
the record holds salt, scrypt parameters and the public key, nothing a
reader of the record could use in place of the token.

The token never travels (issue 13 item 11): a server (guardian or agent)
sends a fresh nonce with the salt and parameters (:meth:`TokenStore.challenge`);
the client derives the key from the token and signs
``what || nonce || server identity`` (:func:`prove`), where the server
identity (pid and start time) is taken by the client from SO_PEERCRED.  A
signature captured by an impostor server names the impostor's pid and that
one nonce: it opens nothing elsewhere.  :meth:`TokenStore.verify_proof`
checks it with the public key.  A local check (:meth:`TokenStore.verify`,
``set-token``) derives the same key and compares public keys in constant
time.  A valid token opens a maintenance window (:class:`MaintenanceWindow`)
that is logged as an alert and closes by itself (the guardian then re-arms
tamper protection).

Failed attempts (issue 14 item 4) are limited twice, in
``<data dir>/maintenance-attempts`` (so restarting the CLI does not reset it):

* per source (:func:`source_of`: the client's uid, session and executable):
  an exponential back-off (1 s, 2 s, 4 s ... 300 s) for that source only, so
  wrong tries from an attacker's session never lock out the admin's right
  token from another session; at most :data:`MAX_SOURCES` sources are kept
  (the least recently seen is forgotten first);
* a global ceiling over all sources: a bucket of :data:`GLOBAL_BURST` wrong
  tries refilled by one every :data:`GLOBAL_REFILL_S`; with it empty nothing is
  checked.  A single source backed off never empties it (its back-off rate,
  one try per 300 s, is below the refill), so only an attacker that makes a
  new source per try (``setsid``, a copied interpreter) can contend with the
  admin, and then for at most ``GLOBAL_BURST + t / GLOBAL_REFILL_S`` guesses in
  ``t`` seconds (20 + 2,880 a day) against a token of at least 16 bytes.
"""

from __future__ import annotations

import hashlib
import logging
import hmac
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import BastionError, ConfigError, Location

HASH_FILE: Final = "maintenance-token"
ATTEMPTS_FILE: Final = "maintenance-attempts"
WINDOW_FILE: Final = "maintenance-window"
MIN_TOKEN_BYTES: Final = 16
SCRYPT_N: Final = 1 << 15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
SCRYPT_N_MAX: Final = 1 << 20       # a client derives at most this much (memory ~1 GiB at r=8)
SCRYPT_R_MAX: Final = 16
SCRYPT_P_MAX: Final = 4
PROOF_CONTEXT: Final = b"bastion maintenance-token proof v1"
KEY_CONTEXT: Final = b"bastion maintenance-token signing key v1"
BACKOFF_MAX_S: Final = 300.0
MAX_SOURCES: Final = 128            # per-source back-off states kept (least recently seen dropped)
GLOBAL_BURST: Final = 20.0          # wrong tries over all sources before the ceiling bites
GLOBAL_REFILL_S: Final = 30.0       # then one more every this many seconds
LOCAL_SOURCE: Final = "local"
DEFAULT_WINDOW_S: Final = 600.0


log = logging.getLogger("bastion.guard.token")


class TokenError(BastionError):
    """A missing, wrong or rate-limited maintenance token."""


def read_token_file(path: Path) -> bytes:
    """The token in ``path``: refused (naming the file) when it is not a regular file owned
    by the caller, or when group or others may read or write it (like ssh's keys)."""
    loc = Location(str(path))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}", location=loc) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("the token file is not a regular file", location=loc)
        if st.st_uid != os.geteuid():
            raise ConfigError(f"the token file is owned by uid {st.st_uid}, not by you (uid "
                              f"{os.geteuid()}): refused (someone else could have written it)",
                              location=loc)
        if st.st_mode & 0o077:
            raise ConfigError(f"the token file's permissions {stat.S_IMODE(st.st_mode):04o} are "
                              "too open (group or others may read or write it): refused; "
                              f"chmod 600 {path}", location=loc)
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(1 << 16).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file: {exc.strerror}", location=loc) from exc
    finally:
        os.close(fd)
    if len(raw) < MIN_TOKEN_BYTES:
        raise ConfigError(f"the maintenance token must have at least {MIN_TOKEN_BYTES} bytes",
                          location=loc)
    return raw


def source_of(pid: int) -> str:
    """The source a token attempt is counted against: the client's uid, session id and
    executable (device:inode).  A session is a login (or a service); a process of the
    same uid, session and program is the same source (``LOCAL_SOURCE`` for 0)."""
    if pid <= 0:
        return LOCAL_SOURCE
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        sid = os.getsid(pid)
        exe = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return f"pid {pid} (gone)"
    return f"uid {uid} sid {sid} exe {exe.st_dev}:{exe.st_ino}"


def own_source() -> str:
    """:func:`source_of` this process (a check made here, not by a server)."""
    return source_of(os.getpid())


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


def _signing_key(k: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key of the derived secret ``k`` (never stored)."""
    return Ed25519PrivateKey.from_private_bytes(hmac.new(k, KEY_CONTEXT, hashlib.sha256).digest())


def _public(k: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return _signing_key(k).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def proof_message(what: str, nonce: bytes, server: str) -> bytes:
    """What a proof signs: the command it opens, the server's nonce and the server's
    identity as the client saw it (``"pid:start_ticks"``)."""
    return b"\0".join((PROOF_CONTEXT, what.encode(), nonce, server.encode()))


def server_binding(pid: int) -> str:
    """``"pid:start_ticks"`` of ``pid`` (the identity a proof is bound to)."""
    from bastion.procstat import read_stat

    return f"{pid}:{read_stat(pid).start_ticks}"


def _bad(what: str, exc: Exception | None = None) -> TokenError:
    return TokenError(what, location=Location("control socket"))


class Signer:
    """The client's side: the token's signing key, derived (slow: scrypt) once per set of
    server parameters, then a proof per challenge (fast).

    Refuses scrypt parameters weaker than ours (an impostor could otherwise ask
    for a cheap derivation and guess the token offline from the signature) or
    large enough to exhaust memory."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self._keys: dict[tuple[bytes, int, int, int], Ed25519PrivateKey] = {}

    def key_for(self, kdf: object) -> Ed25519PrivateKey:
        try:
            assert isinstance(kdf, dict)
            salt = bytes.fromhex(str(kdf["salt"]))
            n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise _bad(f"the server's challenge is malformed ({exc!r}): nothing was sent") from exc
        if kdf.get("alg") != "scrypt" or len(salt) < 16 \
                or not (SCRYPT_N <= n <= SCRYPT_N_MAX and n & (n - 1) == 0) \
                or not (SCRYPT_R <= r <= SCRYPT_R_MAX) or not (1 <= p <= SCRYPT_P_MAX):
            raise _bad(f"the server's challenge asks for a weak or odd key derivation ({kdf!r}): "
                       "refused, nothing was sent")
        key = (salt, n, r, p)
        if key not in self._keys:
            self._keys[key] = _signing_key(_derive(self._token, salt, n, r, p))
        return self._keys[key]

    def prove(self, challenge: dict[str, Any], what: str, server: str) -> dict[str, str]:
        """Sign ``what`` for the server (``"pid:start_ticks"``) that sent ``challenge``."""
        try:
            nonce = bytes.fromhex(str(challenge["nonce"]))
            kdf = challenge["kdf"]
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(f"the server's challenge is malformed ({exc!r}): nothing was sent") from exc
        if len(nonce) < 16:
            raise _bad(f"the server's challenge asks for a weak or odd key derivation (a nonce "
                       f"of {len(nonce)} bytes): refused, nothing was sent")
        sig = self.key_for(kdf).sign(proof_message(what, nonce, server))
        return {"sig": sig.hex(), "what": what}


def prove(token: bytes, challenge: dict[str, Any], what: str, server: str) -> dict[str, str]:
    """:meth:`Signer.prove` with a key derived for this one challenge."""
    return Signer(token).prove(challenge, what, server)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass
class Attempts:
    """The attempt counters: global credits (refilled up to :data:`GLOBAL_BURST`) and, per
    source, (failures, next allowed, last seen), oldest seen first."""

    credits: float
    sources: dict[str, tuple[int, float, float]]
    at: float = 0.0                  # when ``credits`` was counted
    valid: bool = True               # False: read from a damaged file

    @classmethod
    def from_json(cls, rec: object, now: float) -> Attempts:
        if not isinstance(rec, dict) or rec.get("v") != 2:
            # the first format's single counter: one source for everybody
            try:
                assert isinstance(rec, dict)
                n, nxt = int(rec["failures"]), float(rec["next_allowed"])
            except (AssertionError, KeyError, TypeError, ValueError):
                return cls(0.0, {}, valid=False)
            return cls(GLOBAL_BURST, {LOCAL_SOURCE: (n, nxt, now)} if n else {})
        try:
            credits, at = float(rec["credits"]), float(rec["at"])
            sources = {str(k): (int(v[0]), float(v[1]), float(v[2]))
                       for k, v in dict(rec["sources"]).items()}
        except (KeyError, TypeError, ValueError, IndexError):
            return cls(0.0, {}, valid=False)
        credits = min(GLOBAL_BURST, credits + max(0.0, now - at) / GLOBAL_REFILL_S)
        return cls(credits, dict(sorted(sources.items(), key=lambda kv: kv[1][2])), now)

    def prune(self, now: float) -> None:
        """At most :data:`MAX_SOURCES`: first those no longer backed off, then the least
        recently seen (its back-off is forgotten; the global ceiling still holds)."""
        for key in [k for k, (_, nxt, _) in self.sources.items() if nxt <= now]:
            if len(self.sources) <= MAX_SOURCES:
                return
            del self.sources[key]
        while len(self.sources) > MAX_SOURCES:
            del self.sources[next(iter(self.sources))]

    def to_json(self) -> dict[str, Any]:
        return {"v": 2, "credits": self.credits, "at": self.at,
                "sources": {k: list(v) for k, v in self.sources.items()}}


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str             # "ok", "wrong token", "rate limited", "no token set", "no token given"
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
        _write_private(self.hash_path, json.dumps(self._record(token, salt)).encode())
        self._save_attempts(Attempts(GLOBAL_BURST, {}))

    @staticmethod
    def _record(token: bytes, salt: bytes) -> dict[str, Any]:
        k = _derive(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return {"v": 2, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                "salt": salt.hex(), "pub": _public(k).hex()}

    def _load(self) -> dict[str, Any] | None:
        """The stored record (None: no token set); TokenError when unreadable."""
        try:
            rec = json.loads(self.hash_path.read_bytes())
            if not isinstance(rec, dict):
                raise ValueError("not an object")
            bytes.fromhex(rec["salt"])
            int(rec["n"]), int(rec["r"]), int(rec["p"])
            if "pub" not in rec and "hash" not in rec:
                raise KeyError("pub")
            return rec
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TokenError(f"the token hash is unreadable: {exc}",
                             location=Location(str(self.hash_path))) from exc

    def challenge(self) -> dict[str, Any]:
        """What a server sends with its nonce: the public derivation parameters
        (``{}`` when no token is set, or the record predates challenge-response)."""
        try:
            rec = self._load()
        except TokenError:
            return {}
        if rec is None or "pub" not in rec:
            return {}
        return {"kdf": {"alg": "scrypt", "salt": rec["salt"], "n": int(rec["n"]),
                        "r": int(rec["r"]), "p": int(rec["p"])}}

    def _fail(self, source: str, now: float) -> Verdict:
        """A wrong token from ``source``: its back-off doubles; one global credit spent."""
        att = self._load_attempts(now)
        src = att.sources.pop(source, None)
        failures = (src[0] if src else 0) + 1
        wait = min(BACKOFF_MAX_S, 2.0 ** (failures - 1))
        att.sources[source] = (failures, now + wait, now)     # newest last
        att.credits -= 1.0
        att.prune(now)
        self._save_attempts(att)
        return Verdict(False, "wrong token", wait, failures)

    def _succeed(self, source: str, now: float) -> None:
        att = self._load_attempts(now)
        if att.sources.pop(source, None) is not None:
            self._save_attempts(att)

    def verify_proof(self, proof: object, nonce: bytes | None, what: str, *,
                     source: str = LOCAL_SOURCE, now: float | None = None) -> Verdict:
        """Check a client's signature over ``what``, the nonce this server sent on this
        connection and this server's own identity; rate-limited like :meth:`verify`
        (``source``: :func:`source_of` the client)."""
        now = time.time() if now is None else now
        refused, failures, rec = self._admit(source, now)
        if refused is not None or rec is None:
            return refused or Verdict(False, "no token set")
        if "pub" not in rec:
            return Verdict(False, "the stored token predates challenge-response: set it again "
                           "(bastion set-token --old-token-file)")
        if not isinstance(proof, dict) or nonce is None:
            return Verdict(False, "no token given", 0.0, failures)
        if proof.get("what") != what:
            return Verdict(False, f"the proof is for {proof.get('what')!r}, not {what!r}", 0.0,
                           failures)
        try:
            sig = bytes.fromhex(str(proof.get("sig", "")))
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(rec["pub"])).verify(
                sig, proof_message(what, nonce, server_binding(os.getpid())))
        except (ValueError, InvalidSignature):
            return self._fail(source, now)
        self._succeed(source, now)
        return Verdict(True, "ok")

    def _admit(self, source: str, now: float) -> tuple[Verdict | None, int, dict[str, Any] | None]:
        """Before any check: (refusal while ``source`` is backed off, while the global
        ceiling is reached, or with no token set; the source's failure count; the record)."""
        att = self._load_attempts(now)
        failures, next_allowed, _ = att.sources.get(source, (0, 0.0, 0.0))
        if now < next_allowed:
            return Verdict(False, "rate limited", next_allowed - now, failures), failures, None
        if att.credits < 1.0:
            return (Verdict(False, "rate limited (too many wrong tokens from all sources lately)",
                            (1.0 - att.credits) * GLOBAL_REFILL_S, failures), failures, None)
        rec = self._load()
        if rec is None:
            return Verdict(False, "no token set"), failures, None
        return None, failures, rec

    def _load_attempts(self, now: float) -> Attempts:
        try:
            att = Attempts.from_json(json.loads(self.attempts_path.read_bytes()), now)
        except FileNotFoundError:
            att = Attempts(GLOBAL_BURST, {})
        except (OSError, ValueError) as exc:
            att = Attempts(0.0, {}, valid=False)
            log.error("token attempt counter unreadable (%s): %s", self.attempts_path, exc)
        att.at = now
        if not att.valid:
            # never a silent reset: a damaged counter is the global ceiling reached, refilling
            # from now on (written back so the refill can proceed)
            att.valid = True
            self._save_attempts(att)
        return att

    def _save_attempts(self, att: Attempts) -> None:
        try:
            _write_private(self.attempts_path, json.dumps(att.to_json()).encode())
        except OSError as exc:
            # read-only here (a protected data dir seen by a process that is not the
            # agent): the agent, which may write there, keeps the persistent counter
            log.warning("token attempt counter not persisted (%s): %s", self.attempts_path, exc)

    def verify(self, token: bytes, *, source: str | None = None,
               now: float | None = None) -> Verdict:
        """Check ``token`` here (``source``: this process's, :func:`own_source`); a failure
        doubles that source's wait before its next attempt."""
        now = time.time() if now is None else now
        source = own_source() if source is None else source
        refused, failures, rec = self._admit(source, now)
        if refused is not None or rec is None:
            return refused or Verdict(False, "no token set")
        salt = bytes.fromhex(rec["salt"])
        k = _derive(token, salt, int(rec["n"]), int(rec["r"]), int(rec["p"]))
        if "pub" in rec:
            ok = hmac.compare_digest(_public(k), bytes.fromhex(str(rec["pub"])))
        else:   # a record of the first format: upgrade it (drops the password-equivalent hash)
            ok = hmac.compare_digest(k, bytes.fromhex(str(rec["hash"])))
            if ok:
                try:
                    _write_private(self.hash_path, json.dumps(self._record(token, salt)).encode())
                except OSError as exc:
                    log.warning("token record not upgraded (%s): %s", self.hash_path, exc)
        if ok:
            self._succeed(source, now)
            return Verdict(True, "ok")
        return self._fail(source, now)


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


__all__ = ["Attempts", "MaintenanceWindow", "Signer", "own_source", "source_of", "TokenError", "TokenStore", "Verdict", "proof_message", "prove",
           "read_token_file", "server_binding"]
