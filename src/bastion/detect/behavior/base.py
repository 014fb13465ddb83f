"""Behaviour rule base classes: single events, sequences in a window, thresholds.

A behaviour rule is a :class:`bastion.detect.engine.Rule`: it declares the
event types it needs, its ATT&CK ids, severity and default response, and
returns findings without side effects.  Three shapes cover the pack:

* :class:`SingleEvent` — ``match(ev, ctx)`` returns a :class:`Hit` or None;
* :class:`SequenceRule` — ordered :class:`Step` s by one process (or, with
  ``lineage_depth``, by its descendants) within ``window_ns``;
* :class:`ThresholdRule` — ``count`` matching events (optionally distinct
  values) per process or per tree within ``window_ns``; fires once per window.

Conditions on ancestry, user, paths, argv and peers are the helper functions
at the bottom; rules compose them in plain Python (typed, testable, no DSL
to parse at run time — the policy only tunes actions, dry-run and limits).
Time is the event's own ``time_ns``, so replay behaves exactly like live.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import os
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Final, Iterable

from bastion.containers import Selector
from bastion.detect.engine import ExecInterest, Finding, OpenInterest, RuleContext
from bastion.events import Event
from bastion.detect.behavior.state import BoundedState, Limits, ProcKey, proc_key, tree_key
from bastion.detect.behavior.trust import ExeTrust, norm_interp
from bastion.proctable import ProcEntry

if TYPE_CHECKING:
    from bastion.detect.behavior.provenance import Provenance

NS = 1_000_000_000
ACTIONS = ("alert", "kill", "kill-tree", "quarantine")


@dataclass(frozen=True)
class RuleSettings:
    """Per-rule overrides from the policy (``behavior.rules.<name>``)."""

    action: str | None = None
    severity: str | None = None
    dry_run: bool = False
    enabled: bool = True
    # ``trust: [{container: {...}}, {host: true}]``: actors this rule does not report
    # (containers.Selector; a container selector matches verified containers only)
    trust: tuple[Selector, ...] = ()


@dataclass
class Hit:
    title: str
    evidence: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None          # target of the response; default: the event's process
    severity: str | None = None     # override of the rule's severity for this hit
    action: str | None = None       # override of the rule's response for this hit
    # the processes (pid, start_ns) whose trees a kill-tree stops, as the rule keyed them
    # (the dispatcher opens each with this start time, never the table's current entry
    # for the pid: s20 review 4); empty: ``pid``'s tree
    roots: tuple[tuple[int, int], ...] = ()


class BehaviorRule:
    """Base of every behaviour rule; subclasses set the class attributes."""

    name: str = ""
    event_types: frozenset[str] = frozenset()
    attack: tuple[str, ...] = ()
    severity: str = "medium"
    action: str = "alert"
    description: str = ""
    prevents: str = ""      # what a block of this rule stops (evidence "prevented")
    # False: the rule returns nothing for a read-only open (no O_ACCMODE write, O_CREAT or
    # O_TRUNC), and the engine does not call it with one (issue 16.3; tested per rule)
    read_opens: bool = True
    # the read-only / write opens the rule can act on (engine.OpenInterest; None: all of
    # them): an open outside is not given to it (issue 16.3; checked on the corpus)
    read_interest: OpenInterest | None = None
    write_interest: OpenInterest | None = None
    # the execs it can act on, by the executable's or argv[0]'s name (engine.ExecInterest)
    exec_interest: ExecInterest | None = None

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        s = settings or RuleSettings()
        self.limits = limits or Limits()
        self.dry_run = s.dry_run
        self.action_override = s.action
        self.severity_override = s.severity
        self.trusted_actors = s.trust
        self._states: list[BoundedState[Any, Any]] = []
        self.trust = ExeTrust()   # behavior_rules() shares one among the pack
        self.prov: Provenance | None = None   # behavior_rules() shares the pack's tracker

    def untrusted(self, ev: Event, ctx: RuleContext) -> tuple[dict[str, str], ProcKey | None]:
        """The actor's untrusted-provenance reasons and the tree to stop (see
        :mod:`.provenance`); none without a tracker."""
        if self.prov is None:
            return {}, None
        reasons, origin = self.prov.reasons(ev, ctx)
        if reasons and set(reasons) <= {"tmp-script", "tmp-binary"}:
            login = self.prov.interactive_admin(ev, ctx)
            if login is not None:
                return {}, None   # an administrator at a terminal: alerted, not stopped
        return reasons, origin

    def trusted(self, ev: Event, ctx: RuleContext, names: Iterable[str], depth: int = 3) -> bool:
        """:func:`trusted` with this rule's :class:`ExeTrust`."""
        return trusted(ev, ctx, names, depth, trust=self.trust)

    def state(self) -> BoundedState[Any, Any]:
        """A new bounded state owned by this rule (counted in stats)."""
        st: BoundedState[Any, Any] = BoundedState(self.limits)
        self._states.append(st)
        return st

    # -- engine protocol

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        if self.trusted_actors and any(t.matches(ev.proc.container) for t in self.trusted_actors):
            return []
        return [self.finding(ev, h) for h in self.evaluate(ev, ctx)]

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        raise NotImplementedError

    def engine_call(self) -> tuple[Callable[[Event, RuleContext], Any], int]:
        """How the engine may call this rule (:data:`bastion.detect.engine.Entry`): the
        ``evaluate`` under :meth:`on_event` (kind 2: hits, each made :meth:`finding`),
        one frame less per event, when the class keeps this ``on_event`` and the rule
        trusts no actors (``trusted_actors`` is fixed at construction); else
        ``on_event`` (kind 0).  A method set on the instance is always honoured."""
        if self.trusted_actors or {"on_event", "evaluate", "match"} & vars(self).keys():
            return self.on_event, 0
        if type(self).on_event is BehaviorRule.on_event:
            return self.evaluate, 2
        return self.on_event, 0

    def expire(self, now_ns: int) -> int:
        return sum(s.expire(now_ns) for s in self._states)

    def stats(self) -> dict[str, int]:
        return {"keys": sum(len(s) for s in self._states),
                "shed": sum(s.shed for s in self._states),
                "expired": sum(s.expired for s in self._states)}

    def finding(self, ev: Event, h: Hit) -> Finding:
        action = self.action_override or h.action or self.action
        if action in ("kill", "kill-tree", "quarantine") and "prevented" not in h.evidence:
            # every block says what it stopped (issue 15); rules that know better say it
            h.evidence["prevented"] = (self.prevents or
                                       f"what the process would do next ({self.name})")
        return Finding(
            rule=self.name, title=h.title,
            severity=self.severity_override or h.severity or self.severity,
            attack=self.attack, action=action, event=ev,
            pid=h.pid if h.pid is not None else ev.proc.pid,
            evidence=h.evidence, dry_run=self.dry_run, roots=h.roots,
        )


class SingleEvent(BehaviorRule):
    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        raise NotImplementedError

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        h = self.match(ev, ctx)
        return [h] if h is not None else []

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        """:meth:`BehaviorRule.on_event` without the ``evaluate`` layer and its lists (the
        engine calls this for every event of the rule's types, issue 16.3); a subclass
        that overrides ``evaluate`` goes through it as before."""
        if type(self).evaluate is not _SINGLE_EVALUATE:
            return BehaviorRule.on_event(self, ev, ctx)
        if self.trusted_actors and any(t.matches(ev.proc.container) for t in self.trusted_actors):
            return []
        h = self.match(ev, ctx)
        return [] if h is None else [self.finding(ev, h)]

    def engine_call(self) -> tuple[Callable[[Event, RuleContext], Any], int]:
        """:meth:`BehaviorRule.engine_call`; a rule that keeps this ``on_event`` and
        ``evaluate`` is called at ``match`` (kind 1: a hit or None)."""
        if not self.trusted_actors and not {"on_event", "evaluate", "match"} & vars(self).keys() \
                and type(self).on_event is SingleEvent.on_event \
                and type(self).evaluate is _SINGLE_EVALUATE:
            return self.match, 1
        return super().engine_call()


_SINGLE_EVALUATE: Final = SingleEvent.evaluate


Pred = Callable[[Event, RuleContext], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Step:
    types: frozenset[str]
    pred: Pred
    label: str = ""


@dataclass
class _Progress:
    step: int
    t0: int
    evidence: dict[str, Any]


class SequenceRule(BehaviorRule):
    """Steps in order within ``window_ns``; later steps may come from the first
    process itself or (``lineage_depth`` > 0) from one of its descendants."""

    steps: tuple[Step, ...] = ()
    window_ns: int = 30 * NS
    lineage_depth: int = 0

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        super().__init__(settings, limits)
        self._progress: BoundedState[ProcKey, _Progress] = self.state()

    def title_for(self, evidence: dict[str, Any]) -> str:
        return self.description or self.name

    def _candidates(self, ev: Event, ctx: RuleContext) -> list[ProcKey]:
        keys = [proc_key(ev)]
        if self.lineage_depth:
            for anc in ctx.procs.ancestry(ev.proc.pid, self.lineage_depth + 1)[1:]:
                keys.append((anc.pid, anc.start_ns))
        return keys

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        now = ev.time_ns
        last = len(self.steps) - 1
        for key in self._candidates(ev, ctx):
            prog = self._progress.get(key, now)
            if prog is None:
                continue
            if now - prog.t0 > self.window_ns:
                self._progress.pop(key)
                continue
            st = self.steps[prog.step]
            if ev.type in st.types and (got := st.pred(ev, ctx)) is not None:
                ev_ = {**prog.evidence, **{f"{st.label or prog.step}": got}}
                if prog.step == last:
                    self._progress.pop(key)
                    ev_["window_s"] = round((now - prog.t0) / NS, 3)
                    return [Hit(self.title_for(ev_), ev_)]
                self._progress.put(key, now, _Progress(prog.step + 1, prog.t0, ev_))
                return []
        first = self.steps[0]
        if ev.type in first.types and (got := first.pred(ev, ctx)) is not None:
            self._progress.put(proc_key(ev), now, _Progress(1, now, {first.label or "0": got}))
        return []


class ThresholdRule(BehaviorRule):
    """``count`` matching events (distinct values when ``distinct``) per
    process (or per tree: ``per_tree``) within ``window_ns``."""

    count: int = 10
    window_ns: int = 10 * NS
    distinct: bool = False
    per_tree: bool = False
    distinct_last: bool = False   # distinct values ordered by their last event, not first

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        super().__init__(settings, limits)
        self._seen: BoundedState[ProcKey, deque[tuple[int, str]]] = self.state()
        # ``distinct``: the distinct values themselves (distinct_key -> (last time, value)),
        # capped at count * 4 keys -- not raw events, so repeats cannot push them out
        self._distinct: BoundedState[ProcKey, OrderedDict[str, tuple[int, str]]] = self.state()
        self._fired: BoundedState[ProcKey, int] = self.state()
        self._warned: BoundedState[ProcKey, int] = self.state()
        self.item_shed = 0   # per-key samples dropped past the per-key cap
        # the key(s) and value of the event being evaluated, for a subclass's confirm
        # (ransomware: its tree's created files, the per-uid aggregate's trees)
        self.judging: tuple[ProcKey, ...] = ()
        self.counted: tuple[ProcKey, str] | None = None

    def value(self, ev: Event, ctx: RuleContext) -> str | None:
        """The value this event counts for (None: not counted)."""
        raise NotImplementedError

    def tree_of(self, ev: Event, ctx: RuleContext) -> ProcKey:
        """The tree key ``per_tree`` counts ``ev`` under (:func:`.state.tree_key`)."""
        return tree_key(ev, ctx.procs)

    def distinct_key(self, v: str) -> str:
        """What makes two values one for ``distinct`` (the last value is kept)."""
        return v

    def merge(self, old: str, new: str) -> str:
        """The value kept when ``new`` repeats ``old``'s distinct key under
        ``distinct_last`` (default: the new one)."""
        return new

    def conclusive(self, hit: Hit) -> bool:
        """Whether ``hit`` ends the judging of this key for a window (cooldown, state
        cleared); a provisional one keeps the key judged so it can escalate."""
        return True

    def _unconfirmed(self, dq: deque[tuple[int, str]] | OrderedDict[str, tuple[int, str]]
                     ) -> None:
        for _ in range(max(1, self.count // 4)):
            if not dq:
                break
            if isinstance(dq, OrderedDict):
                dq.popitem(last=False)
            else:
                dq.popleft()

    def _distinct_values(self, key: ProcKey, now: int, v: str, cap: int
                         ) -> OrderedDict[str, tuple[int, str]]:
        """Record ``v`` among ``key``'s distinct values; those seen within the window, in
        the order of their first event (``distinct_last``: their last, the last value):
        the map's values, ``(time, value)`` (the caller lists them only once there are
        ``count``: s24, a list of up to 4 x count values was built per counted event).
        s19 review 5: a raw-event queue of count * 4 let 4 pad rewrites per encrypted
        file keep the distinct count under ``count`` (120 files encrypted, no finding)."""
        od = self._distinct.setdefault(key, now, OrderedDict)
        k = self.distinct_key(v)
        old = od.get(k)
        if old is not None:
            if self.distinct_last:
                od.move_to_end(k)
                od[k] = (now, self.merge(old[1], v))
            else:
                od[k] = (now, old[1])    # its place and value are its first event's
        else:
            if len(od) >= cap:
                od.popitem(last=False)
                self.item_shed += 1
            od[k] = (now, v)
        if self.distinct_last:
            while od and now - next(iter(od.values()))[0] > self.window_ns:
                od.popitem(last=False)
        else:
            for gone in [x for x, (t, _) in od.items() if now - t > self.window_ns]:
                del od[gone]
        return od

    def confirm(self, ev: Event, ctx: RuleContext, values: list[str]) -> Hit | None:
        return Hit(f"{self.description or self.name}: {len(values)} in "
                   f"{self.window_ns / NS:g}s", {"count": len(values), "sample": values[:10]})

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        v = self.value(ev, ctx)
        if v is None:
            return []
        now = ev.time_ns
        key = self.tree_of(ev, ctx) if self.per_tree else proc_key(ev)
        self.counted = (key, v)
        fired = self._fired.get(key, now)
        if fired is not None and now - fired < self.window_ns:
            return []
        cap = self.count * 4
        dq: deque[tuple[int, str]] | OrderedDict[str, tuple[int, str]]
        if self.distinct:
            dq = self._distinct_values(key, now, v, cap)
        else:
            raw = self._seen.setdefault(key, now, lambda: deque(maxlen=cap))
            if len(raw) == cap:
                self.item_shed += 1
            raw.append((now, v))
            while raw and now - raw[0][0] > self.window_ns:
                raw.popleft()
            dq = raw
        if len(dq) < self.count:
            return []
        values = [x for _, x in (dq.values() if isinstance(dq, OrderedDict) else dq)]
        self.judging = (key,)
        hit = self.confirm(ev, ctx, values)
        if hit is not None and not self.conclusive(hit):
            # A provisional verdict (say, ransomware's medium "mass rewrite" with too
            # little readable): alert once per window, but neither start the cooldown
            # nor forget the values -- the tree stays judged and can still escalate
            # (s17-rfp review: FIFOs in the first 40 writes bought 20 s unchecked).
            warned = self._warned.get(key, now)
            if warned is None or now - warned >= self.window_ns:
                self._warned.put(key, now, now)
                self._unconfirmed(dq)
                if self.per_tree and hit.pid is None:
                    hit.pid, hit.roots = key[0], hit.roots or (key,)
                hit.evidence.setdefault("scope", "tree" if self.per_tree else "process")
                return [hit]
            hit = None
        if hit is None:
            # Not confirmed (say, the content checked is not encrypted-looking):
            # forget the oldest quarter, so the next check comes after count/4
            # new values instead of on every further event.  A 20 000-file
            # checkout or `tar x` otherwise re-ran confirm (8 file reads) per
            # event, stalled the agent into ring-buffer drops, and overran the
            # per-key cap (reported as shed state).  An attack that starts
            # after a benign burst is checked again within count/4 values.
            self._unconfirmed(dq)
            return []
        self._fired.put(key, now, now)
        self._seen.pop(key)
        self._distinct.pop(key)
        if self.per_tree and hit.pid is None:
            hit.pid, hit.roots = key[0], hit.roots or (key,)
        hit.evidence.setdefault("scope", "tree" if self.per_tree else "process")
        return [hit]

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["shed"] += self.item_shed
        return out


# ---- conditions -------------------------------------------------------------

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "ash", "csh", "tcsh", "busybox"})
INTERPRETERS = frozenset({"python", "python2", "python3", "perl", "ruby", "php", "node", "lua",
                          "tclsh", "awk", "gawk", "socat", "nc", "ncat", "netcat", "telnet"})
SYSTEM_DIRS = ("/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/", "/usr/lib/", "/lib/",
               "/usr/libexec/", "/usr/local/bin/", "/usr/local/sbin/", "/lib64/", "/usr/lib64/")
PACKAGE_MANAGERS = frozenset({"dpkg", "apt", "apt-get", "aptitude", "rpm", "dnf", "yum",
                              "zypper", "pacman", "apk", "unattended-upgr", "unattended-upgrade",
                              "packagekitd", "snapd", "ucf", "dpkg-divert", "update-alternatives"})


# Python's installers.  They download packages by design and write console
# scripts (``<venv>/bin/<tool>``) that the user then runs: that is installing,
# not download-and-execute.  Matched only as the script an interpreter runs
# (``<venv>/bin/pip install ...``) or as ``python -m pip``, never by a bare
# process name an arbitrary binary could take.
PY_INSTALLERS = frozenset({"pip", "pipx"})


@functools.lru_cache(maxsize=4096)
def base(path: str) -> str:
    """The last component of ``path`` (cached: a few thousand executables' paths repeat
    on every exec, and each rule asks; s16-fixdet measured ~1.3 µs of the decode rules'
    9 µs per event in basename)."""
    return os.path.basename(path.rstrip("/")) if path else ""


def is_shell(exe: str) -> bool:
    return base(exe) in SHELLS


def is_interpreter(exe: str) -> bool:
    return norm_interp(base(exe)) in INTERPRETERS


@functools.lru_cache(maxsize=512)
def _under_forms(dirs: tuple[str, ...]) -> tuple[frozenset[str], tuple[str, ...]]:
    roots = tuple(d.rstrip("/") for d in dirs)
    return frozenset(roots), tuple(r + "/" for r in roots)


def under(path: str, dirs: Iterable[str]) -> bool:
    """``path`` is one of ``dirs`` or below one (lexically; a trailing ``/`` ignored).  The
    stripped names and their ``/`` prefixes are made once per tuple (issue 16.3)."""
    exact, prefixes = _under_forms(dirs if isinstance(dirs, tuple) else tuple(dirs))
    return path in exact or path.startswith(prefixes)


@functools.lru_cache(maxsize=512)
def _glob_rx_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for a tuple of globs: ``fnmatch.translate`` of each, alternated (each is
    anchored at both ends, so ``match`` holds iff one glob matches the whole path)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


# tuple identity -> (the tuple, its regex): a module constant's tuple is hashed once, not
# on every call (hashing a 40-glob tuple is ~0.3 µs); the tuple is kept, so its id is not
# reused while the entry lives
_GLOB_RX: dict[int, tuple[tuple[str, ...], re.Pattern[str]]] = {}
_GLOB_RX_MAX: Final = 256


def glob_any(path: str, patterns: Iterable[str]) -> str | None:
    """The first of ``patterns`` (``fnmatch`` globs, case-sensitive) that matches the whole
    of ``path``, or None.  One compiled regex of all of them decides whether any does
    (issue 16.3: a 40-glob persistence class cost ~9 µs per write-open in ``fnmatchcase``
    calls, ~0.4 µs so); only a path that matches walks the globs in order for the first."""
    pats = patterns if isinstance(patterns, tuple) else tuple(patterns)
    got = _GLOB_RX.get(id(pats))
    if got is not None and got[0] is pats:
        rx = got[1]
    else:
        rx = _glob_rx_of(pats)
        if len(_GLOB_RX) < _GLOB_RX_MAX:
            _GLOB_RX[id(pats)] = (pats, rx)
    if rx.match(path) is None:
        return None
    for pat in pats:
        if fnmatch.fnmatchcase(path, pat):
            return pat
    return None   # not reached: the regex is the alternation of these globs


def ancestry_names(ctx: RuleContext, pid: int, depth: int = 8) -> list[str]:
    """Basenames of the executables of ``pid``'s ancestors (parent first)."""
    return [base(e.exe) or e.comm for e in ctx.procs.ancestry(pid, depth + 1)[1:]]


def actor_names(ev: Event, ctx: RuleContext, depth: int = 4) -> list[str]:
    """The actor's own executable and comm, then its ancestors'."""
    return [base(ev.proc.exe), ev.proc.comm, *ancestry_names(ctx, ev.proc.pid, depth)]


SESSION_ROOTS = frozenset({"systemd", "init", "sshd", "sshd-session", "login", "cron", "crond",
                           "su", "sudo", "tmux", "screen", "containerd-shim", "containerd-shim-runc-v2",
                           "runc", "gdm-session-worker", "lightdm", "agetty", "atd", "bash", "sh",
                           "dash", "zsh"})


def trusted_as(e: ProcEntry, names: Iterable[str], trust: ExeTrust) -> str | None:
    """The tool of ``names`` process ``e`` runs, by executable inode (or, for root, as an
    interpreter running that tool's installed script: a user's interpreter runs their
    own start-up files first, python's ``usercustomize``, ``~/.zshenv``; s31 review 3);
    None when it runs none."""
    ident = (e.exe_dev, e.exe_ino)
    return trust.is_tool(ident, names) or trust.script_tool(e.exe, ident, e.cmdline, names,
                                                            e.paths_ns if e.uid == 0 else 0)


def trusted(ev: Event, ctx: RuleContext, names: Iterable[str], depth: int = 3, *,
            trust: ExeTrust) -> bool:
    """Does the actor (or an ancestor up to ``depth``) run one of the tools ``names``?

    By executable inode under root-only system directories (:mod:`.trust`), never
    by basename or ``comm``: ``/tmp/dpkg`` or ``prctl(PR_SET_NAME, "dkms")`` is
    trusted as nothing.  An actor the process table does not know (or knows as a
    different process) is not trusted.  Session roots (systemd, sshd, login,
    shells, ...) count only as the actor itself: everything descends from them,
    so trusting them as ancestors would exempt every process of a session."""
    allowed = frozenset(names)
    chain = ctx.procs.ancestry(ev.proc.pid, depth + 1)
    if not chain or not chain[0].same_process(ev.proc.start_ns):
        return False
    for i, e in enumerate(chain):
        name = trusted_as(e, allowed, trust)
        if name is not None and (i == 0 or name not in SESSION_ROOTS):
            return True
    return False


def package_installer(ev: Event, ctx: RuleContext, trust: ExeTrust) -> str | None:
    """The package manager ``ev``'s process is, if it is one (its name, else None).

    System package managers by executable (dpkg, apt-get, rpm, ...); Python
    installers only as a Python interpreter running ``.../bin/pip*``,
    ``-m pip`` or pip's ``pip/__pip-runner__.py`` (pipx likewise): the
    executable is the genuine interpreter, and the script or module comes
    from its command line.  Executables are trusted by inode (:func:`trusted_as`),
    never by name."""
    entry = ctx.procs.get(ev.proc.pid)
    if entry is None or not entry.same_process(ev.proc.start_ns):
        return None
    pm = trusted_as(entry, PACKAGE_MANAGERS, trust)
    if pm is not None:
        return pm
    return python_installer(entry, trust, venv=True)


def python_module_or_script(argv: tuple[str, ...] | list[str]) -> tuple[str, str]:
    """("module", NAME) for ``python [opts] -m NAME``, ("script", PATH) for ``python
    [opts] PATH``, ("", "") for ``-c``, stdin or nothing: the interpreter's own options
    only (an ``-m pip`` after the script or ``-c`` is the program's argument)."""
    i = 1
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            return ("script", argv[i]) if i < len(argv) else ("", "")
        if a == "-" or not a.startswith("-"):
            return ("script", a) if a != "-" else ("", "")
        if a.startswith("--"):
            continue            # --version, --help, --check-hash-based-pycs=...
        for j, c in enumerate(a[1:], 1):
            if c == "c":
                return "", ""
            if c in "mWX":
                val = a[j + 1:] or (argv[i] if i < len(argv) else "")
                if not a[j + 1:]:
                    i += 1
                if c == "m":
                    return ("module", val) if val else ("", "")
                break
    return "", ""


def python_installer(entry: ProcEntry, trust: ExeTrust, *, venv: bool = False) -> str | None:
    """pip (or pipx) run by the genuine Python interpreter ``entry``: ``-m pip`` as the
    interpreter's own option, or the script being the trusted file (by inode) of the
    pip script or pip's ``pip/__pip-runner__.py`` (root-installed, s17-compile).

    ``venv``: also a virtualenv's own pip, which no identity can vouch for (the user
    wrote it): only in its shebang form, the interpreter started as ``<venv>/bin/python*``
    running ``<venv>/bin/pip*`` (or pip's runner from a ``site-packages/pip``): a
    script of any name in any ``bin/`` run as ``python3 SCRIPT`` is not pip.  A
    fake venv layout still passes (threat model, s17 item 1); the compile rule's build
    exemption does not take it."""
    exe = base(entry.exe)
    if norm_interp(exe) not in ("python", "python3") \
            or trust.is_tool((entry.exe_dev, entry.exe_ino), [exe]) is None:
        return None
    # a user's pip is an installer as a venv's is (the user's own code either way: s31
    # review 4: a user's `pip install --user x` then `x` was killed as a download run)
    ns = entry.paths_ns if venv or entry.uid == 0 else 0
    kind, what = python_module_or_script(entry.cmdline)
    if kind == "module":
        return what if what in PY_INSTALLERS else None
    if kind != "script" or not what.startswith("/"):
        return None
    name = base(what)
    if name.rstrip("0123456789.") in PY_INSTALLERS:
        if trust.script_tool(entry.exe, (entry.exe_dev, entry.exe_ino),
                             (entry.cmdline[0], what), [name], ns) is not None:
            return name
        argv0 = entry.cmdline[0] if entry.cmdline else ""
        if venv and os.path.dirname(argv0) == os.path.dirname(what) \
                and base(os.path.dirname(what)) == "bin" and base(argv0).startswith("python"):
            return name
        return None
    if name == "__pip-runner__.py" and base(os.path.dirname(what)) == "pip" and (
            trust.root_only(what, ns) or (venv and base(os.path.dirname(os.path.dirname(what)))
                                          == "site-packages")):
        return "pip"        # pip's own build-isolation installs
    return None


# Pure functions of an address string, asked for on every connect (and by the port-scan
# rule for every peer it holds): cached, bounded (issue 16.3: cheap per-event work).
@functools.lru_cache(maxsize=4096)
def is_public_peer(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast)


@functools.lru_cache(maxsize=4096)
def is_loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


__all__ = [
    "NS", "ACTIONS", "RuleSettings", "Hit", "BehaviorRule", "SingleEvent", "Step", "SequenceRule",
    "ThresholdRule", "SHELLS", "INTERPRETERS", "SYSTEM_DIRS", "PACKAGE_MANAGERS", "PY_INSTALLERS",
    "package_installer", "python_installer", "python_module_or_script", "base",
    "norm_interp", "is_shell", "is_interpreter", "under", "glob_any", "ancestry_names",
    "actor_names", "trusted", "trusted_as", "ExeTrust", "SESSION_ROOTS", "is_public_peer", "is_loopback",
]
