"""Compat-tier file enforcement: fanotify permission events on targeted inode marks.

On a kernel without BPF LSM, Bastion refuses ``open`` (and, optionally,
``execve``) of the files a HIPS plan names by answering fanotify permission
events from user space.  :class:`FanotifyEnforcer` marks **only the inodes
the plan names** — files with an inode mark, directory objects with a mark
carrying ``FAN_EVENT_ON_CHILD`` on the directory and on each of its
subdirectories — never a mount or a filesystem (a whole-filesystem mark
costs ~30x per open on this host, see docs/DESIGN.md).  Each permission
event is decided by :meth:`bastion.policy.match.Matcher.decide_file` over
the current :class:`~bastion.policy.compile.MapPlan`, with facts gathered
without opening any file that could be marked:

* the object: ``os.fstat`` of the event's fd (kernel dev encoding);
* its ancestors: ``os.readlink("/proc/self/fd/N")`` then ``os.stat`` of
  each parent directory (stat never raises a permission event);
* the acting task, from ``/proc/<tid>/``: ``status`` (tgid, ppid, real uid),
  ``exe`` (stat through the magic link), the parent's ``exe``, ``cgroup``
  (the v2 path, stat'ed under the cgroup2 mount for its id) and ``syscall``
  (the blocked ``open``/``openat``/``openat2`` flags: read or write open).
  procfs and cgroupfs are never marked, so reading them is safe.

Kernel-safety rules this module keeps (a stalled permission listener freezes
every process that opens a marked file, including the agent's own shell):

* The listener thread never opens a file that could be marked.  It only
  reads procfs, and it **must never log to a marked path**: its log lines go
  through :mod:`logging`, whose handlers must write to stderr or a file that
  no plan marks (it logs without tracebacks, which would open ``.py``
  sources through ``linecache``).
* A watchdog thread answers ``FAN_ALLOW`` for every permission event whose
  decision has not been written within ``decision_timeout_s`` (counted as
  ``watchdog_allows``), and drains and allows the queue itself while the
  listener is stalled or not running.
* Every event is answered: an exception while deciding answers ALLOW (counted
  as ``errors``).
* ``deadline_s`` (seconds after :meth:`FanotifyEnforcer.open`) is a dead-man
  switch: past it every event is allowed and all marks are removed.
* Events from this process (``self_tgid``, default this process) are allowed
  at once; with ``scope_cgroup_id`` set, so are events from tasks outside
  that cgroup (and its descendants).
* Closing the fanotify fd (also when the process dies) makes the kernel
  allow every pending event and drop every mark.

What this tier cannot see (the caveats of the compat tier):

* Only ``open`` raises a permission event (pinned by
  tests/kernel/test_fanotify.py).  Not enforceable here: ``create`` (an
  ``O_CREAT`` open in a protected directory is refused, but only after the
  file was created: an empty file stays behind), ``unlink``/``rmdir``,
  ``rename``, ``link``, ``chmod``/``chown``/``setxattr``, and ``truncate(2)``
  by path (``ftruncate`` needs a write open, which is refused; ``O_TRUNC``
  counts as a write open).  A descriptor opened before the plan (inherited,
  passed over a socket) is never re-checked, nor are reads, writes or
  ``mmap`` through it.  The open that ``execve`` itself does is decided as
  ``exec`` only (``FAN_OPEN_EXEC_PERM``), never as ``open-read``.
* An ``any`` object and the plan's default action apply only to opens of
  marked inodes; an inode the plan names but no target path reaches, and
  subdirectories created after :meth:`FanotifyEnforcer.apply`, are not
  marked until the next ``apply``.  :meth:`FanotifyEnforcer.unenforced`
  lists what a plan asks that this tier cannot do.
* Read vs write comes from ``/proc/<tid>/syscall`` of the blocked opener
  (x86-64/arm64 native syscalls; ``openat2`` read from its memory).  When it
  cannot be known (32-bit compat tasks, io_uring workers) the stricter of
  the ``open-read`` and ``open-write`` decisions applies (fail closed),
  counted as ``flags_unknown``.
* Decisions are made in user space: every open of a marked inode costs a
  round trip to the listener (~20 us of decision plus two wake-ups here).
  The watchdog shares this process (and its GIL): on a starved host a
  decision slower than ``decision_timeout_s`` is allowed (fail-open, counted).
* The opener is identified by its tid at decision time through /proc; the
  opener is blocked in ``open`` meanwhile, so its tid cannot be reused unless
  it is SIGKILLed during the decision.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import platform
import select
import signal
import stat
import statistics
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Callable, Final, Mapping, Sequence

from bastion import abi
from bastion.errors import BastionError, ConfigError, KernelError, Location
from bastion.events import HipsEvent, Proc
from bastion.kernel.bpffs import cgroup2_root
from bastion.policy.compile import FileTarget, MapPlan, kernel_dev
from bastion.policy.match import Decision, Matcher, TaskFacts

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
FAN_NOFD: Final = -1
FANOTIFY_METADATA_VERSION: Final = 3

_META: Final = struct.Struct("<IBBHQii")      # struct fanotify_event_metadata
_RESPONSE: Final = struct.Struct("<iI")       # struct fanotify_response
_READ_BUF: Final = 64 * 1024

AT_FDCWD: Final = -100
DEFAULT_MAX_DIRS: Final = 10_000
MAX_ANCESTORS: Final = 16
_FILE_OPS: Final = frozenset({abi.HipsOp.OPEN_READ, abi.HipsOp.OPEN_WRITE, abi.HipsOp.EXEC})
_UNENFORCEABLE_OPS: Final = frozenset({abi.HipsOp.CREATE, abi.HipsOp.UNLINK, abi.HipsOp.RENAME,
                                       abi.HipsOp.CHMOD})
_SEVERITY: Final = MappingProxyType({abi.HipsAction.ALLOW: 0, abi.HipsAction.AUDIT: 1,
                                     abi.HipsAction.DENY: 2, abi.HipsAction.KILL: 3})
_OP_NAMES: Final = MappingProxyType({abi.HipsOp.EXEC: "exec", abi.HipsOp.OPEN_READ: "open-read",
                                     abi.HipsOp.OPEN_WRITE: "open-write"})


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


# ---- libc ------------------------------------------------------------------------------


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


def supported() -> str | None:
    """None when fanotify permission events work here; else why not.

    Creates a group and puts (then removes) an inode mark on a fresh file in
    a private temp directory; nothing ever opens that file, so no event is
    raised.
    """
    try:
        libc = _Libc()
        fd = libc.init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID,
                       os.O_RDONLY | os.O_LARGEFILE)
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


# ---- plan state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mark:
    path: str     # where it was found (re-resolved and checked before removal)
    mask: int


@dataclass(frozen=True)
class _PlanState:
    """One applied plan: the listener reads ``FanotifyEnforcer._state`` once per event."""

    plan: MapPlan
    matcher: Matcher
    gen: int
    marks: Mapping[tuple[int, int], _Mark]
    child_dirs: frozenset[tuple[int, int]]   # marked with FAN_EVENT_ON_CHILD
    kinds: frozenset[abi.SubjectKind]        # the subject kinds the plan names: facts to gather
    needs_parents: bool                      # directory objects: ancestors are looked up


@dataclass(frozen=True)
class _Task:
    tid: int
    tgid: int
    ppid: int
    uid: int
    euid: int
    gid: int
    cgroup_id: int


@dataclass
class _Counters:
    events: int = 0
    perm_events: int = 0
    allows: int = 0
    denies: int = 0
    kills: int = 0
    kill_failures: int = 0
    audits: int = 0
    audit_only: int = 0          # deny/kill decided in audit mode: reported, allowed
    watchdog_allows: int = 0
    late_decisions: int = 0      # decided after the watchdog had allowed
    errors: int = 0
    self_allows: int = 0
    out_of_scope: int = 0
    not_marked: int = 0          # stale mark during a swap: allowed
    gone: int = 0                # the opener vanished before we could look at it
    deadline_allows: int = 0
    flags_unknown: int = 0
    overflows: int = 0
    emitted: int = 0
    dropped: int = 0
    swaps: int = 0
    orphan_marks: int = 0        # stale marks whose path moved: removed only at close
    latencies_us: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=4096))


DecisionHook = Callable[[int, str], None]
"""Test seam: called as ``hook(tid, path)`` by the listener before each decision."""


class FanotifyEnforcer:
    """Decide opens of the plan's inodes in user space (compat tier).

    Typical use::

        enf = FanotifyEnforcer(deadline_s=None)
        enf.open(); enf.start()
        enf.apply(plan, targets)          # again for every new plan (atomic swap)
        for ev in enf.poll(0.5): ...      # HipsEvent records, mechanism "fanotify"
        enf.close()

    The listener must never log to a marked path (see the module docstring).
    """

    def __init__(self, *, scope_cgroup_id: int = 0, deadline_s: float | None = None,
                 self_tgid: int = 0, decision_timeout_s: float = 0.2,
                 max_dirs: int = DEFAULT_MAX_DIRS, max_events: int = 4096,
                 decision_hook: DecisionHook | None = None) -> None:
        if decision_timeout_s <= 0:
            raise ValueError("decision_timeout_s must be > 0")
        self.scope_cgroup_id = scope_cgroup_id
        self.deadline_s = deadline_s
        self.self_tgid = self_tgid or os.getpid()
        self.decision_timeout_s = decision_timeout_s
        self.max_dirs = max_dirs
        self.decision_hook = decision_hook
        self._libc: _Libc | None = None
        self._fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._deadline_at: float | None = None
        self._expired = False
        self._closed = False
        self._stop = threading.Event()
        self._lock = threading.Lock()                 # pending answers, fd lifetime
        self._apply_lock = threading.Lock()           # serialises apply()/expire/close
        self._pending: dict[int, float] = {}          # event fd -> monotonic time read
        self._busy_since: float | None = None
        self._loop_running = False
        self._listener: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._listener_owns_fd = False
        self._state: _PlanState | None = None
        self._gen = 0
        self._unenforced: tuple[str, ...] = ()
        self._c = _Counters()
        self._events: collections.deque[HipsEvent] = collections.deque()
        self._max_events = max_events
        self._events_cv = threading.Condition()
        arch = platform.machine()
        self._sys = _SYSCALLS.get(arch)
        self._cg_root: Path | None = None

    # ---- lifecycle -----------------------------------------------------------------

    def open(self) -> FanotifyEnforcer:
        """Create the fanotify group and start the watchdog."""
        if self._fd >= 0:
            return self
        self._libc = _Libc()
        self._fd = self._libc.init(
            FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_TID,
            os.O_RDONLY | os.O_LARGEFILE | os.O_CLOEXEC)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.deadline_s is not None:
            self._deadline_at = time.monotonic() + self.deadline_s
        try:
            self._cg_root = cgroup2_root()
        except BastionError as exc:
            if self.scope_cgroup_id:
                self.close()
                raise KernelError(f"fanotify scope: no cgroup v2 hierarchy: {exc}",
                                  location=Location("cgroup2")) from exc
            log.warning("fanotify: no cgroup v2 hierarchy (%s): cgroup subjects never match", exc)
        self._watchdog = threading.Thread(target=self._watchdog_loop, name="bastion-fan-watchdog",
                                          daemon=True)
        self._watchdog.start()
        return self

    def start(self) -> FanotifyEnforcer:
        """Run the listener in a daemon thread."""
        if self._fd < 0:
            self.open()
        if self._listener is None or not self._listener.is_alive():
            self._listener = threading.Thread(target=self.run, name="bastion-fan-listener",
                                              daemon=True)
            self._listener.start()
        return self

    def __enter__(self) -> FanotifyEnforcer:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove every mark, allow anything pending, close the group."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        with self._apply_lock:
            self._flush_marks("close")
            self._state = None
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=max(2.0, 4 * self.decision_timeout_s))
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2.0)
        self._allow_all_pending()
        self._drain(count=False)
        with self._lock:
            if listener is not None and listener.is_alive():
                # stuck in a decision hook: it closes the fd on its way out, so
                # the fd number cannot be reused under its feet.
                self._listener_owns_fd = True
            else:
                self._close_fds()
        with self._events_cv:
            self._events_cv.notify_all()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fd = self._wake_r = self._wake_w = -1

    # ---- plans ------------------------------------------------------------------------

    def unenforced(self) -> tuple[str, ...]:
        """What the current plan asks that fanotify marks cannot enforce."""
        return self._unenforced

    def apply(self, plan: MapPlan, targets: Sequence[FileTarget]) -> None:
        """Mark the plan's file inodes and make ``plan`` the one the listener decides with.

        New marks are added before the plan reference is swapped and stale
        marks removed after it, so every event is decided by exactly one
        complete plan.  Raises :class:`~bastion.errors.ConfigError` (and
        changes nothing) when a directory object has more than ``max_dirs``
        directories.
        """
        if self._fd < 0 or self._closed:
            raise KernelError("fanotify enforcer is not open", location=Location("fanotify"))
        with self._apply_lock:
            if self._expired:
                raise KernelError("fanotify enforcer is past its deadline: nothing is marked",
                                  location=Location("fanotify"))
            marks, child_dirs, problems = self._plan_marks(plan, targets)
            old = self._state
            old_marks: Mapping[tuple[int, int], _Mark] = old.marks if old is not None else {}
            assert self._libc is not None
            added: list[tuple[tuple[int, int], _Mark]] = []
            try:
                for key, m in marks.items():
                    prev = old_marks.get(key)
                    extra = m.mask & ~(prev.mask if prev is not None else 0)
                    if extra:
                        self._mark_path(FAN_MARK_ADD, extra, m.path, key)
                        added.append((key, _Mark(m.path, extra)))
            except (KernelError, OSError) as exc:
                for key, m in added:   # roll back: the old plan stays in force
                    prev = old_marks.get(key)
                    self._remove_bits(key, m.path, m.mask & ~(prev.mask if prev else 0))
                if isinstance(exc, KernelError):
                    raise
                raise KernelError(f"fanotify: cannot mark: {exc.strerror}",
                                  errno=exc.errno or errno.EIO,
                                  location=Location(exc.filename or "fanotify")) from exc
            self._gen += 1
            self._state = _PlanState(
                plan, Matcher(plan), self._gen, MappingProxyType(dict(marks)),
                frozenset(child_dirs), frozenset(abi.SubjectKind(k) for (k, _a, _b), _s in plan.subjects),
                bool(child_dirs) or bool(plan.flags & abi.HIPS_F_DIR_OBJECTS))
            for key, m in old_marks.items():
                new = marks.get(key)
                stale = m.mask & ~(new.mask if new is not None else 0)
                if stale:
                    self._remove_bits(key, m.path, stale)
            self._unenforced = tuple(problems)
            if old is not None:
                self._c.swaps += 1
        for p in problems:
            log.warning("fanotify: not enforced: %s", p)

    def clear(self) -> None:
        """No policy: remove every mark, then forget the plan (opens are no longer seen)."""
        if self._fd < 0 or self._closed:
            return
        with self._apply_lock:
            self._flush_marks("clear")
            self._state = None
            self._unenforced = ()

    def _plan_marks(self, plan: MapPlan, targets: Sequence[FileTarget]
                    ) -> tuple[dict[tuple[int, int], _Mark], set[tuple[int, int]], list[str]]:
        names = {r.rule_id: r.name for r in plan.rule_table}
        problems: list[str] = []
        ops: dict[tuple[int, int], set[abi.HipsOp]] = {}
        for (_subj, op_raw, dev, ino), (act, rid) in plan.rules:
            op = abi.HipsOp(op_raw)
            action = abi.HipsAction(act)
            rname = names.get(rid, f"#{rid}")
            if op in _UNENFORCEABLE_OPS:
                if action in (abi.HipsAction.DENY, abi.HipsAction.KILL):
                    problems.append(f"rule {rname!r}: {op.name.lower()} cannot be refused by "
                                    f"fanotify (only opens raise permission events)")
                continue
            if op not in _FILE_OPS:
                continue
            if (dev, ino) == (0, 0):
                if action is not abi.HipsAction.ALLOW:
                    problems.append(f"rule {rname!r}: an 'any' object applies only to opens of "
                                    f"inodes other rules name (no filesystem-wide mark)")
                continue
            ops.setdefault((dev, ino), set()).add(op)
        if plan.default_action is not abi.HipsAction.ALLOW and ops:
            problems.append(f"default {plan.default_action.name.lower()} applies only to opens of "
                            f"the inodes rules name (no filesystem-wide mark)")
        marks: dict[tuple[int, int], _Mark] = {}
        child_dirs: set[tuple[int, int]] = set()
        found: set[tuple[int, int]] = set()
        ndirs = 0

        def add(key: tuple[int, int], path: str, mask: int) -> None:
            prev = marks.get(key)
            marks[key] = _Mark(prev.path if prev else path, mask | (prev.mask if prev else 0))

        for t in targets:
            key = (t.dev, t.ino)
            want = ops.get(key)
            if not want:
                continue
            mask = 0
            if want & {abi.HipsOp.OPEN_READ, abi.HipsOp.OPEN_WRITE}:
                mask |= FAN_OPEN_PERM
            if abi.HipsOp.EXEC in want:
                mask |= FAN_OPEN_EXEC_PERM
            try:
                st = os.stat(t.path)
            except OSError as exc:
                problems.append(f"{t.path}: {exc.strerror}: not marked")
                continue
            if (kernel_dev(st.st_dev), st.st_ino) != key:
                problems.append(f"{t.path}: is no longer inode {t.dev}:{t.ino}: not marked")
                continue
            found.add(key)
            if not stat.S_ISDIR(st.st_mode):
                add(key, t.path, mask)
                continue
            if not t.is_dir:
                add(key, t.path, mask | FAN_ONDIR)   # a rule on opening the directory itself
                continue
            # a directory object: the directory and every subdirectory on its filesystem
            for dpath, dkey in self._subdirs(t.path, st):
                ndirs += 1
                if ndirs > self.max_dirs:
                    raise ConfigError(
                        f"directory object has more than {self.max_dirs} directories: the "
                        f"compat tier marks each one; name a smaller subtree",
                        location=Location(t.path))
                add(dkey, dpath, mask | FAN_EVENT_ON_CHILD)
                child_dirs.add(dkey)
        for key in ops.keys() - found:
            problems.append(f"inode {key[0]}:{key[1]} has no target path: not marked")
        return marks, child_dirs, problems

    def _subdirs(self, top: str, top_st: os.stat_result) -> list[tuple[str, tuple[int, int]]]:
        out = [(top, (kernel_dev(top_st.st_dev), top_st.st_ino))]
        for root, dirs, _files in os.walk(top, followlinks=False):
            keep = []
            for d in dirs:
                p = os.path.join(root, d)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if st.st_dev != top_st.st_dev or not stat.S_ISDIR(st.st_mode):
                    continue  # another filesystem (like the kernel's dentry walk) or a symlink
                keep.append(d)
                out.append((p, (kernel_dev(st.st_dev), st.st_ino)))
                if len(out) > self.max_dirs:
                    return out
            dirs[:] = keep
        return out

    def _mark_path(self, flags: int, mask: int, path: str, key: tuple[int, int]) -> None:
        """Mark the inode at ``path`` after checking it is still ``key``.

        An O_PATH open raises no fanotify event; the mark goes through the
        /proc/self/fd magic link so it lands on exactly that inode.
        """
        assert self._libc is not None
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            st = os.fstat(pfd)
            if (kernel_dev(st.st_dev), st.st_ino) != key:
                raise OSError(errno.ESTALE, "path now names another inode", path)
            self._libc.mark(self._fd, flags | FAN_MARK_INODE, mask, f"/proc/self/fd/{pfd}")
        finally:
            os.close(pfd)

    def _remove_bits(self, key: tuple[int, int], path: str, bits: int) -> None:
        if not bits:
            return
        try:
            self._mark_path(FAN_MARK_REMOVE, bits, path, key)
        except (OSError, KernelError) as exc:
            if getattr(exc, "errno", 0) == errno.ENOENT and isinstance(exc, KernelError):
                return   # the kernel has no such mark (inode gone): nothing to remove
            self._c.orphan_marks += 1
            log.warning("fanotify: stale mark on inode %d:%d (%s) kept until close: %s",
                        key[0], key[1], path, exc)

    def _flush_marks(self, why: str) -> None:
        if self._fd < 0 or self._libc is None:
            return
        try:
            self._libc.mark(self._fd, FAN_MARK_FLUSH | FAN_MARK_INODE, 0, None)
        except KernelError as exc:
            log.error("fanotify: flushing marks at %s failed: %s", why, exc)

    def _expire(self) -> None:
        with self._apply_lock:
            if self._expired:
                return
            self._expired = True
            self._flush_marks("deadline")
            self._state = None
        log.warning("fanotify: deadline of %.1fs reached: all marks removed, everything allowed",
                    self.deadline_s or 0.0)

    # ---- answering ---------------------------------------------------------------------

    def _answer(self, efd: int, response: int) -> bool:
        """Write the answer for a pending event once; False if already answered."""
        with self._lock:
            if self._pending.pop(efd, None) is None or self._fd < 0:
                return False
            try:
                os.write(self._fd, _RESPONSE.pack(efd, response))
            except OSError as exc:
                self._c.errors += 1
                log.error("fanotify: answering event fd %d failed: %s", efd, exc)
                return False
            return True

    def _allow_all_pending(self) -> None:
        with self._lock:
            fds = list(self._pending)
        for efd in fds:
            self._answer(efd, FAN_ALLOW)

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
                    continue
                if mask & FAN_PERM_EVENTS:
                    with self._lock:
                        self._pending[efd] = time.monotonic()
                    if self._answer(efd, FAN_ALLOW):
                        n += 1
                os.close(efd)
        if count and n:
            self._c.watchdog_allows += n
        return n

    # ---- the watchdog ---------------------------------------------------------------------

    def _watchdog_loop(self) -> None:
        tick = min(0.05, self.decision_timeout_s / 4)
        while not self._stop.wait(tick):
            try:
                now = time.monotonic()
                if self._deadline_at is not None and now >= self._deadline_at and not self._expired:
                    self._expire()
                    self._allow_all_pending()
                with self._lock:
                    overdue = [efd for efd, t in self._pending.items()
                               if now - t >= self.decision_timeout_s]
                for efd in overdue:
                    if self._answer(efd, FAN_ALLOW):
                        self._c.watchdog_allows += 1
                busy = self._busy_since
                stalled = busy is not None and now - busy >= self.decision_timeout_s
                if stalled or not self._loop_running:
                    self._drain(count=True)
            except Exception as exc:  # noqa: BLE001 - the watchdog must keep running
                self._c.errors += 1
                log.error("fanotify watchdog: %s: %s", type(exc).__name__, exc)

    # ---- the listener ---------------------------------------------------------------------

    def run(self) -> None:
        """The listener loop (blocking); :meth:`start` runs it in a thread."""
        if self._fd < 0:
            raise KernelError("fanotify enforcer is not open", location=Location("fanotify"))
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
                    self._c.errors += 1
                    log.error("fanotify: read failed: %s", exc)
                    time.sleep(0.01)
                    continue
                if not evs:
                    continue
                now = time.monotonic()
                with self._lock:
                    for mask, efd, _tid in evs:
                        if efd >= 0 and mask & FAN_PERM_EVENTS:
                            self._pending[efd] = now
                self._busy_since = now
                try:
                    for mask, efd, tid in evs:
                        self._handle(mask, efd, tid, now)
                finally:
                    self._busy_since = None
        finally:
            self._loop_running = False
            with self._lock:
                if self._listener_owns_fd:
                    self._close_fds()

    def _handle(self, mask: int, efd: int, tid: int, t_read: float) -> None:
        self._c.events += 1
        if efd < 0:
            if mask & FAN_Q_OVERFLOW:
                self._c.overflows += 1
                log.warning("fanotify: event queue overflow (the kernel allowed the opens it dropped)")
            return
        if not mask & FAN_PERM_EVENTS:
            os.close(efd)
            return
        self._c.perm_events += 1
        try:
            self._decide_and_answer(mask, efd, tid)
        except Exception as exc:  # noqa: BLE001 - never leave an event unanswered
            self._c.errors += 1
            tb = exc.__traceback__
            where = []
            while tb is not None:   # frame names only: formatting source lines opens files
                where.append(f"{tb.tb_frame.f_code.co_name}:{tb.tb_lineno}")
                tb = tb.tb_next
            log.error("fanotify: deciding for tid %d failed (%s: %s at %s): allowed",
                      tid, type(exc).__name__, exc, " < ".join(reversed(where)))
            if self._answer(efd, FAN_ALLOW):
                self._c.allows += 1
        finally:
            if self._answer(efd, FAN_ALLOW):   # never reached in normal flow
                self._c.allows += 1
            os.close(efd)
            self._c.latencies_us.append((time.monotonic() - t_read) * 1e6)

    def _allow(self, efd: int, why: str | None = None) -> None:
        """Answer ALLOW; ``why`` names the counter of a shortcut (scope, self, ...)."""
        if self._answer(efd, FAN_ALLOW):
            self._c.allows += 1
            if why is not None:
                setattr(self._c, why, getattr(self._c, why) + 1)

    def _decide_and_answer(self, mask: int, efd: int, tid: int) -> None:
        """Decide one permission event.  Reads only the facts the plan needs
        (each procfs read costs 20-40 us here); the full picture of the task
        is gathered only for a decision that is reported."""
        state = self._state
        if self._expired or (self._deadline_at is not None
                             and time.monotonic() >= self._deadline_at):
            self._allow(efd, "deadline_allows")
            return
        if state is None:
            self._allow(efd, "not_marked")   # no plan applied (yet, or any more)
            return
        st = os.fstat(efd)
        obj = (kernel_dev(st.st_dev), st.st_ino)
        path = ""
        ancestors: list[tuple[int, int]] = []
        if state.needs_parents:
            path = _fd_path(efd)
            ancestors = _ancestors(path)
        if obj not in state.marks and not (ancestors and ancestors[0] in state.child_dirs):
            self._allow(efd, "not_marked")   # a mark of the previous plan, mid-swap
            return
        task: _Task | None = None
        if state.kinds & {abi.SubjectKind.UID, abi.SubjectKind.PARENT_EXE}:
            task = self._task(tid, cgroup=False)
            if task is None:
                self._allow(efd, "gone")
                return
            is_self = task.tgid == self.self_tgid
        else:
            is_self = self._is_own_thread(tid)
        if is_self:
            self._allow(efd, "self_allows")
            return
        cgroup_id = 0
        if self.scope_cgroup_id or abi.SubjectKind.CGROUP in state.kinds:
            cgroup_id = self._cgroup_id(tid)
            if self.scope_cgroup_id and not self._in_scope(tid, cgroup_id):
                self._allow(efd, "out_of_scope")
                return
        if self.decision_hook is not None:
            self.decision_hook(tid, path or _fd_path(efd))
        facts = TaskFacts(
            exe=_exe_key(tid) if abi.SubjectKind.EXE in state.kinds else (0, 0),
            parent_exe=(_exe_key(task.ppid) if task is not None
                        and abi.SubjectKind.PARENT_EXE in state.kinds else (0, 0)),
            uid=task.uid if task is not None else 0, cgroup_id=cgroup_id)
        decide = state.matcher.decide_file
        if mask & FAN_OPEN_EXEC_PERM:
            op, d = abi.HipsOp.EXEC, decide(facts, abi.HipsOp.EXEC, obj, ancestors)
        else:
            dr = decide(facts, abi.HipsOp.OPEN_READ, obj, ancestors)
            dw = decide(facts, abi.HipsOp.OPEN_WRITE, obj, ancestors)
            if dr.action is abi.HipsAction.ALLOW and dw.action is abi.HipsAction.ALLOW:
                self._allow(efd)         # allowed whatever the open is for
                return
            ops = self._open_ops(tid)    # the opener's flags decide which applies
            if not ops:                  # the open execve does: decided as exec
                self._allow(efd)
                return
            op, d = max(((o, dr if o is abi.HipsOp.OPEN_READ else dw) for o in ops),
                        key=lambda od: _SEVERITY[od[1].action])
        if d.action is abi.HipsAction.ALLOW:
            self._allow(efd)
            return
        self._enforce(efd, tid, op, d, state, obj, path or _fd_path(efd))

    def _enforce(self, efd: int, tid: int, op: abi.HipsOp, d: Decision, state: _PlanState,
                 obj: tuple[int, int], path: str) -> None:
        """Answer a deny/kill/audit decision and report it."""
        task = self._task(tid) or _Task(tid, tid, 0, -1, -1, -1, 0)
        if d.action is abi.HipsAction.AUDIT or state.plan.mode is not abi.HipsMode.ENFORCE:
            if self._answer(efd, FAN_ALLOW):
                self._c.allows += 1
                if d.action is abi.HipsAction.AUDIT:
                    self._c.audits += 1
                else:
                    self._c.audit_only += 1
            else:
                self._c.late_decisions += 1
            self._emit(task, op, d, state.gen, path, obj, enforced=False)
            return
        pidfd = -1
        if d.action is abi.HipsAction.KILL:
            try:   # before answering: the opener cannot exit while its open waits for us
                pidfd = os.pidfd_open(task.tgid)
            except OSError as exc:
                self._c.kill_failures += 1
                log.error("fanotify: pidfd_open(%d) for kill failed: %s", task.tgid, exc)
        try:
            if not self._answer(efd, FAN_DENY):
                self._c.late_decisions += 1
                log.warning("fanotify: %s of %s by pid %d decided %s after the watchdog allowed it",
                            _OP_NAMES.get(op, op.name), path, task.tgid, d.action.name.lower())
                self._emit(task, op, d, state.gen, path, obj, enforced=False)
                return
            if d.action is abi.HipsAction.KILL:
                self._c.kills += 1
                if pidfd >= 0:
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    except OSError as exc:
                        self._c.kill_failures += 1
                        log.error("fanotify: kill of pid %d failed: %s", task.tgid, exc)
            else:
                self._c.denies += 1
            self._emit(task, op, d, state.gen, path, obj, enforced=True)
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _is_own_thread(self, tid: int) -> bool:
        if self.self_tgid == os.getpid():
            try:
                os.stat(f"/proc/self/task/{tid}")
                return True
            except OSError:
                return False
        return _status_field(tid, b"Tgid") == self.self_tgid

    # ---- facts from /proc (never marked) -------------------------------------------------

    def _task(self, tid: int, *, cgroup: bool = True) -> _Task | None:
        status = _read_proc(f"/proc/{tid}/status")
        if not status:
            return None
        vals: dict[bytes, list[bytes]] = {}
        for line in status.split(b"\n"):
            k, _, v = line.partition(b":")
            if k in (b"Tgid", b"PPid", b"Uid", b"Gid"):
                vals[k] = v.split()
        uids = vals.get(b"Uid", [b"0", b"0"])
        return _Task(tid=tid, tgid=int(vals[b"Tgid"][0]), ppid=int(vals.get(b"PPid", [b"0"])[0]),
                     uid=int(uids[0]), euid=int(uids[1]) if len(uids) > 1 else int(uids[0]),
                     gid=int(vals.get(b"Gid", [b"0"])[0]),
                     cgroup_id=self._cgroup_id(tid) if cgroup else 0)

    def _cgroup_path(self, tid: int) -> Path | None:
        if self._cg_root is None:
            return None
        for line in _read_proc(f"/proc/{tid}/cgroup").split(b"\n"):
            if line.startswith(b"0::"):
                rel = os.fsdecode(line[3:]).lstrip("/")
                return self._cg_root / rel if rel else self._cg_root
        return None

    def _cgroup_id(self, tid: int) -> int:
        p = self._cgroup_path(tid)
        if p is None:
            return 0
        try:
            return os.stat(p).st_ino
        except OSError:
            return 0

    def _in_scope(self, tid: int, cgroup_id: int) -> bool:
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

    def _open_ops(self, tid: int) -> list[abi.HipsOp]:
        """read/write from the blocked syscall's flags; [] for the open done by execve."""
        flags = self._open_flags(tid)
        if flags is None:     # fail closed: the stricter of read and write applies
            self._c.flags_unknown += 1
            return [abi.HipsOp.OPEN_READ, abi.HipsOp.OPEN_WRITE]
        if flags < 0:
            return []
        acc = flags & os.O_ACCMODE
        ops = []
        if acc in (os.O_RDONLY, os.O_RDWR) or acc == 3:
            ops.append(abi.HipsOp.OPEN_READ)
        if acc in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC:
            ops.append(abi.HipsOp.OPEN_WRITE)
        return ops

    def _open_flags(self, tid: int) -> int | None:
        """The opener's open flags; -1 inside execve; None when unknown."""
        sc = self._sys
        if sc is None:
            return None
        try:
            fields = _read_proc(f"/proc/{tid}/syscall").split()
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
        if nr == sc.openat2:
            try:   # struct open_how { u64 flags; ... } in the opener's memory
                mfd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    raw = os.pread(mfd, 8, args[2])
                finally:
                    os.close(mfd)
                return int.from_bytes(raw, "little") & 0xFFFFFFFF if len(raw) == 8 else None
            except OSError:
                return None
        return None

    # ---- events -----------------------------------------------------------------------------

    def _emit(self, task: _Task, op: abi.HipsOp, d: Decision, gen: int, path: str,
              obj: tuple[int, int], *, enforced: bool) -> None:
        comm = _read_proc(f"/proc/{task.tid}/comm").decode(errors="replace").strip()
        try:
            exe = os.readlink(f"/proc/{task.tid}/exe")
        except OSError:
            exe = ""
        proc = Proc(pid=task.tgid, tid=task.tid, ppid=task.ppid, uid=task.uid, euid=task.euid,
                    gid=task.gid, cgroup_id=task.cgroup_id, comm=comm, exe=exe)
        ev = HipsEvent(time.time_ns(), proc, False, op=_OP_NAMES.get(op, op.name.lower()),
                       action=d.action.name.lower(), rule_id=d.rule_id, subject=d.subject,
                       mechanism="fanotify", enforced=enforced,
                       ret=-errno.EPERM if enforced else 0, gen=gen, path=path, dev=obj[0],
                       ino=obj[1],
                       target_pid=task.tgid if d.action is abi.HipsAction.KILL and enforced else 0)
        with self._events_cv:
            if len(self._events) >= self._max_events:
                self._c.dropped += 1
                return
            self._events.append(ev)
            self._c.emitted += 1
            self._events_cv.notify_all()

    def poll(self, timeout_s: float = 0.0) -> list[HipsEvent]:
        """Drain the decisions reported so far, waiting up to ``timeout_s`` for one."""
        with self._events_cv:
            if not self._events and timeout_s > 0 and not self._closed:
                self._events_cv.wait(timeout_s)
            out = list(self._events)
            self._events.clear()
        return out

    def stats(self) -> dict[str, int | float]:
        c = self._c
        lat = sorted(c.latencies_us)
        state = self._state
        out: dict[str, int | float] = {
            k: getattr(c, k) for k in (
                "events", "perm_events", "allows", "denies", "kills", "kill_failures", "audits",
                "audit_only", "watchdog_allows", "late_decisions", "errors", "self_allows",
                "out_of_scope", "not_marked", "gone", "deadline_allows", "flags_unknown",
                "overflows", "emitted", "dropped", "swaps", "orphan_marks")}
        out["marks"] = len(state.marks) if state is not None else 0
        out["gen"] = state.gen if state is not None else 0
        out["unenforced"] = len(self._unenforced)
        out["expired"] = int(self._expired)
        out["decisions_timed"] = len(lat)
        out["decision_us_median"] = statistics.median(lat) if lat else 0.0
        out["decision_us_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        out["decision_us_max"] = lat[-1] if lat else 0.0
        return out


# ---- helpers (read procfs / stat only) ------------------------------------------------------


def _exe_key(pid: int) -> tuple[int, int]:
    if pid <= 0:
        return (0, 0)
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return (0, 0)     # kernel threads, exited tasks
    return (kernel_dev(st.st_dev), st.st_ino)


def _ancestors(path: str) -> list[tuple[int, int]]:
    """(dev, ino) of the parent directories of ``path``, nearest first (stat only)."""
    out: list[tuple[int, int]] = []
    if not path.startswith("/"):
        return out
    p = os.path.dirname(path)
    while len(out) < MAX_ANCESTORS:
        try:
            st = os.stat(p)
        except OSError:
            break
        out.append((kernel_dev(st.st_dev), st.st_ino))
        if p == "/":
            break
        p = os.path.dirname(p)
    return out


def _read_proc(path: str) -> bytes:
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


def _status_field(tid: int, name: bytes) -> int:
    for line in _read_proc(f"/proc/{tid}/status").split(b"\n"):
        k, _, v = line.partition(b":")
        if k == name:
            return int(v.split()[0])
    return -1


def _fd_path(efd: int) -> str:
    path = os.readlink(f"/proc/self/fd/{efd}")
    return path[: -len(" (deleted)")] if path.endswith(" (deleted)") else path


__all__ = ["FAN_ALLOW", "FAN_DENY", "FanotifyEnforcer", "DecisionHook", "supported"]
