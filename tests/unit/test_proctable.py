"""The process table: seeding, lifecycle updates, ancestry, pid reuse."""

from __future__ import annotations

import os

from bastion.events import ExecEvent, ExitEvent, FileEvent, ForkEvent, Proc
from bastion.proctable import ProcessTable


def _p(pid: int, ppid: int, start: int = 1000, exe: str = "") -> Proc:
    return Proc(pid, pid, ppid, 0, 0, 0, 1, "x", start, exe)


def test_seed_finds_this_process_and_its_parent() -> None:
    t = ProcessTable()
    assert t.seed() > 1
    me = t.get(os.getpid())
    assert me is not None and me.ppid == os.getppid()
    assert os.path.realpath(me.exe) == os.path.realpath(os.readlink("/proc/self/exe"))
    chain = t.ancestry(os.getpid())
    assert [e.pid for e in chain[:2]] == [os.getpid(), os.getppid()]


def test_fork_exec_exit_and_ancestry() -> None:
    t = ProcessTable(linger_s=1)
    t.update(ExecEvent(1, _p(100, 1, exe="/usr/sbin/sshd"), argv=("sshd",)))
    t.update(ForkEvent(2, _p(100, 1), child_pid=200, child_start_ns=5000))
    child = t.get(200)
    assert child is not None and child.exe == "/usr/sbin/sshd" and child.ppid == 100
    t.update(ExecEvent(3, _p(200, 100, 5000, exe="/bin/bash"), argv=("bash", "-i")))
    assert [(e.pid, e.exe) for e in t.ancestry(200)] == [(200, "/bin/bash"), (100, "/usr/sbin/sshd")]
    t.update(ExitEvent(4_000_000_000, _p(200, 100, 5000)))
    e = t.get(200)
    assert e is not None and e.exited_ns == 4_000_000_000
    assert t.expire(4_500_000_000) == 0          # lingers
    assert t.expire(6_000_000_000) == 1 and t.get(200) is None


def test_enrich_fills_exe_and_pid_reuse_is_not_inherited() -> None:
    t = ProcessTable()
    t.update(ExecEvent(1, _p(300, 1, 10_000, exe="/usr/bin/vim"), argv=("vim",)))
    ev = FileEvent(2, _p(300, 1, 10_000), op="unlink", path="/tmp/a")
    assert t.enrich(ev).proc.exe == "/usr/bin/vim"
    # an exit of a different process that had the same pid does not touch the entry
    t.update(ExitEvent(3, _p(300, 1, 99_000_000_000)))
    e = t.get(300)
    assert e is not None and e.exited_ns == 0


def test_bounded() -> None:
    t = ProcessTable(max_entries=10)
    for pid in range(1, 50):
        t.update(ExecEvent(pid, _p(pid, 1, exe="/bin/x")))
    assert len(t) == 10 and t.get(49) is not None and t.get(1) is None


def test_a_fork_delivered_after_the_childs_exec_keeps_the_childs_image() -> None:
    """s23 review 2: the priority ring can deliver a child's exec ahead of its fork
    (a bulk backlog older than the hold); the late fork must not give the payload the
    parent's exe, command line and exe inode (its trust)."""
    t = ProcessTable()
    t.update(ExecEvent(1, _p(100, 1, exe="/usr/bin/find"), argv=("find",), exe_dev=8, exe_ino=11))
    t.update(ExecEvent(3, _p(200, 100, 5000, exe="/tmp/payload"), argv=("/tmp/payload",),
                       exe_dev=8, exe_ino=99))
    t.update(ForkEvent(2, _p(100, 1), child_pid=200, child_start_ns=5000))
    e = t.get(200)
    assert e is not None and (e.exe, e.exe_ino, e.cmdline) == ("/tmp/payload", 99, ("/tmp/payload",))
    ev = FileEvent(4, _p(200, 100, 5000), op="open", path="/root/.ssh/id_rsa")
    assert t.enrich(ev).proc.exe == "/tmp/payload"
    # a fork of another process that reuses the pid later still replaces the entry
    t.update(ForkEvent(5, _p(100, 1), child_pid=200, child_start_ns=9_000_000_000))
    e = t.get(200)
    assert e is not None and e.exe == "/usr/bin/find"


def _scan(t: ProcessTable, pid: int) -> dict[int, int]:
    """What a scan of the whole table says the live children of ``pid`` are."""
    return {e.pid: e.start_ns for e in t if e.ppid == pid and not e.exited_ns}


def test_child_index_is_what_a_scan_of_the_table_finds() -> None:
    """The kill-tree walk asks the table's child index (s24) instead of scanning every
    entry per member: after any mix of forks, execs (a re-parented or reused pid), exits
    (one stamped 0), expiry and eviction the index says what the scan says, for every
    pid -- a child missing from it is a process a kill-tree leaves running."""
    import random

    rnd = random.Random(24)
    t = ProcessTable(max_entries=40, linger_s=1)
    pids = list(range(2, 60))
    now = 0
    for step in range(4000):
        now += rnd.randrange(1, 50_000_000)
        pid, ppid = rnd.choice(pids), rnd.choice(pids[:20] + [1])
        start = rnd.choice((1000, 2000, 3000 * pid))
        kind = rnd.randrange(10)
        if kind < 4:
            t.update(ForkEvent(now, _p(ppid, 1, start), child_pid=pid,
                               child_start_ns=rnd.choice((0, start, now))))
        elif kind < 7:
            t.update(ExecEvent(now, _p(pid, ppid, start, exe="/bin/x"), argv=("x",)))
        elif kind < 9:
            t.update(ExitEvent(rnd.choice((now, 0)), _p(pid, ppid, start)))
        else:
            t.expire(now)
        if step % 50 == 0 or step > 3950:
            for p in [1, *pids]:
                assert dict(t.children(p)) == _scan(t, p), (step, p)
    assert any(t.children(p) for p in pids)   # the mix left children to compare
