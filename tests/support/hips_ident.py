"""The pid-reuse attack on the HIPS exemption (issue 13 item 6), for both tiers.

The agent dies, its HIPS pins stay in force.  Before the fix the dead agent's
tgid was the exempt ``cfg_self_tgid`` baked into ``.rodata``: a process that
got that pid next was exempt from every HIPS rule, and the new agent that
adopted the pins was not.  Here the attacker really gets the dead agent's pid
(``/proc/sys/kernel/ns_last_pid``, as a waiting attacker would by forking
until it comes round) and execs a denied binary.

Scope: the matcher is scoped to a test cgroup with a 300 s dead-man; the
denied binary is a private copy of /bin/true; pins live under
/sys/fs/bpf/bastion-test-*; everything is removed in ``finally``.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.enforce.hips_kernel import HipsKernel
from bastion.kernel import bpffs
from support.cg import run_in, scoped_cgroup

SRC = str(Path(__file__).resolve().parents[2] / "src")
NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")

# The first agent: load + pin the matcher in the test cgroup's scope, apply a policy
# (deny exec of the victim, deny connect to the port for everyone), check that it is
# exempt itself, then die without unpinning (a crash).
_AGENT = """
import errno, os, socket, sys
from pathlib import Path
from bastion.enforce.hips_kernel import HipsKernel
from bastion.errors import Location
from bastion.policy.compile import FileTarget, NetTarget, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev
from bastion.policy.model import Action, Mode, Op
pins, cgid, cg, victim, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
st = os.stat(victim)
rules = (ResolvedRule(1, "exec", Location("t", 1), (), "everyone", (Op.EXEC,),
                      (FileTarget(kernel_dev(st.st_dev), st.st_ino, False, victim),), (), Action.DENY),
         ResolvedRule(2, "net", Location("t", 2), (), "everyone", (Op.CONNECT,), (),
                      (NetTarget(b"\\0" * 10 + b"\\xff\\xff" + socket.inet_aton("127.0.0.1"), 128, port),),
                      Action.DENY))
hk = HipsKernel(sys.argv[6], pin_dir=Path(pins), cgroup_id=cgid, deadline_s=300,
                self_tgid=os.getpid(), cgroup_path=Path(cg))
hk.open()
hk.apply(compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, rules)))
"""

_CONNECT = """
def connect(port):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()
"""

_OLD_AGENT = _AGENT + _CONNECT + """
print(os.getpid(), connect(port), flush=True)
os._exit(0)   # no close(): the pins stay, as after a crash
"""

_NEW_AGENT = """
import os, socket, sys
from pathlib import Path
from bastion.enforce.hips_kernel import HipsKernel
""" + _CONNECT + """
hk = HipsKernel.adopt(Path(sys.argv[1]))
print(os.getpid(), connect(int(sys.argv[2])), sorted(i.tgid for i in hk.exempt()), flush=True)
hk.close()
"""


def _agent(cg: Path, code: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    # s25: 60 s was too little for a Python start and an lsm load (~25 s of verifier) in
    # a TCG guest beside another: the test failed as a timeout, not on what it checks
    r = run_in(cg, [sys.executable, "-c", code, *args], timeout=240, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(maxsplit=2)


def _exec_as_pid(pid: int, cg: Path, argv: list[str]) -> int:
    """Run ``argv`` in cgroup ``cg`` from a process whose pid is ``pid`` (a reused pid)."""
    shell = f'[ $$ = {pid} ] || exit 77; echo $$ > {cg}/cgroup.procs && exec "$@"'
    for _ in range(100):
        NS_LAST_PID.write_text(str(pid - 1))
        r = subprocess.run(["/bin/sh", "-c", shell, "sh", *argv], capture_output=True,
                           timeout=30)
        if r.returncode != 77:
            return r.returncode
    pytest.fail(f"could not obtain pid {pid} in 100 forks")


def reused_pid_attack(tier: str, tmp_path: Path) -> None:
    """Run the attack against ``tier``'s matcher; assert the reused pid is refused and
    the adopting agent exempt.  A refusal is SIGKILL at exec (compat) or EPERM (lsm:
    the shell's exec fails, exit 126)."""
    refused = -signal.SIGKILL if tier == "compat" else 126
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        _attack(tier, tmp_path, listener.getsockname()[1], refused)
    finally:
        listener.close()


def _attack(tier: str, tmp_path: Path, port: int, refused: int) -> None:
    victim = tmp_path / "victim"
    shutil.copy("/bin/true", victim)
    bpffs.ensure_bpffs()
    pins = bpffs.BPFFS / f"bastion-test-ident-{os.getpid()}"
    with scoped_cgroup() as (cg, cgid):
        try:
            dead_pid, own = _agent(cg, _OLD_AGENT, str(pins), str(cgid), str(cg), str(victim),
                                   str(port), tier)[:2]
            assert int(own) == 0                  # the loading agent is exempt
            # the plain case: any process in scope is refused
            assert run_in(cg, [str(victim)], timeout=30).returncode == refused
            # the attack: a process that got the dead agent's pid execs the denied binary
            assert _exec_as_pid(int(dead_pid), cg, [str(victim)]) == refused, \
                "a process reusing the dead agent's pid is exempt from HIPS"
            # the new agent adopts the pins: it is exempt, the dead one's entry is gone
            new_pid, own, exempt = _agent(cg, _NEW_AGENT, str(pins), str(port))
            assert int(own) == 0, f"the adopting agent is refused (errno {own})"
            assert exempt == f"[{new_pid}]"
            # and the reused pid is still not exempt after the adoption
            assert _exec_as_pid(int(dead_pid), cg, [str(victim)]) == refused
            r = run_in(cg, [sys.executable, "-c", "import socket\ns=socket.socket()\n"
                            f"s.connect(('127.0.0.1', {port}))"], timeout=30)
            assert r.returncode != 0 and f"[Errno {errno.EPERM}]" in r.stderr
        finally:
            try:
                if (pins / "links").is_dir():
                    HipsKernel.adopt(pins).close(unpin=True)
            finally:
                bpffs.remove_pins(pins)
        assert run_in(cg, [str(victim)], timeout=30).returncode == 0   # detached
