"""In-process cost of behavior.secure_deletion (s17-wipe) on a synthetic stream of
ordinary file activity: execs of common tools, write-opens (new files with O_TRUNC,
log appends, databases' O_RDWR|O_CREAT, in-place rewrites of existing files), renames
(editor saves, rotation) and unlinks of files nobody overwrote, the process table
already updated (as the agent does).  Reported: µs per event of that stream, median of
5 passes, one process (no root needed).  The opens carry the kernel's answer (created /
empty at the open) as an ABI 2.10 sensor reports it; ``--fallback``: records that do not
say (an older object: the flag-based path)."""

from __future__ import annotations

import statistics
import sys
import time

from _common import ROOT, emit

sys.path.insert(0, str(ROOT / "src"))

from bastion.detect.behavior.wipe import SecureDeletion  # noqa: E402
from bastion.detect.engine import RuleContext  # noqa: E402
from bastion.events import Event, ExecEvent, FileEvent, Proc  # noqa: E402
from bastion.proctable import ProcessTable  # noqa: E402

TOOLS = [("/usr/bin/cp", ["cp", "a", "b"]), ("/usr/bin/python3.11", ["python3", "app.py"]),
         ("/usr/bin/sqlite3", ["sqlite3", "x.db"]), ("/usr/bin/vim", ["vim", "notes"]),
         ("/usr/bin/rm", ["rm", "old"]), ("/usr/bin/mv", ["mv", "a", "b"])]


def stream(n: int, state: bool = True) -> list[Event]:
    out: list[Event] = []

    def st(created: bool, empty: bool) -> dict[str, bool | None]:
        return {"created": created, "empty": empty} if state else {}

    t = 1_000_000_000
    for i in range(n):
        exe, argv = TOOLS[i % len(TOOLS)]
        pid = 1000 + i // 8
        proc = Proc(pid=pid, tid=pid, ppid=100, uid=0, euid=0, gid=0, cgroup_id=1,
                    comm=argv[0][:15], exe=exe, start_ns=pid * 1000)
        t += 20_000
        k = i % 8
        d = f"/srv/app{i % 50}"
        if k == 0:
            out.append(ExecEvent(t, proc, filename=exe, cwd="/srv", argv=tuple(argv),
                                 exe_dev=1, exe_ino=500 + i % len(TOOLS)))
        elif k == 1:
            out.append(FileEvent(t, proc, op="open", path=f"{d}/new{i}", flags=0o1101, dev=1,
                                 ino=10_000 + i, **st(True, True)))
        elif k == 2:
            out.append(FileEvent(t, proc, op="open", path="/var/log/app.log", flags=0o2101,
                                 dev=1, ino=7, **st(False, False)))
        elif k == 3:
            out.append(FileEvent(t, proc, op="open", path=f"{d}/x.db", flags=0o102, dev=1,
                                 ino=20_000 + i % 50, **st(False, False)))
        elif k == 4:
            out.append(FileEvent(t, proc, op="open", path=f"{d}/state{i % 200}", flags=0o1,
                                 dev=1, ino=30_000 + i % 200, **st(False, False)))
        elif k == 5:
            out.append(FileEvent(t, proc, op="rename", path=f"{d}/new{i - 4}",
                                 path2=f"{d}/cur{i % 100}"))
        elif k == 6:
            out.append(FileEvent(t, proc, op="unlink", path=f"{d}/tmp{i}"))
        else:
            out.append(FileEvent(t, proc, op="unlink", path=f"{d}/cur{(i + 37) % 100}"))
    return out


def one_pass(events: list[Event]) -> float:
    procs = ProcessTable()
    parent = Proc(pid=100, tid=100, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="bash",
                  exe="/usr/bin/bash", start_ns=100_000)
    procs.update(ExecEvent(1, parent, filename="/usr/bin/bash", cwd="/root",
                           argv=("bash", "/opt/app/main.sh")))
    rule = SecureDeletion()
    ctx = RuleContext(procs)
    spent = 0.0
    for ev in events:
        procs.update(ev)
        t0 = time.perf_counter()
        rule.on_event(ev, ctx)
        spent += time.perf_counter() - t0
    return spent / len(events) * 1e6


def main() -> int:
    fallback = "--fallback" in sys.argv[1:]
    events = stream(40_000, state=not fallback)
    us = statistics.median(one_pass(events) for _ in range(5))
    emit("wipe_rule_fallback_us_per_event" if fallback else "wipe_rule_us_per_event", us, "us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
