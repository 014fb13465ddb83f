"""In-process cost of ``behavior.compile_after_delivery`` (s17-compile) on a synthetic
stream of ordinary execs and write-opens (editors, tar, cp, log writers; one compile and
run of its product in every 50 commands), the process table already updated (as the
agent does).  Reported: µs per exec/open event for the rule, median of 5 passes, one
process, no root needed."""

from __future__ import annotations

import statistics
import sys
import time

from _common import ROOT, emit

sys.path.insert(0, str(ROOT / "src"))

from bastion.detect.behavior.compiled import CompileAfterDelivery  # noqa: E402
from bastion.detect.engine import RuleContext  # noqa: E402
from bastion.events import Event, ExecEvent, FileEvent, Proc  # noqa: E402
from bastion.proctable import ProcessTable  # noqa: E402

CMDS: list[tuple[str, list[str], str]] = [
    ("/usr/bin/cp", ["cp", "a", "b"], "/root/w/b"),
    ("/usr/bin/tar", ["tar", "xf", "x.tar"], "/root/w/x/f.c"),
    ("/usr/bin/dash", ["sh", "-c", "echo > log"], "/root/w/log"),
    ("/usr/bin/vim.basic", ["vim", "m.c"], "/root/w/m.c"),
    ("/usr/bin/python3.11", ["python3", "/opt/app/run.py"], "/var/lib/app/state.json"),
    ("/usr/bin/ls", ["ls"], ""),
]
GCC, LD = "/usr/bin/x86_64-linux-gnu-gcc-12", "/usr/bin/x86_64-linux-gnu-ld.bfd"


def _proc(pid: int, ppid: int, exe: str) -> Proc:
    return Proc(pid=pid, tid=pid, ppid=ppid, uid=0, euid=0, gid=0, cgroup_id=1,
                comm=exe.rsplit("/", 1)[-1][:15], exe=exe, start_ns=pid * 1000)


def stream(n: int) -> list[Event]:
    out: list[Event] = []
    t = 1_000_000_000
    for i in range(n):
        pid = 1000 + 3 * i
        t += 50_000
        if i % 50 == 49:   # gcc -o p p.c && ./p from the script
            g, ld, run = _proc(pid, 100, GCC), _proc(pid + 1, pid, LD), _proc(pid + 2, 100, "/root/w/p")
            out.append(ExecEvent(t, g, filename=GCC, cwd="/root/w", argv=("gcc", "-o", "p", "p.c")))
            out.append(ExecEvent(t + 1, ld, filename=LD, cwd="/root/w", argv=("ld", "-o", "p")))
            out.append(FileEvent(t + 2, ld, op="open", path="/root/w/p", flags=0o1102, dev=1, ino=i))
            out.append(ExecEvent(t + 3, run, filename="/root/w/p", cwd="/root/w", argv=("./p",),
                                 exe_dev=1, exe_ino=i))
            continue
        exe, argv, wrote = CMDS[i % len(CMDS)]
        p = _proc(pid, 100, exe)
        out.append(ExecEvent(t, p, filename=exe, cwd="/root/w", argv=tuple(argv),
                             stdin="tty", stdout=f"pipe:[{i}]" if i % 3 else "tty"))
        if wrote:
            out.append(FileEvent(t + 1, p, op="open", path=wrote, flags=0o1101, dev=1, ino=10**6 + i))
    return out


def one_pass(events: list[Event]) -> tuple[float, int]:
    procs = ProcessTable()
    procs.update(ExecEvent(1, _proc(100, 1, "/usr/bin/dash"), filename="/usr/bin/dash",
                           cwd="/root/w", argv=("sh", "/root/w/build.sh"), stdin="tty"))
    rule = CompileAfterDelivery()
    ctx = RuleContext(procs)
    spent, found = 0.0, 0
    for ev in events:
        procs.update(ev)
        t0 = time.perf_counter()
        found += len(rule.on_event(ev, ctx))
        spent += time.perf_counter() - t0
    return spent / len(events) * 1e6, found


def main() -> int:
    events = stream(20_000)
    runs = [one_pass(events) for _ in range(5)]
    assert all(f == 400 for _, f in runs), runs   # every product run found, nothing else
    emit("compiled_rule_us_per_event", statistics.median(us for us, _ in runs), "us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
