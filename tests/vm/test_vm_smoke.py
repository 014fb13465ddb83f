"""Smoke tests of the test VM itself: is the guest what the lsm-tier tests assume?

They run only inside the VM (`bash vm/run.sh`, which sets BASTION_IN_VM=1); on the
host they skip, and under CI=true conftest turns that skip into a failure — the
host's `make test` never collects tests/vm directly.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)

REPO = Path(__file__).resolve().parents[2]


def _unescape(field: str) -> str:
    """A mountinfo field with the kernel's octal escapes (\\040 for a blank) undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[tuple[str, str, str, str, str]]:
    """(mount point, mount options, fs type, source, super options) per line of
    /proc/self/mountinfo, the last mount on a path last."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fields = left.split()
        fstype, source, superopts = right.split(" ", 2)
        out.append((_unescape(fields[4]), fields[5], fstype, _unescape(source), superopts))
    return out


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) from /proc/self/mountinfo."""
    return [(mnt, fstype, superopts) for mnt, _opts, fstype, _src, superopts in _mountinfo()]


def _fstype_at(path: str) -> str | None:
    types = [fs for mnt, fs, _ in _mounts() if mnt == path]
    return types[-1] if types else None


def test_kernel_is_debian_stock_6_1() -> None:
    release = platform.release()
    assert release.startswith("6.1.") and release.endswith("-amd64"), release
    version = Path("/proc/version").read_text()
    assert "Debian" in version, version


def test_bpf_is_an_active_lsm() -> None:
    lsms = Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    assert "bpf" in lsms, lsms


def test_bpffs_mounted_and_writable() -> None:
    assert _fstype_at("/sys/fs/bpf") == "bpf"
    d = Path(tempfile.mkdtemp(dir="/sys/fs/bpf", prefix="smoke-"))
    try:
        assert d.is_dir()
    finally:
        d.rmdir()


def test_cgroup2_mounted() -> None:
    cg2 = [mnt for mnt, fs, _ in _mounts() if fs == "cgroup2"]
    assert cg2 == ["/sys/fs/cgroup"], cg2
    assert Path("/sys/fs/cgroup/cgroup.controllers").is_file()


def test_kernel_interfaces_mounted() -> None:
    assert _fstype_at("/sys/kernel/security") == "securityfs"
    assert _fstype_at("/sys/kernel/tracing") == "tracefs"
    assert _fstype_at("/sys/kernel/debug") == "debugfs"
    assert Path("/sys/kernel/btf/vmlinux").is_file()


def test_tmp_writable_repo_read_only() -> None:
    assert _fstype_at("/tmp") == "tmpfs"
    with tempfile.NamedTemporaryFile(dir="/tmp") as f:
        f.write(b"ok")
        f.flush()
        assert Path(f.name).read_bytes() == b"ok"
    with pytest.raises(OSError):
        (REPO / ".vm-write-probe").write_text("must not land on the host")


def test_running_as_root_with_the_repo_venv() -> None:
    assert os.geteuid() == 0
    assert Path(sys.prefix) == REPO / ".venv", sys.prefix


def test_venv_python_imports_bastion() -> None:
    py = REPO / ".venv" / "bin" / "python"
    out = subprocess.run(
        [str(py), "-c", "import bastion, sys; print(bastion.__file__)"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip()
    assert Path(out).is_relative_to(REPO / "src"), out


def test_checkout_is_its_own_read_only_share_at_its_host_path() -> None:
    # vm/run.sh shares the checkout as 9p tag "repo" and /init mounts it at the
    # host path after the guest's tmpfs mounts, so a checkout under /tmp works.
    on_repo = [(opts, fs, src) for mnt, opts, fs, src, _ in _mountinfo() if mnt == str(REPO)]
    assert on_repo, f"nothing mounted at {REPO}"
    opts, fs, src = on_repo[-1]
    assert (fs, src) == ("9p", "repo"), on_repo
    assert "ro" in opts.split(","), opts
    assert Path.cwd().resolve() == REPO


def test_results_share_is_writable_9p() -> None:
    res = os.environ["BASTION_VM_RESULTS"]
    on_res = [(fs, src) for mnt, _opts, fs, src, _ in _mountinfo() if mnt == res]
    assert on_res and on_res[-1] == ("9p", "results"), on_res
    assert (Path(res) / "repo").read_text() == f"{REPO}\n"
    probe = Path(res) / "smoke-write-probe"
    probe.write_text("ok")
    try:
        assert probe.read_text() == "ok"
    finally:
        probe.unlink()
