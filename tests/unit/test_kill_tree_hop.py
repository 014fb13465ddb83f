"""s24 review: the kill-tree walk took a process's children from the process table only
among entries still alive, so a member that had exited cut the walk: a payload that
double-forks (root -> child -> grandchild, the child exits: the grandchild re-parented to
init or a subreaper, out of every /proc walk) or hops (fork, parent exits, again) left
its live descendant unreached, though the table held the whole chain from the fork
events (exited entries linger 30 s).  Real processes; the table filled as the sensor's
fork and exit events would fill it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Iterator

import pytest

from bastion.detect.engine import Finding
from bastion.proctable import ProcEntry, ProcessTable
from bastion.procstat import read_stat
from bastion.respond.dispatch import Dispatcher

# three hops: each process forks, prints "parent child child_start_ticks", and exits; the
# last one sleeps.  Start ticks are read by the parent before it exits.
HOPPER = r"""
import os, sys, time
for _ in range(3):
    pid = os.fork()
    if pid:
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        os.write(1, f"{os.getpid()} {pid} {start}\n".encode())
        os._exit(0)
time.sleep(30)
"""


@pytest.fixture
def hopped() -> Iterator[tuple[int, int, list[tuple[int, int, int]]]]:
    """(root pid, root start_ns, [(parent, child, child start_ns)] x 3): the last child lives."""
    p = subprocess.Popen([sys.executable, "-c", HOPPER], stdout=subprocess.PIPE)
    rstart = read_stat(p.pid).start_ns
    assert p.stdout is not None
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    hops = []
    for _ in range(3):
        a, b, t = p.stdout.readline().split()
        hops.append((int(a), int(b), int(t) * tick_ns))
    p.wait()
    last = hops[-1][1]
    try:
        yield p.pid, rstart, hops
    finally:
        try:
            os.kill(last, 9)
        except ProcessLookupError:
            pass


def _dead(pid: int) -> bool:
    for _ in range(100):
        try:
            if read_stat(pid).state in ("Z", "X"):
                return True
        except (OSError, ValueError):
            return True
        time.sleep(0.01)
    return False


def test_a_descendant_below_exited_members_is_killed(
        hopped: tuple[int, int, list[tuple[int, int, int]]]) -> None:
    root, rstart, hops = hopped
    last = hops[-1][1]
    procs = ProcessTable()
    procs._put(ProcEntry(root, os.getpid(), rstart, sys.executable, ("python3",), 0, "python3"))
    for parent, child, start in hops:
        procs._put(ProcEntry(child, parent, start, sys.executable, ("python3",), 0, "python3"))
    for pid in [root] + [c for _, c, _ in hops[:-1]]:       # every one but the last exited
        procs._procs[pid] = dataclasses.replace(procs._procs[pid], exited_ns=1)
    f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                action="kill-tree", event=None, pid=root, roots=((root, rstart),))
    alert = Dispatcher(procs, own={}).dispatch(f, time.time_ns())
    assert _dead(last), f"the live descendant {last} below exited members lived ({alert.action})"
    assert alert.action == "kill-tree" and alert.killed == [last]
