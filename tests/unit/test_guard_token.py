"""The maintenance token: only a salted slow hash is kept, comparison is exact,
failures back off exponentially, a maintenance window closes by itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.guard.token import MaintenanceWindow, TokenStore, read_token_file

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
    with pytest.raises(ConfigError, match=f"{f}: the maintenance token must have at least"):
        read_token_file(f)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        read_token_file(tmp_path / "missing")
    f.write_bytes(TOKEN + b"\n")
    assert read_token_file(f) == TOKEN


def test_maintenance_window_closes_by_itself(tmp_path: Path) -> None:
    w = MaintenanceWindow(tmp_path, duration_s=600)
    assert not w.is_open()
    until = w.open("stop", now=1000.0)
    assert until == 1600.0
    assert w.is_open(now=1599.0) and not w.is_open(now=1600.5)
    assert (os.stat(w.path).st_mode & 0o777) == 0o600
    w.close()
    assert w.until() == 0.0
