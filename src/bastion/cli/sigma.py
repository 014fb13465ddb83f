"""``bastion sigma``: Sigma rules evaluated on Bastion's events.

- ``check DIR... [--json]``: which Sigma rules Bastion can run.  Reports the
  rules loaded (by logsource), the rules listed as unsupported (with the
  reason) and the files that could not be loaded (path and pySigma's error).
  Exit status 1 when a file could not be loaded, 0 otherwise.
- ``update``: install SigmaHQ's published Linux rules into the data dir
  (:mod:`bastion.detect.sigma.install`): the latest GitHub release, verified
  against its sha256 digest, or ``--from DIR|ARCHIVE`` offline.  The previous
  set stays live when the new one fails.
- ``installed [--json]``: what is installed (cheap: no pySigma import).
- ``rollback``: make the previous installed set live again.

``update`` and ``rollback`` go through a running agent on the data dir (which
makes the set live at once); once tamper protection is on, the agent refuses
both without the maintenance token (``--token-file F``, proven by
challenge-response, never sent), and without an agent they are refused here
(the data dir is the agent's to change).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bastion.paths import DEFAULT_DATA_DIR, DEFAULT_SOCKET, PIN_ROOT

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


_DATA_DIR_OPT = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
    default=DEFAULT_DATA_DIR, show_default=True, help="Data directory (rules go to DATA_DIR/sigma).")
_TOKEN_OPT = click.option(
    "--token-file", type=click.Path(path_type=Path, dir_okay=False),
    help="The maintenance token: needed once tamper protection is on (proven to the agent by "
         "challenge-response, never sent).")
_PIN_ROOT_OPT = click.option("--pin-root", type=click.Path(path_type=Path), default=PIN_ROOT,
                             hidden=True, envvar="BASTION_PIN_ROOT")
_SOCKET_OPT = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path), envvar="BASTION_SOCKET",
    default=DEFAULT_SOCKET, show_default=True,
    help="A running agent on this data dir installs the set and makes it live.")


@sigma_group.command("update")
@_DATA_DIR_OPT
@click.option("--from", "from_path", type=click.Path(path_type=Path, exists=False),
              help="Install offline from a directory holding rules/linux (a SigmaHQ checkout or "
                   "unpacked release) or a .zip/.tar.gz archive.")
@click.option("--url", default=None, metavar="URL",
              help="GitHub API base (default https://api.github.com) or an archive URL. "
                   "https only; plain http only to a loopback address.")
@click.option("--tag", default=None, help="Release tag to install (default: the latest release).")
@click.option("--asset", default=None, show_default=False,
              help="Release asset (default sigma_core.zip, SigmaHQ's recommended set; "
                   "sigma_core+.zip, sigma_core++.zip and sigma_all_rules.zip hold more).")
@click.option("--sha256", "sha256", default=None, metavar="HEX",
              help="Expected sha256 of the archive (checked in addition to the release's digest).")
@click.option("--allow-unverified", is_flag=True,
              help="Install an archive for which no sha256 is available (neither digest nor --sha256).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_SOCKET_OPT
@_TOKEN_OPT
@_PIN_ROOT_OPT
def update_cmd(data_dir: Path, from_path: Path | None, url: str | None, tag: str | None,
               asset: str | None, sha256: str | None, allow_unverified: bool, as_json: bool,
               socket_path: Path, token_file: Path | None, pin_root: Path) -> None:
    """Install SigmaHQ's Linux rules into the data dir (the previous set stays if they fail to load).

    A GitHub token in GITHUB_TOKEN is sent to the API host only."""
    from bastion.detect.sigma import install as inst

    if from_path is not None and (url or tag or asset):
        raise click.UsageError("--from installs offline: it takes no --url, --tag or --asset")
    args = {"from_path": str(from_path.resolve()) if from_path is not None else None, "url": url,
            "tag": tag, "asset": asset, "sha256": sha256, "allow_unverified": allow_unverified,
            "token": (os.environ.get("GITHUB_TOKEN") or None) if from_path is None else None}
    live = _through_agent(data_dir, socket_path, "sigma.update", args, token_file, pin_root)
    if live is not None:
        res, made_live = live
    else:
        _refuse_when_protected(pin_root, data_dir, "sigma update")
        made_live = False
        if from_path is not None:
            res = inst.update(data_dir, from_path=from_path, sha256=sha256)
        else:
            res = inst.update(data_dir, url=url or inst.DEFAULT_API, tag=tag,
                              asset=asset or inst.DEFAULT_ASSET, sha256=sha256,
                              allow_unverified=allow_unverified,
                              token=os.environ.get("GITHUB_TOKEN") or None)
    if as_json:
        click.echo(json.dumps({**res.to_json(), "live_in_agent": made_live}, indent=2))
        return
    what = "local rule set" if res.release == "local" else f"SigmaHQ release {res.release}"
    checked = {"github-digest": "verified against the release's sha256 digest",
               "pinned": "verified against --sha256",
               "github-digest+pinned": "verified against the release's digest and --sha256",
               "unverified": "NOT verified (--allow-unverified)",
               "local": "local source"}.get(res.verified, res.verified)
    if res.already_current:
        click.echo(f"{what} is already installed and live ({res.rules} rules); nothing changed")
    else:
        click.echo(f"installed {what} from {res.source}")
        click.echo(f"  sha256 {res.sha256} ({checked})")
        click.echo(f"  {res.rules} rules loaded, {res.unsupported} unsupported, {len(res.errors)} files with errors "
                   f"(of {res.files}; 'bastion sigma check {res.path}' lists them)")
        for e in res.errors[:5]:
            click.echo(f"  error: {e}")
        click.echo(f"  live at {res.path}")
        if res.previous is not None:
            click.echo(f"  previous set ({res.previous}) kept: 'bastion sigma rollback' restores it")
        click.echo("  the running agent evaluates it now" if made_live else
                   "  a running agent picks the new set up when it restarts")
    click.echo(inst.DRL_NOTICE)


def _refuse_when_protected(pin_root: Path, data_dir: Path, what: str) -> None:
    """With tamper protection on, the Sigma set is changed only by the agent (which checks
    the maintenance token): never here."""
    from bastion.detect.sigma.install import SigmaInstallError
    from bastion.errors import Location
    from bastion.guard.control import protection_pinned

    if protection_pinned(pin_root):
        raise SigmaInstallError(
            f"tamper protection is on and no agent on {data_dir} answers: `bastion {what}` goes "
            "through the running agent (with --token-file F); nothing was changed",
            location=Location(str(pin_root / "tamper")))


def _through_agent(data_dir: Path, socket_path: Path, cmd: str, args: dict[str, Any],
                   token_file: Path | None, pin_root: Path) -> tuple[Any, bool] | None:
    """When an agent keeps ``data_dir``, it runs ``cmd`` itself (the data dir may be
    under tamper protection, which the agent is exempt from) and makes the set live at once;
    the token, when given, is proven for exactly this command and these arguments.
    None when no such agent answers (the command runs here)."""
    import time

    from bastion.control import request
    from bastion.detect.sigma.install import InstallResult, SigmaInstallError
    from bastion.errors import Location
    from bastion.guard.control import agent_keeps, server_check, sigma_subject, token_prover
    from bastion.guard.identity import ROLE_AGENT
    from bastion.guard.token import read_token_file

    token = read_token_file(token_file) if token_file is not None else None
    if not agent_keeps(socket_path, data_dir):
        return None
    prover = token_prover(token, sigma_subject(cmd, args)) if token is not None else None
    started = request(socket_path, cmd, timeout=60.0, args=args, prover=prover,
                      verify_server=server_check(pin_root, (ROLE_AGENT,), socket_path))
    if not started.get("started"):
        raise SigmaInstallError(str(started.get("error", "refused")), location=Location(str(socket_path)))
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        job = request(socket_path, "sigma.job", timeout=10.0)["job"]
        if job.get("id") == started.get("id") and job.get("state") != "running":
            if job["state"] == "failed":
                raise SigmaInstallError(f"{job['error']} (the installed set is unchanged)",
                                        location=Location(str(socket_path)))
            return InstallResult.from_json(job["result"]), bool(job.get("live"))
        time.sleep(0.3)
    raise SigmaInstallError(f"the agent's {cmd} did not finish in 15 minutes",
                            location=Location(str(socket_path)))


@sigma_group.command("installed")
@_DATA_DIR_OPT
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def installed_cmd(data_dir: Path, as_json: bool) -> None:
    """Show the installed SigmaHQ rule set (or how to install one)."""
    from bastion.detect.sigma import install as inst

    info = inst.installed_info(data_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(inst.describe_installed(info))
    if info["installed"]:
        click.echo(f"  source {info['source']}")
        click.echo(f"  sha256 {info['sha256']} ({info['verified']})")
        click.echo(f"  path   {info['path']}")
        if info["previous"]:
            click.echo(f"  previous set ({info['previous']}) kept for 'bastion sigma rollback'")
        click.echo(inst.DRL_NOTICE)


@sigma_group.command("rollback")
@_DATA_DIR_OPT
@_SOCKET_OPT
@_TOKEN_OPT
@_PIN_ROOT_OPT
def rollback_cmd(data_dir: Path, socket_path: Path, token_file: Path | None,
                 pin_root: Path) -> None:
    """Make the previously installed rule set live again."""
    from bastion.detect.sigma import install as inst

    live = _through_agent(data_dir, socket_path, "sigma.rollback", {}, token_file, pin_root)
    if live is not None:
        res, made_live = live
    else:
        _refuse_when_protected(pin_root, data_dir, "sigma rollback")
        res, made_live = inst.rollback(data_dir), False
    click.echo(f"rolled back to {res.release} ({res.rules} rules) at {res.path}; "
               f"the set it replaced ({res.previous}) is now the previous one"
               + ("; the running agent evaluates it now" if made_live else ""))
