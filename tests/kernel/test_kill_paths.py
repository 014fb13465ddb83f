"""Every way to send a signal reaches the security-tool shutdown rule (s16-sig, issue 15).

The compat sensor read kill(2), tkill(2), tgkill(2) and pidfd_send_signal(2) at their
syscall tracepoints: an ia32 syscall (``int $0x80`` from any binary) never reaches a
syscall tracepoint, ``rt_sigqueueinfo``/``rt_tgsigqueueinfo`` were not traced, a
pidfd that is a ``/proc/PID`` directory was read as a struct pid, and ``tkill`` named a
thread id the rule could not resolve to its process.  Since s16-sig the kill record
comes from ``signal:signal_generate`` (the target task, the kernel pid, the sender
current).  Each case here signals a test-owned decoy named like a security tool
(``auditd``: argv[0]) from a sender in the test's cgroup; the rule's finding must name
the decoy.  The sensor is scoped to the test's cgroup; nothing is killed but the decoy,
no response is taken (the engine's findings only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bastion.detect.behavior import behavior_rules, live_probes
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import KillEvent
from bastion.proctable import ProcessTable
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup
from support.live import drain_events

RULE = "behavior.disable_security_tools"
PYTHON = os.path.realpath(sys.executable)  # the decoy's (argv[0] is "auditd"; no shim)

# a decoy named like a security tool, with a second thread; prints "pid tid" and waits
DECOY = ("import os, sys, threading, time\n"
         "ev = threading.Event(); box = []\n"
         "def t():\n"
         "    box.append(threading.get_native_id()); ev.set(); time.sleep(60)\n"
         "threading.Thread(target=t, daemon=True).start(); ev.wait()\n"
         "print(os.getpid(), box[0], flush=True); time.sleep(60)\n")

# ctypes senders: argv[1] the decoy's pid, argv[2] its second thread's id
_SIGINFO = ("import ctypes, os, sys\n"
            "pid, tid = int(sys.argv[1]), int(sys.argv[2])\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "info = (ctypes.c_int * 32)()\n"
            "info[0], info[1], info[2] = 15, 0, -1       # si_signo, si_errno, si_code SI_QUEUE\n"
            "info[4], info[5] = os.getpid(), os.getuid()  # si_pid, si_uid\n")
SENDERS = {
    "kill": "import os, sys; os.kill(int(sys.argv[1]), 15)",
    "rt_sigqueueinfo": _SIGINFO + "assert libc.syscall(129, pid, 15, info) == 0, ctypes.get_errno()",
    "rt_tgsigqueueinfo": _SIGINFO + "assert libc.syscall(297, pid, tid, 15, info) == 0, "
                                    "ctypes.get_errno()",
    "tkill (a second thread)": "import ctypes, sys; "
                               "assert ctypes.CDLL(None).syscall(200, int(sys.argv[2]), 15) == 0",
    "tgkill (a second thread)": "import ctypes, sys; assert ctypes.CDLL(None).syscall("
                                "234, int(sys.argv[1]), int(sys.argv[2]), 15) == 0",
    "pidfd_send_signal (pidfd_open)": "import os, signal, sys; "
                                      "signal.pidfd_send_signal(os.pidfd_open(int(sys.argv[1])), 15)",
    "pidfd_send_signal (/proc/PID)": "import os, signal, sys; signal.pidfd_send_signal("
                                     "os.open(f'/proc/{sys.argv[1]}', os.O_RDONLY), 15)",
}

# ia32 kill(2) (eax = 37) by int $0x80 from a 64-bit binary built here
IA32_KILL = r"""
#include <stdlib.h>
int main(int argc, char **argv)
{
	long ret, pid = atol(argv[1]), sig = 15;

	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(37L), "b"(pid), "c"(sig) : "memory");
	return ret != 0;
}
"""


class Watch:
    """The sensor (scoped to the test's cgroup) and the default pack, on a thread."""

    def __init__(self, sensor: BpfSensor) -> None:
        self.sensor = sensor
        self.procs = ProcessTable()
        self.engine = Engine(behavior_rules(probes=live_probes()))
        self.findings: list[Finding] = []
        self.kills: list[KillEvent] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ctx = RuleContext(self.procs)
        while not self._stop.is_set():
            for ev in self.sensor.poll(0.01) or []:
                self.procs.update(ev)
                ev = self.procs.enrich(ev)
                if isinstance(ev, KillEvent):
                    self.kills.append(ev)
                self.findings += self.engine.evaluate(ev, ctx)

    def wait_for(self, rule: str, timeout: float = 10.0) -> list[Finding]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [f for f in list(self.findings) if f.rule == rule]
            if got:
                return got
            time.sleep(0.05)
        return []


@pytest.fixture(scope="module")
def sensor() -> Iterator[tuple[Path, BpfSensor]]:
    """One sensor (it only reports) scoped to one test cgroup for the module: a load
    and close cost seconds.  Each test gets its own table, engine and findings, and
    starts with the ring drained (every process of an earlier test has exited)."""
    with scoped_cgroup() as (cg, cgid):
        s = BpfSensor(cgroup_id=cgid, classes=("exec", "kill"))
        s.open()
        try:
            yield cg, s
        finally:
            s.close()


@contextmanager
def watching(shared: tuple[Path, BpfSensor]) -> Iterator[tuple[Path, Watch]]:
    cg, sensor = shared
    assert (cg / "cgroup.procs").read_text() == "", "an earlier test left a process"
    drain_events(sensor)
    w = Watch(sensor)
    w._t.start()
    try:
        yield cg, w
    finally:
        w._stop.set()
        w._t.join(5)
        assert not w._t.is_alive()
        assert not w.engine.errors, w.engine.disabled


def spawn_in(cg: Path, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], text=True, **kw)


@pytest.fixture(scope="module")
def ia32_kill() -> Iterator[Path]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the ia32 sender")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-ia32-"))
    try:
        (d / "k.c").write_text(IA32_KILL)
        subprocess.run([cc, "-O1", "-o", str(d / "k"), str(d / "k.c")], check=True)
        yield d / "k"
    finally:
        shutil.rmtree(d)


def _decoy_killed_by(shared: tuple[Path, BpfSensor], sender: list[str],
                     own_cgroup: bool = False) -> list[KillEvent]:
    """``own_cgroup``: the decoy moves (after its exec was seen) to a child cgroup of the
    test's, whose path the sender gets as argv[-1]."""
    with watching(shared) as (cg, w):
        decoy = spawn_in(cg, [sys.executable, "-c", "import os, sys; os.execv(sys.argv[1], "
                              "['auditd', '-c', sys.argv[2]])", PYTHON, DECOY],
                         stdout=subprocess.PIPE)
        try:
            assert decoy.stdout is not None
            pid, tid = (int(x) for x in decoy.stdout.readline().split())
            time.sleep(0.3)                       # the decoy's exec is in the table
            extra = []
            if own_cgroup:
                sub = cg / "decoy"
                sub.mkdir()
                (sub / "cgroup.procs").write_text(str(pid))
                extra = [str(sub)]
            r = subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"',
                                "sh", *sender, str(pid), str(tid), *extra],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            sig = 9 if own_cgroup else 15
            assert decoy.wait(10) == -sig         # the signal landed
            got = w.wait_for(RULE)
            assert got, [(f.rule, f.title) for f in w.findings]
            assert got[0].evidence["tool"] == "auditd" and got[0].evidence["target_pid"] == pid
            assert got[0].evidence["signal"] == ("SIGKILL" if own_cgroup else "SIGTERM")
            return [k for k in w.kills if k.target_tgid == pid]
        finally:
            if decoy.poll() is None:
                decoy.kill()
                decoy.wait()
            if own_cgroup and (cg / "decoy").exists():
                (cg / "decoy").rmdir()


@pytest.mark.parametrize("how", sorted(SENDERS))
def test_security_tool_signalled_by_any_syscall_is_reported(
        sensor: tuple[Path, BpfSensor], how: str) -> None:
    kills = _decoy_killed_by(sensor, [sys.executable, "-c", SENDERS[how]])
    syscall = how.split()[0]
    assert [(k.syscall, k.ia32) for k in kills] == [("pidfd" if syscall.startswith("pidfd")
                                                      else syscall, False)]
    assert kills[0].code == (-1 if "sigqueue" in how else -6 if "kill (" in how else 0)


def test_security_tool_signalled_by_an_ia32_syscall_is_reported(
        sensor: tuple[Path, BpfSensor], ia32_kill: Path) -> None:
    """``int $0x80`` with eax = 37 (ia32 kill) from a 64-bit binary: the syscall
    tracepoints never fire for an ia32 call.  Before: no record, no finding."""
    kills = _decoy_killed_by(sensor, [str(ia32_kill)])
    assert [(k.syscall, k.ia32, k.code) for k in kills] == [("kill", True, 0)]


def test_security_tool_killed_through_cgroup_kill_is_reported(
        sensor: tuple[Path, BpfSensor]) -> None:
    """``echo 1 > .../cgroup.kill`` of the tool's cgroup: the kernel sends SIGKILL
    (SI_USER) from the writer's ``write``.  Before: no kill syscall, no record."""
    kills = _decoy_killed_by(sensor, [sys.executable, "-c", "import sys; open(sys.argv[3] + "
                              "'/cgroup.kill', 'w').write('1')"], own_cgroup=True)
    assert [(k.syscall, k.signal, k.code) for k in kills] == [("other", 9, 0)]
