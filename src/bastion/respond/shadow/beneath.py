"""Ransomware shield: where a shadow copy may be restored, pinned at copy time.

A recorded path is attacker-influenced text: the user who owns a protected
directory can swap any directory on it for a symlink (to /etc) after the
copy, and a process in another mount namespace reports paths that mean
something else in ours.  So a copy is *anchored* when it is taken
(:meth:`Roots.anchor`): the protected root it lies beneath (path, dev, inode)
and its parent directory's (dev, inode), and only when the path, resolved
from the root with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV``,
leads to the very inode the kernel handed us.  Rollback re-opens the parent
the same way and refuses when it is not that inode any more
(:func:`open_parent`).  Only ``O_PATH`` opens are made on the listener's
thread: they raise no fanotify permission event (no self-deadlock).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Sequence

from bastion.errors import BastionError, FeatureUnavailableError, Location
from bastion.kernel.openat2 import AT_FDCWD, RESOLVE_NO_SYMLINKS, RESOLVE_STRICT, openat2


class RestoreRefused(BastionError):
    """This file may not be restored automatically (the message says why)."""


class ParentGone(RestoreRefused):
    """A directory on the way to the file no longer exists."""


@dataclass(frozen=True)
class Anchor:
    """Where a copy was taken: its protected root and its parent directory."""

    root: str
    root_dev: int
    root_ino: int
    parent_dev: int
    parent_ino: int


@dataclass(frozen=True)
class FileState:
    """A name in its parent directory at one moment: absent, or (ino, size, mtime, ctime)."""

    present: bool
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    parent_gone: bool = False     # absent because a directory on the way was removed

    @staticmethod
    def of(st: os.stat_result | None) -> FileState:
        if st is None:
            return FileState(False)
        return FileState(True, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def split_beneath(root: str, path: str) -> tuple[str, str]:
    """(parent relative to ``root`` or ".", name); RestoreRefused unless ``path`` is
    strictly beneath ``root`` and normal (no empty, "." or ".." component)."""
    prefix = root.rstrip("/") + "/"
    rel = path[len(prefix):] if path.startswith(prefix) else ""
    parts = rel.split("/")
    if not rel or any(c in ("", ".", "..") for c in parts):
        raise RestoreRefused(f"{path} is not beneath the protected root {root}",
                             location=Location(path))
    return "/".join(parts[:-1]) or ".", parts[-1]


def lstat_at(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def fd_fstype(fd: int) -> str:
    """The filesystem type of the mount ``fd`` is on, from /proc (no call into that
    filesystem: an ``fstat`` on a FUSE mount can block on its daemon); '' if unknown."""
    try:
        with open(f"/proc/thread-self/fdinfo/{fd}", "rb") as fh:
            mnt = next((ln.split()[1] for ln in fh if ln.startswith(b"mnt_id:")), b"")
        with open("/proc/thread-self/mountinfo", "rb") as fh:
            for ln in fh:
                if ln.split(b" ", 1)[0] == mnt:
                    return ln.split(b" - ", 1)[1].split()[0].decode()
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    return ""


def open_root(root: str, dev: int, ino: int) -> int:
    """An O_PATH fd on the protected root, refused unless it is still (dev, ino)
    and not a user's FUSE mount (checked before anything asks that filesystem)."""
    try:
        fd = openat2(AT_FDCWD, root, os.O_PATH | os.O_DIRECTORY, RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        raise RestoreRefused(f"protected root {root} cannot be opened without symlinks: "
                             f"{exc.strerror}", location=Location(root)) from exc
    fstype = fd_fstype(fd)
    if not fstype or fstype.startswith("fuse"):
        os.close(fd)
        raise RestoreRefused(f"protected root {root} is on a "
                             f"{'FUSE' if fstype else 'unknown'} mount now ({fstype or '?'})",
                             location=Location(root))
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (dev, ino):
        os.close(fd)
        raise RestoreRefused(f"protected root {root} is not the directory the copy was taken "
                             f"under (inode {st.st_ino}, was {ino})", location=Location(root))
    return fd


def open_parent(rootfd: int, root: str, path: str, parent_dev: int, parent_ino: int,
                flags: int = os.O_RDONLY | os.O_DIRECTORY) -> tuple[int, str]:
    """(fd on the parent directory of ``path``, the last component), opened beneath
    ``rootfd`` with no symlink and no mount crossing, and refused unless it is the
    directory (``parent_dev``, ``parent_ino``) recorded at copy time."""
    parent, name = split_beneath(root, path)
    try:
        fd = openat2(rootfd, parent, flags | os.O_DIRECTORY, RESOLVE_STRICT)
    except FileNotFoundError as exc:
        raise ParentGone(f"parent directory of {path} not reachable beneath {root}: it no "
                         f"longer exists", location=Location(path)) from exc
    except OSError as exc:
        why = {errno.ELOOP: "a symlink is on the way", errno.EXDEV: "it leaves the protected "
               "root or crosses a mount", errno.ENOENT: "it no longer exists",
               errno.ENOTDIR: "a component is no longer a directory"}.get(
                   exc.errno or 0, exc.strerror or "")
        raise RestoreRefused(f"parent directory of {path} not reachable beneath {root}: {why}",
                             location=Location(path)) from exc
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (parent_dev, parent_ino):
        os.close(fd)
        raise RestoreRefused(f"parent directory of {path} was replaced since the copy "
                             f"(inode {st.st_ino}, was {parent_ino})", location=Location(path))
    return fd, name


class Roots:
    """The protected roots, held open (O_PATH), to anchor copies beneath them."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self._roots: list[tuple[str, int, os.stat_result]] = []
        self.unavailable = ""
        for r in roots:
            try:
                fd = openat2(AT_FDCWD, str(r), os.O_PATH | os.O_DIRECTORY, RESOLVE_NO_SYMLINKS)
            except FeatureUnavailableError as exc:
                self.unavailable = str(exc)
                break
            except OSError:
                continue
            self._roots.append((str(r), fd, os.fstat(fd)))

    def close(self) -> None:
        for _r, fd, _st in self._roots:
            os.close(fd)
        self._roots = []

    def __enter__(self) -> Roots:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def anchor(self, path: str, st: os.stat_result) -> Anchor | None:
        """The anchor of a file the kernel handed us (``st`` from its fd) at ``path``;
        None when ``path`` does not lead, beneath a root, to that very inode (another
        mount namespace, a bind mount, a rename racing the copy)."""
        for root, rfd, rst in self._roots:
            try:
                parent, name = split_beneath(root, path)
            except RestoreRefused:
                continue
            try:
                pfd = openat2(rfd, parent, os.O_PATH | os.O_DIRECTORY, RESOLVE_STRICT)
            except OSError:
                return None
            try:
                pst = os.fstat(pfd)
                cur = lstat_at(pfd, name)
            except OSError:
                return None
            finally:
                os.close(pfd)
            if cur is None or not stat.S_ISREG(cur.st_mode) or \
                    (cur.st_dev, cur.st_ino) != (st.st_dev, st.st_ino):
                return None
            return Anchor(root, rst.st_dev, rst.st_ino, pst.st_dev, pst.st_ino)
        return None

    def state_of(self, anchor: Anchor, path: str) -> FileState | None:
        """What is at ``path`` now, through its anchor; None when it cannot be reached."""
        for root, rfd, rst in self._roots:
            if (root, rst.st_dev, rst.st_ino) != (anchor.root, anchor.root_dev, anchor.root_ino):
                continue
            try:
                pfd, name = open_parent(rfd, root, path, anchor.parent_dev, anchor.parent_ino,
                                        os.O_PATH)
            except ParentGone:
                return FileState(False, parent_gone=True)
            except RestoreRefused:
                return None
            try:
                return FileState.of(lstat_at(pfd, name))
            except OSError:
                return None
            finally:
                os.close(pfd)
        return None


__all__ = ["Anchor", "FileState", "ParentGone", "RestoreRefused", "Roots", "fd_fstype", "lstat_at", "open_parent",
           "open_root", "split_beneath"]
