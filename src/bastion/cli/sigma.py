"""``bastion sigma check DIR... [--json]``: which Sigma rules Bastion can run.

Reports the rules loaded (by logsource), the rules listed as unsupported
(with the reason) and the files that could not be loaded (path and pySigma's
error).  Exit status 1 when a file could not be loaded, 0 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # pySigma is heavy: imported only when a sigma command runs
    from bastion.detect.sigma import SigmaLoadResult


@click.group("sigma")
def sigma_group() -> None:
    """Sigma rules evaluated on Bastion's events."""


def _report(res: SigmaLoadResult) -> dict[str, Any]:
    return {
        "files": res.files,
        "loaded_total": len(res.rules),
        "loaded": res.loaded_by_logsource(),
        "unsupported_total": len(res.unsupported),
        "unsupported_by_logsource": res.unsupported_by_logsource(),
        "errors_total": len(res.errors),
        "rules": [{"id": r.rule_id, "title": r.title, "logsource": r.logsource,
                   "level": r.level, "author": r.author, "path": str(r.path),
                   "event_types": sorted(r.event_types)} for r in res.rules],
        "unsupported": [u.to_json() for u in res.unsupported],
        "errors": [{"path": e.location.source if e.location else "",
                    "line": e.location.line if e.location else None,
                    "message": e.message} for e in res.errors],
    }


@sigma_group.command("check")
@click.argument("dirs", nargs=-1, required=True,
                type=click.Path(path_type=Path, exists=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(dirs: tuple[Path, ...], as_json: bool) -> None:
    """Load the Sigma rules under DIR... and report what runs and what cannot."""
    from bastion.detect.sigma import load_sigma

    res = load_sigma(list(dirs))
    if as_json:
        click.echo(json.dumps(_report(res), indent=2))
    else:
        click.echo(f"{len(res.rules)} rules loaded from {res.files} files, "
                   f"{len(res.unsupported)} unsupported, {len(res.errors)} errors")
        for ls, n in res.loaded_by_logsource().items():
            click.echo(f"  loaded       {ls:28} {n:4}")
        for ls, n in res.unsupported_by_logsource().items():
            click.echo(f"  unsupported  {ls:28} {n:4}")
        if res.unsupported:
            click.echo("unsupported:")
            for u in sorted(res.unsupported, key=lambda u: (u.logsource, str(u.path))):
                click.echo(f"  {u.path}: [{u.logsource}] {u.title}: {u.reason}")
        if res.errors:
            click.echo("errors:")
            for e in res.errors:
                click.echo(f"  {e}")
    if res.errors:
        sys.exit(1)
