"""Which mechanism enforces each HIPS operation in each tier — the one table.

``policy check``, ``policy apply``, ``status`` and the agent read it; a
deny/kill rule on an operation with no mechanism in the running tier is
refused in enforce mode, or accepted as *degraded* only with an explicit
flag (then shown in ``status`` and alerted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bastion.policy.model import Action, Mode, Op
from bastion.tier import Tier

LSM: Final[dict[Op, str]] = {
    Op.EXEC: "lsm/bprm_check_security",
    Op.OPEN_READ: "lsm/file_open",
    Op.OPEN_WRITE: "lsm/file_open, lsm/path_truncate",
    Op.CREATE: "lsm/inode_create|mkdir|mknod|symlink|link",
    Op.UNLINK: "lsm/inode_unlink|rmdir",
    Op.RENAME: "lsm/inode_rename",
    Op.CHMOD: "lsm/inode_setattr",
    Op.CONNECT: "lsm/socket_connect",
    Op.BIND: "lsm/socket_bind",
    Op.PTRACE: "lsm/ptrace_access_check",
    Op.SIGNAL: "lsm/task_kill",
}

COMPAT: Final[dict[Op, str]] = {
    Op.EXEC: "SIGKILL at sched_process_exec (the program dies before its first instruction)",
    Op.OPEN_READ: "fanotify FAN_OPEN_PERM on the objects' inodes",
    Op.OPEN_WRITE: "fanotify FAN_OPEN_PERM on the objects' inodes",
    Op.CONNECT: "cgroup/connect4|6, cgroup/sendmsg4|6 on the cgroup v2 root",
    Op.BIND: "cgroup/bind4|6 on the cgroup v2 root",
}

WHY_NOT: Final = ("no BPF LSM on this kernel, and no other hook can refuse it "
                  "(it is still seen by the event sensor and audited after the fact)")


def mechanism(op: Op, tier: Tier) -> str | None:
    return (LSM if tier == Tier.LSM else COMPAT).get(op)


@dataclass(frozen=True)
class Enforceability:
    rule: str
    op: Op
    action: Action
    mechanism: str | None     # None: cannot be enforced in this tier

    @property
    def degraded(self) -> bool:
        return self.mechanism is None and self.action in (Action.DENY, Action.KILL)


def assess(rules: list[tuple[str, tuple[Op, ...], Action, bool]], tier: Tier) -> list[Enforceability]:
    """``rules``: (name, operations, action, names 'any' object).  In the compat tier
    fanotify marks only named files, so an open rule on 'any' has no mechanism."""
    out = []
    for name, ops, action, any_object in rules:
        for op in ops:
            mech = mechanism(op, tier)
            if tier != Tier.LSM and any_object and op in (Op.OPEN_READ, Op.OPEN_WRITE):
                mech = None
            out.append(Enforceability(name, op, action, mech))
    return out


def refusals(assessed: list[Enforceability], mode: Mode, allow_degraded: bool) -> list[str]:
    """Why an enforce-mode policy cannot be applied here (empty: it can)."""
    if mode is not Mode.ENFORCE or allow_degraded:
        return []
    return [f"rule {e.rule!r}: {e.action.value} {e.op.value} cannot be enforced on this kernel: "
            f"{WHY_NOT}; use the lsm tier, or pass --allow-degraded to accept it as audit-only"
            for e in assessed if e.degraded]
