"""Tamper protection, lsm tier, on Debian's stock kernel (inside the test VM).

A TEST instance only: a guardian (``python -m bastion.cli.guard guardian``)
with a stand-in agent, protecting a tree under /tmp and the pin root
/sys/fs/bpf/bastion-test-<random>; every hook acts only on attackers in the
test cgroup and only until the dead-man deadline; the test process stays
outside the cgroup (it may kill and unpin in teardown).  Each attack must be
refused (EPERM) with the agent alive, its files and pins intact, and a
critical alert naming the attacker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.guard.identity import ROLE_AGENT, Identity  # noqa: E402
from bastion.kernel.libbpf import Map  # noqa: E402
from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_tamper_lsm.py`"
)
RESULTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[T.Instance]:
    tmp = tmp_path_factory.mktemp("tamper")
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp, cg, cgid, deadline_s=200)
        # a stand-in for a HIPS pin: protected by id like the agent's own
        (i.pin_root / "hips").mkdir(parents=True)
        subprocess.run(["bpftool", "map", "create", str(i.pin_root / "hips" / "hips_test"), "type",
                        "hash", "key", "4", "value", "4", "entries", "8", "name", "hips_test"],
                       check=True)
        try:
            i.start_guardian(tier="lsm")
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-60:]))
            print("outcomes:", RESULTS)
            i.teardown()


def _refused(inst: T.Instance, name: str, argv: list[str], rule: str,
             intact: Callable[[], bool] = lambda: True) -> subprocess.CompletedProcess[str]:
    agent = inst.agent_pid()
    r = inst.attack(argv)
    assert r.returncode != 0, f"{name}: not refused: {r.stdout} {r.stderr}"
    assert r.returncode > 0, f"{name}: the attacker died ({r.returncode}) instead of EPERM"
    out = r.stdout + r.stderr
    assert "ermission" in out or "not permitted" in out or "must be superuser" in out \
        or r.returncode == 3, f"{name}: {r.stdout} {r.stderr}"
    a = inst.wait_alert(rule, lambda a: a["action"] == "denied")
    assert a["severity"] == "critical"
    assert a["process"]["uid"] == 0 and a["process"]["exe"]  # type: ignore[index]
    # "D": a freshly started agent still reading its modules (over 9p in the VM)
    assert inst.agent_pid() == agent and T.proc_state(agent) in ("S", "R", "D"), name
    assert intact(), f"{name}: protected object changed"
    RESULTS[name] = "refused (EPERM), alert " + rule
    return r


def test_01_tier_and_identity(inst: T.Instance) -> None:
    st = inst.status()
    assert st["tier"] == "lsm" and st["tamper_protection"] == "full"
    roles = {i["role"] for i in st["identities"]}  # type: ignore[union-attr,index]
    assert roles == {"agent", "guardian"}


@pytest.mark.parametrize("sig", ["-9", "-15", "-STOP", "-INT", "-HUP", "-QUIT", "-TSTP"])
def test_02_signals_to_agent(inst: T.Instance, sig: str) -> None:
    _refused(inst, f"kill {sig} agent", ["kill", sig, str(inst.agent_pid())], "bastion.tamper.signal")


def test_03_harmless_signal_passes(inst: T.Instance) -> None:
    r = inst.attack(["kill", "-CONT", str(inst.agent_pid())])
    assert r.returncode == 0, r.stderr
    RESULTS["kill -CONT agent"] = "allowed (harmless)"


def test_04_kill_guardian(inst: T.Instance) -> None:
    assert inst.guardian is not None
    _refused(inst, "kill -9 guardian", ["kill", "-9", str(inst.guardian.pid)], "bastion.tamper.signal")
    assert inst.guardian.poll() is None


def test_05_pkill(inst: T.Instance) -> None:
    agent = inst.agent_pid()
    r = inst.attack(["pkill", "-9", "-f", T.AGENT_MARK])
    assert inst.agent_pid() == agent and T.proc_state(agent) in ("S", "R")
    inst.wait_alert("bastion.tamper.signal", lambda a: a["process"]["exe"].endswith(("pkill", "pgrep")))  # type: ignore[index]
    RESULTS["pkill -9 -f agent"] = f"refused (pkill rc {r.returncode})"


def test_06_pidfd_send_signal(inst: T.Instance) -> None:
    _refused(inst, "pidfd_send_signal SIGKILL", [T.PY, "-c", T.py_pidfd_kill(inst.agent_pid())],
             "bastion.tamper.signal")


@pytest.mark.parametrize("req", [T.PTRACE_ATTACH, T.PTRACE_SEIZE])
def test_07_ptrace(inst: T.Instance, req: int) -> None:
    _refused(inst, f"ptrace {'attach' if req == T.PTRACE_ATTACH else 'seize'}",
             [T.PY, "-c", T.py_ptrace(inst.agent_pid(), req)], "bastion.tamper.ptrace")


def test_08_proc_mem_write(inst: T.Instance) -> None:
    _refused(inst, "/proc/pid/mem write", [T.PY, "-c", T.py_proc_mem(inst.agent_pid())],
             "bastion.tamper.ptrace")


def test_09_process_vm_writev(inst: T.Instance) -> None:
    _refused(inst, "process_vm_writev", [T.PY, "-c", T.py_vm_writev(inst.agent_pid())],
             "bastion.tamper.ptrace")


def _policy_ok(inst: T.Instance) -> Callable[[], bool]:
    return lambda: (inst.etc / "policy.yaml").read_text() == "version: 1\n"


def test_10_files(inst: T.Instance) -> None:
    pol = inst.etc / "policy.yaml"
    ok = _policy_ok(inst)
    tree_ok = lambda: (inst.install / "lib" / "agent.py").read_text() == "print('agent')\n"  # noqa: E731
    _refused(inst, "rm -rf install tree", ["rm", "-rf", str(inst.install)],
             "bastion.tamper.unlink", tree_ok)
    _refused(inst, "truncate -s0 policy", ["truncate", "-s0", str(pol)],
             "bastion.tamper.open-write", ok)
    _refused(inst, "truncate(2) policy", [T.PY, "-c", f"import os; os.truncate({str(pol)!r}, 0)"],
             "bastion.tamper.truncate", ok)
    _refused(inst, "overwrite policy (>)", ["sh", "-c", f"echo evil > {pol}"],
             "bastion.tamper.open-write", ok)
    _refused(inst, "append policy (>>)", ["sh", "-c", f"echo evil >> {pol}"],
             "bastion.tamper.open-write", ok)
    _refused(inst, "mv config dir", ["mv", str(inst.etc), str(inst.root / "moved")],
             "bastion.tamper.rename", ok)
    _refused(inst, "mv over policy", ["sh", "-c", f"echo evil > {inst.root}/x && mv {inst.root}/x {pol}"],
             "bastion.tamper.rename", ok)
    _refused(inst, "ln hard link of policy", ["ln", str(pol), str(inst.root / "hl")],
             "bastion.tamper.link", ok)
    _refused(inst, "chmod 666 policy", ["chmod", "666", str(pol)], "bastion.tamper.setattr", ok)
    _refused(inst, "chown nobody policy", ["chown", "nobody", str(pol)], "bastion.tamper.setattr", ok)
    _refused(inst, "setxattr policy", [T.PY, "-c", f"import os; os.setxattr({str(pol)!r}, 'user.x', b'1')"],
             "bastion.tamper.setxattr", ok)
    _refused(inst, "create file in install tree", ["touch", str(inst.install / "bin" / "evil")],
             "bastion.tamper.create", lambda: not (inst.install / "bin" / "evil").exists())
    _refused(inst, "mkdir in install tree", ["mkdir", str(inst.install / "evil")],
             "bastion.tamper.create")
    _refused(inst, "rename ancestor of config", ["mv", str(inst.etc.parent), str(inst.root / "etc2")],
             "bastion.tamper.rename", ok)


def test_11_store(inst: T.Instance) -> None:
    db = next(inst.data.glob("*.db"))
    before = db.stat().st_size
    r = inst.attack(["sqlite3", str(db), "UPDATE alerts SET severity = 0; DELETE FROM alerts;"])
    assert r.returncode != 0, r.stdout + r.stderr
    inst.wait_alert("bastion.tamper.open-write", lambda a: "sqlite3" in a["process"]["exe"])  # type: ignore[index]
    assert db.stat().st_size >= before
    assert len(inst.alerts()) > 5
    RESULTS["sqlite3 edit of the store"] = "refused (write-open EPERM; sqlite falls back to read-only)"
    _refused(inst, "rm chain key", ["rm", "-f", str(inst.data / "alert-chain.key")],
             "bastion.tamper.unlink", lambda: (inst.data / "alert-chain.key").exists())


def test_12_mounts(inst: T.Instance) -> None:
    ok = _policy_ok(inst)
    _refused(inst, "tmpfs over config dir", ["mount", "-t", "tmpfs", "none", str(inst.etc)],
             "bastion.tamper.mount", ok)
    (inst.root / "decoy").mkdir(exist_ok=True)
    _refused(inst, "bind mount over install dir", ["mount", "--bind", str(inst.root / "decoy"),
                                                   str(inst.install / "lib")],
             "bastion.tamper.mount", lambda: (inst.install / "lib" / "agent.py").exists())
    _refused(inst, "umount -l /sys/fs/bpf", ["umount", "-l", "/sys/fs/bpf"], "bastion.tamper.umount",
             lambda: (inst.pin_root / "tamper" / "links").is_dir())


def test_13_pins(inst: T.Instance) -> None:
    pins = lambda: len(list((inst.pin_root / "tamper" / "links").iterdir())) >= 10  # noqa: E731
    _refused(inst, "mv pin dir", ["mv", str(inst.pin_root / "tamper"), str(inst.pin_root / "gone")],
             "bastion.tamper.rename", pins)
    _refused(inst, "rm a pinned link", ["rm", "-f", str(inst.pin_root / "tamper" / "links" / "tamper_task_kill")],
             "bastion.tamper.unlink", pins)
    _refused(inst, "rm -rf pin root", ["rm", "-rf", str(inst.pin_root)], "bastion.tamper.unlink", pins)


def test_14_bpf_objects(inst: T.Instance) -> None:
    maps = inst.pin_root / "tamper" / "maps"
    _refused(inst, "bpftool map update (identity map)",
             ["bpftool", "map", "update", "pinned", str(maps / "tamper_idents"), "key", "1", "0", "0",
              "0", "value", *(["0"] * 24)], "bastion.tamper.bpf-map")
    _refused(inst, "bpftool map delete (protected set)",
             ["sh", "-c", f"k=$(bpftool -j map dump pinned {maps}/tamper_objs | python3 -c "
                          "'import json,sys; print(\" \".join(str(int(b,16)) for b in json.load(sys.stdin)[0][\"key\"]))'); "
                          f"bpftool map delete pinned {maps}/tamper_objs key $k"],
             "bastion.tamper.bpf-map")
    _refused(inst, "bpftool map update (HIPS pin)",
             ["bpftool", "map", "update", "pinned", str(inst.pin_root / "hips" / "hips_test"), "key",
              "1", "0", "0", "0", "value", "1", "0", "0", "0"], "bastion.tamper.bpf-map")
    _refused(inst, "bpftool map freeze", ["bpftool", "map", "freeze", "pinned", str(maps / "tamper_sbs")],
             "bastion.tamper.bpf-map")
    _refused(inst, "bpftool link detach",
             ["bpftool", "link", "detach", "pinned", str(inst.pin_root / "tamper" / "links" / "tamper_task_kill")],
             "bastion.tamper.bpf-link")
    # still enforcing after all that
    _refused(inst, "kill -9 agent after bpf attacks", ["kill", "-9", str(inst.agent_pid())],
             "bastion.tamper.signal")


def test_15_bpftool_still_shows(inst: T.Instance) -> None:
    """What an administrator (in the attacker's cgroup) can still list."""
    out = {}
    for what in (["map", "show"], ["link", "show"], ["prog", "show"]):
        r = inst.attack(["bpftool", "-j", *what])
        out[" ".join(what)] = (r.returncode, "tamper_" in r.stdout, r.stdout.count('"id"'))
        assert r.returncode == 0, r.stderr
        if what[0] != "link":          # link entries carry no names
            assert "tamper_" in r.stdout, what
    r = inst.attack(["bpftool", "map", "dump", "pinned", str(inst.pin_root / "tamper" / "maps" / "tamper_idents")])
    out["map dump (identities)"] = (r.returncode, "", len(r.stdout))
    assert r.returncode == 0
    RESULTS["bpftool map/link/prog show, map dump"] = f"allowed: {out}"


def test_16_pid_reuse_is_not_exempt(inst: T.Instance) -> None:
    """An attacker given the agent's identity entry with a wrong start time or exe is
    still refused; with its exact identity it is exempt (the positive control)."""
    pol = inst.etc / "policy.yaml"
    code = ("import sys, os, time; sys.stdin.readline(); "
            f"fd = os.open({str(pol)!r}, os.O_WRONLY | os.O_APPEND); print('opened')")
    idents = Map.open_pinned(inst.pin_root / "tamper" / "maps" / "tamper_idents")
    try:
        for fake, expect_ok in (("start", False), ("exe", False), (None, True)):
            p = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {inst.cg}/cgroup.procs && exec "$@"', "sh",
                                  T.PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            real = Identity.of(p.pid, ROLE_AGENT)
            ident = Identity(real.tgid, real.start_ticks + (1 if fake == "start" else 0),
                             real.exe_ino + (1 if fake == "exe" else 0), real.exe_dev, ROLE_AGENT)
            idents.update(ident.key(), ident.value())   # the test process is out of scope
            try:
                out, err = p.communicate("go\n", timeout=20)
            finally:
                idents.delete(ident.key())
            assert (p.returncode == 0) is expect_ok, (fake, out, err)
        (inst.etc / "policy.yaml").write_text("version: 1\n")   # the exempt one may have touched it
    finally:
        idents.close()
    RESULTS["pid reuse (same pid, other start/exe)"] = "refused; exact identity exempt"


def test_17_guardian_crash_enforcement_outlives_and_adopt(inst: T.Instance) -> None:
    assert inst.guardian is not None
    agent = inst.agent_pid()
    inst.guardian.kill()               # a crash: the test is out of scope
    inst.guardian.wait(10)
    inst.gsock.unlink(missing_ok=True)
    r = inst.attack(["kill", "-9", str(agent)])
    assert r.returncode != 0 and T.proc_state(agent) in ("S", "R"), "no enforcement without guardian"
    r = inst.attack(["sh", "-c", f"echo evil >> {inst.etc / 'policy.yaml'}"])
    assert r.returncode != 0
    inst.start_guardian(tier="lsm", wait_agent=False)
    st = inst.status()
    assert st["adopted"] is True and st["agent_pid"] == agent, st
    _refused(inst, "kill -9 agent after guardian restart", ["kill", "-9", str(agent)],
             "bastion.tamper.signal")
    RESULTS["guardian crash"] = "enforcement stayed pinned; restarted guardian adopted pins and agent"


def test_18_break_glass(inst: T.Instance) -> None:
    resp = inst.stop(inst.wrong_file)
    assert resp["done"] is False and "wrong token" in str(resp["error"])
    inst.wait_alert("bastion.tamper.bad-token")
    assert (inst.pin_root / "tamper").exists()
    time.sleep(1.2)                     # the back-off after one failure
    agent = inst.agent_pid()
    resp = inst.stop(inst.token_file)
    assert resp["done"] is True, resp
    assert inst.guardian is not None
    assert inst.guardian.wait(30) == 0
    assert not (inst.pin_root / "tamper").exists()
    for _ in range(50):
        if T.proc_state(agent) == "gone":
            break
        time.sleep(0.1)
    assert T.proc_state(agent) in ("gone", "Z")
    rules = [a["rule"] for a in inst.alerts()]
    assert "bastion.tamper.maintenance" in rules and "bastion.tamper.protection-off" in rules
    r = subprocess.run([T.PY, "-m", "bastion.cli.main", "log", "verify", "--data-dir", str(inst.data)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    RESULTS["break-glass"] = "wrong token refused+alerted; right token removed protection and stopped"
