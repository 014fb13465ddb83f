"""The agent's integrity work, run in a short-lived worker process.

A baseline or a scan parses kallsyms and reads 18 MiB of kernel text in
Python: about 0.5 s of CPU and, inside the agent, 40-100 MB of heap that the
allocator keeps afterwards, plus a GIL held against the event loop.  So the
agent runs each one as ``python -m bastion.integrity.worker ensure|scan`` and
reads one JSON line back: its memory is returned when the worker exits, and
the event loop keeps its interpreter.  The worker is given the agent's pid:
BPF programs held only by the agent are Bastion's own (not judged), and the
agent is never named as a holder to kill.

Parent side: :func:`ensure_in_worker`, :class:`WorkerScanner`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from bastion.errors import BastionError, ConfigError, Location
from bastion.textsafe import log_to_stderr

if TYPE_CHECKING:
    from bastion.detect.engine import Finding

log = logging.getLogger("bastion.integrity")

WORKER_TIMEOUT_S = 180.0


# ---- the worker ------------------------------------------------------------------------


def _make_checks(args: argparse.Namespace) -> Any:
    from bastion.integrity.base import KernelView
    from bastion.integrity.checks import default_checks

    def make() -> Any:
        view = KernelView()
        return default_checks(view, bpf_allowlist=args.allow_bpf, trusted_pids=args.trust_pid), view.close
    return make


def _ensure(args: argparse.Namespace) -> dict[str, Any]:
    from bastion.integrity import baseline as baseline_mod
    try:
        out = baseline_mod.ensure(args.data_dir, _make_checks(args), path=args.baseline)
    except BastionError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "outcome": out.to_json(), "describe": out.describe()}


def _scan(args: argparse.Namespace) -> dict[str, Any]:
    from bastion.integrity import baseline as baseline_mod
    from bastion.integrity.scanner import run_scan
    base, err = None, None
    if args.baseline is not None:
        try:
            base = baseline_mod.load(args.baseline)
        except BastionError as exc:
            err = str(exc)
    checks, close = _make_checks(args)()
    try:
        report = run_scan(checks, base)
    finally:
        close()
    return {"ok": True, "report": report.to_json(), "baseline_error": err}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bastion.integrity.worker")
    ap.add_argument("what", choices=("ensure", "scan"))
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--baseline", type=Path, default=None)
    ap.add_argument("--allow-bpf", action="append", default=[])
    ap.add_argument("--trust-pid", action="append", type=int, default=[])
    args = ap.parse_args(argv)
    log_to_stderr(logging.WARNING)
    result = _ensure(args) if args.what == "ensure" else _scan(args)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    return 0


# ---- the agent's side ------------------------------------------------------------------


def _run(what: str, data_dir: Path, baseline: Path | None, allow_bpf: Sequence[str],
         trusted_pids: Sequence[int], timeout: float) -> dict[str, Any]:
    # -P: the agent's working directory is not put on the worker's import path
    argv = [sys.executable, "-I", "-B", "-m", "bastion.integrity.worker", what, "--data-dir", str(data_dir)]
    if baseline is not None:
        argv += ["--baseline", str(baseline)]
    for a in allow_bpf:
        argv += ["--allow-bpf", a]
    for p in trusted_pids:
        argv += ["--trust-pid", str(p)]
    where = Location(f"integrity worker ({what})")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise BastionError(f"did not finish within {timeout:.0f} s", location=where) from exc
    except OSError as exc:
        raise BastionError(f"cannot start: {exc.strerror or exc}", location=where) from exc
    lines = r.stdout.strip().splitlines()
    try:
        if r.returncode != 0 or not lines:
            raise ValueError("no result")
        doc = json.loads(lines[-1])
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return doc
    except ValueError as exc:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:]) or "no output"
        raise BastionError(f"failed (exit {r.returncode}): {tail}", location=where) from exc


def ensure_in_worker(data_dir: Path, *, path: Path | None = None, allow_bpf: Sequence[str] = (),
                     trusted_pids: Sequence[int] = (),
                     timeout: float = WORKER_TIMEOUT_S) -> tuple[dict[str, Any], str]:
    """:func:`bastion.integrity.baseline.ensure` in a worker: (outcome JSON, its sentence).

    Raises :class:`ConfigError` with the worker's message (e.g. a corrupt
    baseline, named) or :class:`BastionError` when the worker itself failed.
    """
    doc = _run("ensure", data_dir, path, allow_bpf, trusted_pids, timeout)
    if not doc.get("ok"):
        raise ConfigError(str(doc.get("error", "unknown error")))
    outcome = doc.get("outcome")
    if not isinstance(outcome, dict):
        raise BastionError("integrity worker (ensure) returned no outcome")
    return outcome, str(doc.get("describe", ""))


@dataclass
class WorkerScan:
    findings: list[Finding]
    baseline_error: str | None
    report: dict[str, Any] = field(default_factory=dict)


def scan_in_worker(data_dir: Path, baseline: Path | None, *, allow_bpf: Sequence[str] = (),
                   trusted_pids: Sequence[int] = (), timeout: float = WORKER_TIMEOUT_S) -> WorkerScan:
    """One scan in a worker; its findings as engine Findings."""
    from bastion.integrity.base import IntegrityFinding
    from bastion.integrity.scanner import to_finding

    doc = _run("scan", data_dir, baseline, allow_bpf, trusted_pids, timeout)
    report = doc.get("report")
    if not isinstance(report, dict):
        raise BastionError("integrity worker (scan) returned no report")
    try:
        found = [to_finding(IntegrityFinding.from_json(f))
                 for c in report.get("checks", []) for f in c.get("findings", [])]
    except (KeyError, TypeError, ValueError) as exc:
        raise BastionError(f"integrity worker (scan) returned a malformed finding: {exc}") from exc
    err = doc.get("baseline_error")
    return WorkerScan(found, str(err) if err else None, report)


class WorkerScanner:
    """For the agent: ``tick(now)`` runs a scan in a worker every ``interval_s``
    and hands each Finding to ``emit``.  A baseline that cannot be loaded is
    alerted (high, once per distinct error) and the checks that need no
    baseline still run."""

    def __init__(self, data_dir: Path, baseline: Path | None, interval_s: float,
                 emit: Callable[[Finding], None], *, allow_bpf: Sequence[str] = (),
                 trusted_pids: Sequence[int] = (), scan: Callable[..., WorkerScan] = scan_in_worker) -> None:
        self.data_dir = data_dir
        self.baseline = baseline
        self.interval_s = interval_s
        self.emit = emit
        self.allow_bpf = tuple(allow_bpf)
        self.trusted_pids = tuple(trusted_pids)
        self._scan = scan
        self.next_due = 0.0
        self.last: WorkerScan | None = None
        self.last_time = 0.0          # wall clock of the last finished scan
        self.baseline_note = ""       # what the agent's start did with the baseline (for status)
        self._load_error = ""
        self._not_run: dict[str, str] = {}

    def status(self) -> dict[str, Any]:
        """For ``bastion status``: the guard is on, against which baseline, and its last scan."""
        last = self.last
        return {"on": True, "interval_s": self.interval_s,
                "baseline": str(self.baseline) if self.baseline is not None else None,
                "baseline_note": self.baseline_note,
                "baseline_error": self._load_error or None,
                "last_scan": self.last_time or None,
                "last_findings": len(last.findings) if last is not None else None,
                "checks_not_run": dict(self._not_run)}

    def tick(self, now: float) -> WorkerScan | None:
        if now < self.next_due:
            return None
        self.next_due = now + self.interval_s
        res = self._scan(self.data_dir, self.baseline, allow_bpf=self.allow_bpf,
                         trusted_pids=self.trusted_pids)
        if res.baseline_error and res.baseline_error != self._load_error:
            from bastion.detect.engine import Finding
            log.warning("integrity baseline unusable, scanning without it: %s", res.baseline_error)
            self.emit(Finding(
                rule="bastion.integrity.baseline_unusable", severity="high", attack=("T1014",),
                title=f"Integrity baseline unusable ({res.baseline_error}); only the checks that "
                      "need no baseline run", action="alert", event=None, pid=0,
                evidence={"error": res.baseline_error}))
        self._load_error = res.baseline_error or ""
        not_run = {str(c.get("name")): f"{c.get('status')}: {c.get('reason')}"
                   for c in res.report.get("checks", [])
                   if c.get("status") in ("unavailable", "no-baseline", "error")}
        if not_run and not_run != self._not_run:
            from bastion.detect.engine import Finding
            self.emit(Finding(
                rule="bastion.integrity.checks_not_run", severity="medium", attack=(),
                title="Kernel integrity checks not run: " + "; ".join(f"{k} ({v})" for k, v in sorted(not_run.items())),
                action="alert", event=None, pid=0, evidence={"checks": not_run}))
        self._not_run = not_run
        for f in res.findings:
            self.emit(f)
        self.last = res
        self.last_time = time.time()
        return res


if __name__ == "__main__":
    sys.exit(main())
