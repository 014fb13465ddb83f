"""Compat tier: protected files through fanotify write-open denial.

Composes a :class:`~bastion.enforce.fanotify.FanotifyEnforcer` (targeted
inode marks, and through its listener the watchdog and dead-man deadline)
with a one-rule plan: ``open-write`` of the protected set is denied to
everyone but the agent and its guardian.  The exemption is the exact
identity (tgid + start + exe inode) of :mod:`bastion.guard.identity`, not
the listener's own tgid alone, so the guardian's listener also lets the
agent write its store.
"""

from __future__ import annotations

from bastion.enforce.fanotify import FanotifyEnforcer
from bastion.errors import Location
from bastion.events import HipsEvent
from bastion.guard.protect import ProtectedSet
from bastion.kernel.opener import IsOurs
from bastion.policy.compile import FileTarget, ResolvedPolicy, ResolvedRule, compile_plan
from bastion.policy.model import Action, Mode, Op


GUARD_MAX_DIRS = 200_000


class FileGuard:
    """Deny write-opens of a protected set to all but ``is_ours`` (and this process)."""

    def __init__(self, is_ours: IsOurs, *, scope_cgroup_id: int = 0,
                 deadline_s: float | None = None, self_tgid: int = 0,
                 decision_timeout_s: float = 0.2) -> None:
        self._ps: ProtectedSet | None = None
        # the protected trees are ours (interpreter, stdlib, venv, data dir), not a user's
        # policy: a Python install holds ~10,000 directories, each one an inode mark here
        self.enforcer = FanotifyEnforcer(scope_cgroup_id=scope_cgroup_id, deadline_s=deadline_s,
                                         self_tgid=self_tgid, max_dirs=GUARD_MAX_DIRS,
                                         decision_timeout_s=decision_timeout_s, is_ours=is_ours)

    def open(self) -> FileGuard:
        self.enforcer.open()
        return self

    def start(self) -> FileGuard:
        self.enforcer.start()
        return self

    def close(self) -> None:
        self.enforcer.close()

    def protect(self, ps: ProtectedSet) -> tuple[str, ...]:
        """Deny write-opens of ``ps`` (files and whole directory trees)."""
        self._ps = ps
        files = tuple(FileTarget(o.dev, o.ino, o.is_dir, o.path) for o in ps.roots())
        rule = ResolvedRule(1, "tamper-protection", Location("tamper"), (), "everyone",
                            (Op.OPEN_WRITE,), files, (), Action.DENY)
        plan = compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, (rule,)))
        self.enforcer.apply(plan, files)
        return self.enforcer.unenforced()

    def refresh(self) -> list[str]:
        """Mark what was created in the protected trees since the last call (a directory
        made after the marks were placed, e.g. ``mv yaml yaml.bak; mkdir yaml``, is not
        marked: fanotify marks are per inode); returns the paths newly marked."""
        if self._ps is None:
            return []
        before = self.enforcer.marked()
        self.protect(self._ps)
        return sorted(p for k, p in self.enforcer.marked().items() if k not in before)

    def poll(self, timeout_s: float = 0.0) -> list[HipsEvent]:
        """The refused (and late) write-opens since the last call."""
        return self.enforcer.poll(timeout_s)


__all__ = ["FileGuard", "IsOurs"]
