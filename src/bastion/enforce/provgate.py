"""Stop before the harm (issue 15): refuse the must-stop file acts of an untrusted tree.

The compat tier's kill lands after the syscall: when a dropped script's last step is
``echo ... >> ~/.bashrc`` or ``cat /etc/shadow`` the act is done before the kill.
This gate refuses the *open* instead, with a fanotify permission decision on the
must-stop objects only (inode marks on the files, ``FAN_EVENT_ON_CHILD`` marks on
the directories and their subdirectories; never a mount or a filesystem):

* ``persistence`` objects (cron, systemd units and timers, shell profiles,
  authorized_keys, sudoers and PAM, ld.so.preload, rc scripts, udev and
  module-load configs): a *write* open (``O_WRONLY``/``O_RDWR``/``O_TRUNC``;
  unknown flags count as a write: fail closed) is refused;
* ``credential`` objects (/etc/shadow and gshadow, private keys, cloud and kube
  credentials): *any* open is refused;
* ``log`` objects (/var/log, shell histories): an open for writing without
  ``O_APPEND``, or with ``O_TRUNC``, is refused (appending and reading are a log's
  use; truncate(2), unlink and rename raise no fanotify event: not refused here);

marked again on the agent's tick (:meth:`AgentGate.tick`: objects made since the
start, incrementally, a failed pass keeping every mark),

when the opener's process has untrusted provenance in the kernel's ``prov`` map
(:class:`ProvenanceMap`; ``bpf/lib/prov.h``): one map lookup by tgid, no /proc
ancestry walk (the tgid and the open flags are one read each of the opener's own
``/proc/<tid>/status`` and ``syscall``).  A missing entry is no untrusted
provenance: allowed, unseen.

Choices (docs/threat-model.md, "Provenance before the act"):

* **Trusted administrator tools by inode** get nothing against a tainted tree: the
  taint is the tree's, so a /tmp script that runs ``crontab`` or ``tee`` is
  refused like the script.  A trusted tool in a clean tree has no entry and is
  allowed; a binary copied to a trusted tool's name lives where it was dropped
  (tmp-binary) or came from the network: refused.  The refusal alert names the
  trusted tool when the opener is one (``trusted`` of :class:`GateDecision`).
* **An administrator's interactive session** is carried by the kernel bit
  ``BASTION_PROV_ADMIN_TTY`` (user space sets it on the session's login shell,
  the fork path copies it down): with it, the *local* reasons (tmp-script,
  tmp-binary) are allowed and reported (action ``audit``); every other reason
  is refused in any session.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Callable, Final, Literal, Mapping, Sequence

from bastion import abi
from bastion.errors import BastionError, ConfigError, KernelError, Location
from bastion.detect.engine import Finding
from bastion.events import HipsEvent, Proc
from bastion.kernel.fanotify import (
    ALLOW, DEFAULT_MAX_DIRS, FAN_ALLOW, FAN_DENY, FAN_EVENT_ON_CHILD, FAN_OPEN_PERM, PermEvent,
    PermissionListener, Verdict,
)
from bastion.kernel.opener import (
    Scope, exe_key, fd_path, forget_ns_tops, locate, open_flags, opener_roots, read_proc,
    status_field,
)
from bastion.enforce import muststop as _ms
from bastion.enforce.muststop import (
    DEFAULT_CREDENTIAL, DEFAULT_PERSISTENCE, DEFAULT_PROFILE_DIRS, HISTORY_NAMES, PROFILE_NAMES,
    GateObject,
    default_objects,
)
from bastion.sensors.provenance import (
    TMP_DIRS, ProvenanceMap, default_interpreters, reason_names,
)

log = logging.getLogger(__name__)

# The must-stop objects: one list for both tiers (this gate and the lsm tier's hook,
# enforce/provgate_lsm.py); this gate marks the kinds of COMPAT_KINDS.
Kind = _ms.Kind
_KINDS: Final = _ms.COMPAT_KINDS


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided for one open (reported once answered)."""

    tid: int
    tgid: int
    kind: Kind
    op: str                 # open-read / open-write
    path: str
    obj: tuple[int, int]
    reasons: tuple[str, ...]
    action: str             # deny, audit (the admin's session: allowed)
    prevented: str
    trusted: str | None
    event: HipsEvent | None = None   # the record of it (set once reported)
    why: str = ""           # an allowed act's reason other than the admin's session
    placed: str = ""        # where the object was placed when not in the agent's
                            # namespace ("opener's root", ...), or why it could not be


@dataclass
class _State:
    kinds: Mapping[tuple[int, int], Kind]          # marked files and dirs
    dirs: Mapping[tuple[int, int], Kind]           # marked dirs (events on children)
    dir_kinds: frozenset[Kind]
    paths: Mapping[tuple[int, int], str]
    # the marked dirs by path: the fallback's lookup of a child's kind (no path walk)
    dir_paths: Mapping[str, Kind] = dataclasses.field(init=False)
    # the devices holding a credential object (s18-fixgate: an unplaced open there is
    # refused, reads too)
    credential_devs: frozenset[int] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.dir_paths = {self.paths[k]: v for k, v in self.dirs.items() if k in self.paths}
        self.credential_devs = frozenset(
            k[0] for m in (self.kinds, self.dirs) for k, v in m.items() if v == "credential")


# A history rewritten whole by its own program is how it is saved (bash without
# histappend, python's readline, less, vim): the owner's own program may (audited).
_HISTORY_PROGRAMS: Final[dict[str, tuple[str, ...]]] = {
    ".bash_history": ("bash",), ".zsh_history": ("zsh",),
    ".sh_history": ("sh", "ksh", "mksh", "dash"), ".ash_history": ("ash", "busybox"),
    ".history": ("tcsh", "csh"), ".python_history": ("python",),
    ".mysql_history": ("mysql", "mariadb"), ".psql_history": ("psql",),
    ".lesshst": ("less",), ".viminfo": ("vim", "vi", "nvim")}


def _own_history(tid: int, path: str, fd: int) -> str | None:
    """The program's name when ``path`` is a history its owner's own program (by the
    executable's name) rewrites; else None."""
    progs = _HISTORY_PROGRAMS.get(os.path.basename(path))
    if progs is None:
        return None
    try:
        exe = os.path.basename(os.readlink(f"/proc/{tid}/exe"))
        owner = os.fstat(fd).st_uid
    except OSError:
        return None
    if status_field(tid, b"Uid") != owner:
        return None
    return exe if any(exe.startswith(p) for p in progs) else None


def _merged(old: _State, kinds: Mapping[tuple[int, int], Kind],
            dirs: Mapping[tuple[int, int], Kind], paths: Mapping[tuple[int, int], str]) -> _State:
    """The old objects and the new (the new kind wins): the state while a pass marks."""
    k = {**old.kinds, **kinds}
    d = {**old.dirs, **dirs}
    return _State(k, d, frozenset(d.values()), {**old.paths, **paths})


_PREVENTED: Final[dict[str, str]] = {
    "persistence": "write to persistence object", "credential": "read of credential store",
    "log": "overwriting open (no O_APPEND, or O_TRUNC) of log", "profile-dir": "write to",
    "security-config": "write to security configuration"}
_WHAT: Final[dict[str, str]] = {"persistence": "Persistence write",
                                "credential": "Credential-store read",
                                "log": "Log overwrite", "profile-dir": "Persistence write",
                                "security-config": "Security-configuration write"}
_ATTACK: Final[dict[str, tuple[str, ...]]] = {
    "persistence": ("T1546", "T1053", "T1543"), "credential": ("T1003.008",),
    "log": ("T1070.002", "T1070.003"), "profile-dir": ("T1546",),
    "security-config": ("T1562.004", "T1562.006", "T1562.012")}

GATE_RULE: Final = "bastion.provenance.gate"
REFRESH_RULE: Final = GATE_RULE + ".refresh"
REFRESH_S: Final = 60.0   # the agent's re-mark interval (AgentGate.tick)
OVERFLOW_RULE: Final = "bastion.provenance.map_full"

Trusted = Callable[[tuple[int, int]], "str | None"]
"""exe (dev, ino) -> the trusted tool's name, or None (detect/behavior/trust.py)."""


class ProvenanceGate:
    """The compat tier's provenance decision on the must-stop objects.

    Typical use::

        gate = ProvenanceGate(provmap, deadline_s=None)
        gate.open(); gate.start()
        gate.apply([GateObject("/etc/cron.d", "persistence"), ...])
        for ev in gate.poll(0.5): ...        # HipsEvent, mechanism "fanotify-provenance"
        gate.close()
    """

    mechanism: Final = "fanotify-provenance"

    def __init__(self, prov: ProvenanceMap, *, scope_cgroup_id: int = 0,
                 deadline_s: float | None = None, self_tgid: int = 0,
                 decision_timeout_s: float = 0.2, max_dirs: int = DEFAULT_MAX_DIRS,
                 per_object_dirs: int = 1_000,
                 trusted: Trusted | None = None, max_events: int = 4096,
                 dry_run: bool = False) -> None:
        """``dry_run`` (the policy's ``behavior.dry_run``): every refusal is decided and
        reported (not enforced: the finding says would-deny) and the open allowed."""
        self.prov = prov
        self.dry_run = dry_run
        self.scope = Scope(self_tgid=self_tgid, scope_cgroup_id=scope_cgroup_id)
        self.trusted = trusted
        self.max_dirs = max_dirs
        self.per_object_dirs = min(per_object_dirs, max_dirs)
        self.over_budget: list[str] = []   # objects whose tree was marked only in part
        self.listener = PermissionListener(self._decide, deadline_s=deadline_s,
                                           decision_timeout_s=decision_timeout_s,
                                           fallback=self._fallback)
        self.listener.keep_handles = True   # marks removed by inode (no FAN_ONDIR mark)
        self._state: _State | None = None
        self._events: collections.deque[HipsEvent] = collections.deque()
        self._decisions: collections.deque[GateDecision] = collections.deque(maxlen=max_events)
        self._max_events = max_events
        self._cv = threading.Condition()
        self.denies = 0
        self.dry_runs = 0      # refusals decided in dry-run (allowed)
        self.audits = 0
        self.dropped = 0
        # inode -> (path, mask) of every mark this gate holds (mirrors the kernel's)
        self._marks: dict[tuple[int, int], tuple[str, int]] = {}
        self.marks_added = 0
        self.marks_removed = 0
        self.unplaced = 0      # opens of a marked inode no object of the state places
        self.remarked = 0      # objects marked again: their recorded mark's inode was gone

    # ---- lifecycle ---------------------------------------------------------------

    def open(self) -> ProvenanceGate:
        if self.listener.fd < 0:
            self.listener.open()
            why = self.scope.resolve()
            if why is not None:
                log.warning("provenance gate: no cgroup v2 hierarchy (%s)", why)
        return self

    def start(self) -> ProvenanceGate:
        self.open()
        self.listener.start()
        return self

    def close(self) -> None:
        with self.listener.mark_lock:
            self._state = None
            self._marks.clear()
        self.listener.close()
        forget_ns_tops()      # the namespaces' tops kept for placement (s18-fixgate)
        with self._cv:
            self._cv.notify_all()

    def __enter__(self) -> ProvenanceGate:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- marks -------------------------------------------------------------------

    def apply(self, objects: Sequence[GateObject], *, root: str = "") -> list[str]:
        """Mark the objects (replacing the previous set); returns what was not marked
        (paths that do not exist or changed under the pass, trees marked only in part:
        :attr:`over_budget`).

        Incremental (the agent calls it again on its maintenance tick, :meth:`AgentGate.tick`):
        only the changed marks are written, every new mark before any old one is removed,
        and while the pass runs the decision knows the old and the new objects.  A mark the
        kernel refuses (``fanotify_mark``: the mark limit, memory) raises
        :class:`KernelError` with every mark of the previous set still in place (and the
        new ones made meanwhile); a path that moved between the walk and its mark is a
        problem, not a failure (an attacker racing the walk must not fail every pass).

        ``root`` (s18-gate; the bench's sandboxes): the objects' paths are walked inside
        that directory (``/proc/PID/root/...``: another mount namespace's view), their
        absolute links and ``..`` staying in it (:func:`muststop.open_object`)."""
        lis = self.listener
        if not lis.is_open:
            raise KernelError("provenance gate is not open", location=Location("fanotify"))
        kinds: dict[tuple[int, int], Kind] = {}
        dirs: dict[tuple[int, int], Kind] = {}
        paths: dict[tuple[int, int], str] = {}
        marks: dict[tuple[int, int], tuple[str, int]] = {}
        for o in objects:
            if o.kind not in _KINDS:
                raise ConfigError(f"provenance object kind {o.kind!r} is not one of "
                                  f"{', '.join(_KINDS)}", location=Location(o.path))
        entries, problems, over = _ms.expand(objects, max_dirs=self.max_dirs,
                                             per_object_dirs=self.per_object_dirs, root=root)
        for e in entries:
            paths[e.key] = e.path
            if e.kind == "profile-dir":      # the home directory itself, no subdirectories
                dirs[e.key] = e.kind
                marks[e.key] = (e.path, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD)
            elif e.is_dir:
                kinds[e.key] = dirs[e.key] = e.kind
                marks[e.key] = (e.path, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD)
            else:
                kinds[e.key] = e.kind
                marks[e.key] = (e.path, FAN_OPEN_PERM)
        self.over_budget = over
        problems.extend(over)
        with lis.mark_lock:
            if lis.closed:
                raise KernelError("provenance gate is closed: nothing is marked",
                                  location=Location("fanotify"))
            if lis.expired:
                raise KernelError("provenance gate is past its deadline: nothing is marked",
                                  location=Location("fanotify"))
            if not self._marks:
                lis.flush_marks("provenance apply")   # the group's first set: start clean
            old = self._state
            if old is not None:    # the pass's window: the old objects and the new ones
                self._state = _merged(old, kinds, dirs, paths)
            else:
                self._state = _State(kinds, dirs, frozenset(dirs.values()), paths)
            # s18-gate: a mark goes with its inode; an object deleted and made again on
            # the same inode number (ext4 reuses a freed number at once) had its record
            # here and no mark in the kernel: never marked again.  The kernel's list says.
            live = lis.marked_inodes()
            for key, (path, mask) in list(marks.items()):
                had = self._marks.get(key)
                if had is not None and live is not None and key not in live:
                    del self._marks[key]         # its inode is gone: a new one, unmarked
                    self.remarked += 1
                    had = None
                if had is not None and had[1] & mask == mask:
                    self._marks[key] = (path, had[1])   # the same inode (perhaps moved)
                    continue
                try:
                    lis.mark(path, key, mask)
                except OSError as exc:     # gone or another inode since the walk
                    problems.append(f"{path}: {exc.strerror or exc}: not marked (changed "
                                    f"during the pass)")
                    for new_map, old_map in ((kinds, old.kinds if old else {}),
                                             (dirs, old.dirs if old else {})):
                        new_map.pop(key, None)
                        if key in old_map and had is not None:
                            new_map[key] = old_map[key]   # its previous mark stays
                    if had is not None:
                        marks[key] = had
                    else:
                        del marks[key]
                    continue
                self._marks[key] = (path, (had[1] if had is not None else 0) | mask)
                self.marks_added += 1
            for key in [k for k, (_p, m) in self._marks.items()
                        if k not in marks or marks[k][1] != m]:
                path, mask = self._marks[key]
                keep = marks[key][1] if key in marks else 0
                lis.unmark(path, key, mask & ~keep)
                self.marks_removed += 1
                if keep:
                    self._marks[key] = (path, keep)
                else:
                    del self._marks[key]
            self._state = _State(kinds, dirs, frozenset(dirs.values()), paths)
        for p in problems:
            log.warning("provenance gate: %s", p)
        return problems

    def marked(self) -> int:
        """How many inodes carry a mark of this gate."""
        return len(self._marks)

    def orphans(self) -> int:
        """Marks neither their path nor their inode's handle could remove (kept until
        close: they count against the group's mark limit)."""
        return self.listener.c.orphan_marks

    # ---- the decision (listener thread) -------------------------------------------

    def _kind(self, state: _State, ev: PermEvent, path: str, tid: int
              ) -> tuple[Kind | None, str]:
        """What the opened object is (persistence, credential, log, or None: a file of a
        home directory that is no profile) and where it was placed ("" in the agent's
        own namespace).  ``tid``: the opener (tainted: this runs for no other)."""
        key = ev.key
        k = state.kinds.get(key)
        if k is not None:
            return k, ""
        if len(state.dir_kinds) == 1 and "profile-dir" not in state.dir_kinds:
            return next(iter(state.dir_kinds)), ""   # a child of a marked dir: one kind only
        if not state.dir_kinds:
            return None, ""
        unchecked: list[str] = []
        confirmed, parents = locate(path, key, unchecked=unchecked)
        where = ""
        if not confirmed:
            # s18-gate: the fd's path is printed from the agent's root; an open in another
            # mount namespace (a bind of /etc/cron.d at /x in ``unshare -m``), a chroot or
            # a pivot_root names the object from the opener's root or its namespace's top
            with contextlib.ExitStack() as fds:   # s18-fixgate (review #8): every fd closed
                roots = self._opener_roots(tid)
                for _which, rfd in roots:
                    fds.callback(os.close, rfd)
                for which, rfd in roots:
                    confirmed, parents = locate(path, key, root=rfd, unchecked=unchecked)
                    if confirmed:
                        where = f"in the opener's {which}"
                        break
        if confirmed and parents and parents[0] in state.dirs:
            k = state.dirs[parents[0]]
            if k == "profile-dir":
                name = os.path.basename(path)
                if name in PROFILE_NAMES:
                    return "persistence", where
                return ("log" if name in HISTORY_NAMES else None), where
            return k, where
        # not placed (s18-gate): the object is a marked inode or a marked directory's
        # child that no root of the opener's places under an object of this pass (a
        # rename racing the decision, a mount over its directory, an open through
        # another process's /proc/PID/root, an orphan mark of a tree moved away).  A
        # tainted opener's write is refused (fail closed), its read allowed: refusing
        # reads as credential let a user's rename make any directory a credential store
        # (s16-fixgate); allowing the write let a bind mount plant a cron job.
        self.unplaced += 1
        why = ("not placed: " + ("its directory is no marked object" if confirmed
                                 else "no root of the opener names it"))
        if not confirmed and unchecked:
            # s18-fixgate (review #2): not "another directory": a name on the way was not
            # in the dentry cache or needed revalidation (an ecryptfs home, NFS/FUSE with
            # expired timeouts); still refused for a write (fail closed), said apart
            why += (" (could not check: a name on the way is not cached or needs "
                    "revalidation, e.g. ecryptfs, NFS, FUSE)")
        # s18-fixgate (review #1): a credential read the gate cannot place (a lazily
        # unmounted bind of ~/.ssh, an open_tree clone, a RENAME_EXCHANGE loop) was
        # allowed as "persistence".  When the inode's filesystem holds a credential
        # object, an unplaced open is refused, reads too (fail closed; a rename of the
        # user's own makes no directory a credential store: only opens the gate cannot
        # place on that device).  The exact fix, one fanotify group per kind (the kind
        # from the mark that fired), is the next step (docs/threat-model.md).
        if key[0] in state.credential_devs:
            return "credential", why + "; a credential object is on its filesystem"
        return "persistence", why

    @staticmethod
    def _opener_roots(tid: int) -> list[tuple[str, int]]:
        return opener_roots(tid)

    def _fallback(self, ev: PermEvent) -> int:
        """A stalled decision: refused when the opener's process is in the map with an
        untrusted reason (one map lookup by the tid: a thread's tid is not in the map,
        allowed), else allowed.  No path walk."""
        state = self._state
        if state is None or self.scope.is_self(ev.tid) or self.scope.out_of_scope(ev.tid):
            return FAN_ALLOW
        try:     # a log's kind (s16-fixgate): reading and appending are its use
            kind = state.kinds.get(ev.key)
            if kind is None and state.dir_paths:
                kind = state.dir_paths.get(os.path.dirname(fd_path(ev.fd)))
        except OSError:
            kind = None
        if kind == "log":
            return FAN_ALLOW
        try:
            val = self.prov.get(ev.tid)
            if val is None and self.prov.untracked(ev.tid):
                return FAN_DENY
        except KernelError:
            return FAN_ALLOW
        return FAN_DENY if val is not None and _untrusted(val.reasons) else FAN_ALLOW

    def _decide(self, ev: PermEvent) -> Verdict:
        state = self._state
        if state is None or ev.is_exec:
            return Verdict.allow("not_marked")
        tid, scope = ev.tid, self.scope
        # the clean path (every open of a marked object by an untainted process): one
        # procfs read for the tgid and one map lookup; scope checks only for the tainted
        tgid = status_field(tid, b"Tgid")
        if tgid <= 0:
            return Verdict.allow("gone")
        val = self.prov.get(tgid)
        if val is None and self.prov.untracked(tgid):
            # the map was full when this process (or an ancestor) gained a reason: fail
            # closed for must-stop objects (docs/threat-model.md, provenance map overflow)
            val = abi.ProvVal(start_ns=0, reasons=abi.PROV_UNTRACKED, origin_tgid=tgid)
        if val is None or not val.reasons & ~abi.PROV_ADMIN_TTY:
            return ALLOW                      # no untrusted provenance
        if scope.is_self(tid):
            return Verdict.allow("self_allows")
        if scope.scope_cgroup_id and scope.out_of_scope(tid):
            return Verdict.allow("out_of_scope")
        path = fd_path(ev.fd)
        kind, placed = self._kind(state, ev, path, tid)
        if kind is None:
            return Verdict.allow("not_marked")
        flags = open_flags(tid)
        if flags is not None and flags < 0:
            return ALLOW                      # the open execve does
        if flags is None:
            write = True                      # unknown: fail closed
        else:
            write = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if kind in ("persistence", "security-config") and not write:
            return ALLOW                      # reading a profile or a crontab harms nothing
        if (placed.startswith("not placed") and flags is not None
                and flags & os.O_TMPFILE == os.O_TMPFILE
                and state.dir_paths.get(os.path.dirname(path)) in ("profile-dir", "log")):
            # s18-fixgate (review #2): an unnamed file made in a home or a log directory
            # has no name the gate could place (it names no profile); in a persistence or
            # credential directory it stays refused (linkat would give it a name there)
            return ALLOW
        if kind == "log" and (not write or (flags is not None and flags & os.O_APPEND
                                            and not flags & os.O_TRUNC)):
            return ALLOW                      # reading or appending to a log is its use
        why = ""
        if kind == "log":    # s16-fixgate: allowed and audited, not refused
            if flags is None:
                why = ("open flags unknown (openat2, io_uring or a 32-bit open): "
                       "not known to overwrite")
            elif _size(ev.fd) == 0:
                why = "the file is empty (a new or rotated log): nothing to wipe"
            elif (prog := _own_history(tid, path, ev.fd)) is not None:
                why = f"a history rewritten by its owner's own {prog}"
        reasons = val.reasons & ~abi.PROV_ADMIN_TTY
        exempt = bool(val.reasons & abi.PROV_ADMIN_TTY) and not reasons & ~abi.PROV_LOCAL_MASK
        exe = exe_key(tid)
        trusted = self.trusted(exe) if self.trusted is not None else None
        op = "open-write" if write else "open-read"
        prevented = f"{_PREVENTED[kind]} {path}"
        if placed.startswith("not placed"):
            what = "write to" if write else "read of"
            prevented = (f"{what} a marked object the gate could not place ({placed[12:]}) "
                         f"{path}")
        elif placed:
            prevented += f" ({placed})"
        d = GateDecision(tid, tgid, kind, op, path, ev.key, tuple(reason_names(reasons)),
                         "audit" if exempt or why else "deny", prevented, trusted, why=why,
                         placed=placed)
        if exempt or why or self.dry_run:
            return Verdict.allow(after=lambda in_time: self._report(d, enforced=False))
        return Verdict.deny(after=lambda in_time: self._report(d, enforced=in_time))

    # ---- reports -----------------------------------------------------------------

    def _report(self, d: GateDecision, *, enforced: bool) -> None:
        if d.action == "deny" and enforced:
            self.denies += 1
        elif d.action == "deny":
            self.dry_runs += 1
        elif d.action == "audit":
            self.audits += 1
        comm = read_proc(f"/proc/{d.tid}/comm").decode(errors="replace").strip()
        try:
            exe = os.readlink(f"/proc/{d.tid}/exe")
        except OSError:
            exe = ""
        proc = Proc(pid=d.tgid, tid=d.tid, ppid=-1, uid=-1, euid=-1, gid=-1, cgroup_id=0,
                    comm=comm, exe=exe)
        ev = HipsEvent(time.time_ns(), proc, False, op=d.op, action=d.action,
                       mechanism=self.mechanism, enforced=enforced,
                       ret=-errno.EPERM if enforced else 0, path=d.path, dev=d.obj[0],
                       ino=d.obj[1])
        with self._cv:
            if len(self._decisions) == self._decisions.maxlen:
                self.dropped += 1
            self._decisions.append(dataclasses.replace(d, event=ev))
            if len(self._events) < self._max_events:
                self._events.append(ev)
            self._cv.notify_all()

    def poll(self, timeout_s: float = 0.0) -> list[HipsEvent]:
        """The decisions reported so far (HipsEvent: action deny/audit, mechanism
        ``fanotify-provenance``), waiting up to ``timeout_s`` for one."""
        with self._cv:
            if not self._events and timeout_s > 0 and not self.listener.closed:
                self._cv.wait(timeout_s)
            out = list(self._events)
            self._events.clear()
        return out

    def decisions(self, timeout_s: float = 0.0) -> list[GateDecision]:
        """The full decisions (reasons, what was prevented, trust, the event), drained,
        waiting up to ``timeout_s`` for one; a queue apart from :meth:`poll`'s."""
        with self._cv:
            if not self._decisions and timeout_s > 0 and not self.listener.closed:
                self._cv.wait(timeout_s)
            out = list(self._decisions)
            self._decisions.clear()
        return out

    def finding(self, d: GateDecision) -> Finding:
        """A refusal (or an admin session's allowed act) as a finding: action ``deny``
        (taken in the kernel's answer) or ``audit``, what was prevented, the reasons."""
        what = _WHAT[d.kind]
        verb = ("refused" if d.action == "deny" else f"allowed ({d.why})" if d.why
                else "allowed (administrator's interactive session)")
        dry = d.action == "deny" and d.event is not None and not d.event.enforced
        if dry:
            verb = "would be refused (dry run: allowed)"
        return Finding(
            rule=GATE_RULE, severity="critical" if d.action == "deny" else "high", dry_run=dry,
            attack=_ATTACK[d.kind],
            action="would-deny" if dry else d.action, event=d.event, pid=d.tgid,
            title=f"{what} {verb}: {d.path} [untrusted provenance: {', '.join(d.reasons)}]",
            evidence={"prevented": d.prevented, "provenance": list(d.reasons),
                      "allowed_because": d.why or None,
                      "operation": d.op, "object": d.path, "trusted_tool": d.trusted,
                      "placed": d.placed or None},
            enforced_by=self.mechanism)

    def stats(self) -> dict[str, int | float]:
        out = self.listener.stats()
        out.update(denies=self.denies, dry_runs=self.dry_runs, audits=self.audits, dropped=self.dropped,
                   marks=len(self._marks), marks_added=self.marks_added,
                   marks_removed=self.marks_removed, unplaced=self.unplaced,
                   remarked=self.remarked,
                   over_budget=len(self.over_budget),
                   prov_errors=self.prov.errors())
        return out


def _size(fd: int) -> int:
    """The opened file's size (-1 when unknown): read before an ``O_TRUNC`` applies."""
    try:
        return os.fstat(fd).st_size
    except OSError:
        return -1


def _untrusted(bits: int) -> bool:
    reasons = bits & ~abi.PROV_ADMIN_TTY
    if not reasons:
        return False
    return not (bits & abi.PROV_ADMIN_TTY and not reasons & ~abi.PROV_LOCAL_MASK)



class AgentGate:
    """The gate as a part of the agent (:mod:`bastion.assembly` builds it): opened once
    the event sensor is (its object holds the provenance maps), the policy's temp dirs
    and interpreters written, the default must-stop objects marked; its decisions are an
    enforcement source (:meth:`poll`, :meth:`finding`)."""

    name: Final = "provgate"

    def __init__(self, maps: Callable[[], ProvenanceMap], *, self_tgid: int,
                 deadline_s: float | None, scope_cgroup_id: int = 0,
                 on_map: Callable[[ProvenanceMap], None] | None = None,
                 objects: Callable[[], list[GateObject]] = default_objects,
                 tmp_dirs: Sequence[str] = TMP_DIRS,
                 interpreters: Callable[[], list[tuple[str, str]]] = default_interpreters,
                 dry_run: bool = False, refresh_s: float = REFRESH_S,
                 threaded: bool = True) -> None:
        """``refresh_s``: how often :meth:`tick` marks the objects again (objects made
        since the last pass: a new ``~/.ssh``, a ``foo.service.d/``); 0 = never.
        ``threaded``: the pass runs on a thread of its own, one at a time (s16-fixgate: a
        glob of /home/* on a stalled server must not stall the agent's event loop); its
        finding is returned by a later :meth:`tick`."""
        if refresh_s < 0:
            raise ConfigError(f"provenance gate refresh interval must be >= 0, not {refresh_s}",
                              location=Location("provgate.refresh_s"))
        self.dry_run = dry_run
        self.refresh_s = refresh_s
        self._next_refresh = 0.0
        # the last pass: (wall time, marked inodes, seconds it took, error or "")
        self.last_refresh: tuple[float, int, float, str] | None = None
        self.refreshes = 0
        self.refresh_failures = 0
        self._maps = maps
        self._on_map = on_map
        self._objects = objects
        self._tmp_dirs = tuple(tmp_dirs)
        self._interpreters = interpreters
        self._kw = dict(self_tgid=self_tgid, deadline_s=deadline_s,
                        scope_cgroup_id=scope_cgroup_id)
        self.gate: ProvenanceGate | None = None
        self.unmarked: list[str] = []
        self._pending: dict[int, GateDecision] = {}
        self._said_overflow = (0, 0)
        self._said_orphans = 0
        self.threaded = threaded
        self._pass: threading.Thread | None = None
        self._done: collections.deque[Finding] = collections.deque()

    def marks_off(self) -> None:
        """The lsm tier's in-hook gate decides: fill the provenance maps, mark nothing
        (one decision per act)."""
        self._objects = list

    def prime(self) -> None:
        """Configure the provenance maps every gate reads (user-writable directories,
        interpreters, the user-space reasons mirrored in): before any gate opens.
        s25: the agent opened the in-hook gate (which then said "on" in status), the
        socket and pipe gates, and only then this: for the seconds those loads took (a
        minute under TCG) a /tmp script was no untrusted provenance and read
        /etc/shadow through an "on" gate, and no process it started was ever tainted."""
        prov = self._maps()
        prov.set_dirs(self._tmp_dirs)
        prov.set_interpreters(self._interpreters())
        if self._on_map is not None:
            self._on_map(prov)

    def open(self) -> None:
        self.prime()     # again: idempotent, and open() alone stays complete
        prov = self._maps()
        gate = ProvenanceGate(prov, self_tgid=int(self._kw["self_tgid"] or 0),
                              deadline_s=self._kw["deadline_s"],
                              scope_cgroup_id=int(self._kw["scope_cgroup_id"] or 0),
                              dry_run=self.dry_run)
        gate.start()
        try:
            self.unmarked = gate.apply(self._objects())
        except BaseException:
            gate.close()
            raise
        self.gate = gate
        self._next_refresh = time.monotonic() + self.refresh_s

    def tick(self, now: float) -> Finding | None:
        """The agent's tick (``now``: ``time.monotonic()``): mark the objects again once
        ``refresh_s`` has passed since the last pass (:meth:`refresh`)."""
        out = self._done.popleft() if self._done else None   # a finished pass's finding
        if self.gate is None or not self.refresh_s or now < self._next_refresh:
            return out
        running = self._pass
        if running is not None and running.is_alive():
            return out                       # one pass at a time: the next tick retries
        self._next_refresh = now + self.refresh_s
        if not self.threaded:
            return self.refresh() or out
        t = threading.Thread(target=self._run_pass, name="bastion-provgate-remark",
                             daemon=True)
        self._pass = t
        t.start()
        return out

    def wait_pass(self, timeout_s: float) -> list[Finding]:
        """Wait up to ``timeout_s`` for a running pass; the findings not yet returned."""
        running = self._pass
        if running is not None:
            running.join(timeout_s)
        out = list(self._done)
        self._done.clear()
        return out

    def _run_pass(self) -> None:
        try:
            f = self.refresh()
        except Exception as exc:   # noqa: BLE001 - reported as the pass's failure
            log.error("provenance gate: re-mark pass raised: %s", exc)
            self.refresh_failures += 1
            f = Finding(rule=REFRESH_RULE, severity="high", attack=("T1562.001",),
                        action="alert", event=None, pid=os.getpid(),
                        title=f"Provenance gate re-mark pass raised {type(exc).__name__}: "
                              f"{exc}; the previous marks stay",
                        evidence={"error": str(exc)})
        if f is not None:
            self._done.append(f)

    def refresh(self) -> Finding | None:
        """Mark the objects again: one made since the last pass (a new ``~/.ssh`` or home,
        a ``/etc/cron.d`` entry, a ``foo.service.d/``) is marked, one gone is unmarked;
        only the changes are written, new marks before old ones go.  A pass that fails
        keeps every mark (nothing is removed first) and is returned as a high finding."""
        gate = self.gate
        if gate is None:
            return None
        t0 = time.monotonic()
        try:
            unmarked = gate.apply(self._objects())
        except (BastionError, OSError) as exc:
            self.refresh_failures += 1
            self.last_refresh = (time.time(), gate.marked(), time.monotonic() - t0, str(exc))
            log.warning("provenance gate: objects not marked again: %s", exc)
            return Finding(
                rule=REFRESH_RULE, severity="high", attack=("T1562.001",), action="alert",
                event=None, pid=os.getpid(),
                title=f"Provenance gate objects not marked again ({exc}); the previous "
                      f"{gate.marked()} marks stay, objects made since are not refused",
                evidence={"error": str(exc), "marks": gate.marked()})
        self.unmarked = unmarked
        self.refreshes += 1
        self.last_refresh = (time.time(), gate.marked(), time.monotonic() - t0, "")
        orphans = gate.orphans()
        if orphans > self._said_orphans:     # marks that leak towards the mark limit
            new, self._said_orphans = orphans - self._said_orphans, orphans
            return Finding(
                rule=REFRESH_RULE, severity="high", attack=("T1562.001",), action="alert",
                event=None, pid=os.getpid(),
                title=f"Provenance gate: {new} more marks could not be removed (moved and "
                      f"not reachable by their inode; {orphans} kept until restart): at the "
                      "group's mark limit every pass fails",
                evidence={"orphan_marks": orphans, "marks": gate.marked()})
        return None

    def refresh_state(self) -> str:
        """The status line's part on the passes: '' before the first one."""
        last = self.last_refresh
        if last is None:
            return ""
        when, marks, took, err = last
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        if err:
            return f"last re-mark {at} FAILED ({err}): the previous {marks} marks kept"
        return f"last re-mark {at}: {marks} inodes marked in {took * 1e3:.0f} ms"

    def over_budget(self) -> list[str]:
        """The must-stop trees marked only in part (too many directories)."""
        return list(self.gate.over_budget) if self.gate is not None else []

    def poll(self, _timeout_s: float) -> list[HipsEvent]:
        gate = self.gate
        if gate is None:
            return []
        out: list[HipsEvent] = []
        for d in gate.decisions():
            if d.event is not None:
                self._pending[id(d.event)] = d
                out.append(d.event)
        return out

    def finding(self, ev: HipsEvent) -> Finding | None:
        d = self._pending.pop(id(ev), None)
        return self.gate.finding(d) if d is not None and self.gate is not None else None

    def stats(self) -> dict[str, int | float]:
        if self.gate is None:
            return {}
        out = self.gate.stats()
        out.update(refreshes=self.refreshes, refresh_failures=self.refresh_failures)
        return out

    def overflow(self) -> tuple[int, int]:
        """(``prov`` entries the kernel could not make, failed ``prov_lost`` updates) so
        far."""
        gate = self.gate
        if gate is None:
            return (0, 0)
        return (gate.prov.errors(), gate.prov.lost_errors())

    def overflow_state(self) -> str:
        """The status line: '' while the map never overflowed."""
        full, lost = self.overflow()
        if not full:
            return ""
        if lost:
            return (f"provenance entries failed ({full} processes not tracked for lack of "
                    f"kernel memory, {lost} not even listed): every process without an entry "
                    "is refused on must-stop objects until the sensor is reloaded")
        return (f"provenance entries failed ({full} processes not tracked for lack of kernel "
                "memory): those and their children are refused on must-stop objects as "
                "untracked")

    def overflow_finding(self) -> Finding | None:
        """A high finding when the map's overflow counters grew since the last one."""
        now = self.overflow()
        if now == self._said_overflow or now[0] == 0:
            return None
        new = now[0] - self._said_overflow[0]
        self._said_overflow = now
        return Finding(
            rule=OVERFLOW_RULE, severity="high", attack=("T1562.001",), action="alert",
            event=None, pid=os.getpid(),
            title=f"Provenance entries failed: {new} more processes could not be tracked; "
                  "the gate fails closed for them" + (
                      " and, the lost list full too, for every untracked process"
                      if now[1] else ""),
            evidence={"failed_updates": now[0], "lost_list_failed": now[1],
                      "lost_max": abi.PROV_LOST_MAX,
                      "state": self.overflow_state()})

    def close(self) -> None:
        gate, self.gate = self.gate, None
        running = self._pass
        if running is not None and running is not threading.current_thread():
            running.join(timeout=5.0)   # a pass stalled longer fails on the closed group
        if gate is not None:
            gate.close()


__all__ = ["AgentGate", "GATE_RULE", "OVERFLOW_RULE", "REFRESH_RULE", "REFRESH_S", "DEFAULT_CREDENTIAL", "DEFAULT_PERSISTENCE", "GateDecision", "GateObject", "Kind",
           "ProvenanceGate", "default_objects"]
