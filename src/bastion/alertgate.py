"""Alert flood control: a rate limit per (rule, executable), a global quota per
interval, and "N more like this" aggregates (issue 14.1).

The gate decides whether an alert is emitted in full; it never decides whether
an action happens (the dispatcher has already killed or denied by then).  An
alert it holds back is *counted* in an aggregate for its key, and every interval
:meth:`AlertGate.flush` returns the aggregates due, so nothing is lost silently:

* per key ``(rule, executable)`` a token bucket of ``per_rule`` alerts refilled
  over ``interval_s`` (a fork loop has a new pid per alert, the same executable);
* a quota of ``quota`` full alerts per interval in all; past it every alert is
  summarised (an attacker who renames the executable per run gets one burst per
  name, then the quota);
* at most ``max_aggregates`` per-key aggregates per interval, the most severe
  first; the rest fold into one "quota exceeded, N alerts summarised" record.
  Aggregates themselves are never rate limited: a critical tamper alert held back
  always reappears at least as an aggregate in the next flush;
* the per-key state is bounded (``max_keys``); keys beyond it are counted by rule
  in the overflow aggregate.

Pure: the caller passes the clock, so tests drive it without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from bastion.alert import Alert, AlertProcess
from bastion.severity import SEVERITIES
from bastion.timefmt import format_time

__all__ = ["Aggregate", "AlertGate", "AlertLimits", "QUOTA_RULE", "aggregate_alert"]

QUOTA_RULE: Final = "bastion.alerts.quota_exceeded"
_RANK: Final = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class AlertLimits:
    """The ``alerts:`` section of the policy."""

    interval_s: float = 60.0     # quota window, aggregate flush, health alerts
    per_rule: int = 10           # full alerts per (rule, executable) per interval
    quota: int = 300             # full alerts per interval, all rules together
    max_aggregates: int = 50     # per-key aggregates per flush; the rest are summarised
    store_queue: int = 10_000    # alerts held in memory while the store fails
    max_keys: int = 4096         # (rule, executable) keys tracked at once


@dataclass
class Aggregate:
    """Alerts held back for one key (or, with ``rule == QUOTA_RULE``, the overflow)."""

    rule: str
    exe: str
    title: str                      # the first held-back alert's title
    severity: str                   # the highest held back
    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    actions: dict[str, int] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)   # a sample (first 10)
    by_rule: dict[str, int] = field(default_factory=dict)  # overflow only

    def add(self, severity: str, action: str, pid: int, now_ns: int, rule: str = "") -> None:
        if self.count == 0:
            self.first_ns = now_ns
        self.count += 1
        self.last_ns = now_ns
        if _RANK.get(severity, 0) > _RANK.get(self.severity, 0):
            self.severity = severity
        self.actions[action] = self.actions.get(action, 0) + 1
        if len(self.pids) < 10 and pid not in self.pids:
            self.pids.append(pid)
        if rule:
            self.by_rule[rule] = self.by_rule.get(rule, 0) + 1

    def evidence(self, reason: str) -> dict[str, Any]:
        out: dict[str, Any] = {"aggregate": True, "suppressed": self.count, "reason": reason,
                               "first_ns": self.first_ns, "last_ns": self.last_ns,
                               "actions": dict(self.actions), "pids_sample": list(self.pids)}
        if self.exe:
            out["exe"] = self.exe
        if self.by_rule:
            out["by_rule"] = dict(sorted(self.by_rule.items(), key=lambda kv: -kv[1])[:20])
        return out


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    held: Aggregate | None = None


class AlertGate:
    """Decides which alerts are emitted in full; the rest become aggregates."""

    def __init__(self, limits: AlertLimits, now: float) -> None:
        self.limits = limits
        self._keys: dict[tuple[str, str], _Bucket] = {}
        self._window = now
        self._used = 0                  # full alerts in the current window
        self._overflow: Aggregate | None = None
        self.suppressed_total = 0       # every alert ever held back (counted, never lost)

    def admit(self, rule: str, exe: str, title: str, severity: str, action: str, pid: int,
              now: float, now_ns: int) -> bool:
        """True: emit this alert in full.  False: it is counted in an aggregate."""
        lim = self.limits
        if now - self._window >= lim.interval_s:
            self._window, self._used = now, 0
        key = (rule, exe)
        b = self._keys.get(key)
        if b is None:
            if len(self._keys) >= lim.max_keys:
                self._expire(now)
            if len(self._keys) >= lim.max_keys:
                self._hold_overflow(rule, title, severity, action, pid, now_ns)
                return False
            b = self._keys[key] = _Bucket(float(lim.per_rule), now)
        else:
            b.tokens = min(float(lim.per_rule),
                           b.tokens + (now - b.stamp) * lim.per_rule / lim.interval_s)
            b.stamp = now
        if b.tokens >= 1.0 and self._used < lim.quota:
            b.tokens -= 1.0
            self._used += 1
            return True
        if b.tokens >= 1.0:       # the key has room, the quota has not: the overflow counts it
            self._hold_overflow(rule, title, severity, action, pid, now_ns)
            return False
        if b.held is None:
            b.held = Aggregate(rule=rule, exe=exe, title=title, severity=severity)
        b.held.add(severity, action, pid, now_ns)
        self.suppressed_total += 1
        return False

    def _hold_overflow(self, rule: str, title: str, severity: str, action: str, pid: int,
                       now_ns: int) -> None:
        if self._overflow is None:
            self._overflow = Aggregate(rule=QUOTA_RULE, exe="", title=title, severity=severity)
        self._overflow.add(severity, action, pid, now_ns, rule)
        self.suppressed_total += 1

    def _expire(self, now: float) -> None:
        """Forget keys whose bucket refilled and who hold nothing."""
        lim = self.limits
        for k in [k for k, b in self._keys.items() if b.held is None and
                  b.tokens + (now - b.stamp) * lim.per_rule / lim.interval_s >= lim.per_rule]:
            del self._keys[k]

    def flush(self, now: float) -> list[tuple[Aggregate, str]]:
        """The aggregates held since the last flush, with why (``rate`` or ``quota``):
        at most ``max_aggregates`` per-key ones (most severe, then largest, first) and
        one overflow record for everything else."""
        held = [b.held for b in self._keys.values() if b.held is not None]
        for b in self._keys.values():
            b.held = None
        held.sort(key=lambda a: (-_RANK.get(a.severity, 0), -a.count))
        out: list[tuple[Aggregate, str]] = [(a, "rate") for a in held[:self.limits.max_aggregates]]
        over = self._overflow
        self._overflow = None
        for a in held[self.limits.max_aggregates:]:
            if over is None:
                over = Aggregate(rule=QUOTA_RULE, exe="", title=a.title, severity=a.severity)
            over.count += a.count
            over.first_ns = min(over.first_ns or a.first_ns, a.first_ns)
            over.last_ns = max(over.last_ns, a.last_ns)
            if _RANK.get(a.severity, 0) > _RANK.get(over.severity, 0):
                over.severity = a.severity
            for act, n in a.actions.items():
                over.actions[act] = over.actions.get(act, 0) + n
            over.by_rule[a.rule] = over.by_rule.get(a.rule, 0) + a.count
        if over is not None:
            out.append((over, "quota"))
        self._expire(now)
        return out

    def stats(self) -> dict[str, int]:
        return {"keys": len(self._keys), "suppressed_total": self.suppressed_total,
                "window_used": self._used}


def aggregate_alert(agg: Aggregate, reason: str) -> Alert:
    """The alert that says what ``agg`` held back: "N more like this" for one key, or
    the quota's summary (the agent's and the guardian's alike)."""
    span = f"{format_time(agg.first_ns)} .. {format_time(agg.last_ns)}"
    acts = ", ".join(f"{a} {n}" for a, n in sorted(agg.actions.items(), key=lambda kv: -kv[1]))
    if agg.rule == QUOTA_RULE:
        rules = ", ".join(f"{r} {n}" for r, n in list(agg.by_rule.items())[:5])
        title = (f"Alert quota exceeded: {agg.count} alerts summarised ({rules}; "
                 f"actions: {acts}) {span}")
    else:
        title = f"{agg.count} more like this ({acts}) {span}: {agg.title}"
    return Alert(time=format_time(agg.last_ns), rule=agg.rule, title=title,
                 severity=agg.severity, action="aggregate",
                 process=AlertProcess(pid=agg.pids[0] if agg.pids else 0, exe=agg.exe),
                 evidence=agg.evidence(reason))
