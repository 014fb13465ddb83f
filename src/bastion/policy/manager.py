"""The running HIPS policy: validate, compile and apply atomically; report.

``PolicyManager.apply`` either replaces the running policy completely or
leaves it untouched: parsing, resolution, compilation, the enforceability
check and the lockout check all happen before anything in the kernel is
written, and the kernel swap itself is one generation flip.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Final, Protocol, Sequence

from bastion.config import AgentConfig, PolicyError, parse_policy
from bastion.detect.engine import Finding
from bastion import abi
from bastion.enforce.mechanisms import Enforceability, assess, mechanism, refusals
from bastion.errors import BastionError, ConfigError, Location
from bastion.tier import Tier
from bastion.events import Event, FileEvent, HipsEvent, KillEvent, PtraceEvent
from bastion.policy.compile import (
    CompileError, Drift, FileTarget, MapPlan, ResolvedPolicy, Resolver, compile_plan, drift,
    kernel_dev, resolve,
)
from bastion.policy.match import Matcher, TaskFacts
from bastion.policy.model import Action, HipsPolicy, Mode, Op
from bastion.proctable import ProcessTable

log = logging.getLogger("bastion.policy")

# Programs whose loss would lock the administrator out (or stop the agent).
_CRITICAL = ("/bin/sh", "/bin/bash", "/usr/bin/sudo", "/bin/su", "/usr/bin/su",
             "/bin/login", "/usr/sbin/sshd", "/sbin/init")


class KernelBackend(Protocol):
    """What the manager needs from an enforcement backend (hips_kernel, fanotify)."""

    def apply(self, plan: MapPlan) -> int: ...
    def clear(self) -> None: ...
    def poll(self, timeout_s: float) -> list[HipsEvent] | None: ...
    def close(self, *, unpin: bool = False) -> None: ...


class FileBackend(Protocol):
    def apply(self, plan: MapPlan, targets: Sequence[FileTarget]) -> None: ...
    def clear(self) -> None: ...
    def poll(self, timeout_s: float) -> list[HipsEvent] | None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, int | float]: ...
    def read_check(self) -> str: ...


Backends = tuple[KernelBackend | None, FileBackend | None]


_AFTER_THE_FACT: Final = {"unlink": Op.UNLINK, "rename": Op.RENAME, "chmod": Op.CHMOD,
                          "chown": Op.CHMOD, "ptrace": Op.PTRACE, "kill": Op.SIGNAL}


def _inode(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (kernel_dev(st.st_dev), st.st_ino)


def _ancestors(path: str) -> list[tuple[int, int]]:
    """The directories above ``path``, nearest first (up to 16, as the kernel walks)."""
    out: list[tuple[int, int]] = []
    d = os.path.dirname(path)
    while d and d != "/" and len(out) < 16:
        out.append(_inode(d))
        d = os.path.dirname(d)
    return out


def _inode_via(r: Resolver, path: str) -> tuple[int, int]:
    try:
        st = r.stat(path)
    except OSError:
        return (0, 0)
    return (kernel_dev(st.st_dev), st.st_ino)


def _facts(ev: Event, procs: ProcessTable) -> TaskFacts | None:
    exe = ev.proc.exe or (e.exe if (e := procs.get(ev.proc.pid)) else "")
    if not exe:
        return None
    parent = procs.get(ev.proc.ppid)
    return TaskFacts(exe=_inode(exe), parent_exe=_inode(parent.exe) if parent and parent.exe else (0, 0),
                     uid=ev.proc.uid, cgroup_id=ev.proc.cgroup_id)


class PolicyApplyError(ConfigError):
    """The new policy was refused; the running one is unchanged."""


@dataclass
class Applied:
    policy: AgentConfig
    resolved: ResolvedPolicy
    plan: MapPlan
    assessed: list[Enforceability]
    gen: int = 0
    degraded: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.policy.source,
            "mode": self.policy.hips.mode.value,
            "default": self.policy.hips.default.value,
            "generation": self.gen,
            "rules": [
                {"id": r.rule_id, "name": r.name, "location": str(r.location), "subject": r.subject,
                 "operations": [o.value for o in r.ops], "action": r.action.value,
                 "mechanisms": {e.op.value: e.mechanism or "none (audited from events)"
                                for e in self.assessed if e.rule == r.name}}
                for r in self.resolved.rules
            ],
            "entries": {"subjects": len(self.plan.subjects), "rules": len(self.plan.rules),
                        "nets": len(self.plan.nets)},
            "degraded": self.degraded,
            "warnings": [str(w) for w in self.policy.warnings + self.resolved.warnings],
            "text": self.policy.text,
        }


def lockout_problems(hips: HipsPolicy, resolved: ResolvedPolicy, r: Resolver) -> list[ConfigError]:
    """Rules that would deny the agent itself or the administrator's way in."""
    out: list[ConfigError] = []
    crit: dict[tuple[int, int], str] = {}
    for path in _CRITICAL + (sys.executable, str(Path(sys.argv[0]).resolve())):
        try:
            st = r.stat(path)
        except OSError:
            continue
        crit[(kernel_dev(st.st_dev), st.st_ino)] = path
    for rule in resolved.rules:
        if rule.action not in (Action.DENY, Action.KILL) or rule.identities:
            continue
        for f in rule.files:
            hit = crit.get((f.dev, f.ino))
            if hit and (Op.EXEC in rule.ops or Op.OPEN_READ in rule.ops):
                out.append(ConfigError(
                    f"rule {rule.name!r} would {rule.action.value} {hit} for everyone: this locks "
                    "the administrator out or stops Bastion itself", location=rule.location))
            if f.path == "any" and Op.EXEC in rule.ops:
                out.append(ConfigError(
                    f"rule {rule.name!r} would {rule.action.value} every exec for everyone",
                    location=rule.location))
    return out


class PolicyManager:
    def __init__(self, tier: Tier, *, open_backends: Callable[[], Backends] | None = None,
                 resolver: Resolver | None = None) -> None:
        """``open_backends`` loads the enforcement programs; it is called on the first
        policy that enforces or audits something, so an agent without HIPS rules
        pays nothing for HIPS."""
        self.tier = tier
        self.open_backends = open_backends
        self.kernel: KernelBackend | None = None
        self.files: FileBackend | None = None
        self.resolver = resolver or Resolver()
        self.current: Applied | None = None
        self._matcher: Matcher | None = None
        self._refused: ResolvedPolicy | None = None   # a re-resolution refused (said once)

    def prepare(self, policy: AgentConfig, *, mode: Mode | None = None, force: bool = False,
                allow_degraded: bool = False) -> Applied:
        """Everything short of touching the kernel; raises PolicyApplyError/CompileError."""
        hips = policy.hips if mode is None else replace(policy.hips, mode=mode)
        policy = replace(policy, hips=hips)
        resolved = resolve(hips, self.resolver)
        plan = compile_plan(resolved)
        assessed = assess([(r.name, r.ops, r.action, any(f.path == "any" for f in r.files))
                           for r in resolved.rules], self.tier)
        where = {r.name: r.location for r in resolved.rules}
        problems = [ConfigError(m, location=where.get(m.split("'")[1], Location(policy.source)))
                    for m in refusals(assessed, hips.mode, allow_degraded)]
        if hips.mode is Mode.ENFORCE:
            problems += lockout_problems(hips, resolved, self.resolver)
        if not force:
            for w in policy.warnings:
                problems.append(ConfigError(f"{w.message} (use --force to apply anyway)",
                                            location=w.location))
        if problems:
            raise PolicyApplyError("\n".join(str(p) for p in problems))
        degraded = [f"rule {e.rule!r}: {e.action.value} {e.op.value} (no mechanism in the "
                    f"{self.tier} tier: audited from events)" for e in assessed if e.degraded]
        return Applied(policy, resolved, plan, assessed, degraded=degraded)

    def apply(self, policy: AgentConfig, **kw: Any) -> Applied:
        applied = self.prepare(policy, **kw)
        hips = applied.policy.hips
        if hips.mode is Mode.LEARN or hips.empty:
            if self.kernel is not None:
                self.kernel.clear()
            if self.files is not None:
                self.files.clear()
        else:
            if self.kernel is None and self.files is None and self.open_backends is not None:
                self.kernel, self.files = self.open_backends()
            if self.kernel is not None:
                applied.gen = self.kernel.apply(applied.plan)
            if self.files is not None and self.tier != Tier.LSM:
                self.files.apply(applied.plan, _file_targets(applied.resolved))
        self.current = applied
        self._matcher = None
        log.info("policy %s applied (mode %s, generation %d, %d rules)", policy.source,
                 hips.mode.value, applied.gen, len(applied.resolved.rules))
        return applied

    def audit_event(self, ev: Event, procs: ProcessTable) -> Finding | None:
        """After-the-fact audit of an operation this tier cannot refuse (degraded rules).

        The decision uses the same plan and matcher; objects are found by
        stat()ing the event's path now (a removed file is matched through its
        directories only)."""
        cur = self.current
        if cur is None or cur.policy.hips.mode is Mode.LEARN:
            return None
        if isinstance(ev, FileEvent) and ev.op in ("link", "rename") and self.tier != Tier.LSM:
            escaped = self._new_name(ev, procs, cur)
            if escaped is not None:
                return escaped
        if not cur.degraded:
            return None
        op = _AFTER_THE_FACT.get(ev.type)
        if op is None or mechanism(op, self.tier) is not None:
            return None
        facts = _facts(ev, procs)
        if facts is None:
            return None
        obj: tuple[int, int] = (0, 0)
        ancestors: list[tuple[int, int]] = []
        path = ""
        if isinstance(ev, FileEvent):
            path = ev.path2 if ev.op == "rename" and ev.path2 else ev.path
            obj = _inode(path)
            d = os.path.dirname(path)
            while d and d != "/" and len(ancestors) < 16:
                ancestors.append(_inode(d))
                d = os.path.dirname(d)
        elif isinstance(ev, (PtraceEvent, KillEvent)):
            target = procs.get(getattr(ev, "target_tgid", 0) or ev.target_pid)
            if target is None or not target.exe:
                return None
            path = target.exe
            obj = _inode(target.exe)
        matcher = self._matcher or Matcher(cur.plan)
        self._matcher = matcher
        dec = matcher.decide_file(facts, abi.HipsOp[op.name], obj, ancestors)
        if dec.action not in (abi.HipsAction.DENY, abi.HipsAction.KILL, abi.HipsAction.AUDIT):
            return None
        hev = HipsEvent(ev.time_ns, ev.proc, op=op.value, action=dec.action.name.lower(),
                        rule_id=dec.rule_id, subject=dec.subject, mechanism="after-the-fact",
                        enforced=False, gen=cur.gen, path=path)
        return self.finding(hev)

    def _new_name(self, ev: FileEvent, procs: ProcessTable, cur: Applied) -> Finding | None:
        """compat tier: a hard link or rename cannot be refused (fanotify has no such
        permission event), and a directory object marks only directories: a new name
        out of a ``dir/`` object the task may not read or write escapes its rule.  The
        lsm tier refuses it (``inode_link``/``inode_rename``); here it is an alert after
        the fact, when the task's open-read or open-write decision for the file at the
        old name is stricter than at the new one."""
        if not ev.path2 or not cur.plan.flags & abi.HIPS_F_DIR_OBJECTS:
            return None
        obj = _inode(ev.path2)
        if obj == (0, 0):
            return None          # the link/rename failed, or the new name is gone again
        facts = _facts(ev, procs)
        if facts is None:
            return None
        matcher = self._matcher or Matcher(cur.plan)
        self._matcher = matcher
        here, there = _ancestors(ev.path), _ancestors(ev.path2)
        for op in (abi.HipsOp.OPEN_READ, abi.HipsOp.OPEN_WRITE):
            d_here = matcher.decide_file(facts, op, obj, here)
            if d_here.action is abi.HipsAction.ALLOW:
                continue
            if matcher.decide_file(facts, op, obj, there).action >= d_here.action:
                continue
            hev = HipsEvent(ev.time_ns, ev.proc, op=ev.op, action=d_here.action.name.lower(),
                            rule_id=d_here.rule_id, subject=d_here.subject,
                            mechanism="after-the-fact", enforced=False, gen=cur.gen,
                            path=ev.path2, dev=obj[0], ino=obj[1])
            refused_here = d_here.action in (abi.HipsAction.DENY, abi.HipsAction.KILL)
            return replace(self.finding(hev), severity="high" if refused_here else "medium",
                           title=f"HIPS {ev.op} out of a protected directory (not refusable on "
                                 f"this tier): {ev.path} -> {ev.path2}")
        return None

    def kernel_stats(self) -> dict[str, int]:
        """The kernel matcher's integer counters ({} without one): ``drops`` and
        ``drops.<class>`` (decision records lost to a full ring), ``decisions.*``."""
        stats = getattr(self.kernel, "stats", None)
        if not callable(stats):
            return {}
        return {str(k): v for k, v in stats().items() if isinstance(v, int)}

    def file_stats(self) -> dict[str, int | float]:
        """The compat file enforcer's counters ({} without one): ``fail_opens`` (opens
        allowed by the watchdog, a failed decision or a queue overflow), ``watchdog_denies``
        (stalled decisions failed closed), ``errors``, ``overflows``, ``unplaced``..."""
        files = self.files
        return dict(files.stats()) if files is not None else {}

    def file_read_check(self) -> str:
        """How the compat file enforcer tells a read-only open of a write-protected file
        from the others ("" without one): see :meth:`FanotifyEnforcer.read_check`."""
        files = self.files
        return files.read_check() if files is not None else ""

    def refresh(self, *, full: bool = True) -> list[Finding]:
        """Re-resolve the running policy; when an object or subject changed inode, install
        the re-resolved policy and return one ``bastion.policy.drift`` finding per change.

        File objects are bound to inodes in the kernel, but the policy names paths
        ((parent directory, name)): ``passwd``, ``sed -i``, editors and package
        upgrades replace a file by rename, and without this the protection of the
        new file silently ends.  Call it every few seconds (and after a rename into
        a protected directory).  A re-resolution that would lock the administrator
        out is not installed: the finding says so (critical).

        ``full=False`` first stats only the paths resolved last time (a file
        replaced by rename) and re-resolves only when one changed; a full
        refresh also expands globs again and re-reads the subjects."""
        cur = self.current
        if cur is None or cur.policy.hips.mode is Mode.LEARN or cur.policy.hips.empty:
            return []
        if not full and not self._moved(cur.resolved):
            return []
        try:
            resolved = resolve(cur.policy.hips, self.resolver)
        except CompileError as exc:
            return [self._drift_finding([], f"cannot re-resolve the policy: {exc}", applied=False)]
        changes = drift(cur.resolved, resolved)
        if not changes:
            return []
        problems: list[ConfigError] = []
        if cur.policy.hips.mode is Mode.ENFORCE:
            problems = lockout_problems(cur.policy.hips, resolved, self.resolver)
        try:
            plan = compile_plan(resolved)
        except CompileError as exc:
            problems += exc.problems
        if problems:
            if resolved == self._refused:
                return []   # said once; the running plan still holds
            self._refused = resolved
            why = "; ".join(str(p) for p in problems)
            return [self._drift_finding(changes, f"not re-applied: {why}", applied=False)]
        self._refused = None
        gen = cur.gen
        try:
            if self.kernel is not None:
                gen = self.kernel.apply(plan)
            if self.files is not None and self.tier != Tier.LSM:
                self.files.apply(plan, _file_targets(resolved))
        except BastionError as exc:
            log.error("policy %s: cannot re-apply after drift: %s", cur.policy.source, exc)
            return [self._drift_finding(changes, f"re-apply failed: {exc}", applied=False)]
        self.current = replace(cur, resolved=resolved, plan=plan, gen=gen)
        self._matcher = None
        log.warning("policy %s: %d objects/subjects changed inode; re-applied as generation %d",
                    cur.policy.source, len(changes), gen)
        return [self._drift_finding([d], "re-applied to the new inode", applied=True)
                for d in changes]

    def _moved(self, resolved: ResolvedPolicy) -> bool:
        """Does a resolved file object's path name another inode now (or nothing)?"""
        for rule in resolved.rules:
            for f in rule.files:
                if f.path != "any" and _inode_via(self.resolver, f.path) != (f.dev, f.ino):
                    return True
        return False

    def _drift_finding(self, changes: list[Drift], outcome: str, *, applied: bool) -> Finding:
        source = self.current.policy.source if self.current is not None else ""
        what = ", ".join(f"{d.kind} {d.path} of rule {d.rule!r}" for d in changes) or "the policy"
        return Finding(
            rule="bastion.policy.drift",
            title=f"HIPS policy drift: {what} changed inode ({outcome})",
            severity="high" if applied else "critical", attack=(), action="alert", event=None,
            pid=0, evidence={"policy": source, "changes": [d.to_json() for d in changes],
                             "reapplied": applied, "outcome": outcome})

    def poll(self) -> list[HipsEvent]:
        out: list[HipsEvent] = []
        for b in (self.kernel, self.files):
            if b is not None:
                out += b.poll(0) or []
        return out

    def close(self, *, unpin: bool = False) -> str:
        """Release the backends.  Pinned kernel enforcement outlives this process unless
        ``unpin``.  Returns what became of it: "none" (nothing was loaded), "removed"
        or "pinned" (still enforcing with no agent)."""
        state = "none"
        if self.kernel is not None:
            self.kernel.close(unpin=unpin)
            state = "pinned" if not unpin and getattr(self.kernel, "pin_dir", None) else "removed"
        if self.files is not None:
            self.files.close()
        self.kernel = self.files = None
        return state

    def apply_text(self, text: str, source: str, **kw: Any) -> Applied:
        return self.apply(parse_policy(text, source), **kw)

    def finding(self, ev: HipsEvent) -> Finding:
        """A HIPS decision as a finding (the alert names rule, subject, object, mechanism)."""
        rule_name, subject = "default", "everyone"
        if self.current is not None and 0 < ev.rule_id <= len(self.current.plan.rule_table):
            info = self.current.plan.rule_table[ev.rule_id - 1]
            rule_name, subject = info.name, info.subject
        obj = ev.path or (f"{ev.daddr}:{ev.dport}" if ev.daddr else
                          (f"pid {ev.target_pid}" if ev.target_pid else "?"))
        verb = ev.action if ev.enforced else f"audit ({ev.action} not enforced)"
        sev = "high" if ev.enforced else "medium"
        return Finding(
            rule=f"hips:{rule_name}",
            title=f"HIPS {verb}: {ev.op} {obj}",
            severity=sev, attack=(), action=ev.action if ev.enforced else "audit",
            event=ev, pid=ev.proc.pid,
            evidence={"op": ev.op, "object": obj, "subject": subject, "rule_id": ev.rule_id,
                      "generation": ev.gen, "decision": ev.action, "enforced": ev.enforced},
            enforced_by=ev.mechanism,
            meta={"hips": {"rule": rule_name, "subject": subject, "object": obj,
                           "operation": ev.op, "mechanism": ev.mechanism}},
        )


def _file_targets(resolved: ResolvedPolicy) -> list[FileTarget]:
    """The file objects the compat tier marks (opens are decided by fanotify)."""
    return [f for r in resolved.rules for f in r.files
            if {Op.OPEN_READ, Op.OPEN_WRITE} & set(r.ops) and f.path != "any"]


def load_for_apply(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([ConfigError(f"cannot read policy: {exc.strerror}",
                                       location=Location(str(path)))]) from exc
    return parse_policy(text, str(path))


__all__ = ["Applied", "CompileError", "PolicyApplyError", "PolicyManager"]
