"""Issue 13 items 2 and 13, compat tier: signals and kill-the-sender holes.

Each test is an attack that bypassed tamper protection before (the agent was
killed / stopped / had its limits changed, or the guardian's fanotify fd was
stolen, with no tamper alert and the attacker alive).  Now the sender is
SIGKILLed by the tamper program the moment it tries and a critical
``bastion.tamper.*`` alert names it.  A TEST instance only (see
tests/support/tamper.py): attackers run in the test cgroup, the programs act
on nothing else and carry a dead-man deadline.
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

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[T.Instance]:
    tmp = tmp_path_factory.mktemp("tsig")
    with scoped_cgroup() as (cg, cgid), scoped_cgroup() as (own, _own_id):
        i = T.make_instance(tmp, cg, cgid, deadline_s=150)
        try:
            i.start_guardian("--cgroup", str(own), tier="compat", agent=T.threaded_agent())
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def _killed(inst: T.Instance, code: str, rule: str) -> None:
    r = inst.attack_py(code)
    assert r.returncode == -9, f"attacker not killed ({r.returncode}): {r.stdout} {r.stderr}"
    a = inst.wait_alert(rule, lambda a: a["action"] == "killed" and a["process"]["pid"] > 0)
    assert a["severity"] == "critical"


def test_sigio_setown_kill(inst: T.Instance) -> None:
    agent = inst.wait_agent()
    _killed(inst, T.py_sigio(agent), "bastion.tamper.sigio")
    inst.wait_agent()


def test_sigio_to_guardian(inst: T.Instance) -> None:
    assert inst.guardian is not None
    _killed(inst, T.py_sigio(inst.guardian.pid), "bastion.tamper.sigio")
    time.sleep(0.3)
    assert inst.guardian.poll() is None


def _unlimited_agent(inst: T.Instance) -> None:
    """The running agent has no CPU limit again: put back in place, or (a hard limit root
    cannot raise without CAP_SYS_RESOURCE, as on this host) a restarted agent."""
    deadline = time.monotonic() + 10
    while True:
        agent = inst.wait_agent()
        if T.cpu_limit(agent) == "unlimited":
            return
        assert time.monotonic() < deadline, f"agent {agent} keeps RLIMIT_CPU {T.cpu_limit(agent)}"
        time.sleep(0.1)


@pytest.mark.parametrize("target", ["pid", "thread id"])
def test_prlimit_cpu(inst: T.Instance, target: str) -> None:
    agent = inst.wait_agent()
    pid = agent if target == "pid" else T.other_thread(agent)
    _killed(inst, f"import resource; resource.prlimit({pid}, resource.RLIMIT_CPU, (1, 1))",
            "bastion.tamper.prlimit")
    _unlimited_agent(inst)


@pytest.mark.parametrize("variant", ["tid", "task-tid", "double-slash", "dirfd"])
def test_proc_mem_variants(inst: T.Instance, variant: str) -> None:
    agent = inst.wait_agent()
    tid = T.other_thread(agent)
    _killed(inst, T.py_proc_mem_variant(agent, tid, variant), "bastion.tamper.proc-mem")


def test_ptrace_seize_of_a_thread(inst: T.Instance) -> None:
    agent = inst.wait_agent()
    tid = T.other_thread(agent)
    _killed(inst, T.py_ptrace(tid, T.PTRACE_SEIZE), "bastion.tamper.ptrace")
    assert inst.wait_agent() == agent


def test_moved_out_then_cgroup_kill(inst: T.Instance) -> None:
    """Move the agent into the attacker's cgroup and cgroup.kill it there (a SIGKILL
    without siginfo, skipped before): the mover dies at the move, the agent is moved
    back and lives."""
    agent = inst.wait_agent()
    r = inst.attack(["sh", "-c", f"echo {agent} > {inst.cg}/cgroup.procs; echo 1 > {inst.cg}/cgroup.kill; "
                     "sleep 1"])
    assert r.returncode == -9
    inst.wait_alert("bastion.tamper.cgroup-move", lambda a: a["evidence"]["target_pid"] == agent)
    inst.wait_alert("bastion.tamper.cgroup-escape", lambda a: a["evidence"]["pid"] == agent)
    assert inst.wait_agent() == agent
    own = Path(str(inst.status()["cgroup"]))
    assert str(agent) in (own / "cgroup.procs").read_text().split()


def test_cgroup_kill_of_our_cgroup(inst: T.Instance) -> None:
    own = Path(str(inst.status()["cgroup"]))
    agent = inst.wait_agent()
    assert str(agent) in (own / "cgroup.procs").read_text().split()
    r = inst.attack(["sh", "-c", f"echo 1 > {own}/cgroup.kill"])
    assert r.returncode != 0 and "not permitted" in r.stderr, r
    assert inst.guardian is not None and inst.guardian.poll() is None
    assert inst.wait_agent() == agent
    inst.wait_alert("bastion.tamper.open-write", lambda a: "cgroup.kill" in str(a["evidence"]))


def test_cgroup_freeze_of_our_cgroup(inst: T.Instance) -> None:
    own = Path(str(inst.status()["cgroup"]))
    r = inst.attack(["sh", "-c", f"echo 1 > {own}/cgroup.freeze"])
    assert r.returncode != 0 and "not permitted" in r.stderr, r
    assert "frozen 0" in (own / "cgroup.events").read_text()


def test_stopped_guardian_resumed_by_agent(inst: T.Instance) -> None:
    assert inst.guardian is not None
    gpid = inst.guardian.pid
    _killed(inst, f"import os, signal; os.kill({gpid}, signal.SIGSTOP)", "bastion.tamper.signal")
    deadline = time.monotonic() + 5
    while T.proc_state(gpid) in ("T", "t"):
        assert time.monotonic() < deadline, "guardian left stopped"
        time.sleep(0.1)
    inst.wait_alert("bastion.tamper.guardian-stopped")


def test_pidfd_getfd_of_guardian_fanotify(inst: T.Instance) -> None:
    """Last: before the fix it flushes the guardian's marks."""
    assert inst.guardian is not None
    gpid = inst.guardian.pid
    _killed(inst, T.py_pidfd_getfd_flush(gpid), "bastion.tamper.pidfd-getfd")
    r = inst.attack(["sh", "-c", f"echo evil >> {inst.etc / 'policy.yaml'}"])
    assert r.returncode != 0 and "not permitted" in r.stderr


def test_new_subdirectory_of_the_install_tree_is_marked_and_alerted(inst: T.Instance) -> None:
    """``mv lib lib.bak; mkdir lib`` then drop code for the agent's next start: compat sees
    no rename and a new directory has no fanotify mark.  The guardian marks new
    directories of the protected trees within ``remark_every_s`` (2 s) and raises a
    critical alert; writes into it are refused from then on."""
    lib = inst.install / "lib"
    r = inst.attack(["sh", "-c", f"mv {lib} {lib}.bak && mkdir {lib}"])
    assert r.returncode == 0, r.stderr          # compat cannot refuse a rename (said)
    a = inst.wait_alert("bastion.tamper.tree-changed", timeout=15)
    assert a["severity"] == "critical" and str(lib) in str(a["evidence"]["new"])  # type: ignore[index]
    r = inst.attack(["sh", "-c", f"echo 'import os' > {lib}/agent.py"])
    assert r.returncode != 0 and "not permitted" in r.stderr, r.stderr
    # fanotify sees opens, not creations: the file may exist, empty; nothing was written
    assert not (lib / "agent.py").exists() or (lib / "agent.py").read_text() == ""


def test_directories_the_agent_makes_in_its_data_dir_raise_no_alarm(inst: T.Instance) -> None:
    """The agent creates integrity/, shadow/, sigma/ in its data dir: marked, not alarmed
    (seen under `make run`: a critical tree-changed alert against ourselves)."""
    (inst.data / "integrity-like").mkdir()
    time.sleep(7)   # > remark_every_s
    assert not [a for a in inst.alerts("bastion.tamper.tree-changed")
                if "integrity-like" in str(a.get("evidence"))]
