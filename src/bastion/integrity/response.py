"""Responses to integrity findings — called by the response layer, never by a check.

:func:`kill_loader` kills the processes holding a rogue BPF program.  Each
holder is reached through a pidfd, and the process's start time (from
``/proc/<pid>/stat``, read *after* the pidfd is open, so the pidfd and the
check refer to the same process) must equal the one recorded in the
finding's evidence: a reused pid is never hit.  Killing the last holder
closes its fds, which unloads the program unless it is pinned.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from bastion.detect.engine import Finding
from bastion.integrity.base import IntegrityFinding


def _start_ticks(pid: int, proc: Path) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def kill_loader(finding: IntegrityFinding | Finding, *, dry_run: bool = False,
                proc: Path = Path("/proc")) -> list[dict[str, Any]]:
    """SIGKILL every holder of the program named in a ``bpf.rogue_program`` finding.

    Returns one outcome per holder: ``kill``, ``would-kill``, or
    ``kill-skipped: <why>``.  This process is never a target.
    """
    holders = finding.evidence.get("holders", [])
    out: list[dict[str, Any]] = []
    me = os.getpid()
    for h in holders:
        pid, start = int(h.get("pid", 0)), h.get("start_ticks")
        res: dict[str, Any] = {"pid": pid, "comm": h.get("comm", "")}
        if pid <= 1 or pid == me:
            res["outcome"] = "kill-skipped: refusing to kill init or the scanner"
            out.append(res)
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            res["outcome"] = "kill-skipped: already exited"
            out.append(res)
            continue
        try:
            if start is not None and _start_ticks(pid, proc) != int(start):
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
        out.append(res)
    return out
