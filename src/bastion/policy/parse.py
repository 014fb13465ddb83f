"""YAML -> HipsPolicy: the `mode`, `default` and `rules` keys of a policy document.

Called by :func:`bastion.config.parse_policy` with its :class:`NodeParser`, so
every problem carries ``file:line:col`` and all of them are reported at once.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import yaml

from bastion.containers import parse_selector
from bastion.policy.model import (
    Action, AnyObject, FileObject, HipsPolicy, Mode, NetObject, Object, Op, Rule, Subject,
    SubjectKind,
)
from bastion.yamlparse import NodeParser

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_SUBJECT_KEYS = {"exe": SubjectKind.EXE, "parent": SubjectKind.PARENT, "user": SubjectKind.USER,
                 "uid": SubjectKind.USER, "cgroup": SubjectKind.CGROUP}
_V6_PORT = re.compile(r"^\[(?P<net>[0-9a-fA-F:./]+)\](?::(?P<port>\d+))?$")


def _net_object(v: str) -> NetObject | str:
    """``10.0.0.0/8``, ``10.0.0.0/8:443``, ``192.0.2.1:22``, ``:22``, ``2001:db8::/32``,
    ``[2001:db8::1]:443``; a string is the reason it is not one of those."""
    net_s: str | None
    port_s: str | None = None
    if v.startswith(":") and v[1:].isdigit():
        net_s, port_s = None, v[1:]
    elif v.startswith("["):
        m = _V6_PORT.match(v)
        if not m:
            return "expected [IPv6/len]:port"
        net_s, port_s = m.group("net"), m.group("port")
    elif v.count(":") == 1:
        net_s, port_s = v.split(":")
    else:
        net_s = v
    network = None
    if net_s is not None:
        try:
            network = ipaddress.ip_network(net_s, strict=True)
        except ValueError as exc:
            return str(exc)
    port = 0
    if port_s is not None:
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            return "port must be 1..65535"
        port = int(port_s)
    return NetObject(network, port)


def _glob_ok(pattern: str) -> str | None:
    """None when ``pattern`` is a usable absolute path or glob, else why not."""
    if not pattern.startswith("/"):
        return "must be an absolute path"
    depth = 0
    for ch in pattern:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    if depth:
        return "has an unclosed '[' in its glob"
    if "\0" in pattern:
        return "contains a NUL byte"
    if "**" in pattern.rstrip("*").rstrip("/") and not pattern.endswith("/**"):
        return "'**' is only allowed at the end ('/dir/**' = the whole subtree)"
    return None


def _subject(p: NodeParser, node: yaml.Node) -> Subject | None:
    if not isinstance(node, yaml.MappingNode):
        p.err(node, "subject must be a mapping (exe, exe_inode, parent, user, uid, cgroup, container or host)")
        return None
    if not node.value:
        return Subject(SubjectKind.EVERYONE)
    if len(node.value) > 1:
        p.err(node, "a subject has exactly one selector (exe, exe_inode, parent, user, uid, cgroup, container or host)")
        return None
    knode, vnode = node.value[0]
    key = knode.value
    if key in ("container", "host"):
        sel = parse_selector(p, key, vnode, "subject")
        return Subject(SubjectKind.CONTAINER, container=sel) if sel is not None else None
    if key == "exe_inode":
        inodes: list[tuple[int, int]] = []
        items = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
        for item in items:
            if not isinstance(item, yaml.MappingNode) or {k.value for k, _ in item.value} != {"dev", "ino"}:
                p.err(item, "exe_inode entries are mappings {dev: N, ino: N}")
                continue
            vals = {k.value: p.integer(v, f"exe_inode.{k.value}", 0) for k, v in item.value}
            if vals["dev"] is not None and vals["ino"] is not None:
                inodes.append((int(vals["dev"]), int(vals["ino"])))
        return Subject(SubjectKind.EXE, inodes=tuple(inodes)) if inodes else None
    kind = _SUBJECT_KEYS.get(key)
    if kind is None:
        p.err(knode, f"unknown subject selector {key!r} (known: exe, exe_inode, parent, user, uid, cgroup, container, host)")
        return None
    values = []
    for v, vn in p.strings(vnode, f"subject.{key}"):
        if kind in (SubjectKind.EXE, SubjectKind.PARENT, SubjectKind.CGROUP):
            why = _glob_ok(v)
            if why:
                p.err(vn, f"subject.{key} {v!r} {why}")
                continue
        if key == "uid" and not v.isdigit():
            p.err(vn, f"subject.uid {v!r} is not a number")
            continue
        values.append(v)
    return Subject(kind, tuple(values)) if values else None


def _objects(p: NodeParser, node: yaml.Node, ops: tuple[Op, ...]) -> tuple[Object, ...]:
    net = [o for o in ops if o.is_network]
    files = [o for o in ops if not o.is_network]
    if net and files:
        p.err(node, f"network operations ({', '.join(o.value for o in net)}) and file/process "
                    f"operations ({', '.join(o.value for o in files)}) need separate rules")
        return ()
    out: list[Object] = []
    for v, vn in p.strings(node, "objects"):
        if v == "any":
            out.append(AnyObject())
            continue
        if net:
            parsed = _net_object(v)
            if isinstance(parsed, str):
                p.err(vn, f"network object {v!r}: {parsed}")
                continue
            out.append(parsed)
        else:
            why = _glob_ok(v)
            if why:
                p.err(vn, f"object {v!r} {why}")
                continue
            if v.endswith("/**"):
                v = v[:-2]
            out.append(FileObject(v))
    return tuple(out)


def parse_rules(p: NodeParser, node: yaml.Node) -> tuple[Rule, ...]:
    if not isinstance(node, yaml.SequenceNode):
        p.err(node, "rules must be a list")
        return ()
    rules: list[Rule] = []
    names: dict[str, yaml.Node] = {}
    for rnode in node.value:
        vals: dict[str, Any] = {}

        def name(n: yaml.Node) -> None:
            v = p.scalar(n, "rule name")
            if v is None:
                return
            if not _NAME.match(v):
                p.err(n, f"rule name {v!r}: use letters, digits, '_', '.', ':' or '-' (max 64)")
            elif v in names:
                first = p.loc(names[v])
                p.err(n, f"duplicate rule name {v!r} (first at line {first.line})")
            else:
                names[v] = n
                vals["name"] = v

        def subject(n: yaml.Node) -> None:
            vals["subject"] = _subject(p, n)

        def operations(n: yaml.Node) -> None:
            ops = []
            for v, vn in p.strings(n, "operations"):
                try:
                    ops.append(Op(v))
                except ValueError:
                    p.err(vn, f"unknown operation {v!r} (known: {', '.join(o.value for o in Op)})")
            vals["ops"] = tuple(dict.fromkeys(ops))
            vals["ops_node"] = n

        def objects(n: yaml.Node) -> None:
            vals["objects_node"] = n

        def action(n: yaml.Node) -> None:
            v = p.scalar(n, "action")
            if v is None:
                return
            try:
                vals["action"] = Action(v)
            except ValueError:
                p.err(n, f"unknown action {v!r} (known: allow, audit, deny, kill)")

        before = len(p.problems)
        p.mapping(rnode, "a rule", {"name": name, "subject": subject, "operations": operations,
                                    "objects": objects, "action": action})
        if not isinstance(rnode, yaml.MappingNode):
            continue
        for req in ("name", "operations", "action"):
            if req not in vals and not any(k.value == req for k, _ in rnode.value):
                p.err(rnode, f"rule lacks {req!r}")
        ops = vals.get("ops", ())
        objs: tuple[Object, ...] = (AnyObject(),)
        net_ops = [o for o in ops if o.is_network]
        if net_ops and len(net_ops) != len(ops) and "objects_node" not in vals:
            p.err(vals["ops_node"], f"network operations ({', '.join(o.value for o in net_ops)}) and "
                  f"file/process operations ({', '.join(o.value for o in ops if not o.is_network)}) "
                  "need separate rules")
        if "objects_node" in vals:
            objs = _objects(p, vals["objects_node"], ops)
        if len(p.problems) > before or not ops:
            continue
        rules.append(Rule(
            name=vals["name"], subject=vals.get("subject") or Subject(SubjectKind.EVERYONE),
            ops=ops, objects=objs, action=vals["action"], location=p.loc(rnode),
        ))
    return tuple(rules)


def parse_mode(p: NodeParser, node: yaml.Node) -> Mode | None:
    v = p.scalar(node, "mode")
    if v is None:
        return None
    try:
        return Mode(v)
    except ValueError:
        p.err(node, f"unknown mode {v!r} (known: learn, audit, enforce)")
        return None


def parse_default(p: NodeParser, node: yaml.Node) -> Action | None:
    v = p.scalar(node, "default")
    if v is None:
        return None
    try:
        a = Action(v)
    except ValueError:
        p.err(node, f"unknown default action {v!r} (known: allow, audit, deny, kill)")
        return None
    return a


def build(p: NodeParser, root: yaml.Node, mode: Mode | None, default: Action | None,
          rules: tuple[Rule, ...]) -> HipsPolicy:
    pol = HipsPolicy(mode=mode or Mode.AUDIT, default=default or Action.ALLOW, rules=rules,
                     location=p.loc(root))
    if pol.mode is Mode.ENFORCE and pol.default in (Action.DENY, Action.KILL):
        p.warn(root, f"default action {pol.default.value!r} in enforce mode denies every operation "
                     "no rule allows, for every program: this can lock the administrator out")
    return pol
