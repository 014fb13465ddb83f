"""libbpf is loaded by absolute path from a directory only root can change (issue 13
item 12): never through LD_LIBRARY_PATH or the loader's search, and a library in a
user-writable place is refused with an error naming it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bastion.errors import KernelError
from bastion.kernel import _ffi


def test_the_loaded_libbpf_is_the_resolved_system_file() -> None:
    p = _ffi.libbpf_path()
    assert p.is_absolute() and not p.is_symlink() and p.name.startswith("libbpf.so.1")
    assert any(p.parent == d.resolve() for d in _ffi.LIBBPF_DIRS)
    maps = Path("/proc/self/maps").read_text()
    assert str(p) in maps, "the libbpf mapped is not the one checked"


def test_ld_library_path_does_not_choose_the_library(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "libbpf.so.1").write_bytes(b"\x7fELF not really")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    assert tmp_path not in _ffi.find_libbpf().parents


@pytest.mark.skipif(os.geteuid() != 0, reason="files owned by root need root")
def test_a_libbpf_in_a_user_writable_directory_is_refused(tmp_path: Path) -> None:
    real = _ffi.libbpf_path()
    for mode, why in ((0o777, "writable by others"), (0o775, "writable by group")):
        d = tmp_path / f"lib{mode:o}"
        d.mkdir()
        shutil.copy(real, d / "libbpf.so.1")
        os.chmod(d, mode)
        with pytest.raises(KernelError, match=why) as exc:
            _ffi.find_libbpf([d])
        assert str(d) in str(exc.value) and "refusing to load" in str(exc.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_libbpf_owned_by_a_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "lib"
    d.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    lib = d / "libbpf.so.1"
    shutil.copy(_ffi.libbpf_path(), lib)
    os.chown(lib, 65534, 65534)
    with pytest.raises(KernelError, match="owned by uid 65534"):
        _ffi.find_libbpf([d])
    os.chown(lib, 0, 0)
    os.chown(d, 65534, 65534)
    with pytest.raises(KernelError, match=f"{d}.*owned by uid 65534|owned by uid 65534"):
        _ffi.find_libbpf([d])


def test_a_symlink_into_tmp_is_refused(tmp_path: Path) -> None:
    """/usr/lib/.../libbpf.so.1 -> /tmp/x: the resolved file decides (sticky /tmp is
    writable by others)."""
    d = tmp_path / "lib"
    d.mkdir()
    target = Path("/tmp") / f"bastion-test-libbpf-{os.getpid()}.so"
    shutil.copy(_ffi.libbpf_path(), target)
    try:
        (d / "libbpf.so.1").symlink_to(target)
        with pytest.raises(KernelError, match="refusing to load.*/tmp"):
            _ffi.trusted_file(d / "libbpf.so.1")
    finally:
        target.unlink()


def test_not_found_names_the_directories(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=str(tmp_path)):
        _ffi.find_libbpf([tmp_path])
