"""The dispatcher: findings in, actions taken, alert records out.

Findings become actions only here: rules and the engine never act.  (Other
parts act on their own events, not on findings: the guardian restarts the
agent and kills tamper attackers in the compat tier, the HIPS and quarantine
programs deny or kill in the kernel, the integrity response stops rogue BPF
loaders.)  A kill goes through a pidfd opened for the exact process (pid +
start time checked), so a reused pid is never hit.
With ``dry_run`` (global) or a finding's own ``dry_run`` (per rule) the action
is recorded as ``would-<action>`` and not taken.

Actions: ``alert``; ``kill`` (the process); ``kill-tree`` (the process and
every descendant: stopped first so none can fork away, then killed, each
through its own pidfd); ``quarantine`` (the process and its future
descendants are marked in the kernel quarantine map: refused exec,
write-open and connect in the lsm tier, killed at their next such attempt in
the compat tier — see :mod:`bastion.respond.quarantine`).  Without a loaded
quarantine the process is killed instead and the outcome says so.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

from bastion.alert import Alert, AlertProcess
from bastion.detect.engine import Finding
from bastion.events import Event, ForkEvent, HipsEvent, to_json
from bastion.proctable import ProcessTable
from bastion.procstat import TICK_NS, pidfd_of, read_stat, start_ns_of
from bastion.timefmt import format_time

log = logging.getLogger("bastion.respond")


ACTING = frozenset({"kill", "kill-tree", "quarantine"})


class QuarantineBackend(Protocol):
    def add(self, pid: int, start_ns: int, incident: int) -> None: ...


# After an action was taken: (the finding, its alert) -> None; may add to the alert.
ActionHook = Callable[[Finding, Alert], None]

# Is (pid, start_ns) the agent, one of its ancestors or an enrolled process of ours (the
# guardian)?  A start time of 0 is read from /proc.  Handlers must spare every such target.
OwnCheck = Callable[[int, int], bool]

# How one rule's action is taken when the finding names its own targets (e.g. every
# holder of a rogue BPF program, each with its start time): (the finding, dry run, the
# own-lineage check every target must pass) -> (outcome, pids signalled, one record per
# target for the alert's evidence "response").
ActionHandler = Callable[[Finding, bool, OwnCheck], tuple[str, list[int], list[dict[str, Any]]]]

#: The rule of the alert raised when an act was refused because its target is ours.
OWN_REFUSED = "bastion.respond.own-lineage"
# an act (or an after-act hook) that raised: reported, the loop goes on (s22)
RESPOND_FAILED = "bastion.respond.failed"

#: Skipped outcome of an act whose target is the agent's own lineage.
OWN_SKIP = "the agent's own lineage"

#: The rule of a process forked by a member of a tree killed lately, seen after the kill.
TREE_ESCAPEE = "bastion.respond.tree-escapee"
#: How long, and how many, members of killed trees are followed (:meth:`Dispatcher.follow`).
FOLLOW_S = 30.0
FOLLOW_MAX = 65536


def live_children(pid: int) -> list[int]:
    """Children of ``pid`` as the kernel sees them now (every thread's list)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _kernel_killed(f: Finding) -> bool:
    """A kernel record of a kill the kernel has sent (``bpf_send_signal(SIGKILL)``: an
    enforced ``kill`` HIPS record), not one for user space to take."""
    ev = f.event
    return (isinstance(ev, HipsEvent) and ev.enforced and ev.action == "kill"
            and bool(f.enforced_by))


def own_lineage(pid: int | None = None) -> dict[int, int]:
    """``pid`` (default: this process) and its ancestors up to pid 1, excluded, each with
    its start time: the processes a response of ours must never stop or kill."""
    out: dict[int, int] = {}
    cur = os.getpid() if pid is None else pid
    while cur > 1 and cur not in out and len(out) < 4096:
        try:
            st = read_stat(cur)
        except (OSError, ValueError):
            break
        out[cur] = st.start_ns
        cur = st.ppid
    return out


class Dispatcher:
    """Takes the findings' actions.  Never on the agent's own lineage (``own``: the agent,
    the guardian, whoever started them; default :func:`own_lineage` of this process): a
    kill-tree rooted above the agent (a per-user ransomware aggregate naming every tree of
    root, a shell that started the agent) walks past them and never enters the agent's own
    subtree (s20: a kill-tree SIGSTOPped the agent's parent and the agent itself, which
    then never sent the SIGKILLs: everything stayed stopped).  Every acting path spares
    them: kill, kill-tree, quarantine and each registered handler (given :meth:`is_own`);
    a refused act keeps its finding's alert (outcome ``...-skipped: the agent's own
    lineage``) and queues a critical :data:`OWN_REFUSED` notice (:meth:`take_notices`).

    The lineage is not frozen at start (s21 review F9): before each act it is read again
    when the parent changed (pid or start time: a guardian that crashed, the agent
    re-parented), and ``guardians`` (the composition root's: the enrolled guardian and
    agent identities, pid -> start_ns) is added each time: a new guardian that adopted
    the running agent is not its parent."""

    def __init__(self, procs: ProcessTable, *, dry_run: bool = False,
                 quarantine: QuarantineBackend | None = None,
                 own: dict[int, int] | None = None,
                 guardians: Callable[[], dict[int, int]] | None = None) -> None:
        self.procs = procs
        self._fixed = own is not None
        self._lineage = own_lineage() if own is None else dict(own)
        self._parent = self._parent_now()
        self.guardians = guardians
        self.own = dict(self._lineage)
        self.self_pid = os.getpid() if own is None else next(iter(self.own), 0)
        self._notices: list[Finding] = []
        self._current: list[dict[str, Any]] = []    # acts refused in this dispatch
        self.spared_own = 0         # members of the agent's own lineage a response passed over
        self.dry_run = dry_run
        self.quarantine = quarantine
        self._incident = 0
        self._hooks: list[tuple[str, str, ActionHook]] = []
        self._hooked: set[str] = set()   # the rules with a hook
        self._handlers: dict[tuple[str, str], ActionHandler] = {}
        self.skipped_reused = 0     # kill-tree members whose pid was reused: not signalled
        # members of trees killed lately, pid -> (start_ns, followed until, the rule): a
        # fork of theirs the loop sees after the kill is the tree's (follow)
        self._doomed: dict[int, tuple[int, float, str]] = {}
        self.followed = 0           # processes a killed tree forked after its kill-tree

    def after(self, rule: str, outcome_prefix: str, hook: ActionHook) -> None:
        """Run ``hook`` after ``rule``'s finding was dispatched with an outcome starting with
        ``outcome_prefix`` (e.g. a ransomware kill opens a shadow-copy incident).  The
        composition root registers these; the dispatcher knows no rule by name."""
        self._hooks.append((rule, outcome_prefix, hook))
        self._hooked.add(rule)

    def acts(self, rule: str, action: str, handler: ActionHandler) -> None:
        """Take ``rule``'s ``action`` with ``handler`` instead of the built-in one (which acts
        on the finding's single pid).  Registered by the composition root."""
        if action not in ACTING:
            raise ValueError(f"{action!r} is not an acting action ({', '.join(sorted(ACTING))})")
        self._handlers[(rule, action)] = handler

    def _open_checked(self, pid: int, start_ns: int) -> int | str:
        """A pidfd for exactly this process, or why not."""
        entry = self.procs.get(pid)
        if entry is not None and start_ns and not entry.same_process(start_ns):
            return "pid reused"
        pidfd = pidfd_of(pid)
        if pidfd is None:
            return "already exited"
        # the pidfd now pins the process: re-check the identity against /proc
        now = start_ns_of(pid)
        if start_ns and now and abs(now - start_ns) >= TICK_NS:
            os.close(pidfd)
            return "pid reused"
        return pidfd

    def _signal(self, pid: int, start_ns: int, sig: int) -> str:
        fd = self._open_checked(pid, start_ns)
        if isinstance(fd, str):
            return fd
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            return "already exited"
        finally:
            os.close(fd)
        return ""

    @staticmethod
    def _parent_now() -> tuple[int, int]:
        ppid = os.getppid()
        return ppid, start_ns_of(ppid) if ppid > 1 else 0

    def refresh_own(self) -> None:
        """The lineage again when the parent changed, plus the current ``guardians``."""
        if not self._fixed:
            now = self._parent_now()
            if now != self._parent:
                log.warning("respond: the agent's parent changed (%s -> %s): own lineage "
                            "read again", self._parent, now)
                self._parent = now
                self._lineage = own_lineage()
        extra = self.guardians() if self.guardians is not None else {}
        self.own = {**extra, **self._lineage}

    def is_own(self, pid: int, start_ns: int = 0) -> bool:
        """:meth:`_is_own` for handlers: a True answer is counted and noticed as refused."""
        if not self._is_own(pid, start_ns):
            return False
        self._refused(pid, start_ns, "handler")
        return True

    def _refused(self, pid: int, start_ns: int, what: str) -> None:
        self.spared_own += 1
        log.error("%s: pid %d is the agent, its ancestor or its guardian; not acted on",
                  what, pid)
        self._current.append({"pid": pid, "start_ns": start_ns or start_ns_of(pid),
                              "action": what})

    def take_notices(self) -> list[Finding]:
        """The :data:`OWN_REFUSED` findings since the last call (the agent alerts them)."""
        out, self._notices = self._notices, []
        return out

    def _is_own(self, pid: int, start_ns: int = 0) -> bool:
        """``pid`` is the agent or one of its ancestors (the same process: start time)."""
        known = self.own.get(pid)
        if known is None:
            return False
        now = start_ns or start_ns_of(pid)
        return not now or abs(now - known) < TICK_NS

    def _target_start(self, f: Finding) -> int:
        """The start time of the process ``f`` names: its event's when the event is that
        process's, else the process table's (s24: a finding naming another process -- the
        pty holder, a parent -- carried none, and the pid's holder *now* was killed or
        quarantined: after pid cycling, an unrelated process); 0 when neither knows it."""
        ev = f.event
        if ev is not None and ev.proc.pid == f.pid and ev.proc.start_ns:
            return ev.proc.start_ns
        entry = self.procs.get(f.pid)
        return entry.start_ns if entry is not None else 0

    def _kill(self, f: Finding) -> str:
        start = self._target_start(f)
        if self._is_own(f.pid, start):
            self._refused(f.pid, start, "kill")
            return f"kill-skipped: {OWN_SKIP}"
        why = self._signal(f.pid, start, signal.SIGKILL)
        return f"kill-skipped: {why}" if why else "kill"

    def _tree(self, seeds: list[tuple[int, int]], gone_out: list[tuple[int, int]] | None = None
              ) -> list[tuple[int, int]]:
        """``seeds`` and their descendants, parents first, each with where it came from:
        ``(pid, start_ns)`` for a member the process table saw forked into the tree (a
        re-parented escapee included), ``(pid, 0)`` for a live child found in /proc.

        A member the table saw exit is walked through, not returned: its children are
        still the tree's (s24: exited entries were left out of the children, so a double
        fork or a hopping payload -- fork, parent exits, again -- cut the walk and its live
        descendant, re-parented out of every /proc walk, lived)."""
        kids: dict[int, dict[int, int]] = {}
        gone: dict[int, int] = {}       # pid -> start of a member the table saw exit
        for e in self.procs:
            kids.setdefault(e.ppid, {})[e.pid] = e.start_ns
            if e.exited_ns:
                gone[e.pid] = e.start_ns
        out: list[tuple[int, int]] = []
        seen: set[int] = set()
        todo: list[tuple[int, int]] = list(seeds)
        while todo and len(out) < 65536 and len(seen) < 262144:
            pid, start = todo.pop(0)
            if pid in seen or pid <= 1:
                continue
            seen.add(pid)
            if start and pid in gone and abs(gone[pid] - start) < TICK_NS:
                # exited: nothing to signal (its pid may be another's now: no /proc walk
                # of it either), but the table's children of it are walked
                if gone_out is not None:
                    gone_out.append((pid, start))
                todo += self._kids_of(kids, pid, start)
                continue
            if self._is_own(pid, start):
                # the agent and its subtree are never entered; an ancestor is passed
                # over, its other children are still the tree's
                self.spared_own += 1
                log.error("kill-tree: pid %d is the agent or its ancestor; not signalled", pid)
                if pid == self.self_pid:
                    continue
            else:
                out.append((pid, start))
            known = kids.get(pid, {})
            todo += self._kids_of(kids, pid, start) + [
                (c, 0) for c in sorted(set(live_children(pid)) - set(known))]
        return out

    @staticmethod
    def _kids_of(kids: dict[int, dict[int, int]], pid: int, start: int) -> list[tuple[int, int]]:
        """The table's children of ``pid`` that started after it (``start``; 0: unknown):
        a child of an earlier holder of the pid is not this process's."""
        return sorted((c, s) for c, s in kids.get(pid, {}).items()
                      if not start or not s or s + TICK_NS > start)

    def _open_member(self, pid: int, start_ns: int, members: dict[int, int]
                     ) -> tuple[int, int] | None:
        """A pidfd for ``pid`` if it is still the tree's member: the process the table saw
        (same start time), or a live child of a member already held.  A pid reused by an
        unrelated process since the walk is never signalled."""
        fd = pidfd_of(pid)
        if fd is None:
            return None
        try:   # after the pidfd pins the process: is it the one we mean?
            st = read_stat(pid)
        except (OSError, ValueError):
            os.close(fd)
            return None
        ok = (abs(st.start_ns - start_ns) < TICK_NS) if start_ns else (
            st.ppid in members or (st.ppid != self.self_pid and self._is_own(st.ppid)))
        if not ok:
            os.close(fd)
            self.skipped_reused += 1
            log.warning("kill-tree: pid %d is no longer the tree's member (reused); not signalled", pid)
            return None
        return fd, st.start_ns

    def _kill_tree(self, f: Finding) -> tuple[str, list[int], list[tuple[int, int]]]:
        """Stop and kill the finding's tree; the outcome, the pids killed and their
        (pid, start_ns).  A root that already exited (fork-and-exit: ``os.fork() and
        sys.exit(0)``, the worker re-forking) is no reason to spare its tree: the walk
        starts from the table's lineage of the root, and always takes the event's own
        process (s19 review 4: the worker lived, "kill-tree-skipped: already exited").
        A kill the kernel already sent (:func:`_kernel_killed`: the compat tmux gate's
        client) is not sent again: that process is held (its children are the tree's) but
        never signalled, its pid may be another's by now; and the finding's root must be
        an ancestor of it in the table (the kernel's origin tgid carries no start time:
        a reused pid is not the tree's), else the tree is walked from it alone."""
        ev = f.event
        spare = ev.proc.pid if ev is not None and _kernel_killed(f) else 0
        roots = list(f.roots) or [(f.pid, 0)]
        if spare and any(r != spare for r, _ in roots):
            anc = {e.pid for e in self.procs.ancestry(spare)[1:]}
            if any(r != spare and r not in anc for r, _ in roots):
                log.warning("kill-tree: a root of %s is not an ancestor of the killed pid %d "
                            "in the table; the tree is walked from %d", roots, spare, spare)
                roots = [(spare, 0)]
        fds: dict[int, int] = {}
        starts: dict[int, int] = {}
        seeds: list[tuple[int, int]] = []
        why = ""
        for root, start in roots:
            # the start time the rule keyed the root with; only a finding that names no
            # root (a plain pid) falls back to the event's or the table's
            if not start:
                start = ev.proc.start_ns if ev is not None and ev.proc.pid == root else 0
            if not start:
                e = self.procs.get(root)
                start = e.start_ns if e is not None else 0
            if self._is_own(root, start):
                self._refused(root, start, "kill-tree")
                seeds.append((root, start))     # _tree passes over it (and never into us)
                continue
            fd = self._open_checked(root, start)
            if isinstance(fd, int):
                fds[root] = fd
                starts[root] = start_ns_of(root) or start
                seeds.append((root, start))
            elif fd == "already exited":
                seeds.append((root, start))
            elif fd == "pid reused" and start:
                # The root exited and its pid is another process's now (s20 review 5: the
                # whole kill-tree was skipped, the event's own process lived): as "root
                # exited", minus the new holder -- the walk starts from the root's children
                # the table saw forked before the new holder started, never from the pid.
                log.warning("kill-tree: root pid %d was reused; its known children and the "
                            "event's process are walked instead", root)
                holder = start_ns_of(root) or (1 << 62)
                seeds += [(e.pid, e.start_ns) for e in self.procs
                          if e.ppid == root and not e.exited_ns and e.pid != root
                          and e.start_ns and start <= e.start_ns < holder]
            else:
                why = why or fd
        if ev is not None and ev.proc.start_ns and ev.proc.pid not in {p for p, _ in seeds}:
            seeds.append((ev.proc.pid, ev.proc.start_ns))
        if not seeds:
            return f"kill-tree-skipped: {why or 'no root'}", [], []
        fd = why or "already exited"
        gone: list[tuple[int, int]] = []
        try:
            # stop everything first (a stopped process cannot fork), re-walking
            # until no new descendant appears, then kill each through its pidfd
            for _ in range(8):
                new = False
                for pid, pstart in self._tree(seeds, gone):
                    if pid in fds:
                        continue
                    got = self._open_member(pid, pstart, fds) if pstart or fds or self.own else None
                    if got is not None:
                        fds[pid], starts[pid] = got
                        new = True
                for pid, pfd in fds.items():
                    try:
                        if pid != spare:
                            signal.pidfd_send_signal(pfd, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
                if not new:
                    break
            for pid, pfd in fds.items():
                try:
                    if pid != spare:
                        signal.pidfd_send_signal(pfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            for pfd in fds.values():
                os.close(pfd)
        # a fork whose event was still queued at the walk (a payload hopping: fork, parent
        # exits, again) is followed when the loop sees it (s24)
        for pid, pstart in [*seeds, *gone, *starts.items()]:
            if not self._is_own(pid, pstart):
                self._doom(pid, pstart, f.rule)
        if not fds or set(fds) == {spare}:
            # the kernel's kill was the whole tree's
            return ("kill-tree" if spare else f"kill-tree-skipped: {fd}"), [], []
        return "kill-tree", sorted(p for p in fds if p != spare), sorted(
            (p, t) for p, t in starts.items() if p != spare)

    def _doom(self, pid: int, start_ns: int, rule: str) -> None:
        if not start_ns:
            return
        now = time.monotonic()
        if len(self._doomed) >= FOLLOW_MAX:
            self._doomed = {p: v for p, v in self._doomed.items() if v[1] > now}
            if len(self._doomed) >= FOLLOW_MAX:
                log.error("kill-tree: %d members followed already; pid %d not followed",
                          FOLLOW_MAX, pid)
                return
        self._doomed[pid] = (start_ns, now + FOLLOW_S, rule)

    def follow(self, ev: Event) -> Finding | None:
        """A fork by a member of a tree killed in the last :data:`FOLLOW_S` seconds (the
        same process: start time): its child is the tree's, to be killed (a critical
        :data:`TREE_ESCAPEE` finding, the child followed in turn).  The agent calls this for
        every fork event after its process table took it (s24: a payload that hops --
        fork, parent exits, again -- was always newer than the table at the walk, and
        lived on after every kill-tree)."""
        if not self._doomed or not isinstance(ev, ForkEvent):
            return None
        p = ev.proc
        got = self._doomed.get(p.pid)
        if got is None:
            return None
        start, until, rule = got
        if time.monotonic() > until:
            del self._doomed[p.pid]
            return None
        if not p.start_ns or abs(p.start_ns - start) >= TICK_NS or ev.child_pid <= 1:
            return None       # another process on that pid now
        self._doom(ev.child_pid, ev.child_start_ns, rule)
        self.followed += 1
        return Finding(
            rule=TREE_ESCAPEE, severity="critical", attack=(), action="kill", event=ev,
            pid=ev.child_pid,
            title=f"pid {ev.child_pid} forked by pid {p.pid} of a tree killed for {rule} "
                  "after the kill-tree: killed",
            evidence={"parent": p.pid, "finding_rule": rule,
                      "child_start_ns": ev.child_start_ns})

    def _quarantine(self, f: Finding) -> str:
        start = self._target_start(f)
        if self._is_own(f.pid, start):
            # s21 review F4: the kernel mark would refuse (lsm) or kill (compat) the agent
            # or the guardian at its next write-open/connect, and every agent it starts
            self._refused(f.pid, start, "quarantine")
            return f"quarantine-skipped: {OWN_SKIP}"
        if self.quarantine is None:
            k = self._kill(f)
            return f"{k} (quarantine unavailable)"
        now = start_ns_of(f.pid)
        if not now:
            # nothing to mark (a start of 0 would mark whichever process takes the pid next)
            return "quarantine-skipped: already exited"
        if start and abs(now - start) >= TICK_NS:
            return "quarantine-skipped: pid reused"
        self._incident += 1
        try:
            # the exact process: the kernel applies the mark only to this start time
            self.quarantine.add(f.pid, now, self._incident)
        except OSError as exc:
            return f"quarantine-failed: {exc}"
        return "quarantine"

    def passive(self, f: Finding) -> bool:
        """Dispatching ``f`` takes no action and runs no hook (an alerting action, no hook
        for its rule): its alert is a record only, the same whenever it is built, so the
        agent asks its rate gate first and builds only the alerts it emits (issue 16.3)."""
        return f.action not in ACTING and f.rule not in self._hooked

    def alert_exe(self, f: Finding) -> str:
        """The executable :meth:`dispatch`'s alert names for ``f``'s process."""
        ev = f.event
        if ev is not None and ev.proc.exe:
            return ev.proc.exe
        entry = self.procs.get(f.pid)
        return entry.exe if entry is not None else ""

    def held(self, f: Finding) -> None:
        """A passive finding the rate gate held back: logged as :meth:`dispatch` logs it."""
        log.info("alert %s %s: %s", f.severity, f.rule, f.title)

    def dispatch(self, f: Finding, now_ns: int) -> Alert:
        """Take the finding's action (unless dry run) and return the alert that records
        what was actually done; then run the hooks registered with :meth:`after`."""
        action = f.action
        outcome = action
        killed: list[int] = []
        members: list[tuple[int, int]] = []
        response: list[dict[str, Any]] | None = None
        handler = self._handlers.get((f.rule, action))
        self._current = []
        failed: str | None = None
        try:
            if action in ACTING:
                self.refresh_own()
            if handler is not None:
                outcome, killed, response = handler(f, self.dry_run or f.dry_run, self.is_own)
            elif action in ACTING and (self.dry_run or f.dry_run):
                outcome = f"would-{action}"
            elif action == "kill" and _kernel_killed(f):
                outcome = "kill"     # sent in the kernel (f.enforced_by): nothing left to do
            elif action == "kill":
                outcome = self._kill(f)
            elif action == "kill-tree":
                outcome, killed, members = self._kill_tree(f)
            elif action == "quarantine":
                outcome = self._quarantine(f)
        except Exception as exc:  # noqa: BLE001 - one finding's act never ends the loop
            # s22: an errno no branch expected (pidfd_open of a thread id gave ENOENT on
            # 6.18) raised out of dispatch and ended the agent's event loop: every later
            # event unseen until the guardian restarted it.  The act is reported failed,
            # the alert still goes out, and a critical notice names the error
            log.exception("respond: %s for %s failed", action, f.rule)
            failed = f"{type(exc).__name__}: {exc}"
            outcome = f"{action}-failed: {failed}"
        entry = self.procs.get(f.pid)
        ev = f.event
        alert = Alert(
            time=format_time(ev.time_ns if ev else now_ns), rule=f.rule, title=f.title,
            severity=f.severity, action=outcome, attack=list(f.attack),
            process=AlertProcess(
                pid=f.pid,
                ppid=entry.ppid if entry else (ev.proc.ppid if ev else 0),
                exe=(ev.proc.exe if ev and ev.proc.exe else (entry.exe if entry else "")),
                cmdline=" ".join(entry.cmdline) if entry else "",
                uid=entry.uid if entry else (ev.proc.uid if ev else 0)),
            enforced_by=f.enforced_by or "",
            evidence={**(f.evidence or {}), **({"response": response} if response is not None else {})},
            killed=killed,
            event=to_json(ev) if ev is not None else None, meta=dict(f.meta),
            container=ev.proc.container.to_json() if ev is not None and ev.proc.container else None,
            members=members)
        if self._current:
            alert.evidence["own_lineage_refused"] = list(self._current)
            self._notices.append(Finding(
                rule=OWN_REFUSED, severity="critical", attack=("T1562.001",), action="alert",
                event=None, pid=self._current[0]["pid"],
                title=f"{action} refused on the agent's own lineage (pid "
                      f"{', '.join(str(r['pid']) for r in self._current)}): finding "
                      f"{f.rule} named Bastion itself",
                evidence={"finding_rule": f.rule, "finding_title": f.title, "action": action,
                          "outcome": outcome, "refused": list(self._current)}))
        for rule, prefix, hook in self._hooks:
            if rule == f.rule and outcome.startswith(prefix):
                try:
                    hook(f, alert)
                except Exception as exc:  # noqa: BLE001 - as above: reported, never fatal
                    log.exception("respond: the %s hook of %s failed", prefix, f.rule)
                    failed = failed or f"hook {prefix}: {type(exc).__name__}: {exc}"
                    alert.evidence["response_error"] = failed
        if failed is not None:
            alert.evidence["response_error"] = failed
            self._notices.append(Finding(
                rule=RESPOND_FAILED, severity="critical", attack=("T1562.001",), action="alert",
                event=None, pid=f.pid,
                title=f"the {action} response to {f.rule} failed: {failed}",
                evidence={"finding_rule": f.rule, "finding_title": f.title, "action": action,
                          "error": failed}))
        log.info("alert %s %s: %s", f.severity, f.rule, f.title)
        return alert
