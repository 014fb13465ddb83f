"""The integrity response on a real rogue BPF program held by two processes (issue 14.6b).

A loader attaches a scoped test program (it signals only its own tgid, on its own
getppid) and forks: parent and child both hold the program's fds.  The scan's
finding goes through the dispatcher the agent is built with; both holders die and
the program is unloaded.  Before the fix only the first holder was killed (by pid)
and the child kept the program loaded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bastion.assembly import make_dispatcher
from bastion.integrity.base import KernelView
from bastion.integrity.bpfprogs import BpfInventoryCheck
from bastion.integrity.scanner import to_finding
from bastion.proctable import ProcessTable

pytestmark = pytest.mark.kernel

_LOADER = """
import os, sys, time
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object
obj = BpfObject.open(bpf_object("test_rootkit_sig.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
obj.load()
link = obj.program("rk_getppid").attach()
child = os.fork()
if child == 0:
    time.sleep(120)
    os._exit(0)
print("ready", child, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purpose
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_every_holder_of_a_rogue_program_is_killed_and_the_program_unloaded() -> None:
    loader = subprocess.Popen([sys.executable, "-c", _LOADER], stdout=subprocess.PIPE)
    child = 0
    try:
        assert loader.stdout is not None
        word, pid = loader.stdout.readline().split()
        assert word == b"ready"
        child = int(pid)
        with KernelView() as view:
            check = BpfInventoryCheck(view)
            found = [f for f in check.scan(None) if f.evidence.get("name") == "rk_getppid"]
            assert len(found) == 1, found
            assert sorted(h["pid"] for h in found[0].evidence["holders"]) == sorted([loader.pid, child])
            alert = make_dispatcher(ProcessTable(), dry_run=False, quarantine=None).dispatch(
                to_finding(found[0]), time.time_ns())
            assert loader.wait(timeout=10) == -signal.SIGKILL
            deadline = time.time() + 5
            while _alive(child) and time.time() < deadline:
                time.sleep(0.05)
            assert not _alive(child), "the second holder survived and keeps the program loaded"
            assert alert.action == "kill" and alert.killed == sorted([loader.pid, child])
            deadline = time.time() + 5
            while time.time() < deadline:   # the program goes with its last fd
                if not [f for f in check.scan(None) if f.evidence.get("name") == "rk_getppid"]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("rogue program still loaded after its holders were killed")
    finally:
        for p in (loader.pid, child):
            if p and _alive(p):
                os.kill(p, signal.SIGKILL)
        loader.wait(timeout=10)
