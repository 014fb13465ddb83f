"""HipsPolicy -> ResolvedPolicy (impure: globs, inodes, uids) -> MapPlan (pure).

``resolve`` is the only step that looks at the machine: it expands globs,
stats files (following symlinks: /bin/sh is the inode of dash), and maps
users and cgroups to numbers.  ``compile_plan`` is a pure, deterministic
function from the resolved policy to the exact map entries the kernel
matcher reads (layout in bpf/include/bastion.h); golden tests pin its output.

Precedence (documented in docs/policy.md): a process matches every subject
some rule names — its exe, its parent's exe, its uid, its cgroup; for each the
most specific object wins (the file, then its nearest ancestor directory, then
``any``) and across them the strictest action (kill > deny > audit > allow);
only when none of its subjects has a rule, the rule for everyone; then the
policy's default.  The plan needs no order between subjects: each identity is
its own subject id, and the matcher (kernel and policy/match.py) asks them
all.  Two rules giving different actions to the same
(subject, operation, object) are a contradiction and an error.
"""

from __future__ import annotations

import glob as globmod
import ipaddress
import os
import pwd
from dataclasses import dataclass, field
from typing import Any, Callable, Final

from bastion import abi
from bastion.abi import kernel_dev  # re-exported: the policy's inode keys
from bastion.containers import Container
from bastion.errors import ConfigError, Location
from bastion.policy.model import (
    Action, AnyObject, FileObject, HipsPolicy, Mode, NetObject, Op, SubjectKind,
)

OPS: Final = {op: abi.HipsOp[op.name] for op in Op}
ACTIONS: Final = {a: abi.HipsAction[a.name] for a in Action}
ANY_FILE: Final = (0, 0)
_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"


class CompileError(ConfigError):
    """The policy is well-formed but cannot be compiled (contradictions, nothing to enforce)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class FileTarget:
    """A file object as resolved now: its inode, and where that inode was found —
    the (parent directory inode, name) the policy really names.  A file replaced by
    rename (``passwd``, ``sed -i``, editors, package upgrades) keeps its (parent,
    name) but gets a new inode: :func:`drift` finds it and the manager re-resolves."""

    dev: int
    ino: int
    is_dir: bool
    path: str
    parent_dev: int = 0
    parent_ino: int = 0
    name: str = ""


@dataclass(frozen=True)
class NetTarget:
    addr: bytes        # 16 bytes, IPv4 mapped
    prefix: int        # bits of addr that count (0..128)
    port: int          # 0 = any

    def describe(self) -> str:
        if self.prefix == 0:
            net = "any"
        elif self.addr[:12] == _V4_MAPPED:
            net = f"{ipaddress.IPv4Address(self.addr[12:])}/{self.prefix - 96}"
        else:
            net = f"{ipaddress.IPv6Address(self.addr)}/{self.prefix}"
        return f"{net}:{self.port}" if self.port else net


@dataclass(frozen=True)
class ResolvedRule:
    rule_id: int
    name: str
    location: Location
    identities: tuple[tuple[int, int, int], ...]   # (abi.SubjectKind, a, b); () = everyone
    subject: str                                   # human description
    ops: tuple[Op, ...]
    files: tuple[FileTarget, ...]                  # FileTarget(0, 0, False, "any") = any object
    nets: tuple[NetTarget, ...]
    action: Action


@dataclass(frozen=True)
class ResolvedPolicy:
    mode: Mode
    default: Action
    rules: tuple[ResolvedRule, ...]
    warnings: tuple[ConfigError, ...] = ()


@dataclass(frozen=True)
class Resolver:
    """What resolve() may look at; tests pass fakes."""

    stat: Callable[[str], os.stat_result] = os.stat
    glob: Callable[[str], list[str]] = lambda pat: sorted(globmod.glob(pat))
    uid_of: Callable[[str], int] = lambda name: pwd.getpwnam(name).pw_uid
    # every cgroup v2 directory now: (cgroup id, its verified-or-not container, None = host)
    cgroups: Callable[[], list[tuple[int, Container | None]]] = lambda: _cgroup_inventory()


def _cgroup_inventory() -> list[tuple[int, Container | None]]:
    from bastion.containers import ContainerResolver
    from bastion.kernel.bpffs import cgroup2_root

    r = ContainerResolver(cgroup2=str(cgroup2_root()))
    try:
        return r.inventory()
    finally:
        r.close()


def _net_target(o: NetObject) -> NetTarget:
    if o.network is None:
        return NetTarget(b"\x00" * 16, 0, o.port)
    if isinstance(o.network, ipaddress.IPv4Network):
        return NetTarget(_V4_MAPPED + o.network.network_address.packed, 96 + o.network.prefixlen, o.port)
    return NetTarget(o.network.network_address.packed, o.network.prefixlen, o.port)


def _files(pattern: str, r: Resolver) -> list[tuple[str, os.stat_result]]:
    is_dir = pattern.endswith("/")
    base = pattern.rstrip("/") or "/"
    paths = r.glob(base) if any(c in base for c in "*?[") else [base]
    out = []
    for path in paths:
        try:
            st = r.stat(path)
        except OSError:
            continue
        if is_dir and not (st.st_mode & 0o170000 == 0o040000):
            continue
        out.append((path, st))
    return out


def _target(path: str, st: os.stat_result, is_dir: bool, r: Resolver) -> FileTarget:
    parent, name = os.path.split(path.rstrip("/") or "/")
    try:
        pst = r.stat(parent or "/")
        pdev, pino = kernel_dev(pst.st_dev), pst.st_ino
    except OSError:
        pdev = pino = 0
    return FileTarget(kernel_dev(st.st_dev), st.st_ino, is_dir, path, pdev, pino, name)


def resolve(policy: HipsPolicy, r: Resolver | None = None) -> ResolvedPolicy:
    r = r or Resolver()
    warnings: list[ConfigError] = []
    errors: list[ConfigError] = []
    out: list[ResolvedRule] = []
    inventory: list[tuple[int, Container | None]] | None = None
    for rule_id, rule in enumerate(policy.rules, start=1):
        ids: list[tuple[int, int, int]] = []
        subj = rule.subject
        if subj.kind in (SubjectKind.EXE, SubjectKind.PARENT):
            kind = abi.SubjectKind.EXE if subj.kind is SubjectKind.EXE else abi.SubjectKind.PARENT_EXE
            for dev, ino in subj.inodes:
                ids.append((kind, ino, dev))
            for pat in subj.values:
                found = _files(pat, r)
                if not found:
                    warnings.append(ConfigError(
                        f"rule {rule.name!r}: subject {subj.kind.value} {pat!r} matches no file now",
                        location=rule.location))
                ids += [(kind, st.st_ino, kernel_dev(st.st_dev)) for _, st in found]
        elif subj.kind is SubjectKind.USER:
            for v in subj.values:
                try:
                    ids.append((abi.SubjectKind.UID, int(v) if v.isdigit() else r.uid_of(v), 0))
                except KeyError:
                    errors.append(ConfigError(f"rule {rule.name!r}: no such user {v!r}",
                                              location=rule.location))
        elif subj.kind is SubjectKind.CGROUP:
            for v in subj.values:
                try:
                    ids.append((abi.SubjectKind.CGROUP, r.stat(v).st_ino, 0))
                except OSError:
                    errors.append(ConfigError(f"rule {rule.name!r}: no such cgroup {v!r}",
                                              location=rule.location))
        elif subj.kind is SubjectKind.CONTAINER and subj.container is not None:
            # the cgroups the selector names now: a container selector only verified
            # containers (root-owned cgroup + runtime state), host every cgroup that is
            # not a verified container (a look-alike name stays "host")
            if inventory is None:
                inventory = r.cgroups()
            sel = subj.container
            ids += [(abi.SubjectKind.CGROUP, cg, 0) for cg, c in inventory
                    if sel.matches(c if c is not None and c.verified else None)]
            if not ids:
                warnings.append(ConfigError(
                    f"rule {rule.name!r}: subject {sel.describe()} matches no cgroup now",
                    location=rule.location))
        if subj.kind is not SubjectKind.EVERYONE and not ids:
            continue  # selects nobody now (warned or errored above)
        files: list[FileTarget] = []
        nets: list[NetTarget] = []
        for o in rule.objects:
            if isinstance(o, AnyObject):
                if any(op.is_network for op in rule.ops):
                    nets.append(NetTarget(b"\x00" * 16, 0, 0))
                else:
                    files.append(FileTarget(0, 0, False, "any"))
            elif isinstance(o, NetObject):
                nets.append(_net_target(o))
            elif isinstance(o, FileObject):
                found = _files(o.pattern, r)
                if not found:
                    warnings.append(ConfigError(
                        f"rule {rule.name!r}: object {o.pattern!r} matches nothing now",
                        location=rule.location))
                for path, st in found:
                    files.append(_target(path, st, o.is_dir, r))
        out.append(ResolvedRule(
            rule_id=rule_id, name=rule.name, location=rule.location,
            identities=tuple(sorted(set(ids))), subject=subj.describe(), ops=rule.ops,
            files=tuple(dict.fromkeys(files)), nets=tuple(dict.fromkeys(nets)), action=rule.action,
        ))
    if errors:
        raise CompileError(errors)
    return ResolvedPolicy(policy.mode, policy.default, tuple(out), tuple(warnings))


@dataclass(frozen=True)
class RuleInfo:
    rule_id: int
    name: str
    location: str
    subject: str
    action: str


@dataclass(frozen=True)
class MapPlan:
    """Exactly what the kernel matcher reads, independent of the generation.

    ``subjects``: ((kind, a, b), subject_id); ``rules``: ((subject, op, dev,
    ino), (action, rule_id)); ``nets``: ((subject, op, port, addr, prefix),
    (action, rule_id)).  All sorted: the same policy gives the same plan.
    """

    mode: abi.HipsMode
    default_action: abi.HipsAction
    flags: int
    subjects: tuple[tuple[tuple[int, int, int], int], ...]
    rules: tuple[tuple[tuple[int, int, int, int], tuple[int, int]], ...]
    nets: tuple[tuple[tuple[int, int, int, bytes, int], tuple[int, int]], ...]
    rule_table: tuple[RuleInfo, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode.name.lower(),
            "default": self.default_action.name.lower(),
            "flags": self.flags,
            "subjects": [[abi.SubjectKind(k).name.lower(), a, b, sid] for (k, a, b), sid in self.subjects],
            "rules": [[s, abi.HipsOp(op).name.lower(), dev, ino, abi.HipsAction(act).name.lower(), rid]
                      for (s, op, dev, ino), (act, rid) in self.rules],
            "nets": [[s, abi.HipsOp(op).name.lower(), port, addr.hex(), plen,
                      abi.HipsAction(act).name.lower(), rid]
                     for (s, op, port, addr, plen), (act, rid) in self.nets],
            "rule_table": [[r.rule_id, r.name, r.location, r.subject, r.action] for r in self.rule_table],
        }

    # ---- bytes for the maps -----------------------------------------------------

    def gen_value(self) -> bytes:
        return bytes(abi.HipsGen(mode=self.mode, default_action=self.default_action, flags=self.flags))

    def subject_entries(self, gen: int) -> list[tuple[bytes, bytes]]:
        return [(bytes(abi.SubjectKey(gen=gen, kind=k, a=a, b=b)), sid.to_bytes(4, "little"))
                for (k, a, b), sid in self.subjects]

    def rule_entries(self, gen: int) -> list[tuple[bytes, bytes]]:
        return [(bytes(abi.RuleKey(gen=gen, subject=s, op=op, dev=dev, ino=ino)),
                 bytes(abi.RuleVal(action=act, rule_id=rid)))
                for (s, op, dev, ino), (act, rid) in self.rules]

    def net_entries(self, gen: int) -> list[tuple[bytes, bytes]]:
        out = []
        for (s, op, port, addr, plen), (act, rid) in self.nets:
            k = abi.NetKey(prefixlen=128 + plen, gen=gen, subject=s, op=op, port=port)
            k.addr[:] = list(addr)
            out.append((bytes(k), bytes(abi.RuleVal(action=act, rule_id=rid))))
        return out


@dataclass(frozen=True)
class Drift:
    """An object or subject of a rule whose inode changed since it was resolved.

    ``old``/``new`` are (dev, ino); (0, 0) = not there (removed, or newly
    created).  ``kind`` is ``object`` or ``subject``."""

    rule: str
    kind: str
    path: str
    old: tuple[int, int]
    new: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "kind": self.kind, "path": self.path,
                "old": {"dev": self.old[0], "ino": self.old[1]},
                "new": {"dev": self.new[0], "ino": self.new[1]}}


def drift(before: ResolvedPolicy, now: ResolvedPolicy) -> list[Drift]:
    """What changed between two resolutions of the same policy (pure).

    Objects are compared by path (the (parent, name) the policy names): a path
    whose inode changed, appeared or went.  Subjects are compared as sets of
    identities per rule (a replaced executable shows as one gone, one new)."""
    out: list[Drift] = []
    was = {r.rule_id: r for r in before.rules}
    for rule in now.rules:
        old = was.pop(rule.rule_id, None)
        old_files = {f.path: (f.dev, f.ino) for f in old.files} if old is not None else {}
        new_files = {f.path: (f.dev, f.ino) for f in rule.files}
        for path in sorted(old_files.keys() | new_files.keys()):
            a, b = old_files.get(path, (0, 0)), new_files.get(path, (0, 0))
            if a != b:
                out.append(Drift(rule.name, "object", path, a, b))
        old_ids = set(old.identities) if old is not None else set()
        for kind, ia, ib in sorted(old_ids ^ set(rule.identities)):
            gone = (kind, ia, ib) in old_ids
            ident: tuple[int, int] = ((ib, ia) if kind in (abi.SubjectKind.EXE,
                                                           abi.SubjectKind.PARENT_EXE) else (0, ia))
            out.append(Drift(rule.name, "subject", rule.subject,
                             ident if gone else (0, 0), (0, 0) if gone else ident))
    for old in was.values():    # a rule that selects nobody now
        for f in old.files:
            out.append(Drift(old.name, "object", f.path, (f.dev, f.ino), (0, 0)))
    return out


def compile_plan(policy: ResolvedPolicy) -> MapPlan:
    """Pure and deterministic: the same resolved policy always gives the same plan."""
    identities = sorted({i for r in policy.rules for i in r.identities})
    sid = {ident: n for n, ident in enumerate(identities, start=1)}
    rules: dict[tuple[int, int, int, int], tuple[int, int, ResolvedRule]] = {}
    nets: dict[tuple[int, int, int, bytes, int], tuple[int, int, ResolvedRule]] = {}
    problems: list[ConfigError] = []
    flags = 0

    def put(table: dict[Any, tuple[int, int, ResolvedRule]], key: Any, rule: ResolvedRule,
            what: str) -> None:
        act = ACTIONS[rule.action]
        prev = table.get(key)
        if prev is None:
            table[key] = (act, rule.rule_id, rule)
        elif prev[0] != act:
            other = prev[2]
            problems.append(ConfigError(
                f"rule {rule.name!r} ({rule.action.value}) contradicts rule {other.name!r} "
                f"(line {other.location.line}, {other.action.value}) for {rule.subject}, {what}",
                location=rule.location))

    for rule in policy.rules:
        subjects = [sid[i] for i in rule.identities] or [0]
        for op in rule.ops:
            for s in subjects:
                if op.is_network:
                    for n in rule.nets:
                        put(nets, (s, OPS[op], n.port, n.addr, n.prefix), rule,
                            f"{op.value} {n.describe()}")
                else:
                    for f in rule.files:
                        if f.is_dir:
                            flags |= abi.HIPS_F_DIR_OBJECTS
                        put(rules, (s, OPS[op], f.dev, f.ino), rule, f"{op.value} {f.path}")
    if problems:
        raise CompileError(problems)
    mode = abi.HipsMode.ENFORCE if policy.mode is Mode.ENFORCE else abi.HipsMode.AUDIT
    return MapPlan(
        mode=mode, default_action=ACTIONS[policy.default], flags=flags,
        subjects=tuple((i, sid[i]) for i in identities),
        rules=tuple(sorted((k, (a, rid)) for k, (a, rid, _) in rules.items())),
        nets=tuple(sorted((k, (a, rid)) for k, (a, rid, _) in nets.items())),
        rule_table=tuple(RuleInfo(r.rule_id, r.name, str(r.location), r.subject, r.action.value)
                         for r in policy.rules),
    )


__all__ = ["CompileError", "Drift", "FileTarget", "MapPlan", "NetTarget", "ResolvedPolicy", "ResolvedRule",
           "Resolver", "RuleInfo", "compile_plan", "drift", "kernel_dev", "resolve"]
