"""The tracepoint sensor on this host's kernel: a workload in a test cgroup,
a sensor scoped to that cgroup, and each event type checked field by field."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bastion.events import (
    BpfEvent, CredEvent, Event, ExecEvent, ExitEvent, FileEvent, ForkEvent, KillEvent,
    MemfdEvent, NetEvent, PtraceEvent, to_json,
)
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup

WORKLOAD = Path(__file__).resolve().parents[1] / "support" / "workload.py"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Event], dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("work")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            proc = run_in(cg, [sys.executable, str(WORKLOAD), str(work)], timeout=60)
            assert proc.returncode == 0, proc.stderr
            expected = json.loads(proc.stdout.strip().splitlines()[-1])
            events: list[Event] = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                events += sensor.poll(0.05) or []
            assert sensor.drops() == 0
        finally:
            sensor.close()
    return events, expected, work


def _of(events: list[Event], cls: type, **match: Any) -> list[Any]:
    return [e for e in events if isinstance(e, cls) and all(getattr(e, k) == v for k, v in match.items())]


def test_only_the_test_cgroup_is_seen(recorded) -> None:  # type: ignore[no-untyped-def]
    events, expected, _ = recorded
    assert events
    assert {e.proc.cgroup_id for e in events} == {events[0].proc.cgroup_id}
    assert all(e.proc.pid != os.getpid() for e in events)


def test_exec_fork_exit(recorded) -> None:  # type: ignore[no-untyped-def]
    events, expected, work = recorded
    wl = expected["pid"]
    execs = [e for e in _of(events, ExecEvent) if e.argv[:3] == ("/bin/sh", "-c", "exit 7")]
    assert len(execs) == 1
    sh = execs[0]
    assert sh.proc.ppid == wl
    assert sh.proc.exe in ("/usr/bin/dash", "/bin/dash")
    assert sh.filename == "/bin/sh"
    assert sh.cwd == str(work)
    assert sh.exe_ino == os.stat(sh.proc.exe).st_ino
    assert sh.proc.uid == 0 and sh.proc.comm == "sh"
    forks = _of(events, ForkEvent, child_pid=sh.proc.pid)
    assert forks and forks[0].proc.pid == wl
    exits = _of(events, ExitEvent)
    mine = [e for e in exits if e.proc.pid == sh.proc.pid]
    assert len(mine) == 1 and mine[0].exit_code == 7 and mine[0].signal == 0
    killed = [e for e in exits if e.proc.pid == expected["killed"]]
    assert len(killed) == 1 and killed[0].signal == 15


def test_file_events(recorded) -> None:  # type: ignore[no-untyped-def]
    events, expected, work = recorded
    opens = _of(events, FileEvent, op="open", path=f"{work}/data.txt")
    assert len(opens) == 1
    assert opens[0].flags & os.O_WRONLY and opens[0].flags & os.O_CREAT
    assert opens[0].ino > 0 and opens[0].proc.pid == expected["pid"]
    ren = _of(events, FileEvent, op="rename")
    assert [(e.path, e.path2) for e in ren] == [(f"{work}/data.txt", f"{work}/renamed.txt")]
    ch = _of(events, FileEvent, op="chmod", path=f"{work}/renamed.txt")
    assert [e.mode for e in ch] == [0o640]
    co = _of(events, FileEvent, op="chown", path=f"{work}/renamed.txt")
    assert [(e.owner_uid, e.owner_gid) for e in co] == [(0, 0)]
    assert _of(events, FileEvent, op="unlink", path=f"{work}/renamed.txt")


def test_net_events(recorded) -> None:  # type: ignore[no-untyped-def]
    events, expected, _ = recorded
    port = expected["port"]
    binds = _of(events, NetEvent, op="bind", saddr="127.0.0.1")
    assert binds and binds[0].protocol == "tcp" and binds[0].family == "inet"
    listens = _of(events, NetEvent, op="listen", sport=port)
    assert listens and listens[0].backlog == 3
    conns = _of(events, NetEvent, op="connect", daddr="127.0.0.1", dport=port)
    assert len(conns) == 1 and conns[0].protocol == "tcp"
    acc = _of(events, NetEvent, op="accept", sport=port)
    assert len(acc) == 1 and acc[0].daddr == "127.0.0.1" and acc[0].fd >= 0
    j = to_json(conns[0])
    assert (j["type"], j["daddr"], j["dport"]) == ("connect", "127.0.0.1", port)


def test_kill_ptrace_memfd_cred_bpf(recorded) -> None:  # type: ignore[no-untyped-def]
    events, expected, _ = recorded
    wl = expected["pid"]
    kills = _of(events, KillEvent, target_pid=expected["killed"])
    assert kills and kills[0].signal == 15 and kills[0].proc.pid == wl and kills[0].syscall == "kill"
    pt = _of(events, PtraceEvent, target_pid=expected["traced"])
    assert {e.request_name for e in pt} >= {"ATTACH", "DETACH"}
    mf = _of(events, MemfdEvent, name="bastion-test-memfd")
    assert len(mf) == 1 and mf[0].proc.pid == wl
    cr = _of(events, CredEvent, op="setresuid")
    assert cr and cr[0].args == (0, 0, 0)
    bp = _of(events, BpfEvent, cmd="MAP_CREATE")
    assert expected["bpf_fd"] >= 0
    assert len(bp) == 1 and bp[0].map_type == 2 and bp[0].name == "bastion_t"


def test_disabled_classes_are_not_reported(tmp_path: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("exec",))
        sensor.open()
        try:
            run_in(cg, ["/bin/sh", "-c", f"echo x > {tmp_path}/f; /bin/true"], timeout=30)
            time.sleep(0.1)
            events = sensor.poll(0) or []
        finally:
            sensor.close()
    assert {e.type for e in events} == {"exec"}
    assert any(e.proc.exe.endswith("true") for e in events)


def test_a_kill_from_a_pid_namespace_names_the_kernels_target() -> None:
    """kill(2)/tgkill(2) from inside a pid namespace (``unshare --pid --fork``): the
    caller names its target by the namespace's number (2, 3, ...); the record must
    carry the kernel's pid, or a container's ``kill 2`` reads as a signal to host
    pid 2 and a security-tool kill rule is fooled or fires falsely (s15-svc: the
    record said 2 before).  A pid the namespace does not have is not reported."""
    script = ("sleep 30 & a=$!; sleep 31 & b=$!; echo ns $a $b; sleep 0.5; "
              "kill -TERM $a; "
              "python3 -c 'import ctypes,sys; b=int(sys.argv[1]); "
              "ctypes.CDLL(None).syscall(234, b, b, 10)' $b; "   # tgkill(b, b, SIGUSR1)
              "kill -TERM 4000000 2>/dev/null; wait")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("exec", "kill"))
        sensor.open()
        try:
            proc = run_in(cg, ["unshare", "--pid", "--fork", "/bin/sh", "-c", script],
                          timeout=60)
            events: list[Event] = []
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                events += sensor.poll(0.05) or []
        finally:
            sensor.close()
    ns_pids = [int(x) for x in proc.stdout.split()[1:3]]
    assert ns_pids[0] < 10 and ns_pids[1] < 10, proc.stdout     # the namespace's own numbers
    sleeps = {e.argv[1]: e.proc.pid for e in _of(events, ExecEvent) if e.argv[:1] == ("sleep",)}
    assert {"30", "31"} <= set(sleeps), sleeps
    kills = _of(events, KillEvent)
    got = sorted((k.target_pid, k.signal, k.syscall) for k in kills)
    assert got == sorted([(sleeps["30"], 15, "kill"), (sleeps["31"], 10, "tgkill")]), \
        (got, sleeps, ns_pids)
    assert [k.target_tgid for k in kills if k.syscall == "tgkill"] == [sleeps["31"]]
    assert all(k.target_pid not in ns_pids for k in kills)
