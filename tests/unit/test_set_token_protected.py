"""`bastion set-token` while tamper protection guards the data dir (s22): refused before
any write, with the way (a maintenance window); an unprotected data dir is written as
before.  In scope on the lsm tier: tests/vm/test_admin_in_scope_lsm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import bastion.guard.kernel as gkernel
from bastion.cli.guard import set_token_cmd
from bastion.guard.token import TokenError, TokenStore

TOKEN = b"correct horse battery staple 42"
NEW = b"another horse battery staple 4242"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    data, pins = tmp_path / "data", tmp_path / "pins"
    TokenStore(data).set_token(TOKEN)
    (pins / "tamper" / "links").mkdir(parents=True)          # protection pinned
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(TOKEN + b"\n")
    new.write_bytes(NEW + b"\n")
    old.chmod(0o600)
    new.chmod(0o600)
    return data, pins, old, new


def _run(data: Path, pins: Path, old: Path, new: Path):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(set_token_cmd, ["--token-file", str(new), "--old-token-file", str(old),
                                              "--data-dir", str(data), "--pin-root", str(pins)])


def test_refused_untouched_while_the_data_dir_is_protected(
        setup: tuple[Path, Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, pins, old, new = setup
    asked: list[tuple[Path, Path]] = []
    monkeypatch.setattr(gkernel, "protected_subtree",
                        lambda pin_dir, path: asked.append((pin_dir, path)) or True)
    before = sorted((p.name, p.read_bytes()) for p in data.iterdir())
    r = _run(data, pins, old, new)
    assert isinstance(r.exception, TokenError) and "maintenance window" in str(r.exception), r.output
    assert asked == [(pins / "tamper", data)]
    assert sorted((p.name, p.read_bytes()) for p in data.iterdir()) == before
    assert TokenStore(data).verify(TOKEN).ok


def test_written_when_the_data_dir_is_not_the_protected_one(
        setup: tuple[Path, Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, pins, old, new = setup
    monkeypatch.setattr(gkernel, "protected_subtree", lambda pin_dir, path: False)
    r = _run(data, pins, old, new)
    assert r.exit_code == 0, (r.output, r.exception)
    assert TokenStore(data).verify(NEW).ok and not TokenStore(data).verify(TOKEN).ok
