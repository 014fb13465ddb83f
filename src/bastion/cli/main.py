"""The ``bastion`` command: thin commands over the library.

Every expected failure is a :class:`~bastion.errors.BastionError`; ``main``
prints it as one line (``bastion: <where>: <what>``) and exits 1.  Usage
errors (unknown flag, bad value) exit 2 through click.
"""

from __future__ import annotations

import importlib
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
from bastion.textsafe import clean, log_to_stderr
from bastion.tier import Tier

from bastion.cli.guard import GUARDIAN_SOCKET, require_token

log = logging.getLogger("bastion")

_SOCKET_OPT = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), envvar="BASTION_SOCKET",
    default=DEFAULT_SOCKET, show_default=True, help="The agent's control socket.",
)


def _need_root(what: str) -> None:
    from bastion.assembly import prepare_host

    prepare_host(what)


#: Commands of their own modules, imported only when named (``bastion status`` took
#: 0.5 s of imports on the development host, 12-25 s in the TCG guest: the behaviour
#: rules, the shadow keeper, httpx and the policy compiler for one socket request).
_LAZY: dict[str, tuple[str, str]] = {
    "events": ("bastion.cli.query", "events_cmd"),
    "alerts": ("bastion.cli.query", "alerts_cmd"),
    "fleet": ("bastion.cli.fleet", "fleet_group"),
    "policy": ("bastion.cli.policy", "policy_group"),
    "learn": ("bastion.cli.policy", "learn_cmd"),
    "rollback": ("bastion.cli.behavior", "rollback_cmd"),
    "guardian": ("bastion.cli.guard", "guardian_cmd"),
    "stop": ("bastion.cli.guard", "stop_cmd"),
    "set-token": ("bastion.cli.guard", "set_token_cmd"),
    "maintenance": ("bastion.cli.guard", "maintenance_group"),
    "sigma": ("bastion.cli.sigma", "sigma_group"),
    "integrity": ("bastion.cli.integrity", "integrity_group"),
    "install": ("bastion.cli.service", "install_cmd"),
    "uninstall": ("bastion.cli.service", "uninstall_cmd"),
}


class _LazyGroup(click.Group):
    """A group whose commands in :data:`_LAZY` are imported when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in _LAZY:
            return cmd
        module, attr = _LAZY[cmd_name]
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command) and cmd.name == cmd_name, (module, attr)
        self.add_command(cmd)
        return cmd


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bastion")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for libbpf debug).")
def cli(verbose: int) -> None:
    """Bastion: host intrusion prevention enforced in the kernel through BPF LSM."""
    level = logging.WARNING - 10 * verbose
    log_to_stderr(max(level, logging.DEBUG))


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
@click.option("--replay-outputs", is_flag=True,
              help="With --replay: send its alerts to the policy's outputs too (a SIEM pipeline "
                   "test; off by default: a recording's alerts are not this host's).")
@click.option("--sigma", "sigma_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Evaluate the Sigma rules under DIR live (repeatable; adds to the policy's sigma list).")
@click.option("--force", is_flag=True, help="Apply the policy despite its warnings.")
@click.option("--maintenance-token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Set the maintenance token for `bastion stop` (only its scrypt hash is kept).")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True)
@click.option("--test-deadline", type=click.FloatRange(min=1), hidden=True,
              help="Tests only: enforcement expires by itself after this many seconds.")
@click.option("--test-cgroup-id", type=click.IntRange(min=1), hidden=True,
              help="Tests only: BPF loads are refused only in this cgroup (needs --test-deadline).")
@click.option("--allow-degraded", is_flag=True,
              help="Accept rules this kernel cannot enforce (audited only; shown in status, alerted).")
@click.option("--keep-pins", is_flag=True,
              help="Leave pinned HIPS enforcement in force after a clean stop (the guardian's agent).")
def run(policy_path: Path | None, data_dir: Path, socket_path: Path, feed_json: bool, quiet: bool,
        replay_path: Path | None, replay_outputs: bool, sigma_dirs: tuple[Path, ...], force: bool,
        allow_degraded: bool,
        maintenance_token_file: Path | None, pin_root: Path, test_deadline: float | None,
        test_cgroup_id: int | None, keep_pins: bool) -> None:
    """Run the agent in the foreground until SIGINT/SIGTERM (unprotected: development, replay).

    Production runs it under `bastion guardian` (what `make run` starts)."""
    from bastion.assembly import AgentOptions, build_agent
    from bastion.config import load_policy
    from bastion.guard.control import agent_stop_handler
    from bastion.guard.fault import arm_from_env

    if test_cgroup_id is not None and test_deadline is None:
        raise click.UsageError("--test-cgroup-id needs --test-deadline")
    if replay_outputs and replay_path is None:
        raise click.UsageError("--replay-outputs needs --replay")
    sigma_data_dir: Path | None = None
    if replay_path is not None:
        if click.get_current_context().get_parameter_source("data_dir") in _DEFAULTED:
            sigma_data_dir = data_dir    # the live agent's installed Sigma set, read only
        data_dir, socket_path = _replay_paths(data_dir, socket_path)
    policy = load_policy(policy_path)
    arm_from_env()  # tests only: BASTION_TEST_FAULT_AFTER simulates a crash
    started = time.monotonic()
    agent = build_agent(AgentOptions(
        policy=policy, data_dir=data_dir, socket_path=socket_path, pin_root=pin_root,
        replay_path=replay_path, replay_outputs=replay_outputs, sigma_dirs=sigma_dirs,
        sigma_data_dir=sigma_data_dir,
        force=force, allow_degraded=allow_degraded,
        keep_pins=keep_pins, test_deadline=test_deadline, test_cgroup_id=test_cgroup_id or 0,
        feed=None if quiet else sys.stdout, feed_json=feed_json), _say)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if maintenance_token_file is not None:
        from bastion.guard.token import TokenStore, read_token_file

        TokenStore(data_dir).set_token(read_token_file(maintenance_token_file))
    agent.add_handler("stop", agent_stop_handler(data_dir, on_stop=stop.set, alert=agent.raise_alert))
    ready = threading.Thread(target=_announce, args=(agent, started, stop), daemon=True)
    ready.start()
    try:
        summary = agent.run(stop)
    finally:
        agent.store.close()
    click.echo(summary.line(), err=True)


_DEFAULTED = frozenset({click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP})


def _replay_paths(data_dir: Path, socket_path: Path) -> tuple[Path, Path]:
    """A replay's store and control socket: those given on the command line, else a new
    directory of its own (never the live agent's store or socket: s25)."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source("data_dir") in _DEFAULTED:
        import tempfile

        data_dir = Path(tempfile.mkdtemp(prefix="bastion-replay-"))
        _say(f"replay: its store is {data_dir} (bastion alerts --data-dir {data_dir})")
    if ctx.get_parameter_source("socket_path") in _DEFAULTED:
        socket_path = data_dir / "replay.sock"
    return data_dir, socket_path


def _say(line: str) -> None:
    click.echo(f"bastion: {line}", err=True)


def _announce(agent: Any, started: float, stop: threading.Event) -> None:
    while not stop.is_set() and not agent.ready.wait(0.05):
        pass
    if agent.ready.is_set():
        programs = sum(len(s.attached) for s in agent.sensors)
        tier = agent.tier.tier if agent.tier else "replay"
        click.echo(
            f"bastion: running (pid {os.getpid()}, tier {tier}, {programs} programs, "
            f"policy {agent.policy.source}, ready in {time.monotonic() - started:.2f}s)", err=True)


@cli.command()
@_SOCKET_OPT
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True)
@click.option("--guardian-socket", type=click.Path(path_type=Path), envvar="BASTION_GUARDIAN_SOCKET",
              default=GUARDIAN_SOCKET, hidden=True)
def status(socket_path: Path, as_json: bool, pin_root: Path, guardian_socket: Path) -> None:
    """What the running agent does: protections on/off and why, sensor health, counters.

    With no agent running, says so and lists enforcement that is still pinned
    in the kernel (it keeps denying with nobody recording it); exits 1."""
    from bastion.control import request
    from bastion.errors import ControlError
    from bastion.cli.guard import foreign_mount_warnings, token_file_warnings
    from bastion.guard.control import guardian_status

    gst = guardian_status(guardian_socket)
    warnings = token_file_warnings(gst) + foreign_mount_warnings(gst)
    try:
        resp = request(socket_path, "status")
    except ControlError as exc:
        from bastion.paths import pinned_enforcement

        pinned = pinned_enforcement(pin_root)
        if as_json:
            click.echo(json.dumps({"running": False, "error": str(exc), "pinned": pinned,
                                   "warnings": warnings}, indent=2))
        else:
            click.echo(clean(f"bastion: {exc}"), err=True)
            for w in warnings:
                click.echo(clean(f"WARNING      {w}"))
            click.echo("agent        not running")
            if pinned:
                click.echo(f"pinned       enforcement still active in the kernel under {pin_root}, "
                           "with no agent recording what it denies:")
                for part, links in pinned.items():
                    click.echo(f"  {part:10} {len(links)} programs: {', '.join(links)}")
                click.echo("  remove it: bastion reset --emergency [--token-file F]")
            else:
                click.echo("pinned       nothing: no Bastion enforcement is left in the kernel")
        sys.exit(1)
    resp.pop("ok", None)
    resp["tamper_protection"] = gst.get("tamper_protection", "off")
    resp["tamper_map_birth"] = gst.get("tamper_map_birth", "off")
    resp["tamper_exe_identity"] = gst.get("tamper_exe_identity", "off")
    resp["warnings"] = warnings
    if as_json:
        click.echo(json.dumps(resp, indent=2))
        return
    for w in warnings:     # paths (a mount's) and the agent's words: one escaped line each
        click.echo(clean(f"WARNING      {w}"))
    for line in format_status(resp):
        click.echo(clean(line))


def format_status(st: dict[str, Any]) -> list[str]:
    """The status as text for people (``--json`` is for machines)."""
    out = [f"agent        pid {st.get('pid')}, version {st.get('version')}, up "
           f"{st.get('uptime_s', 0):.0f}s, {st.get('rss_mb', 0):.0f} MB RSS, "
           f"{st.get('cpu_s', 0):.1f}s CPU",
           f"tier         {st.get('tier')}",
           f"policy       {st.get('policy')} (HIPS mode {st.get('policy_mode')}, generation "
           f"{st.get('policy_generation')})",
           f"tamper       {st.get('tamper_protection')} (BPF maps from their creation: "
           f"{st.get('tamper_map_birth', 'off')}; executable identity: "
           f"{st.get('tamper_exe_identity', 'off')})"]
    if st.get("file_read_check"):
        out.append(f"file reads   {st.get('file_read_check')}")
    prot = st.get("protections") or {}
    if prot:
        out.append("protections")
        for name, p in prot.items():
            out.append(f"  {name:24} {'on ' if p.get('on') else 'OFF'}  {p.get('detail', '')}")
    missing = st.get("programs_missing") or []
    if st.get("event_source"):
        out.append(f"event source {st.get('event_source')}")
    out.append(f"sensor       {', '.join(st.get('sensors') or [])}: {st.get('programs_attached')} "
               f"programs attached" + (f", missing {', '.join(missing)}" if missing else ""))
    out.append(f"events       {st.get('events_total')} seen, {st.get('events_per_s')}/s, "
               f"{st.get('drops')} dropped, ring {float(st.get('ring_fill') or 0) * 100:.1f}% full, "
               f"{st.get('store_events')} stored in {st.get('data_dir')}")
    byc = st.get("drops_by_class") or {}
    if isinstance(byc, dict) and byc:
        out.append("dropped      " + ", ".join(f"{c} {n}" for c, n in
                                               sorted(byc.items(), key=lambda kv: -int(kv[1])))
                   + "".join(f"; {r} ring {n}" for r, n in
                             sorted((st.get("drops_by_ring") or {}).items(), reverse=True) if n))
    lim = st.get("alert_limits") or {}
    out.append(f"alerts       {st.get('alerts_total')} raised, {st.get('alerts_suppressed')} "
               "summarised in aggregates"
               + (f" (at most {lim.get('per_rule')} per rule and executable and {lim.get('quota')} "
                  f"in all per {lim.get('interval_s')}s)" if isinstance(lim, dict) and lim else ""))
    store = st.get("store")
    if isinstance(store, dict) and store.get("state") != "ok":
        out.append(f"STORE        FAILING since {store.get('since')}: {store.get('error')}; "
                   f"{store.get('alerts_queued')} alerts held in memory, {store.get('alerts_lost')} "
                   f"lost, {store.get('events_not_stored')} events not stored")
    eng = st.get("engine") or {}
    if isinstance(eng, dict) and eng:
        out.append("engine       " + ", ".join(f"{k} {v}" for k, v in sorted(eng.items())
                                               if not isinstance(v, (dict, list))))
    shadow = st.get("shadow")
    if isinstance(shadow, dict):
        out.append("shield       " + ", ".join(f"{k} {v}" for k, v in sorted(shadow.items())))
    usage = st.get("shield_usage")
    if isinstance(usage, dict):
        for kind in ("uid", "tree"):
            for key, u in (usage.get(kind) or {}).items():
                out.append(f"shield use   {kind} {key or '(unanchored)'}: "
                           f"{u['bytes'] / 2**20:.1f} MiB, {u['rows']} rows")
    out.append(f"quarantine   {st.get('quarantine')}")
    for d in st.get("policy_degraded") or []:
        out.append(f"degraded     {d}")
    caps = st.get("capabilities") or {}
    if caps:
        out.append("capabilities")
        for name, c in caps.items():
            out.append(f"  {name:24} {'yes' if c['available'] else 'NO '}  {c['mechanism']}")
    return out


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
        click.echo(f"events   {report.event_source}"
                   + (" (BPF LSM off: events from fentry, compat-style enforcement)"
                      if report.event_source == "hooks" and report.tier != Tier.LSM else ""))
        for c in report.capabilities:
            mark = "yes" if c.available else "NO "
            click.echo(f"  {c.name:26} {mark} {c.mechanism}")
            if c.detail:
                click.echo(f"  {'':26}     {c.detail}")
            if c.remedy and (not c.available or report.tier != Tier.LSM):
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
    from bastion.assembly import record_sensor
    from bastion.events import to_json
    from bastion.proctable import ProcessTable
    from bastion.pump import EventPump, Source

    sensor = record_sensor(classes)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs = ProcessTable()
    procs.seed()
    n = 0
    fh = sys.stdout if str(output) == "-" else output.open("w", encoding="utf-8")

    def write(_src: Source, batch: list[Any]) -> None:
        nonlocal n
        for ev in batch:
            if count and n >= count:
                stop.set()
                return
            procs.update(ev)
            fh.write(json.dumps(to_json(procs.enrich(ev))) + "\n")
            n += 1
        if count and n >= count:
            stop.set()

    sensor.open()
    click.echo(f"bastion: recording to {output} ({len(sensor.attached)} programs)", err=True)
    try:
        EventPump([Source(sensor.name, sensor.poll)]).run(
            stop, write, deadline=time.monotonic() + duration if duration else None)
    finally:
        sensor.close()
        if fh is not sys.stdout:
            fh.close()
    click.echo(f"bastion: recorded {n} events, {sensor.stats().get('drops', 0)} dropped", err=True)


@cli.command()
@click.option("--emergency", is_flag=True, required=True,
              help="Confirm: remove every Bastion pin and the programs they hold.")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, show_default=True,
              hidden=True)
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The maintenance token (needed once tamper protection is on).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Store directory (holds the token's hash).")
@click.option("--guardian-socket", type=click.Path(path_type=Path), envvar="BASTION_GUARDIAN_SOCKET",
              default=GUARDIAN_SOCKET, hidden=True)
def reset(emergency: bool, pin_root: Path, token_file: Path | None, data_dir: Path,
          guardian_socket: Path) -> None:
    """Break-glass: remove every Bastion BPF pin (programs, links, maps).

    With a guardian running, the token opens its maintenance window first (protection
    removed by the guardian), so the pins can go."""
    from bastion.assembly import remove_all_pins
    from bastion.cli.guard import foreign_mount_warnings

    _need_root("bastion reset")
    require_token(token_file, what="reset", data_dir=data_dir, pin_root=pin_root,
                  guardian_socket=guardian_socket)
    crossed: list[Path] = []
    removed = remove_all_pins(pin_root, crossed)
    click.echo(f"bastion: removed {len(removed)} pins and directories under "
               f"{pin_root.parent}/{pin_root.name}*")
    for w in foreign_mount_warnings({"foreign_mounts": [str(p) for p in crossed]}):
        click.echo(f"WARNING: {w}", err=True)


@cli.group("log")
def log_group() -> None:
    """The tamper-evident alert log."""


@log_group.command("verify")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
              default=DEFAULT_DATA_DIR, show_default=True, help="Store directory.")
@_SOCKET_OPT
@click.option("--anchor", "anchor_files", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="An anchor kept off this host: a JSON file holding the newest alert from the "
                   "remote log (its \"chain\" object) or {count, seq, mac}. Repeatable.")
@click.option("--json", "as_json", is_flag=True)
def log_verify(data_dir: Path, socket_path: Path, anchor_files: tuple[Path, ...], as_json: bool) -> None:
    """Check the alert chain; name every edited, deleted, inserted or reordered record, and
    a truncated or rolled-back store (against the anchor file, the agent's and any --anchor)."""
    from bastion.cli.query import _reader
    from bastion.store.chain import Anchor

    given: list[tuple[str, Anchor]] = []
    for f in anchor_files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{f}: cannot read the anchor: {exc}") from exc
        if not isinstance(doc, dict):
            raise click.ClickException(f"{f}: an anchor is a JSON object")
        given.append((f"given {f.name}", Anchor.from_json(doc, where=str(f))))
    with _reader(data_dir, socket_path) as store:
        report = store.verify_chain(given)
    problems = report.problems
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        for note in report.notes:
            click.echo(f"note: {note}")
        if report.old_scheme:
            click.echo(f"{report.old_scheme} alerts written before schema 3 are verified under the old "
                       "MAC scheme (chain and data; their filter columns checked against the data)")
        click.echo("anchors checked: " + (", ".join(report.anchors) or "none"))
        click.echo(f"{report.alerts} alerts: " + ("chain intact" if not problems
                                                   else f"{len(problems)} problems"))
    sys.exit(1 if problems else 0)


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
        click.echo(clean(f"bastion: {exc}"), err=True)   # it may name an attacker's path
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
