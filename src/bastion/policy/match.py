"""The reference matcher: the decision procedure of bastion.h over a MapPlan.

It is the user-space twin of the kernel matcher.  The fanotify listener
(compat tier) decides with it, and the tests drive the same plan through
both and compare.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Final, Sequence

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

    def subjects(self, t: TaskFacts) -> tuple[int, ...]:
        """Every subject the task matches, in the kernel's order: EXE, PARENT_EXE,
        UID, CGROUP (at most one of each kind: a fixed, small number of lookups)."""
        out = []
        for key in ((abi.SubjectKind.EXE, t.exe[1], t.exe[0]),
                    (abi.SubjectKind.PARENT_EXE, t.parent_exe[1], t.parent_exe[0]),
                    (abi.SubjectKind.UID, t.uid, 0),
                    (abi.SubjectKind.CGROUP, t.cgroup_id, 0)):
            sid = self._subjects.get(key)
            if sid is not None:
                out.append(sid)
        return tuple(out)

    def subject(self, t: TaskFacts) -> int:
        """The first subject the task matches (0 = none: only rules for everyone)."""
        subs = self.subjects(t)
        return subs[0] if subs else 0

    def _strictest(self, t: TaskFacts, lookup: Callable[[int], tuple[int, int] | None]) -> Decision:
        """Each matching subject's own most specific rule; the strictest of those wins
        (kill > deny > audit > allow; on a tie the earlier subject).  Only when no
        subject of the task has a rule: the rule for everyone, then the default.
        ``lookup(subject)`` gives that subject's most specific (action, rule_id)."""
        subs = self.subjects(t)
        best: Decision | None = None
        for s in subs:
            hit = lookup(s)
            if hit is not None and (best is None or hit[0] > best.action):
                best = Decision(abi.HipsAction(hit[0]), hit[1], s)
        if best is not None:
            return best
        first = subs[0] if subs else 0
        hit = lookup(0)
        if hit is not None:
            return Decision(abi.HipsAction(hit[0]), hit[1], first)
        return Decision(self.plan.default_action, 0, first)

    def decide_file(self, t: TaskFacts, op: abi.HipsOp, obj: tuple[int, int],
                    ancestors: Sequence[tuple[int, int]] = ()) -> Decision:
        """``obj`` and ``ancestors`` are (dev, ino); ancestors nearest first."""
        walk = [obj]
        if self.plan.flags & abi.HIPS_F_DIR_OBJECTS:
            walk += list(ancestors)[:16]
        walk.append((0, 0))

        def lookup(subj: int) -> tuple[int, int] | None:
            for dev, ino in walk:
                hit = self._rules.get((subj, op, dev, ino))
                if hit is not None:
                    return hit
            return None
        return self._strictest(t, lookup)

    def decide_net(self, t: TaskFacts, op: abi.HipsOp, addr: str, port: int) -> Decision:
        ip = ipaddress.ip_address(addr)
        raw = (_V4_MAPPED + ip.packed) if ip.version == 4 else ip.packed

        def lookup(subj: int) -> tuple[int, int] | None:
            for p in dict.fromkeys((port, 0)):
                best: tuple[int, tuple[int, int]] | None = None
                for (ks, kop, kport, kaddr, plen), val in self._nets.items():
                    if (ks, kop, kport) != (subj, op, p):
                        continue
                    if _prefix_match(raw, kaddr, plen) and (best is None or plen > best[0]):
                        best = (plen, val)
                if best is not None:
                    return best[1]
            return None
        return self._strictest(t, lookup)


def _prefix_match(addr: bytes, net: bytes, plen: int) -> bool:
    full, rest = divmod(plen, 8)
    if addr[:full] != net[:full]:
        return False
    if rest:
        mask = (0xFF << (8 - rest)) & 0xFF
        return (addr[full] & mask) == (net[full] & mask)
    return True
