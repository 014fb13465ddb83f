"""Sigma detection trees compiled into Python predicates, plus a prefilter index.

A compiled rule is a predicate ``pred(raw, low) -> bool`` over one *view* of an
event: ``raw`` maps Bastion field names to their string values, ``low`` holds
the same values lower-cased (Sigma strings match case-insensitively unless
``|cased``; ``|re`` is case-sensitive unless ``|re|i``).  An absent field never
matches a value (as in Sigma); ``null`` matches an absent or empty field.

Semantics (pySigma has already applied modifiers, so ``contains``,
``startswith``, ``endswith``, ``all``, ``windash``, ``base64offset`` arrive as
wildcard strings and AND/OR subtrees):

* string: ``*`` any run, ``?`` one character, whole-value match;
  plain/prefix/suffix/infix shapes use ``==``/``startswith``/``endswith``/``in``,
  anything else a precompiled ``re.fullmatch``;
* number/bool: the value's text (``4444``, ``true``);
* ``re``: ``re.search`` (unanchored) with the rule's flags;
* ``cidr``: the value parsed as an IP address inside the network;
* ``exists``, ``fieldref``, ``gt/gte/lt/lte``;
* keywords (no field): a substring search of the view's ``_raw`` text
  (wildcards allowed), as a full-text search over the log line.

Anything else (placeholders from ``|expand``, query expressions, timestamp
parts) raises :class:`SigmaUnsupportedError` so the rule is listed as
unsupported instead of half-applied.

The prefilter: every compiled rule gets *anchors* — a set of facts at least one
of which must hold in any view it matches: ``eq`` (field equals a token),
``base`` (the field's last path component equals a token, from ``endswith
'/name'``) or ``sub`` (the field contains a token).  :class:`RuleIndex` finds
the rules whose anchors hold with dict lookups and one trie regex per field,
so an event only reaches the few rules that could match it.
"""

from __future__ import annotations

import ipaddress
import operator
import re
from dataclasses import dataclass
from typing import Callable, Final, Iterable, Mapping, Sequence

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.rule import SigmaRule
from sigma.types import (
    CompareOperators,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SpecialChars,
)

from bastion.errors import ConfigError

Vals = Mapping[str, str]
Pred = Callable[[Vals, Vals], bool]

KEYWORDS: Final = "_raw"   # the view key keyword searches run over

_RE_FLAGS: Final = {
    SigmaRegularExpressionFlag.IGNORECASE: re.IGNORECASE,
    SigmaRegularExpressionFlag.MULTILINE: re.MULTILINE,
    SigmaRegularExpressionFlag.DOTALL: re.DOTALL,
}
_CMP: Final[Mapping[CompareOperators, Callable[[float, float], bool]]] = {
    CompareOperators.LT: operator.lt, CompareOperators.LTE: operator.le,
    CompareOperators.GT: operator.gt, CompareOperators.GTE: operator.ge,
    CompareOperators.NEQ: operator.ne,
}


# fields with few distinct values: an equality anchor on them selects little
_LOW_CARDINALITY: Final = frozenset({"initiated", "user", "logon_id", "type", "nametype",
                                     "success", "protocol", "uid", "euid", "gid"})


class SigmaUnsupportedError(ConfigError):
    """A rule uses a Sigma feature Bastion does not evaluate (the rule is not loaded)."""


@dataclass(frozen=True, order=True)
class Anchor:
    kind: str       # eq, base, sub
    field: str
    token: str      # lower-cased

    def cost(self) -> float:
        """A rough chance that the anchor holds on a random view (lower is better)."""
        if self.kind == "eq":
            return 0.5 if self.field in _LOW_CARDINALITY else 0.001
        if self.kind == "base":
            return 0.01
        return 0.01 if len(self.token) >= 4 else 0.2


Anchors = frozenset[Anchor] | None


@dataclass(frozen=True)
class Node:
    """A compiled subtree: its predicate, anchors, and for simple string leaves
    the shape (so an OR of many can become one set lookup / tuple test)."""

    pred: Pred
    anchors: Anchors
    shape: str = ""         # eq, sw, ew, in (case-insensitive, on ``low``) or ""
    field: str = ""
    text: str = ""


@dataclass(frozen=True)
class CompiledRule:
    pred: Pred
    anchors: Anchors
    fields: frozenset[str]      # view fields the rule reads (KEYWORDS for keyword searches)


# ---------------------------------------------------------------- strings

def _parts(s: SigmaString) -> list[str | SpecialChars]:
    out: list[str | SpecialChars] = []
    for p in s.s:
        if isinstance(p, str):
            if out and isinstance(out[-1], str):
                out[-1] += p
            elif p:
                out.append(p)
        elif isinstance(p, SpecialChars):
            if p is SpecialChars.WILDCARD_MULTI and out and out[-1] is SpecialChars.WILDCARD_MULTI:
                continue
            out.append(p)
        else:
            raise SigmaUnsupportedError(
                f"placeholder %{getattr(p, 'name', p)}% (|expand) needs a value list Bastion does not have")
    return out


def _regex_of(parts: Sequence[str | SpecialChars], lower: bool) -> re.Pattern[str]:
    out = []
    for p in parts:
        if p is SpecialChars.WILDCARD_MULTI:
            out.append(".*")
        elif p is SpecialChars.WILDCARD_SINGLE:
            out.append(".")
        else:
            assert isinstance(p, str)
            out.append(re.escape(p.lower() if lower else p))
    return re.compile("".join(out), re.DOTALL)


def _best_literal(parts: Sequence[str | SpecialChars]) -> str:
    lits = [p for p in parts if isinstance(p, str)]
    return max(lits, key=len) if lits else ""


def _string_leaf(f: str, s: SigmaString, keyword: bool) -> Node:
    parts = _parts(s)
    cased = isinstance(s, SigmaCasedString)
    if keyword:  # full-text search: a substring anywhere in the line
        if not parts or parts[0] is not SpecialChars.WILDCARD_MULTI:
            parts.insert(0, SpecialChars.WILDCARD_MULTI)
        if parts[-1] is not SpecialChars.WILDCARD_MULTI:
            parts.append(SpecialChars.WILDCARD_MULTI)
    M = SpecialChars.WILDCARD_MULTI
    shape, text = "", ""
    if len(parts) == 0:
        shape = "eq"
    elif len(parts) == 1 and isinstance(parts[0], str):
        shape, text = "eq", parts[0]
    elif len(parts) == 2 and parts[0] is M and isinstance(parts[1], str):
        shape, text = "ew", parts[1]
    elif len(parts) == 2 and isinstance(parts[0], str) and parts[1] is M:
        shape, text = "sw", parts[0]
    elif len(parts) == 3 and parts[0] is M and isinstance(parts[1], str) and parts[2] is M:
        shape, text = "in", parts[1]
    elif parts == [M]:
        shape = "any"
    lit = _best_literal(parts).lower()
    anchors: Anchors
    if shape == "eq":
        anchors = frozenset({Anchor("eq", f, text.lower())})
    elif shape == "ew" and "/" in text:
        anchors = frozenset({Anchor("base", f, text.lower().rpartition("/")[2])})
    elif lit:
        anchors = frozenset({Anchor("sub", f, lit)})
    else:
        anchors = None
    t = text if cased else text.lower()
    pred: Pred
    if shape == "any":
        def pred(raw: Vals, low: Vals) -> bool:
            return f in raw
        return Node(pred, None)
    if shape == "eq":
        if cased:
            def pred(raw: Vals, low: Vals) -> bool:
                return raw.get(f) == t
        else:
            def pred(raw: Vals, low: Vals) -> bool:
                return low.get(f) == t
    elif shape in ("sw", "ew", "in"):
        method = {"sw": str.startswith, "ew": str.endswith, "in": str.__contains__}[shape]

        def pred(raw: Vals, low: Vals) -> bool:
            x = (raw if cased else low).get(f)
            return x is not None and method(x, t)
    else:
        rx = _regex_of(parts, lower=not cased)
        fm = rx.fullmatch

        def pred(raw: Vals, low: Vals) -> bool:
            x = (raw if cased else low).get(f)
            return x is not None and fm(x) is not None
    return Node(pred, anchors, shape if not cased else "", f, t)


# ---------------------------------------------------------------- leaves

def _value_leaf(f: str, v: object, keyword: bool) -> Node:
    if isinstance(v, SigmaString):
        return _string_leaf(f, v, keyword)
    if isinstance(v, SigmaBool):  # before numbers: both are plain values
        return _string_leaf(f, SigmaString("true" if v.boolean else "false"), keyword)
    if isinstance(v, SigmaNumber) and type(v) is SigmaNumber:
        return _string_leaf(f, SigmaString(str(v.number)), keyword)
    if keyword:
        raise SigmaUnsupportedError(f"keyword of type {type(v).__name__} is not supported")
    if isinstance(v, SigmaRegularExpression):
        flags = 0
        for fl in v.flags:
            flags |= _RE_FLAGS[fl]
        try:
            rx = re.compile(str(v.regexp), flags)
        except re.error as exc:
            raise SigmaUnsupportedError(f"regular expression {str(v.regexp)!r}: {exc}") from exc
        search = rx.search

        def pred(raw: Vals, low: Vals) -> bool:
            x = raw.get(f)
            return x is not None and search(x) is not None
        return Node(pred, None)
    if isinstance(v, SigmaCIDRExpression):
        net = v.network

        def pred(raw: Vals, low: Vals) -> bool:
            x = raw.get(f)
            if not x:
                return False
            try:
                ip = ipaddress.ip_address(x)
            except ValueError:
                return False
            return ip.version == net.version and ip in net
        return Node(pred, None)
    if isinstance(v, SigmaNull):
        def pred(raw: Vals, low: Vals) -> bool:
            return not raw.get(f)
        return Node(pred, None)
    if isinstance(v, SigmaExists):
        want = v.exists

        def pred(raw: Vals, low: Vals) -> bool:
            return (f in raw) is want
        return Node(pred, None)
    if isinstance(v, SigmaFieldReference):
        if v.starts_with or v.ends_with:
            raise SigmaUnsupportedError("fieldref with startswith/endswith is not supported")
        other = v.field

        def pred(raw: Vals, low: Vals) -> bool:
            x = low.get(f)
            return x is not None and x == low.get(other)
        return Node(pred, None)
    if isinstance(v, SigmaCompareExpression):
        cmp, n = _CMP[v.op], float(v.number.number)

        def pred(raw: Vals, low: Vals) -> bool:
            x = raw.get(f)
            if x is None:
                return False
            try:
                return cmp(float(x), n)
            except ValueError:
                return False
        return Node(pred, None)
    raise SigmaUnsupportedError(f"value type {type(v).__name__} is not supported")


# ---------------------------------------------------------------- tree

def _and(nodes: list[Node]) -> Node:
    anchored = [n.anchors for n in nodes if n.anchors is not None]
    anchors = min(anchored, key=lambda a: (sum(x.cost() for x in a), sorted(a))) if anchored else None
    preds = [n.pred for n in nodes]
    if len(preds) == 1:
        return Node(preds[0], anchors)
    if len(preds) == 2:
        a, b = preds
        return Node(lambda raw, low: a(raw, low) and b(raw, low), anchors)

    def pred(raw: Vals, low: Vals) -> bool:
        for p in preds:
            if not p(raw, low):
                return False
        return True
    return Node(pred, anchors)


def _merge_or(nodes: list[Node]) -> list[Node]:
    """Fold same-field case-insensitive eq/sw/ew/in leaves into one test each."""
    groups: dict[tuple[str, str], list[Node]] = {}
    rest: list[Node] = []
    for n in nodes:
        if n.shape in ("eq", "sw", "ew", "in"):
            groups.setdefault((n.shape, n.field), []).append(n)
        else:
            rest.append(n)
    out = list(rest)
    for (shape, f), members in groups.items():
        if len(members) == 1:
            out.append(members[0])
            continue
        anchors: Anchors = frozenset().union(*(m.anchors or frozenset() for m in members))
        if any(m.anchors is None for m in members):
            anchors = None
        texts = tuple(sorted({m.text for m in members}))
        pred: Pred
        if shape == "eq":
            s = frozenset(texts)

            def pred(raw: Vals, low: Vals, s: frozenset[str] = s, f: str = f) -> bool:
                return low.get(f) in s
        elif shape in ("sw", "ew"):
            method = str.startswith if shape == "sw" else str.endswith

            def pred(raw: Vals, low: Vals, t: tuple[str, ...] = texts, f: str = f,
                     m: Callable[[str, tuple[str, ...]], bool] = method) -> bool:
                x = low.get(f)
                return x is not None and m(x, t)
        else:
            def pred(raw: Vals, low: Vals, t: tuple[str, ...] = texts, f: str = f) -> bool:
                x = low.get(f)
                if x is None:
                    return False
                for s_ in t:
                    if s_ in x:
                        return True
                return False
        out.append(Node(pred, anchors))
    return out


def _or(nodes: list[Node]) -> Node:
    anchors: Anchors = None
    if all(n.anchors is not None for n in nodes):
        anchors = frozenset().union(*(n.anchors or frozenset() for n in nodes))
    merged = _merge_or(nodes)
    preds = [n.pred for n in merged]
    if len(preds) == 1:
        return Node(preds[0], anchors)
    if len(preds) == 2:
        a, b = preds
        return Node(lambda raw, low: a(raw, low) or b(raw, low), anchors)

    def pred(raw: Vals, low: Vals) -> bool:
        for p in preds:
            if p(raw, low):
                return True
        return False
    return Node(pred, anchors)


def compile_tree(cond: object, fields: set[str]) -> Node:
    if isinstance(cond, ConditionAND):
        return _and([compile_tree(a, fields) for a in cond.args])
    if isinstance(cond, ConditionOR):
        return _or([compile_tree(a, fields) for a in cond.args])
    if isinstance(cond, ConditionNOT):
        inner = compile_tree(cond.args[0], fields).pred
        return Node(lambda raw, low: not inner(raw, low), None)
    if isinstance(cond, ConditionFieldEqualsValueExpression):
        fields.add(cond.field)
        if isinstance(cond.value, SigmaFieldReference):
            fields.add(cond.value.field)
        if isinstance(cond.value, SigmaExpansion):
            return _or([_value_leaf(cond.field, v, False) for v in cond.value.values])
        return _value_leaf(cond.field, cond.value, False)
    if isinstance(cond, ConditionValueExpression):
        fields.add(KEYWORDS)
        if isinstance(cond.value, SigmaExpansion):
            return _or([_value_leaf(KEYWORDS, v, True) for v in cond.value.values])
        return _value_leaf(KEYWORDS, cond.value, True)
    raise SigmaUnsupportedError(f"condition element {type(cond).__name__} is not supported")


def condition_trees(rule: SigmaRule) -> list[object]:
    """The postprocessed condition trees of a rule (several conditions are OR-ed)."""
    return [c.parsed for c in rule.detection.parsed_condition]


def compile_rule(rule: SigmaRule) -> CompiledRule:
    fields: set[str] = set()
    trees = condition_trees(rule)
    if not trees:
        raise SigmaUnsupportedError("rule has no condition")
    node = _or([compile_tree(t, fields) for t in trees]) if len(trees) > 1 else compile_tree(trees[0], fields)
    return CompiledRule(node.pred, node.anchors, frozenset(fields))


# ---------------------------------------------------------------- prefilter

def _trie_regex(tokens: Iterable[str]) -> re.Pattern[str]:
    """One regex finding, at every position, the longest token starting there."""
    trie: dict[str, dict] = {}  # type: ignore[type-arg]
    for t in tokens:
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:  # type: ignore[type-arg]
        subs = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not subs:
            return ""
        body = subs[0] if len(subs) == 1 else "(?:" + "|".join(subs) + ")"
        if "" in node:
            body = "(?:" + body + ")?"
        return body

    return re.compile("(?=(" + emit(trie) + "))", re.DOTALL)


class _SubIndex:
    """Tokens that must occur in one field, found in one regex pass."""

    def __init__(self, tokens: Mapping[str, set[int]]) -> None:
        toks = sorted(tokens)
        self.rx = _trie_regex(toks)
        # a found token implies every token it contains: close over substrings
        self.hits: dict[str, frozenset[int]] = {}
        for t in toks:
            ids: set[int] = set()
            for u in toks:
                if u in t:
                    ids |= tokens[u]
            self.hits[t] = frozenset(ids)

    def find(self, text: str, out: set[int]) -> None:
        hits = self.hits
        for m in self.rx.finditer(text):
            out |= hits[m.group(1)]


class RuleIndex:
    """Which of a set of compiled rules could match a view (a superset, never fewer)."""

    def __init__(self, anchors: Sequence[Anchors]) -> None:
        self.size = len(anchors)
        self.always: frozenset[int] = frozenset(i for i, a in enumerate(anchors) if a is None)
        eq: dict[str, dict[str, set[int]]] = {}
        base: dict[str, dict[str, set[int]]] = {}
        sub: dict[str, dict[str, set[int]]] = {}
        for i, a in enumerate(anchors):
            for an in a or ():
                table = {"eq": eq, "base": base, "sub": sub}[an.kind]
                table.setdefault(an.field, {}).setdefault(an.token, set()).add(i)
        self.eq = [(f, {k: frozenset(v) for k, v in d.items()}) for f, d in sorted(eq.items())]
        self.base = [(f, {k: frozenset(v) for k, v in d.items()}) for f, d in sorted(base.items())]
        self.sub = [(f, _SubIndex(d)) for f, d in sorted(sub.items())]

    def candidates(self, low: Vals) -> list[int]:
        out = set(self.always)
        for f, d in self.eq:
            x = low.get(f)
            if x is not None:
                hit = d.get(x)
                if hit:
                    out |= hit
        for f, d in self.base:
            x = low.get(f)
            if x is not None:
                hit = d.get(x.rpartition("/")[2])
                if hit:
                    out |= hit
        for f, si in self.sub:
            x = low.get(f)
            if x:
                si.find(x, out)
        return sorted(out)
