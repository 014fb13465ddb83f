"""s19 review 4: fork-and-exit (``os.fork() and sys.exit(0)``) escaped the ransomware kill
and its rollback.  The rule's tree root is the parent that exited; ``_kill_tree`` opened
only the root ("kill-tree-skipped: already exited") and the worker lived; the incident hook
still ran (the outcome starts with "kill") and linked nothing: the worker's copies record
its ancestry from /proc, where its parent is now init.  Real processes (a forked worker
under a parent that exits), the process table filled as the sensor would."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bastion.detect.behavior.state import tree_key
from bastion.detect.engine import Finding
from bastion.events import Event, from_json
from bastion.proctable import ProcEntry, ProcessTable
from bastion.procstat import TICK_NS, read_stat
from bastion.respond.dispatch import Dispatcher
from bastion.respond.shadow.store import Opener, ShadowStore
from support.procwait import gone as _dead

WORKER = ("import os,sys,time\npid=os.fork()\n"
          "if pid: print(pid, flush=True); sys.exit(0)\ntime.sleep(30)\n")


@pytest.fixture
def forked() -> Iterator[tuple[int, int]]:
    """(root pid, worker pid): the root printed its child's pid and exited."""
    p = subprocess.Popen([sys.executable, "-c", WORKER], stdout=subprocess.PIPE)
    assert p.stdout is not None
    w = int(p.stdout.readline())
    p.wait()
    try:
        yield p.pid, w
    finally:
        try:
            os.kill(w, 9)
        except ProcessLookupError:
            pass


def _world(root: int, w: int, w_start: int = 0) -> tuple[ProcessTable, Event]:
    w_start = w_start or read_stat(w).start_ns
    procs = ProcessTable()
    procs._put(ProcEntry(root, os.getpid(), 1000, sys.executable, ("python3",), 0, "python3"))
    procs._put(ProcEntry(w, root, w_start, sys.executable, ("python3",), 0, "python3"))
    procs._procs[root] = dataclasses.replace(procs._procs[root], exited_ns=1)
    obj: dict[str, Any] = {
        "type": "open", "time": "2026-12-05T09:00:00.000000Z", "pid": w, "tid": w, "ppid": 1,
        "uid": 0, "euid": 0, "gid": 0, "cgroup_id": 1, "comm": "python3",
        "start_ns": w_start, "exe": sys.executable, "path": "/x", "path2": "",
        "flags": 1, "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 2}
    return procs, from_json(obj)


def test_a_worker_whose_root_exited_is_killed(forked: tuple[int, int]) -> None:
    root, w = forked
    procs, ev = _world(root, w)
    key = tree_key(ev, procs)
    assert key[0] == root     # the rule names the exited parent
    f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                action="kill-tree", event=ev, pid=root)
    hooked: list[Any] = []
    d = Dispatcher(procs)
    d.after("behavior.ransomware", "kill", lambda f, a: hooked.append(a))
    alert = d.dispatch(f, time.time_ns())
    assert alert.action == "kill-tree", alert.action
    assert alert.killed == [w]
    assert alert.members == [(w, read_stat(w).start_ns)] or _dead(w)
    assert _dead(w), "the worker lived"
    assert hooked and hooked[0].members[0][0] == w


def test_nothing_killed_runs_no_incident_hook() -> None:
    """Root and worker both gone (reaped): "kill-tree-skipped", and the assembly's incident
    hook opens no (empty) incident."""
    from bastion.assembly import _shadow_incident_hook
    gone = []
    for _ in range(2):
        p = subprocess.Popen(["true"])
        p.wait()
        gone.append(p.pid)
    procs, ev = _world(gone[0], gone[1], w_start=10**12)

    class Agent:
        class shadow:
            @staticmethod
            def open_incident(*a: Any) -> int:
                raise AssertionError("an incident for a kill that killed nothing")

    d = Dispatcher(procs)
    d.after("behavior.ransomware", "kill", _shadow_incident_hook([Agent()], procs))  # type: ignore[list-item]
    f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                action="kill-tree", event=ev, pid=gone[0])
    alert = d.dispatch(f, time.time_ns())
    assert alert.action.startswith("kill-tree-skipped"), alert.action
    assert not alert.killed


def test_the_incident_links_the_killed_workers_copies(tmp_path: Path) -> None:
    """The worker's copies name (worker, init) as ancestry: linked by the killed set."""
    root, rstart = 5000, 10**12
    w = Opener(5001, rstart + 10**9, "/usr/bin/python3", ((5001, rstart + 10**9), (1, 0)), uid=0)
    other = Opener(5002, rstart + 10**9, "/usr/bin/vim", ((5002, rstart + 10**9), (1, 0)), uid=0)
    store = ShadowStore(tmp_path / "shadow", max_bytes=1 << 20)
    try:
        def put(name: str, who: Opener) -> None:
            p = tmp_path / name
            p.write_bytes(os.urandom(4096))
            fd = os.open(p, os.O_RDONLY)
            try:
                store.put(fd, os.fstat(fd), str(p), who, tree="/home")
            finally:
                os.close(fd)

        put("a", w)
        put("b", other)
        iid = store.open_incident(root, rstart, [(w.pid, w.start_ns)])
        put("c", w)              # a later copy of the worker joins the open incident
        paths = sorted(Path(r["path"]).name for r in store.incident_rows(iid))
        assert paths == ["a", "c"], paths
    finally:
        store.close()


def _sleepers(gap_s: float = 0.05) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """(W, U): a worker, then (a few clock ticks later) an unrelated process."""
    w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    time.sleep(gap_s)
    u = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    time.sleep(0.1)
    return w, u


def _finding_for(procs: ProcessTable, w: int, ws: int) -> Finding:
    ev = from_json({"type": "open", "time": "2026-12-05T09:00:00.000000Z", "pid": w, "tid": w,
                    "ppid": 1, "uid": 0, "euid": 0, "gid": 0, "cgroup_id": 1, "comm": "python3",
                    "start_ns": ws, "exe": sys.executable, "path": "/x", "path2": "", "flags": 1,
                    "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 2})
    key = tree_key(ev, procs)
    return Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                   action="kill-tree", event=ev, pid=key[0], roots=(key,))


def test_a_pid_reused_by_an_unrelated_process_is_not_the_tree_root() -> None:
    """s20 review 4: W's parent R exited; its pid went to U (same executable), whose fork
    event replaced R's entry.  ``ancestry`` walked W -> U, U became the tree root and was
    killed.  A "parent" that started after its child is not its parent."""
    w, u = _sleepers()
    try:
        ws, us = read_stat(w.pid).start_ns, read_stat(u.pid).start_ns
        procs = ProcessTable()
        procs._put(ProcEntry(u.pid, os.getpid(), us, sys.executable, ("python3",), 0, "python3"))
        procs._put(ProcEntry(w.pid, u.pid, ws, sys.executable, ("python3",), 0, "python3"))
        assert [e.pid for e in procs.ancestry(w.pid)] == [w.pid]
        f = _finding_for(procs, w.pid, ws)
        assert f.roots == ((w.pid, ws),)
        alert = Dispatcher(procs).dispatch(f, time.time_ns())
        assert u.pid not in alert.killed, "an unrelated process holding the exited root's pid was killed"
        assert alert.killed == [w.pid], alert.action
        assert u.poll() is None
    finally:
        for p in (w, u):
            p.kill()
            p.wait()


def test_a_reused_root_pid_still_kills_the_event_process_and_the_known_tree() -> None:
    """s20 review 5: the root R exited (lingering in the table) and its pid was taken by U
    before U's fork event was read: the tree key is (R's pid, R's start), ``_open_checked``
    said "pid reused" and the whole kill-tree was skipped -- the worker W lived.  Now: as
    "root exited", W and R's other known children killed, U (the pid's new holder) not."""
    w, u = _sleepers(0.0)
    try:
        ws = read_stat(w.pid).start_ns
        procs = ProcessTable()
        procs._put(ProcEntry(u.pid, os.getpid(), 1000, sys.executable, ("python3",), 0, "python3"))
        procs._procs[u.pid] = dataclasses.replace(procs._procs[u.pid], exited_ns=1)
        procs._put(ProcEntry(w.pid, u.pid, ws, sys.executable, ("python3",), 0, "python3"))
        f = _finding_for(procs, w.pid, ws)
        assert f.roots == ((u.pid, 1000),)      # old R, as the rule keyed it
        alert = Dispatcher(procs).dispatch(f, time.time_ns())
        assert alert.action == "kill-tree" and alert.killed == [w.pid], (alert.action, alert.killed)
        assert u.poll() is None
    finally:
        for p in (w, u):
            p.kill()
            p.wait()


def test_a_finding_with_several_roots_stops_every_tree() -> None:
    """The per-user aggregate's finding (s20 review 2) names every tree that wrote: each
    root is opened with the start time the rule keyed it with and killed with its tree; a
    root whose pid now holds another process (start differs) is not."""
    a, b = _sleepers(0.0)
    c = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.1)
        sa, sb, sc = (read_stat(p.pid).start_ns for p in (a, b, c))
        procs = ProcessTable()
        for p, s in ((a, sa), (b, sb), (c, sc)):
            procs._put(ProcEntry(p.pid, os.getpid(), s, sys.executable, ("python3",), 0, "python3"))
        f = dataclasses.replace(_finding_for(procs, a.pid, sa),
                                roots=((a.pid, sa), (b.pid, sb), (c.pid, sc - 10 * TICK_NS)))
        alert = Dispatcher(procs).dispatch(f, time.time_ns())
        assert alert.killed == sorted([a.pid, b.pid]), (alert.action, alert.killed)
        assert c.poll() is None
    finally:
        for p in (a, b, c):
            p.kill()
            p.wait()


# The "agent" G is a child of H (who started it); H's other child W is the workload.  G
# dispatches a kill-tree rooted at H (a per-user aggregate naming every tree of root did
# this in a CI run: the real agent SIGSTOPped pytest, its parent, and then itself, and
# never sent the SIGKILLs).  Run in its own process tree so the old code's self-stop
# freezes G, not pytest.
AGENT = r"""
import os, sys, time
from bastion.detect.engine import Finding
from bastion.proctable import ProcessTable
from bastion.procstat import read_stat
from bastion.respond.dispatch import Dispatcher
h = os.getppid()
f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
            action="kill-tree", event=None, pid=h, roots=((h, read_stat(h).start_ns),))
a = Dispatcher(ProcessTable()).dispatch(f, time.time_ns())
print(a.action, sorted(a.killed), flush=True)
"""
STARTER = r"""
import subprocess, sys, time
w = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(w.pid, flush=True)
time.sleep(0.2)
g = subprocess.run([sys.executable, "-c", sys.argv[1]], capture_output=True, text=True)
print("G", g.returncode, g.stdout.strip(), g.stderr.strip()[-300:], flush=True)
time.sleep(60)
"""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_a_kill_tree_rooted_above_the_agent_spares_the_agent_and_its_ancestors() -> None:
    h = subprocess.Popen([sys.executable, "-c", STARTER, AGENT], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
    assert h.stdout is not None
    w = int(h.stdout.readline())
    try:
        deadline, line = time.monotonic() + 20, ""
        os.set_blocking(h.stdout.fileno(), False)
        while time.monotonic() < deadline and not line:
            line = h.stdout.readline()
            time.sleep(0.05)
        assert line.startswith("G 0 kill-tree"), (
            f"the agent did not finish its kill-tree: {line!r}; H {_state(h.pid)}, W {_state(w)}")
        assert f"[{w}]" in line, line
        deadline = time.monotonic() + 5
        while _state(w) not in ("gone", "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(w) in ("gone", "Z"), "the workload W lived"
        assert _state(h.pid) == "S", f"the agent's parent H was signalled: state {_state(h.pid)}"
    finally:
        for pid in (w, h.pid):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["pkill", "-9", "-P", str(h.pid)], check=False)
        h.wait()


THREADED = ("import threading,time,sys\n"
            "t=threading.Thread(target=time.sleep,args=(30,),daemon=True); t.start()\n"
            "time.sleep(0.05); print(t.native_id, flush=True); time.sleep(30)\n")


def test_a_member_pid_a_thread_took_is_skipped_and_the_loop_lives() -> None:
    """s22: a tree member the table saw (a child of the root) has exited and its pid is now
    a thread of another process.  pidfd_open(2) of a thread's id fails with ENOENT on 6.9+
    (seen on 6.18; EINVAL before), not ESRCH: only ProcessLookupError was caught, so the
    FileNotFoundError left ``dispatch`` and ended the agent's event loop (seen in
    bench_agent_pipeline's replay: 0 events processed after one kill-tree; this test failed
    with FileNotFoundError before the fix).  Now the member is skipped as gone, the root is
    still killed, and the other process is never signalled."""
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    other = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE)
    try:
        assert other.stdout is not None
        tid = int(other.stdout.readline())
        assert tid != other.pid
        procs, ev = _world(root.pid, tid, w_start=10**12)   # the table's child: the thread's id
        procs._procs[root.pid] = dataclasses.replace(procs._procs[root.pid], exited_ns=0,
                                                     start_ns=read_stat(root.pid).start_ns)
        ev = dataclasses.replace(ev, proc=dataclasses.replace(
            ev.proc, pid=root.pid, tid=root.pid, start_ns=read_stat(root.pid).start_ns))
        f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                    action="kill-tree", event=ev, pid=root.pid)
        alert = Dispatcher(procs).dispatch(f, time.time_ns())
        assert alert.action == "kill-tree", alert.action
        assert alert.killed == [root.pid]
        assert _dead(root.pid)
        assert other.poll() is None, "the process whose thread took the pid was signalled"
    finally:
        for p in (root, other):
            p.kill()
            p.wait()
