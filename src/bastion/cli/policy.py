"""`bastion policy check|apply|show|diff`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from bastion.config import PolicyError, load_policy
from bastion.paths import DEFAULT_SOCKET, PIN_ROOT
from bastion.tier import Tier
from bastion.policy.compile import CompileError
from bastion.policy.manager import PolicyApplyError, PolicyManager

_SOCKET_OPT = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), envvar="BASTION_SOCKET",
    default=DEFAULT_SOCKET, show_default=True, help="The agent's control socket.")
_FILE = click.argument("file", type=click.Path(path_type=Path, dir_okay=False))


def _tier(tier: str | None) -> Tier:
    if tier:
        return Tier(tier)
    if os.geteuid() != 0:
        return Tier.COMPAT
    from bastion.assembly import prepare_host
    from bastion.enforce.tiers import probe

    prepare_host("bastion policy")
    return probe().tier


@click.group("policy")
def policy_group() -> None:
    """Check, apply, show and compare HIPS policies."""


@policy_group.command("check")
@_FILE
@click.option("--tier", type=click.Choice([t.value for t in Tier]),
              help="Judge enforceability for this tier (default: this kernel's).")
@click.option("--allow-degraded", is_flag=True, help="Accept rules this tier cannot enforce.")
@click.option("--json", "as_json", is_flag=True)
def check(file: Path, tier: str | None, allow_degraded: bool, as_json: bool) -> None:
    """Report every problem of FILE, and per rule the mechanism that enforces it here.

    Exit 0: it can be applied; 1: errors (or, in enforce mode, rules this kernel
    cannot enforce without --allow-degraded)."""
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        for p in exc.problems:
            click.echo(f"error: {p}", err=True)
        sys.exit(1)
    t = _tier(tier)
    mgr = PolicyManager(t)
    try:
        applied = mgr.prepare(policy, force=True, allow_degraded=allow_degraded)
    except (CompileError, PolicyApplyError) as exc:
        for line in str(exc).splitlines():
            click.echo(f"error: {line}", err=True)
        sys.exit(1)
    summary = applied.summary()
    summary.pop("text")
    summary["tier"] = t
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"{file}: mode {summary['mode']}, default {summary['default']}, "
                   f"{len(summary['rules'])} rules, tier {t}")
        for r in summary["rules"]:
            click.echo(f"  {r['name']} ({r['location']}): {r['action']} "
                       f"{', '.join(r['operations'])} for {r['subject']}")
            for op, mech in r["mechanisms"].items():
                click.echo(f"      {op:11} {mech}")
        for w in summary["warnings"]:
            click.echo(f"warning: {w}", err=True)
        for d in summary["degraded"]:
            click.echo(f"degraded: {d}", err=True)


def _send(socket_path: Path, cmd: str, **args: Any) -> dict[str, Any]:
    from bastion.control import request

    return request(socket_path, cmd, timeout=30.0, **args)


@policy_group.command("apply")
@_FILE
@_SOCKET_OPT
@click.option("--mode", type=click.Choice(["learn", "audit", "enforce"]),
              help="Override the file's mode (promote a learned profile).")
@click.option("--force", is_flag=True, help="Apply despite warnings.")
@click.option("--allow-degraded", is_flag=True, help="Accept rules this kernel cannot enforce.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The maintenance token: needed once tamper protection is on (proven by "
                   "challenge-response, never sent).")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True,
              envvar="BASTION_PIN_ROOT")
def apply(file: Path, socket_path: Path, mode: str | None, force: bool, allow_degraded: bool,
          token_file: Path | None, pin_root: Path) -> None:
    """Replace the running agent's policy with FILE, atomically.

    Once tamper protection is on, the agent refuses (and alerts) an apply without
    the maintenance token; every apply is alerted with the old and new policy hashes."""
    from bastion.control import request
    from bastion.guard.control import apply_subject, server_check, token_prover
    from bastion.guard.identity import ROLE_AGENT
    from bastion.guard.token import read_token_file

    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror}") from exc
    prover = None
    if token_file is not None:
        prover = token_prover(read_token_file(token_file),
                              apply_subject(text, mode, force, allow_degraded))
    resp = request(socket_path, "policy.apply", timeout=30.0,
                   verify_server=server_check(pin_root, (ROLE_AGENT,), socket_path), prover=prover,
                   text=text, source=str(file.resolve()), mode=mode, force=force,
                   allow_degraded=allow_degraded)
    if not resp.get("applied"):
        for line in str(resp.get("error", "refused")).splitlines():
            click.echo(f"error: {line}", err=True)
        click.echo("bastion: policy refused; the running policy is unchanged", err=True)
        sys.exit(1)
    click.echo(f"applied {file}: mode {resp['mode']}, generation {resp['generation']}, "
               f"{len(resp['rules'])} rules")
    for r in resp["rules"]:
        for op, mech in r["mechanisms"].items():
            click.echo(f"  {r['name']}: {r['action']} {op} -> {mech}")
    for d in resp["degraded"]:
        click.echo(f"degraded: {d}", err=True)


@policy_group.command("show")
@_SOCKET_OPT
@click.option("--json", "as_json", is_flag=True)
def show(socket_path: Path, as_json: bool) -> None:
    """The running policy."""
    cur = _send(socket_path, "policy.show").get("policy")
    if as_json:
        click.echo(json.dumps(cur, indent=2))
        return
    if cur is None:
        click.echo("no HIPS policy applied")
        return
    click.echo(f"# {cur['source']} — mode {cur['mode']}, generation {cur['generation']}")
    click.echo(cur["text"].rstrip("\n"))


def _rules_by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: {k: r[k] for k in ("subject", "operations", "action")} for r in summary["rules"]}


@policy_group.command("diff")
@_FILE
@_SOCKET_OPT
def diff(file: Path, socket_path: Path) -> None:
    """Compare FILE with the running policy, rule by rule (exit 1 when they differ)."""
    running = _send(socket_path, "policy.show").get("policy")
    new_policy = load_policy(file)
    new = PolicyManager(_tier(None)).prepare(new_policy, force=True, allow_degraded=True).summary()
    old_rules = _rules_by_name(running) if running else {}
    new_rules = _rules_by_name(new)
    changed = False
    if running is None or running["mode"] != new["mode"]:
        click.echo(f"~ mode: {running['mode'] if running else 'none'} -> {new['mode']}")
        changed = True
    if running is not None and running["default"] != new["default"]:
        click.echo(f"~ default: {running['default']} -> {new['default']}")
        changed = True
    for name in sorted(old_rules.keys() | new_rules.keys()):
        a, b = old_rules.get(name), new_rules.get(name)
        if a == b:
            continue
        changed = True
        if a is None:
            click.echo(f"+ {name}: {b}")
        elif b is None:
            click.echo(f"- {name}: {a}")
        else:
            click.echo(f"~ {name}: {a} -> {b}")
    if not changed:
        click.echo("no differences")
    sys.exit(1 if changed else 0)


@click.command("learn")
@click.option("--for", "selector", required=True, metavar="SELECTOR",
              help="Whose behaviour to learn: exe=PATH|GLOB, cgroup=PATH, user=NAME or uid=N.")
@click.option("--duration", required=True, metavar="D", help="How long to watch: 30s, 10m, 1h.")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the profile (a policy document in audit mode).")
@click.option("--replay", "replay_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Learn from a recorded trace instead of watching live.")
def learn_cmd(selector: str, duration: str, output: Path, replay_path: Path | None) -> None:
    """Watch what the selected programs do and write a least-privilege profile."""
    import pwd
    import signal
    import threading
    import time

    from bastion.errors import ConfigError
    from bastion.policy.learn import Learner, Selector
    from bastion.proctable import ProcessTable
    from bastion.pump import EventPump, Source
    from bastion.sensors.base import Sensor
    from bastion.sensors.replay import ReplaySensor
    from bastion.timefmt import parse_since

    sel = Selector.parse(selector)
    try:
        seconds = time.time() - parse_since(duration, time.time())
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--duration") from exc
    learner = Learner(sel, ProcessTable())
    if sel.kind == "user":
        try:
            learner.uid = pwd.getpwnam(sel.value).pw_uid
        except KeyError:
            raise click.BadParameter(f"no such user {sel.value!r}", param_hint="--for") from None
    sensor: Sensor
    if replay_path is not None:
        sensor = ReplaySensor(replay_path)
        if sel.kind == "cgroup":
            from bastion.assembly import cgroup_id_of

            learner.cgroup_id = cgroup_id_of(Path(sel.value))
    else:
        if os.geteuid() != 0:
            raise click.ClickException("live learning needs root (use --replay FILE otherwise)")
        from bastion.assembly import learn_sensor

        learner.procs.seed()
        sensor, scope = learn_sensor(Path(sel.value) if sel.kind == "cgroup" else None)
        if sel.kind == "cgroup":
            learner.cgroup_id = scope
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def observe(_src: Source, batch: list[Any]) -> None:
        for ev in batch:
            learner.observe(ev)

    sensor.open()
    click.echo(f"bastion: learning {selector} for {seconds:g}s", err=True)
    try:
        EventPump([Source(sensor.name, sensor.poll)], interval_s=0.05).run(
            stop, observe, deadline=time.monotonic() + seconds)
    finally:
        sensor.close()
    output.write_text(learner.profile())
    click.echo(f"bastion: learned from {learner.events} events of {selector}; wrote {output}", err=True)
