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
