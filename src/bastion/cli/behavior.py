"""``bastion rollback`` — undo what a ransomware incident did to protected files.

Reads the shadow copies the agent's ransomware shield kept under
``<data-dir>/shadow`` (see :mod:`bastion.respond.shadow`).  Without
``--incident`` it lists the incidents.  A file is restored only beneath the
protected root it was copied under, into the directory it was copied from,
as its owner; a file the tree only read is left alone; a later edit is kept
beside the restored file (``NAME.bastion-kept-<time>``).  Exit status: 0
when every file the tree changed is restored or already intact, 1 when some
could not be or were refused (each named with its reason) or on an error,
2 on a usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from typing import Any

from bastion.paths import DEFAULT_DATA_DIR, DEFAULT_SOCKET, PIN_ROOT
from bastion.respond.shadow import RollbackReport, list_incidents, rollback
from bastion.textsafe import clean

SHADOW_SUBDIR = "shadow"


@click.command("rollback")
@click.option("--incident", type=click.IntRange(min=1), default=None,
              help="The incident to roll back (omit to list incidents).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              envvar="BASTION_DATA_DIR", default=DEFAULT_DATA_DIR, show_default=True,
              help="Store directory (the shadow copies are in its 'shadow' subdirectory).")
@click.option("--shadow-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The shadow directory itself (overrides --data-dir).")
@click.option("--dry-run", is_flag=True, help="Say what would be restored and removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), envvar="BASTION_SOCKET",
              default=DEFAULT_SOCKET, show_default=True,
              help="The agent's control socket: a running agent on the data dir does the work.")
@click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT, hidden=True,
              envvar="BASTION_PIN_ROOT")
def rollback_cmd(incident: int | None, data_dir: Path, shadow_dir: Path | None, dry_run: bool,
                 as_json: bool, socket_path: Path, pin_root: Path) -> None:
    """Restore every file a ransomware incident changed: content and name, byte-for-byte.

    A running agent on the data dir lists and rolls back itself (the shadow index is in
    the data dir, which tamper protection guards against everyone but the agent)."""
    sdir = shadow_dir or data_dir / SHADOW_SUBDIR
    via = _through_agent(data_dir, socket_path, pin_root, incident, dry_run) \
        if shadow_dir is None else None
    if via is None and shadow_dir is None:
        _refuse_when_protected(pin_root, data_dir)
    if incident is None:
        rows = list_incidents(sdir) if via is None else via["incidents"]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            click.echo(f"{r['id']:6} {r['state']:12} root pid {r['root_pid']:<8} {r['copies']} copies")
        if not rows:
            click.echo("no incidents")
        return
    rep = rollback(sdir, incident, dry_run=dry_run) if via is None \
        else RollbackReport.from_json(via["report"])
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        # the paths are the tree's choice: one escaped line each (s24: a newline in a
        # name forged a "restore" line, an escape rewrote the administrator's terminal)
        tag = "would " if dry_run else ""
        for p in rep.recreated:
            click.echo(clean(f"{tag}recreate {p}/ (mode 0700)"))
        for p in rep.restored:
            click.echo(clean(f"{tag}restore  {p}"))
        for p in rep.removed:
            click.echo(clean(f"{tag}remove   {p}"))
        for p in rep.untouched:
            click.echo(clean(f"only read {p} (left as it is)"))
        for p, kept in rep.kept:
            click.echo(clean(f"{tag}keep     {p}: later edit kept as {kept}"))
        for p, why in rep.failed:
            click.echo(clean(f"FAILED   {p}: {why}"))
        click.echo(rep.summary())
    if not rep.ok:
        sys.exit(1)


def _through_agent(data_dir: Path, socket_path: Path, pin_root: Path, incident: int | None,
                   dry_run: bool) -> dict[str, Any] | None:
    """The agent's answer to ``shadow.rollback`` when an agent keeps ``data_dir`` (the
    server checked against the enrolled identity first); None when none answers."""
    from bastion.control import request
    from bastion.guard.control import agent_keeps, server_check
    from bastion.guard.identity import ROLE_AGENT

    if not agent_keeps(socket_path, data_dir):
        return None
    args: dict[str, Any] = {} if incident is None else {"incident": incident, "dry_run": dry_run}
    return request(socket_path, "shadow.rollback", timeout=600.0,
                   verify_server=server_check(pin_root, (ROLE_AGENT,), socket_path), **args)


def _refuse_when_protected(pin_root: Path, data_dir: Path) -> None:
    """With tamper protection on, the shadow index (in the data dir) is read and changed
    only by the agent: never here, where every write-open of it is refused as tampering."""
    from bastion.errors import ControlError, Location
    from bastion.guard.control import protection_pinned

    if protection_pinned(pin_root):
        raise ControlError(
            f"tamper protection is on and no agent on {data_dir} answers: `bastion rollback` "
            "goes through the running agent; nothing was read or changed",
            location=Location(str(pin_root / "tamper")))


__all__ = ["rollback_cmd"]
