"""The flood that blinds detection (issues 16/15, s23-prioring), as one scenario run
against either sensor (the tracepoint sensor on the host, the hook sensor in the VM).

An unprivileged process floods cheap file events (chmods over distinct names of its
own files) while nobody drains the sensor (the agent busy with a batch: here, a
bulk ring of 64 KiB that the flood overruns many times over); then another process
runs the payload: an exec, a read of a file of the sensitive set, a connect.  With one ring they were dropped with the
flood; with the priority ring they arrive, and the losses are the bulk ring's."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from bastion.events import Event, ExecEvent, FileEvent, NetEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup

FILES = 200
CHMODS = 20_000
FLOOD = """
import os, sys
d = sys.argv[1]
names = [os.path.join(d, f"f{i:04d}") for i in range(int(sys.argv[2]))]
for n in names:
    os.mknod(n, 0o600)
for i in range(int(sys.argv[3])):
    os.chmod(names[i % len(names)], 0o600 | (i & 0o44))
"""
# s23 review 1: the cheapest priority records, failing calls that prove nothing (bind on
# no descriptor: ~120 ns a call), from one process; same arguments as FLOOD
BIND_FLOOD = """
import ctypes, sys
bind = ctypes.CDLL(None, use_errno=True).bind
for i in range(int(sys.argv[3])):
    bind(-1, None, 0)
"""
# the same on the hook sensor (lsm: bind(-1) never reaches security_socket_bind): a
# setuid to the uid it already has, a credential record from security_task_fix_setuid
SETUID_FLOOD = """
import os, sys
uid = os.getuid()
for i in range(int(sys.argv[3])):
    os.setuid(uid)
"""
# s24: an exec flood of one image (each exec a new thread group, so the group budget
# never applied and an exec was never demoted): posix_spawn of /bin/true, argv[3] times
EXEC_FLOOD = """
import os, sys
for i in range(int(sys.argv[3])):
    os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
"""
PAYLOAD = ("import socket, sys; open(sys.argv[2]).read(); "
           "socket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()")
MARK = "prio-ring-payload"


def flood_then_payload(make: Callable[[int, Path], BpfSensor], tmp_path: Path,
                       flood: str = FLOOD, count: int = CHMODS, victim: Sequence[str] = ()
                       ) -> tuple[dict[str, int], list[Event], int]:
    """Run the flood, then the payload, in a scoped cgroup with ``make(cgroup_id,
    secret)``'s sensor open and not drained (``secret``: the file to put in its
    sensitive set); then drain it.  ``count``: the flood's calls; ``victim``: a command
    another process runs between the flood and the payload.  Returns the sensor's counters taken before the
    drain, the events, and the port the payload connected to."""
    flood_dir = tmp_path / "flood"
    flood_dir.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    with socket.socket() as srv, scoped_cgroup() as (cg, cgid):
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        sensor = make(cgid, secret)
        sensor.open()
        try:
            r = run_in(cg, [sys.executable, "-c", flood, str(flood_dir), str(FILES), str(count)],
                       timeout=120)
            assert r.returncode == 0, r.stderr
            if victim:
                r = run_in(cg, list(victim), timeout=60)
                assert r.returncode == 0, r.stderr
            r = run_in(cg, [sys.executable, "-c", PAYLOAD, str(port), str(secret), MARK],
                       timeout=60)
            assert r.returncode == 0, r.stderr
            time.sleep(0.05)
            stats = sensor.stats()
            events: list[Event] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                batch = sensor.poll(0.05) or []
                events += batch
                if not batch:     # both rings empty, nothing held back
                    break
        finally:
            sensor.close()
    return stats, events, port


def payload_seen(events: list[Event], port: int
                 ) -> tuple[list[ExecEvent], list[FileEvent], list[NetEvent]]:
    """The payload's exec, its sensitive read-open and its connect among ``events``."""
    execs = [e for e in events if isinstance(e, ExecEvent) and MARK in e.argv]
    reads = [e for e in events if isinstance(e, FileEvent) and e.op == "open"
             and e.sensitive == "custom" and e.path.endswith("/secret")]
    conns = [e for e in events if isinstance(e, NetEvent) and e.op == "connect"
             and e.dport == port]
    return execs, reads, conns


def chmods(events: list[Event]) -> int:
    return sum(isinstance(e, FileEvent) and e.op == "chmod" for e in events)


def assert_the_payload_survived_a_priority_flood(stats: dict[str, int], events: list[Event],
                                                  port: int, count: int = CHMODS) -> None:
    """s23 review 1: after a flood of ``count`` cheap priority records from one process
    (s24: or execs of one image), the payload's exec, connect and sensitive read arrived,
    the flood was demoted to the bulk ring, and the priority ring lost nothing."""
    execs, reads, conns = payload_seen(events, port)
    assert len(execs) == 1, f"the payload's exec was lost behind the priority flood: {stats}"
    assert len(conns) == 1, f"the payload's connect was lost behind the priority flood: {stats}"
    assert len(reads) == 1, f"the payload's sensitive read was lost behind the priority flood: {stats}"
    assert stats["prio_demoted"] > count // 2, stats
    assert stats["drops_ring.priority"] == 0, stats
