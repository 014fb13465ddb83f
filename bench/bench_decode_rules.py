"""In-process cost of the three decode rules (s16-decode: inline_decode, script_decode,
generated_shell) on a synthetic exec/exit stream of ordinary commands (admin tools,
``sh -c`` pipelines, interpreter one-liners that decode nothing, a few scripts), the
process table already updated (as the agent does).  Reported: µs per exec/exit event for
the three rules together, median of 5 passes, one process (s16-fixdet)."""

from __future__ import annotations

import statistics
import sys
import time

from _common import ROOT, emit

sys.path.insert(0, str(ROOT / "src"))

from bastion.detect.behavior.decode import GeneratedShell, InlineDecode, ScriptDecode  # noqa: E402
from bastion.detect.engine import RuleContext  # noqa: E402
from bastion.events import Event, ExecEvent, ExitEvent, Proc  # noqa: E402
from bastion.proctable import ProcessTable  # noqa: E402

CMDS: list[tuple[str, list[str], str, str]] = [
    ("/usr/bin/ls", ["ls", "-la", "/etc"], "tty", "pipe"),
    ("/usr/bin/cat", ["cat", "/etc/hostname"], "tty", "tty"),
    ("/usr/bin/grep", ["grep", "-r", "root", "/etc/passwd"], "pipe", "tty"),
    ("/usr/bin/dash", ["sh", "-c", "true | wc -l"], "tty", "tty"),
    ("/usr/bin/wc", ["wc", "-l"], "pipe", "tty"),
    ("/usr/bin/python3.11", ["python3", "-c", "import os; os.listdir('/')"], "tty", "tty"),
    ("/usr/bin/id", ["id"], "tty", "file"),
    ("/usr/bin/uname", ["uname", "-a"], "tty", "pipe"),
    ("/usr/bin/bash", ["bash", "/opt/app/run.sh"], "tty", "tty"),
    ("/usr/bin/sed", ["sed", "s/a/b/"], "pipe", "pipe"),
    ("/usr/bin/date", ["date"], "tty", "tty"),
    ("/usr/bin/perl", ["perl", "-ne", "print if /x/"], "pipe", "tty"),
]


def stream(n: int) -> list[Event]:
    out: list[Event] = []
    t = 1_000_000_000
    for i in range(n):
        exe, argv, sin, sout = CMDS[i % len(CMDS)]
        pid = 1000 + i
        proc = Proc(pid=pid, tid=pid, ppid=100, uid=0, euid=0, gid=0, cgroup_id=1,
                    comm=argv[0][:15], exe=exe, start_ns=pid * 1000)
        sin = f"pipe:[{9000 + i}]" if sin == "pipe" else sin
        sout = f"pipe:[{9001 + i}]" if sout == "pipe" else sout
        t += 50_000
        out.append(ExecEvent(t, proc, filename=exe, cwd="/root", argv=tuple(argv),
                             stdin=sin, stdout=sout))
        t += 50_000
        out.append(ExitEvent(t, proc, exit_code=0))
    return out


def one_pass(events: list[Event]) -> float:
    procs = ProcessTable()
    parent = Proc(pid=100, tid=100, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="bash",
                  exe="/usr/bin/bash", start_ns=100_000)
    procs.update(ExecEvent(1, parent, filename="/usr/bin/bash", cwd="/root",
                           argv=("bash", "/opt/app/main.sh"), stdin="tty", stdout="tty"))
    rules = [InlineDecode(), ScriptDecode(), GeneratedShell()]
    ctx = RuleContext(procs)
    spent = 0.0
    for ev in events:
        procs.update(ev)
        t0 = time.perf_counter()
        for r in rules:
            r.on_event(ev, ctx)
        spent += time.perf_counter() - t0
    return spent / len(events) * 1e6


def main() -> int:
    events = stream(20_000)
    us = statistics.median(one_pass(events) for _ in range(5))
    emit("decode_rules_us_per_event", us, "us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
