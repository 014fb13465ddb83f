"""Facts about the task blocked in a fanotify permission event, from procfs only.

A permission listener must never open a file that could be marked (it would
wait on its own answer); procfs and cgroupfs are never marked, so everything
here reads ``/proc`` (one ``read`` per file), ``stat``s paths (stat raises no
permission event) or reads magic links.  The opener is blocked in ``open``
while these run, so its tid cannot be reused unless it is SIGKILLed meanwhile.

Nothing here may wait on the opener: the opener's executable may live on its
own FUSE filesystem (``stat`` of it would wait for the FUSE daemon, which the
attacker can stall for ever), and its memory may be backed by such a file or
by userfaultfd (reading it would wait the same way).  :func:`exe_key` therefore
uses ``statx(AT_STATX_DONT_SYNC)`` through the ``/proc/TID/exe`` magic link (the
kernel jumps to the mapped file without a lookup and answers from the cached
inode), and :func:`open_flags` never reads the opener's memory.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Final, Mapping

from bastion.procstat import TICK_NS, parse_stat
from bastion.errors import BastionError, KernelError, Location
from bastion.kernel.bpffs import cgroup2_root
from bastion.policy.compile import kernel_dev

MAX_ANCESTORS: Final = 16

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_STATX_DONT_SYNC: Final = 0x4000
STATX_INO: Final = 0x100
_STATX_SIZE: Final = 256
_STX_INO_OFF: Final = 32      # struct statx: __u64 stx_ino
_STX_DEV_OFF: Final = 136     # __u32 stx_dev_major, __u32 stx_dev_minor


class _Statx:
    """glibc ``statx`` through ctypes (Python 3.11 has no ``os.statx``)."""

    def __init__(self) -> None:
        fn = ctypes.CDLL(None, use_errno=True).statx
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._fn = fn

    def key(self, path: str, flags: int) -> tuple[int, int]:
        """(kernel dev, ino) of ``path``; raises OSError."""
        buf = ctypes.create_string_buffer(_STATX_SIZE)
        if self._fn(AT_FDCWD, os.fsencode(path), flags, STATX_INO, buf) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        raw = buf.raw
        ino = int.from_bytes(raw[_STX_INO_OFF:_STX_INO_OFF + 8], "little")
        major = int.from_bytes(raw[_STX_DEV_OFF:_STX_DEV_OFF + 4], "little")
        minor = int.from_bytes(raw[_STX_DEV_OFF + 4:_STX_DEV_OFF + 8], "little")
        return (major << 20) | minor, ino


_STATX: Final = _Statx()


def cached_key(path: str, *, follow: bool = True) -> tuple[int, int]:
    """(kernel dev, ino) of ``path`` from the cached inode (``AT_STATX_DONT_SYNC``:
    a FUSE or network filesystem is not asked).  Raises OSError."""
    return _STATX.key(path, AT_STATX_DONT_SYNC | (0 if follow else AT_SYMLINK_NOFOLLOW))


@dataclass(frozen=True)
class _Syscalls:
    """Native syscall numbers whose flags say what an open is for."""

    open_flags_arg: Mapping[int, int]   # syscall -> index of its flags argument (0-based)
    creat: frozenset[int]
    openat2: int
    exec_: frozenset[int]


_SYSCALLS: Final = MappingProxyType({
    "x86_64": _Syscalls(MappingProxyType({2: 1, 257: 2, 304: 2}), frozenset({85}), 437,
                        frozenset({59, 322, 134})),
    "aarch64": _Syscalls(MappingProxyType({56: 2, 265: 2}), frozenset(), 437, frozenset({221, 281})),
})
_SYS: Final = _SYSCALLS.get(platform.machine())


def read_proc(path: str) -> bytes:
    """A small procfs file in one read (b"" when the task is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 4096)
    except OSError:
        return b""
    finally:
        os.close(fd)


def status_field(tid: int, name: bytes) -> int:
    """The first number of ``name:`` in /proc/TID/status; -1 when gone."""
    for line in read_proc(f"/proc/{tid}/status").split(b"\n"):
        k, _, v = line.partition(b":")
        if k == name:
            return int(v.split()[0])
    return -1


def fd_path(efd: int) -> str:
    """The path of an event fd (readlink of the magic link, " (deleted)" dropped)."""
    path = os.readlink(f"/proc/self/fd/{efd}")
    return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path


def exe_key(pid: int) -> tuple[int, int]:
    """(dev, ino) of the task's executable; (0, 0) for kernel threads and exited tasks.

    Never waits on the executable's filesystem (see the module docstring).
    """
    if pid <= 0:
        return (0, 0)
    try:
        return cached_key(f"/proc/{pid}/exe")
    except OSError:
        return (0, 0)


def ancestors(path: str) -> list[tuple[int, int]]:
    """(dev, ino) of the parent directories of ``path``, nearest first (cached statx only;
    the caller checks the path still names its inode)."""
    out: list[tuple[int, int]] = []
    if not path.startswith("/"):
        return out
    p = os.path.dirname(path)
    while len(out) < MAX_ANCESTORS:
        try:
            out.append(cached_key(p))
        except OSError:
            break
        if p == "/":
            break
        p = os.path.dirname(p)
    return out


def stat_ppid_start(pid: int) -> tuple[int, int]:
    """(ppid, start CLOCK_BOOTTIME ns) from /proc/PID/stat; (-1, -1) if gone."""
    try:
        st = parse_stat(pid, read_proc(f"/proc/{pid}/stat"))
    except ValueError:
        return -1, -1
    return st.ppid, st.start_ns


def open_flags(tid: int) -> int | None:
    """The blocked opener's open flags; -1 inside execve; None when unknown.

    Read from ``/proc/TID/syscall`` (x86-64/arm64 native syscalls).  Unknown
    for ``openat2`` (its flags are in the opener's memory, which may be backed
    by a file or userfaultfd the attacker stalls: never read), for 32-bit
    compat tasks and for io_uring workers.
    """
    sc = _SYS
    if sc is None:
        return None
    try:
        fields = read_proc(f"/proc/{tid}/syscall").split()
        nr = int(fields[0])
        args = [int(x, 16) for x in fields[1:7]]
    except (OSError, ValueError, IndexError):
        return None
    if nr in sc.exec_:
        return -1
    if nr in sc.creat:
        return os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    idx = sc.open_flags_arg.get(nr)
    if idx is not None:
        return args[idx] & 0xFFFFFFFF
    return None   # openat2 (struct open_how in the opener's memory) and the rest


@dataclass(frozen=True)
class Task:
    tid: int
    tgid: int
    ppid: int
    uid: int
    euid: int
    gid: int
    cgroup_id: int


IsOurs = Callable[[int], bool]
"""``is_ours(tgid)``: is this process exempt by exact identity (the agent, its guardian)?"""


class Scope:
    """Which openers a listener decides for: not this process (``self_tgid``,
    default this process, and whatever ``is_ours`` accepts) and, with
    ``scope_cgroup_id`` set, only tasks in that cgroup or its descendants."""

    def __init__(self, *, self_tgid: int = 0, scope_cgroup_id: int = 0,
                 is_ours: IsOurs | None = None) -> None:
        self.self_tgid = self_tgid or os.getpid()
        self.scope_cgroup_id = scope_cgroup_id
        self.is_ours = is_ours
        self._cg_root: Path | None = None

    def resolve(self) -> str | None:
        """Find the cgroup v2 mount; raises without one when scoped, else says why."""
        try:
            self._cg_root = cgroup2_root()
        except BastionError as exc:
            if self.scope_cgroup_id:
                raise KernelError(f"fanotify scope: no cgroup v2 hierarchy: {exc}",
                                  location=Location("cgroup2")) from exc
            return str(exc)
        return None

    def is_self_tgid(self, tgid: int) -> bool:
        return tgid == self.self_tgid or (self.is_ours is not None and tgid > 0
                                          and self.is_ours(tgid))

    def is_self(self, tid: int) -> bool:
        """Is thread ``tid`` this process's (or one ``is_ours`` exempts)?"""
        if self.self_tgid == os.getpid():
            try:
                os.stat(f"/proc/self/task/{tid}")
                return True
            except OSError:
                if self.is_ours is None:
                    return False
        try:
            tgid = status_field(tid, b"Tgid")
        except (ValueError, IndexError):
            return False
        return self.is_self_tgid(tgid)

    def task(self, tid: int, *, cgroup: bool = True) -> Task | None:
        status = read_proc(f"/proc/{tid}/status")
        if not status:
            return None
        vals: dict[bytes, list[bytes]] = {}
        for line in status.split(b"\n"):
            k, _, v = line.partition(b":")
            if k in (b"Tgid", b"PPid", b"Uid", b"Gid"):
                vals[k] = v.split()
        uids = vals.get(b"Uid", [b"0", b"0"])
        return Task(tid=tid, tgid=int(vals[b"Tgid"][0]), ppid=int(vals.get(b"PPid", [b"0"])[0]),
                    uid=int(uids[0]), euid=int(uids[1]) if len(uids) > 1 else int(uids[0]),
                    gid=int(vals.get(b"Gid", [b"0"])[0]),
                    cgroup_id=self.cgroup_id(tid) if cgroup else 0)

    def _cgroup_path(self, tid: int) -> Path | None:
        if self._cg_root is None:
            return None
        for line in read_proc(f"/proc/{tid}/cgroup").split(b"\n"):
            if line.startswith(b"0::"):
                rel = os.fsdecode(line[3:]).lstrip("/")
                return self._cg_root / rel if rel else self._cg_root
        return None

    def cgroup_id(self, tid: int) -> int:
        """The v2 cgroup id (inode of its directory) of ``tid``; 0 when unknown."""
        p = self._cgroup_path(tid)
        if p is None:
            return 0
        try:
            return os.stat(p).st_ino
        except OSError:
            return 0

    def in_scope(self, tid: int, cgroup_id: int) -> bool:
        """Is the task in the scope cgroup or one of its descendants?"""
        if cgroup_id == self.scope_cgroup_id:
            return True
        p = self._cgroup_path(tid)
        root = self._cg_root
        while p is not None and root is not None and p != root and p != p.parent:
            p = p.parent
            try:
                if os.stat(p).st_ino == self.scope_cgroup_id:
                    return True
            except OSError:
                return False
        return False

    def out_of_scope(self, tid: int) -> bool:
        """Scoped, and ``tid`` is outside the scope cgroup."""
        return bool(self.scope_cgroup_id) and not self.in_scope(tid, self.cgroup_id(tid))


__all__ = ["IsOurs", "MAX_ANCESTORS", "Scope", "Task", "TICK_NS", "ancestors", "cached_key",
           "exe_key",
           "fd_path", "open_flags", "read_proc", "stat_ppid_start", "status_field"]
