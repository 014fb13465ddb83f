"""Hidden tasks: the kernel's task iterator against the /proc listing (cross-view).

The /proc side lists ``/proc`` the way ``ps`` does (``readdir``), so a
rootkit that filters directory listings — a BPF getdents64 hook, an
LD_PRELOAD'd readdir — hides the task from it but not from ``iter/task``.
Two iterator passes bracket the listing; a thread-group leader seen by both
(same start time) but absent from the listing is hidden, and a successful
``stat("/proc/<pid>")`` is added as evidence (the usual sign of listing
filtering).  Platform differences that exist at baseline time (here: pid 1,
a platform init the iterator does not show) are recorded in the baseline as
exceptions by (pid, comm) — never hard-coded.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from bastion.integrity.base import Check, IntegrityFinding
from bastion.hostns import in_init_pid_ns
from bastion.integrity.kread import IterTask


def _comm(proc: str, pid: int) -> str:
    try:
        with open(f"{proc}/{pid}/comm", "rb") as f:
            raw = f.read().rstrip(b"\n")
    except OSError:
        return ""
    return "".join("?" if b <= 0x20 or b == 0x7F else chr(b) for b in raw[:15])


class HiddenTaskCheck(Check):
    name = "hidden_tasks"
    requires = ("root", "BPF iter/task")
    needs_baseline = False
    without_baseline = "tasks the kernel's task iterator sees that the /proc listing hides"
    with_baseline = ("tasks listed in /proc that the iterator does not see (the platform's own "
                     "differences are recorded in the baseline)")

    def available(self) -> str | None:
        reason = self.view.reader_reason()
        if reason:
            return reason
        if not in_init_pid_ns(str(self.view.proc)):
            return "the scanner runs in a child pid namespace: iterator and /proc pids differ"
        return None

    def views(self) -> tuple[dict[int, IterTask], set[int], dict[int, IterTask]]:
        rd = self.view.reader
        before = {t.tgid: t for t in rd.tasks() if t.pid == t.tgid}
        listed = {int(n) for n in os.listdir(self.view.proc) if n.isdigit()}
        after = {t.tgid: t for t in rd.tasks() if t.pid == t.tgid}
        return before, listed, after

    def _diff(self) -> tuple[list[IterTask], list[int]]:
        before, listed, after = self.views()
        iter_only = [t for pid, t in sorted(before.items())
                     if pid not in listed and pid in after and after[pid].start_ns == t.start_ns]
        seen = set(before) | set(after)
        proc_only = sorted(pid for pid in listed if pid not in seen)
        return iter_only, proc_only

    def baseline(self) -> dict[str, Any]:
        iter_only, proc_only = self._diff()
        proc = str(self.view.proc)
        return {"iter_only": [{"pid": t.tgid, "comm": t.comm} for t in iter_only],
                "proc_only": [{"pid": p, "comm": _comm(proc, p)} for p in proc_only]}

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        self.notes = []
        base = baseline or {}
        ok_iter = {(e["pid"], e["comm"]) for e in base.get("iter_only", [])}
        ok_proc = {(e["pid"], e["comm"]) for e in base.get("proc_only", [])}
        iter_only, proc_only = self._diff()
        proc = str(self.view.proc)
        out: list[IntegrityFinding] = []
        for t in iter_only:
            if (t.tgid, t.comm) in ok_iter:
                continue
            stat_ok = os.path.exists(f"{proc}/{t.tgid}")
            out.append(self.finding(
                "tasks.hidden", f"Task {t.tgid} ({t.comm}) is hidden from the /proc listing",
                "critical", {"pid": t.tgid, "comm": t.comm, "start_boottime_ns": t.start_ns,
                             "proc_entry_reachable": stat_ok,
                             "seen_by": "iter/task (twice)", "missing_from": f"readdir({proc})"},
                pid=t.tgid))
        if baseline is None:
            # without a baseline a /proc-only task may be the platform's own (here: pid 1)
            if proc_only:
                self.notes.append(f"{len(proc_only)} task(s) listed in /proc but not by the iterator "
                                  f"(pids {', '.join(map(str, proc_only[:8]))}): not judged without a baseline")
            return out
        for pid in proc_only:
            comm = _comm(proc, pid)
            if (pid, comm) in ok_proc or not os.path.exists(f"{proc}/{pid}"):
                continue
            out.append(self.finding(
                "tasks.iter_missing", f"Task {pid} ({comm}) is in /proc but not in the kernel's task iterator",
                "medium", {"pid": pid, "comm": comm}))
        return out
