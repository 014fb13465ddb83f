"""The ``outputs:`` and ``metrics:`` sections of the policy document.

```yaml
outputs:
  - type: jsonl            # jsonl | ocsf | syslog | webhook
    path: /var/log/bastion/events.jsonl   # '-' is stdout
    max_size: 100MiB       # rotate past this (0: never); keeps `backups` old files
    backups: 5
    events: true           # also events (alerts always); default true for files
    queue: 10000           # bounded queue; a full queue drops and counts
  - type: syslog
    transport: tcp         # udp | tcp | unix
    address: 127.0.0.1:514 # host:port (udp/tcp); `path: /dev/log` for unix
    facility: local0
    format: native         # native | ocsf
  - type: webhook
    url: https://collector.example/bastion
    headers: {Authorization: "Bearer ..."}
    timeout: 10s
    retries: 3
    backoff: 500ms
metrics:
  listen: 127.0.0.1:9469
```

Every problem carries ``file:line:col`` from the YAML node marks, like
:mod:`bastion.config`.  Entry points:

- :func:`parse_outputs` (root mapping node of the policy document) ->
  ``(specs, metrics, problems)``; keys other than ``outputs``/``metrics`` are
  ignored, so it can run beside the policy parser over the same node;
- :func:`parse_outputs_section` / :func:`parse_metrics_section` for the value
  node of each key (for a parser that dispatches per key);
- :func:`parse_outputs_text` for a whole document.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Final

import yaml

from bastion.yamlparse import NodeParser, compose
from bastion.errors import ConfigError, Location
from bastion.outputs.base import DEFAULT_QUEUE
from bastion.outputs.formats import FORMATS
from bastion.outputs.syslog import FACILITIES, TRANSPORTS

OUTPUT_TYPES: Final = ("jsonl", "ocsf", "syslog", "webhook")
DEFAULT_METRICS_PORT: Final = 9469

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class OutputSpec:
    """One configured output.  Only the fields of its ``type`` matter."""

    type: str
    name: str
    events: bool
    queue: int = DEFAULT_QUEUE
    format: str = "native"
    # jsonl / ocsf
    path: Path | None = None          # None: stdout
    max_bytes: int = 0
    backups: int = 5
    # syslog
    transport: str = "udp"
    host: str = "127.0.0.1"
    port: int = 514
    socket_path: str = "/dev/log"
    facility: str = "local0"
    app_name: str = "bastion"
    max_message: int = 8192
    # webhook
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    batch: int = 500
    location: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MetricsSpec:
    host: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT


def _split_hostport(text: str, default_port: int | None) -> tuple[str, int] | str:
    """``host:port`` / ``[v6]:port`` / ``host`` -> (host, port) or an error string."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", text)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif ":" in text:
        return "an IPv6 address needs brackets: [::1]:9469"
    else:
        host, port_s = text, None
    if not host:
        return "the host is empty"
    if port_s is None:
        if default_port is None:
            return "a port is needed (host:port)"
        return host, default_port
    port = int(port_s) if port_s.isdigit() else -1
    if not 1 <= port <= 65535:
        return f"port {port_s!r} is not 1..65535"
    return host, port


# The outputs section is parsed with the policy's own location-aware parser.
_P = NodeParser


_COMMON: Final = ("type", "name", "events", "queue", "format")
_KEYS: Final = {
    "jsonl": _COMMON + ("path", "max_size", "backups"),
    "ocsf": ("type", "name", "events", "queue", "path", "max_size", "backups"),
    "syslog": _COMMON + ("transport", "address", "path", "facility", "app_name", "max_message"),
    "webhook": _COMMON + ("url", "headers", "timeout", "retries", "backoff", "batch"),
}


def _one_output(p: _P, node: yaml.Node, index: int, names: set[str]) -> OutputSpec | None:
    what = f"outputs[{index}]"
    if not isinstance(node, yaml.MappingNode):
        p.err(node, f"{what} must be a mapping with a 'type' ({', '.join(OUTPUT_TYPES)})")
        return None
    typ: str | None = None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "type":
            typ = p.choice(v, f"{what}.type", OUTPUT_TYPES)
            if typ is None:
                return None
    if typ is None:
        p.err(node, f"{what} lacks 'type' ({', '.join(OUTPUT_TYPES)})")
        return None
    what = f"outputs[{index}] ({typ})"
    vals: dict[str, object] = {"type": typ}
    before = len(p.problems)
    path_node: list[yaml.Node] = []

    def put(key: str, value: object) -> None:
        if value is not None:
            vals[key] = value

    def name(n: yaml.Node) -> None:
        s = p.scalar(n, f"{what}.name")
        if s is not None and not _NAME.match(s):
            p.err(n, f"{what}.name {s!r}: use 1-64 letters, digits, '_', '.', '-'")
        elif s is not None and s in names:
            p.err(n, f"{what}.name {s!r} is used by another output")
        else:
            put("name", s)

    def path(n: yaml.Node) -> None:
        s = p.scalar(n, f"{what}.path")
        path_node.append(n)
        if s is None:
            return
        if typ == "syslog":
            if not s.startswith("/"):
                p.err(n, f"{what}.path must be an absolute unix socket path")
            else:
                put("socket_path", s)
            return
        if s == "-":
            vals["path"] = None
            vals["stdout"] = True
        elif not s.startswith("/"):
            p.err(n, f"{what}.path must be absolute (or '-' for stdout)")
        else:
            put("path", Path(s))

    def address(n: yaml.Node) -> None:
        s = p.scalar(n, f"{what}.address")
        if s is None:
            return
        hp = _split_hostport(s, 514)
        if isinstance(hp, str):
            p.err(n, f"{what}.address {s!r}: {hp}")
        else:
            put("host", hp[0])
            put("port", hp[1])

    def url(n: yaml.Node) -> None:
        s = p.scalar(n, f"{what}.url")
        if s is None:
            return
        u = urllib.parse.urlsplit(s)
        if u.scheme not in ("http", "https") or not u.netloc:
            p.err(n, f"{what}.url {s!r} must be an http:// or https:// URL")
        else:
            put("url", s)

    def headers(n: yaml.Node) -> None:
        if not isinstance(n, yaml.MappingNode):
            p.err(n, f"{what}.headers must be a mapping of header: value")
            return
        out: list[tuple[str, str]] = []
        for k, v in n.value:
            ks, vs = p.scalar(k, f"{what}.headers key"), p.scalar(v, f"{what}.headers value")
            if ks is None or vs is None:
                continue
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", ks) or "\n" in vs or "\r" in vs:
                p.err(k, f"{what}.headers: {ks!r} is not a valid header")
                continue
            out.append((ks, vs))
        put("headers", tuple(out))

    known: dict[str, Callable[[yaml.Node], None]] = {
        "type": lambda n: None,
        "name": name,
        "events": lambda n: put("events", p.boolean(n, f"{what}.events")),
        "queue": lambda n: put("queue", p.integer(n, f"{what}.queue", 1, 10_000_000)),
        "format": lambda n: put("format", p.choice(n, f"{what}.format", FORMATS)),
        "path": path,
        "max_size": lambda n: put("max_bytes", p.size(n, f"{what}.max_size")),
        "backups": lambda n: put("backups", p.integer(n, f"{what}.backups", 0, 1000)),
        "transport": lambda n: put("transport", p.choice(n, f"{what}.transport", TRANSPORTS)),
        "address": address,
        "facility": lambda n: put("facility", p.choice(n, f"{what}.facility", list(FACILITIES))),
        "app_name": lambda n: put("app_name", p.scalar(n, f"{what}.app_name")),
        "max_message": lambda n: put("max_message", p.size(n, f"{what}.max_message")),
        "url": url,
        "headers": headers,
        "timeout": lambda n: put("timeout_s", p.duration(n, f"{what}.timeout")),
        "retries": lambda n: put("retries", p.integer(n, f"{what}.retries", 0, 100)),
        "backoff": lambda n: put("backoff_s", p.duration(n, f"{what}.backoff")),
        "batch": lambda n: put("batch", p.integer(n, f"{what}.batch", 1, 100_000)),
    }
    p.mapping(node, what, {k: known[k] for k in _KEYS[typ]})
    present = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    if typ in ("jsonl", "ocsf") and "path" not in present:
        p.err(node, f"{what} needs 'path' (a file, or '-' for stdout)")
    if typ == "webhook" and "url" not in present:
        p.err(node, f"{what} needs 'url'")
    if typ == "syslog" and vals.get("transport") == "unix" and "host" in vals:
        p.err(node, f"{what}: transport unix takes 'path', not 'address'")
    if typ == "syslog" and vals.get("transport", "udp") != "unix" and path_node:
        p.err(path_node[0], f"{what}: 'path' is for transport unix; use 'address' for udp/tcp")
    if len(p.problems) > before:
        return None
    vals.pop("stdout", None)
    if typ == "ocsf":
        vals["format"] = "ocsf"
    nm = str(vals.pop("name", None) or (typ if typ not in names else f"{typ}-{index}"))
    names.add(nm)
    vals.setdefault("events", typ in ("jsonl", "ocsf"))
    return OutputSpec(name=nm, location=p.loc(node), **vals)  # type: ignore[arg-type]



def _outputs(p: _P, node: yaml.Node) -> list[OutputSpec]:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return []
    if not isinstance(node, yaml.SequenceNode):
        p.err(node, "outputs must be a list of {type: ...} mappings")
        return []
    names: set[str] = set()
    out = []
    for i, item in enumerate(node.value):
        spec = _one_output(p, item, i, names)
        if spec is not None:
            out.append(spec)
    return out


def _metrics(p: _P, node: yaml.Node) -> MetricsSpec | None:
    vals: dict[str, object] = {}

    def listen(n: yaml.Node) -> None:
        s = p.scalar(n, "metrics.listen")
        if s is None:
            return
        hp = _split_hostport(s, DEFAULT_METRICS_PORT)
        if isinstance(hp, str):
            p.err(n, f"metrics.listen {s!r}: {hp}")
            return
        host, port = hp
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                p.err(n, f"metrics.listen {s!r}: the host must be an IP address or localhost")
                return
        vals["host"], vals["port"] = host, port

    before = len(p.problems)
    p.mapping(node, "metrics", {"listen": listen})
    if len(p.problems) > before:
        return None
    return MetricsSpec(**vals)  # type: ignore[arg-type]


def parse_outputs_section(node: yaml.Node, source: str) -> tuple[list[OutputSpec], list[ConfigError]]:
    """The value node of ``outputs:``."""
    p = _P(source)
    return _outputs(p, node), p.problems


def parse_metrics_section(node: yaml.Node, source: str) -> tuple[MetricsSpec | None, list[ConfigError]]:
    """The value node of ``metrics:``."""
    p = _P(source)
    return _metrics(p, node), p.problems


def parse_outputs(root: yaml.Node, source: str) -> tuple[list[OutputSpec], MetricsSpec | None, list[ConfigError]]:
    """From the policy's root mapping node: its ``outputs`` and ``metrics`` keys
    (other keys ignored).  No ``metrics`` key -> ``None`` (no endpoint)."""
    p = _P(source)
    specs: list[OutputSpec] = []
    metrics: MetricsSpec | None = None
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "outputs":
                specs = _outputs(p, v)
            elif isinstance(k, yaml.ScalarNode) and k.value == "metrics":
                metrics = _metrics(p, v)
    return specs, metrics, p.problems


def parse_outputs_text(text: str, source: str) -> tuple[list[OutputSpec], MetricsSpec | None, list[ConfigError]]:
    """A whole YAML document (e.g. the policy file's text)."""
    try:
        root = compose(text, source)
    except ConfigError as exc:
        return [], None, [exc]
    if root is None:
        return [], None, []
    return parse_outputs(root, source)


__all__ = ["OutputSpec", "MetricsSpec", "OUTPUT_TYPES", "parse_outputs", "parse_outputs_section",
           "parse_metrics_section", "parse_outputs_text"]
