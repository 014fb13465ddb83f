"""Location-aware parsing of YAML documents: every problem names file:line:col.

``NodeParser`` walks ``yaml.compose`` nodes (which keep their marks) and
collects problems instead of stopping at the first; callers raise one error
listing all of them.
"""

from __future__ import annotations

import re
from typing import Callable, Final

import yaml

from bastion.errors import ConfigError, Location

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_DUR_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS: Final = {None: 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
                      "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def compose(text: str, source: str) -> yaml.Node | None:
    """The node tree of a YAML document (None when empty); invalid YAML raises
    :class:`ConfigError` naming file:line:col."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        loc = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        raise ConfigError(f"invalid YAML: {exc.problem}", location=loc) from exc


class NodeParser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[ConfigError] = []
        self.warnings: list[ConfigError] = []

    def loc(self, node: yaml.Node) -> Location:
        m = node.start_mark
        return Location(self.source, m.line + 1, m.column + 1)

    def err(self, node: yaml.Node, msg: str) -> None:
        self.problems.append(ConfigError(msg, location=self.loc(node)))

    def warn(self, node: yaml.Node, msg: str) -> None:
        self.warnings.append(ConfigError(msg, location=self.loc(node)))

    def strings(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        """A scalar or a list of scalars, each with its node."""
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = []
        for item in items:
            v = self.scalar(item, what)
            if v is not None:
                out.append((v, item))
        if isinstance(node, yaml.SequenceNode) and not items:
            self.err(node, f"{what} must not be empty")
        return out

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

    def integer(self, node: yaml.Node, what: str, minimum: int = 0,
                maximum: int | None = None) -> int | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        try:
            v = int(text)
        except ValueError:
            self.err(node, f"{what}: {text!r} is not an integer")
            return None
        if v < minimum or (maximum is not None and v > maximum):
            self.err(node, f"{what} must be {minimum}..{maximum}" if maximum is not None
                     else f"{what} must be at least {minimum}")
            return None
        return v

    def boolean(self, node: yaml.Node, what: str) -> bool | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
            return str(node.value).lower() in ("true", "yes", "on", "y")
        self.err(node, f"{what} must be true or false")
        return None

    def choice(self, node: yaml.Node, what: str, known: tuple[str, ...] | list[str]) -> str | None:
        text = self.scalar(node, what)
        if text is None:
            return None
        if text not in known:
            self.err(node, f"{what}: {text!r} is not one of {', '.join(known)}")
            return None
        return text
