"""``bastion integrity baseline|scan`` — the kernel integrity guard from the shell.

Exit status of ``scan``: 0 clean (unavailable checks do not count), 3 when
there are findings; errors exit 1 and usage errors 2 (the ``bastion``
command's conventions), so a script can tell "found something" from "could
not look".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bastion.errors import KernelError
from bastion.integrity import baseline as baseline_mod
from bastion.integrity.base import KernelView
from bastion.integrity.checks import CHECK_NAMES, default_checks
from bastion.integrity.scanner import run_scan, take_baseline

EXIT_FINDINGS = 3

_BPF_DIR = click.option("--bpf-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                        help="Directory of the compiled BPF objects (default: the build or install dir).")
_ALLOW = click.option("--allow-bpf", "allow_bpf", multiple=True, metavar="NAME[:TAG]",
                      help="Allowlist a BPF program by name (and tag); repeatable.")
_ONLY = click.option("--check", "only", multiple=True, type=click.Choice(CHECK_NAMES),
                     help="Run only this check; repeatable.")


def _need_root() -> None:
    from bastion.assembly import prepare_host

    prepare_host("integrity checks (BPF programs, kallsyms addresses)")


@click.group("integrity")
def integrity_group() -> None:
    """Kernel integrity guard: kernel text, syscall dispatch, BPF inventory, hidden tasks, kernel state."""


@integrity_group.command("baseline")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False),
              default=baseline_mod.DEFAULT_BASELINE, show_default=True, help="Baseline file (written 0600).")
@_BPF_DIR
@_ONLY
def baseline_cmd(out: Path, bpf_dir: Path | None, only: tuple[str, ...]) -> None:
    """Record the current kernel as the known-good baseline."""
    _need_root()
    with KernelView(bpf_dir=bpf_dir) as view:
        b = take_baseline(default_checks(view, only=only))
    baseline_mod.save(b, out)
    click.echo(f"baseline written to {out}: {', '.join(sorted(b.checks)) or 'no checks'}")
    for name, reason in sorted(b.unavailable.items()):
        click.echo(f"  {name}: unavailable here, because {reason}")


@integrity_group.command("scan")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path, dir_okay=False),
              default=baseline_mod.DEFAULT_BASELINE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_BPF_DIR
@_ALLOW
@_ONLY
def scan_cmd(baseline_path: Path, as_json: bool, bpf_dir: Path | None, allow_bpf: tuple[str, ...],
             only: tuple[str, ...]) -> None:
    """Compare the kernel with the baseline; exit 3 when there are findings."""
    _need_root()
    base = baseline_mod.load(baseline_path)
    with KernelView(bpf_dir=bpf_dir) as view:
        report = run_scan(default_checks(view, bpf_allowlist=allow_bpf, only=only), base)
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        for r in report.results:
            line = f"{r.name:18} {r.status}"
            if r.reason:
                line += f" — {r.reason}"
            click.echo(line)
            for f in r.findings:
                click.echo(f"  [{f.severity}] {f.title}")
        click.echo(f"{len(report.findings)} finding(s); scan took {report.wall_s:.3f} s "
                   f"(cpu {report.cpu_s:.3f} s)")
    if report.findings:
        sys.exit(EXIT_FINDINGS)
