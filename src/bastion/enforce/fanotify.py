"""Compat-tier file enforcement: fanotify permission events on targeted inode marks.

On a kernel without BPF LSM, Bastion refuses ``open`` (and, optionally,
``execve``) of the files a HIPS plan names by answering fanotify permission
events from user space.  :class:`FanotifyEnforcer` marks **only the inodes
the plan names** — files with an inode mark, directory objects with a mark
carrying ``FAN_EVENT_ON_CHILD`` on the directory and on each of its
subdirectories — never a mount or a filesystem (a whole-filesystem mark
costs ~30x per open on this host).  Each permission event is decided by
:meth:`bastion.policy.match.Matcher.decide_file` over the current
:class:`~bastion.policy.compile.MapPlan`, with facts gathered without
opening any file that could be marked:

* the object: ``os.fstat`` of the event's fd (kernel dev encoding);
* its ancestors: ``os.readlink("/proc/self/fd/N")``, that path checked to
  still name the event's inode and its parents walked with ``..``, all from
  the dentry cache (:func:`~bastion.kernel.opener.locate`); when the path
  does not confirm where the inode is (another mount namespace, a rename
  race) the strictest directory object applies (counted ``unplaced``);
* the acting task, from ``/proc/<tid>/``: ``status`` (tgid, ppid, real uid),
  ``exe`` (``statx(AT_STATX_DONT_SYNC)`` through the magic link: never waits
  on the executable's filesystem), the parent's ``exe``, ``cgroup``
  (the v2 path, stat'ed under the cgroup2 mount for its id) and ``syscall``
  (the blocked ``open``/``openat``/``openat2`` flags: read or write open).
  procfs and cgroupfs are never marked, so reading them is safe.

Kernel safety is the listener's (:class:`~bastion.kernel.fanotify.PermissionListener`:
watchdog, dead-man ``deadline_s``, every event answered, never a marked path
opened or logged to).  Events from this process (``self_tgid``, default this
process, and whatever ``is_ours`` exempts) are allowed at once; with
``scope_cgroup_id`` set, so are events from tasks outside that cgroup (and
its descendants).

What this tier cannot see (the caveats of the compat tier):

* Only ``open`` raises a permission event (pinned by
  tests/kernel/test_fanotify.py).  Not enforceable here: ``create`` (an
  ``O_CREAT`` open for writing in a protected directory is refused, but only after
  the file was created: an empty file stays behind; ``O_RDONLY|O_CREAT`` is a
  read, allowed where reads are), ``unlink``/``rmdir``,
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
  (x86-64/arm64 native syscalls), trusted only when ``/proc/<tid>/stack`` shows
  the open is that syscall's own (s27: io_uring's task work and workers and a
  core dump open files while the registers show another call).  When it cannot
  be known (32-bit compat tasks, ``openat2``, io_uring, a core dump, no readable
  stack) the stricter of the ``open-read`` and ``open-write`` decisions applies
  (fail closed), counted as ``flags_unknown``.
* Decisions are made in user space: every open of a marked inode costs a
  round trip to the listener.  Only the event kinds some task could be refused
  or audited are marked (s27).  The listener's compiled loop answers without
  Python, from tables published at every :meth:`FanotifyEnforcer.apply`: an
  inode every task may open or exec (``allow_open``/``allow_exec``: left from a
  plan swap), a read-only open of an inode every task may read
  (``allow_read``) or of any inode when the plan allows every read
  (``read_anywhere``), and, for a plan whose subjects are all executables,
  what it allows a task whose executable is none of them (``nosubj``); the
  flags from ``/proc/<tid>/syscall`` and ``stack``, the executable from a
  ``statx`` of ``/proc/<tid>/exe``.  Python takes the same short cuts first;
  every other event is decided here, reading subject facts from procfs when
  the plan needs them.
  The watchdog shares this process (and its GIL): on a starved host a
  decision slower than ``decision_timeout_s`` gets the listener's fallback:
  refused when a deny/kill rule (or a deny/kill default) covers the inode
  for that kind of open (fail closed, ``watchdog_denies``; an exe a rule
  would allow is refused too), else allowed (fail-open, ``fail_opens``,
  raised as an alert by the agent).  A file that is both marked itself and
  inside a deny-covered directory object falls back on its own rules only.
* The opener is identified by its tid at decision time through /proc; the
  opener is blocked in ``open`` meanwhile, so its tid cannot be reused unless
  it is SIGKILLed during the decision.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Callable, Final, Mapping, Sequence

from bastion import abi
from bastion.errors import ConfigError, KernelError, Location
from bastion.events import HipsEvent, Proc
from bastion.kernel.fanotify import (
    ALLOW, DEFAULT_MAX_DIRS, FAN_ALLOW, FAN_DENY, FAN_EVENT_ON_CHILD, FAN_ONDIR,
    FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM, PermEvent, PermissionListener, Verdict, subdirs, supported,
)
from bastion.kernel.opener import (
    IsOurs, Scope, Task, exe_key, fd_path, locate, open_flags, read_proc, stack_verifiable,
)
from bastion.kernel.openctx import OpenContext, load_open_context, private_bdi_dir
from bastion.policy.compile import FileTarget, MapPlan, kernel_dev
from bastion.policy.match import Decision, Matcher, TaskFacts

log = logging.getLogger(__name__)

_FILE_OPS: Final = frozenset({abi.HipsOp.OPEN_READ, abi.HipsOp.OPEN_WRITE, abi.HipsOp.EXEC})
_UNENFORCEABLE_OPS: Final = frozenset({abi.HipsOp.CREATE, abi.HipsOp.UNLINK, abi.HipsOp.RENAME,
                                       abi.HipsOp.CHMOD})
_SEVERITY: Final = MappingProxyType({abi.HipsAction.ALLOW: 0, abi.HipsAction.AUDIT: 1,
                                     abi.HipsAction.DENY: 2, abi.HipsAction.KILL: 3})
_OP_NAMES: Final = MappingProxyType({abi.HipsOp.EXEC: "exec", abi.HipsOp.OPEN_READ: "open-read",
                                     abi.HipsOp.OPEN_WRITE: "open-write"})


# ---- plan state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mark:
    path: str     # where it was found (re-resolved and checked before removal)
    mask: int


@dataclass(frozen=True)
class _PlanState:
    """One applied plan: the decision reads ``FanotifyEnforcer._state`` once per event."""

    plan: MapPlan
    matcher: Matcher
    gen: int
    marks: Mapping[tuple[int, int], _Mark]
    child_dirs: frozenset[tuple[int, int]]   # marked with FAN_EVENT_ON_CHILD
    kinds: frozenset[abi.SubjectKind]        # the subject kinds the plan names: facts to gather
    needs_parents: bool                      # directory objects: ancestors are looked up
    # fail closed (the listener's fallback on a stall or error): the inodes a deny/kill
    # rule (or a deny/kill default) covers, per event kind; a child event of a directory
    # object a deny/kill rule covers (``*_dir``)
    deny_open: frozenset[tuple[int, int]] = frozenset()
    deny_exec: frozenset[tuple[int, int]] = frozenset()
    deny_open_dir: bool = False
    deny_exec_dir: bool = False
    dir_tops: tuple[tuple[int, int], ...] = ()       # directory objects: candidate ancestors
    retired_dirs: frozenset[tuple[int, int]] = frozenset()   # child marks of earlier plans
    deny_read: frozenset[tuple[int, int]] = frozenset()      # reads denied too (fail closed)
    deny_read_dir: bool = False
    # precomputed from the plan: the marked inodes whose opens (``allow_open``: read and
    # write) or execs (``allow_exec``) every task is allowed, whoever it is; their events
    # are answered without a procfs read.  Empty when directory objects exist (an
    # ancestor's rule could apply).  Without directory objects such an event kind is not
    # marked at all (``_needed_marks``): these answer only the other kind's inodes' events
    # raised before the mark shrank (a plan swap)
    allow_open: frozenset[tuple[int, int]] = frozenset()
    allow_exec: frozenset[tuple[int, int]] = frozenset()
    # ... and those whose read-only opens every task is allowed, not their writes (a
    # write-protected file): the compiled loop answers a read-only open of them (the
    # opener's flags from /proc/TID/syscall); the rest is decided here
    allow_read: frozenset[tuple[int, int]] = frozenset()
    # every read-only open is allowed to every task, of any inode, whatever its directory
    # (no rule on reads but allow rules, a default that allows): a write-protected
    # directory tree's read-only opens are answered from the opener's flags alone
    read_anywhere: bool = False
    # a per-program plan (its subjects are all executables): what a task no subject names
    # is allowed on every inode, whatever its directory (open: read and write; read: a
    # read-only open; exec), and the executables that are subjects.  Such a task's events
    # are answered from its executable's identity (and the flags) alone
    nosubj: tuple[bool, bool, bool] = (False, False, False)
    subject_exes: frozenset[tuple[int, int]] = frozenset()


def _everyone_allows(plan: MapPlan) -> Callable[[tuple[int, int], abi.HipsOp], bool]:
    """``allowed(inode, op)``: does :meth:`Matcher.decide_file` (no ancestors) give ALLOW
    for ``op`` on ``inode`` whatever the task's subjects?  Every rule a subject could hit
    (on the inode or on ``any``) allows, and a task with no rule of its own gets the rule
    for everyone or the default, which allows too."""
    acts: dict[tuple[int, int, int, int], int] = {}   # (subject, op, dev, ino) -> action
    subjects: set[int] = {0}
    for (subj, op, dev, ino), (act, _rid) in plan.rules:
        acts[(subj, op, dev, ino)] = act
        subjects.add(subj)
    default = int(plan.default_action)

    def allowed(key: tuple[int, int], op: abi.HipsOp) -> bool:
        # each subject's most specific rule (the inode, then ``any``) decides for a task
        # with that subject; a task with none of them gets the rule for everyone, then
        # the default (such a task always exists)
        for subj in subjects:
            act = acts.get((subj, op, *key))
            if act is None:
                act = acts.get((subj, op, 0, 0))
            if act is None and subj == 0:
                act = default
            if act is not None and act != abi.HipsAction.ALLOW:
                return False
        return True
    return allowed


def _needed_marks(plan: MapPlan, marks: Mapping[tuple[int, int], _Mark]
                  ) -> dict[tuple[int, int], _Mark]:
    """``marks`` without the event kinds whose every decision is ALLOW (s27): an inode
    only allow rules name (a learned policy names hundreds) raised a permission event
    on every open, each a round trip to the listener (7x an open with the compiled
    loop, ~30x in Python), to be answered ALLOW whoever opened it.  Only for a plan
    without directory objects: an ancestor's rule can apply to a marked inode there.
    An 'any' rule of a subject applies only to inodes other rules name, so such an
    inode is not all-allowed and stays marked (``_everyone_allows`` reads ``any``)."""
    allowed = _everyone_allows(plan)
    out: dict[tuple[int, int], _Mark] = {}
    for key, m in marks.items():
        mask = m.mask
        if mask & FAN_OPEN_PERM and allowed(key, abi.HipsOp.OPEN_READ) \
                and allowed(key, abi.HipsOp.OPEN_WRITE):
            mask &= ~FAN_OPEN_PERM
        if mask & FAN_OPEN_EXEC_PERM and allowed(key, abi.HipsOp.EXEC):
            mask &= ~FAN_OPEN_EXEC_PERM
        if mask & (FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM):
            out[key] = _Mark(m.path, mask)
    return out


def _allow_sets(plan: MapPlan, marks: Mapping[tuple[int, int], object], dirs: bool
                ) -> tuple[frozenset[tuple[int, int]], frozenset[tuple[int, int]],
                           frozenset[tuple[int, int]]]:
    """(allow_open, allow_exec, allow_read) of :class:`_PlanState`: the marked inodes
    whose opens (read and write), execs, or read-only opens (not writes) every task is
    allowed (``_everyone_allows``)."""
    if dirs:
        return frozenset(), frozenset(), frozenset()
    allowed = _everyone_allows(plan)
    opn = frozenset(k for k in marks if allowed(k, abi.HipsOp.OPEN_READ)
                    and allowed(k, abi.HipsOp.OPEN_WRITE))
    exe = frozenset(k for k in marks if allowed(k, abi.HipsOp.EXEC))
    rd = frozenset(k for k in marks if k not in opn and allowed(k, abi.HipsOp.OPEN_READ))
    return opn, exe, rd


def _reads_anywhere(plan: MapPlan) -> bool:
    """Does :meth:`Matcher.decide_file` give ALLOW for every read-only open, whoever the
    task, whatever the inode and its ancestors?  True when every rule on reads allows
    and so does the default (the decision is then a rule that allows or the default)."""
    if plan.default_action is not abi.HipsAction.ALLOW:
        return False
    return all(act == abi.HipsAction.ALLOW for (_s, op, _d, _i), (act, _r) in plan.rules
               if op == abi.HipsOp.OPEN_READ)


def _nosubj(plan: MapPlan) -> tuple[tuple[bool, bool, bool], frozenset[tuple[int, int]]]:
    """((open, read, exec), subject executables) of :class:`_PlanState`: when every
    subject of the plan is an executable (``exe:``), whether :meth:`Matcher.decide_file`
    gives ALLOW to a task whose executable is none of them, for every inode and ancestor:
    every open (read and write), only a read-only one, every exec.  Such a task has no
    subject, so its decision is the rule for everyone, then the default: it allows when
    every rule for everyone on that operation allows and so does the default.  Any
    other subject kind (parent, uid, cgroup) needs facts of its own: none of this."""
    if any(kind != abi.SubjectKind.EXE for (kind, _a, _b), _s in plan.subjects) or \
            plan.default_action is not abi.HipsAction.ALLOW:
        return (False, False, False), frozenset()

    def everyone_allows(op: abi.HipsOp) -> bool:
        return all(act == abi.HipsAction.ALLOW for (subj, o, _d, _i), (act, _r) in plan.rules
                   if subj == 0 and o == op)
    read = everyone_allows(abi.HipsOp.OPEN_READ)
    opn = read and everyone_allows(abi.HipsOp.OPEN_WRITE)
    exe = everyone_allows(abi.HipsOp.EXEC)
    # the key of an exe subject is (EXE, ino, dev); an identity is (dev, ino)
    exes = frozenset((b, a) for (_k, a, b), _s in plan.subjects)
    return (opn, read and not opn, exe), exes


@dataclass
class _Counters:
    denies: int = 0
    kills: int = 0
    kill_failures: int = 0
    kills_gone: int = 0          # denied, then gone (exited and reaped) before the kill landed
    audits: int = 0
    audit_only: int = 0          # deny/kill decided in audit mode: reported, allowed
    flags_unknown: int = 0
    emitted: int = 0
    dropped: int = 0
    swaps: int = 0
    unplaced: int = 0            # a child event whose directory the path did not confirm:
                                 # decided by the strictest directory object (bind mount, race)


@dataclass(frozen=True)
class _FailClosed:
    deny_open: frozenset[tuple[int, int]]
    deny_exec: frozenset[tuple[int, int]]
    deny_open_dir: bool
    deny_exec_dir: bool
    dir_tops: tuple[tuple[int, int], ...]
    # the subset whose *reads* are denied too: a stalled open of an inode only
    # write-denied fails closed only when the opener's flags say write (or are unknown)
    deny_read: frozenset[tuple[int, int]] = frozenset()
    deny_read_dir: bool = False


_DecideFile = Callable[[TaskFacts, abi.HipsOp, tuple[int, int], Sequence[tuple[int, int]]],
                       Decision]

DecisionHook = Callable[[int, str], None]
"""Test seam: called as ``hook(tid, path)`` by the listener before each decision."""


def _covered(state: _PlanState, is_exec: bool, obj: tuple[int, int]) -> bool:
    """Does a deny/kill rule cover ``obj`` (fail closed on a stall)?  An inode not
    marked itself raised its event through a directory object's mark."""
    if is_exec:
        keys, by_dir = state.deny_exec, state.deny_exec_dir
    else:
        keys, by_dir = state.deny_open, state.deny_open_dir
    return obj in keys or (by_dir and obj not in state.marks)


def _identity(task: Task) -> tuple[str, str]:
    """(comm, exe path) of the acting task from procfs ('' for an exe that cannot be read:
    a kernel thread, a task that is gone)."""
    comm = read_proc(f"/proc/{task.tid}/comm").decode(errors="replace").strip()
    try:
        exe = os.readlink(f"/proc/{task.tid}/exe")
    except OSError:
        exe = ""
    return comm, exe


class FanotifyEnforcer:
    """Decide opens of the plan's inodes in user space (compat tier).

    Typical use::

        enf = FanotifyEnforcer(deadline_s=None)
        enf.open(); enf.start()
        enf.apply(plan, targets)          # again for every new plan (atomic swap)
        for ev in enf.poll(0.5): ...      # HipsEvent records, mechanism "fanotify"
        enf.close()

    It owns the plan, the marks it asks for and the decision; the fanotify
    group, listener thread and watchdog are its :attr:`listener`'s.
    """

    def __init__(self, *, scope_cgroup_id: int = 0, deadline_s: float | None = None,
                 self_tgid: int = 0, decision_timeout_s: float = 0.2,
                 max_dirs: int = DEFAULT_MAX_DIRS, max_events: int = 4096,
                 decision_hook: DecisionHook | None = None,
                 is_ours: IsOurs | None = None, compiled: bool = True,
                 open_context: bool = True) -> None:
        self.scope = Scope(self_tgid=self_tgid, scope_cgroup_id=scope_cgroup_id, is_ours=is_ours)
        # the compiled loop trusts a read's registers on openctx.bpf.o's marks (False,
        # or where it cannot load: on the opener's stack, ~16 us more per read)
        self.open_context = open_context
        self.open_context_why: str | None = None   # why the marks are not used
        self._octx: OpenContext | None = None
        self.listener = PermissionListener(self._decide, deadline_s=deadline_s,
                                           decision_timeout_s=decision_timeout_s,
                                           fallback=self._fallback, compiled=compiled)
        self.max_dirs = max_dirs
        self.decision_hook = decision_hook
        self._state: _PlanState | None = None
        self._gen = 0
        self._unenforced: tuple[str, ...] = ()
        self._c = _Counters()
        self._events: collections.deque[HipsEvent] = collections.deque()
        self._max_events = max_events
        self._events_cv = threading.Condition()

    @property
    def self_tgid(self) -> int:
        return self.scope.self_tgid

    @property
    def scope_cgroup_id(self) -> int:
        return self.scope.scope_cgroup_id

    # ---- lifecycle -----------------------------------------------------------------

    def open(self) -> FanotifyEnforcer:
        """Create the fanotify group and start the watchdog."""
        if self.listener.fd >= 0:
            return self
        self.listener.open()
        try:
            why = self.scope.resolve()
        except KernelError:
            self.close()
            raise
        if why is not None:
            log.warning("fanotify: no cgroup v2 hierarchy (%s): cgroup subjects never match", why)
        stack_verifiable()   # probed now, before any mark exists (cached for the decisions)
        self._use_open_context()
        return self

    def _use_open_context(self) -> None:
        """Load openctx.bpf.o and hand its marks to the compiled loop.  Where it cannot
        be used, say why (``open_context_why``, a warning): the stack stays the check."""
        if not self.open_context:
            self.open_context_why = "turned off"
            return
        if not self.listener.compiled_loop:
            self.open_context_why = "no compiled loop"
            return
        octx, why = load_open_context()
        if octx is None:
            self.open_context_why = why
            log.warning("fanotify: open context unavailable (%s): each read-only open of a "
                        "write-protected file is checked on the opener's stack (~16 us more)",
                        why)
            return
        try:
            fds = octx.fds()
            bdi = private_bdi_dir()
            try:
                self.listener.use_open_context(fds.tids, fds.words, fds.counts, bdi)
            finally:
                os.close(bdi)
        except KernelError as exc:
            octx.close()
            self.open_context_why = str(exc)
            log.warning("fanotify: open context refused (%s): each read-only open of a "
                        "write-protected file is checked on the opener's stack", exc)
            return
        except BaseException:
            octx.close()
            raise
        self._octx = octx
        self.open_context_why = None
        log.info("fanotify: open context on (threads already there keep the stack check)")

    def start(self) -> FanotifyEnforcer:
        """Run the listener in a daemon thread."""
        if self.listener.fd < 0:
            self.open()
        self.listener.start()
        return self

    def run(self) -> None:
        """The listener loop (blocking); :meth:`start` runs it in a thread."""
        self.listener.run()

    def __enter__(self) -> FanotifyEnforcer:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove every mark, allow anything pending, close the group."""
        if self.listener.closed:
            return
        with self.listener.mark_lock:
            self._state = None
        self.listener.close()
        if self._octx is not None:   # the loop has unmapped its maps
            self._octx.close()
            self._octx = None
        with self._events_cv:
            self._events_cv.notify_all()

    # ---- plans ------------------------------------------------------------------------

    def marked(self) -> dict[tuple[int, int], str]:
        """The inodes marked for the current plan (directories included), with their paths."""
        st = self._state
        return {k: m.path for k, m in st.marks.items()} if st is not None else {}

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
        lis = self.listener
        if not lis.is_open:
            raise KernelError("fanotify enforcer is not open", location=Location("fanotify"))
        with lis.mark_lock:
            if lis.expired:
                raise KernelError("fanotify enforcer is past its deadline: nothing is marked",
                                  location=Location("fanotify"))
            marks, child_dirs, problems, fc = self._plan_marks(plan, targets)
            if not (child_dirs or plan.flags & abi.HIPS_F_DIR_OBJECTS):
                marks = _needed_marks(plan, marks)
            old = self._state
            old_marks: Mapping[tuple[int, int], _Mark] = old.marks if old is not None else {}
            added: list[tuple[tuple[int, int], _Mark]] = []
            vanished: list[tuple[int, int]] = []
            try:
                for key, m in marks.items():
                    prev = old_marks.get(key)
                    extra = m.mask & ~(prev.mask if prev is not None else 0)
                    if extra:
                        try:
                            lis.mark(m.path, key, extra)
                        except OSError as exc:
                            # a subdirectory of a directory object removed (or replaced)
                            # since the walk found it: nothing is left there to protect,
                            # and a directory made there later is a new inode, decided as
                            # unplaced (the strictest directory object)
                            if key in child_dirs and exc.errno in (errno.ENOENT, errno.ESTALE):
                                vanished.append(key)
                                continue
                            raise
                        added.append((key, _Mark(m.path, extra)))
                for key in vanished:
                    del marks[key]
                    child_dirs.discard(key)
            except (KernelError, OSError) as exc:
                for key, m in added:   # roll back: the old plan stays in force
                    prev = old_marks.get(key)
                    lis.unmark(m.path, key, m.mask & ~(prev.mask if prev else 0))
                if isinstance(exc, KernelError):
                    raise
                raise KernelError(f"fanotify: cannot mark: {exc.strerror}",
                                  errno=exc.errno or errno.EIO,
                                  location=Location(exc.filename or "fanotify")) from exc
            self._gen += 1
            retired = ((old.retired_dirs | old.child_dirs) if old is not None else frozenset())
            needs_parents = bool(child_dirs) or bool(plan.flags & abi.HIPS_F_DIR_OBJECTS)
            allow_open, allow_exec, allow_read = _allow_sets(plan, marks, needs_parents)
            nosubj, subject_exes = _nosubj(plan)
            unverified = stack_verifiable()
            if unverified is not None and marks:
                problems.append(
                    f"read vs write of an open is taken from the system call the opener is "
                    f"in, unchecked ({unverified}): an open io_uring or a core dump makes on "
                    f"its behalf is judged by that call's flags")
            self._state = _PlanState(
                plan, Matcher(plan), self._gen, MappingProxyType(dict(marks)),
                frozenset(child_dirs), frozenset(abi.SubjectKind(k) for (k, _a, _b), _s in plan.subjects),
                needs_parents, deny_open=fc.deny_open, deny_exec=fc.deny_exec, deny_open_dir=fc.deny_open_dir,
                deny_exec_dir=fc.deny_exec_dir, dir_tops=fc.dir_tops,
                retired_dirs=frozenset(retired - child_dirs), deny_read=fc.deny_read,
                deny_read_dir=fc.deny_read_dir, allow_open=allow_open, allow_exec=allow_exec,
                allow_read=allow_read, read_anywhere=_reads_anywhere(plan),
                nosubj=nosubj, subject_exes=subject_exes)
            # the compiled loop answers these itself (never with a decision hook: the
            # hook must see every decided event); from here on, not from the old sets
            try:
                if self.decision_hook is None and unverified is None:
                    lis.set_fast_allow(allow_open, allow_exec, allow_read,
                                       read_anywhere=self._state.read_anywhere, nosubj=nosubj,
                                       subject_exes=subject_exes)
                elif self.decision_hook is None:
                    # the compiled loop checks each read's stack: without one that can
                    # be read, no read is answered there (Python decides, as it can)
                    lis.set_fast_allow(allow_open, allow_exec, nosubj=(nosubj[0], False, nosubj[2]),
                                       subject_exes=subject_exes)
                else:
                    lis.set_fast_allow(frozenset(), frozenset())
            except KernelError:
                # the new table could not be made (out of memory): the old one must not
                # answer for the new plan (it may allow any read); an empty one cannot
                # fail, and every event goes to Python
                lis.set_fast_allow(frozenset(), frozenset())
                raise
            for key, m in old_marks.items():
                new = marks.get(key)
                lis.unmark(m.path, key, m.mask & ~(new.mask if new is not None else 0))
            self._unenforced = tuple(problems)
            if old is not None:
                self._c.swaps += 1
        for p in problems:
            log.warning("fanotify: not enforced: %s", p)

    def clear(self) -> None:
        """No policy: remove every mark, then forget the plan (opens are no longer seen)."""
        if not self.listener.is_open:
            return
        with self.listener.mark_lock:
            self.listener.flush_marks("clear")
            self._state = None
            self.listener.set_fast_allow(frozenset(), frozenset())
            self._unenforced = ()

    def _plan_marks(self, plan: MapPlan, targets: Sequence[FileTarget]
                    ) -> tuple[dict[tuple[int, int], _Mark], set[tuple[int, int]], list[str],
                               _FailClosed]:
        names = {r.rule_id: r.name for r in plan.rule_table}
        problems: list[str] = []
        ops: dict[tuple[int, int], set[abi.HipsOp]] = {}
        denied: dict[tuple[int, int], set[abi.HipsOp]] = {}   # ops a deny/kill rule covers
        acted: set[tuple[int, int]] = set()    # inodes a deny/kill/audit rule names
        guarded: dict[tuple[int, int], list[str]] = {}        # rules that restrict opens
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
            if action is not abi.HipsAction.ALLOW:
                acted.add((dev, ino))
            if action is not abi.HipsAction.ALLOW and op is not abi.HipsOp.EXEC \
                    and rname not in guarded.get((dev, ino), ()):
                guarded.setdefault((dev, ino), []).append(rname)
            if action in (abi.HipsAction.DENY, abi.HipsAction.KILL):
                denied.setdefault((dev, ino), set()).add(op)
        if plan.default_action in (abi.HipsAction.DENY, abi.HipsAction.KILL):
            for key, key_ops in ops.items():   # the default applies to every marked inode
                denied.setdefault(key, set()).update(key_ops)
        if plan.default_action is not abi.HipsAction.ALLOW and ops:
            problems.append(f"default {plan.default_action.name.lower()} applies only to opens of "
                            f"the inodes rules name (no filesystem-wide mark)")
        marks: dict[tuple[int, int], _Mark] = {}
        child_dirs: set[tuple[int, int]] = set()
        found: set[tuple[int, int]] = set()
        ndirs = 0
        deny_open: set[tuple[int, int]] = set()
        deny_exec: set[tuple[int, int]] = set()
        dir_open = dir_exec = False
        deny_read: set[tuple[int, int]] = set()
        dir_read = False
        tops: list[tuple[int, int]] = []

        def add(key: tuple[int, int], path: str, mask: int) -> None:
            prev = marks.get(key)
            marks[key] = _Mark(prev.path if prev else path, mask | (prev.mask if prev else 0))

        default_allows = plan.default_action is abi.HipsAction.ALLOW
        for t in targets:
            key = (t.dev, t.ino)
            want = ops.get(key)
            if not want:
                continue
            if t.is_dir and default_allows and key not in acted:
                # a directory object only allow rules name: every decision in it would
                # be ALLOW (an 'any' deny applies only to marked inodes, and an
                # ancestor's rule is found through the path, not the mark), so marking
                # its whole tree would only cost -- and a learned 'allow /tmp/' would
                # be refused on a host whose /tmp holds more than max_dirs directories
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
            deny = denied.get(key, set())
            is_dir_object = stat.S_ISDIR(st.st_mode) and t.is_dir
            if deny & {abi.HipsOp.OPEN_READ, abi.HipsOp.OPEN_WRITE}:
                deny_open.add(key)
                dir_open |= is_dir_object
            if abi.HipsOp.OPEN_READ in deny:
                deny_read.add(key)
                dir_read |= is_dir_object
            if abi.HipsOp.EXEC in deny:
                deny_exec.add(key)
                dir_exec |= is_dir_object
            if not stat.S_ISDIR(st.st_mode):
                add(key, t.path, mask)
                continue
            if not t.is_dir:
                add(key, t.path, mask | FAN_ONDIR)   # a rule on opening the directory itself
                continue
            tops.append(key)
            for rname in guarded.get(key, ()):
                problems.append(
                    f"rule {rname!r}: a hard link or rename out of directory object {t.path} is "
                    f"not refused (fanotify has no link or rename permission event) and opens "
                    f"through the new name are not decided; the agent alerts it after the fact")
            # a directory object: the directory and every subdirectory on its filesystem
            for dpath, dkey in subdirs(t.path, st, self.max_dirs):
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
        if plan.mode is not abi.HipsMode.ENFORCE:   # nothing is refused: never fail closed
            deny_open.clear()
            deny_exec.clear()
            deny_read.clear()
            dir_open = dir_exec = dir_read = False
        fc = _FailClosed(frozenset(deny_open), frozenset(deny_exec), dir_open, dir_exec,
                         tuple(dict.fromkeys(tops)), frozenset(deny_read), dir_read)
        return marks, child_dirs, problems, fc

    # ---- fail closed (listener or watchdog thread: fstat, dict lookups, procfs) ---------

    def _fallback(self, ev: PermEvent) -> int:
        """The answer a stalled (or failed) decision gets: FAN_DENY for an inode a
        deny/kill rule covers, else FAN_ALLOW.  Never walks a path."""
        state = self._state
        if state is None:
            return FAN_ALLOW
        if not (state.deny_exec or state.deny_exec_dir if ev.is_exec
                else state.deny_open or state.deny_open_dir):
            return FAN_ALLOW
        key = ev.key
        if not _covered(state, ev.is_exec, key):
            return FAN_ALLOW
        scope = self.scope
        if scope.is_self(ev.tid) or scope.out_of_scope(ev.tid):
            return FAN_ALLOW
        if not ev.is_exec and not (key in state.deny_read
                                   or (state.deny_read_dir and key not in state.marks)):
            # only writes are denied here: a read must not fail (a protected install tree
            # or stdlib is read by every program); the flags come from procfs, no wait
            flags = open_flags(ev.tid)
            if flags is not None and flags >= 0 and (flags & os.O_ACCMODE) == os.O_RDONLY \
                    and not flags & os.O_TRUNC:
                return FAN_ALLOW
        return FAN_DENY

    # ---- the decision (listener thread; reads procfs and stats only) --------------------

    def _decide(self, ev: PermEvent) -> Verdict:
        """Decide one permission event.  Reads only the facts the plan needs
        (each procfs read costs 20-40 us here); the full picture of the task
        is gathered only for a decision that is reported."""
        state = self._state
        if state is None:
            return Verdict.allow("not_marked")   # no plan applied (yet, or any more)
        efd, tid = ev.fd, ev.tid
        obj = ev.key
        if (obj in (state.allow_exec if ev.is_exec else state.allow_open)
                and self.decision_hook is None):
            return ALLOW   # the plan allows every task this open: no fact to gather
        if self.decision_hook is None:
            nosubj_open, nosubj_read, nosubj_exec = state.nosubj
            read_ok = not ev.is_exec and (state.read_anywhere or obj in state.allow_read)
            if (nosubj_exec if ev.is_exec else nosubj_open or nosubj_read) \
                    and exe_key(tid) not in state.subject_exes:
                # a per-program plan and an opener no subject names: allowed anywhere
                if ev.is_exec or nosubj_open:
                    return ALLOW
                read_ok = True
            if read_ok:
                # every task may read it (a write-protected file), or this one anything:
                # only the flags matter
                flags = open_flags(tid)
                if flags is not None and flags >= 0 and \
                        (flags & os.O_ACCMODE) == os.O_RDONLY and not flags & os.O_TRUNC:
                    return ALLOW
        path = ""
        parents: list[tuple[int, int]] = []
        unplaced = False
        if state.needs_parents:
            path = fd_path(efd)
            # the path names this inode now (another mount namespace's path, a rename
            # race or a bind mount give another inode or none), and a child event's
            # parent is one of our directories: else the strictest directory object rules
            confirmed, parents = locate(path, obj)
            in_dir = bool(parents) and parents[0] in state.child_dirs
            if confirmed and (in_dir or obj in state.marks):
                pass
            elif confirmed and parents and parents[0] in state.retired_dirs:
                return Verdict.allow("not_marked")   # a mark of an earlier plan
            else:
                unplaced = True
        elif obj not in state.marks:
            return Verdict.allow("not_marked")   # a mark of the previous plan, mid-swap
        task: Task | None = None
        scope = self.scope
        if state.kinds & {abi.SubjectKind.UID, abi.SubjectKind.PARENT_EXE}:
            task = scope.task(tid, cgroup=False)
            if task is None:
                return Verdict.allow("gone")
            is_self = scope.is_self_tgid(task.tgid)
        else:
            is_self = scope.is_self(tid)
        if is_self:
            return Verdict.allow("self_allows")
        cgroup_id = 0
        if scope.scope_cgroup_id or abi.SubjectKind.CGROUP in state.kinds:
            cgroup_id = scope.cgroup_id(tid)
            if scope.scope_cgroup_id and not scope.in_scope(tid, cgroup_id):
                return Verdict.allow("out_of_scope")
        if self.decision_hook is not None:
            self.decision_hook(tid, path or fd_path(efd))
        facts = TaskFacts(
            exe=exe_key(tid) if abi.SubjectKind.EXE in state.kinds else (0, 0),
            parent_exe=(exe_key(task.ppid) if task is not None
                        and abi.SubjectKind.PARENT_EXE in state.kinds else (0, 0)),
            uid=task.uid if task is not None else 0, cgroup_id=cgroup_id)
        decide: _DecideFile = state.matcher.decide_file
        if unplaced:
            self._c.unplaced += 1
            n = self._c.unplaced
            if n & (n - 1) == 0:   # the 1st, 2nd, 4th...: a flood cannot flood the log
                log.warning("fanotify: %s (inode %d:%d) is not where its path says: the "
                            "strictest directory object applies (%d so far)", path, obj[0],
                            obj[1], n)
            decide = self._strictest(state, obj in state.marks)
        if ev.is_exec:
            op, d = abi.HipsOp.EXEC, decide(facts, abi.HipsOp.EXEC, obj, parents)
        else:
            dr = decide(facts, abi.HipsOp.OPEN_READ, obj, parents)
            dw = decide(facts, abi.HipsOp.OPEN_WRITE, obj, parents)
            if dr.action is abi.HipsAction.ALLOW and dw.action is abi.HipsAction.ALLOW:
                return ALLOW             # allowed whatever the open is for
            ops = self._open_ops(tid)    # the opener's flags decide which applies
            if not ops:                  # the open execve does: decided as exec
                return ALLOW
            op, d = max(((o, dr if o is abi.HipsOp.OPEN_READ else dw) for o in ops),
                        key=lambda od: _SEVERITY[od[1].action])
        if d.action is abi.HipsAction.ALLOW:
            return ALLOW
        return self._enforce(tid, op, d, state, obj, path or fd_path(efd))

    @staticmethod
    def _strictest(state: _PlanState, own_mark: bool) -> _DecideFile:
        """decide_file as if the object were in whichever directory object (or, when
        the inode is marked itself, in none) gives the strictest decision."""
        m = state.matcher

        def decide(facts: TaskFacts, op: abi.HipsOp, obj: tuple[int, int],
                   _parents: Sequence[tuple[int, int]] = ()) -> Decision:
            cands = [m.decide_file(facts, op, obj, [top]) for top in state.dir_tops]
            if own_mark or not cands:
                cands.append(m.decide_file(facts, op, obj, ()))
            return max(cands, key=lambda d: _SEVERITY[d.action])
        return decide

    def _enforce(self, tid: int, op: abi.HipsOp, d: Decision, state: _PlanState,
                 obj: tuple[int, int], path: str) -> Verdict:
        """The answer to a deny/kill/audit decision; it is reported once answered."""
        task = self.scope.task(tid) or Task(tid, tid, 0, -1, -1, -1, 0)
        # the actor's comm and exe read now, while its open waits for our answer: the
        # record is built after the answer, when a refused process may be gone
        ident = _identity(task)
        if d.action is abi.HipsAction.AUDIT or state.plan.mode is not abi.HipsMode.ENFORCE:
            def audited(in_time: bool) -> None:
                if in_time:
                    if d.action is abi.HipsAction.AUDIT:
                        self._c.audits += 1
                    else:
                        self._c.audit_only += 1
                self._emit(task, ident, op, d, state.gen, path, obj, enforced=False)
            return Verdict.allow(after=audited)
        pidfd = -1
        if d.action is abi.HipsAction.KILL:
            try:   # before answering: the opener cannot exit while its open waits for us
                pidfd = os.pidfd_open(task.tgid)
            except OSError as exc:
                self._c.kill_failures += 1
                log.error("fanotify: pidfd_open(%d) for kill failed: %s", task.tgid, exc)

        # a late deny the watchdog already answered with the fail-closed fallback
        fell_closed = _covered(state, op is abi.HipsOp.EXEC, obj)

        def denied(in_time: bool) -> None:
            try:
                if not in_time and not fell_closed:
                    log.warning("fanotify: %s of %s by pid %d decided %s after the watchdog "
                                "allowed it", _OP_NAMES.get(op, op.name), path, task.tgid,
                                d.action.name.lower())
                    self._emit(task, ident, op, d, state.gen, path, obj, enforced=False)
                    return
                if d.action is abi.HipsAction.KILL:
                    self._c.kills += 1
                    if pidfd >= 0:
                        try:
                            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        except ProcessLookupError:
                            # the open failed (denied above), the opener exited and its
                            # parent reaped it before this kill: nothing is left to kill
                            # (CI-S of s29: a shell reaped its cat in between)
                            self._c.kills_gone += 1
                            log.info("fanotify: pid %d was gone (denied, exited) before its "
                                     "kill", task.tgid)
                        except OSError as exc:
                            self._c.kill_failures += 1
                            log.error("fanotify: kill of pid %d failed: %s", task.tgid, exc)
                else:
                    self._c.denies += 1
                self._emit(task, ident, op, d, state.gen, path, obj, enforced=True)
            finally:
                if pidfd >= 0:
                    os.close(pidfd)
        return Verdict.deny(after=denied)

    def _open_ops(self, tid: int) -> list[abi.HipsOp]:
        """read/write from the blocked syscall's flags; [] for the open done by execve."""
        flags = open_flags(tid)
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

    # ---- events -----------------------------------------------------------------------------

    def _emit(self, task: Task, ident: tuple[str, str], op: abi.HipsOp, d: Decision, gen: int,
              path: str, obj: tuple[int, int], *, enforced: bool) -> None:
        comm, exe = ident
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
            if not self._events and timeout_s > 0 and not self.listener.closed:
                self._events_cv.wait(timeout_s)
            out = list(self._events)
            self._events.clear()
        return out

    def read_check(self) -> str:
        """For ``status``: how a read-only open of a write-protected file is told from the
        others -- the open context's marks (threads that were there before them: their
        stack), the opener's stack and why, or Python alone."""
        if not self.listener.compiled_loop:
            return f"Python on the opener's stack (no compiled loop: {self.listener.compiled_why})"
        if self._octx is not None:
            return "open context marks (threads older than them: the opener's stack)"
        return f"the opener's stack (open context off: {self.open_context_why})"

    def stats(self) -> dict[str, int | float]:
        c = self._c
        state = None if self.listener.expired else self._state   # expired: nothing marked
        out = self.listener.stats()
        out.update({k: getattr(c, k) for k in c.__dataclass_fields__})
        out["marks"] = len(state.marks) if state is not None else 0
        out["gen"] = state.gen if state is not None else 0
        out["unenforced"] = len(self._unenforced)
        out["open_context"] = int(self._octx is not None)
        return out


__all__ = ["FAN_ALLOW", "FAN_DENY", "FanotifyEnforcer", "DecisionHook", "IsOurs", "supported"]
