"""cgroup v2 helpers: ids, membership, scoped child cgroups."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from bastion.errors import KernelError, Location
from bastion.kernel.bpffs import cgroup2_root


def cgroup_id(path: Path) -> int:
    """The cgroup v2 id of a cgroup directory (its inode number)."""
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise KernelError(f"no such cgroup: {exc.strerror}", errno=exc.errno or errno.ENOENT,
                          location=Location(str(path))) from exc


def create(name: str, parent: Path | None = None) -> Path:
    root = parent or cgroup2_root()
    path = root / name
    try:
        path.mkdir()
    except OSError as exc:
        raise KernelError(f"cannot create cgroup: {exc.strerror}", errno=exc.errno or errno.EIO,
                          location=Location(str(path))) from exc
    return path


def move(pid: int, path: Path) -> None:
    try:
        (path / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        raise KernelError(f"cannot move pid {pid} into cgroup: {exc.strerror}",
                          errno=exc.errno or errno.EIO, location=Location(str(path))) from exc


def remove(path: Path, timeout_s: float = 5.0) -> None:
    """Move leftover processes to the parent, then remove the cgroup."""
    if not path.exists():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            procs = (path / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return
        for pid in procs:
            try:
                (path.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        try:
            path.rmdir()
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise KernelError(f"cannot remove cgroup: {exc.strerror}", errno=exc.errno or errno.EIO,
                                  location=Location(str(path))) from exc
            time.sleep(0.02)
