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

from bastion.paths import DEFAULT_DATA_DIR
from bastion.respond.shadow import list_incidents, rollback

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
def rollback_cmd(incident: int | None, data_dir: Path, shadow_dir: Path | None, dry_run: bool,
                 as_json: bool) -> None:
    """Restore every file a ransomware incident changed: content and name, byte-for-byte."""
    sdir = shadow_dir or data_dir / SHADOW_SUBDIR
    if incident is None:
        rows = list_incidents(sdir)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            click.echo(f"{r['id']:6} {r['state']:12} root pid {r['root_pid']:<8} {r['copies']} copies")
        if not rows:
            click.echo("no incidents")
        return
    rep = rollback(sdir, incident, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        tag = "would " if dry_run else ""
        for p in rep.recreated:
            click.echo(f"{tag}recreate {p}/ (mode 0700)")
        for p in rep.restored:
            click.echo(f"{tag}restore  {p}")
        for p in rep.removed:
            click.echo(f"{tag}remove   {p}")
        for p in rep.untouched:
            click.echo(f"only read {p} (left as it is)")
        for p, kept in rep.kept:
            click.echo(f"{tag}keep     {p}: later edit kept as {kept}")
        for p, why in rep.failed:
            click.echo(f"FAILED   {p}: {why}")
        click.echo(rep.summary())
    if not rep.ok:
        sys.exit(1)


__all__ = ["rollback_cmd"]
