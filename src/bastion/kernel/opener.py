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
inode), :func:`cached_key` resolves a path from the dentry cache only
(``openat2(RESOLVE_CACHED)``: the ancestors of a file just opened are cached; a
component that needs I/O or revalidation, such as a FUSE directory slipped into
the path by a rename, fails instead of waiting), and :func:`open_flags` never
reads the opener's memory.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import functools
import os
import shutil
import tempfile
import struct
import threading
import time
import platform
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Final, Mapping, Sequence

from bastion.procstat import TICK_NS, parse_stat
from bastion.errors import BastionError, KernelError, Location
from bastion.kernel.bpffs import cgroup2_root
from bastion.policy.compile import kernel_dev

MAX_ANCESTORS: Final = 16

AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_STATX_DONT_SYNC: Final = 0x4000
AT_EMPTY_PATH: Final = 0x1000
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10
RESOLVE_CACHED: Final = 0x20
_NR_OPENAT2: Final = 437      # the same number on x86-64 and arm64
_OPEN_HOW: Final = struct.Struct("<QQQ")   # struct open_how {flags, mode, resolve}
_U64: Final = struct.Struct("<Q")
_U32X2: Final = struct.Struct("<II")
STATX_INO: Final = 0x100
_STATX_SIZE: Final = 256
_STX_INO_OFF: Final = 32      # struct statx: __u64 stx_ino
_STX_DEV_OFF: Final = 136     # __u32 stx_dev_major, __u32 stx_dev_minor


class _Statx:
    """glibc ``statx`` through ctypes (Python 3.11 has no ``os.statx``)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.statx
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._fn = fn
        sc = libc.syscall
        sc.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                       ctypes.c_size_t]
        sc.restype = ctypes.c_long
        self._openat2 = sc
        self._tls = threading.local()   # one result buffer per thread

    def key(self, path: str, flags: int, dirfd: int = AT_FDCWD) -> tuple[int, int]:
        """(kernel dev, ino) of ``path``; raises OSError."""
        buf = self._tls.__dict__.get("buf")
        if buf is None:
            buf = self._tls.buf = ctypes.create_string_buffer(_STATX_SIZE)
        if self._fn(dirfd, os.fsencode(path), flags, STATX_INO, buf) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        ino, = _U64.unpack_from(buf, _STX_INO_OFF)
        major, minor = _U32X2.unpack_from(buf, _STX_DEV_OFF)
        return (major << 20) | minor, ino

    def open_cached(self, path: str, flags: int, dirfd: int = AT_FDCWD,
                    resolve: int = 0) -> int:
        """``openat2(dirfd, path, flags, RESOLVE_CACHED | resolve)``; raises OSError
        (EAGAIN: not cached)."""
        how = _OPEN_HOW.pack(flags, 0, RESOLVE_CACHED | resolve)
        fd = int(self._openat2(_NR_OPENAT2, dirfd, os.fsencode(path), how, len(how)))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return fd


_STATX: Final = _Statx()


def inode_key(path: str) -> tuple[int, int]:
    """(kernel dev, ino) ``path`` leads to, from the cached inode (``AT_STATX_DONT_SYNC``:
    a FUSE or network filesystem is not asked); for magic links such as
    ``/proc/PID/exe``.  Raises OSError."""
    return _STATX.key(path, AT_STATX_DONT_SYNC)


def _open_cached_retry(path: str, flags: int, dirfd: int = AT_FDCWD, resolve: int = 0) -> int:
    for attempt in range(3):
        try:
            return _STATX.open_cached(path, flags, dirfd, resolve)
        except OSError as exc:   # EAGAIN also when a concurrent rename ends the RCU walk
            if exc.errno != errno.EAGAIN or attempt == 2:
                raise
    raise AssertionError("unreachable")


def cached_key(path: str, *, follow: bool = True) -> tuple[int, int]:
    """(kernel dev, ino) of ``path`` resolved from the dentry cache only, from the
    cached inode: nothing on the way may wait on a filesystem.  Raises OSError
    (EAGAIN: a component is not cached or needs revalidation)."""
    fd = _open_cached_retry(path, os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        return _STATX.key("", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, fd)
    finally:
        os.close(fd)


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
        return inode_key(f"/proc/{pid}/exe")
    except OSError:
        return (0, 0)


def locate(path: str, expect: tuple[int, int], root: int | None = None,
           unchecked: list[str] | None = None) -> tuple[bool, list[tuple[int, int]]]:
    """Does ``path`` name inode ``expect`` now (not following a last symlink), and the
    (dev, ino) of its parent directories, nearest first ([] when it does not).

    The path is resolved from the dentry cache only (a component that would need
    I/O or revalidation, such as a FUSE directory a rename slipped into the path,
    makes it unconfirmed instead of waiting).  Once the path names ``expect`` (an
    inode on a marked filesystem) its parents are walked with ``..`` and
    ``fstat``: they are that filesystem's directories and the mount points of this
    namespace above it, which only root changes.

    ``root``: an fd of another root (:func:`opener_roots`: an opener's root, the top of
    its mount namespace) to resolve ``path`` in instead of this process's: inside it
    (``RESOLVE_IN_ROOT``: ``..`` and absolute names stay in it) and following no link
    at all (a path the kernel printed has none; a link on the way is the opener's).

    ``unchecked`` (s18-fixgate): a lookup that failed because a name was not cached or
    needed revalidation (EAGAIN: ecryptfs always, NFS/FUSE/CIFS with expired timeouts)
    appends the path to it: the caller tells "could not check" from "names another
    object".  No uncached retry: a directory of the path replaced by a user's FUSE mount
    would make it wait on that user's daemon."""
    if not path.startswith("/"):
        return False, []
    dirfd, resolve, name = AT_FDCWD, 0, path
    if root is not None:
        dirfd, name = root, path.lstrip("/") or "."
        resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
    base = os.path.basename(name.rstrip("/")) or "."
    try:
        # s18-fixgate (review #3, #12): the directory first, then its last component
        # from that fd: both lookups see one tree (a RENAME_EXCHANGE between two path
        # walks made a "confirmed" parent that was not the object's).  RESOLVE_NO_XDEV:
        # a file bind-mounted over the name (a cron job over ~/.bash_history) is a mount
        # crossed, not the directory's own child (this replaces the mount-id compare).
        dfd = _open_cached_retry(os.path.dirname(name.rstrip("/")) or ("/" if root is None
                                                                        else "."),
                                 os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, dirfd, resolve)
    except OSError as exc:
        if unchecked is not None and exc.errno == errno.EAGAIN:
            unchecked.append(path)
        return False, []
    try:
        fd = _open_cached_retry(base, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW, dfd,
                                RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS)
        try:   # from the cached inode (a FUSE object is not asked), closed whatever happens
            same = _STATX.key("", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, fd) == expect
        finally:
            os.close(fd)
    except OSError as exc:
        if unchecked is not None and exc.errno == errno.EAGAIN:
            unchecked.append(path)
        same = False
    if not same:
        os.close(dfd)
        return False, []
    parents: list[tuple[int, int]] = []
    try:
        while len(parents) < MAX_ANCESTORS:
            key = _STATX.key("", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, dfd)   # no FUSE wait
            if parents and key == parents[-1]:
                break                              # ".." of the root is the root
            parents.append(key)
            up = os.open("..", os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY, dir_fd=dfd)
            os.close(dfd)
            dfd = up
    except OSError:
        pass
    finally:
        os.close(dfd)
    return True, parents


MAX_ROOT_DEPTH: Final = 16
"""How many ``..`` steps from an opener's root to its namespace's top (s18-fixgate: 64
cost up to 128 syscalls per unplaceable read on the listener thread; a chroot deeper
than this is not placed, and a read there on a credential device is refused)."""


def _mnt_ns(tid: int) -> int:
    """The nsfs inode of task ``tid``'s mount namespace (``stat`` of an nsfs link asks
    no filesystem); -1 when gone."""
    try:
        return os.stat(f"/proc/{tid}/ns/mnt").st_ino
    except OSError:
        return -1


_own_ns: list[int] = []


def _own_mnt_ns() -> int:
    """This process's mount namespace (read once: the agent does not change it)."""
    if not _own_ns:
        ns = _mnt_ns(os.getpid())
        if ns < 0:
            return ns
        _own_ns.append(ns)
    return _own_ns[0]


NS_TOP_CACHE: Final = 16
"""How many namespaces' tops :func:`opener_roots` keeps (an O_PATH fd each)."""
_ns_tops: collections.OrderedDict[int, int] = collections.OrderedDict()
_ns_lock = threading.Lock()


def _ns_top_cached(ns: int) -> int | None:
    """A dup of the cached top of namespace ``ns`` (the caller closes it); None."""
    with _ns_lock:
        fd = _ns_tops.get(ns)
        if fd is None:
            return None
        _ns_tops.move_to_end(ns)
        return os.dup(fd)


def _ns_top_keep(ns: int, fd: int) -> None:
    with _ns_lock:
        if ns in _ns_tops:
            return
        try:
            _ns_tops[ns] = os.dup(fd)
        except OSError:
            return
        while len(_ns_tops) > NS_TOP_CACHE:
            _ns, old = _ns_tops.popitem(last=False)
            os.close(old)


def forget_ns_tops() -> None:
    """Close every cached namespace top (tests; a gate's close)."""
    with _ns_lock:
        while _ns_tops:
            os.close(_ns_tops.popitem()[1])


def opener_roots(tid: int) -> list[tuple[str, int]]:
    """O_PATH fds (the caller closes them) of the roots a path the kernel printed for
    task ``tid``'s open may be relative to, other than this process's root:
    ``("root", fd)``, its root (``/proc/TID/root``: a chroot, a ``pivot_root``), and
    ``("namespace", fd)``, the top of its mount namespace (``..`` from its root until it
    stays: a file opened in another mount namespace is printed from there).  [] when
    the task is gone.

    s18-fixgate (review #4, the cost of unplaceable reads): no namespace top for a task
    in the agent's own namespace (it is "/"); another namespace's top is walked once
    and kept per namespace (nsfs inode; :data:`NS_TOP_CACHE` of them).  Any root is
    sound: :func:`locate` confirms the event's inode and walks its real parents, so a
    stale top (a ``pivot_root`` since, an nsfs number reused) only leaves an open
    unplaced (fail closed), never placed under another directory."""
    try:
        rfd = os.open(f"/proc/{tid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    out = [("root", rfd)]
    ns = _mnt_ns(tid)
    if ns < 0 or ns == _own_mnt_ns():
        return out
    try:
        cached = _ns_top_cached(ns)
    except OSError:
        return out
    if cached is not None:
        out.append(("namespace", cached))
        return out
    # statx from the cached inode: a FUSE root or mount on the way is not asked
    try:
        fd = os.dup(rfd)
    except OSError:
        return out
    try:
        prev = top = _STATX.key("", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, fd)
        for _ in range(MAX_ROOT_DEPTH):
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = up
            key = _STATX.key("", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, fd)
            if key == prev:
                break
            prev = key
        else:
            os.close(fd)
            return out     # deeper than MAX_ROOT_DEPTH: no top (unplaced: fail closed)
    except OSError:
        os.close(fd)
        return out
    if prev != top:
        _ns_top_keep(ns, fd)
        out.append(("namespace", fd))
    else:
        os.close(fd)
    return out


def stat_ppid_start(pid: int) -> tuple[int, int]:
    """(ppid, start CLOCK_BOOTTIME ns) from /proc/PID/stat; (-1, -1) if gone."""
    try:
        st = parse_stat(pid, read_proc(f"/proc/{pid}/stat"))
    except ValueError:
        return -1, -1
    return st.ppid, st.start_ns


SYSCALL_SETTLE_S: Final = 0.05
"""How long :func:`open_flags` waits for a blocked opener to be seen asleep."""


def _blocked_syscall(tid: int, settle_s: float = SYSCALL_SETTLE_S) -> bytes:
    """``/proc/TID/syscall`` of a task that is blocking in the kernel.

    A permission event is queued (and the listener woken) *before* the opener
    sleeps in fanotify's wait; read in that window the kernel answers
    ``running`` with no arguments.  The opener cannot return until answered, so
    it is asleep within microseconds: yield, then sleep briefly, until it is, for
    at most ``settle_s`` (then ``running`` is returned: flags unknown, the caller
    fails closed)."""
    line = read_proc(f"/proc/{tid}/syscall")
    if not line.startswith(b"running"):
        return line
    deadline = time.monotonic() + settle_s
    spins = 0
    while line.startswith(b"running") and time.monotonic() < deadline:
        if spins < 50:
            os.sched_yield()
        else:
            time.sleep(0.0005)
        spins += 1
        line = read_proc(f"/proc/{tid}/syscall")
    return line


# /proc/TID/stack (s27, reviews of the compiled read path): a file opened by the kernel
# on the task's behalf while its registers still show another system call -- an io_uring
# request run as task work on the way back from a blocked ``openat`` (its registers:
# that openat's), an io_uring worker (a copy of the submitter's registers), a core dump
# written from the signal path -- is never the syscall's own open.  The caller test in
# own_open tells each of them (their do_filp_open is called by io_uring or the core
# dump); these frames are looked for as well
_NOT_OWN: Final = (b"] task_work_run+", b"] get_signal+", b"] io_wq_worker+", b"coredump+")
# the open path's own callers: do_filp_open called by the open syscalls' helper;
# do_file_open_root through open_by_handle_at's; do_open_execat is execve's own
_OWN_OPEN_CALLERS: Final = frozenset({b"do_sys_openat2", b"do_sys_open"})
# a second open nested inside the caller's (a stacked filesystem opening its lower file
# with flags of its own, as eCryptfs does): not the syscall's flags
_NESTED_OPENS: Final = (b"] dentry_open+", b"] kernel_file_open+")


def _caller(text: bytes, frame: bytes, n: int = 1) -> list[bytes] | None:
    """The names of the ``n`` frames below the first ``frame`` of a ``/proc/TID/stack``
    text (its caller, then the caller's), None when ``frame`` is not there."""
    at = text.find(b"] " + frame + b"+")
    if at < 0:
        return None
    out: list[bytes] = []
    for _ in range(n):
        at = text.find(b"\n", at)
        if at < 0:
            return out
        start = text.find(b"] ", at) + 2
        end = text.find(b"+", start)
        if start < 2 or end < 0:
            return out
        out.append(text[start:end])
        at = end
    return out


def own_open(text: bytes, exec_: bool) -> bool:
    """Is the file open the blocked task waits on the one its system call makes (the
    syscall's registers then describe it)?  ``text``: its ``/proc/TID/stack``;
    ``exec_``: the open of ``execve``.  False for an open the kernel makes on the
    task's behalf in another context (io_uring task work or worker, a core dump: the
    caller of their ``do_filp_open`` is io_uring's or the core dump's, :data:`_NOT_OWN`),
    for one nested in the caller's (:data:`_NESTED_OPENS`) and for a stack it cannot read (no kallsyms, no
    CONFIG_STACKTRACE): the caller then treats the flags as unknown, which is the
    strict decision.  Only do_filp_open called by the open syscalls' helper, or
    do_file_open_root by open_by_handle_at's, is an open(2)'s own."""
    if not text or any(name in text for name in _NOT_OWN):
        return False
    got = _caller(text, b"do_filp_open")
    if exec_:
        return got == [b"do_open_execat"]
    at = text.find(b"] do_filp_open+")
    if at < 0:
        at = text.find(b"] do_file_open_root+")
    inner = text[:at]
    # an overlay's backing file is opened with the caller's own flags: not another open
    opens = inner.count(b"] do_dentry_open+") - inner.count(b"] backing_file_open+")
    if at < 0 or opens != 1 or any(name in inner for name in _NESTED_OPENS):
        return False
    if got is not None:
        return bool(got) and got[0] in _OWN_OPEN_CALLERS
    return _caller(text, b"do_file_open_root", 2) == [b"file_open_root", b"do_handle_open"]


@functools.cache
def stack_verifiable() -> str | None:
    """None when this kernel's ``/proc/TID/stack`` tells a system call's own open
    (:func:`own_open`), else why not (a kernel without stack traces or symbol names, or
    whose open path has other frames).  Probed once: a thread of this process blocked in
    a read-only ``open`` of a FIFO of its own, looked at, released.  The FIFO's directory
    is new, so no inode mark of ours (a directory object's marks its directories when
    applied) raises an event for it; the fanotify enforcer probes at its open, before it
    marks anything (an event of ours answered by our own busy listener would wait)."""
    d = tempfile.mkdtemp(prefix="bastion-ownopen-")
    fifo = os.path.join(d, "f")
    tid: list[int] = []
    started = threading.Event()

    def opener() -> None:
        tid.append(threading.get_native_id())
        started.set()
        try:
            os.close(os.open(fifo, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            pass

    try:
        os.mkfifo(fifo, 0o600)
        t = threading.Thread(target=opener, name="bastion-ownopen", daemon=True)
        t.start()
        text = b""
        try:
            if not started.wait(5):
                return "the probe thread did not start"
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                text = read_proc(f"/proc/self/task/{tid[0]}/stack")
                if b"] do_filp_open+" in text or b"fifo_open" in text:
                    break
                time.sleep(0.001)
        finally:
            try:   # a reader waits: a non-blocking write open succeeds and releases it
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError:
                pass
            t.join(5)
        if not text:
            return "/proc/TID/stack is empty or unreadable"
        if not own_open(text, False):
            names = b" <- ".join(ln.partition(b"] ")[2].partition(b"+")[0]
                                 for ln in text.splitlines()[:12])
            return f"an open's stack is not recognised ({names.decode('ascii', 'replace')})"
        return None
    except OSError as exc:
        return f"probe failed: {exc.strerror}"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def open_flags(tid: int) -> int | None:
    """The blocked opener's open flags; -1 inside execve; None when unknown.

    Read from ``/proc/TID/syscall`` (x86-64/arm64 native syscalls), and trusted only
    when ``/proc/TID/stack`` shows that the open being decided is that system call's
    own (:func:`own_open`; a creat is a write whatever its stack; on a kernel whose
    stack cannot tell, :func:`stack_verifiable`, the syscall's flags are taken as they
    are and the callers say so).  Unknown for
    ``openat2`` (its flags are in the opener's memory, which may be backed by a file
    or userfaultfd the attacker stalls: never read), for 32-bit compat tasks, for
    io_uring (its task work runs with the registers of the syscall it interrupted; a
    worker copies the submitter's) and for a core dump.
    """
    sc = _SYS
    if sc is None:
        return None
    try:
        fields = _blocked_syscall(tid).split()
        nr = int(fields[0])
        args = [int(x, 16) for x in fields[1:7]]
    except (OSError, ValueError, IndexError):
        return None
    if nr in sc.creat:
        return os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if nr in sc.exec_:
        got: int | None = -1
    else:
        idx = sc.open_flags_arg.get(nr)
        if idx is None:
            return None   # openat2 (struct open_how in the opener's memory) and the rest
        got = args[idx] & 0xFFFFFFFF
    if stack_verifiable() is None and \
            not own_open(read_proc(f"/proc/{tid}/stack"), nr in sc.exec_):
        return None
    return got


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


__all__ = ["IsOurs", "MAX_ANCESTORS", "opener_roots", "Scope", "Task", "TICK_NS", "cached_key",
           "exe_key", "forget_ns_tops", "inode_key", "locate",
           "fd_path", "open_flags", "read_proc", "stat_ppid_start", "status_field"]
