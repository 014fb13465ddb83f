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
from support.procwait import gone as _dead

# one hop, inside a loop: fork; the parent prints "parent child child_start_ticks", exits
_HOP = r"""
    pid = os.fork()
    if pid:
        with open(f"/proc/{pid}/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        os.write(1, f"{os.getpid()} {pid} {start}\n".encode())
        os._exit(0)
"""
# three hops: each process forks, prints "parent child child_start_ticks", and exits; the
# last one sleeps.  Start ticks are read by the parent before it exits.
HOPPER = "import os, sys, time\nfor _ in range(3):" + _HOP + "time.sleep(30)\n"


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


# hops every 20 ms for up to 4 s (each parent prints "parent child child_start_ticks")
RUNNER = ("import os, sys, time\nend = time.monotonic() + 4.0\nwhile time.monotonic() < end:"
          + _HOP + "    time.sleep(0.02)\n")


def test_a_payload_hopping_after_the_kill_tree_is_followed_and_killed() -> None:
    """The walk cannot know a fork whose event is still queued: the hopper's pid at the
    kill is newer than the table.  The loop then sees the tree's forks: each child of a
    member of a tree killed lately is the tree's, killed (``Dispatcher.follow``, which
    the agent calls for every fork event after the table took it)."""
    from bastion.events import ForkEvent, Proc

    p = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE)
    assert p.stdout is not None
    tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
    rstart = read_stat(p.pid).start_ns
    starts = {p.pid: rstart}

    def hop() -> tuple[int, int, int] | None:
        assert p.stdout is not None
        line = p.stdout.readline().split()
        if not line:
            return None
        a, b, t = int(line[0]), int(line[1]), int(line[2]) * tick_ns
        starts[b] = t
        return a, b, t

    procs = ProcessTable()
    procs._put(ProcEntry(p.pid, os.getpid(), rstart, sys.executable, ("python3",), 0, "python3"))
    first = hop()
    assert first is not None
    procs._put(ProcEntry(first[1], first[0], first[2], sys.executable, ("python3",), 0, "python3"))
    procs._procs[p.pid] = dataclasses.replace(procs._procs[p.pid], exited_ns=1)
    d = Dispatcher(procs, own={})
    time.sleep(0.1)                    # it hops on: the table is behind
    f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                action="kill-tree", event=None, pid=p.pid, roots=((p.pid, rstart),))
    d.dispatch(f, time.time_ns())
    follow = getattr(d, "follow", lambda ev: None)
    t0 = time.monotonic()
    last = first[1]
    try:
        while (h := hop()) is not None:       # the fork events, as the loop sees them
            a, b, t = h
            last = b
            ev = ForkEvent(time.time_ns(), Proc(a, a, 1, 0, 0, 0, 1, "python3",
                                                start_ns=starts.get(a, 0)),
                           child_pid=b, child_start_ns=t)
            procs.update(ev)
            got = follow(ev)
            if got is not None:
                d.dispatch(got, time.time_ns())
        took = time.monotonic() - t0
        assert took < 1.0, f"the hopper ran on for {took:.1f}s after the kill-tree"
        assert _dead(last)
    finally:
        p.wait()
        try:
            os.kill(last, 9)
        except ProcessLookupError:
            pass


def test_the_agent_loop_follows_fork_events_of_a_killed_tree(tmp_path: "Path") -> None:
    """The wiring: ``Agent.process`` hands each fork event, after the table took it, to the
    dispatcher; a fork by a member of a tree killed lately raises the critical escapee
    finding and its kill (dry run here: ``would-kill``)."""
    from pathlib import Path

    from bastion.agent import Agent
    from bastion.config import parse_policy
    from bastion.detect.engine import Engine
    from bastion.events import ForkEvent, Proc
    from bastion.respond.dispatch import TREE_ESCAPEE
    from bastion.store import Store

    store = Store.open(Path(tmp_path) / "db")
    procs = ProcessTable()
    d = Dispatcher(procs, own={}, dry_run=True)
    d._doom(7001, 5_000_000_000, "behavior.ransomware")     # as a kill-tree leaves it
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[], store=store,
                  procs=procs, engine=Engine([]), dispatcher=d, socket_path=None)
    try:
        member = Proc(7001, 7001, 1, 1000, 1000, 1000, 1, "enc", start_ns=5_000_000_000)
        other = Proc(7003, 7003, 1, 1000, 1000, 1000, 1, "vim", start_ns=6_000_000_000)
        agent.process([ForkEvent(1, other, child_pid=7004, child_start_ns=7_000_000_000),
                       ForkEvent(2, member, child_pid=7002, child_start_ns=8_000_000_000)])
        assert d.followed == 1
        rows = [r.data for r in store.alerts(rule=TREE_ESCAPEE)]
        assert [(r["process"]["pid"], r["action"], r["severity"]) for r in rows] == [
            (7002, "would-kill", "critical")]
    finally:
        store.close()
