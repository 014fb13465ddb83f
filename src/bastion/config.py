"""The agent's policy document: parse YAML into a typed, validated model.

The embedded default (``bastion/data/default-policy.yaml``) is what ``bastion
run`` uses without ``--policy``.  Every error names ``file:line:col`` (from
the YAML node marks) and all errors of a document are collected before one
:class:`PolicyError` listing them is raised.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Final

import yaml

from bastion.alertgate import AlertLimits
from bastion.errors import ConfigError, Location
from bastion.abi import EVENT_CLASSES
from bastion.detect.behavior import rule_names
from bastion.detect.behavior.config import BehaviorConfig, parse_behavior_node
from bastion.outputs.config import MetricsSpec, OutputSpec, parse_metrics_section, parse_outputs_section
from bastion.fleet.config import FleetSpec, parse_fleet_section
from bastion.policy.model import HipsPolicy
from bastion.policy.parse import build, parse_default, parse_mode, parse_rules
from bastion.yamlparse import NodeParser, compose

SCHEMA_VERSION: Final = 1
DEFAULT_POLICY_NAME: Final = "<embedded default policy>"


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
    ring_bytes: int = 8 * 2**20
    # issue 15.1: the sensitive read set whose read-opens the kernel reports
    # (sensors/sensitive.py): the shipped default set, plus these paths (class custom).
    sensitive_defaults: bool = True
    sensitive: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    max_age_s: float = 7 * 86400
    max_events: int = 5_000_000
    max_bytes: int = 2 * 2**30
    max_alerts: int = 1_000_000


#: Who may load BPF programs by default: systemd's PID 1 (cgroup device and IP
#: firewall programs of units).  No generic loader (bpftool, python, bpftrace):
#: the agent and its integrity worker are exempt by identity, not by exe.
DEFAULT_BPF_LOADERS: tuple[Path, ...] = (Path("/usr/lib/systemd/systemd"),
                                         Path("/lib/systemd/systemd"))


@dataclass(frozen=True)
class IntegrityConfig:
    interval_s: float = 0.0          # 0 = no periodic scan
    baseline: Path | None = None     # default: <data dir>/integrity/<kernel release>.json
    allow_bpf: tuple[str, ...] = ()  # NAME[:TAG] of BPF programs that are expected
    # lsm tier: only bpf_loaders (and the agent with its own workers) may load BPF
    # programs; on the compat tier a degraded alert says loads are detected, not refused
    refuse_bpf_loads: bool = True
    bpf_loaders: tuple[Path, ...] = DEFAULT_BPF_LOADERS


@dataclass(frozen=True)
class ShieldConfig:
    """The ransomware shield's shadow copies (docs/ransomware.md); off when empty."""

    protect: tuple[Path, ...] = ()
    max_bytes: int = 2 * 2**30
    trusted: tuple[str, ...] = ()     # root-only executables (path or tool name), trusted by inode
    # directory names never shielded (tool caches and toolchains under a home, not documents)
    exclude: tuple[str, ...] = ()
    max_dirs: int = 10_000           # directories marked at most; the rest are named in status
    # quotas (issue 14.3; respond/shadow/store.py): what one uid, one protected directory
    # ("tree") and the whole index may hold; 0 = a quarter (uid) / half (tree) of the total
    uid_max_bytes: int = 0
    tree_max_bytes: int = 0
    max_rows: int = 500_000
    uid_max_rows: int = 0
    tree_max_rows: int = 0
    max_age_s: float = 86400.0       # pending index rows older than this are dropped


@dataclass(frozen=True)
class AgentConfig:
    """The whole configuration of an agent, read from one policy document: events,
    store, the HIPS policy (``hips``), Sigma, behaviour rules, integrity, shield,
    outputs and metrics.  Not to be confused with :class:`~bastion.policy.model.HipsPolicy`,
    the per-program rules alone."""

    source: str
    events: EventsConfig = field(default_factory=EventsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    hips: HipsPolicy = field(default_factory=HipsPolicy)
    sigma: tuple[Path, ...] = ()                     # Sigma rule directories
    sigma_installed: bool = True                     # evaluate the set `bastion sigma update` installed
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)  # the behaviour rule pack
    integrity: IntegrityConfig = field(default_factory=IntegrityConfig)
    shield: ShieldConfig = field(default_factory=ShieldConfig)
    outputs: tuple[OutputSpec, ...] = ()             # where events and alerts are shipped
    metrics: MetricsSpec | None = None               # Prometheus endpoint
    alerts: AlertLimits = field(default_factory=AlertLimits)  # rate limits, quota, store queue
    fleet: FleetSpec | None = None                   # NATS fleet link (bastion/fleet)
    text: str = ""                                   # the document as written
    warnings: tuple[ConfigError, ...] = ()           # need --force to apply


def parse_policy(text: str, source: str) -> AgentConfig:
    """Parse and validate a policy document; raises PolicyError with every problem."""
    p = NodeParser(source)
    try:
        root = compose(text, source)
    except ConfigError as exc:
        raise PolicyError([exc]) from exc
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

    def ring(n: yaml.Node) -> None:
        size = p.size(n, "events.ring_buffer")
        if size is not None and (size < 2**16 or size > 2**30 or size & (size - 1)):
            p.err(n, "events.ring_buffer must be a power of two between 64KiB and 1GiB")
        elif size is not None:
            ev["ring_bytes"] = size

    def sens_defaults(n: yaml.Node) -> None:
        if (b := p.boolean(n, "events.sensitive_defaults")) is not None:
            ev["sensitive_defaults"] = b

    def sensitive(n: yaml.Node) -> None:
        out = []
        for text, item in p.strings(n, "events.sensitive"):
            if not (text.startswith("/") or text.startswith("~/")) or "\0" in text:
                p.err(item, f"events.sensitive: {text!r} must be an absolute path or start with ~/")
                continue
            out.append(text)
        ev["sensitive"] = tuple(dict.fromkeys(out))

    def events(n: yaml.Node) -> None:
        p.mapping(n, "events", {"classes": classes, "poll_interval": poll, "ring_buffer": ring,
                                "sensitive_defaults": sens_defaults, "sensitive": sensitive})

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

    def max_alerts(n: yaml.Node) -> None:
        if (i := p.integer(n, "store.max_alerts", 1000)) is not None:
            st["max_alerts"] = i

    def store(n: yaml.Node) -> None:
        p.mapping(n, "store", {"max_age": max_age, "max_events": max_events, "max_bytes": max_bytes,
                               "max_alerts": max_alerts})

    hips: dict[str, Any] = {}

    def mode(n: yaml.Node) -> None:
        hips["mode"] = parse_mode(p, n)

    def default(n: yaml.Node) -> None:
        hips["default"] = parse_default(p, n)

    def rules(n: yaml.Node) -> None:
        hips["rules"] = parse_rules(p, n)

    sigma: list[Path] = []

    def sigma_dirs(n: yaml.Node) -> None:
        for v, vn in p.strings(n, "sigma"):
            if not v.startswith("/"):
                p.err(vn, f"sigma directory {v!r} must be an absolute path")
            else:
                sigma.append(Path(v))

    out: dict[str, Any] = {}

    def outputs(n: yaml.Node) -> None:
        specs, problems = parse_outputs_section(n, source)
        p.problems.extend(problems)
        out["outputs"] = tuple(specs)

    def metrics(n: yaml.Node) -> None:
        spec, problems = parse_metrics_section(n, source)
        p.problems.extend(problems)
        out["metrics"] = spec

    integ: dict[str, Any] = {}

    def integ_interval(n: yaml.Node) -> None:
        d = p.duration(n, "integrity.interval")
        if d is not None and d != 0 and d < 10:
            p.err(n, "integrity.interval must be 0 (off) or at least 10s")
        elif d is not None:
            integ["interval_s"] = d

    def integ_baseline(n: yaml.Node) -> None:
        v = p.scalar(n, "integrity.baseline")
        if v is not None and not v.startswith("/"):
            p.err(n, "integrity.baseline must be an absolute path")
        elif v is not None:
            integ["baseline"] = Path(v)

    def integ_allow(n: yaml.Node) -> None:
        integ["allow_bpf"] = tuple(v for v, _ in p.strings(n, "integrity.allow_bpf"))

    def integ_refuse(n: yaml.Node) -> None:
        if (b := p.boolean(n, "integrity.refuse_bpf_loads")) is not None:
            integ["refuse_bpf_loads"] = b

    def integ_loaders(n: yaml.Node) -> None:
        loaders = []
        for v, vn in p.strings(n, "integrity.bpf_loaders"):
            if not v.startswith("/"):
                p.err(vn, f"integrity.bpf_loaders {v!r} must be an absolute path")
            else:
                loaders.append(Path(v))
        integ["bpf_loaders"] = tuple(loaders)

    def integrity(n: yaml.Node) -> None:
        p.mapping(n, "integrity", {"interval": integ_interval, "baseline": integ_baseline,
                                   "allow_bpf": integ_allow, "refuse_bpf_loads": integ_refuse,
                                   "bpf_loaders": integ_loaders})

    shield: dict[str, Any] = {}

    def shield_protect(n: yaml.Node) -> None:
        dirs = []
        for v, vn in p.strings(n, "shield.protect"):
            if not v.startswith("/") or v == "/":
                p.err(vn, f"shield.protect {v!r} must be an absolute directory other than /")
            else:
                dirs.append(Path(v))
        shield["protect"] = tuple(dirs)

    def shield_max(n: yaml.Node) -> None:
        if (sz := p.size(n, "shield.max_bytes")) is not None:
            shield["max_bytes"] = sz

    def shield_trusted(n: yaml.Node) -> None:
        trusted = []
        for v, vn in p.strings(n, "shield.trusted"):
            if os.path.basename(v).startswith(("python", "perl", "ruby", "node", "bash", "sh", "dash")):
                p.err(vn, f"shield.trusted {v!r}: an interpreter would trust every script it runs")
            else:
                trusted.append(v)
        shield["trusted"] = tuple(trusted)

    def shield_exclude(n: yaml.Node) -> None:
        names = []
        for v, vn in p.strings(n, "shield.exclude"):
            if not v or "/" in v or v in (".", ".."):
                p.err(vn, f"shield.exclude {v!r} must be a directory name (no '/'), e.g. .cache")
            else:
                names.append(v)
        shield["exclude"] = tuple(names)

    def shield_max_dirs(n: yaml.Node) -> None:
        if (v := p.integer(n, "shield.max_dirs", minimum=1)) is not None:
            shield["max_dirs"] = v

    def quota_size(key: str, field_: str) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            if (sz := p.size(n, f"shield.quota.{key}")) is not None:
                if sz < 2**20:
                    p.err(n, f"shield.quota.{key} must be at least 1MiB")
                else:
                    shield[field_] = sz
                    quota_nodes[field_] = (key, n)
        return parse

    def quota_rows(key: str, field_: str) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            if (v := p.integer(n, f"shield.quota.{key}", minimum=100)) is not None:
                shield[field_] = v
                quota_nodes[field_] = (key, n)
        return parse

    def quota_age(n: yaml.Node) -> None:
        if (d := p.duration(n, "shield.quota.max_age")) is not None:
            if d < 600:
                p.err(n, "shield.quota.max_age must be at least 10m (rows outlive detection)")
            else:
                shield["max_age_s"] = d

    quota_nodes: dict[str, tuple[str, yaml.Node]] = {}

    def shield_quota(n: yaml.Node) -> None:
        p.mapping(n, "shield.quota", {
            "uid_bytes": quota_size("uid_bytes", "uid_max_bytes"),
            "tree_bytes": quota_size("tree_bytes", "tree_max_bytes"),
            "rows": quota_rows("rows", "max_rows"),
            "uid_rows": quota_rows("uid_rows", "uid_max_rows"),
            "tree_rows": quota_rows("tree_rows", "tree_max_rows"),
            "max_age": quota_age})

    def shield_node(n: yaml.Node) -> None:
        p.mapping(n, "shield", {"protect": shield_protect, "max_bytes": shield_max,
                                "trusted": shield_trusted, "exclude": shield_exclude,
                                "max_dirs": shield_max_dirs, "quota": shield_quota})
        total = {"uid_max_bytes": ("max_bytes", shield.get("max_bytes", ShieldConfig.max_bytes)),
                 "tree_max_bytes": ("max_bytes", shield.get("max_bytes", ShieldConfig.max_bytes)),
                 "uid_max_rows": ("quota.rows", shield.get("max_rows", ShieldConfig.max_rows)),
                 "tree_max_rows": ("quota.rows", shield.get("max_rows", ShieldConfig.max_rows))}
        for field_, (what, cap) in total.items():
            if field_ in quota_nodes and shield[field_] > cap:
                key, node = quota_nodes[field_]
                p.err(node, f"shield.quota.{key} {shield[field_]} exceeds shield.{what} {cap}")

    al: dict[str, Any] = {}
    al_nodes: dict[str, yaml.Node] = {}

    def al_interval(n: yaml.Node) -> None:
        d = p.duration(n, "alerts.interval")
        if d is not None and not 1.0 <= d <= 3600.0:
            p.err(n, "alerts.interval must be between 1s and 1h")
        elif d is not None:
            al["interval_s"] = d

    def al_int(key: str, attr: str, minimum: int, maximum: int) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            v = p.integer(n, f"alerts.{key}", minimum, maximum)
            if v is not None:
                al[attr] = v
                al_nodes[attr] = n
        return parse

    def alerts(n: yaml.Node) -> None:
        p.mapping(n, "alerts", {
            "interval": al_interval,
            "per_rule": al_int("per_rule", "per_rule", 1, 100_000),
            "quota": al_int("quota", "quota", 1, 1_000_000),
            "max_aggregates": al_int("max_aggregates", "max_aggregates", 1, 10_000),
            "store_queue": al_int("store_queue", "store_queue", 100, 1_000_000)})

    def behavior(n: yaml.Node) -> None:
        out["behavior"] = parse_behavior_node(n, p, rule_names())

    def fleet(n: yaml.Node) -> None:
        out["fleet"] = parse_fleet_section(p, n)

    def sigma_installed(n: yaml.Node) -> None:
        if (b := p.boolean(n, "sigma_installed")) is not None:
            out["sigma_installed"] = b

    p.mapping(root, "the policy", {"version": version, "events": events, "store": store,
                                   "outputs": outputs, "metrics": metrics, "behavior": behavior,
                                   "alerts": alerts,
                                   "integrity": integrity, "shield": shield_node,
                                   "mode": mode, "default": default, "rules": rules,
                                   "sigma": sigma_dirs, "sigma_installed": sigma_installed,
                                   "fleet": fleet})
    if "version" not in values and isinstance(root, yaml.MappingNode):
        p.err(root, "the policy lacks 'version: 1'")
    hips_policy = build(p, root, hips.get("mode"), hips.get("default"), hips.get("rules", ()))
    if "per_rule" in al and al["per_rule"] > al.get("quota", AlertLimits.quota):
        p.err(al_nodes["per_rule"], f"alerts.per_rule ({al['per_rule']}) exceeds alerts.quota "
              f"({al.get('quota', AlertLimits.quota)})")
    if p.problems:
        raise PolicyError(p.problems)
    return AgentConfig(alerts=AlertLimits(**al), source=source, events=EventsConfig(**ev), store=StoreConfig(**st),
                  hips=hips_policy, sigma=tuple(sigma),
                  sigma_installed=bool(out.get("sigma_installed", True)), text=text, warnings=tuple(p.warnings),
                  outputs=out.get("outputs", ()), metrics=out.get("metrics"), fleet=out.get("fleet"),
                  behavior=out.get("behavior", BehaviorConfig()),
                  integrity=IntegrityConfig(**integ), shield=ShieldConfig(**shield))


def load_policy(path: Path | None) -> AgentConfig:
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
