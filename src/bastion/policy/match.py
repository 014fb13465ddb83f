"""The reference matcher: the decision procedure of bastion.h over a MapPlan.

It is the user-space twin of the kernel matcher.  The fanotify listener
(compat tier) decides with it, and the tests drive the same plan through
both and compare.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Sequence

from bastion import abi
from bastion.policy.compile import MapPlan

_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"


@dataclass(frozen=True)
class TaskFacts:
    """What the kernel knows of the acting task."""

    exe: tuple[int, int]            # (dev, ino) of its executable
    parent_exe: tuple[int, int] = (0, 0)
    uid: int = 0
    cgroup_id: int = 0


@dataclass(frozen=True)
class Decision:
    action: abi.HipsAction
    rule_id: int                    # 0 = the policy's default
    subject: int


class Matcher:
    def __init__(self, plan: MapPlan) -> None:
        self.plan = plan
        self._subjects = dict(plan.subjects)
        self._rules = dict(plan.rules)
        self._nets = dict(plan.nets)

    def subject(self, t: TaskFacts) -> int:
        for key in ((abi.SubjectKind.EXE, t.exe[1], t.exe[0]),
                    (abi.SubjectKind.PARENT_EXE, t.parent_exe[1], t.parent_exe[0]),
                    (abi.SubjectKind.UID, t.uid, 0),
                    (abi.SubjectKind.CGROUP, t.cgroup_id, 0)):
            sid = self._subjects.get(key)
            if sid is not None:
                return sid
        return 0

    def decide_file(self, t: TaskFacts, op: abi.HipsOp, obj: tuple[int, int],
                    ancestors: Sequence[tuple[int, int]] = ()) -> Decision:
        """``obj`` and ``ancestors`` are (dev, ino); ancestors nearest first."""
        s = self.subject(t)
        walk = [obj]
        if self.plan.flags & abi.HIPS_F_DIR_OBJECTS:
            walk += list(ancestors)[:16]
        walk.append((0, 0))
        for subj in dict.fromkeys((s, 0)):
            for dev, ino in walk:
                hit = self._rules.get((subj, op, dev, ino))
                if hit is not None:
                    return Decision(abi.HipsAction(hit[0]), hit[1], s)
        return Decision(self.plan.default_action, 0, s)

    def decide_net(self, t: TaskFacts, op: abi.HipsOp, addr: str, port: int) -> Decision:
        s = self.subject(t)
        ip = ipaddress.ip_address(addr)
        raw = (_V4_MAPPED + ip.packed) if ip.version == 4 else ip.packed
        for subj in dict.fromkeys((s, 0)):
            for p in dict.fromkeys((port, 0)):
                best: tuple[int, tuple[int, int]] | None = None
                for (ks, kop, kport, kaddr, plen), val in self._nets.items():
                    if (ks, kop, kport) != (subj, op, p):
                        continue
                    if _prefix_match(raw, kaddr, plen) and (best is None or plen > best[0]):
                        best = (plen, val)
                if best is not None:
                    return Decision(abi.HipsAction(best[1][0]), best[1][1], s)
        return Decision(self.plan.default_action, 0, s)


def _prefix_match(addr: bytes, net: bytes, plen: int) -> bool:
    full, rest = divmod(plen, 8)
    if addr[:full] != net[:full]:
        return False
    if rest:
        mask = (0xFF << (8 - rest)) & 0xFF
        return (addr[full] & mask) == (net[full] & mask)
    return True
