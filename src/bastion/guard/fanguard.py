"""Compat tier: protected files through fanotify write-open denial.

Reuses :class:`~bastion.enforce.fanotify.FanotifyEnforcer` (targeted inode
marks, watchdog, dead-man deadline) with a one-rule plan: ``open-write`` of
the protected set is denied to everyone but the agent and its guardian.
The exemption is the exact identity (tgid + start + exe inode) of
:mod:`bastion.guard.identity`, not the listener's own tgid alone, so the
guardian's listener also lets the agent write its store.
"""

from __future__ import annotations

from typing import Callable

from bastion.enforce.fanotify import FanotifyEnforcer
from bastion.errors import Location
from bastion.guard.protect import ProtectedSet
from bastion.policy.compile import FileTarget, ResolvedPolicy, ResolvedRule, compile_plan
from bastion.policy.model import Action, Mode, Op

IsOurs = Callable[[int], bool]
"""``is_ours(tgid)``: is this process the agent or its guardian (exact identity)?"""


class FileGuard(FanotifyEnforcer):
    """FanotifyEnforcer whose exemption is an identity check."""

    def __init__(self, is_ours: IsOurs, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._is_ours = is_ours

    def _is_own_thread(self, tid: int) -> bool:
        if super()._is_own_thread(tid):
            return True
        try:
            with open(f"/proc/{tid}/status", "rb") as fh:   # procfs: never marked
                for line in fh.read().split(b"\n"):
                    if line.startswith(b"Tgid:"):
                        return self._is_ours(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            return False
        return False

    def protect(self, ps: ProtectedSet) -> tuple[str, ...]:
        """Deny write-opens of ``ps`` (files and whole directory trees)."""
        files = tuple(FileTarget(o.dev, o.ino, o.is_dir, o.path) for o in ps.roots())
        rule = ResolvedRule(1, "tamper-protection", Location("tamper"), (), "everyone",
                            (Op.OPEN_WRITE,), files, (), Action.DENY)
        plan = compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, (rule,)))
        self.apply(plan, files)
        return self.unenforced()


__all__ = ["FileGuard", "IsOurs"]
