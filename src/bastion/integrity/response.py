"""Responses to integrity findings — taken by the response layer, never by a check.

:func:`kill_loader` kills every process holding a rogue BPF program.  Each
holder is reached through a pidfd, and the process's start time (from
``/proc/<pid>/stat``, read *after* the pidfd is open, so the pidfd and the
check refer to the same process) must equal the one the scan recorded in the
finding's evidence: a pid reused between the scan and the kill is never hit,
and a holder recorded without a start time is not signalled at all.  Killing
the last holder closes its fds, which unloads the program unless it is pinned.

:func:`respond_to_rogue_program` is the dispatcher's handler for
``bastion.integrity.bpf.rogue_program`` / ``kill`` (registered by the
composition root, :func:`bastion.assembly.make_dispatcher`).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from bastion.detect.engine import Finding
from bastion.integrity.base import IntegrityFinding
from bastion.procstat import TICK_NS, pidfd_of
from bastion.respond.dispatch import OWN_SKIP, OwnCheck, own_lineage

RULE = "bastion.integrity.bpf.rogue_program"


def _start_ticks(pid: int, proc: Path) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def kill_loader(finding: IntegrityFinding | Finding, *, dry_run: bool = False,
                proc: Path = Path("/proc"), own: OwnCheck | None = None) -> list[dict[str, Any]]:
    """SIGKILL every holder of the program named in a ``bpf.rogue_program`` finding.

    Returns one outcome per holder, in the finding's order: ``kill``,
    ``would-kill``, or ``kill-skipped: <why>``.  This process and init are never
    targets, nor any holder ``own`` (pid, start_ns) says is ours (default: this
    process's lineage, :func:`bastion.respond.dispatch.own_lineage`; the dispatcher
    passes its own check, which adds the guardian and alerts each refusal: s21
    review F4, a rogue-program finding naming the guardian killed it); a holder
    without a recorded start time is skipped.
    """
    holders = finding.evidence.get("holders", [])
    out: list[dict[str, Any]] = []
    me = os.getpid()
    if own is None:
        lineage = own_lineage()

        def own(pid: int, start_ns: int) -> bool:
            return pid in lineage and (not start_ns or abs(lineage[pid] - start_ns) < TICK_NS)
    for h in holders:
        pid, start = int(h.get("pid", 0)), h.get("start_ticks")
        res: dict[str, Any] = {"pid": pid, "comm": h.get("comm", ""), "start_ticks": start}
        out.append(res)
        if pid <= 1 or pid == me:
            res["outcome"] = "kill-skipped: refusing to kill init or the scanner"
            continue
        if start is None:
            res["outcome"] = "kill-skipped: start time unknown"
            continue
        if own(pid, int(start) * TICK_NS):
            res["outcome"] = f"kill-skipped: {OWN_SKIP}"
            continue
        pidfd = pidfd_of(pid)
        if pidfd is None:
            res["outcome"] = "kill-skipped: already exited"
            continue
        try:
            now = _start_ticks(pid, proc)   # after the pidfd pins the process
            if now is None:
                res["outcome"] = "kill-skipped: already exited"
            elif now != int(start):
                res["outcome"] = "kill-skipped: pid reused"
            elif dry_run:
                res["outcome"] = "would-kill"
            else:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    res["outcome"] = "kill"
                except ProcessLookupError:
                    res["outcome"] = "kill-skipped: already exited"
        finally:
            os.close(pidfd)
    return out


def summarize(outcomes: list[dict[str, Any]], *, dry_run: bool) -> str:
    """One alert action for the per-holder outcomes: ``kill`` (every holder),
    ``kill (k of n holders; ...)``, ``would-kill`` or ``kill-skipped: ...``."""
    if not outcomes:
        return "kill-skipped: no holder process"
    done = "would-kill" if dry_run else "kill"
    n, k = len(outcomes), sum(1 for o in outcomes if o["outcome"] == done)
    why = sorted({str(o["outcome"]).removeprefix("kill-skipped: ") for o in outcomes
                  if o["outcome"] != done})
    if k == n:
        return done
    if k == 0:
        return "kill-skipped: " + "; ".join(why)
    return f"{done} ({k} of {n} holders; not the others: {'; '.join(why)})"


def respond_to_rogue_program(finding: Finding, dry_run: bool, own: OwnCheck
                             ) -> tuple[str, list[int], list[dict[str, Any]]]:
    """The dispatcher's handler: kill every holder by identity, never one ``own`` says is
    ours; (action, killed pids, outcomes)."""
    outcomes = kill_loader(finding, dry_run=dry_run, own=own)
    killed = sorted(int(o["pid"]) for o in outcomes if o["outcome"] == "kill")
    return summarize(outcomes, dry_run=dry_run), killed, outcomes


__all__ = ["RULE", "kill_loader", "respond_to_rogue_program", "summarize"]
