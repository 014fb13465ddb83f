"""The dispatcher: findings in, actions taken, alert records out.

Only this module acts on processes.  A kill goes through a pidfd opened for
the exact process (pid + start time checked), so a reused pid is never hit.
With ``dry_run`` the action is recorded as ``would-<action>`` and not taken.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from typing import Any

from bastion.detect.engine import Finding
from bastion.events import to_json
from bastion.proctable import ProcessTable
from bastion.timefmt import format_time

log = logging.getLogger("bastion.respond")


class Dispatcher:
    def __init__(self, procs: ProcessTable, *, dry_run: bool = False) -> None:
        self.procs = procs
        self.dry_run = dry_run

    def _kill(self, f: Finding) -> str:
        start = f.event.proc.start_ns if f.event is not None else 0
        entry = self.procs.get(f.pid)
        if entry is not None and not entry.same_process(start):
            return "kill-skipped: pid reused"
        try:
            pidfd = os.pidfd_open(f.pid)
        except ProcessLookupError:
            return "kill-skipped: already exited"
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            return "kill-skipped: already exited"
        finally:
            os.close(pidfd)
        return "kill"

    def dispatch(self, f: Finding, now_ns: int) -> dict[str, Any]:
        action = f.action
        outcome = action
        if action == "kill":
            outcome = "would-kill" if self.dry_run else self._kill(f)
        entry = self.procs.get(f.pid)
        ev = f.event
        proc = {
            "pid": f.pid,
            "ppid": entry.ppid if entry else (ev.proc.ppid if ev else 0),
            "exe": (ev.proc.exe if ev and ev.proc.exe else (entry.exe if entry else "")),
            "cmdline": " ".join(entry.cmdline) if entry else "",
            "uid": entry.uid if entry else (ev.proc.uid if ev else 0),
        }
        alert: dict[str, Any] = {
            "time": format_time(ev.time_ns if ev else now_ns),
            "id": uuid.uuid4().hex,
            "rule": f.rule,
            "title": f.title,
            "severity": f.severity,
            "attack": list(f.attack),
            "action": outcome,
            "process": proc,
        }
        for k, v in f.meta.items():
            alert.setdefault(k, v)
        if f.enforced_by:
            alert["enforced_by"] = f.enforced_by
        if f.evidence:
            alert["evidence"] = f.evidence
        if ev is not None:
            alert["event"] = to_json(ev)
        log.info("alert %s %s: %s", f.severity, f.rule, f.title)
        return alert
