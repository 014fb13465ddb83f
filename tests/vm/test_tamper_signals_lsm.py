"""Issue 13 items 2 and 13, lsm tier (inside the test VM): signals that task_kill never
sees, limits, our cgroup's control files, thread ids, pidfd_getfd.

A TEST instance only (tests/support/tamper.py): guardian + threaded stand-in agent in
their own cgroup (``--cgroup``), attackers in the test cgroup, dead-man deadline.
Each attack is refused (EPERM, or the signal never sent) with the agent alive and a
critical alert; a move out of our cgroup (no LSM hook) kills the mover.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_tamper_signals_lsm.py`"
)


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[T.Instance]:
    tmp = tmp_path_factory.mktemp("tsig")
    with scoped_cgroup() as (cg, cgid), scoped_cgroup() as (own, _own_id):
        i = T.make_instance(tmp, cg, cgid, deadline_s=200)
        try:
            i.start_guardian("--cgroup", str(own), tier="lsm", agent=T.threaded_agent())
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-60:]))
            i.teardown()


def _refused(inst: T.Instance, code: str, rule: str) -> None:
    agent = inst.wait_agent()
    r = inst.attack_py(code)
    assert r.returncode > 0, f"not refused ({r.returncode}): {r.stdout} {r.stderr}"
    assert "not permitted" in r.stderr or "PermissionError" in r.stderr, r.stderr
    a = inst.wait_alert(rule, lambda a: a["action"] == "denied")
    assert a["severity"] == "critical"
    assert inst.wait_agent() == agent


def test_tier(inst: T.Instance) -> None:
    st = inst.status()
    assert st["tier"] == "lsm" and st["tamper_protection"] == "full" and st["cgroup"]


@pytest.mark.parametrize("who", ["agent", "guardian"])
def test_sigio_not_sent(inst: T.Instance, who: str) -> None:
    agent = inst.wait_agent()
    assert inst.guardian is not None
    pid = agent if who == "agent" else inst.guardian.pid
    r = inst.attack_py(T.py_sigio(pid))
    assert "sent" in r.stdout, r.stderr            # fcntl passes; the kernel's signal does not
    inst.wait_alert("bastion.tamper.sigio", lambda a: a["action"] == "denied"
                    and a["evidence"]["target_pid"] == pid)
    time.sleep(0.3)
    assert inst.wait_agent() == agent and inst.guardian.poll() is None


@pytest.mark.parametrize("target", ["pid", "thread id"])
def test_prlimit_cpu_refused(inst: T.Instance, target: str) -> None:
    agent = inst.wait_agent()
    pid = agent if target == "pid" else T.other_thread(agent)
    _refused(inst, f"import resource; resource.prlimit({pid}, resource.RLIMIT_CPU, (1, 1))",
             "bastion.tamper.prlimit")
    assert T.cpu_limit(agent) == "unlimited"


@pytest.mark.parametrize("name", ["cgroup.kill", "cgroup.freeze", "cgroup.procs", "cgroup.max.depth"])
def test_cgroup_control_files_refused(inst: T.Instance, name: str) -> None:
    own = Path(str(inst.status()["cgroup"]))
    agent = inst.wait_agent()
    r = inst.attack(["sh", "-c", f"echo 1 > {own}/{name}"])
    assert r.returncode != 0 and "not permitted" in r.stderr, r
    inst.wait_alert("bastion.tamper.open-write", lambda a: name in str(a["evidence"]))
    assert "frozen 0" in (own / "cgroup.events").read_text()
    assert inst.wait_agent() == agent and str(agent) in (own / "cgroup.procs").read_text().split()


def test_moved_out_then_cgroup_kill(inst: T.Instance) -> None:
    agent = inst.wait_agent()
    r = inst.attack(["sh", "-c", f"echo {agent} > {inst.cg}/cgroup.procs; echo 1 > {inst.cg}/cgroup.kill; "
                     "sleep 1"])
    assert r.returncode == -9
    inst.wait_alert("bastion.tamper.cgroup-move", lambda a: a["evidence"]["target_pid"] == agent)
    inst.wait_alert("bastion.tamper.cgroup-escape", lambda a: a["evidence"]["pid"] == agent)
    assert inst.wait_agent() == agent


@pytest.mark.parametrize("variant", ["tid", "task-tid", "double-slash", "dirfd"])
def test_proc_mem_variants_refused(inst: T.Instance, variant: str) -> None:
    agent = inst.wait_agent()
    _refused(inst, T.py_proc_mem_variant(agent, T.other_thread(agent), variant), "bastion.tamper.ptrace")


def test_ptrace_seize_of_a_thread_refused(inst: T.Instance) -> None:
    agent = inst.wait_agent()
    r = inst.attack_py(T.py_ptrace(T.other_thread(agent), T.PTRACE_SEIZE))
    assert r.returncode == 3 and "rc -1 1" in r.stdout, (r.stdout, r.stderr)
    inst.wait_alert("bastion.tamper.ptrace", lambda a: a["action"] == "denied")


def test_pidfd_getfd_refused(inst: T.Instance) -> None:
    assert inst.guardian is not None
    r = inst.attack_py(T.py_pidfd_getfd_flush(inst.guardian.pid, match=""))
    assert "stole" in r.stdout and " -1 1" in r.stdout, (r.stdout, r.stderr)   # EPERM
    inst.wait_alert("bastion.tamper.ptrace", lambda a: a["evidence"]["target_pid"] == inst.guardian.pid)  # type: ignore[union-attr]
