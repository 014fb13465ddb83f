"""The agent's policy document: parse YAML into a typed, validated model.

The embedded default (``bastion/data/default-policy.yaml``) is what ``bastion
run`` uses without ``--policy``.  Every error names ``file:line:col`` (from
the YAML node marks) and all errors of a document are collected before one
:class:`PolicyError` listing them is raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Final

import yaml

from bastion.errors import ConfigError, Location
from bastion.sensors.bpf import EVENT_CLASSES

SCHEMA_VERSION: Final = 1
DEFAULT_POLICY_NAME: Final = "<embedded default policy>"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DUR_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS: Final = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
                      "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


class PolicyError(ConfigError):
    """One or more problems in a policy document (each with its location)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(
            "\n".join(str(p) for p in problems) if len(problems) > 1 else first.message,
            location=None if len(problems) > 1 else first.location,
        )
        self.problems = problems


@dataclass(frozen=True)
class EventsConfig:
    classes: tuple[str, ...] = tuple(EVENT_CLASSES)
    poll_interval_s: float = 0.02


@dataclass(frozen=True)
class StoreConfig:
    max_age_s: float = 7 * 86400
    max_events: int = 5_000_000
    max_bytes: int = 2 * 2**30


@dataclass(frozen=True)
class Policy:
    source: str
    events: EventsConfig = field(default_factory=EventsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ConfigError] = []

    def loc(self, node: yaml.Node) -> Location:
        m = node.start_mark
        return Location(self.source, m.line + 1, m.column + 1)

    def err(self, node: yaml.Node, msg: str) -> None:
        self.problems.append(ConfigError(msg, location=self.loc(node)))

    def mapping(self, node: yaml.Node, what: str, known: dict[str, Callable[[yaml.Node], None]]) -> None:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what} must be a mapping")
            return
        seen: set[str] = set()
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if key not in known:
                self.err(knode, f"unknown key {key!r} in {what} (known: {', '.join(known)})")
                continue
            if key in seen:
                self.err(knode, f"duplicate key {key!r} in {what}")
                continue
            seen.add(key)
            known[key](vnode)

    def scalar(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, f"{what} must be a scalar")
            return None
        return str(node.value)

    def duration(self, node: yaml.Node, what: str) -> float | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        m = _DURATION.match(text)
        if not m:
            self.err(node, f"{what}: {text!r} is not a duration (e.g. 20ms, 30s, 10m, 7d)")
            return None
        return float(m.group(1)) * _DUR_UNITS[m.group(2)]

    def size(self, node: yaml.Node, what: str) -> int | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        m = _SIZE.match(text)
        if not m:
            self.err(node, f"{what}: {text!r} is not a size (e.g. 500MiB, 2GiB)")
            return None
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])

    def integer(self, node: yaml.Node, what: str, minimum: int = 0) -> int | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        try:
            v = int(text)
        except ValueError:
            self.err(node, f"{what}: {text!r} is not an integer")
            return None
        if v < minimum:
            self.err(node, f"{what} must be at least {minimum}")
            return None
        return v


def parse_policy(text: str, source: str) -> Policy:
    """Parse and validate a policy document; raises PolicyError with every problem."""
    p = _Parser(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        loc = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        raise PolicyError([ConfigError(f"invalid YAML: {exc.problem}", location=loc)]) from exc
    if root is None:
        raise PolicyError([ConfigError("empty policy document", location=Location(source))])
    values: dict[str, Any] = {}
    ev: dict[str, Any] = {}
    st: dict[str, Any] = {}

    def version(n: yaml.Node) -> None:
        v = p.integer(n, "version", 1)
        if v is not None and v != SCHEMA_VERSION:
            p.err(n, f"policy version {v} is not supported (this Bastion reads version {SCHEMA_VERSION})")
        values["version"] = v

    def classes(n: yaml.Node) -> None:
        if not isinstance(n, yaml.SequenceNode):
            p.err(n, "events.classes must be a list")
            return
        out = []
        for item in n.value:
            name = p.scalar(item, "event class")
            if name is None:
                continue
            if name not in EVENT_CLASSES:
                p.err(item, f"unknown event class {name!r} (known: {', '.join(EVENT_CLASSES)})")
                continue
            out.append(name)
        ev["classes"] = tuple(dict.fromkeys(out))

    def poll(n: yaml.Node) -> None:
        d = p.duration(n, "events.poll_interval")
        if d is not None and not 0.001 <= d <= 1.0:
            p.err(n, "events.poll_interval must be between 1ms and 1s")
        elif d is not None:
            ev["poll_interval_s"] = d

    def events(n: yaml.Node) -> None:
        p.mapping(n, "events", {"classes": classes, "poll_interval": poll})

    def max_age(n: yaml.Node) -> None:
        if (d := p.duration(n, "store.max_age")) is not None:
            st["max_age_s"] = d

    def max_events(n: yaml.Node) -> None:
        if (i := p.integer(n, "store.max_events", 1000)) is not None:
            st["max_events"] = i

    def max_bytes(n: yaml.Node) -> None:
        if (s := p.size(n, "store.max_bytes")) is not None:
            if s < 2**20:
                p.err(n, "store.max_bytes must be at least 1MiB")
            else:
                st["max_bytes"] = s

    def store(n: yaml.Node) -> None:
        p.mapping(n, "store", {"max_age": max_age, "max_events": max_events, "max_bytes": max_bytes})

    p.mapping(root, "the policy", {"version": version, "events": events, "store": store})
    if "version" not in values and isinstance(root, yaml.MappingNode):
        p.err(root, "the policy lacks 'version: 1'")
    if p.problems:
        raise PolicyError(p.problems)
    return Policy(source=source, events=EventsConfig(**ev), store=StoreConfig(**st))


def load_policy(path: Path | None) -> Policy:
    """The policy at ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        text = resources.files("bastion").joinpath("data/default-policy.yaml").read_text()
        return parse_policy(text, DEFAULT_POLICY_NAME)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([ConfigError(f"cannot read policy: {exc.strerror}",
                                       location=Location(str(path)))]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError([ConfigError("policy is not UTF-8 text",
                                       location=Location(str(path)))]) from exc
    return parse_policy(text, str(path))
