"""The rule engine: rules indexed by the event types they declare.

A rule is any object with ``name``, ``event_types`` (JSON type names), and
``on_event(event, ctx) -> list[Finding]``; it has no side effects.  The
engine only routes events to the rules that asked for them and collects
findings; :mod:`bastion.respond` turns findings into actions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from bastion.events import Event, LsmDenyEvent
from bastion.proctable import ProcessTable

SEVERITIES = ("info", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Finding:
    rule: str
    title: str
    severity: str
    attack: tuple[str, ...]
    action: str                 # what the response layer should do: alert, kill, ...
    event: Event | None
    pid: int
    evidence: dict[str, Any] = field(default_factory=dict)
    enforced_by: str = ""       # mechanism that already enforced it in the kernel, if any
    meta: dict[str, Any] = field(default_factory=dict)  # top-level alert keys (e.g. sigma id, author)


@dataclass
class RuleContext:
    procs: ProcessTable


class Rule(Protocol):
    name: str
    event_types: frozenset[str]

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]: ...


class LsmDenyRule:
    """Every in-kernel LSM deny is reported (the kernel already refused it)."""

    name = "bastion.lsm_deny"
    event_types = frozenset({"lsm_deny"})

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        assert isinstance(ev, LsmDenyEvent)
        return [Finding(
            rule=self.name, title=f"Denied {ev.hook.replace('_', ' ')} of {ev.path}",
            severity="high", attack=(), action="deny", event=ev, pid=ev.proc.pid,
            evidence={"hook": ev.hook, "path": ev.path, "rule_id": ev.rule_id},
            enforced_by=f"lsm/{'bprm_check_security' if ev.hook == 'bprm_check' else ev.hook}",
        )]


class Engine:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._by_type: dict[str, list[Rule]] = defaultdict(list)
        for r in self.rules:
            for t in r.event_types:
                self._by_type[t].append(r)

    def wanted_types(self) -> frozenset[str]:
        return frozenset(self._by_type)

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        rules = self._by_type.get(ev.type)
        if not rules:
            return []
        out: list[Finding] = []
        for r in rules:
            out.extend(r.on_event(ev, ctx))
        return out


def builtin_rules() -> list[Rule]:
    return [LsmDenyRule()]
