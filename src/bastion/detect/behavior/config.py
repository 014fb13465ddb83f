"""Behaviour settings from the policy's ``behavior:`` section (errors with file:line).

```yaml
behavior:
  dry_run: false                 # every behaviour response becomes would-<action>
  max_keys: 16384                # state bound per rule (LRU; evictions are counted as shed)
  state_ttl: 5m                  # idle state expires
  rules:
    behavior.port_scan: {action: kill, severity: critical}
    behavior.exec_from_tmp: {enabled: false}
    behavior.ransomware: {dry_run: true}
    behavior.container_runtime_socket:          # actors the rule does not report
      trust: [{container: {image: "registry.example/portainer:*"}}]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from bastion.containers import Selector, parse_selector
from bastion.detect.behavior.base import ACTIONS, RuleSettings
from bastion.severity import SEVERITIES
from bastion.errors import ConfigError
from bastion.yamlparse import NodeParser, compose


class BehaviorConfigError(ConfigError):
    """One or more problems in a ``behavior:`` section (each with file:line)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p.location) + ": " + p.message if p.location else p.message
                                   for p in problems),
                         location=problems[0].location if problems else None)


@dataclass(frozen=True)
class BehaviorConfig:
    dry_run: bool = False
    max_keys: int = 16384
    state_ttl_s: float = 300.0
    rules: dict[str, RuleSettings] = field(default_factory=dict)


def _bool(p: NodeParser, n: yaml.Node, what: str) -> bool | None:
    v = p.scalar(n, what)
    if v is None:
        return None
    if v.lower() in ("true", "yes", "on"):
        return True
    if v.lower() in ("false", "no", "off"):
        return False
    p.err(n, f"{what} must be true or false, not {v!r}")
    return None


def parse_behavior_node(node: yaml.Node, p: NodeParser, known_rules: frozenset[str]) -> BehaviorConfig:
    """Parse a ``behavior:`` mapping node, recording problems on ``p``."""
    out: dict[str, object] = {}
    rules: dict[str, RuleSettings] = {}

    def dry(n: yaml.Node) -> None:
        if (b := _bool(p, n, "behavior.dry_run")) is not None:
            out["dry_run"] = b

    def max_keys(n: yaml.Node) -> None:
        if (i := p.integer(n, "behavior.max_keys", 16)) is not None:
            out["max_keys"] = i

    def ttl(n: yaml.Node) -> None:
        if (d := p.duration(n, "behavior.state_ttl")) is not None:
            out["state_ttl_s"] = d

    def rule_map(n: yaml.Node) -> None:
        if not isinstance(n, yaml.MappingNode):
            p.err(n, "behavior.rules must be a mapping of rule name to settings")
            return
        for kn, vn in n.value:
            name = p.scalar(kn, "rule name")
            if name is None:
                continue
            if name not in known_rules:
                p.err(kn, f"unknown behaviour rule {name!r}")
                continue
            s: dict[str, object] = {}

            def action(x: yaml.Node) -> None:
                v = p.scalar(x, "action")
                if v is not None and v not in ACTIONS:
                    p.err(x, f"action must be one of {', '.join(ACTIONS)}, not {v!r}")
                elif v is not None:
                    s["action"] = v

            def severity(x: yaml.Node) -> None:
                v = p.scalar(x, "severity")
                if v is not None and v not in SEVERITIES:
                    p.err(x, f"severity must be one of {', '.join(SEVERITIES)}, not {v!r}")
                elif v is not None:
                    s["severity"] = v

            def rdry(x: yaml.Node) -> None:
                if (b := _bool(p, x, "dry_run")) is not None:
                    s["dry_run"] = b

            def enabled(x: yaml.Node) -> None:
                if (b := _bool(p, x, "enabled")) is not None:
                    s["enabled"] = b

            def trust(x: yaml.Node) -> None:
                if not isinstance(x, yaml.SequenceNode) or not x.value:
                    p.err(x, f"behavior.rules.{name}.trust must be a non-empty list of "
                             "{container: {...}} or {host: true}")
                    return
                sels: list[Selector] = []
                for item in x.value:
                    if not isinstance(item, yaml.MappingNode) or len(item.value) != 1 or \
                            item.value[0][0].value not in ("container", "host"):
                        p.err(item, f"behavior.rules.{name}.trust entries are {{container: {{...}}}} "
                                    "or {host: true}")
                        continue
                    sel = parse_selector(p, item.value[0][0].value, item.value[0][1],
                                         f"behavior.rules.{name}.trust")
                    if sel is not None:
                        sels.append(sel)
                s["trust"] = tuple(sels)

            p.mapping(vn, f"behavior.rules.{name}", {"action": action, "severity": severity,
                                                     "dry_run": rdry, "enabled": enabled,
                                                     "trust": trust})
            rules[name] = RuleSettings(**s)  # type: ignore[arg-type]

    p.mapping(node, "behavior", {"dry_run": dry, "max_keys": max_keys, "state_ttl": ttl,
                                 "rules": rule_map})
    return BehaviorConfig(rules=rules, **out)  # type: ignore[arg-type]


def parse_behavior(text: str, source: str, known_rules: frozenset[str]) -> BehaviorConfig:
    """Parse a YAML document whose top level holds ``behavior:`` (or is it)."""
    p = NodeParser(source)
    try:
        root = compose(text, source)
    except ConfigError as exc:
        raise BehaviorConfigError([exc]) from exc
    if root is None:
        return BehaviorConfig()
    node = root
    if isinstance(root, yaml.MappingNode):
        for kn, vn in root.value:
            if isinstance(kn, yaml.ScalarNode) and kn.value == "behavior":
                node = vn
                break
    cfg = parse_behavior_node(node, p, known_rules)
    if p.problems:
        raise BehaviorConfigError(p.problems)
    return cfg


__all__ = ["BehaviorConfig", "BehaviorConfigError", "parse_behavior", "parse_behavior_node"]
