"""Where a shadow copy may go back: the pure path split and openat2's refusals
(no root needed; the restore itself is tested in tests/kernel/test_rollback_attacks.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bastion.errors import FeatureUnavailableError
from bastion.kernel import openat2 as o2
from bastion.respond.shadow.beneath import RestoreRefused, split_beneath


@pytest.mark.parametrize("path", ["/r", "/r/", "/r/../etc/passwd", "/r/a//b", "/rx/a",
                                  "/r/./a", "r/a", "/etc/passwd", "/r/a/.."])
def test_split_refuses_what_is_not_strictly_beneath(path: str) -> None:
    with pytest.raises(RestoreRefused, match="not beneath the protected root /r"):
        split_beneath("/r", path)


def test_split() -> None:
    assert split_beneath("/r", "/r/a") == (".", "a")
    assert split_beneath("/r/", "/r/a/b/c") == ("a/b", "c")


def test_openat2_refuses_symlinks_escapes_and_mount_crossings(tmp_path: Path) -> None:
    (tmp_path / "root" / "d").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "etc")
    (tmp_path / "root" / "rel").symlink_to("d")           # even one that stays beneath
    rfd = o2.openat2(o2.AT_FDCWD, str(tmp_path / "root"), os.O_PATH | os.O_DIRECTORY, 0)
    try:
        fd = o2.openat2(rfd, "d", os.O_PATH | os.O_DIRECTORY, o2.RESOLVE_STRICT)
        assert os.fstat(fd).st_ino == (tmp_path / "root" / "d").stat().st_ino
        os.close(fd)
        for path, err in (("link", errno.ELOOP), ("rel", errno.ELOOP), ("../etc", errno.EXDEV),
                          (str(tmp_path / "etc"), errno.EXDEV)):
            with pytest.raises(OSError) as exc:
                o2.openat2(rfd, path, os.O_PATH, o2.RESOLVE_STRICT)
            assert exc.value.errno == err, path
        if os.path.ismount("/proc"):
            pfd = o2.openat2(o2.AT_FDCWD, "/", os.O_PATH | os.O_DIRECTORY, 0)
            try:
                with pytest.raises(OSError) as exc:
                    o2.openat2(pfd, "proc/self", os.O_PATH, o2.RESOLVE_NO_XDEV)
                assert exc.value.errno == errno.EXDEV
            finally:
                os.close(pfd)
    finally:
        os.close(rfd)


def test_enosys_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without openat2 (here: a syscall number nothing implements) raises
    FeatureUnavailableError naming openat2 -- never a silent path walk."""
    monkeypatch.setattr(o2, "_SYS_OPENAT2", 1023)
    with pytest.raises(FeatureUnavailableError, match="openat2.*not available") as exc:
        o2.openat2(o2.AT_FDCWD, "/", os.O_PATH, 0)
    assert exc.value.errno == errno.ENOSYS
    assert not o2.available()
