"""``bastion integrity baseline|scan`` — the kernel integrity guard from the shell.

The baseline of the running kernel lives in
``<data dir>/integrity/<kernel release>.json`` (the agent takes it on first
start).  ``scan`` without one runs the checks that need none and names the
ones that do.

Exit status of ``scan``: 0 clean (unavailable checks and checks that need a
missing baseline do not count), 3 when there are findings; errors exit 1 and
usage errors 2 (the ``bastion`` command's conventions), so a script can tell
"found something" from "could not look".
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import click

from bastion.errors import KernelError
from bastion.integrity import baseline as baseline_mod
from bastion.integrity.base import KernelView
from bastion.integrity.checks import CHECK_NAMES, default_checks
from bastion.integrity.scanner import ScanReport, run_scan, take_baseline
from bastion.paths import DEFAULT_DATA_DIR
from bastion.textsafe import clean

EXIT_FINDINGS = 3

_BPF_DIR = click.option("--bpf-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                        help="Directory of the compiled BPF objects (default: the build or install dir).")
_ALLOW = click.option("--allow-bpf", "allow_bpf", multiple=True, metavar="NAME[:TAG]",
                      help="Allowlist a BPF program by name (and tag); repeatable.")
_ONLY = click.option("--check", "only", multiple=True, type=click.Choice(CHECK_NAMES),
                     help="Run only this check; repeatable.")
_DATA = click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), envvar="BASTION_DATA_DIR",
                     default=DEFAULT_DATA_DIR, show_default=True,
                     help="The agent's data directory; baselines live in its integrity/ "
                          "(env BASTION_DATA_DIR).")


def _need_root() -> None:
    from bastion.assembly import prepare_host

    prepare_host("integrity checks (BPF programs, kallsyms addresses)")


@click.group("integrity")
def integrity_group() -> None:
    """Kernel integrity guard: kernel text, syscall dispatch, BPF inventory, hidden tasks, kernel state."""


@integrity_group.command("baseline")
@click.option("--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Baseline file, written 0600 [default: DATA_DIR/integrity/<kernel release>.json].")
@_DATA
@_BPF_DIR
@_ONLY
def baseline_cmd(out: Path | None, data_dir: Path, bpf_dir: Path | None, only: tuple[str, ...]) -> None:
    """Record the current kernel as the known-good baseline."""
    _need_root()
    path = out if out is not None else baseline_mod.release_path(data_dir)
    existed = path.exists()
    with KernelView(bpf_dir=bpf_dir) as view:
        b = take_baseline(default_checks(view, only=only))
    baseline_mod.save(b, path)
    click.echo(f"baseline of kernel {b.kernel} {'replaced' if existed else 'written'} in {path}: "
               f"{', '.join(sorted(b.checks)) or 'no checks'}")
    for name, reason in sorted(b.unavailable.items()):
        click.echo(f"  {name}: unavailable here, because {reason}")


def _print_report(report: ScanReport) -> None:
    for r in report.results:
        line = f"{r.name:18} {r.status}"
        if r.reason:
            line += f" — {r.reason}"
        click.echo(line)
        for f in r.findings:
            click.echo(clean(f"  [{f.severity}] {f.title}"))   # a module's own name
        for note in r.notes:
            click.echo(f"  note: {note}")
    click.echo(f"{len(report.findings)} finding(s); scan took {report.wall_s:.3f} s "
               f"(cpu {report.cpu_s:.3f} s)")


@integrity_group.command("scan")
@click.option("--baseline", "baseline_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Baseline file [default: DATA_DIR/integrity/<kernel release>.json; when that is "
                   "missing, only the checks that need no baseline run].")
@_DATA
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_BPF_DIR
@_ALLOW
@_ONLY
def scan_cmd(baseline_path: Path | None, data_dir: Path, as_json: bool, bpf_dir: Path | None,
             allow_bpf: tuple[str, ...], only: tuple[str, ...]) -> None:
    """Compare the kernel with the baseline; exit 3 when there are findings.

    Without a baseline, the checks that need none run (syscall dispatch,
    dangerous BPF programs, hidden tasks, taint) and the others are named.
    """
    _need_root()
    path = baseline_path if baseline_path is not None else baseline_mod.release_path(data_dir)
    # an explicit --baseline must exist; the default one may not exist yet
    base = baseline_mod.load(path) if baseline_path is not None or path.exists() else None
    with KernelView(bpf_dir=bpf_dir) as view:
        checks = default_checks(view, bpf_allowlist=allow_bpf, only=only)
        report = run_scan(checks, base)
    by_name = {c.name: c for c in checks}
    partial = [(r.name, by_name[r.name].with_baseline) for r in report.results
               if r.status in ("ok", "findings") and not r.baseline_used and by_name[r.name].with_baseline]
    missing = [(r.name, by_name[r.name].with_baseline) for r in report.results if r.status == "no-baseline"]
    others = [rel for _, rel, _ in baseline_mod.other_releases(path.parent, path)] if base is None else []
    take_cmd = "bastion integrity baseline" + (f" --data-dir {data_dir}" if data_dir != DEFAULT_DATA_DIR else "")
    if as_json:
        doc = report.to_json()
        doc["baseline"] = str(path) if base is not None else None
        doc["needs_baseline"] = [n for n, _ in missing]
        doc["baseline_adds"] = {n: what for n, what in missing + partial}
        if base is None:
            doc["take_baseline"] = take_cmd
            doc["other_releases"] = others
        click.echo(json.dumps(doc, sort_keys=True))
    else:
        if base is None:
            click.echo(f"no integrity baseline of kernel {platform.release()} ({path}): "
                       "running the checks that need none")
            if others:
                click.echo(f"  baselines of other kernel releases are kept, not used: {', '.join(others)}")
        _print_report(report)
        if missing or (base is None and partial):
            click.echo("needs a baseline:")
            for name, what in missing:
                click.echo(f"  {name}: {what}")
            if base is None:
                for name, what in partial:
                    click.echo(f"  {name} (ran without one; a baseline adds): {what}")
            click.echo(f"take one with: {take_cmd}" + ("  (the agent takes one on its first start)"
                                                      if base is None else ""))
    if report.findings:
        sys.exit(EXIT_FINDINGS)
