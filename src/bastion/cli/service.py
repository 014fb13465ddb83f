"""``bastion install`` and ``bastion uninstall`` (registered by cli/main.py)."""

from __future__ import annotations

from pathlib import Path

import click

from bastion.install import install, uninstall


@click.command("install")
@click.option("--prefix", type=click.Path(path_type=Path, file_okay=False), default=Path("/"),
              show_default=True, help="Staging root to install under (DESTDIR-style).")
@click.option("--bin", "bastion_bin", type=click.Path(path_type=Path, dir_okay=False),
              help="The bastion executable the unit runs (default: this installation's).")
def install_cmd(prefix: Path, bastion_bin: Path | None) -> None:
    """Install the policy, directories, systemd unit and logrotate rule."""
    for step in install(prefix, bastion_bin=bastion_bin):
        click.echo(str(step))
    if prefix == Path("/"):
        click.echo("next: systemctl enable --now bastion   "
                   "(without systemd: run 'bastion run --policy /etc/bastion/policy.yaml' "
                   "under your supervisor)")


@click.command("uninstall")
@click.option("--prefix", type=click.Path(path_type=Path, file_okay=False), default=Path("/"),
              show_default=True, help="Staging root the install went to.")
@click.option("--purge", is_flag=True, help="Also remove /etc/bastion, /var/lib/bastion, /var/log/bastion.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="The maintenance token (needed once tamper protection is on).")
def uninstall_cmd(prefix: Path, purge: bool, token_file: Path | None) -> None:
    """Remove the unit and logrotate rule (and with --purge the policy, store and logs)."""
    from bastion.cli.guard import require_token

    if prefix == Path("/"):
        require_token(token_file, what="uninstall")
    for step in uninstall(prefix, purge=purge):
        click.echo(str(step))
