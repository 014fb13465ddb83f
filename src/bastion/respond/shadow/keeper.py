"""Ransomware shield, capture: shadow copies before an untrusted process's first open.

:class:`ShadowKeeper` composes a
:class:`~bastion.kernel.fanotify.PermissionListener` with ``FAN_OPEN_PERM``
marks on the protected directories (each directory and its subdirectories,
bounded by ``max_dirs``, with ``FAN_EVENT_ON_CHILD`` — inode marks only,
never a mount or a filesystem).  When an untrusted process opens a file
under a protected directory (read or write: ransomware reads the original,
writes NAME.locked and unlinks the original), the opener is held in
``open(2)`` while the file's content is copied **from the fd fanotify hands
us** (``os.pread``; the path is never opened) into the shadow store
(:mod:`bastion.respond.shadow.store`); then the open is allowed.  A later
``O_TRUNC`` or in-place write therefore always finds the copy already taken.

Kernel safety: everything the listener guarantees holds here: a watchdog
answers ALLOW for any open whose copy stalls past ``decision_timeout_s``
(the copy may finish later; it is kept only if the file did not change while
it was read, else counted ``changed_during_copy``; an open the watchdog
drained without the listener seeing it is never copied:
``stats()["unrecoverable"]`` counts both), ``deadline_s`` is a dead-man
switch, opens by this process and (with ``scope_cgroup_id``) by tasks
outside the scope are allowed at once, and the listener never opens a path
that could be marked: the shadow directory must not be inside (or contain)
a protected directory — refused with :class:`~bastion.errors.ConfigError`.

Not recoverable (compat tier; see docs/ransomware.md): a file opened before
the shield started, or written through an inherited/passed fd; files in a
subdirectory created after :meth:`ShadowKeeper.open` until
:meth:`ShadowKeeper.refresh_marks`; files larger than ``max_file_bytes``;
opens the watchdog allowed uncopied; copies evicted or refused for space;
``truncate(2)`` by path and ``unlink`` of a file nobody untrusted opened (no
open, no permission event: the content is gone without a copy).  Copies whose
path does not lead, beneath a protected root, to the opened inode (another
mount namespace, a bind mount) are kept but ``unanchored``: rollback refuses
them (:mod:`bastion.respond.shadow.beneath`).

Trust (issue 14.3): a ``trusted`` entry (an absolute path, or a bare tool name
looked up in the system directories of
:mod:`bastion.detect.behavior.trust`) is the *inode* of a root-owned file in
root-only directories, re-resolved every five minutes; an opener is trusted
when the file its ``/proc/PID/exe`` leads to is that inode.  The path the exe
link reads as proves nothing: a copy of ``/usr/bin/cat`` bind-mounted over
``/usr/bin/cat`` in a private mount namespace reads as ``/usr/bin/cat``.  An
entry that is not a root-only file trusts nothing (named in
:attr:`ShadowKeeper.untrusted_entries`).  The per-process cache is keyed by
the executable's identity too, so a trusted process that ``execve()``s
something else is decided afresh.

Charging (quotas, :mod:`bastion.respond.shadow.store`): an opener is charged
to its real uid (a setuid program to the user who ran it); a process in a
user namespace is charged to the uid that owns the outermost namespace below
ours (a user with subordinate uids must not multiply its quota by running as
them).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import sqlite3
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Sequence

from bastion.detect.behavior.trust import ExeTrust, Ident, secure_file
from bastion.detect.engine import Finding
from bastion.errors import ConfigError, KernelError, Location
from bastion.kernel.fanotify import (
    ALLOW, DEFAULT_MAX_DIRS, FAN_EVENT_ON_CHILD, FAN_OPEN_PERM, PermEvent, PermissionListener,
    Verdict,
)
from bastion.kernel.opener import Scope, fd_path, open_flags, read_proc, stat_ppid_start
from bastion.policy.compile import kernel_dev
from bastion.respond.shadow.beneath import Roots
from bastion.respond.shadow.store import Opener, ProcId, QuotaBite, Quotas, ShadowStore

log = logging.getLogger(__name__)

_MAX_ANCESTRY: Final = 32
_NS_GET_PARENT: Final = 0xB702        # _IO(0xb7, 0x2), linux/nsfs.h
_NS_GET_OWNER_UID: Final = 0xB704     # _IO(0xb7, 0x4)
_TRUST_REFRESH_S: Final = 300.0


class ShieldTrust:
    """The ``trusted`` entries as executable identities (device, inode), by
    :func:`~bastion.detect.behavior.trust.secure_file`: never a name or a path string."""

    def __init__(self, entries: frozenset[str], *, refresh_s: float = _TRUST_REFRESH_S) -> None:
        self.paths = tuple(sorted(e for e in entries if e.startswith("/")))
        self.names = tuple(sorted(e for e in entries if not e.startswith("/")))
        self._tools = ExeTrust(refresh_s=refresh_s)
        self.refresh_s = refresh_s
        self._stamp = -refresh_s
        self._idents: frozenset[Ident] = frozenset()
        self.unresolved: tuple[str, ...] = ()

    def _resolve(self) -> None:
        now = time.monotonic()
        if now - self._stamp < self.refresh_s:
            return
        self._stamp = now
        out: set[Ident] = set()
        bad = []
        for p in self.paths:
            st = secure_file(p)
            if st is None:
                bad.append(p)
            else:
                out.add((kernel_dev(st.st_dev), st.st_ino))
        for n in self.names:
            got = self._tools.idents(n)
            if not got:
                bad.append(n)
            out |= got
        if tuple(bad) != self.unresolved and bad:
            log.warning("shield.trusted: %s not a root-owned file in root-only directories: "
                        "trusts nothing", ", ".join(bad))
        self.unresolved = tuple(bad)
        self._idents = frozenset(out)

    def trusted(self, ident: Ident) -> bool:
        if not (self.paths or self.names) or ident == (0, 0):
            return False
        self._resolve()
        return ident in self._idents


def _userns_ino(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return 0


def charged_uid(tgid: int, uid: int, own_userns: int) -> int:
    """The uid a process's copies are charged to: ``uid``, or, inside a user
    namespace, the uid that owns the outermost one below ``own_userns`` (ours)."""
    try:
        fd = os.open(f"/proc/{tgid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return uid
    try:
        if own_userns == 0 or os.fstat(fd).st_ino == own_userns:
            return uid
        for _ in range(33):                   # the kernel nests at most 32
            try:
                parent = fcntl.ioctl(fd, _NS_GET_PARENT)
            except OSError:
                break
            if os.fstat(parent).st_ino == own_userns:
                os.close(parent)
                break
            os.close(fd)
            fd = parent
        buf = bytearray(4)
        fcntl.ioctl(fd, _NS_GET_OWNER_UID, buf, True)
        return int.from_bytes(buf, sys.byteorder)
    except OSError:
        return uid
    finally:
        os.close(fd)


@dataclass
class _Walk:
    dirs: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    left: int = 0           # directories found beyond the budget (at least)


def _breadth_first(tops: Sequence[Path], exclude: frozenset[str], budget: int,
                   marked: set[tuple[int, int]]) -> _Walk:
    """New directories under ``tops`` (same filesystem, no symlinks), nearest first."""
    out = _Walk()
    queue: collections.deque[tuple[str, int]] = collections.deque()
    for top in tops:
        try:
            st = os.lstat(top)
        except OSError:
            continue
        queue.append((str(top), st.st_dev))
        key = (kernel_dev(st.st_dev), st.st_ino)
        if key not in marked:
            if len(out.dirs) < budget:
                out.dirs.append((str(top), key))
            else:
                out.left += 1
    while queue:
        path, dev = queue.popleft()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for e in entries:
            if e.name in exclude:
                continue
            try:
                if not e.is_dir(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue
            key = (kernel_dev(st.st_dev), st.st_ino)
            if key in marked:
                queue.append((e.path, dev))
                continue
            if len(out.dirs) < budget:
                out.dirs.append((e.path, key))
                queue.append((e.path, dev))
            else:
                out.left += 1
    return out


class ShadowKeeper:
    """Copy protected files before an untrusted process's first open; group copies
    into incidents for :func:`~bastion.respond.shadow.rollback`.  See the module
    docstring.

    Typical use (the agent)::

        keeper = ShadowKeeper([Path("/home")], data_dir / "shadow", max_bytes=2 << 30,
                              self_tgid=os.getpid())
        keeper.open()
        ...
        iid = keeper.open_incident(finding.pid, start_ns)   # after the kill-tree
        keeper.close()
    """

    def __init__(self, protected_dirs: Sequence[Path], shadow_dir: Path, *, max_bytes: int,
                 trusted_exes: frozenset[str] = frozenset(), scope_cgroup_id: int = 0,
                 deadline_s: float | None = None, self_tgid: int = 0,
                 max_file_bytes: int | None = None, keep_pending_s: float = 120.0,
                 decision_timeout_s: float = 2.0, max_dirs: int = DEFAULT_MAX_DIRS,
                 exclude: Sequence[str] = (), quotas: Quotas | None = None) -> None:
        if max_bytes <= 0:
            raise ConfigError("shadow max_bytes must be > 0", location=Location(str(shadow_dir)))
        if not protected_dirs:
            raise ConfigError("no protected directories", location=Location("shadow"))
        wanted = [Path(os.path.realpath(p)) for p in protected_dirs]
        # a listed directory this host does not have (e.g. /srv) is named, not fatal
        self.protected = [p for p in wanted if p.is_dir()]
        self.missing = [p for p in wanted if not p.is_dir()]
        if not self.protected:
            raise ConfigError("no protected directory exists: "
                              + ", ".join(map(str, self.missing)), location=Location("shield.protect"))
        self.exclude = frozenset(exclude)
        self.over_budget = 0          # directories left unmarked by max_dirs at the last refresh
        self.shadow_dir = Path(os.path.realpath(shadow_dir))
        for p in self.protected:
            if self.shadow_dir == p or p in self.shadow_dir.parents or \
                    self.shadow_dir in p.parents:
                raise ConfigError(
                    f"the shadow directory {self.shadow_dir} overlaps the protected directory "
                    f"{p}: the listener would open files it marks (self-deadlock)",
                    location=Location(str(shadow_dir)))
        self.max_bytes = max_bytes
        self.quotas = quotas
        self.trusted_exes = trusted_exes
        self._trust = ShieldTrust(trusted_exes)
        self._own_userns = _userns_ino("/proc/self/ns/user")
        self.max_file_bytes = max_file_bytes
        self.keep_pending_s = keep_pending_s
        self.max_dirs = max_dirs
        self.scope = Scope(self_tgid=self_tgid, scope_cgroup_id=scope_cgroup_id)
        self._listener = PermissionListener(self._decide, deadline_s=deadline_s,
                                            decision_timeout_s=decision_timeout_s)
        self._store: ShadowStore | None = None
        self._roots: Roots | None = None
        self._marked: set[tuple[int, int]] = set()
        self._openers: collections.OrderedDict[tuple[int, int, Ident], Opener] = \
            collections.OrderedDict()
        self._copy_us: collections.deque[float] = collections.deque(maxlen=8192)
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    def open(self) -> ShadowKeeper:
        if self._store is not None:
            return self
        self._store = ShadowStore(self.shadow_dir, max_bytes=self.max_bytes,
                                  keep_pending_s=self.keep_pending_s,
                                  max_file_bytes=self.max_file_bytes, quotas=self.quotas)
        self._roots = Roots(self.protected)
        if self._roots.unavailable:
            log.error("shadow: %s -- copies are kept but rollback will refuse to restore them",
                      self._roots.unavailable)
        self._flusher = threading.Thread(target=self._flush_loop, name="bastion-shadow-flush",
                                         daemon=True)
        self._flusher.start()
        try:
            self._listener.open()
            why = self.scope.resolve()
            if why is not None:
                log.warning("shadow: no cgroup v2 hierarchy (%s)", why)
            self._listener.start()      # before marking: no event waits for a missing listener
            self.refresh_marks()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> ShadowKeeper:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Remove every mark and allow anything pending (the listener's close), then the index."""
        self._listener.close()
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=2.0)
        if self._store is not None:
            self._store.close()
        if self._roots is not None:
            self._roots.close()

    def _flush_loop(self) -> None:
        store = self._store
        while store is not None and not self._stop.wait(store.commit_interval_s):
            try:
                store.flush()
            except sqlite3.Error as exc:
                log.error("shadow: index commit failed: %s", exc)

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has made the store (the agent answers ``status`` before)."""
        return self._store is not None

    @property
    def store(self) -> ShadowStore:
        if self._store is None:
            raise KernelError("shadow keeper is not open", location=Location("shadow"))
        return self._store

    def refresh_marks(self) -> int:
        """Mark protected directories and subdirectories not marked yet; returns how many.

        Breadth first over every protected tree at once, so a budget that runs out
        (``max_dirs``) leaves the deepest directories unshielded, never a whole tree;
        what was left is counted in ``over_budget`` (stats, status).  Directories named
        in ``exclude`` are skipped with everything under them."""
        lis = self._listener
        n = 0
        with lis.mark_lock:
            if lis.expired or not lis.is_open:
                return 0
            tree = _breadth_first(self.protected, self.exclude, self.max_dirs - len(self._marked),
                                  self._marked)
            for dpath, key in tree.dirs:
                lis.mark(dpath, key, FAN_OPEN_PERM | FAN_EVENT_ON_CHILD)
                self._marked.add(key)
                n += 1
            self.over_budget = tree.left
            if tree.left:
                log.warning("shield: %d directories under %s not shielded (max_dirs %d)",
                            tree.left, ", ".join(map(str, self.protected)), self.max_dirs)
        return n

    # ---- incidents (agent thread) ----------------------------------------------------------

    def open_incident(self, root_pid: int, started_ns: int,
                      members: Sequence[tuple[int, int]] = ()) -> int:
        """Open the incident (the tree of ``root_pid`` and of each killed ``members``
        (pid, start_ns)), then record what the (killed) tree left at each path it
        touched: rollback restores only what the tree changed and keeps later edits."""
        iid = self.store.open_incident(root_pid, started_ns, members)
        if self._roots is not None:
            self.store.record_states(iid, self._roots.state_of)
        return iid

    def close_incident(self, incident: int) -> None:
        self.store.close_incident(incident)

    def maintain(self, max_age_s: float = 86400.0) -> int:
        return self.store.maintain(max_age_s)

    def quota_finding(self, pid: int) -> Finding | None:
        """One alert for every cap reached since the last call (the agent asks once per
        interval), naming each uid and tree; None when no cap was reached."""
        return quota_finding(self.store.take_quota_bites(), pid)

    # ---- the decision (listener thread; never opens a marked path) -----------------------

    @property
    def untrusted_entries(self) -> tuple[str, ...]:
        """``trusted`` entries that are not a root-only file here (they trust nothing)."""
        return self._trust.unresolved

    def _opener(self, tid: int) -> tuple[Opener, Ident] | None:
        """The opener and its executable's identity; cached per (process, executable):
        an ``execve()`` keeps pid and start time, not the executable."""
        tgid, ruid = -1, -1
        for line in read_proc(f"/proc/{tid}/status").split(b"\n"):
            k, _, v = line.partition(b":")
            if k == b"Tgid":
                tgid = int(v.split()[0])
            elif k == b"Uid":
                ruid = int(v.split()[0])     # real: a setuid program is charged to its caller
                break
        if tgid <= 0:
            return None
        ppid, start = stat_ppid_start(tgid)
        if start < 0:
            return None
        try:
            est = os.stat(f"/proc/{tgid}/exe")      # the inode itself, whatever its path reads
            ident: Ident = (kernel_dev(est.st_dev), est.st_ino)
        except OSError:
            ident = (0, 0)
        ckey = (tgid, start, ident)
        if ckey in self._openers:
            self._openers.move_to_end(ckey)
            return self._openers[ckey], ident
        try:
            exe = os.readlink(f"/proc/{tgid}/exe")
        except OSError:
            exe = ""
        key = (tgid, start)
        chain: list[ProcId] = [key]
        p = ppid
        while p > 0 and len(chain) < _MAX_ANCESTRY:
            pp, s = stat_ppid_start(p)
            if s < 0:
                break
            chain.append((p, s))
            p = pp
        op = Opener(tgid, start, exe, tuple(chain),
                    uid=charged_uid(tgid, ruid, self._own_userns))
        self._openers[ckey] = op
        if len(self._openers) > 4096:
            self._openers.popitem(last=False)
        return op, ident

    def _decide(self, ev: PermEvent) -> Verdict:
        """Copy, then allow: every open of a protected file is allowed."""
        efd, tid = ev.fd, ev.tid
        if self.scope.is_self(tid):
            return Verdict.allow("self_allows")
        if self.scope.out_of_scope(tid):
            return Verdict.allow("out_of_scope")
        t0 = time.monotonic()
        store = self._store
        st = os.fstat(efd)
        if store is None or not stat.S_ISREG(st.st_mode):
            if store is not None:
                store.c.not_regular += 1
            return ALLOW
        who = self._opener(tid)
        if who is None:
            return Verdict.allow("gone")
        opener, ident = who
        if self._trust.trusted(ident):
            store.c.trusted_allows += 1
            return ALLOW
        created = False
        if st.st_size == 0:
            flags = open_flags(tid)
            created = flags is not None and flags >= 0 and bool(flags & os.O_CREAT)
        path = fd_path(efd)
        # where the copy may go back: beneath its root, in this very parent (O_PATH only)
        anchor = self._roots.anchor(path, st) if self._roots is not None else None
        if anchor is None:
            store.c.unanchored += 1
        try:
            # the tree charged is the verified root, never the path's text: a copy the
            # anchor refused (another mount namespace) is charged to the tree ''
            out = store.put(efd, st, path, opener, created=created, anchor=anchor,
                            tree=anchor.root if anchor is not None else "")
        except (OSError, sqlite3.Error) as exc:
            store.c.copy_errors += 1
            log.error("shadow: copy of %s for pid %d failed (%s: %s): allowed, not recoverable",
                      path, opener.pid, type(exc).__name__, exc)
            return ALLOW
        if out.kind != "copied":
            return ALLOW

        def copied(in_time: bool) -> None:
            if not in_time:
                store.mark_late(out.sha)
            self._copy_us.append((time.monotonic() - t0) * 1e6)
        return Verdict.allow(after=copied)

    # ---- report -----------------------------------------------------------------------------

    def stats(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {}
        if self._store is not None:
            out.update(self._store.stats())
        ls = self._listener.stats()
        for k in ("perm_events", "allows", "watchdog_allows", "late_decisions", "errors",
                  "self_allows", "out_of_scope", "gone", "deadline_allows", "overflows",
                  "decision_us_median", "decision_us_p99", "decision_us_max", "expired"):
            out[k] = ls[k]
        lat = sorted(self._copy_us)
        out["copy_us_median"] = lat[len(lat) // 2] if lat else 0.0
        out["copy_us_p99"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        out["marked_dirs"] = len(self._marked)
        out["dirs_over_budget"] = self.over_budget
        uncopied_by_watchdog = max(0, int(ls["watchdog_allows"]) - int(out.get("late_copies", 0)))
        out["untrusted_entries"] = len(self._trust.unresolved)
        out["unrecoverable"] = (int(out.get("too_large", 0)) + int(out.get("no_space", 0))
                                + int(out.get("quota_refused_bytes", 0))
                                + int(out.get("quota_refused_rows", 0))
                                + int(out.get("changed_during_copy", 0))
                                + int(out.get("copy_errors", 0)) + uncopied_by_watchdog
                                + int(out.get("unanchored", 0))
                                + int(ls["errors"]))
        return out


def _bite_text(b: QuotaBite) -> str:
    who = {"uid": f"uid {b.key}", "tree": f"tree {b.key or '(unanchored)'}",
           "total": "the whole shield"}[b.kind]
    what = "copies" if b.resource == "bytes" else "index rows"
    return f"{who} {b.resource}: {b.refused} {what} refused, {b.evicted} evicted"


def quota_finding(bites: Sequence[QuotaBite], pid: int) -> Finding | None:
    """The alert for ``bites`` (None when empty): high when copies were refused (those
    files are not recoverable), low when the quota only evicted older copies."""
    if not bites:
        return None
    refused = sum(b.refused for b in bites)
    return Finding(
        rule="bastion.shield.quota", severity="high" if refused else "low",
        attack=("T1499",) if refused else (), action="alert", event=None, pid=pid,
        title="ransomware shield quota reached: " + "; ".join(map(_bite_text, bites)),
        evidence={"bites": [{"kind": b.kind, "key": b.key, "resource": b.resource,
                             "refused": b.refused, "evicted": b.evicted} for b in bites],
                  "refused": refused})


__all__ = ["ShadowKeeper", "ShieldTrust", "charged_uid", "quota_finding"]
