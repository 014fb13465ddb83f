"""Run checks: take a baseline, scan against one, report, convert to Findings.

Nothing here acts: findings that call for a kill carry ``action="kill"``
and the response layer decides (see :mod:`.response`).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from bastion.detect.engine import Finding
from bastion.errors import BastionError
from bastion.integrity.base import Check, IntegrityFinding
from bastion.integrity import baseline as baseline_mod
from bastion.integrity.baseline import Baseline

log = logging.getLogger("bastion.integrity")

# ATT&CK: T1014 Rootkit; T1547.006 Kernel Modules and Extensions; T1564.001-like hiding
_ATTACK = {"kernel_text": ("T1014",), "syscall_dispatch": ("T1014",), "bpf_inventory": ("T1014",),
           "hidden_tasks": ("T1014", "T1564"), "kernel_state": ("T1014", "T1547.006")}


@dataclass
class CheckResult:
    name: str
    status: str                      # ok | findings | unavailable | no-baseline | error
    reason: str = ""
    findings: list[IntegrityFinding] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)   # what the scan left unjudged
    baseline_used: bool = False      # the check compared against a baseline section

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "reason": self.reason,
                "seconds": round(self.seconds, 4), "findings": [f.to_json() for f in self.findings],
                "notes": list(self.notes), "baseline_used": self.baseline_used}


@dataclass
class ScanReport:
    results: list[CheckResult]
    started: float
    wall_s: float
    cpu_s: float
    kernel: str

    @property
    def findings(self) -> list[IntegrityFinding]:
        return [f for r in self.results for f in r.findings]

    def to_json(self) -> dict[str, Any]:
        return {"started": self.started, "wall_s": round(self.wall_s, 4), "cpu_s": round(self.cpu_s, 4),
                "kernel": self.kernel, "checks": [r.to_json() for r in self.results],
                "findings": len(self.findings)}


def take_baseline(checks: Sequence[Check]) -> Baseline:
    return baseline_mod.take(checks)


def run_scan(checks: Sequence[Check], baseline: Baseline | None) -> ScanReport:
    started = time.time()
    w0, c0 = time.perf_counter(), time.process_time()
    results: list[CheckResult] = []
    kernel_ok = baseline is None or baseline.kernel == platform.release()
    for c in checks:
        t0 = time.perf_counter()
        reason = c.available()
        if reason is not None:
            results.append(CheckResult(c.name, "unavailable", f"unavailable here, because {reason}"))
            continue
        section = baseline.checks.get(c.name) if baseline is not None and kernel_ok else None
        if section is None and c.needs_baseline:
            why = ("the baseline was taken on kernel " + baseline.kernel if baseline is not None and not kernel_ok
                   else "needs a baseline" if baseline is None else "no baseline for this check")
            results.append(CheckResult(c.name, "no-baseline", why))
            continue
        try:
            found = c.scan(section)
        except BastionError as exc:
            log.warning("integrity check %s failed: %s", c.name, exc)
            results.append(CheckResult(c.name, "error", str(exc), seconds=time.perf_counter() - t0))
            continue
        results.append(CheckResult(c.name, "findings" if found else "ok", "", found,
                                   time.perf_counter() - t0, list(c.notes), section is not None))
    return ScanReport(results, started, time.perf_counter() - w0, time.process_time() - c0,
                      platform.release())


def to_finding(f: IntegrityFinding) -> Finding:
    return Finding(rule=f"bastion.integrity.{f.code}", title=f.title, severity=f.severity,
                   attack=_ATTACK.get(f.check, ("T1014",)), action=f.action, event=None, pid=f.pid,
                   evidence={"check": f.check, **f.evidence})


def to_findings(report: ScanReport) -> list[Finding]:
    """Every integrity finding as an engine Finding (alert with evidence; maybe kill)."""
    return [to_finding(f) for f in report.findings]


class PeriodicScanner:
    """In process: ``tick(now)`` runs a scan when ``interval_s`` has passed and
    hands each Finding to ``emit`` (the agent runs its scans in a worker
    process instead: :class:`bastion.integrity.worker.WorkerScanner`).
    ``make_checks`` builds fresh checks (and view) per scan; ``load_baseline``
    re-reads the file each time (a new baseline takes effect without a
    restart) and may return None (no baseline: the checks that need none
    still run).  A baseline that cannot
    be loaded is alerted (high, once per distinct error) and the scan runs as
    without one."""

    def __init__(self, make_checks: Callable[[], tuple[Sequence[Check], Callable[[], None]]],
                 load_baseline: Callable[[], Baseline | None], interval_s: float,
                 emit: Callable[[Finding], None]) -> None:
        self.make_checks = make_checks
        self.load_baseline = load_baseline
        self.interval_s = interval_s
        self.emit = emit
        self.next_due = 0.0
        self.last: ScanReport | None = None
        self._load_error = ""

    def tick(self, now: float) -> ScanReport | None:
        if now < self.next_due:
            return None
        self.next_due = now + self.interval_s
        base: Baseline | None
        try:
            base = self.load_baseline()
        except BastionError as exc:
            base = None
            log.warning("integrity baseline unusable, scanning without it: %s", exc)
            if str(exc) != self._load_error:
                self._load_error = str(exc)
                self.emit(Finding(
                    rule="bastion.integrity.baseline_unusable", severity="high", attack=("T1014",),
                    title=f"Integrity baseline unusable ({exc}); only the checks that need no "
                          "baseline run", action="alert", event=None, pid=0,
                    evidence={"error": str(exc)}))
        else:
            self._load_error = ""
        checks, close = self.make_checks()
        try:
            report = run_scan(checks, base)
        finally:
            close()
        for f in to_findings(report):
            self.emit(f)
        self.last = report
        return report
