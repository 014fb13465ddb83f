"""The ``bastion`` command: thin commands over the library.

Every expected failure is a :class:`~bastion.errors.BastionError`; ``main``
prints it as one line (``bastion: <where>: <what>``) and exits 1.  Usage
errors (unknown flag, bad value) exit 2 through click.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from bastion import __version__
from bastion.errors import BastionError, KernelError
from bastion.paths import DEFAULT_DATA_DIR, DEFAULT_SOCKET, PIN_ROOT

from bastion.cli.behavior import rollback_cmd
from bastion.cli.guard import GUARDIAN_SOCKET, guardian_cmd, require_token, set_token_cmd, stop_cmd
from bastion.cli.integrity import integrity_group
from bastion.cli.policy import learn_cmd, policy_group
from bastion.cli.service import install_cmd, uninstall_cmd
from bastion.cli.sigma import sigma_group
from bastion.cli.query import alerts_cmd, events_cmd

log = logging.getLogger("bastion")

_SOCKET_OPT = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), envvar="BASTION_SOCKET",
    default=DEFAULT_SOCKET, show_default=True, help="The agent's control socket.",
)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise KernelError(f"{what} needs root (BPF programs and pins)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bastion")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for libbpf debug).")
def cli(verbose: int) -> None:
    """Bastion: host intrusion prevention enforced in the kernel through BPF LSM."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--policy", "policy_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Policy YAML (default: the embedded default policy).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Store directory.")
@_SOCKET_OPT
@click.option("--json", "feed_json", is_flag=True, help="Print the live alert feed as JSON lines.")
@click.option("--quiet", is_flag=True, help="No live alert feed.")
@click.option("--replay", "replay_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Read events from a recorded JSONL trace instead of the kernel; stops at its end.")
@click.option("--sigma", "sigma_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Evaluate the Sigma rules under DIR live (repeatable; adds to the policy's sigma list).")
@click.option("--force", is_flag=True, help="Apply the policy despite its warnings.")
@click.option("--maintenance-token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Set the maintenance token for `bastion stop` (only its scrypt hash is kept).")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True)
@click.option("--test-deadline", type=click.FloatRange(min=1), hidden=True,
              help="Tests only: enforcement expires by itself after this many seconds.")
@click.option("--allow-degraded", is_flag=True,
              help="Accept rules this kernel cannot enforce (audited only; shown in status, alerted).")
def run(policy_path: Path | None, data_dir: Path, socket_path: Path, feed_json: bool, quiet: bool,
        replay_path: Path | None, sigma_dirs: tuple[Path, ...], force: bool, allow_degraded: bool,
        maintenance_token_file: Path | None, pin_root: Path, test_deadline: float | None) -> None:
    """Run the agent in the foreground until SIGINT/SIGTERM."""
    from bastion.agent import Agent
    from bastion.config import load_policy
    from bastion.enforce.tiers import TierReport, probe
    from bastion.sensors.base import Sensor
    from bastion.sensors.bpf import BpfSensor
    from bastion.sensors.replay import ReplaySensor
    from bastion.store.db import Retention, Store

    from bastion.guard.fault import arm_from_env

    policy = load_policy(policy_path)
    arm_from_env()  # tests only: BASTION_TEST_FAULT_AFTER simulates a crash
    started = time.monotonic()
    report: TierReport | None = None
    sensor: Sensor
    if replay_path is not None:
        sensor = ReplaySensor(replay_path)
    else:
        _need_root("bastion run")
        report = probe()
        if not report.can_run:
            raise KernelError("this kernel cannot run Bastion: " + "; ".join(report.problems))
        sensor = BpfSensor(classes=policy.events.classes, self_tgid=os.getpid(),
                           ring_bytes=policy.events.ring_bytes)
    policies = None
    if report is not None:
        from bastion.policy.manager import PolicyManager
        policies = PolicyManager(report.tier,
                                 open_backends=_backends(report.tier, pin_root, test_deadline))
        policies.prepare(policy, force=force, allow_degraded=allow_degraded)  # refuse before attaching
    store = Store.open(data_dir, retention=Retention(
        max_age_s=policy.store.max_age_s, max_events=policy.store.max_events,
        max_bytes=policy.store.max_bytes))
    extra_rules = _sigma_rules(tuple(policy.sigma) + sigma_dirs)
    from bastion.metrics import Metrics
    from bastion.outputs import build_manager

    outputs = build_manager(list(policy.outputs)) if policy.outputs else None
    metrics = None
    if policy.metrics is not None:
        metrics = Metrics()
        if outputs is not None:
            metrics.watch_outputs(outputs.stats)
        port = metrics.serve(policy.metrics.host, policy.metrics.port)
        click.echo(f"bastion: metrics on http://{policy.metrics.host}:{port}/metrics", err=True)
    quarantine = None
    if report is not None:
        from bastion.respond.quarantine import Quarantine

        quarantine = Quarantine(tier=report.tier, self_tgid=os.getpid(),
                                deadline_s=test_deadline or 0.0)
    shadow = None
    if report is not None and policy.shield.protect:
        from bastion.respond.shadow import ShadowKeeper

        shadow = ShadowKeeper(list(policy.shield.protect), data_dir / "shadow",
                              max_bytes=policy.shield.max_bytes,
                              trusted_exes=frozenset(policy.shield.trusted),
                              self_tgid=os.getpid(), deadline_s=test_deadline)
    agent = Agent(policy=policy, sensors=[sensor], store=store, tier=report, extra_rules=extra_rules,
                  outputs=outputs, metrics=metrics, quarantine=quarantine, shadow=shadow,
                  socket_path=socket_path, feed=None if quiet else sys.stdout, feed_json=feed_json,
                  policies=policies, apply_opts={"force": force, "allow_degraded": allow_degraded})
    agent.test_deadline = test_deadline
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if maintenance_token_file is not None:
        from bastion.guard.token import TokenStore, read_token_file

        TokenStore(data_dir).set_token(read_token_file(maintenance_token_file))
    from bastion.guard.control import agent_stop_handler

    agent.add_handler("stop", agent_stop_handler(data_dir, on_stop=stop.set, alert=agent.raise_alert))
    ready = threading.Thread(target=_announce, args=(agent, sensor, report.tier if report else "replay",
                                                     started, stop), daemon=True)
    ready.start()
    try:
        summary = agent.run(stop)
    finally:
        store.close()
    click.echo(summary.line(), err=True)


def _sigma_rules(dirs: tuple[Path, ...]) -> list[Any]:
    """Sigma rules for the engine; a malformed file is reported and the rest load."""
    if not dirs:
        return []
    from bastion.detect.sigma.rules import load_sigma

    res = load_sigma(list(dirs))
    for err in res.errors:
        click.echo(f"bastion: sigma: {err}", err=True)
    click.echo(f"bastion: sigma: {len(res.rules)} rules loaded, {len(res.unsupported)} unsupported "
               f"(bastion sigma check lists them), {len(res.errors)} files with errors", err=True)
    return list(res.engine_rules())


def _backends(tier: str, pin_root: Path, deadline_s: float | None) -> Any:
    """A factory for the HIPS enforcement backends of this tier (loaded on first need)."""

    def open_backends() -> Any:
        from bastion.enforce.hips_kernel import HipsKernel

        pin_dir = pin_root / "hips"
        if (pin_dir / "links").is_dir() and any((pin_dir / "links").iterdir()):
            # a previous agent's enforcement is still in force: adopt it, no gap
            kernel = HipsKernel.adopt(pin_dir)
            click.echo(f"bastion: adopted the pinned HIPS enforcement under {pin_dir}", err=True)
        else:
            kernel = HipsKernel(tier, pin_dir=pin_dir, self_tgid=os.getpid(), deadline_s=deadline_s)
            kernel.open()
        files = None
        if tier != "lsm":
            from bastion.enforce.fanotify import FanotifyEnforcer

            files = FanotifyEnforcer(self_tgid=os.getpid(), deadline_s=deadline_s)
            try:
                files.open()
                files.start()
            except BaseException:
                kernel.close()
                raise
        return kernel, files

    return open_backends


def _announce(agent: Any, sensor: Any, tier: str, started: float, stop: threading.Event) -> None:
    while not stop.is_set() and not agent.ready.wait(0.05):
        pass
    if agent.ready.is_set():
        click.echo(
            f"bastion: running (pid {os.getpid()}, tier {tier}, "
            f"{len(getattr(sensor, 'attached', ()))} programs, "
            f"policy {agent.policy.source}, ready in {time.monotonic() - started:.2f}s)", err=True)


@cli.command()
@_SOCKET_OPT
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(socket_path: Path, as_json: bool) -> None:
    """Ask the running agent for its status."""
    from bastion.control import request

    from bastion.guard.control import guardian_status

    resp = request(socket_path, "status")
    resp.pop("ok", None)
    resp["tamper_protection"] = guardian_status(GUARDIAN_SOCKET).get("tamper_protection", "off")
    if as_json:
        click.echo(json.dumps(resp, indent=2))
        return
    caps = resp.pop("capabilities", {})
    for k, v in resp.items():
        click.echo(f"{k:18} {v}")
    for name, c in caps.items():
        click.echo(f"{'cap ' + name:18} {'yes' if c['available'] else 'NO '} {c['mechanism']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """What this kernel lets Bastion enforce, and how to get the rest."""
    from bastion.enforce.tiers import probe

    _need_root("bastion doctor")
    report = probe()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(f"kernel   {report.kernel}")
        click.echo(f"LSMs     {','.join(report.lsm_list) or '(unknown)'}")
        click.echo(f"tier     {report.tier}")
        for c in report.capabilities:
            mark = "yes" if c.available else "NO "
            click.echo(f"  {c.name:26} {mark} {c.mechanism}")
            if c.detail:
                click.echo(f"  {'':26}     {c.detail}")
            if c.remedy and (not c.available or report.tier != "lsm"):
                label = "fix" if not c.available else "for in-kernel deny"
                click.echo(f"  {'':26}     {label}: {c.remedy}")
        for p in report.problems:
            click.echo(f"problem: {p}")
    if not report.can_run:
        sys.exit(1)


@cli.command()
@click.argument("output", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--duration", type=click.FloatRange(min=0.1), help="Stop after this many seconds.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
@click.option("--class", "classes", multiple=True, help="Event class to record (repeatable; default all).")
def record(output: Path, duration: float | None, count: int | None, classes: tuple[str, ...]) -> None:
    """Write live events to OUTPUT as JSON lines (the replay format); '-' is stdout."""
    from bastion.events import to_json
    from bastion.proctable import ProcessTable
    from bastion.sensors.bpf import EVENT_CLASSES, BpfSensor

    _need_root("bastion record")
    sensor = BpfSensor(classes=classes or tuple(EVENT_CLASSES), self_tgid=os.getpid())
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs = ProcessTable()
    procs.seed()
    n = 0
    fh = sys.stdout if str(output) == "-" else output.open("w", encoding="utf-8")
    sensor.open()
    click.echo(f"bastion: recording to {output} ({len(sensor.attached)} programs)", err=True)
    deadline = time.monotonic() + duration if duration else None
    try:
        while not stop.is_set():
            batch = sensor.poll(0.02) or []
            for ev in batch:
                procs.update(ev)
                fh.write(json.dumps(to_json(procs.enrich(ev))) + "\n")
                n += 1
                if count and n >= count:
                    stop.set()
                    break
            if deadline and time.monotonic() >= deadline:
                break
    finally:
        sensor.close()
        if fh is not sys.stdout:
            fh.close()
    click.echo(f"bastion: recorded {n} events, {sensor.drops()} dropped", err=True)


@cli.command()
@click.option("--emergency", is_flag=True, required=True,
              help="Confirm: remove every Bastion pin and the programs they hold.")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, show_default=True,
              hidden=True)
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The maintenance token (needed once tamper protection is on).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Store directory (holds the token's hash).")
def reset(emergency: bool, pin_root: Path, token_file: Path | None, data_dir: Path) -> None:
    """Break-glass: remove every Bastion BPF pin (programs, links, maps)."""
    from bastion.kernel import bpffs

    _need_root("bastion reset")
    require_token(token_file, what="reset", data_dir=data_dir, pin_root=pin_root)
    removed: list[Path] = []
    parent = pin_root.parent
    if parent.is_dir():
        for p in sorted(parent.iterdir()):
            if p.name == pin_root.name or p.name.startswith(pin_root.name + "-"):
                removed += bpffs.remove_pins(p)
    click.echo(f"bastion: removed {len(removed)} pins and directories under {parent}/{pin_root.name}*")


@cli.group("log")
def log_group() -> None:
    """The tamper-evident alert log."""


@log_group.command("verify")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Store directory.")
@click.option("--json", "as_json", is_flag=True)
def log_verify(data_dir: Path, as_json: bool) -> None:
    """Check the alert chain; name every edited, deleted, inserted or reordered record."""
    from bastion.store.db import Store

    with Store.open(data_dir, readonly=True) as store:
        n, problems = store.verify_chain()
    if as_json:
        click.echo(json.dumps({"alerts": n, "intact": not problems,
                               "problems": [{"seq": p.seq, "kind": p.kind, "detail": p.detail}
                                            for p in problems]}, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        click.echo(f"{n} alerts: " + ("chain intact" if not problems else f"{len(problems)} problems"))
    sys.exit(1 if problems else 0)


cli.add_command(events_cmd)
cli.add_command(alerts_cmd)
cli.add_command(policy_group)
cli.add_command(learn_cmd)
cli.add_command(rollback_cmd)
cli.add_command(guardian_cmd)
cli.add_command(stop_cmd)
cli.add_command(set_token_cmd)
cli.add_command(sigma_group)
cli.add_command(integrity_group)
cli.add_command(install_cmd)
cli.add_command(uninstall_cmd)


def main() -> None:
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("bastion: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BastionError as exc:
        click.echo(f"bastion: {exc}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
