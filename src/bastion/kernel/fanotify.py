"""The one fanotify permission listener: group, inode marks, listener thread, watchdog.

:class:`PermissionListener` owns a ``FAN_CLASS_CONTENT`` group and answers
every permission event it reads with the :class:`Verdict` of a ``decide``
function its owner passes in.  The HIPS file enforcer
(:mod:`bastion.enforce.fanotify`), the ransomware shield
(:mod:`bastion.respond.shadow`) and the tamper file guard
(:mod:`bastion.guard.fanguard`) each compose one; none of them reads or
answers events itself.

Kernel-safety rules this module keeps (a stalled permission listener freezes
every process that opens a marked file, including the agent's own shell):

* Only inode marks (:meth:`PermissionListener.mark`), never a mount or a
  filesystem: a whole-filesystem mark costs ~30x per open on this host.
* The listener thread never opens a file that could be marked, and neither
  may ``decide``: facts come from ``fstat`` of the event fd and from procfs
  (:mod:`bastion.kernel.opener`).  It **must never log to a marked path**:
  log lines go through :mod:`logging`, whose handlers must write to stderr or
  a file no mark covers; an exception is logged as frame names only
  (formatting a traceback opens ``.py`` sources through ``linecache``).
* A watchdog thread answers every permission event whose answer has not
  been written within ``decision_timeout_s`` with the event's *fallback*
  (counted as ``watchdog_allows`` or ``watchdog_denies``), and drains and
  answers the queue itself while the listener is stalled or not running.
  The fallback is ``FAN_ALLOW`` unless the owner passes ``fallback``: a cheap
  function (``fstat`` of the event fd, dict lookups, procfs reads; never a
  path walk) that returns ``FAN_DENY`` for the inodes a deny rule covers, so
  a stalled decision fails closed there.  It is asked at most once per
  event and only when needed: by the watchdog when the decision is overdue
  or when it drains the queue, by the listener when ``decide`` raised; an
  event answered in time never asks it (the hot path stays one ``fstat``).
  An overdue answer is written only if the event is still the one pending
  under that fd number (the listener may answer and close it meanwhile).
* Every event is answered: an exception in ``decide`` answers the fallback
  (counted as ``errors`` and ``error_allows`` or ``error_denies``) and the
  listener goes on with the next event.
* Every fail-open is counted: ``fail_opens`` in :meth:`PermissionListener.stats`
  is ``watchdog_allows + error_allows + overflows`` (a queue overflow makes
  the kernel allow the opens it dropped); owners raise an alert when it grows.
* ``deadline_s`` (seconds after :meth:`PermissionListener.open`) is a
  dead-man switch: past it every event is allowed (without calling
  ``decide``) and all marks are removed.
* Closing the fanotify fd (also when the process dies) makes the kernel
  allow every pending event and drop every mark.

The loop itself is compiled when it can be (:class:`FastLoop`,
``src/native/fanloop.c``, built by ``make native`` and loaded only from a path
root alone can change): it reads the events, answers ``FAN_ALLOW`` itself for
the inodes its owner published with :meth:`PermissionListener.set_fast_allow`
(inodes ``decide`` would allow for every task: statx of the event fd, a table
lookup, one ``writev``), and hands every other event to the Python loop
above, unchanged.  While a table is published it keeps reading for
``spin_us`` after an event before it sleeps in ``poll`` (a listener whose
events all go to Python never spins); while it spins after fast answers its
thread is pinned to the CPU its last opener ran on (an opener waits for its
answer, so that CPU is free: no cross-CPU wake-up per event) and unpinned before it
sleeps.  The events of the batch it holds sit in slots a
compare-and-swap hands to exactly one answerer: the loop, or the watchdog once
the batch is ``decision_timeout_s`` old (answered with their fallback,
counted like any overdue event).  A publish waits for the batches still using
the previous table.  Without the library the listener runs in Python
(logged; ``compiled_loop`` is 0 in :meth:`PermissionListener.stats`).
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import re
import select
import stat
import statistics
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final, Iterable, Literal

from bastion.errors import KernelError, Location
from bastion.policy.compile import kernel_dev

log = logging.getLogger(__name__)

# ---- <linux/fanotify.h> ------------------------------------------------------------

FAN_CLOEXEC: Final = 0x00000001
FAN_NONBLOCK: Final = 0x00000002
FAN_CLASS_CONTENT: Final = 0x00000004
FAN_REPORT_TID: Final = 0x00000100

FAN_MARK_ADD: Final = 0x00000001
FAN_MARK_REMOVE: Final = 0x00000002
FAN_MARK_FLUSH: Final = 0x00000080
FAN_MARK_INODE: Final = 0x00000000   # neither FAN_MARK_MOUNT nor FAN_MARK_FILESYSTEM

FAN_OPEN_PERM: Final = 0x00010000
FAN_ACCESS_PERM: Final = 0x00020000
FAN_OPEN_EXEC_PERM: Final = 0x00040000
FAN_Q_OVERFLOW: Final = 0x00004000
FAN_EVENT_ON_CHILD: Final = 0x08000000
FAN_ONDIR: Final = 0x40000000
FAN_PERM_EVENTS: Final = FAN_OPEN_PERM | FAN_ACCESS_PERM | FAN_OPEN_EXEC_PERM

FAN_ALLOW: Final = 0x01
FAN_DENY: Final = 0x02
FANOTIFY_METADATA_VERSION: Final = 3

_META: Final = struct.Struct("<IBBHQii")      # struct fanotify_event_metadata
_RESPONSE: Final = struct.Struct("<iI")       # struct fanotify_response
_READ_BUF: Final = 64 * 1024
_IOV_MAX: Final = 1024                        # UIO_MAXIOV: iovecs per writev
_INIT_FLAGS: Final = FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID

AT_FDCWD: Final = -100
THREAD_NICE: Final = -10
"""Nice value of the listener and watchdog threads.  Every open of a marked inode
on the host waits for them: at the default weight the opener woken by an answer
preempts the listener before it has closed the event (half of the measured
decision time here); under CPU load from other tasks they are scheduled ahead of
them, keeping decisions away from the watchdog's fallback."""
DEFAULT_MAX_DIRS: Final = 10_000


# ---- libc ------------------------------------------------------------------------------

_AT_EMPTY_PATH: Final = 0x1000
_MAX_HANDLE_SZ: Final = 128


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * _MAX_HANDLE_SZ)]


class _Handles:
    """name_to_handle_at / open_by_handle_at (s16-fixgate): a mark is removed through
    its inode, not its path (a marked directory moved away keeps its mark otherwise)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        self._n2h = lib.name_to_handle_at
        self._obh = lib.open_by_handle_at
        self._n2h.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_FileHandle),
                              ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self._n2h.restype = ctypes.c_int
        self._obh.argtypes = [ctypes.c_int, ctypes.POINTER(_FileHandle), ctypes.c_int]
        self._obh.restype = ctypes.c_int

    def handle(self, fd: int) -> tuple[int, bytes, int] | None:
        """(type, bytes, mount id) of the inode ``fd`` is open on; None when its
        filesystem has no handles."""
        fh = _FileHandle(handle_bytes=_MAX_HANDLE_SZ)
        mnt = ctypes.c_int(0)
        if int(self._n2h(fd, b"", ctypes.byref(fh), ctypes.byref(mnt), _AT_EMPTY_PATH)) < 0:
            return None
        return fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes]), mnt.value

    @staticmethod
    def mount_fd(mount_id: int) -> int | None:
        """A directory fd (not O_PATH: open_by_handle_at refuses one) on the root of
        mount ``mount_id`` (/proc/self/mountinfo); None when it is not found."""
        try:
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f:
                    fields = line.split(b" ", 5)
                    if len(fields) > 4 and int(fields[0]) == mount_id:
                        where = re.sub(rb"\\([0-7]{3})",
                                       lambda m: bytes([int(m.group(1), 8)]), fields[4])
                        return os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
                                       | os.O_NONBLOCK)
        except (OSError, ValueError):
            return None
        return None

    def open(self, mount_fd: int, handle: tuple[int, bytes, int]) -> int:
        """An O_PATH fd on the inode of ``handle`` (CAP_DAC_READ_SEARCH)."""
        kind, raw, _mnt = handle
        fh = _FileHandle(handle_bytes=len(raw), handle_type=kind)
        ctypes.memmove(fh.f_handle, raw, len(raw))
        fd = int(self._obh(mount_fd, ctypes.byref(fh), os.O_PATH | os.O_CLOEXEC))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd


class _Libc:
    """fanotify_init / fanotify_mark through ctypes (errno kept)."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            self._init = lib.fanotify_init
            self._mark = lib.fanotify_mark
        except (OSError, AttributeError) as exc:
            raise KernelError(f"fanotify: libc has no fanotify_init/fanotify_mark: {exc}",
                              location=Location("fanotify")) from exc
        self._init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self._init.restype = ctypes.c_int
        self._mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                               ctypes.c_char_p]
        self._mark.restype = ctypes.c_int

    def init(self, flags: int, event_f_flags: int) -> int:
        fd = int(self._init(flags, event_f_flags))
        if fd < 0:
            err = ctypes.get_errno()
            why = ("needs CAP_SYS_ADMIN" if err == errno.EPERM else
                   "kernel built without CONFIG_FANOTIFY_ACCESS_PERMISSIONS or flag unsupported"
                   if err == errno.EINVAL else os.strerror(err))
            raise KernelError(f"fanotify_init(FAN_CLASS_CONTENT) failed: {why}", errno=err,
                              location=Location("fanotify permission events"))
        return fd

    def mark(self, fan_fd: int, flags: int, mask: int, path: str | None) -> None:
        rc = int(self._mark(fan_fd, flags, mask, AT_FDCWD,
                            None if path is None else os.fsencode(path)))
        if rc < 0:
            err = ctypes.get_errno()
            raise KernelError(f"fanotify_mark(flags {flags:#x}, mask {mask:#x}) failed: "
                              f"{os.strerror(err)}", errno=err,
                              location=Location(path or "fanotify inode marks"))


def group_available() -> str | None:
    """None when a ``FAN_CLASS_CONTENT`` group can be created here; else why not."""
    try:
        os.close(_Libc().init(FAN_CLASS_CONTENT | FAN_CLOEXEC, os.O_RDONLY))
    except KernelError as exc:
        return exc.message
    return None


def supported() -> str | None:
    """None when fanotify permission events work here; else why not.

    Creates a group and puts (then removes) an inode mark on a fresh file in
    a private temp directory; nothing ever opens that file, so no event is
    raised.
    """
    try:
        libc = _Libc()
        fd = libc.init(_INIT_FLAGS, os.O_RDONLY | os.O_LARGEFILE)
    except KernelError as exc:
        return str(exc)
    try:
        with tempfile.TemporaryDirectory(prefix="bastion-fanotify-probe-") as d:
            probe = Path(d) / "probe"
            probe.touch()
            libc.mark(fd, FAN_MARK_ADD | FAN_MARK_INODE, FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM,
                      str(probe))
            libc.mark(fd, FAN_MARK_FLUSH, 0, None)
    except (KernelError, OSError) as exc:
        return f"fanotify permission marks unavailable: {exc}"
    finally:
        os.close(fd)
    return None


# ---- the compiled fast path ---------------------------------------------------------------

FANLOOP_LIB: Final = "libbastion_fanloop.so"
_FANLOOP_ABI: Final = 2
_SLOTS: Final = 1024              # fanloop.c SLOTS: events a call can hand back
DEFAULT_SPIN_US: Final = 50
"""How long the compiled loop keeps reading after its last event before it sleeps in
``poll``: the next open of a hot marked file is then read without a wake-up of the
listener (bounded: an idle host spends nothing, a busy one at most this per event)."""


class _BfanEvent(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int32), ("pid", ctypes.c_int32), ("mask", ctypes.c_uint64)]


class FastLoop:
    """``src/native/fanloop.c`` through ctypes: the listener loop that answers the
    published allow table itself and hands every other event to Python (see
    that file for the contract with the watchdog).  Calls release the GIL."""

    def __init__(self, path: Path | None = None, spin_us: int = DEFAULT_SPIN_US) -> None:
        from bastion.kernel._ffi import trusted_file
        from bastion.paths import native_library

        lib_path = trusted_file(path or native_library(FANLOOP_LIB))
        try:
            lib = ctypes.CDLL(str(lib_path), use_errno=True)
        except OSError as exc:
            raise KernelError(f"cannot load the compiled fanotify loop: {exc}",
                              location=Location(str(lib_path))) from exc
        p, i32, i64, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_uint32
        ev_p = ctypes.POINTER(_BfanEvent)
        for name, res, args in (
                ("bfan_abi", i32, []), ("bfan_new", p, [u32]), ("bfan_free", None, [p]),
                ("bfan_publish", i32, [p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]),
                ("bfan_stack_own_open", i32, [ctypes.c_char_p]),
                ("bfan_run", i32, [p, i32, i32, i32, ev_p, i32]),
                ("bfan_rescue", i32, [p, i64, ev_p, i32]),
                ("bfan_stop", None, [p, i32]), ("bfan_set_stall", None, [p, i64]),
                ("bfan_busy_ns", i64, [p]),
                ("bfan_set_marks", i32, [p, i32, u32, i32, i32, i32]),
                ("bfan_marks_ready", None, [p]),
                ("bfan_stats", i32, [p, ctypes.POINTER(ctypes.c_uint64),
                                     ctypes.POINTER(ctypes.c_float), i32])):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        if lib.bfan_abi() != _FANLOOP_ABI:
            raise KernelError(f"compiled fanotify loop speaks ABI {lib.bfan_abi()}, not "
                              f"{_FANLOOP_ABI}: rebuild it with 'make native'",
                              location=Location(str(lib_path)))
        ctx = lib.bfan_new(spin_us)
        if not ctx:
            raise KernelError("compiled fanotify loop: out of memory", location=Location(str(lib_path)))
        self._lib = lib
        self._ctx: int | None = ctx
        self.path = lib_path
        self.spin_us = spin_us
        self._out = (_BfanEvent * _SLOTS)()
        self._rescued = (_BfanEvent * _SLOTS)()
        self._counts = (ctypes.c_uint64 * 6)()
        self._lat = (ctypes.c_float * 4096)()
        self._free_lock = threading.Lock()   # stats() from any thread vs free() at close

    def _c(self) -> int:
        if self._ctx is None:
            raise KernelError("compiled fanotify loop is closed", location=Location("fanotify"))
        return self._ctx

    def stack_own_open(self, text: bytes) -> bool:
        """The loop's judgement of a ``/proc/TID/stack`` text: is the open the task waits
        on its system call's own (test seam: the same as :func:`.opener.own_open`)?"""
        return bool(self._lib.bfan_stack_own_open(text))

    def publish(self, allow_open: frozenset[tuple[int, int]],
                allow_exec: frozenset[tuple[int, int]],
                allow_read: frozenset[tuple[int, int]] = frozenset(), *,
                read_anywhere: bool = False, nosubj: tuple[bool, bool, bool] = (False, False, False),
                subject_exes: frozenset[tuple[int, int]] = frozenset()) -> None:
        """Make these the inodes answered ALLOW without Python (open, exec, a read-only
        open: the opener's flags read from ``/proc/TID/syscall`` by the loop; with
        ``read_anywhere``, a read-only open of any inode: the entry (0, 0)); and, for an
        opener whose executable (``/proc/TID/exe``) is none of ``subject_exes``, every
        open, read-only open or exec of any inode as ``nosubj`` (open, read, exec) says;
        when it returns, no batch answers from the previous table any more."""
        bits: dict[tuple[int, int], int] = {}
        for k in allow_open:
            bits[k] = bits.get(k, 0) | 1
        for k in allow_exec:
            bits[k] = bits.get(k, 0) | 2
        for k in allow_read:
            bits[k] = bits.get(k, 0) | 4
        anyb = (4 if read_anywhere else 0) | (8 if nosubj[0] else 0) | \
            (16 if nosubj[1] else 0) | (32 if nosubj[2] else 0)
        if anyb:
            bits[(0, 0)] = anyb   # no inode has number 0: the loop reads it as "any inode"
        if anyb & (8 | 16 | 32):
            for k in subject_exes:
                bits[k] = bits.get(k, 0) | 64
        flat = (ctypes.c_uint64 * (3 * len(bits) or 1))()
        for n, ((dev, ino), b) in enumerate(bits.items()):
            flat[3 * n], flat[3 * n + 1], flat[3 * n + 2] = dev, ino, b
        if self._lib.bfan_publish(self._c(), flat, len(bits)) != 0:
            raise KernelError("compiled fanotify loop: out of memory for the allow table",
                              location=Location("fanotify"))

    def run(self, fan_fd: int, wake_fd: int, timeout_ms: int) -> list[tuple[int, int, int]]:
        """Block until events need Python (mask, fd, tid each), or [] on timeout/wake."""
        n = self._lib.bfan_run(self._c(), fan_fd, wake_fd, timeout_ms, self._out, _SLOTS)
        if n < 0:
            raise OSError(-n, os.strerror(-n))
        out = self._out
        return [(out[i].mask, out[i].fd, out[i].pid) for i in range(n)]

    def rescue(self, timeout_s: float) -> list[tuple[int, int, int]]:
        """(mask, fd, tid) of the events of a batch held ``timeout_s`` or more, now the
        caller's to answer and close; [] when the loop is not stalled."""
        n = self._lib.bfan_rescue(self._c(), int(timeout_s * 1e9), self._rescued, _SLOTS)
        r = self._rescued
        return [(r[i].mask, r[i].fd, r[i].pid) for i in range(n)]

    def busy_s(self) -> float | None:
        """``time.monotonic()`` at which the batch being handled was read; None if idle."""
        ns = int(self._lib.bfan_busy_ns(self._c()))
        return ns / 1e9 if ns else None

    def stop(self) -> None:
        self._lib.bfan_stop(self._c(), 1)

    def set_stall(self, seconds: float) -> None:
        """Test seam: the loop sleeps this long after each read (0: never)."""
        self._lib.bfan_set_stall(self._c(), int(seconds * 1e9))

    def stats(self) -> tuple[int, list[float]]:
        """(fast allows so far, latencies in us of the fast answers since the last call)."""
        with self._free_lock:
            n = self._lib.bfan_stats(self._c(), self._counts, self._lat, len(self._lat))
            return int(self._counts[2]), [float(self._lat[i]) for i in range(n)]

    def errors(self) -> int:
        return int(self._counts[3])

    def read_checks(self) -> tuple[int, int]:
        """(read-only opens trusted by the open context's marks, by the stack read) as of
        the last :meth:`stats`."""
        return int(self._counts[4]), int(self._counts[5])

    def set_marks(self, tids_fd: int, words: int, counts_fd: int, bdi_fd: int,
                  need_sysfs: bool = True) -> None:
        """Map the open context's bitmap and counts (:mod:`bastion.kernel.openctx`) and
        keep the devices directory ``bdi_fd`` (duplicated); before :meth:`run`.  Reads
        are trusted on them after :meth:`marks_ready`."""
        r = self._lib.bfan_set_marks(self._c(), tids_fd, words, counts_fd, bdi_fd,
                                     int(need_sysfs))
        if r == -errno.EXDEV:
            raise KernelError("compiled fanotify loop: the backing devices directory is not "
                              "sysfs (something is mounted over it)", errno=errno.EXDEV,
                              location=Location("/sys/class/bdi"))
        if r < 0:
            raise KernelError(f"compiled fanotify loop: cannot map the open context: "
                              f"{os.strerror(-r)}", errno=-r, location=Location("fanotify"))

    def marks_ready(self) -> None:
        self._lib.bfan_marks_ready(self._c())

    def free(self) -> None:
        """Free the context (only once the loop has returned for good)."""
        with self._free_lock:
            if self._ctx is not None:
                self._lib.bfan_free(self._ctx)
                self._ctx = None


def load_fast_loop(spin_us: int = DEFAULT_SPIN_US) -> tuple[FastLoop | None, str | None]:
    """(the compiled loop, None), or (None, why not) when it is missing or refused."""
    try:
        return FastLoop(spin_us=spin_us), None
    except KernelError as exc:
        return None, str(exc)


def subdirs(top: str, top_st: os.stat_result, max_dirs: int) -> list[tuple[str, tuple[int, int]]]:
    """``top`` and its subdirectories on the same filesystem, (path, (dev, ino)) each,
    breadth first (the shallowest first: a caller that keeps only ``max_dirs`` of a
    tree too large keeps the levels nearest its top).

    Symlinks are not followed; another filesystem is not entered (like the
    kernel's dentry walk).  Stops after a little more than ``max_dirs``: the
    caller refuses a tree that large, or keeps its first ``max_dirs``.
    """
    out = [(top, (kernel_dev(top_st.st_dev), top_st.st_ino))]
    queue = collections.deque([top])
    while queue:
        root = queue.popleft()
        try:
            with os.scandir(root) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        for d in names:
            p = os.path.join(root, d)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if st.st_dev != top_st.st_dev or not stat.S_ISDIR(st.st_mode):
                continue
            out.append((p, (kernel_dev(st.st_dev), st.st_ino)))
            if len(out) > max_dirs:
                return out
            queue.append(p)
    return out


# ---- what decide() sees and returns ---------------------------------------------------


class PermEvent:
    """One permission event: the opener ``tid`` is blocked until it is answered.

    ``fd`` is the listener's: read it with ``fstat``/``pread``, never close it.
    A plain slotted class (built once per event on the hot path).
    """

    __slots__ = ("mask", "fd", "tid", "t_read", "_key")

    def __init__(self, mask: int, fd: int, tid: int, t_read: float) -> None:
        self.mask = mask
        self.fd = fd
        self.tid = tid
        self.t_read = t_read          # time.monotonic() when the listener read it
        self._key: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"PermEvent(mask={self.mask:#x}, fd={self.fd}, tid={self.tid})"

    @property
    def is_exec(self) -> bool:
        return bool(self.mask & FAN_OPEN_EXEC_PERM)

    @property
    def key(self) -> tuple[int, int]:
        """(dev, ino) of the opened inode (kernel dev encoding), from one ``fstat`` of
        the event fd shared by the fallback and ``decide``."""
        key = self._key
        if key is None:
            st_dev = os.fstat(self.fd)
            key = self._key = (kernel_dev(st_dev.st_dev), st_dev.st_ino)
        return key


Shortcut = Literal["self_allows", "out_of_scope", "not_marked", "gone", "deadline_allows"]
"""A counter of :meth:`PermissionListener.stats` an in-time ALLOW also increments."""


@dataclass(frozen=True)
class Verdict:
    """The answer to one permission event.

    ``after`` is called once the answer is written, with True when it was in
    time and False when the watchdog (or close) had already allowed the open;
    it runs on the listener thread and must keep the same rules as ``decide``.
    """

    response: int = FAN_ALLOW                       # FAN_ALLOW or FAN_DENY
    shortcut: Shortcut | None = None
    after: Callable[[bool], None] | None = None

    @staticmethod
    def allow(shortcut: Shortcut | None = None,
              after: Callable[[bool], None] | None = None) -> Verdict:
        return Verdict(FAN_ALLOW, shortcut, after)

    @staticmethod
    def deny(after: Callable[[bool], None] | None = None) -> Verdict:
        return Verdict(FAN_DENY, None, after)


ALLOW: Final = Verdict()
_DEADLINE_ALLOW: Final = Verdict(FAN_ALLOW, "deadline_allows")
_BATCH_HOLD_S: Final = 0.0005   # a batch's ready answers wait at most ~this for the next decision


def _frames(exc: BaseException) -> str:
    """Where ``exc`` was raised, as frame names only (formatting source lines opens files)."""
    tb = exc.__traceback__
    where = []
    while tb is not None:
        where.append(f"{tb.tb_frame.f_code.co_name}:{tb.tb_lineno}")
        tb = tb.tb_next
    return " < ".join(reversed(where))

Decide = Callable[[PermEvent], Verdict]

Fallback = Callable[[PermEvent], int]
"""``fallback(event)``: ``FAN_ALLOW`` or ``FAN_DENY``, the answer the watchdog (or an
exception in ``decide``) gives the event.  It runs on the watchdog thread
(overdue, drained) or the listener thread (``decide`` raised), possibly while
``decide`` still runs: it must be cheap, must never block (no path walk, no
file open, no read of the opener's memory) and must not rely on ``decide``."""


@dataclass
class ListenerCounters:
    events: int = 0
    perm_events: int = 0
    allows: int = 0              # ALLOW answers written in time by the listener
    watchdog_allows: int = 0     # fail-opens: answered ALLOW by the watchdog
    watchdog_denies: int = 0     # fail-closed: answered DENY by the watchdog (fallback)
    error_allows: int = 0        # decide raised; the fallback allowed
    error_denies: int = 0        # decide raised; the fallback denied
    late_decisions: int = 0      # decided after the watchdog (or close) had allowed
    errors: int = 0
    self_allows: int = 0
    out_of_scope: int = 0
    not_marked: int = 0          # stale mark during a swap, or no plan: allowed
    gone: int = 0                # the opener vanished before we could look at it
    deadline_allows: int = 0
    overflows: int = 0
    orphan_marks: int = 0        # stale marks neither path nor handle reached: kept until close
    handle_unmarks: int = 0      # marks removed through the inode's handle (path moved)
    latencies_us: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=4096))


_COUNTS: Final = ("events", "perm_events", "allows", "watchdog_allows", "watchdog_denies",
                  "late_decisions", "errors", "error_allows", "error_denies", "self_allows", "out_of_scope", "not_marked", "gone",
                  "deadline_allows", "overflows", "orphan_marks", "handle_unmarks")


def parse_fdinfo_marks(text: bytes
                       ) -> tuple[set[tuple[int, int]], set[tuple[int, bytes]]] | None:
    """The inode marks of a fanotify group's fdinfo (``fanotify ino:<hex> sdev:<hex> ...
    fhandle-bytes:<hex> fhandle-type:<hex> f_handle:<hex bytes>``): their (kernel dev,
    ino) and their (handle type, handle bytes); None when a mark line is malformed (the
    caller then trusts its own records: no mark is taken for gone)."""
    keys: set[tuple[int, int]] = set()
    handles: set[tuple[int, bytes]] = set()
    for line in text.split(b"\n"):
        if not line.startswith(b"fanotify ino:"):
            continue
        fields = dict(f.split(b":", 1) for f in line.split()[1:] if b":" in f)
        try:
            keys.add((int(fields[b"sdev"], 16), int(fields[b"ino"], 16)))
        except (KeyError, ValueError):
            return None
        try:
            raw = bytes.fromhex(fields[b"f_handle"].decode())
            n = int(fields[b"fhandle-bytes"], 16)
            if len(raw) == n:
                handles.add((int(fields[b"fhandle-type"], 16), raw))
        except (KeyError, ValueError):
            pass    # no handle printed (a filesystem without one): its sdev:ino stands
    return keys, handles


class PermissionListener:
    """A fanotify permission group answered by ``decide`` (see the module docstring).

    Typical use::

        lis = PermissionListener(decide, deadline_s=None)
        lis.open(); lis.start()       # start before marking: no event waits for nobody
        with lis.mark_lock:
            lis.mark(path, (dev, ino), FAN_OPEN_PERM)
        ...
        lis.close()

    Owners change marks under :attr:`mark_lock`, which the deadline and
    :meth:`close` take to flush every mark: no mark is added after either.
    """

    def __init__(self, decide: Decide, *, deadline_s: float | None = None,
                 decision_timeout_s: float = 0.2, fallback: Fallback | None = None,
                 thread_nice: int | None = THREAD_NICE, compiled: bool = True,
                 spin_us: int = DEFAULT_SPIN_US) -> None:
        if decision_timeout_s <= 0:
            raise ValueError("decision_timeout_s must be > 0")
        if thread_nice is not None and not -20 <= thread_nice <= 19:
            raise ValueError(f"thread_nice must be in -20..19, not {thread_nice}")
        if not 0 <= spin_us <= 10_000:
            raise ValueError(f"spin_us must be in 0..10000, not {spin_us}")
        self.thread_nice = thread_nice
        self.compiled = compiled
        self.spin_us = spin_us
        self.compiled_why: str | None = None   # why the compiled loop is not used
        self._fast: FastLoop | None = None
        self._fast_allows = 0
        self._read_checks = (0, 0)
        self.decide = decide
        self.fallback = fallback
        self.deadline_s = deadline_s
        self.decision_timeout_s = decision_timeout_s
        self.mark_lock = threading.Lock()
        self.c = ListenerCounters()
        self._libc: _Libc | None = None
        self._fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._deadline_at: float | None = None
        self._expired = False
        # inode -> its file handle; mount id -> a fd on its root (open_by_handle_at's)
        self._handles: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self._mount_fds: dict[int, int] = {}
        self._handle_lib: _Handles | None = None
        # take a handle per mark (to remove it after its path moved): the owner opts in
        # (a mount's root is opened for reading: no event where no FAN_ONDIR mark is)
        self.keep_handles = False
        self._closed = False
        self._stop = threading.Event()
        self._lock = threading.Lock()                 # pending answers, fd lifetime
        # event fd -> (time read, event, its fallback or 0 until asked: on a stall, a
        # failed decide or a drain; the hot path never asks it)
        self._pending: dict[int, tuple[float, PermEvent, int]] = {}
        self._busy_since: float | None = None
        self._loop_running = False
        self._listener: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._listener_owns_fd = False

    # ---- lifecycle -----------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The fanotify group fd (-1 when not open); for /proc/self/fdinfo checks."""
        return self._fd

    @property
    def is_open(self) -> bool:
        return self._fd >= 0 and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def expired(self) -> bool:
        return self._expired

    def open(self, *, group_fd: int | None = None) -> PermissionListener:
        """Create the fanotify group and start the watchdog.

        ``group_fd`` adopts a descriptor instead (the listener closes it):
        unit tests pass one end of a socketpair that speaks the fanotify
        wire format; such a group cannot be marked.
        """
        if self._fd >= 0:
            return self
        if group_fd is not None:
            self._fd = group_fd
        else:
            self._libc = _Libc()
            try:
                self._handle_lib = _Handles()
            except (OSError, AttributeError) as exc:
                log.warning("fanotify: no file handles (%s): a moved mark stays until close",
                            exc)
            self._fd = self._libc.init(_INIT_FLAGS, os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.compiled and self._fast is None:
            self._fast, self.compiled_why = load_fast_loop(self.spin_us)
            if self._fast is None:
                log.warning("fanotify: compiled listener loop unavailable (%s): every event "
                            "is decided in Python (slower; 'make native' builds it)",
                            self.compiled_why)
        if self.deadline_s is not None:
            self._deadline_at = time.monotonic() + self.deadline_s
        self._watchdog = threading.Thread(target=self._watchdog_loop, name="bastion-fan-watchdog",
                                          daemon=True)
        self._watchdog.start()
        return self

    def start(self) -> PermissionListener:
        """Run the listener in a daemon thread."""
        if self._fd < 0:
            self.open()
        if self._listener is None or not self._listener.is_alive():
            self._listener = threading.Thread(target=self.run, name="bastion-fan-listener",
                                              daemon=True)
            self._listener.start()
        return self

    def close(self) -> None:
        """Remove every mark, allow anything pending, close the group."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._fast is not None:
            self._fast.stop()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        with self.mark_lock:
            self.flush_marks("close")
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=max(2.0, 4 * self.decision_timeout_s))
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2.0)
        self._allow_all_pending()
        self._drain(count=False)
        with self._lock:
            if listener is not None and listener.is_alive():
                # stuck in decide(): it closes the fd on its way out, so the fd
                # number cannot be reused under its feet.
                self._listener_owns_fd = True
            else:
                self._close_fds()

    def _close_fds(self) -> None:
        fast = self._fast
        if fast is not None and self._watchdog is not None and not self._watchdog.is_alive():
            listener = self._listener
            if listener is None or not listener.is_alive() \
                    or listener is threading.current_thread():
                self._fast_allows = fast.stats()[0]
                self._read_checks = fast.read_checks()
                fast.free()
                self._fast = None
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._wake_r = self._wake_w = -1

    # ---- marks (callers hold mark_lock) -------------------------------------------------

    def marked_inodes(self) -> set[tuple[int, int]] | None:
        """(kernel dev, ino) of every inode mark the kernel holds for this group, from
        ``/proc/self/fdinfo/<group fd>`` (``fanotify ino:<hex> sdev:<hex> ...``); None
        when it cannot be read.  A mark goes with its inode (the last unlink): an inode
        number reused since has none, whatever this process recorded."""
        if self._fd < 0:
            return None
        try:
            with open(f"/proc/self/fdinfo/{self._fd}", "rb") as f:
                text = f.read()
        except OSError:
            return None
        parsed = parse_fdinfo_marks(text)
        if parsed is None:
            return None
        keys, handles = parsed
        # s18-fixgate (review #5): btrfs prints the superblock's sdev, the recorded key has
        # the subvolume's anonymous dev (fstat): matched by the mark's file handle instead
        # (else every btrfs mark was "gone" and re-marked on every pass)
        keys |= {key for key, h in self._handles.items() if (h[0], h[1]) in handles}
        return keys

    def mark(self, path: str, key: tuple[int, int], mask: int) -> None:
        """Add ``mask`` to the inode mark of ``path``, checked to still be inode ``key``.

        Raises :class:`KernelError` (fanotify_mark) or :class:`OSError` (the path).
        """
        self._mark_path(FAN_MARK_ADD, mask, path, key)

    def unmark(self, path: str, key: tuple[int, int], mask: int) -> None:
        """Remove ``mask`` bits from the mark of inode ``key``; a mark whose path
        moved stays until close (counted ``orphan_marks``)."""
        if not mask:
            return
        try:
            self._mark_path(FAN_MARK_REMOVE, mask, path, key)
            return
        except (OSError, KernelError) as exc:
            if getattr(exc, "errno", 0) == errno.ENOENT and isinstance(exc, KernelError):
                return   # the kernel has no such mark (inode gone): nothing to remove
            if isinstance(exc, OSError) and self._unmark_by_handle(mask, key):
                return   # the path moved: removed through the inode itself
            self.c.orphan_marks += 1
            log.warning("fanotify: stale mark on inode %d:%d (%s) kept until close: %s",
                        key[0], key[1], path, exc)

    def _unmark_by_handle(self, mask: int, key: tuple[int, int]) -> bool:
        """Remove ``mask`` from the mark of inode ``key`` through the handle kept when it
        was marked; True when done (or the kernel has no such mark)."""
        h = self._handles.get(key)
        mfd = self._mount_fds.get(h[2]) if h is not None else None
        if h is None or mfd is None or self._handle_lib is None or self._libc is None:
            return False
        try:
            fd = self._handle_lib.open(mfd, h)
        except OSError as exc:
            return exc.errno == errno.ESTALE    # the inode is gone: so is its mark
        try:
            st = os.fstat(fd)
            if (kernel_dev(st.st_dev), st.st_ino) != key:
                return False
            try:
                self._libc.mark(self._fd, FAN_MARK_REMOVE | FAN_MARK_INODE, mask,
                                f"/proc/self/fd/{fd}")
            except KernelError as exc:
                if exc.errno != errno.ENOENT:
                    return False
        finally:
            os.close(fd)
        self.c.handle_unmarks += 1
        return True

    def _forget_handles(self) -> None:
        self._handles.clear()
        for fd in self._mount_fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._mount_fds.clear()

    def flush_marks(self, why: str) -> None:
        """Remove every inode mark of the group."""
        self._forget_handles()
        if self._fd < 0 or self._libc is None:
            return
        try:
            self._libc.mark(self._fd, FAN_MARK_FLUSH | FAN_MARK_INODE, 0, None)
        except KernelError as exc:
            log.error("fanotify: flushing marks at %s failed: %s", why, exc)

    def set_fast_allow(self, allow_open: frozenset[tuple[int, int]],
                       allow_exec: frozenset[tuple[int, int]],
                       allow_read: frozenset[tuple[int, int]] = frozenset(), *,
                       read_anywhere: bool = False,
                       nosubj: tuple[bool, bool, bool] = (False, False, False),
                       subject_exes: frozenset[tuple[int, int]] = frozenset()) -> None:
        """The inodes whose open (``allow_open``), exec (``allow_exec``) or read-only
        open (``allow_read``) events the compiled loop answers ALLOW itself, without
        calling ``decide``: only inodes ``decide`` would allow for every task, for every
        kind of open (``allow_open``) or for a read-only one (``allow_read``; with
        ``read_anywhere``, any inode's: an open the loop cannot see is read-only goes to
        ``decide``), or whose opener's executable is none of ``subject_exes`` when
        ``nosubj`` (open, read-only open, exec) says the plan allows a task no subject
        names that on any inode.  Replaces the previous sets;
        when it returns, no event is answered from them any more.  Without the compiled
        loop, nothing to do (``decide`` sees every event)."""
        if self._fast is not None and not self._expired:
            self._fast.publish(allow_open, allow_exec, allow_read, read_anywhere=read_anywhere,
                               nosubj=nosubj, subject_exes=subject_exes)

    def use_open_context(self, tids_fd: int, words: int, counts_fd: int, bdi_fd: int,
                         need_sysfs: bool = True) -> bool:
        """Let the compiled loop trust a read-only open's registers on the open
        context's marks (:mod:`bastion.kernel.openctx`) instead of the opener's stack:
        map them and keep (a duplicate of) ``bdi_fd``, the backing devices directory
        (:func:`~bastion.kernel.openctx.private_bdi_dir`: sysfs, unless a test's
        ``need_sysfs`` is False), then turn them on.  False (the stack stays the check)
        without the compiled loop."""
        fast = self._fast
        if fast is None:
            return False
        fast.set_marks(tids_fd, words, counts_fd, bdi_fd, need_sysfs)
        fast.marks_ready()
        return True

    @property
    def compiled_loop(self) -> bool:
        """Does the compiled loop answer the fast allows (see :meth:`set_fast_allow`)?"""
        return self._fast is not None

    def _mark_path(self, flags: int, mask: int, path: str, key: tuple[int, int]) -> None:
        """Mark the inode at ``path`` after checking it is still ``key``.

        An O_PATH open raises no fanotify event; the mark goes through the
        /proc/self/fd magic link so it lands on exactly that inode.
        """
        if self._libc is None or self._fd < 0:
            raise KernelError("fanotify listener is not open", location=Location("fanotify"))
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            st = os.fstat(pfd)
            if (kernel_dev(st.st_dev), st.st_ino) != key:
                raise OSError(errno.ESTALE, "path now names another inode", path)
            self._libc.mark(self._fd, flags | FAN_MARK_INODE, mask, f"/proc/self/fd/{pfd}")
            if flags & FAN_MARK_REMOVE:
                self._handles.pop(key, None)
            elif self.keep_handles and self._handle_lib is not None:
                # to remove it once its path moved; taken again on every add (s18-gate:
                # an inode number reused since the last add is another inode)
                h = self._handle_lib.handle(pfd)
                if h is not None and h[2] not in self._mount_fds:
                    mfd = self._handle_lib.mount_fd(h[2])
                    if mfd is not None:
                        self._mount_fds[h[2]] = mfd
                if h is not None and h[2] in self._mount_fds:
                    self._handles[key] = h
                else:
                    self._handles.pop(key, None)
        finally:
            os.close(pfd)

    def _expire(self) -> None:
        with self.mark_lock:
            if self._expired:
                return
            self._expired = True
            if self._fast is not None:   # every event to Python: it answers deadline_allows
                self._fast.publish(frozenset(), frozenset())
            self.flush_marks("deadline")
        log.warning("fanotify: deadline of %.1fs reached: all marks removed, everything allowed",
                    self.deadline_s or 0.0)

    # ---- answering ---------------------------------------------------------------------

    def _answer(self, efd: int, response: int,
                expect: tuple[float, PermEvent, int] | None = None) -> bool:
        """Write the answer for a pending event once; False if already answered (or,
        with ``expect``, if ``efd`` no longer holds that entry: answered meanwhile,
        its number now another event's)."""
        with self._lock:
            pending = self._pending
            if expect is not None and pending.get(efd) is not expect:
                return False
            if pending.pop(efd, None) is None or self._fd < 0:
                return False
            try:
                os.write(self._fd, _RESPONSE.pack(efd, response))
            except OSError as exc:
                self.c.errors += 1
                log.error("fanotify: answering event fd %d failed: %s", efd, exc)
                return False
            return True

    def _write_responses(self, fd: int, out: list[bytes]) -> None:
        """Write every response of ``out`` (caller holds ``_lock``; each was popped from
        ``_pending``, so nothing else will answer it).

        The kernel takes ONE ``struct fanotify_response`` per ``write()``
        (``fanotify_write`` returns ``sizeof(response)`` and ignores the rest of the
        buffer): a joined buffer answers only its first event and leaves the other
        openers blocked until the group closes.  ``writev`` with one response per
        iovec is one syscall that the kernel loops over (``do_loop_readv_writev``:
        fanotify has no ``write_iter``); it stops at the first response it refuses,
        which the next call then fails on alone: counted, skipped, the rest written.
        """
        i, n = 0, len(out)
        while i < n:
            chunk = out[i:i + _IOV_MAX]
            try:
                done = os.writev(fd, chunk) // _RESPONSE.size
            except OSError as exc:
                # chunk[0] was refused (ENOENT: no such pending event): skip it
                self.c.errors += 1
                log.error("fanotify: answering event fd %d failed: %s",
                          _RESPONSE.unpack(chunk[0])[0], exc)
                done = 1
            if done <= 0:   # never seen: the kernel wrote nothing and raised nothing
                self.c.errors += 1
                log.error("fanotify: writev answered no event; answering one by one")
                for r in out[i:]:
                    try:
                        if os.write(fd, r) != _RESPONSE.size:
                            self.c.errors += 1
                    except OSError:
                        self.c.errors += 1
                return
            i += done

    def _fallback_of(self, ev: PermEvent) -> int:
        """The event's fallback answer (FAN_ALLOW without a ``fallback``); a failing
        fallback fails closed (counted as ``errors``)."""
        fb = self.fallback
        if fb is None:
            return FAN_ALLOW
        try:
            return FAN_DENY if fb(ev) == FAN_DENY else FAN_ALLOW
        except Exception as exc:  # noqa: BLE001 - the event must still get an answer
            self.c.errors += 1
            log.error("fanotify: fallback for tid %d failed (%s: %s): deny on stall",
                      ev.tid, type(exc).__name__, exc)
            return FAN_DENY

    def _answer_fallback(self, efd: int) -> int:
        """Answer a pending event with its fallback (asked now if it was not yet, outside
        the lock: the answer goes out only if the entry is still the same one); the
        response, or 0 if already answered."""
        with self._lock:
            ent = self._pending.get(efd)
        if ent is None:
            return 0
        fb = ent[2] or self._fallback_of(ent[1])
        return fb if self._answer(efd, fb, ent) else 0

    def _allow_all_pending(self, counter: Shortcut | None = None) -> None:
        """Allow every event still waiting for an answer, counted in ``counter`` (an
        event the listener had read and this answers first is counted here, once)."""
        with self._lock:
            fds = list(self._pending)
        for efd in fds:
            if self._answer(efd, FAN_ALLOW) and counter is not None:
                self.c.allows += 1
                setattr(self.c, counter, getattr(self.c, counter) + 1)

    def _read_events(self) -> list[tuple[int, int, int]]:
        """(mask, event fd, tid) of every event one read returns; [] when none."""
        try:
            buf = os.read(self._fd, _READ_BUF)
        except BlockingIOError:
            return []
        out: list[tuple[int, int, int]] = []
        off = 0
        while off + _META.size <= len(buf):
            event_len, vers, _res, _mlen, mask, efd, pid = _META.unpack_from(buf, off)
            if vers != FANOTIFY_METADATA_VERSION or event_len < _META.size:
                log.error("fanotify: unexpected metadata version %d / length %d", vers, event_len)
                if efd >= 0:
                    out.append((mask, efd, pid))
                break
            out.append((mask, efd, pid))
            off += event_len
        return out

    def _drain(self, *, count: bool) -> int:
        """Read and allow whatever is queued (the listener is stalled or gone)."""
        n = 0
        while self._fd >= 0:
            try:
                evs = self._read_events()
            except OSError:
                break
            if not evs:
                break
            for mask, efd, _tid in evs:
                if efd < 0:
                    if count and mask & FAN_Q_OVERFLOW:
                        self.c.overflows += 1
                        log.warning("fanotify: event queue overflow (the kernel allowed the "
                                    "opens it dropped)")
                    continue
                if mask & FAN_PERM_EVENTS:
                    now = time.monotonic()
                    ev = PermEvent(mask, efd, _tid, now)
                    fb = self._fallback_of(ev) if count else FAN_ALLOW
                    with self._lock:
                        self._pending[efd] = (now, ev, fb)
                    if self._answer(efd, fb):
                        n += 1
                        if count:
                            if fb == FAN_DENY:
                                self.c.watchdog_denies += 1
                            else:
                                self.c.watchdog_allows += 1
                os.close(efd)
        return n

    # ---- the watchdog ---------------------------------------------------------------------

    def _prioritize(self, which: str) -> None:
        """Give the calling thread ``thread_nice`` (per-thread on Linux); a refusal
        (no CAP_SYS_NICE) is logged and the thread runs at its inherited priority."""
        if self.thread_nice is None:
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.thread_nice)
        except OSError as exc:
            log.warning("fanotify: %s thread keeps its priority (nice %d refused: %s)",
                        which, self.thread_nice, exc)

    def _watchdog_loop(self) -> None:
        self._prioritize("watchdog")
        tick = min(0.05, self.decision_timeout_s / 4)
        while not self._stop.wait(tick):
            try:
                now = time.monotonic()
                if self._deadline_at is not None and now >= self._deadline_at and not self._expired:
                    self._expire()
                    self._allow_all_pending("deadline_allows")
                with self._lock:
                    overdue = [efd for efd, (t, _ev, _fb) in self._pending.items()
                               if now - t >= self.decision_timeout_s]
                for efd in overdue:
                    r = self._answer_fallback(efd)
                    if r == FAN_DENY:
                        self.c.watchdog_denies += 1
                        log.warning("fanotify: a decision stalled: denied by its fallback")
                    elif r == FAN_ALLOW:
                        self.c.watchdog_allows += 1
                fast = self._fast
                busy = self._busy_since
                if fast is not None:
                    self._rescue(fast)
                    cbusy = fast.busy_s()
                    if cbusy is not None and (busy is None or cbusy < busy):
                        busy = cbusy
                stalled = busy is not None and now - busy >= self.decision_timeout_s
                if stalled or not self._loop_running:
                    self._drain(count=True)
            except Exception as exc:  # noqa: BLE001 - the watchdog must keep running
                self.c.errors += 1
                log.error("fanotify watchdog: %s: %s", type(exc).__name__, exc)

    def _rescue(self, fast: FastLoop) -> None:
        """Answer, with their fallback, the events of a compiled batch held past
        ``decision_timeout_s`` (the loop gave up each one it did not answer yet)."""
        for mask, efd, tid in fast.rescue(self.decision_timeout_s):
            try:
                if not mask & FAN_PERM_EVENTS:
                    continue
                now = time.monotonic()
                ev = PermEvent(mask, efd, tid, now)
                fb = self._fallback_of(ev)
                with self._lock:
                    self._pending[efd] = (now, ev, fb)
                if self._answer(efd, fb):
                    if fb == FAN_DENY:
                        self.c.watchdog_denies += 1
                        log.warning("fanotify: the compiled loop stalled: denied by the fallback")
                    else:
                        self.c.watchdog_allows += 1
            finally:
                os.close(efd)

    # ---- the listener ---------------------------------------------------------------------

    def run(self) -> None:
        """The listener loop (blocking); :meth:`start` runs it in a thread."""
        if self._fd < 0:
            raise KernelError("fanotify listener is not open", location=Location("fanotify"))
        self._prioritize("listener")
        if self._fast is not None:
            self._run_compiled(self._fast)
            return
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        self._loop_running = True
        try:
            while not self._stop.is_set():
                try:
                    ready = poller.poll(250)
                except InterruptedError:
                    continue
                if self._stop.is_set():
                    break
                if not ready:
                    continue
                try:
                    evs = self._read_events()
                except OSError as exc:
                    if self._stop.is_set():
                        break
                    self.c.errors += 1
                    log.error("fanotify: read failed: %s", exc)
                    time.sleep(0.01)
                    continue
                if not evs:
                    continue
                self._process(evs)
        finally:
            self._loop_running = False
            with self._lock:
                if self._listener_owns_fd:
                    self._close_fds()

    def _run_compiled(self, fast: FastLoop) -> None:
        """The listener loop with the compiled fast path: it answers the fast allows and
        returns the other events, decided here as in :meth:`run`."""
        self._loop_running = True
        try:
            while not self._stop.is_set():
                try:
                    evs = fast.run(self._fd, self._wake_r, 250)
                except OSError as exc:
                    if self._stop.is_set():
                        break
                    self.c.errors += 1
                    log.error("fanotify: compiled loop: read failed: %s", exc)
                    time.sleep(0.01)
                    continue
                if evs:
                    self._process(evs)   # handed over: answered even when stopping
        finally:
            self._loop_running = False
            with self._lock:
                if self._listener_owns_fd:
                    self._close_fds()

    def _process(self, evs: list[tuple[int, int, int]]) -> None:
        """Decide and answer one batch of (mask, event fd, tid)."""
        now = time.monotonic()
        self._busy_since = now
        pes = [PermEvent(mask, efd, tid, now) if efd >= 0 and mask & FAN_PERM_EVENTS
               else None for mask, efd, tid in evs]
        fb0 = FAN_ALLOW if self.fallback is None else 0   # 0: asked when needed
        with self._lock:
            pending = self._pending
            for pe in pes:
                if pe is not None:
                    pending[pe.fd] = (now, pe, fb0)
        batch: list[tuple[int, Verdict]] = []
        try:
            flushed = now
            for (mask, efd, _tid), pe in zip(evs, pes):
                v = self._handle(mask, efd, pe)
                if v is not None:
                    batch.append((efd, v))
                    t = time.monotonic()
                    # a deny (or a reported decision) is written at once: a later
                    # decision that stalls must not turn it into its fallback; so is
                    # everything ready once the batch took a while
                    if (v.response != FAN_ALLOW or v.after is not None
                            or t - flushed >= _BATCH_HOLD_S):
                        self._flush(batch, now)
                        batch = []
                        flushed = t
        finally:
            try:
                self._flush(batch, now)
            finally:
                self._busy_since = None

    def _handle(self, mask: int, efd: int, ev: PermEvent | None) -> Verdict | None:
        """The verdict of one event, to be written by :meth:`_flush`; None when the
        event needs no answer from the batch (not a permission event, or answered
        here after ``decide`` failed)."""
        self.c.events += 1
        if efd < 0:
            if mask & FAN_Q_OVERFLOW:
                self.c.overflows += 1
                log.warning("fanotify: event queue overflow (the kernel allowed the opens it dropped)")
            return None
        if ev is None:
            os.close(efd)
            return None
        self.c.perm_events += 1
        try:
            if self._expired or (self._deadline_at is not None
                                 and time.monotonic() >= self._deadline_at):
                return _DEADLINE_ALLOW
            return self.decide(ev)
        except Exception as exc:  # noqa: BLE001 - never leave an event unanswered
            self.c.errors += 1
            r = self._answer_fallback(efd)
            if r == FAN_DENY:
                self.c.error_denies += 1
            elif r == FAN_ALLOW:
                self.c.allows += 1
                self.c.error_allows += 1
            log.error("fanotify: deciding for tid %d failed (%s: %s at %s): %s", ev.tid,
                      type(exc).__name__, exc, _frames(exc),
                      "denied (fallback)" if r == FAN_DENY else "allowed")
            os.close(efd)
            self.c.latencies_us.append((time.monotonic() - ev.t_read) * 1e6)
            return None

    def _flush(self, batch: list[tuple[int, Verdict]], t_read: float) -> None:
        """Write the answers of ``batch`` in one ``write`` (those the watchdog has not
        given yet), then count them, run their ``after`` and close their fds."""
        if not batch:
            return
        in_time: list[bool] = []
        with self._lock:
            fd = self._fd
            pending = self._pending
            for efd, _v in batch:
                in_time.append(pending.pop(efd, None) is not None and fd >= 0)
            out = [_RESPONSE.pack(efd, v.response) for (efd, v), ok in zip(batch, in_time) if ok]
            if out:
                self._write_responses(fd, out)
        c = self.c
        latencies = c.latencies_us
        for (efd, v), ok in zip(batch, in_time):
            try:
                if not ok:
                    c.late_decisions += 1
                elif v.response == FAN_ALLOW:
                    c.allows += 1
                    if v.shortcut is not None:
                        setattr(c, v.shortcut, getattr(c, v.shortcut) + 1)
                if v.after is not None:
                    v.after(ok)
            except Exception as exc:  # noqa: BLE001 - the answer stands; the next event goes on
                c.errors += 1
                log.error("fanotify: reporting the answer for event fd %d failed (%s: %s at %s)",
                          efd, type(exc).__name__, exc, _frames(exc))
            finally:
                os.close(efd)
                latencies.append((time.monotonic() - t_read) * 1e6)

    # ---- report -------------------------------------------------------------------------

    def stats(self) -> dict[str, int | float]:
        c = self.c
        fast = self._fast
        if fast is not None:
            try:
                self._fast_allows, lats = fast.stats()
                self._read_checks = fast.read_checks()
                c.latencies_us.extend(lats)
            except KernelError:   # freed by close() meanwhile: its count was kept
                fast = None
        lat = sorted(c.latencies_us)
        out: dict[str, int | float] = {k: getattr(c, k) for k in _COUNTS}
        fa = self._fast_allows   # answered by the compiled loop: counted as in-time allows
        out["events"] += fa
        out["perm_events"] += fa
        out["allows"] += fa
        out["fast_allows"] = fa
        # read-only opens the compiled loop took as their syscall's own: by the open
        # context's marks (no /proc read) or by the opener's stack
        out["reads_by_marks"], out["reads_by_stack"] = self._read_checks
        out["compiled_loop"] = int(fast is not None)
        out["fail_opens"] = c.watchdog_allows + c.error_allows + c.overflows
        out["expired"] = int(self._expired)
        out["decisions_timed"] = len(lat)
        out["decision_us_median"] = statistics.median(lat) if lat else 0.0
        out["decision_us_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        out["decision_us_max"] = lat[-1] if lat else 0.0
        return out


__all__ = ["ALLOW", "DEFAULT_MAX_DIRS", "THREAD_NICE", "Decide", "FAN_ALLOW", "Fallback", "FAN_DENY", "FAN_EVENT_ON_CHILD",
           "FAN_ONDIR", "FAN_OPEN_EXEC_PERM", "FAN_OPEN_PERM", "ListenerCounters", "PermEvent",
           "group_available",
           "PermissionListener", "Shortcut", "parse_fdinfo_marks", "Verdict", "subdirs", "supported"]
