"""The ``fleet:`` section of the policy document: where the NATS servers are, how
this host authenticates and what it publishes and watches.

```yaml
fleet:
  servers: [tls://nats.example:4222]   # nats:// or tls:// URLs
  host: web-01                 # default: the hostname (letters, digits, '_', '-')
  creds: /etc/bastion/fleet.creds     # or user + password, or token (one of them)
  tls: {ca: /etc/bastion/nats-ca.pem, cert: /etc/bastion/host.pem, key: /etc/bastion/host.key}
  subject_prefix: bastion      # alerts go to <prefix>.<host>.alerts.<severity>
  events: false                # also events (<prefix>.<host>.events.<type>)
  queue: 100000                # records the on-disk queue holds during an outage
  public_key: /etc/bastion/fleet-policy.pub   # policy rollout on (ed25519, PEM)
  policy_bucket: bastion-policy
  hosts_bucket: bastion-hosts
  heartbeat: 30s
```

Every problem names ``file:line:col``; files named here must exist and be
readable when the policy is parsed (the agent reads them as root at start).
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final

import yaml

from bastion.errors import Location
from bastion.yamlparse import NodeParser, compose

DEFAULT_PREFIX: Final = "bastion"
POLICY_BUCKET: Final = "bastion-policy"
HOSTS_BUCKET: Final = "bastion-hosts"
POLICY_KEY: Final = "policy"
STREAM: Final = "BASTION"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BUCKET = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def subject_token(text: str) -> str:
    """``text`` as one NATS subject token (dots, spaces, wildcards replaced)."""
    out = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64]
    return out or "_"


@dataclass(frozen=True)
class TlsSpec:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class ConnSpec:
    """How to reach and authenticate to the NATS servers."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: Path | None = None
    tls: TlsSpec | None = None
    name: str = "bastion"


@dataclass(frozen=True)
class FleetSpec:
    conn: ConnSpec
    host: str
    subject_prefix: str = DEFAULT_PREFIX
    alerts: bool = True
    events: bool = False
    queue_max: int = 100_000
    public_key: Path | None = None
    policy_bucket: str = POLICY_BUCKET
    policy_key: str = POLICY_KEY
    hosts_bucket: str = HOSTS_BUCKET
    heartbeat_s: float = 30.0
    location: Location | None = field(default=None, compare=False)

    def subject(self, kind: str, cls: str) -> str:
        return f"{self.subject_prefix}.{self.host}.{kind}.{subject_token(cls)}"


def default_host() -> str:
    """``BASTION_FLEET_HOST`` (the DaemonSet sets the node name), else the short hostname."""
    env = os.environ.get("BASTION_FLEET_HOST", "")
    return subject_token(env or socket.gethostname().split(".")[0])


def _readable(p: NodeParser, n: yaml.Node, what: str) -> Path | None:
    s = p.scalar(n, what)
    if s is None:
        return None
    if not s.startswith("/"):
        p.err(n, f"{what} must be an absolute path")
        return None
    path = Path(s)
    if not path.is_file():
        p.err(n, f"{what}: {s} does not exist or is not a file")
        return None
    if not os.access(path, os.R_OK):
        p.err(n, f"{what}: {s} is not readable")
        return None
    return path


def parse_fleet_section(p: NodeParser, node: yaml.Node) -> FleetSpec | None:
    """The value node of ``fleet:`` (problems go to ``p``)."""
    before = len(p.problems)
    conn: dict[str, Any] = {}
    vals: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}

    def servers(n: yaml.Node) -> None:
        out = []
        for s, item in p.strings(n, "fleet.servers"):
            u = urllib.parse.urlsplit(s)
            if u.scheme not in ("nats", "tls") or not u.hostname:
                p.err(item, f"fleet.servers: {s!r} must be a nats:// or tls:// URL")
                continue
            try:
                u.port
            except ValueError:
                p.err(item, f"fleet.servers: {s!r} has a bad port")
                continue
            if u.username or u.password:
                p.err(item, f"fleet.servers: {s!r}: put credentials in user/password, token or "
                      "creds, not in the URL")
                continue
            out.append(s)
        conn["servers"] = tuple(out)

    def host(n: yaml.Node) -> None:
        s = p.scalar(n, "fleet.host")
        if s is not None and not _TOKEN.match(s):
            p.err(n, f"fleet.host {s!r}: use 1-64 letters, digits, '_', '-' (one subject token)")
        elif s is not None:
            vals["host"] = s

    def secret(key: str) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            nodes[key] = n
            s = p.scalar(n, f"fleet.{key}")
            if s is not None and not s:
                p.err(n, f"fleet.{key} is empty")
            elif s is not None:
                conn[key] = s
        return parse

    def creds(n: yaml.Node) -> None:
        nodes["creds"] = n
        if (path := _readable(p, n, "fleet.creds")) is not None:
            conn["creds"] = path

    def tls_file(key: str) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            nodes[f"tls.{key}"] = n
            if (path := _readable(p, n, f"fleet.tls.{key}")) is not None:
                tls[key] = path
        return parse

    def tls_node(n: yaml.Node) -> None:
        nodes["tls"] = n
        p.mapping(n, "fleet.tls", {"ca": tls_file("ca"), "cert": tls_file("cert"),
                                   "key": tls_file("key")})

    def prefix(n: yaml.Node) -> None:
        s = p.scalar(n, "fleet.subject_prefix")
        if s is not None and not _TOKEN.match(s):
            p.err(n, f"fleet.subject_prefix {s!r}: one subject token (letters, digits, '_', '-')")
        elif s is not None:
            vals["subject_prefix"] = s

    def flag(key: str) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            if (b := p.boolean(n, f"fleet.{key}")) is not None:
                vals[key] = b
        return parse

    def bucket(key: str) -> Callable[[yaml.Node], None]:
        def parse(n: yaml.Node) -> None:
            s = p.scalar(n, f"fleet.{key}")
            if s is not None and not _BUCKET.match(s):
                p.err(n, f"fleet.{key} {s!r}: letters, digits, '_', '-'")
            elif s is not None:
                vals[key] = s
        return parse

    def queue(n: yaml.Node) -> None:
        if (i := p.integer(n, "fleet.queue", 100, 100_000_000)) is not None:
            vals["queue_max"] = i

    def public_key(n: yaml.Node) -> None:
        if (path := _readable(p, n, "fleet.public_key")) is None:
            return
        from bastion.fleet.sign import load_public_key
        from bastion.errors import BastionError

        try:
            load_public_key(path)
        except BastionError as exc:
            p.err(n, f"fleet.public_key: {exc.message}")
            return
        vals["public_key"] = path

    def heartbeat(n: yaml.Node) -> None:
        d = p.duration(n, "fleet.heartbeat")
        if d is not None and not 1.0 <= d <= 3600.0:
            p.err(n, "fleet.heartbeat must be between 1s and 1h")
        elif d is not None:
            vals["heartbeat_s"] = d

    p.mapping(node, "fleet", {
        "servers": servers, "host": host, "user": secret("user"), "password": secret("password"),
        "token": secret("token"), "creds": creds, "tls": tls_node, "subject_prefix": prefix,
        "alerts": flag("alerts"), "events": flag("events"), "queue": queue,
        "public_key": public_key, "policy_bucket": bucket("policy_bucket"),
        "policy_key": bucket("policy_key"), "hosts_bucket": bucket("hosts_bucket"),
        "heartbeat": heartbeat})
    if not isinstance(node, yaml.MappingNode):
        return None
    present = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    if "servers" not in present:
        p.err(node, "fleet needs 'servers' (nats:// or tls:// URLs)")
    methods = sorted((m for m in ("user", "token", "creds") if m in present),
                     key=lambda m: nodes[m].start_mark.line)
    if len(methods) > 1:
        p.err(nodes[methods[1]], f"fleet: use one of user/password, token, creds (not "
              f"{' and '.join(methods)})")
    if ("user" in present) != ("password" in present):
        p.err(nodes.get("user") or nodes["password"], "fleet: user and password go together")
    if ("cert" in tls) != ("key" in tls) and "tls" in nodes:
        p.err(nodes["tls"], "fleet.tls: cert and key go together (client certificate)")
    if len(p.problems) > before:
        return None
    t = TlsSpec(**tls) if "tls" in present else None
    if t is None and any(s.startswith("tls://") for s in conn.get("servers", ())):
        t = TlsSpec()
    host_name = vals.pop("host", None) or default_host()
    return FleetSpec(conn=ConnSpec(tls=t, name=f"bastion-{host_name}", **conn), host=host_name,
                     location=p.loc(node), **vals)


def parse_fleet_text(text: str, source: str) -> FleetSpec | None:
    """The ``fleet`` section of a whole policy document (for the CLI's ``--config``);
    None when it has none.  Raises PolicyError-like ConfigError on problems."""
    from bastion.config import PolicyError
    from bastion.errors import ConfigError

    p = NodeParser(source)
    try:
        root = compose(text, source)
    except ConfigError as exc:
        raise PolicyError([exc]) from exc
    spec = None
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "fleet":
                spec = parse_fleet_section(p, v)
    if p.problems:
        raise PolicyError(p.problems)
    return spec


__all__ = ["ConnSpec", "FleetSpec", "TlsSpec", "parse_fleet_section", "parse_fleet_text",
           "subject_token", "default_host", "STREAM", "POLICY_BUCKET", "HOSTS_BUCKET", "POLICY_KEY"]


def referenced_files(policy_paths: list[Path] | tuple[Path, ...]) -> list[Path]:
    """The files the ``fleet:`` sections of these policy files name (public key, creds,
    TLS): the guardian protects them with the policy (a replaced public key would let
    its holder push policy at the next start)."""
    out: list[Path] = []
    for path in policy_paths:
        if not path.is_file():
            continue
        spec = parse_fleet_text(path.read_text(encoding="utf-8"), str(path))
        if spec is None:
            continue
        tls = spec.conn.tls or TlsSpec()
        out += [f for f in (spec.public_key, spec.conn.creds, tls.ca, tls.cert, tls.key)
                if f is not None]
    return out
