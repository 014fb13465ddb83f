"""The rule engine: rules indexed by the event types they declare.

A rule is any object with ``name``, ``event_types`` (JSON type names), and
``on_event(event, ctx) -> list[Finding]``; it has no side effects.  The
engine only routes events to the rules that asked for them and collects
findings; :mod:`bastion.respond` turns findings into actions.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from bastion.events import Event, LsmDenyEvent
from bastion.proctable import ProcessTable

RULE_ERROR = "bastion.engine.rule_error"

log = logging.getLogger("bastion.detect")


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
    dry_run: bool = False       # this rule is in dry-run: the action is reported as would-<action>


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
    """Routes events to the rules that declared their type.

    A rule that raises is isolated: the error is counted, reported once as a
    ``bastion.engine.rule_error`` finding, and the rule is disabled; the
    other rules and the engine carry on."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._by_type: dict[str, list[Rule]] = defaultdict(list)
        for r in self.rules:
            for t in r.event_types:
                self._by_type[t].append(r)
        self._routes: dict[str, tuple[Rule, ...]] = {}
        self._route()
        self.errors: dict[str, int] = {}
        self.disabled: dict[str, str] = {}   # rule name -> the error that disabled it

    def replace(self, old: Sequence[Rule], new: Sequence[Rule]) -> None:
        """Swap a group of rules (e.g. a newly installed Sigma set) between two events."""
        gone = {id(r) for r in old}
        self.rules = [r for r in self.rules if id(r) not in gone] + list(new)
        by_type: dict[str, list[Rule]] = defaultdict(list)
        for r in self.rules:
            if getattr(r, "name", "") in self.disabled:
                continue
            for t in r.event_types:
                by_type[t].append(r)
        self._by_type = by_type
        self._route()

    def wanted_types(self) -> frozenset[str]:
        return frozenset(t for t, rs in self._by_type.items() if rs)

    def _disable(self, rule: Rule, ev: Event, exc: Exception) -> Finding:
        name = getattr(rule, "name", type(rule).__name__)
        self.errors[name] = self.errors.get(name, 0) + 1
        self.disabled[name] = f"{type(exc).__name__}: {exc}"
        for rs in self._by_type.values():
            if rule in rs:
                rs.remove(rule)
        self._route()
        log.error("rule %s raised on a %s event and is disabled: %s", name, ev.type, exc,
                  exc_info=exc)
        return Finding(
            rule=RULE_ERROR, title=f"Rule {name} raised {type(exc).__name__} and was disabled",
            severity="high", attack=(), action="alert", event=ev, pid=ev.proc.pid,
            evidence={"failed_rule": name, "error": self.disabled[name], "event_type": ev.type})

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        rules = self._routes.get(ev.type)
        if not rules:
            return []
        out: list[Finding] = []
        for r in rules:     # a tuple: _disable builds new ones, this event's stays whole
            try:
                found = r.on_event(ev, ctx)
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                out.append(self._disable(r, ev, exc))
                continue
            if found:
                out += found
        return out

    def _route(self) -> None:
        """Event type -> its rules as a tuple, from ``_by_type`` (after every change of it)."""
        self._routes = {t: tuple(rs) for t, rs in self._by_type.items() if rs}

    def expire(self, now_ns: int) -> int:
        """Drop idle rule state (rules that keep state expose ``expire``)."""
        n = 0
        for r in self.rules:
            fn = getattr(r, "expire", None)
            if callable(fn):
                n += int(fn(now_ns))
        return n

    def stats(self) -> dict[str, Any]:
        """Rule errors, disabled rules and state counters (keys, shed, expired)."""
        keys = shed = expired = 0
        for r in self.rules:
            fn = getattr(r, "stats", None)
            if callable(fn):
                st = fn()
                keys += int(st.get("keys", 0))
                shed += int(st.get("shed", 0))
                expired += int(st.get("expired", 0))
        return {"rules": len(self.rules), "rule_errors": dict(self.errors),
                "disabled": dict(self.disabled), "state_keys": keys, "state_shed": shed,
                "state_expired": expired}


def builtin_rules() -> list[Rule]:
    return [LsmDenyRule()]
