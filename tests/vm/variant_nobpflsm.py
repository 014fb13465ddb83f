"""A kernel with BPF trampolines but without `bpf` in lsm= (Ubuntu's default).

`make test` boots the test VM a second time with that list and runs this file alone
(the rest of tests/vm needs BPF LSM):

    VM_LSM=lockdown,capability,landlock,yama,apparmor,tomoyo bash vm/run.sh tests/vm/variant_nobpflsm.py

(`make test-vm-variant`).  Not named test_*.py: the default VM run
(BPF LSM on, where it would only skip, and CI=true fails skips) does not collect it.
Skipped when `bpf` is an active LSM (a failure under CI=true).  The tier is compat (no
in-hook deny: exec is refused by SIGKILL at sched_process_exec, opens by fanotify) but
the events come from the kernel-hook sensor (fentry), and doctor says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bastion import abi  # noqa: E402
from bastion.enforce.fanotify import FanotifyEnforcer  # noqa: E402
from bastion.enforce.hips_kernel import HipsKernel  # noqa: E402
from bastion.enforce.mechanisms import COMPAT, mechanism  # noqa: E402
from bastion.enforce.tiers import probe  # noqa: E402
from bastion.errors import Location  # noqa: E402
from bastion.events import Event, ExecEvent, FileEvent, HipsEvent, KillEvent, NetEvent  # noqa: E402
from bastion.policy.compile import (  # noqa: E402
    FileTarget, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev,
)
from bastion.policy.model import Action, Mode, Op  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from bastion.tier import Tier  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402
from test_hook_sensor_lsm import IO_URING_OPEN, _collect, _exited  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"


def _lsms() -> list[str]:
    try:
        return Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    except OSError:
        return []


pytestmark = pytest.mark.skipif(
    not IN_VM or "bpf" in _lsms(),
    reason="runs in the test VM booted without bpf in lsm= (VM_LSM=..., see the docstring)",
)
REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


def test_tier_compat_events_from_hooks() -> None:
    report = probe()
    assert report.tier == "compat"
    assert report.event_source == "hooks"
    ev = report.capability("events")
    assert ev.available and ev.mechanism.startswith("kernel hooks") and "fentry" in ev.detail
    # enforcement: the compat mechanisms, not an LSM hook
    assert report.capability("exec_deny").mechanism.startswith("bpf_send_signal(SIGKILL)")
    assert report.capability("file_deny").mechanism.startswith("fanotify")
    assert not report.capability("signal_ptrace_protection").available
    for op in (Op.EXEC, Op.OPEN_WRITE, Op.CONNECT):
        assert mechanism(op, report.tier) == COMPAT[op]


def test_doctor_names_the_fentry_variant() -> None:
    r = subprocess.run([str(REPO / ".venv/bin/bastion"), "doctor"], capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "tier     compat" in r.stdout
    assert "events   hooks (BPF LSM off: events from fentry" in r.stdout, r.stdout


def test_io_uring_open_seen_without_bpf_lsm(tmp_path: Path) -> None:
    target = tmp_path / "ring-created"
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, [PY, "-c", IO_URING_OPEN, str(target)], timeout=60)
            assert r.returncode == 5, r.stderr
            events = _collect(sensor, _exited(5))
        finally:
            sensor.close()
    assert target.read_text() == "via io_uring\n"
    assert any(isinstance(e, FileEvent) and e.op == "open" and e.path == str(target)
               and e.flags & os.O_CREAT for e in events), events


KILL_AND_CONNECT = r'''
import os, signal, socket, subprocess, sys, time
p = subprocess.Popen(["/bin/sleep", "30"])
os.kill(p.pid, signal.SIGTERM)
p.wait()
s = socket.socket()
s.settimeout(1)
try:
    s.connect(("127.0.0.1", 9))
except OSError:
    pass
print(p.pid)
sys.exit(9)
'''


def test_hook_events_without_bpf_lsm(tmp_path: Path) -> None:
    """Exec with its context, write-open, unlink, rename, connect and kill: every
    record the lsm tier's sensor gives comes from fentry/tp_btf here too."""
    d = tmp_path / "work"
    d.mkdir()
    script = d / "run.sh"
    script.write_text(f"#!/bin/sh\ncd {d} && echo x > a && mv a b && rm b\nexit 0\n")
    script.chmod(0o755)
    kill_py = d / "kc.py"
    kill_py.write_text(KILL_AND_CONNECT)
    sh = f"echo go | LD_LIBRARY_PATH=/opt/x {script} | cat >/dev/null; {PY} {kill_py}"
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, open_dedup_s=0)
        sensor.open()
        try:
            assert sensor.missing == [], sensor.missing
            r = run_in(cg, ["/bin/sh", "-c", sh], timeout=60)
            assert r.returncode == 9, r.stderr
            events: list[Event] = _collect(sensor, _exited(9), secs=10)
        finally:
            sensor.close()
    victim = int(r.stdout.split()[-1])
    execs = [e for e in events if isinstance(e, ExecEvent)]
    ctx = [e for e in execs if e.script == str(script)]
    assert ctx, [(e.proc.exe, e.filename, e.script) for e in execs]
    assert ctx[0].proc.exe in ("/usr/bin/dash", "/bin/dash")
    assert "LD_LIBRARY_PATH=/opt/x" in ctx[0].env, ctx[0].env
    assert ctx[0].stdin.startswith("pipe:[") and ctx[0].stdout.startswith("pipe:["), ctx[0]
    files = [e for e in events if isinstance(e, FileEvent)]
    assert any(e.op == "open" and e.path == f"{d}/a" and e.flags & os.O_WRONLY and e.ino > 0
               for e in files), files
    assert any(e.op == "rename" and (e.path, e.path2) == (f"{d}/a", f"{d}/b") for e in files), files
    assert any(e.op == "unlink" and e.path == f"{d}/b" for e in files), files
    conns = [e for e in events if isinstance(e, NetEvent) and e.op == "connect"]
    assert any(e.daddr == "127.0.0.1" and e.dport == 9 for e in conns), conns
    kills = [e for e in events if isinstance(e, KillEvent)]
    assert any(e.target_tgid == victim and e.signal == signal.SIGTERM for e in kills), kills


def _target(p: Path) -> FileTarget:
    st = os.stat(p)
    return FileTarget(kernel_dev(st.st_dev), st.st_ino, False, str(p))


def _rule(rid: int, op: Op, f: FileTarget) -> ResolvedRule:
    return ResolvedRule(rid, f"r{rid}", Location("test", rid), (), "test", (op,), (f,), (),
                        Action.DENY)


def test_enforcement_falls_back_to_compat_mechanisms(tmp_path: Path) -> None:
    """Without BPF LSM a deny is a SIGKILL at exec and a fanotify answer on open,
    reported with those mechanisms; no LSM hook refuses anything."""
    report = probe()
    assert report.tier == Tier.COMPAT
    tool = tmp_path / "denied-tool"
    shutil.copy("/bin/true", tool)
    guarded = tmp_path / "guarded"
    guarded.write_text("keep\n")
    r_exec, r_write = _rule(1, Op.EXEC, _target(tool)), _rule(2, Op.OPEN_WRITE, _target(guarded))
    plan = compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, (r_exec, r_write)))
    with scoped_cgroup() as (cg, cgid):
        hk = HipsKernel(report.tier, cgroup_id=cgid, deadline_s=60, self_tgid=os.getpid(),
                        cgroup_path=cg)
        hk.open()
        files = FanotifyEnforcer(scope_cgroup_id=cgid, deadline_s=60.0, decision_timeout_s=0.5)
        try:
            files.open()
            files.start()
            hk.apply(plan)
            files.apply(plan, list(r_write.files))
            ran = run_in(cg, [str(tool)], timeout=30)
            wrote = run_in(cg, ["/bin/sh", "-c", f"echo gone > {guarded}"], timeout=30)
            # s29: on this distribution kernel the open context loads (tp_btf programs,
            # io_uring's submission tracepoint of 6.1, frozen mmapable maps) and a new
            # process's read of the write-protected file is taken on its marks, never on
            # its stack.  Until one is: the loop hands a read to Python when its opener is
            # not asleep yet (/proc/TID/syscall says "running"), which under TCG happens
            # (CI-T of s29: the one read of the first form went so)
            for _ in range(20):
                read = run_in(cg, ["/bin/cat", str(guarded)], timeout=30)
                assert read.returncode == 0 and read.stdout == "keep\n", read
                if files.stats()["reads_by_marks"] >= 1:
                    break
            got: list[HipsEvent] = []
            end = time.monotonic() + 5
            while time.monotonic() < end and len(got) < 2:
                got += hk.poll(0.05) + files.poll(0.05)
            fstats = files.stats()
        finally:
            files.close()
            hk.close()
    assert ran.returncode == -signal.SIGKILL, ran
    assert wrote.returncode != 0 and "Operation not permitted" in wrote.stderr, wrote
    assert guarded.read_text() == "keep\n"
    assert fstats["open_context"] == 1, files.open_context_why
    assert fstats["reads_by_marks"] >= 1 and fstats["reads_by_stack"] == 0, fstats
    mechs = {(e.op, e.mechanism, e.enforced) for e in got}
    assert mechs == {("exec", "exec-kill", True), ("open-write", "fanotify", True)}, got
    assert not any(e.mechanism == abi.Mechanism.LSM.name.lower() for e in got)


def test_exec_memory_and_memfd_without_bpf_lsm(tmp_path: Path) -> None:
    """ABI 2.1 records come from the same fentry programs without BPF LSM."""
    from test_xmem_lsm import check_loader_records

    check_loader_records(tmp_path)
