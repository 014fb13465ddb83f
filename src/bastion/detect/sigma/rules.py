"""Sigma rules as engine rules: ``load_sigma(dirs) -> SigmaLoadResult``.

Each loaded rule becomes a :class:`SigmaRule` satisfying the engine's Rule
protocol (``name = "sigma:<id>"``, ``event_types`` from its logsource).  All
rules of one load share a :class:`SigmaEvaluator`: the first rule the engine
asks about an event builds the event's views once, runs the prefilter index
and every candidate predicate, and memoises the hits; the other rules of the
load then only look their own index up.  So an event costs one evaluation
whatever the number of rules routed to it.

Findings carry what the Detection Rule License 1.1 asks for: the rule's
``author`` (top-level alert key and inside ``sigma``), with its id, title,
level, tags and path.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Sequence

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.exceptions import SigmaError
from sigma.types import SigmaExpansion, SigmaString

from bastion.detect.engine import Finding, RuleContext
from bastion.detect.sigma.loader import (
    AUDIT_ARG_RE,
    AUDIT_RECORD_FIELDS,
    FIELD_MAPS,
    ParsedRule,
    SigmaRuleError,
    Unsupported,
    bastion_pipeline,
    first_line,
    iter_rule_files,
    logsource_label,
    parse_file,
    rule_id,
)
from bastion.detect.sigma.matcher import (
    KEYWORDS,
    CompiledRule,
    RuleIndex,
    SigmaUnsupportedError,
    compile_rule,
    condition_trees,
)
from bastion.detect.sigma.views import (
    AUDIT_EVENTS,
    FILE_VIEW_FLAGS,
    LOGSOURCE_EVENTS,
    UserNames,
    View,
    audit_records,
    audit_text,
    file_view,
    network_view,
    process_view,
)
from bastion.errors import Location
from bastion.events import Event, ExecEvent, FileEvent, NetEvent, all_fields as _all_fields

_SEVERITY: Final = {"informational": "info", "low": "low", "medium": "medium",
                    "high": "high", "critical": "critical"}
_TECHNIQUE: Final = re.compile(r"t\d{4}(?:\.\d{3})?")
_ALL_RECORDS: Final = frozenset(AUDIT_RECORD_FIELDS)

# Bastion view name -> Sigma name, per logsource (for evidence in Sigma's terms)
_SIGMA_NAMES: Final = {ls: {b: s for s, b in m.items()} for ls, m in FIELD_MAPS.items()}


# ---------------------------------------------------------------- audit record analysis

def _types_of_type_leaf(values: Sequence[object]) -> frozenset[str]:
    out: set[str] = set()
    for v in values:
        if isinstance(v, SigmaString) and not v.contains_special():
            out.add(str(v).upper())
        elif isinstance(v, SigmaString):
            out |= {t for t in _ALL_RECORDS if fnmatch.fnmatchcase(t, str(v).upper())}
        else:
            out |= _ALL_RECORDS
    return frozenset(out & _ALL_RECORDS)


def _types_of_field(f: str) -> frozenset[str]:
    if re.fullmatch(AUDIT_ARG_RE, f):
        return frozenset({"EXECVE"})
    return frozenset(t for t, fs in AUDIT_RECORD_FIELDS.items() if f in fs)


def audit_record_types(cond: object) -> frozenset[str]:
    """The audit record types a condition (sub)tree can be true on.

    Raises SigmaUnsupportedError for an AND whose parts need different record
    types: that branch could never match one record, so loading the rule would
    silently drop it (half-applied)."""
    if isinstance(cond, ConditionAND):
        out = _ALL_RECORDS
        for a in cond.args:
            out = out & audit_record_types(a)
        if not out:
            raise SigmaUnsupportedError(
                "a selection combines fields of different audit record types "
                "(e.g. SYSCALL arguments a0..a3, which Bastion does not carry) and can never match")
        return out
    if isinstance(cond, ConditionOR):
        return frozenset().union(*(audit_record_types(a) for a in cond.args))
    if isinstance(cond, (ConditionNOT, ConditionValueExpression)):
        return _ALL_RECORDS
    if isinstance(cond, ConditionFieldEqualsValueExpression):
        vals = cond.value.values if isinstance(cond.value, SigmaExpansion) else [cond.value]
        if cond.field == "type":
            return _types_of_type_leaf(vals)
        return _types_of_field(cond.field)
    return _ALL_RECORDS


# ---------------------------------------------------------------- the evaluator

class _Group:
    """The compiled rules of one view kind and their prefilter index.

    A group's verdict on a view is a pure function of the values of the fields its
    rules read (every view of a keyword group: all of it), so verdicts are memoised
    by those values in a bounded table (``memo_max`` views; emptied when full): a
    flood of like events (one process chmodding one file, a build opening the same
    headers) costs one dict lookup per view after the first.  An attacker varying
    the values only makes every view a miss, which costs what it cost before."""

    def __init__(self, members: Sequence[tuple[int, CompiledRule]], memo_max: int = 4096) -> None:
        self.ids = tuple(i for i, _ in members)          # global rule numbers, by position
        self.preds = tuple(c.pred for _, c in members)
        self.index = RuleIndex([c.anchors for _, c in members])
        self.keywords = any(KEYWORDS in c.fields for _, c in members)
        self.reads = frozenset().union(*(c.fields for _, c in members))  # only these are lowered
        # the memo key: the values of the fields read, in a fixed order (None: absent)
        self._key_fields: tuple[str, ...] | None = None if self.keywords else tuple(sorted(self.reads))
        self._memo: dict[tuple[Any, ...], tuple[int, ...]] = {}
        # verdicts by the event values a view is built from (run_direct), bounded alike
        self._direct: dict[tuple[Any, ...], tuple[int, ...]] = {}
        # whether the verdict may depend on the pids (a rule reads them, or keywords: all)
        self.reads_pids = self.keywords or bool(self.reads & {"pid", "ppid"})
        self.memo_max = memo_max
        self.views = 0          # statistics: views seen, predicates run, memo hits
        self.touched = 0
        self.memo_hits = 0

    def verdict(self, view: View) -> tuple[int, ...]:
        """The global numbers of the rules of this group that match ``view`` (no memo)."""
        if self.keywords:
            view[KEYWORDS] = " ".join(view.values())
        reads = self.reads
        low = {k: v.lower() for k, v in view.items() if k in reads}
        preds, ids = self.preds, self.ids
        cands = self.index.candidates(low)
        self.touched += len(cands)
        return tuple(ids[i] for i in cands if preds[i](view, low))

    def run(self, view: View, hits: dict[int, dict[str, Any]], evidence: dict[str, Any]
            ) -> tuple[int, ...]:
        self.views += 1
        kf = self._key_fields
        key = tuple(view.items()) if kf is None else tuple(map(view.get, kf))
        memo = self._memo
        found = memo.get(key)
        if found is None:
            found = self.verdict(view)
            if self.memo_max > 0:       # 0: memo off (tests compare against it)
                if len(memo) >= self.memo_max:
                    memo.clear()
                memo[key] = found
        else:
            self.memo_hits += 1   # (the evidence never shows KEYWORDS: _render drops it)
        for n in found:
            hits.setdefault(n, evidence)
        return found

    def run_direct(self, dkey: tuple[Any, ...], make: Callable[[], View], ls: str,
                   hits: dict[int, dict[str, Any]]) -> None:
        """:meth:`run` on the view ``make()`` builds, looked up first by ``dkey``: the event
        values that view is a function of (issue 16.3: an exec's four views and the audit
        text cost ~4 µs to build, most execs repeat a command line seen lately).  Equal
        keys make equal views, so equal verdicts; the view is built on a miss, and for the
        evidence when a rule matched."""
        if self.memo_max <= 0:
            view = make()
            self.run(view, hits, _evidence(ls, view))
            return
        found = self._direct.get(dkey)
        if found is None:
            view = make()
            if len(self._direct) >= self.memo_max:
                self._direct.clear()
            self._direct[dkey] = self.run(view, hits, _evidence(ls, view))
            return
        self.views += 1
        self.memo_hits += 1
        if found:
            evidence = _evidence(ls, make())
            for n in found:
                hits.setdefault(n, evidence)


class SigmaEvaluator:
    """Evaluates every rule of one load against an event, once per event."""

    def __init__(self, compiled: Sequence[tuple[str, CompiledRule, frozenset[str]]]) -> None:
        by_ls: dict[str, list[tuple[int, CompiledRule]]] = {}
        by_rec: dict[str, list[tuple[int, CompiledRule]]] = {}
        for i, (ls, c, rtypes) in enumerate(compiled):
            if ls == "auditd":
                for t in rtypes:
                    by_rec.setdefault(t, []).append((i, c))
            else:
                by_ls.setdefault(ls, []).append((i, c))
        self._groups = {ls: _Group(m) for ls, m in by_ls.items()}
        self._audit = {t: _Group(m) for t, m in by_rec.items()}
        self._audit_events = frozenset().union(*(AUDIT_EVENTS[t] for t in self._audit)) \
            if self._audit else frozenset()
        self._users = UserNames()
        self._last_ev: Event | None = None
        self._last_ctx: RuleContext | None = None
        self._last: dict[int, dict[str, Any]] = {}
        self.evaluated = 0
        # the hits of an event like one seen recently (every field but the time, the same
        # actor object): the views of file, network and audit events are a pure function
        # of those (exec views read the process table: never memoised).  Bounded; 0: off
        self._like: dict[tuple[Any, ...], tuple[Any, dict[int, dict[str, Any]]]] = {}
        self.like_max = 4096
        self.like_hits = 0

    def set_memo(self, memo_max: int) -> None:
        """Bound every group's verdict memo to ``memo_max`` views (0: no memo)."""
        for g in (*self._groups.values(), *self._audit.values()):
            g.memo_max = memo_max
            g._memo.clear()
            g._direct.clear()
        self.like_max = memo_max
        self._like.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per view kind: rules, views evaluated, predicates run (the prefilter's effect)."""
        groups = {**self._groups, **{f"auditd:{t}": g for t, g in self._audit.items()}}
        return {k: {"rules": len(g.ids), "views": g.views, "touched": g.touched,
                    "memo_hits": g.memo_hits}
                for k, g in sorted(groups.items())}

    def match(self, ev: Event, ctx: RuleContext) -> dict[int, dict[str, Any]]:
        """Rule number -> evidence for every rule of the load matching ``ev``."""
        if ev is self._last_ev and ctx is self._last_ctx:
            return self._last
        key: tuple[Any, ...] | None = None
        if self.like_max > 0 and not isinstance(ev, ExecEvent):
            if type(ev) is FileEvent:
                # the fields a file event's views read (views.file_view, audit_records),
                # not all 18 (s24): a cheaper key, and an open of the same path whose
                # inode, ctime or mode differ is alike
                actor: Any = ev.proc
                key = (FileEvent, id(actor), ev.op, ev.path, ev.path2,
                       ev.flags & FILE_VIEW_FLAGS)
            else:
                vals = _all_fields(ev)
                actor = vals[1]
                key = (type(ev), id(actor), *vals[2:])
            like = self._like.get(key)
            if like is not None and like[0] is actor:
                self.like_hits += 1
                self._last_ev, self._last_ctx, self._last = ev, ctx, like[1]
                return like[1]
        self.evaluated += 1
        hits: dict[int, dict[str, Any]] = {}
        etype = ev.type
        g: _Group | None
        if isinstance(ev, ExecEvent):
            self._exec(ev, ctx, hits)
            self._last_ev, self._last_ctx, self._last = ev, ctx, hits
            return hits
        if isinstance(ev, FileEvent):
            g = self._groups.get("file_event")
            if g is not None:
                fv = file_view(ev, self._users)
                if fv is not None:
                    g.run(fv, hits, _evidence("file_event", fv))
        elif isinstance(ev, NetEvent):
            g = self._groups.get("network_connection")
            if g is not None:
                nv = network_view(ev, self._users)
                if nv is not None:
                    g.run(nv, hits, _evidence("network_connection", nv))
        if etype in self._audit_events:
            for rec in audit_records(ev):
                g = self._audit.get(rec["type"])
                if g is not None:
                    if g.keywords:
                        rec[KEYWORDS] = audit_text(rec)
                    g.run(rec, hits, _evidence("auditd", rec))
        self._last_ev, self._last_ctx, self._last = ev, ctx, hits
        if key is not None:
            if len(self._like) >= self.like_max:
                self._like.clear()
            self._like[key] = (ev.proc, hits)   # the actor kept: its id cannot be reused
        return hits


    def _exec(self, ev: ExecEvent, ctx: RuleContext, hits: dict[int, dict[str, Any]]) -> None:
        """An exec's process_creation view and its EXECVE, SYSCALL and PATH records (the
        order :func:`audit_records` gives), each group looked up by the event values its
        view is built from (:meth:`_Group.run_direct`; the user's name as the view would
        say it now, the uid's name being looked up again when the name cache is full)."""
        p = ev.proc
        g = self._groups.get("process_creation")
        if g is not None:
            parent = ctx.procs.get(p.ppid) if p.ppid else None
            g.run_direct((p.exe or ev.filename, ev.argv, p.uid, self._users(p.uid), ev.cwd,
                          (parent.exe, parent.cmdline) if parent is not None else None,
                          (p.pid, p.ppid) if g.reads_pids else None),
                         lambda: process_view(ev, ctx, self._users), "process_creation", hits)
        if "exec" not in self._audit_events:
            return
        recs: list[View] | None = None

        def rec(i: int, keywords: bool) -> Callable[[], View]:
            def make() -> View:
                nonlocal recs
                if recs is None:
                    recs = audit_records(ev)
                r = dict(recs[i])
                if keywords:
                    r[KEYWORDS] = audit_text(r)
                return r
            return make
        g = self._audit.get("EXECVE")
        if g is not None:
            g.run_direct((ev.argv,), rec(0, g.keywords), "auditd", hits)
        g = self._audit.get("SYSCALL")
        if g is not None:
            g.run_direct((p.exe, p.comm, p.uid, p.euid, p.gid,
                          (p.pid, p.ppid) if g.reads_pids else None),
                         rec(1, g.keywords), "auditd", hits)
        g = self._audit.get("PATH")
        if g is not None:
            g.run_direct((ev.filename or p.exe,), rec(2, g.keywords), "auditd", hits)


def _evidence(ls: str, view: View) -> dict[str, Any]:
    """The view in Sigma's field names (built lazily only when something matched)."""
    return {"logsource": ls, "view": view}


def _render(evidence: dict[str, Any]) -> dict[str, Any]:
    ls = evidence["logsource"]
    names = _SIGMA_NAMES.get(ls, {})
    view = {names.get(k, k): v for k, v in evidence["view"].items() if k != KEYWORDS}
    return {"logsource": ls, "record" if ls == "auditd" else "fields": view}


# ---------------------------------------------------------------- the engine rule

class SigmaRule:
    """One Sigma rule as an engine rule (Rule protocol of bastion.detect.engine)."""

    def __init__(self, number: int, parsed: ParsedRule, event_types: frozenset[str],
                 evaluator: SigmaEvaluator) -> None:
        r = parsed.rule
        self.number = number
        self.rule_id = rule_id(r, parsed.path)
        self.name = f"sigma:{self.rule_id}"
        self.event_types = event_types
        self.title = r.title
        self.level = r.level.name.lower() if r.level is not None else ""
        self.severity = _SEVERITY.get(self.level, "low")
        self.tags = tuple(str(t) for t in r.tags)
        self.attack = tuple(t.name.upper() for t in r.tags
                            if t.namespace == "attack" and _TECHNIQUE.fullmatch(t.name))
        self.author = r.author or ""
        self.path = parsed.path
        self.logsource = parsed.logsource
        self.evaluator = evaluator
        self.meta: dict[str, Any] = {
            "sigma": {"id": self.rule_id, "title": self.title, "level": self.level,
                      "tags": list(self.tags), "author": self.author, "path": str(self.path),
                      "logsource": self.logsource},
            "author": self.author,
        }

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        evidence = self.evaluator.match(ev, ctx).get(self.number)
        if evidence is None:
            return []
        return [self.finding(ev, evidence)]

    def finding(self, ev: Event, evidence: dict[str, Any]) -> Finding:
        return Finding(
            rule=self.name, title=self.title, severity=self.severity, attack=self.attack,
            action="alert", event=ev, pid=ev.proc.pid, evidence=_render(evidence),
            meta={"sigma": dict(self.meta["sigma"]), "author": self.author},
        )

    def __repr__(self) -> str:
        return f"<SigmaRule {self.name} {self.logsource} {self.title!r}>"


class SigmaRuleSet:
    """All rules of one load as ONE engine rule (name ``sigma``).

    Same findings as registering every :class:`SigmaRule` (each finding still
    names its own ``sigma:<id>``), but the engine makes one call per event
    instead of one per routed rule — the form to give the engine when many
    rules are loaded (see ``SigmaLoadResult.engine_rules``)."""

    name = "sigma"

    def __init__(self, rules: Sequence[SigmaRule], evaluator: SigmaEvaluator) -> None:
        self.rules = list(rules)
        self.event_types: frozenset[str] = frozenset().union(*(r.event_types for r in rules)) \
            if rules else frozenset()
        self._evaluator = evaluator

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        hits = self._evaluator.match(ev, ctx)
        if not hits:
            return []
        rules = self.rules
        return [rules[n].finding(ev, e) for n, e in sorted(hits.items())]


# ---------------------------------------------------------------- loading

@dataclass
class SigmaLoadResult:
    rules: list[SigmaRule] = field(default_factory=list)
    unsupported: list[Unsupported] = field(default_factory=list)
    errors: list[SigmaRuleError] = field(default_factory=list)
    files: int = 0

    def engine_rules(self) -> list[SigmaRuleSet]:
        """The loaded rules as one engine rule (fast path; same findings as ``rules``)."""
        if not self.rules:
            return []
        return [SigmaRuleSet(self.rules, self.rules[0].evaluator)]

    def loaded_by_logsource(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rules:
            out[r.logsource] = out.get(r.logsource, 0) + 1
        return dict(sorted(out.items()))

    def unsupported_by_logsource(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for u in self.unsupported:
            out[u.logsource] = out.get(u.logsource, 0) + 1
        return dict(sorted(out.items()))


def _event_types(parsed: ParsedRule, rtypes: frozenset[str]) -> frozenset[str]:
    if parsed.logsource == "auditd":
        return frozenset().union(*(AUDIT_EVENTS[t] for t in rtypes))
    return LOGSOURCE_EVENTS[parsed.logsource]


def load_sigma(dirs: Sequence[Path]) -> SigmaLoadResult:
    """Load every Sigma rule under ``dirs``.

    A malformed file is reported in ``errors`` (path + pySigma's message) and
    the rest keep loading; a rule Bastion cannot evaluate faithfully is listed
    in ``unsupported`` with the reason.  A directory that does not exist
    raises :class:`SigmaRuleError`."""
    result = SigmaLoadResult()
    pipeline = bastion_pipeline()
    accepted: list[tuple[ParsedRule, CompiledRule, frozenset[str]]] = []
    seen: dict[str, Path] = {}
    files = iter_rule_files(dirs)
    result.files = len(files)
    for path in files:
        ok, unsupported, errors = parse_file(path, pipeline)
        result.unsupported += unsupported
        result.errors += errors
        for p in ok:
            rid = rule_id(p.rule, p.path)
            label = logsource_label(p.rule.logsource)
            if rid in seen:
                result.errors.append(SigmaRuleError(
                    f"duplicate Sigma rule id {rid} (first loaded from {seen[rid]})",
                    location=Location(str(path))))
                continue
            try:
                compiled = compile_rule(p.rule)
                rtypes = (frozenset().union(*(audit_record_types(t) for t in condition_trees(p.rule)))
                          if p.logsource == "auditd" else frozenset())
                if p.logsource == "auditd" and not rtypes:
                    raise SigmaUnsupportedError("matches no audit record type Bastion synthesises")
            except SigmaUnsupportedError as exc:
                result.unsupported.append(Unsupported(path, rid, p.rule.title, label, exc.message))
                continue
            except SigmaError as exc:  # e.g. a condition naming an undefined selection
                err = SigmaRuleError(f"invalid Sigma rule: {first_line(exc)}",
                                     location=Location(str(path)))
                err.__cause__ = exc
                result.errors.append(err)
                continue
            seen[rid] = path
            accepted.append((p, compiled, rtypes))
    evaluator = SigmaEvaluator([(p.logsource, c, t) for p, c, t in accepted])
    result.rules = [SigmaRule(i, p, _event_types(p, t), evaluator)
                    for i, (p, _c, t) in enumerate(accepted)]
    return result


__all__ = ["SigmaEvaluator", "SigmaLoadResult", "SigmaRule", "SigmaRuleError", "SigmaRuleSet", "Unsupported",
           "audit_record_types", "load_sigma"]

