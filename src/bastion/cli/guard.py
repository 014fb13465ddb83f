"""Tamper-protection commands: ``bastion guardian``, ``bastion stop``, ``bastion set-token``.

Exported for cli/main.py to register: :data:`guardian_cmd`, :data:`stop_cmd`,
:data:`set_token_cmd`, :data:`maintenance_group` (``bastion maintenance start|end``); and :func:`require_token` for the commands that must
be gated once protection is on (``uninstall``, ``reset --emergency``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Final

import click

from bastion.errors import BastionError, ControlError, KernelError, Location
from bastion.guard.token import TokenError, TokenStore, generate_token_file, read_token_file
from bastion.paths import DEFAULT_DATA_DIR, DEFAULT_SOCKET, DEFAULT_TOKEN_FILE, PIN_ROOT

GUARDIAN_SOCKET: Final = DEFAULT_SOCKET.parent / "guardian.sock"

_GSOCK = click.option("--guardian-socket", type=click.Path(path_type=Path),
                      envvar="BASTION_GUARDIAN_SOCKET", default=GUARDIAN_SOCKET,
                      show_default=True, help="The guardian's control socket.")
_DATA = click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
                     envvar="BASTION_DATA_DIR", default=DEFAULT_DATA_DIR, show_default=True,
                     help="Store directory (holds the token's hash).")


def protection_on(pin_root: Path = PIN_ROOT) -> bool:
    """Is tamper protection pinned (whether or not a guardian runs)?"""
    return (pin_root / "tamper" / "links").is_dir()


def require_token(token_file: Path | None, *, what: str, data_dir: Path = DEFAULT_DATA_DIR,
                  pin_root: Path = PIN_ROOT, guardian_socket: Path = GUARDIAN_SOCKET) -> None:
    """Gate ``what`` (e.g. "uninstall", "reset") behind the maintenance token.

    No-op while tamper protection is off and no token is set.  Otherwise the
    token is required: a running guardian checks it (rate-limited, alerted),
    opens a maintenance window and removes tamper protection so ``what`` can
    proceed; without a guardian the stored hash is checked here.  Raises
    :class:`~bastion.guard.token.TokenError` when refused.
    """
    from bastion.guard.control import call_with_token
    from bastion.guard.identity import ROLE_GUARDIAN

    on = protection_on(pin_root)
    store = TokenStore(data_dir)
    if not on and not store.is_set():
        return
    if on:
        # the record checked here must be the one of the pinned protection, not one in a
        # directory the caller made (issue 14.4): the data dir must be a protected root
        enrolled_data_dir(data_dir, pin_root)
    if token_file is None:
        raise TokenError(f"{what} needs the maintenance token (--token-file F): tamper protection "
                         "is on" if on else f"{what} needs the maintenance token (--token-file F)",
                         location=Location(str(pin_root)))
    token = read_token_file(token_file)
    if guardian_socket.exists():
        try:
            resp = call_with_token(guardian_socket, "maintenance", token, f"maintenance {what}",
                                   pin_root=pin_root, roles=(ROLE_GUARDIAN,), timeout=30.0,
                                   what=what)
        except ControlError as exc:
            if "no Bastion agent" not in str(exc) and "does not answer" not in str(exc):
                raise TokenError(str(exc), location=Location(str(guardian_socket))) from exc
        else:
            if not resp.get("done"):
                raise TokenError(str(resp.get("error", "refused")),
                                 location=Location(str(guardian_socket)))
            return
    v = store.verify(token)
    if not v.ok:
        raise TokenError(f"maintenance token refused: {v.reason}"
                         + (f" (retry in {math.ceil(v.retry_after_s)}s)" if v.retry_after_s else ""),
                         location=Location(str(store.hash_path)))


def token_file_warnings(guardian: dict[str, object], first_run_file: Path = DEFAULT_TOKEN_FILE
                        ) -> list[str]:
    """What ``bastion status`` says while a first-run token file is still on the host (the
    guardian's own ``--token-out`` and the default path)."""
    paths = {str(first_run_file)} if first_run_file.exists() else set()
    if guardian.get("token_file_on_host"):
        paths.add(str(guardian["token_file_on_host"]))
    return [f"the maintenance token is still in {p} on this host: whoever can read it can stop "
            "Bastion; keep a copy off the host and delete it here" for p in sorted(paths)]


def foreign_mount_warnings(guardian: dict[str, object]) -> list[str]:
    """What ``bastion status`` (and ``bastion reset``) says about mounts someone put under
    the pin root that removing our pins met and left (``bastion.tamper.foreign-mount``)."""
    got = guardian.get("foreign_mounts")
    paths = [str(p) for p in got] if isinstance(got, list) else []
    return [f"{p} is a mount under the pin root that Bastion did not make: not entered, not "
            "removed (look at what it holds, then umount it)" for p in paths]


def enrolled_data_dir(data_dir: Path, pin_root: Path) -> None:
    """Refuse ``data_dir`` unless it is a directory protected as a whole by the tamper
    protection pinned under ``pin_root`` (its inode in the pinned ``tamper_objs``, which
    only the guardian fills): a directory the caller made holds no enrolled token record."""
    from bastion.guard.kernel import protected_subtree

    where = Location(str(data_dir))
    try:
        ok = protected_subtree(pin_root / "tamper", data_dir)
    except OSError as exc:
        raise TokenError(f"the data dir cannot be read ({exc.strerror}): no enrolled token record "
                         "to check against", location=where) from exc
    except BastionError as exc:
        raise TokenError(f"the pinned tamper protection cannot be read ({exc}): the token is "
                         "checked only against its enrolled data dir", location=where) from exc
    if not ok:
        raise TokenError(f"{data_dir} is not the data dir of the tamper protection pinned under "
                         f"{pin_root / 'tamper'} (not one of its protected directories): its token "
                         "record is not the enrolled one; pass the guardian's --data-dir",
                         location=where)


@click.command("guardian", context_settings={"ignore_unknown_options": True})
@_DATA
@_GSOCK
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True)
@click.option("--protect", "protect_paths", multiple=True, type=click.Path(path_type=Path),
              help="Also protect this file or directory (repeatable).")
@click.option("--config", "config_paths", multiple=True, type=click.Path(path_type=Path),
              help="A config/policy file or directory to protect (repeatable).")
@click.option("--no-install-tree", is_flag=True,
              help="Do not protect the install tree/virtualenv and BPF objects.")
@click.option("--maintenance-token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Set the maintenance token (only its scrypt hash is kept) before protecting.")
@click.option("--token-out", type=click.Path(path_type=Path, dir_okay=False),
              default=DEFAULT_TOKEN_FILE, show_default=True,
              help="First run (no token set, no --maintenance-token-file): write a new token here (0600).")
@click.option("--quiet", is_flag=True, help="No live alert feed from the agent on stdout.")
@click.option("--window-minutes", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="How long a maintenance window stays open.")
@click.option("--tier", type=click.Choice(["auto", "lsm", "compat"]), default="auto",
              show_default=True)
@click.option("--cgroup", "own_cgroup", type=click.Path(path_type=Path),
              help="Run the guardian and the agent in this cgroup v2 directory (created; its "
                   "control files protected).  Default: bastion under the cgroup2 root; "
                   "tests without it: none.")
@click.option("--test-cgroup-id", type=int, default=0, hidden=True,
              help="Tests only: act only on attackers in this cgroup.")
@click.option("--test-deadline", type=click.FloatRange(min=1), hidden=True,
              help="Tests only: every program stops acting after this many seconds.")
@click.option("--test-forbid", multiple=True, type=click.Path(path_type=Path), hidden=True,
              help="Tests only: refuse to protect these paths.")
@click.option("--test-watch", multiple=True, type=click.Path(path_type=Path), hidden=True,
              help="Tests only: watch these paths instead of ld.so.preload and the unit's.")
@click.option("--fault-after", type=click.FloatRange(min=0.1), hidden=True,
              help="Tests only: crash (os._exit, no cleanup) after this many seconds.")
@click.option("--agent-socket", type=click.Path(path_type=Path), default=DEFAULT_SOCKET,
              show_default=True, help="The agent's control socket: its event-loop heartbeat is watched.")
@click.option("--agent-stall-after", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds without event-loop progress before the agent is killed and restarted.")
@click.option("--test-alert-limits", type=(click.FloatRange(min=0.1), click.IntRange(min=1)),
              default=None, hidden=True,
              help="tests: the guardian's alert gate (interval seconds, alerts per rule).")
@click.argument("agent_argv", nargs=-1, type=click.UNPROCESSED)
def guardian_cmd(data_dir: Path, guardian_socket: Path, pin_root: Path,
                 protect_paths: tuple[Path, ...], config_paths: tuple[Path, ...],
                 no_install_tree: bool, maintenance_token_file: Path | None, token_out: Path,
                 quiet: bool, window_minutes: float,
                 tier: str, own_cgroup: Path | None, test_cgroup_id: int,
                 test_deadline: float | None, test_forbid: tuple[Path, ...],
                 test_watch: tuple[Path, ...], fault_after: float | None, agent_socket: Path,
                 agent_stall_after: float, test_alert_limits: tuple[float, int] | None,
                 agent_argv: tuple[str, ...]) -> None:
    """Hold tamper protection and keep the agent running: bastion guardian [opts] -- AGENT ARGV.

    Without AGENT ARGV the agent is `bastion run --keep-pins --data-dir DIR`,
    whose live alert feed goes to stdout.  Only `bastion stop --token-file F`
    stops it.  On first run (no token set) a new maintenance token is written
    to --token-out.
    """
    from bastion.guard import protect
    from bastion.alertgate import AlertLimits
    from bastion.guard.guardian import Guardian, GuardianConfig

    from bastion.assembly import prepare_host

    prepare_host("bastion guardian")
    _refuse_over_stale_pins(data_dir, pin_root, guardian_socket)
    tokens = TokenStore(data_dir)
    if maintenance_token_file is not None:
        tokens.set_token(read_token_file(maintenance_token_file))
    elif not tokens.is_set():
        tokens.set_token(generate_token_file(token_out))
        click.echo(f"bastion: first run: a new maintenance token is in {token_out} (mode 0600, root "
                   "only).\nbastion: stop Bastion with:  bastion stop --token-file "
                   f"{token_out}\nbastion: keep a copy off this host and delete it here: whoever "
                   "can read it can stop Bastion.", err=True)
    argv = agent_argv[1:] if agent_argv[:1] == ("--",) else agent_argv
    if not argv:
        argv = default_agent_argv(data_dir, quiet=quiet)
    # /run/bastion (0700 root) holds the sockets: protected, so root cannot put an impostor
    # there (lsm tier); a socket elsewhere (tests) leaves its directory alone
    run_dir = protect.RUN_DIR if guardian_socket.parent == protect.RUN_DIR else None
    from bastion.fleet.config import referenced_files

    # the fleet section's public key, creds and TLS files are protected with the policy
    config_paths = (*config_paths, *referenced_files(config_paths))
    paths = protect.default_paths(data_dir=data_dir, config_paths=config_paths, pin_root=pin_root,
                                  install_tree=not no_install_tree, extra=protect_paths,
                                  run_dir=run_dir)
    cfg = GuardianConfig(agent_argv=tuple(argv), data_dir=data_dir, pin_root=pin_root,
                         socket=guardian_socket, protect_paths=tuple(paths),
                         forbid=test_forbid, tier=tier, cgroup_id=test_cgroup_id,
                         deadline_s=test_deadline, window_s=window_minutes * 60,
                         fault_after_s=fault_after, agent_socket=agent_socket,
                         stall_after_s=agent_stall_after,
                         watch_paths=tuple(test_watch) if test_watch else protect.WATCHED,
                         cgroup=_own_cgroup(own_cgroup, test_cgroup_id),
                         token_file=token_out,
                         alert_limits=(AlertLimits(interval_s=test_alert_limits[0],
                                                   per_rule=test_alert_limits[1])
                                       if test_alert_limits else AlertLimits()))
    sys.exit(Guardian(cfg).run())


def default_agent_argv(data_dir: Path, *, quiet: bool = False) -> tuple[str, ...]:
    """The agent the guardian starts when given none: ``bastion run`` in this
    interpreter, isolated (``-I``: no PYTHON* variables, user site or working
    directory on sys.path) and writing no bytecode into the protected tree (``-B``)."""
    return (sys.executable, "-I", "-B", "-m", "bastion.cli.main", "run", "--keep-pins",
            "--data-dir", str(data_dir), *(("--quiet",) if quiet else ()))


def _own_cgroup(given: Path | None, test_cgroup_id: int) -> Path | None:
    """The guardian's cgroup: as given; else ``bastion`` under the cgroup2 root (a test
    instance without --cgroup gets none)."""
    if given is not None or test_cgroup_id:
        return given
    from bastion.assembly import cgroup2_root

    return cgroup2_root() / "bastion"


def _refuse_over_stale_pins(data_dir: Path, pin_root: Path, guardian_socket: Path) -> None:
    """A guardian must not start over another's protection it cannot take over.

    Pins of an earlier guardian with no guardian answering and no token in this
    data dir (e.g. after a crash and a wiped data dir): the pinned protection
    would kill the newcomer with no word.  Say what is there and the ways out.
    A running guardian is never doubled."""
    from bastion.control import request

    if guardian_socket.exists():
        try:
            resp = request(guardian_socket, "ping", timeout=5.0)
        except ControlError:
            pass
        else:
            raise KernelError(f"a guardian is already running (pid {resp.get('pid')}): "
                              "`bastion status` shows it; `bastion stop --token-file F` stops it",
                              location=Location(str(guardian_socket)))
    if protection_on(pin_root) and not TokenStore(data_dir).is_set():
        raise TokenError(
            f"tamper protection of an earlier guardian is still pinned under {pin_root / 'tamper'}, "
            f"no guardian runs, and {data_dir} holds no maintenance token (was the data dir "
            "removed?). A guardian started over it would be killed by that protection. Either "
            "start the guardian with --data-dir pointing at the directory that holds that "
            "protection's token (it adopts the pins and the agent), or remove it with the token: "
            "`bastion reset --emergency --token-file F --data-dir DIR`. Without the token, "
            "reboot: pins do not survive a reboot (README, Break-glass).",
            location=Location(str(pin_root / "tamper")))


@click.command("stop")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The maintenance token.")
@_GSOCK
@click.option("--socket", "agent_socket", type=click.Path(path_type=Path), envvar="BASTION_SOCKET",
              default=DEFAULT_SOCKET, show_default=True, help="The agent's control socket.")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True,
              envvar="BASTION_PIN_ROOT")
def stop_cmd(token_file: Path, guardian_socket: Path, agent_socket: Path, pin_root: Path) -> None:
    """Stop Bastion with the maintenance token: remove tamper protection, end agent and guardian.

    The server is checked before anything is sent (SO_PEERCRED against the identity
    enrolled in the pinned tamper protection) and the token is proven by
    challenge-response: it never leaves this process."""
    from bastion.guard.control import call_with_token
    from bastion.guard.identity import ROLE_AGENT, ROLE_GUARDIAN

    token = read_token_file(token_file)
    sock, who, role = ((guardian_socket, "guardian", ROLE_GUARDIAN) if guardian_socket.exists()
                       else (agent_socket, "agent", ROLE_AGENT))
    resp = call_with_token(sock, "stop", token, "stop", pin_root=pin_root, roles=(role,),
                           timeout=60.0)
    if not resp.get("done"):
        raise TokenError(str(resp.get("error", "refused")), location=Location(str(sock)))
    click.echo(f"bastion: {who} stopping: tamper protection removed")


@click.group("maintenance")
def maintenance_group() -> None:
    """Maintenance windows: tamper protection off for a while, with the token."""


@maintenance_group.command("start")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The maintenance token.")
@click.option("--what", default="maintenance", show_default=True,
              help="What the window is for (in its alerts).")
@_GSOCK
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True,
              envvar="BASTION_PIN_ROOT")
def maintenance_start_cmd(token_file: Path, what: str, guardian_socket: Path,
                          pin_root: Path) -> None:
    """Open a maintenance window: tamper protection is removed until the window closes
    (--window-minutes of the guardian) or `bastion maintenance end`, then re-armed."""
    from bastion.guard.control import call_with_token
    from bastion.guard.identity import ROLE_GUARDIAN

    token = read_token_file(token_file)
    resp = call_with_token(guardian_socket, "maintenance", token, f"maintenance {what}",
                           pin_root=pin_root, roles=(ROLE_GUARDIAN,), timeout=60.0, what=what)
    if not resp.get("done"):
        raise TokenError(str(resp.get("error", "refused")), location=Location(str(guardian_socket)))
    from bastion.timefmt import format_time

    click.echo(f"bastion: maintenance window open until "
               f"{format_time(int(float(resp.get('until', 0)) * 1e9))}: tamper protection removed; "
               "`bastion maintenance end` re-arms it sooner")


@maintenance_group.command("end")
@_GSOCK
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True,
              envvar="BASTION_PIN_ROOT")
def maintenance_end_cmd(guardian_socket: Path, pin_root: Path) -> None:
    """Close the maintenance window now: tamper protection is re-armed (no token needed)."""
    from bastion.control import request
    from bastion.guard.control import server_check
    from bastion.guard.identity import ROLE_GUARDIAN

    resp = request(guardian_socket, "maintenance.end", timeout=90.0,
                   verify_server=server_check(pin_root, (ROLE_GUARDIAN,), guardian_socket))
    if not resp.get("done"):
        raise ControlError(f"the guardian could not re-arm tamper protection (it keeps trying; "
                           f"its alerts say why): {resp}", location=Location(str(guardian_socket)))
    if not resp.get("rearmed"):
        click.echo(f"bastion: {resp.get('why', 'nothing to end')}")
        return
    click.echo(f"bastion: maintenance window closed: tamper protection {resp.get('tamper_protection')}")


@click.command("set-token")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False), required=True)
@_DATA
@click.option("--old-token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The current token (needed to replace one that is set).")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True,
              envvar="BASTION_PIN_ROOT")
def set_token_cmd(token_file: Path, data_dir: Path, old_token_file: Path | None,
                  pin_root: Path) -> None:
    """Set the maintenance token (install time); only a salted scrypt hash is stored.

    While tamper protection is on, the record is in the protected data dir, which nobody
    but the guardian and the agent may write: change it inside a maintenance window."""
    from bastion.guard.kernel import protected_subtree

    store = TokenStore(data_dir)
    if protection_on(pin_root):
        try:
            guarded = protected_subtree(pin_root / "tamper", data_dir)
        except (OSError, BastionError):
            guarded = True     # cannot tell: the write below would be the test
        if guarded:
            raise TokenError(
                f"tamper protection is on and {data_dir} is protected: the token record can "
                "be changed only inside a maintenance window (`bastion maintenance start "
                "--token-file OLD`, then `bastion set-token --token-file NEW --old-token-file "
                "OLD`, then `bastion maintenance end`)", location=Location(str(store.hash_path)))
    if store.is_set():
        if old_token_file is None:
            raise TokenError("a maintenance token is already set: pass --old-token-file",
                             location=Location(str(store.hash_path)))
        v = store.verify(read_token_file(old_token_file))
        if not v.ok:
            raise TokenError(f"old token refused: {v.reason}", location=Location(str(store.hash_path)))
    try:
        store.set_token(read_token_file(token_file))
    except OSError as exc:
        raise TokenError(f"the token record cannot be written: {exc.strerror}",
                         location=Location(str(store.hash_path))) from exc
    click.echo(json.dumps({"token_hash": str(store.hash_path)}))


__all__ = ["GUARDIAN_SOCKET", "default_agent_argv", "enrolled_data_dir", "token_file_warnings", "guardian_cmd",
           "maintenance_group", "protection_on",
           "require_token", "set_token_cmd", "stop_cmd", "BastionError"]


@click.group()
def _standalone() -> None:
    """`python -m bastion.cli.guard ...` (tests; the lead registers the commands in cli/main.py)."""


_standalone.add_command(guardian_cmd)
_standalone.add_command(stop_cmd)
_standalone.add_command(set_token_cmd)
_standalone.add_command(maintenance_group)

if __name__ == "__main__":
    import logging

    from bastion.textsafe import log_to_stderr

    log_to_stderr(logging.WARNING)
    try:
        _standalone.main(standalone_mode=False)
    except BastionError as exc:
        click.echo(f"bastion: {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
