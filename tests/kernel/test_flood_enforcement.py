"""Under a flood that fills the decision ring, decisions made in the kernel keep
being made (issue 14.1): the compat HIPS matcher, scoped to a test cgroup with a
dead-man deadline, has its 1 MiB record ring filled by thousands of denied UDP
sends (nobody drains it); a denied exec is still killed before it runs, a denied
connect still refused, and every lost record is counted under its class."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

from bastion import abi
from bastion.enforce.hips_kernel import HipsKernel
from bastion.errors import Location
from bastion.policy.compile import (
    FileTarget, NetTarget, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev,
)
from bastion.policy.model import Action, Mode, Op
from support.cg import run_in, scoped_cgroup

V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
FLOOD = ("import socket, sys\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "n = 0\n"
         "for _ in range(int(sys.argv[1])):\n"
         "    try:\n"
         "        s.sendto(b'x', ('127.0.0.1', int(sys.argv[2])))\n"
         "    except PermissionError:\n"
         "        n += 1\n"
         "print(n)\n")


def test_denies_and_kills_go_on_when_the_decision_ring_is_full(tmp_path: Path) -> None:
    denied = tmp_path / "denied"
    shutil.copy("/bin/true", denied)
    st = os.stat(denied)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.bind(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    rules = (
        ResolvedRule(1, "r1", Location("test", 1), (), "test", (Op.EXEC,),
                     (FileTarget(kernel_dev(st.st_dev), st.st_ino, False, str(denied)),), (),
                     Action.DENY),
        ResolvedRule(2, "r2", Location("test", 2), (), "test", (Op.CONNECT,), (),
                     (NetTarget(V4_MAPPED + socket.inet_aton("127.0.0.1"), 128, port),),
                     Action.DENY))
    try:
        with scoped_cgroup() as (cg, cgid):
            hk = HipsKernel("compat", cgroup_id=cgid, deadline_s=110, self_tgid=os.getpid(),
                            cgroup_path=cg)
            hk.open()
            try:
                hk.apply(compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, rules)))
                n = 2 * abi.SMALL_RINGBUF_BYTES // 400       # twice what the ring holds
                flood = run_in(cg, [sys.executable, "-c", FLOOD, str(n), str(port)], timeout=120)
                assert flood.returncode == 0, flood.stderr
                assert int(flood.stdout) == n                  # every send refused
                full = hk.stats()
                r = run_in(cg, [str(denied)], timeout=30)      # the ring is full now
                after = hk.stats()
            finally:
                hk.close()
    finally:
        lsock.close()
    assert full["drops"] > n // 3, full
    assert (r.returncode, r.stdout) == (-signal.SIGKILL, ""), "exec ran under a full ring"
    assert after["decisions.exec.deny"] == full.get("decisions.exec.deny", 0) + 1
    assert after["drops"] == full["drops"] + 1                # its record was lost, counted
    assert after["drops.hips"] == after["drops"], after
