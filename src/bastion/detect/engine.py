"""The rule engine: rules indexed by the event types they declare.

A rule is any object with ``name``, ``event_types`` (JSON type names), and
``on_event(event, ctx) -> list[Finding]``; it has no side effects.  The
engine only routes events to the rules that asked for them and collects
findings; :mod:`bastion.respond` turns findings into actions.

Beyond the type, a rule may declare which opens it can act on (issue 16.3: most
events are opens, and most open rules return nothing for most paths): ``read_opens``
(False: no read-only open), ``read_interest`` / ``write_interest`` (an
:class:`OpenInterest`: only the read-only, resp. write, opens of those paths or of a
sensitive inode).  The engine compiles them into one route per (path, write, sensitive),
memoised, so an open reaches only the rules that can act on it, in their order.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Protocol, Sequence

from bastion.events import OPEN_WRITE_FLAGS, Event, ExecEvent, FileEvent, LsmDenyEvent
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
    # kill-tree: the tree roots (pid, start_ns) as the rule keyed them; empty: ``pid``'s
    roots: tuple[tuple[int, int], ...] = ()


@dataclass
class RuleContext:
    procs: ProcessTable


@dataclass(frozen=True)
class OpenInterest:
    """The opens a rule can act on (find something in, or change its state for): those
    of a path under one of ``prefixes`` (plain ``startswith``), matching one of ``globs``
    (``fnmatch`` globs over the whole path, case-sensitive: :func:`behavior.base.glob_any`'s
    semantics) or, with ``sensitive``, of an inode the sensor classed sensitive.  A rule
    that declares one must return nothing, and keep its state unchanged, for any other
    open (tests/unit/test_pipeline_equivalence.py checks it on the recorded corpus)."""

    prefixes: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    sensitive: bool = False

    def compiled(self) -> Callable[[str, bool], bool]:
        """``(path, sensitive) -> wanted``, its regex built once."""
        prefixes, sens = self.prefixes, self.sensitive
        rx = re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in self.globs)).match \
            if self.globs else None

        def wanted(path: str, sensitive: bool) -> bool:
            return (sens and sensitive) or (bool(prefixes) and path.startswith(prefixes)) \
                or (rx is not None and rx(path) is not None)
        return wanted


def _base(path: str) -> str:
    """``behavior.base.base``: the last component of ``path`` (a trailing ``/`` ignored)."""
    return os.path.basename(path.rstrip("/")) if path else ""


@dataclass(frozen=True)
class ExecInterest:
    """The execs a rule can act on: those whose executable's or ``argv[0]``'s last path
    component is one of ``names`` or passes ``test`` (a pure function of the name).  A
    rule that declares one must return nothing, and keep its state unchanged, for any
    other exec (checked on the corpus like :class:`OpenInterest`)."""

    names: frozenset[str] = frozenset()
    test: Callable[[str], bool] | None = None

    def wanted(self, exe_name: str, argv0_name: str) -> bool:
        names, test = self.names, self.test
        return exe_name in names or argv0_name in names or (
            test is not None and (test(exe_name) or test(argv0_name)))


class Rule(Protocol):
    name: str
    event_types: frozenset[str]
    # A rule may also set ``read_opens = False`` (a class attribute; absent means True):
    # it returns nothing for an ``open`` event without write intent (``OPEN_WRITE_FLAGS``),
    # so the engine does not call it with one (issue 16.3: most opens are read-only);
    # and ``read_interest`` / ``write_interest`` (an :class:`OpenInterest`; absent or None:
    # every such open): the read-only, resp. write, opens it can act on; ``exec_interest``
    # (an :class:`ExecInterest`): the execs it can act on

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]: ...


# How the engine calls a rule (s24): ``(rule, call, kind)``.  Kind 0: ``call`` is the
# rule's ``on_event`` (its findings); a rule may offer a shorter way through
# ``engine_call()`` (the behaviour rules: one Python frame less for each of the ~10
# rules an event meets): kind 1, ``call`` returns one hit or None and the finding is
# ``rule.finding(ev, hit)``; kind 2, ``call`` returns a list of hits, each made a finding
# the same way.  Either gives the findings ``on_event`` gives, in its order
# (tests/unit/test_pipeline_equivalence.py compares the two on the recorded corpus).
Entry = tuple[Any, Callable[[Event, "RuleContext"], Any], int]


def _entry(r: Rule) -> Entry:
    ec = getattr(r, "engine_call", None)
    if callable(ec):
        call, kind = ec()
        return (r, call, kind)
    return (r, r.on_event, 0)


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


ERROR_REPORT_NS: Final = 600 * 1_000_000_000   # a rule error reported again at most every 10 min
OPEN_MEMO_MAX: Final = 8192   # open routes kept (path, write, sensitive); emptied when full


class Engine:
    """Routes events to the rules that declared their type.

    A rule that raises is isolated: the event is skipped by that rule, the error
    counted and reported as a ``bastion.engine.rule_error`` finding (rate-limited per
    rule, exception type and line); the rule stays armed and the others carry on."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self._by_type: dict[str, list[Rule]] = defaultdict(list)
        for r in self.rules:
            for t in r.event_types:
                self._by_type[t].append(r)
        # (each route's rules as engine entries: (rule, call, kind), see ``Entry``)
        self._routes: dict[str, tuple[Entry, ...]] = {}
        self._read_opens: tuple[Entry, ...] = ()
        # opens: (rule, its interest test or None) for read-only and write opens, and the
        # route of each (path, write, sensitive) seen lately (bounded, emptied when full)
        self._open_rules: dict[bool, tuple[tuple[Entry, Callable[[str, bool], bool] | None], ...]] = {}
        self._open_filtered = False
        self._open_memo: dict[tuple[str, bool, bool], tuple[Entry, ...]] = {}
        self.open_memo_max = OPEN_MEMO_MAX
        # execs: the exec rules with their interest (or None), and the route of each
        # (exe, argv[0]) seen lately (bounded like the opens')
        self._exec_rules: tuple[tuple[Entry, ExecInterest | None], ...] = ()
        self._exec_memo: dict[tuple[str, str], tuple[Entry, ...]] = {}
        self._route()
        self.errors: dict[str, int] = {}
        self.disabled: dict[str, str] = {}   # rule name -> its last error (never disabled: s17)
        self._reported: dict[tuple[str, str, str], tuple[int | None, int]] = {}

    def replace(self, old: Sequence[Rule], new: Sequence[Rule]) -> None:
        """Swap a group of rules (e.g. a newly installed Sigma set) between two events."""
        gone = {id(r) for r in old}
        self.rules = [r for r in self.rules if id(r) not in gone] + list(new)
        by_type: dict[str, list[Rule]] = defaultdict(list)
        for r in self.rules:
            for t in r.event_types:
                by_type[t].append(r)
        self._by_type = by_type
        self._route()

    def wanted_types(self) -> frozenset[str]:
        return frozenset(t for t, rs in self._by_type.items() if rs)

    def _failed(self, rule: Rule, ev: Event, exc: Exception) -> Finding | None:
        """A rule raised on ``ev``: that event is skipped by that rule only.  The rule
        stays armed (s17: disabling it for good on its first exception let anyone who
        found one input that makes a rule raise switch the rule off for the whole host);
        the error is counted, and reported as a high finding the first time for each
        (rule, exception type, raising line) and then at most once per
        ``ERROR_REPORT_NS`` with the count since the last report."""
        name = getattr(rule, "name", type(rule).__name__)
        self.errors[name] = self.errors.get(name, 0) + 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else "?"
        self.disabled[name] = f"{type(exc).__name__}: {exc} ({where})"
        key = (name, type(exc).__name__, where)
        now = time.monotonic_ns()
        last, unreported = self._reported.get(key, (None, 0))
        if last is not None and now - last < ERROR_REPORT_NS:
            self._reported[key] = (last, unreported + 1)
            return None
        self._reported[key] = (now, 0)
        log.error("rule %s raised on a %s event (the event skipped by this rule; %d more "
                  "since the last report): %s", name, ev.type, unreported, exc,
                  exc_info=exc if last is None else None)
        return Finding(
            rule=RULE_ERROR, title=f"Rule {name} raised {type(exc).__name__} at {where} "
            "(the event skipped by it; the rule stays armed)",
            severity="high", attack=(), action="alert", event=ev, pid=ev.proc.pid,
            evidence={"failed_rule": name, "error": self.disabled[name], "event_type": ev.type,
                      "errors_total": self.errors[name], "since_last_report": unreported})

    def _open_route(self, ev: FileEvent) -> tuple[Entry, ...]:
        """The rules an open reaches: those of its kind (read-only or write) whose interest
        (if they declared one) takes its path and sensitivity, in the rules' order."""
        key = (ev.path, bool(ev.flags & OPEN_WRITE_FLAGS), bool(ev.sensitive))
        memo = self._open_memo
        got = memo.get(key)
        if got is None:
            path, write, sens = key
            got = tuple(r for r, wanted in self._open_rules[write]
                        if wanted is None or wanted(path, sens))
            if len(memo) >= self.open_memo_max:
                memo.clear()
            memo[key] = got
        return got

    def _exec_route(self, ev: ExecEvent) -> tuple[Entry, ...]:
        """The exec rules an exec reaches: those without an interest and those whose
        interest takes its executable's or argv[0]'s name, in the rules' order."""
        key = (ev.proc.exe, ev.argv[0] if ev.argv else "")
        memo = self._exec_memo
        got = memo.get(key)
        if got is None:
            exe_name, argv0_name = _base(key[0]), _base(key[1])
            got = tuple(r for r, oi in self._exec_rules
                        if oi is None or oi.wanted(exe_name, argv0_name))
            if len(memo) >= self.open_memo_max:
                memo.clear()
            memo[key] = got
        return got

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        rules: tuple[Entry, ...] | None
        if type(ev) is ExecEvent and self._exec_rules:
            rules = self._exec_route(ev)
        elif type(ev) is FileEvent and ev.op == "open":
            if self._open_filtered:
                rules = self._open_route(ev)
            elif not ev.flags & OPEN_WRITE_FLAGS:
                rules = self._read_opens
            else:
                rules = self._routes.get("open")
        else:
            rules = self._routes.get(ev.type)
        if not rules:
            return []
        out: list[Finding] = []
        for r, call, kind in rules:   # a tuple: a new route never changes this event's
            try:
                found = call(ev, ctx)
                if not found:
                    continue
                if kind == 0:
                    out += found
                elif kind == 1:
                    out.append(r.finding(ev, found))
                else:
                    out += [r.finding(ev, h) for h in found]
            except Exception as exc:  # noqa: BLE001 - isolation is the point
                f = self._failed(r, ev, exc)
                if f is not None:
                    out.append(f)
        return out

    def _route(self) -> None:
        """Event type -> its rules as a tuple, from ``_by_type`` (after every change of it)."""
        entries = {id(r): _entry(r) for r in self.rules}
        self._routes = {t: tuple(entries[id(r)] for r in rs)
                        for t, rs in self._by_type.items() if rs}
        # a read-only open goes to the open rules that have not said they ignore one
        opens = self._routes.get("open", ())
        self._read_opens = tuple(e for e in opens if getattr(e[0], "read_opens", True))

        def test(e: Entry, attr: str) -> Callable[[str, bool], bool] | None:
            oi = getattr(e[0], attr, None)
            return oi.compiled() if isinstance(oi, OpenInterest) else None
        self._open_rules = {False: tuple((e, test(e, "read_interest")) for e in self._read_opens),
                            True: tuple((e, test(e, "write_interest")) for e in opens)}
        self._open_filtered = any(t is not None for rs in self._open_rules.values() for _, t in rs)
        self._open_memo = {}
        execs = tuple((e, ei if isinstance(ei := getattr(e[0], "exec_interest", None),
                                             ExecInterest) else None)
                      for e in self._routes.get("exec", ()))
        self._exec_rules = execs if any(ei is not None for _, ei in execs) else ()
        self._exec_memo = {}

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
