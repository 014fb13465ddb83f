"""``bastion fleet keygen|init|push|status``: the admin side of the NATS fleet."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import click

from bastion.errors import BastionError


def _conn_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                     help="A policy file whose `fleet:` section says how to connect."),
        click.option("--server", "servers", multiple=True, metavar="URL",
                     help="nats:// or tls:// URL (repeatable; overrides --config)."),
        click.option("--creds", type=click.Path(path_type=Path, dir_okay=False, exists=True),
                     help="NATS credentials file."),
        click.option("--user", help="NATS user (password from --password or BASTION_FLEET_PASSWORD)."),
        click.option("--password", envvar="BASTION_FLEET_PASSWORD", help="NATS password."),
        click.option("--token", envvar="BASTION_FLEET_TOKEN", help="NATS token."),
        click.option("--tls-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True)),
        click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True)),
        click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True)),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _conn(kw: dict[str, Any]) -> Any:
    from bastion.fleet.config import ConnSpec, TlsSpec, parse_fleet_text

    base = ConnSpec(name="bastion-admin")
    cfg = kw.pop("config_path", None)
    if cfg is not None:
        spec = parse_fleet_text(cfg.read_text(encoding="utf-8"), str(cfg))
        if spec is None:
            raise click.UsageError(f"{cfg} has no fleet: section")
        base = spec.conn
    servers = tuple(kw.pop("servers", ()) or ())
    tls = None
    ca, cert, key = kw.pop("tls_ca", None), kw.pop("tls_cert", None), kw.pop("tls_key", None)
    if ca or cert or key or any(s.startswith("tls://") for s in servers):
        tls = TlsSpec(ca=ca, cert=cert, key=key)
    user, password = kw.pop("user", None), kw.pop("password", None)
    token, creds = kw.pop("token", None), kw.pop("creds", None)
    if user is not None and password is None:
        raise click.UsageError("--user needs --password (or BASTION_FLEET_PASSWORD)")
    return ConnSpec(servers=servers or base.servers, user=user or base.user,
                    password=password if user else base.password,
                    token=token or base.token, creds=creds or base.creds,
                    tls=tls or base.tls, name="bastion-admin")


@click.group("fleet")
def fleet_group() -> None:
    """Many hosts over NATS JetStream: signed policy rollout, host status (docs/deploy.md)."""


@fleet_group.command("keygen")
@click.argument("private_key", type=click.Path(path_type=Path, dir_okay=False))
def keygen_cmd(private_key: Path) -> None:
    """Write a new ed25519 signing key (0600) and PRIVATE_KEY.pub for the hosts.

    Keep the private key off the hosts: whoever holds it can push policy to all of them."""
    from bastion.fleet.sign import keygen

    try:
        pub = keygen(private_key)
    except BastionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"private key {private_key} (keep it off the hosts)\npublic key  {pub} "
               "(fleet.public_key on every host)")


@fleet_group.command("init")
@_conn_options
@click.option("--prefix", default="bastion", show_default=True, help="Subject prefix.")
def init_cmd(prefix: str, **kw: Any) -> None:
    """Create the alert stream and the policy and hosts buckets (idempotent)."""
    from bastion.fleet import admin

    try:
        for line in admin.run(admin.init(_conn(kw), prefix=prefix)):
            click.echo(f"ready: {line}")
    except BastionError as exc:
        raise click.ClickException(str(exc)) from exc


@fleet_group.command("push")
@click.argument("policy_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path, dir_okay=False,
              exists=True), help="The fleet's private signing key (bastion fleet keygen).")
@click.option("--version", "version", type=click.IntRange(min=1),
              help="Policy version (default: the fleet's current version + 1).")
@_conn_options
def push_cmd(policy_file: Path, key_path: Path, version: int | None, **kw: Any) -> None:
    """Validate POLICY_FILE, sign it and publish it to every agent."""
    from bastion.config import parse_policy
    from bastion.fleet import admin

    text = policy_file.read_text(encoding="utf-8")
    try:
        parse_policy(text, str(policy_file))    # refused here already if invalid
        pushed = admin.run(admin.push(_conn(kw), text, key_path, version=version))
    except BastionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pushed {policy_file} as version {pushed.version} (sha256 {pushed.sha256}, "
               f"revision {pushed.revision})")


def _ago(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "?"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.1f}h ago"


@fleet_group.command("status")
@_conn_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per host.")
def status_cmd(as_json: bool, **kw: Any) -> None:
    """Every host: applied policy version and hash, tier, last seen, refusals."""
    from bastion.cli.query import Table
    from bastion.fleet import admin

    try:
        rows = admin.run(admin.hosts(_conn(kw)))
    except BastionError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, separators=(",", ":")))
        return
    table = Table(("HOST", "TIER", "POLICY", "SHA256", "LAST SEEN", "QUEUED", "LAST REFUSAL"),
                  right=frozenset({5}))
    lines = table.render([(str(r["host"]), str(r.get("tier", "?")),
                           f"v{r.get('policy_version', 0)}" if r.get("policy_version") else "local",
                           str(r.get("policy_sha256", ""))[:12] or "-",
                           _ago(r.get("last_seen_unix")), str(r.get("queued", 0)),
                           str((r.get("refused") or {}).get("reason", "-"))) for r in rows])
    for line in lines:
        click.echo(line)
    if not rows:
        click.echo("no hosts have reported yet")
