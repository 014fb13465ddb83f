"""A shell is found by its executable, not its name (s16-sig, issue 15).

A copy of ``/bin/bash`` renamed ``/tmp/.../notashell`` relayed to the network, both
relays of behavior.relayed_shell (the shell's stdin a pipe from a process that
connected out; the shell's output piped into a network client in a FIFO loop, ``-i``
read by bash's option table).  Before: the rules asked ``base(exe) in SHELLS``, the
copy was no shell and nothing was raised.  Now the copy's ELF build id is bash's.
The sensor is scoped to the test's cgroup; the dispatcher kills the test's own shells.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, RuleContext
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup

RELAY = ("import socket, subprocess, sys\n"
         "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
         "p = subprocess.Popen([sys.argv[2]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
         "print(p.wait(), flush=True)\n")
CLIENT = ("import socket, sys, time\n"
          "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
          "time.sleep(8)\n")


def spawn_in(cg: Path, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], **kw)  # type: ignore[call-overload]


def test_renamed_copy_of_bash_relayed_to_the_network_is_a_shell() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-shell-", dir="/tmp"))
    copy = d / "notashell"
    shutil.copy(os.path.realpath(bash), copy)
    fifo = d / "f"
    os.mkfifo(fifo)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(2)
    port = lst.getsockname()[1]
    loop = f'{copy} -i < {fifo} 2>&1 | {sys.executable} -c "$0" {port} > {fifo}'
    try:
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid)
            sensor.open()
            procs_: list[subprocess.Popen[bytes]] = []
            conns: list[socket.socket] = []
            try:
                procs = ProcessTable()
                engine = Engine(behavior_rules())
                ctx = RuleContext(procs)
                disp = Dispatcher(procs)
                relay = spawn_in(cg, [sys.executable, "-c", RELAY, str(port), str(copy)],
                                 stdout=subprocess.PIPE)
                procs_.append(relay)
                lst.settimeout(10)
                conns.append(lst.accept()[0])
                procs_.append(spawn_in(cg, ["/bin/sh", "-c", loop, CLIENT]))
                conns.append(lst.accept()[0])
                got: list[dict[str, object]] = []
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and len(got) < 2:
                    for ev in sensor.poll(0.01) or []:
                        procs.update(ev)
                        ev = procs.enrich(ev)
                        for f in engine.evaluate(ev, ctx):
                            if f.rule == "behavior.relayed_shell":
                                got.append(disp.dispatch(f, time.time_ns()).to_json())
                assert len(got) == 2, got
                # the FIFO loop's shell is interactive by bash's table (-i): killed too
                assert all(a["action"] == "kill" and a["severity"] == "critical" for a in got)
                assert relay.stdout is not None
                assert relay.stdout.readline().strip() == str(-signal.SIGKILL).encode()
                assert not engine.errors
            finally:
                for c in conns:
                    c.close()
                for pid in (cg / "cgroup.procs").read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                for p in procs_:
                    if p.poll() is None:
                        p.kill()
                    p.wait()
                sensor.close()
    finally:
        lst.close()
        shutil.rmtree(d)
