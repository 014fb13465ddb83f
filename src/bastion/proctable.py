"""The process table: seeded from /proc, kept current from events.

Rules ask it for a process's executable, command line and ancestry.  A
process is identified by (pid, start time), so a reused pid never inherits
the history of the process that had it before.  Exited processes are kept
for ``linger_s`` so late events about them still resolve.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bastion.abi import kernel_dev
from bastion.events import Event, ExecEvent, ExitEvent, ForkEvent, Proc, watched_env, with_proc
from bastion.hostns import Ident3, root_ident
from bastion.procstat import PROC, TICK_NS, parse_stat, read_stat



@dataclass(frozen=True, slots=True)
class ProcEntry:
    pid: int
    ppid: int
    start_ns: int          # CLOCK_BOOTTIME ns (clock-tick resolution when seeded)
    exe: str
    cmdline: tuple[str, ...]
    uid: int
    comm: str
    exited_ns: int = 0     # wall-clock ns of exit, 0 while alive
    exe_dev: int = 0       # the executable's device (kernel encoding) and inode, 0: unknown
    exe_ino: int = 0
    # the mount namespace in which the agent may resolve the paths its command line names
    # (a script an interpreter runs): paths_ns_of(); 0: in none, s31
    paths_ns: int = 0

    def exited_at(self, ns: int) -> "ProcEntry":
        """``dataclasses.replace(self, exited_ns=ns)`` without its per-call field
        introspection (every exit event; checked against replace in the unit tests)."""
        return ProcEntry(self.pid, self.ppid, self.start_ns, self.exe, self.cmdline, self.uid,
                         self.comm, ns, self.exe_dev, self.exe_ino, self.paths_ns)

    def same_process(self, start_ns: int) -> bool:
        """Is a process that started at ``start_ns`` this one (tick tolerance)?"""
        return not start_ns or not self.start_ns or abs(self.start_ns - start_ns) < TICK_NS


def paths_ns_of(ev: ExecEvent) -> int:
    """The mount namespace in which the agent may resolve the paths the command line of
    ``ev``'s process names (``sh /usr/sbin/dkms``: is that the installed dkms?), or 0 when
    in none (s31 and its reviews): a namespace unknown (a record from before ABI 3.5) or
    other than the exec's, a root other than the agent's, a root another process can
    change, a seccomp filter the process installed (a supervisor, or an errno-0 rule, can
    hand the interpreter another file); a watched loader or interpreter variable in its
    environment, or an environment too long to scan (``BASH_ENV``, ``PYTHONPATH``,
    exported ``BASH_FUNC_``s run the user's code in the interpreter).  (A non-root
    process's scripts are trusted as tools by no rule but the installers' exemption:
    ``base.trusted_as``.)"""
    if ev.env or ev.truncated:
        return 0
    return ev.paths_ns()


def _own_root() -> tuple[int, Ident3] | None:
    """The agent's mount namespace and root (what a seeded process must share for its
    script paths to be trusted); None when they cannot be read."""
    try:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return os.stat("/proc/self/ns/mnt").st_ino, root_ident(fd)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


def _seeded_paths_ns(base: Path, status: list[str], own: tuple[int, Ident3] | None) -> int:
    """``paths_ns`` of a process that was running before the agent (s31 review 4: a root
    daemon that is a script, fail2ban's server, lost its trust at every agent start), from
    what /proc shows now: root's in every uid, no no_new_privs, no seccomp filter, the
    agent's namespace and root, none of the watched variables in its environment.  0 when
    anything differs or cannot be read.  (Left: a root process that rewrote its argv.)"""
    if own is None:
        return 0
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    if fields.get("Uid", "").split() != ["0"] * 4 or fields.get("NoNewPrivs", "1").strip() != "0" \
            or fields.get("Seccomp", "1").strip() != "0":
        return 0
    ns, root = own
    if os.stat(base / "ns" / "mnt").st_ino != ns:
        return 0
    fd = os.open(base / "root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if root_ident(fd) != root:
            return 0
    finally:
        os.close(fd)
    for entry in (base / "environ").read_bytes().split(b"\0"):
        name, eq, _ = entry.partition(b"=")
        if eq and watched_env(name):
            return 0
    return ns


def _read_proc(proc: Path, pid: int, own: tuple[int, Ident3] | None = None) -> ProcEntry | None:
    """The entry of a process as /proc shows it.  ``own`` (seeding only: the agent's
    namespace and root, :func:`_own_root`): its script paths may be trusted when
    :func:`_seeded_paths_ns` says so; else (a process first seen later, through an event)
    they are not: its namespace, root and command line are what it has now, which it
    may have changed since its exec (setns back into the host's, a rewritten argv naming
    an installed script: s31 review 2)."""
    base = proc / str(pid)
    try:
        ps = read_stat(pid, proc)
        raw = (base / "cmdline").read_bytes()
        cmdline = tuple(a.decode("utf-8", "backslashreplace") for a in raw.rstrip(b"\0").split(b"\0")) if raw else ()
        uid = 0
        status = (base / "status").read_text().splitlines()
        for line in status:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
        try:
            exe = os.readlink(base / "exe")
            st = os.stat(base / "exe")
            dev, ino = kernel_dev(st.st_dev), st.st_ino
        except OSError:
            exe, dev, ino = "", 0, 0  # kernel threads, or a process we may not inspect
        try:
            paths_ns = _seeded_paths_ns(base, status, own)
        except (OSError, ValueError):
            paths_ns = 0
        return ProcEntry(pid, ps.ppid, ps.start_ns, exe, cmdline, uid, ps.comm,
                         exe_dev=dev, exe_ino=ino, paths_ns=paths_ns)
    except (OSError, ValueError, IndexError):
        return None  # raced with exit


_NO_KIDS: dict[int, int] = {}


class ProcessTable:
    def __init__(self, *, max_entries: int = 65536, linger_s: float = 30.0,
                 live: bool = True) -> None:
        """``live``: the table may read this host's /proc (seed, a process seen first,
        live descendants); False for a replay, whose pids are the recording's (s24:
        a replayed actor took the exe, cmdline and ancestry of whatever live process
        holds its pid now, and was trusted or judged as that process)."""
        self.live = live
        self._procs: OrderedDict[int, ProcEntry] = OrderedDict()
        self.max_entries = max_entries
        self.linger_ns = int(linger_s * 1e9)
        # id(actor) -> (the actor, the entry it was enriched from, the enriched actor):
        # keyed by identity (the decoder hands out one Proc per actor; hashing a Proc's
        # 11 fields cost ~0.5 µs an event), the entry holds the actor so its id is not
        # reused meanwhile; bounded, emptied when full; an entry replaced by
        # exec/fork/exit is a miss (identity check)
        self._enriched: dict[int, tuple[Proc, ProcEntry, Proc]] = {}
        self.enrich_cache = 4096
        # ppid -> {pid: start_ns} of the entries that have not exited, in the order they
        # were put (kept by _put, exit and eviction): a kill-tree's walk asks for the
        # children of each member; scanning the whole table per member cost ~6 % of the
        # replay's loop (issue 16.3, s24)
        self._kids: dict[int, dict[int, int]] = {}

    def seed(self, proc: Path = Path("/proc")) -> int:
        """Load every live process from /proc; returns how many (0 when not ``live``)."""
        n = 0
        if not self.live:
            return n
        own = _own_root()
        for d in proc.iterdir():
            if d.name.isdigit():
                e = _read_proc(proc, int(d.name), own)
                if e is not None:
                    self._put(e)
                    n += 1
        return n

    def _put(self, e: ProcEntry) -> None:
        procs = self._procs
        old = procs.get(e.pid)
        if old is not None and not old.exited_ns:
            self._unlink_kid(old)
        procs[e.pid] = e
        procs.move_to_end(e.pid)
        if not e.exited_ns:
            kids = self._kids.get(e.ppid)
            if kids is None:
                kids = self._kids[e.ppid] = {}
            kids[e.pid] = e.start_ns
        while len(procs) > self.max_entries:
            _, gone = procs.popitem(last=False)
            if not gone.exited_ns:
                self._unlink_kid(gone)

    def _unlink_kid(self, e: ProcEntry) -> None:
        kids = self._kids.get(e.ppid)
        if kids is not None:
            kids.pop(e.pid, None)
            if not kids:
                del self._kids[e.ppid]

    def children(self, pid: int) -> dict[int, int]:
        """``{child pid: start_ns}`` of the entries whose parent is ``pid`` and that have
        not exited (what a scan of the table for ``ppid == pid and not exited_ns`` finds),
        in the order they were put.  The table's own map: read it, do not change it."""
        return self._kids.get(pid, _NO_KIDS)

    def get(self, pid: int) -> ProcEntry | None:
        return self._procs.get(pid)

    def __len__(self) -> int:
        return len(self._procs)

    def __iter__(self) -> Iterator[ProcEntry]:
        return iter(list(self._procs.values()))

    def live_descendants(self, pid: int, *, proc: Path | None = PROC,
                         limit: int = 4096) -> list[tuple[int, int]]:
        """(pid, start_ns) of the live descendants of ``pid``: the table's (fork events,
        a reparented child included while its fork was seen) and, with ``proc``, the
        kernel's as /proc has them now (children whose fork event the loop has not
        processed yet).  At most ``limit``."""
        kids: dict[int, list[tuple[int, int]]] = {}
        if not self.live:
            proc = None
        for e in self._procs.values():
            if not e.exited_ns:
                kids.setdefault(e.ppid, []).append((e.pid, e.start_ns))
        if proc is not None:
            known = {p for v in kids.values() for p, _ in v}
            try:
                names = os.listdir(proc)
            except OSError:
                names = []
            for name in names:
                if not name.isdigit():
                    continue
                try:
                    with open(proc / name / "stat", "rb") as f:
                        st = parse_stat(int(name), f.read())
                except (OSError, ValueError):
                    continue
                if st.ppid and st.pid not in known:
                    kids.setdefault(st.ppid, []).append((st.pid, st.start_ns))
        out: list[tuple[int, int]] = []
        done = {pid}
        todo = [pid]
        while todo and len(out) < limit:
            for child in kids.get(todo.pop(), ()):
                if child[0] not in done:
                    done.add(child[0])
                    out.append(child)
                    todo.append(child[0])
        return out[:limit]

    def ancestry(self, pid: int, limit: int = 64) -> list[ProcEntry]:
        """The process and its ancestors, nearest first (stops at a loop or an unknown).

        Stops at a "parent" that started after its child (by a clock tick or more: the
        seeded start times are tick-rounded): the parent exited and its pid was taken by
        an unrelated process whose fork or exec the table saw since -- not an ancestor
        (s20 review 4: that process became a tree's root and was killed)."""
        out: list[ProcEntry] = []
        seen: set[int] = set()
        cur = self._procs.get(pid)
        while cur is not None and cur.pid not in seen and len(out) < limit:
            out.append(cur)
            seen.add(cur.pid)
            child = cur
            cur = self._procs.get(cur.ppid) if cur.ppid else None
            if cur is not None and cur.start_ns and child.start_ns and \
                    cur.start_ns - child.start_ns >= TICK_NS:
                break
        return out

    def update(self, ev: Event) -> None:
        """Apply a lifecycle event (exec, fork, exit); others are ignored."""
        p = ev.proc
        if isinstance(ev, ExecEvent):
            self._put(ProcEntry(p.pid, p.ppid, p.start_ns, p.exe, ev.argv, p.uid, p.comm,
                                exe_dev=ev.exe_dev, exe_ino=ev.exe_ino, paths_ns=paths_ns_of(ev)))
        elif isinstance(ev, ForkEvent):
            known = self._procs.get(ev.child_pid)
            if known is not None and known.ppid == p.pid and ev.child_start_ns \
                    and known.start_ns and known.same_process(ev.child_start_ns):
                # the child's exec arrived first (the priority ring delivers an exec ahead
                # of a bulk backlog, s23): its own image stays; a late fork must not hand it
                # the parent's exe and trust (s23 review 2)
                return
            parent = self._procs.get(p.pid)
            self._put(ProcEntry(
                ev.child_pid, p.pid, ev.child_start_ns,
                parent.exe if parent else p.exe, parent.cmdline if parent else (),
                p.uid, p.comm,
                exe_dev=parent.exe_dev if parent else 0, exe_ino=parent.exe_ino if parent else 0,
                paths_ns=parent.paths_ns if parent else 0,
            ))
        elif isinstance(ev, ExitEvent):
            cur = self._procs.get(p.pid)
            if cur is not None and cur.same_process(p.start_ns):
                gone = cur.exited_at(ev.time_ns)
                if not cur.exited_ns:
                    self._unlink_kid(cur)
                self._procs[p.pid] = gone
                if not gone.exited_ns:   # an exit stamped 0 leaves it "alive", as a scan says
                    self._kids.setdefault(gone.ppid, {})[gone.pid] = gone.start_ns

    def expire(self, now_ns: int) -> int:
        """Forget processes that exited more than ``linger_s`` ago."""
        gone = [pid for pid, e in self._procs.items()
                if e.exited_ns and now_ns - e.exited_ns > self.linger_ns]
        for pid in gone:
            del self._procs[pid]
        return len(gone)

    def enrich(self, ev: Event, in_place: bool = False) -> Event:
        """Fill the actor's ``exe`` from the table when the record lacks it.

        A process the table never saw (it started before the table and
        /proc raced) is read from /proc on first sight.  ``in_place`` (the agent's
        loop, which owns the events it was handed and enriches each once, before it
        is stored, published or evaluated): the event's actor is replaced in the
        event itself instead of rebuilding the event (~2 µs of a flood's per-event
        budget, issue 16.3); an actor shared by several events (the decoder's
        cache) is never changed itself."""
        if ev.proc.exe:
            return ev
        e = self._procs.get(ev.proc.pid)
        if e is None or not e.same_process(ev.proc.start_ns):
            e = _read_proc(Path("/proc"), ev.proc.pid) if self.live else None
            if e is None:
                return ev
            self._put(e)
        p = ev.proc
        hit = self._enriched.get(id(p))
        if hit is None or hit[0] is not p or hit[1] is not e:
            hit = (p, e, Proc(p.pid, p.tid, p.ppid, p.uid, p.euid, p.gid, p.cgroup_id, p.comm,
                              p.start_ns, e.exe))
            if len(self._enriched) >= self.enrich_cache:
                self._enriched.clear()
            self._enriched[id(p)] = hit
        if in_place:
            object.__setattr__(ev, "proc", hit[2])
            return ev
        return with_proc(ev, hit[2])
