"""The maintenance token: only a salted slow hash is kept, comparison is exact,
failures back off exponentially, a maintenance window closes by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.guard.token import (BACKOFF_MAX_S, GLOBAL_BURST, GLOBAL_REFILL_S, MAX_SOURCES,
                                 MaintenanceWindow, TokenStore, read_token_file, source_of)

TOKEN = b"correct horse battery staple"


def test_only_a_salted_hash_is_kept(tmp_path: Path) -> None:
    a, b = TokenStore(tmp_path / "a"), TokenStore(tmp_path / "b")
    a.set_token(TOKEN)
    b.set_token(TOKEN)
    raw_a, raw_b = a.hash_path.read_bytes(), b.hash_path.read_bytes()
    assert TOKEN not in raw_a and TOKEN.hex().encode() not in raw_a
    assert raw_a != raw_b                       # salted: same token, different records
    assert b'"kdf": "scrypt"' in raw_a
    assert (a.hash_path.stat().st_mode & 0o777) == 0o600
    assert a.verify(TOKEN).ok and b.verify(TOKEN).ok


def test_wrong_tokens_back_off_exponentially(tmp_path: Path) -> None:
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    t = 1000.0
    v1 = s.verify(b"x" * 20, now=t)
    assert (v1.ok, v1.reason, v1.failures, v1.retry_after_s) == (False, "wrong token", 1, 1.0)
    assert s.verify(TOKEN, now=t + 0.5).reason == "rate limited"   # even the right one waits
    v2 = s.verify(b"y" * 20, now=t + 1.0)
    assert (v2.failures, v2.retry_after_s) == (2, 2.0)
    v3 = s.verify(b"z" * 20, now=t + 3.0)
    assert (v3.failures, v3.retry_after_s) == (3, 4.0)
    ok = s.verify(TOKEN, now=t + 7.0)
    assert ok.ok and s.verify(b"w" * 20, now=t + 7.0).failures == 1   # success resets


def test_no_token_and_short_tokens(tmp_path: Path) -> None:
    s = TokenStore(tmp_path)
    assert not s.is_set() and s.verify(TOKEN).reason == "no token set"
    with pytest.raises(ConfigError, match="at least"):
        s.set_token(b"short")
    f = tmp_path / "t"
    f.write_bytes(b"tiny\n")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match=f"{f}: the maintenance token must have at least"):
        read_token_file(f)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")
    f.write_bytes(TOKEN + b"\n")
    assert read_token_file(f) == TOKEN


# ---- issue 14.4 -----------------------------------------------------------------------

def guess(s: TokenStore, source: str, now: float) -> str:
    """A wrong proof (cheap: no key derivation) from ``source``: the verdict's reason."""
    return s.verify_proof({"what": "stop", "sig": "00" * 64}, b"n" * 32, "stop", source=source,
                          now=now).reason

def test_wrong_tries_from_one_source_never_lock_out_the_right_token_from_another(
        tmp_path: Path) -> None:
    """Attack: an attacker's wrong tries made the back-off global, so the admin's right
    token was refused ("rate limited") for up to 300 s after each of them."""
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    t = 1000.0
    for i in range(8):           # the attacker keeps trying as soon as it may
        v = s.verify(b"guess %02d of the attacker" % i, source="attacker", now=t)
        assert v.reason == "wrong token" and v.failures == i + 1
        assert s.verify(TOKEN, source="attacker", now=t + v.retry_after_s / 2).reason \
            == "rate limited"    # its own source waits, even with the right token
        t += v.retry_after_s
    admin = s.verify(TOKEN, source="admin", now=t - 1)
    assert admin.ok, admin
    # the attacker's back-off is untouched by the admin's success
    assert s.verify(b"another guess, wrong one", source="attacker", now=t).failures == 9


def test_a_global_ceiling_bounds_guesses_from_fresh_sources(tmp_path: Path) -> None:
    """A new source per try (setsid, a copied interpreter) escapes the per-source back-off:
    the global ceiling still allows only GLOBAL_BURST + t / GLOBAL_REFILL_S guesses."""
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    t, tried = 5000.0, 0
    for i in range(int(GLOBAL_BURST) + 5):
        tried += guess(s, f"fresh {i}", t) == "wrong token"
    assert tried == GLOBAL_BURST
    v = s.verify(TOKEN, source="admin", now=t)
    assert v.reason.startswith("rate limited") and "all sources" in v.reason
    assert v.retry_after_s == pytest.approx(GLOBAL_REFILL_S)
    # an hour later: at most 3600 / GLOBAL_REFILL_S more guesses went through
    for i in range(1000):
        tried += guess(s, f"later {i}", t + 1 + i * 3600 / 1000) == "wrong token"
    assert tried <= GLOBAL_BURST + 3600 / GLOBAL_REFILL_S + 1
    assert s.verify(TOKEN, source="admin", now=t + 3600 + GLOBAL_REFILL_S + 1).ok


def test_one_source_alone_never_empties_the_global_ceiling(tmp_path: Path) -> None:
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    t = 0.0
    for i in range(200):           # ~15 hours of a single source trying as soon as allowed
        v = s.verify_proof({"what": "stop", "sig": "00" * 64}, b"n" * 32, "stop",
                           source="attacker", now=t)
        assert v.reason == "wrong token"
        t += v.retry_after_s
    assert v.retry_after_s == BACKOFF_MAX_S
    assert s.verify(TOKEN, source="admin", now=t - 1).ok


def test_per_source_state_is_bounded(tmp_path: Path) -> None:
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    for i in range(3 * MAX_SOURCES):
        assert guess(s, f"src {i}", i * GLOBAL_REFILL_S) == "wrong token"
    rec = json.loads(s.attempts_path.read_bytes())
    assert len(rec["sources"]) <= MAX_SOURCES
    assert f"src {3 * MAX_SOURCES - 1}" in rec["sources"]      # the newest kept


def test_a_damaged_counter_is_the_ceiling_not_a_reset(tmp_path: Path) -> None:
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    s.attempts_path.write_text("{not json")
    v = s.verify(TOKEN, source="admin", now=100.0)
    assert v.reason.startswith("rate limited") and not v.ok
    assert s.verify(TOKEN, source="admin", now=100.0 + GLOBAL_REFILL_S).ok


def test_the_source_of_a_client_is_its_uid_session_and_program() -> None:
    me = source_of(os.getpid())
    assert me == f"uid {os.geteuid()} sid {os.getsid(0)} exe " \
        f"{os.stat('/proc/self/exe').st_dev}:{os.stat('/proc/self/exe').st_ino}"
    child = subprocess.run([sys.executable, "-c", "import os, sys; os.setsid(); "
                            "from bastion.guard.token import own_source; print(own_source())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() != me and child.stdout.startswith(f"uid {os.geteuid()} sid ")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644])
def test_a_token_file_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Attack: a token file group/other can write (or read) was used as is."""
    f = tmp_path / "token"
    f.write_bytes(TOKEN + b"\n")
    f.chmod(mode)
    with pytest.raises(ConfigError, match=f"{f}: the token file's permissions {mode:04o} are too "
                                          "open.*chmod 600"):
        read_token_file(f)


def test_a_token_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_bytes(TOKEN + b"\n")
    f.chmod(0o600)
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another uid")
    os.chown(f, 65534, 65534)
    with pytest.raises(ConfigError, match=f"{f}: the token file is owned by uid 65534, not by you"):
        read_token_file(f)


def test_maintenance_window_closes_by_itself(tmp_path: Path) -> None:
    w = MaintenanceWindow(tmp_path, duration_s=600)
    assert not w.is_open()
    until = w.open("stop", now=1000.0)
    assert until == 1600.0
    assert w.is_open(now=1599.0) and not w.is_open(now=1600.5)
    assert (os.stat(w.path).st_mode & 0o777) == 0o600
    w.close()
    assert w.until() == 0.0
