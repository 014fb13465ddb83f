"""``openat2(2)`` and per-thread filesystem credentials, through ctypes.

Python's :mod:`os` has neither ``openat2`` nor ``setfsuid``.  Rollback needs
both: it resolves a recorded path only *beneath* a protected root
(``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV``: no ``..``
escape, no symlink anywhere on the way, no mount crossing) and changes a
directory only with the file owner's filesystem identity
(:func:`fs_identity`).  A kernel without ``openat2`` (before 5.6) raises
:class:`~bastion.errors.FeatureUnavailableError`: callers refuse rather than
fall back to walking a path.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from contextlib import contextmanager
from typing import Final, Iterator

from bastion.errors import FeatureUnavailableError, KernelError, Location

RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_STRICT: Final = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV

AT_FDCWD: Final = -100
_SYS_OPENAT2: Final = 437            # the same number on every asm-generic architecture
_SYS_SETGROUPS: Final = {"x86_64": 116, "aarch64": 159}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


class _Libc:
    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        self.syscall = lib.syscall
        self.syscall.restype = ctypes.c_long
        self.setfsuid = lib.setfsuid
        self.setfsuid.argtypes = [ctypes.c_uint]
        self.setfsuid.restype = ctypes.c_int
        self.setfsgid = lib.setfsgid
        self.setfsgid.argtypes = [ctypes.c_uint]
        self.setfsgid.restype = ctypes.c_int


@functools.cache
def _libc() -> _Libc:
    return _Libc()


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(dirfd, path, {flags, mode, resolve})``: an fd, or OSError with the errno.

    ``ELOOP`` means a symlink was on the way (``RESOLVE_NO_SYMLINKS``),
    ``EXDEV`` an escape from ``dirfd`` or a mount crossing.  ENOSYS (a kernel
    before 5.6, or a seccomp filter) raises FeatureUnavailableError."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    fd = int(_libc().syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd),
                             ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                             ctypes.c_size_t(ctypes.sizeof(how))))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            raise FeatureUnavailableError(
                "openat2(2) is not available (kernel < 5.6 or a seccomp filter): refusing to "
                "resolve paths without it", errno=err, location=Location("openat2"))
        raise OSError(err, os.strerror(err), path)
    return fd


def available() -> bool:
    try:
        os.close(openat2(AT_FDCWD, "/", os.O_PATH | os.O_DIRECTORY, RESOLVE_NO_SYMLINKS))
    except FeatureUnavailableError:
        return False
    return True


def _set_thread_groups(groups: list[int]) -> None:
    """setgroups(2) for the calling thread only (the raw syscall; glibc's wrapper
    changes every thread of the process)."""
    nr = _SYS_SETGROUPS.get(platform.machine())
    if nr is None:
        raise FeatureUnavailableError(f"no setgroups syscall number for {platform.machine()}",
                                      location=Location("setgroups"))
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if int(_libc().syscall(ctypes.c_long(nr), ctypes.c_size_t(len(groups)), arr)) < 0:
        err = ctypes.get_errno()
        raise KernelError(f"setgroups: {os.strerror(err)}", errno=err,
                          location=Location("setgroups"))


@contextmanager
def fs_identity(uid: int, gid: int) -> Iterator[None]:
    """Run the body with filesystem uid/gid ``uid``/``gid`` and no supplementary
    groups, on this thread only; restored on exit.

    Every permission check of a path operation in the body (create, rename,
    unlink in a directory) is then the owner's own: the body can do nothing the
    owner could not.  A fsuid other than 0 also drops CAP_DAC_OVERRIDE,
    CAP_FOWNER and CAP_CHOWN from the effective set (capabilities(7)); they
    come back when the fsuid returns to 0."""
    lib = _libc()
    old_uid, old_gid = os.geteuid(), os.getegid()
    groups = os.getgroups()
    if old_uid != 0:
        raise KernelError("fs_identity needs root (it takes a file owner's identity)",
                          location=Location("setfsuid"))
    _set_thread_groups([])
    lib.setfsgid(gid)
    lib.setfsuid(uid)
    try:
        if lib.setfsuid(0xFFFFFFFF) != uid or lib.setfsgid(0xFFFFFFFF) != gid:
            raise KernelError(f"setfsuid({uid})/setfsgid({gid}) did not take",
                              location=Location("setfsuid"))
        yield
    finally:
        lib.setfsuid(old_uid)
        lib.setfsgid(old_gid)
        _set_thread_groups(groups)


__all__ = ["AT_FDCWD", "RESOLVE_BENEATH", "RESOLVE_NO_MAGICLINKS", "RESOLVE_NO_SYMLINKS",
           "RESOLVE_NO_XDEV", "RESOLVE_STRICT", "available", "fs_identity", "openat2"]
