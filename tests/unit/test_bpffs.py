"""mountinfo parsing and the bpffs guard — no root (bastion.kernel.bpffs)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from bastion.errors import FeatureUnavailableError, KernelError
from bastion.kernel.bpffs import (
    cgroup2_root,
    fs_type_of,
    is_mounted,
    parse_mountinfo,
    remove_pins,
)

HYBRID = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
50 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpf rw,mode=700
60 22 0:50 / /mnt/with\\040space rw - tmpfs none rw
"""


def test_parse_mountinfo_fields_and_escapes() -> None:
    entries = parse_mountinfo(HYBRID)
    assert len(entries) == 7
    cg = entries[3]
    assert (cg.mount_point, cg.root, cg.fstype, cg.source) == (
        Path("/sys/fs/cgroup/unified"),
        "/",
        "cgroup2",
        "cgroup2",
    )
    assert entries[-1].mount_point == Path("/mnt/with space")


def test_fs_type_and_is_mounted() -> None:
    entries = parse_mountinfo(HYBRID)
    assert fs_type_of(Path("/sys/fs/bpf/bastion/x"), entries) == "bpf"
    assert fs_type_of(Path("/sys/fs/bpffoo"), entries) == "sysfs"
    assert fs_type_of(Path("/etc"), entries) == "ext4"
    assert is_mounted(Path("/sys/fs/bpf"), "bpf", entries)
    assert not is_mounted(Path("/sys/fs/bpf"), "tracefs", entries)


def test_cgroup2_root_hybrid_and_unified() -> None:
    assert cgroup2_root(parse_mountinfo(HYBRID)) == Path("/sys/fs/cgroup/unified")
    unified = "30 1 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert cgroup2_root(parse_mountinfo(unified)) == Path("/sys/fs/cgroup")
    with pytest.raises(FeatureUnavailableError):
        cgroup2_root(parse_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"))


def test_remove_pins_refuses_a_directory_not_on_bpffs(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("x")
    with pytest.raises(KernelError) as exc:
        remove_pins(tmp_path)
    assert exc.value.errno == errno.EXDEV
    assert (tmp_path / "keep").exists()
    assert remove_pins(tmp_path / "absent") == []


def test_remove_pins_holds_a_bounded_number_of_fds_on_a_deep_tree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s21 review F3: the walk held one O_PATH fd (and one stack frame) per level; now at
    most ``REMOVE_DEPTH`` directories are open at once, files and symlinks below the cap
    are unlinked and our own layout is removed as before (deepest first)."""
    import os
    from bastion.kernel import bpffs
    monkeypatch.setattr(bpffs, "_require_bpffs", lambda p: None)
    root = tmp_path / "pins"
    (root / "tamper" / "maps").mkdir(parents=True)
    (root / "tamper" / "maps" / "tamper_idents").write_bytes(b"")
    deep = root / "tamper" / "links"
    deep.mkdir()
    for i in range(60):
        deep = deep / "x"
        deep.mkdir()
        if i % 7 == 0:
            (deep / f"f{i}").write_bytes(b"")
            (deep / f"l{i}").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "keep").write_bytes(b"k")
    real_open, real_close = os.open, os.close
    live: set[int] = set()
    most = [0]

    def opened(*a: object, **k: object) -> int:
        fd = real_open(*a, **k)  # type: ignore[arg-type]
        live.add(fd)
        most[0] = max(most[0], len(live))
        return fd

    def closed(fd: int) -> None:
        live.discard(fd)
        real_close(fd)
    monkeypatch.setattr(bpffs.os, "open", opened)
    monkeypatch.setattr(bpffs.os, "close", closed)
    removed = remove_pins(root)
    assert not root.exists() and (tmp_path / "outside" / "keep").exists()
    assert most[0] <= bpffs.REMOVE_DEPTH + 3, most[0]
    assert len(removed) == 60 + 2 * 9 + 5          # x dirs, files and links, our layout
    assert removed[-1] == root and removed.index(root / "tamper" / "maps" / "tamper_idents") \
        < removed.index(root / "tamper" / "maps")
    assert all(len(p.relative_to(root).parts) <= bpffs.REMOVE_DEPTH + 1 for p in removed)
