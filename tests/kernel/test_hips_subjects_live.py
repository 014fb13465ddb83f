"""Issue 14 item 2 on the compat tier (this host): a task matches several subjects
and the strictest of their rules wins, in the compat BPF object (exec kill at
sched_process_exec, cgroup socket programs) and in the fanotify decisions alike;
and what this tier does about a hard link or rename out of a directory object.

Every enforcer is scoped to a fresh test cgroup with a dead-man deadline and
marks only files under the test's own tmp_path.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion import abi
from bastion.enforce.fanotify import FanotifyEnforcer, supported
from bastion.enforce.hips_kernel import HipsKernel
from bastion.errors import Location
from bastion.events import HipsEvent
from bastion.policy.compile import (
    FileTarget, NetTarget, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev,
)
from bastion.policy.match import Matcher, TaskFacts
from bastion.policy.model import Action, Mode, Op
from support.cg import run_in, scoped_cgroup

pytestmark = pytest.mark.timeout(120)
PY = os.path.realpath(sys.executable)
TIMEOUT = 30
EPERM_TEXT = "Operation not permitted"
ANY = FileTarget(0, 0, False, "any")


def _target(p: Path, is_dir: bool = False) -> FileTarget:
    st = os.stat(p)
    return FileTarget(kernel_dev(st.st_dev), st.st_ino, is_dir, str(p))


def _exe(p: Path | str) -> tuple[int, int, int]:
    st = os.stat(p)
    return (abi.SubjectKind.EXE, st.st_ino, kernel_dev(st.st_dev))


def _rule(rid: int, op: Op, action: Action, ids: tuple[tuple[int, int, int], ...], *,
          files: tuple[FileTarget, ...] = (), nets: tuple[NetTarget, ...] = ()) -> ResolvedRule:
    return ResolvedRule(rid, f"r{rid}", Location("test", rid), ids, "test", (op,), files, nets, action)


@pytest.fixture
def cg() -> Iterator[tuple[Path, int]]:
    with scoped_cgroup() as c:
        yield c


@pytest.fixture
def enforcer(cg: tuple[Path, int]) -> Iterator[FanotifyEnforcer]:
    why = supported()
    if why is not None:
        pytest.skip(f"fanotify permission events unavailable: {why}")
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=60.0, decision_timeout_s=0.5)
    try:
        enf.open()
        enf.start()
        yield enf
    finally:
        enf.close()


def _events(enf: FanotifyEnforcer, n: int) -> list[HipsEvent]:
    out: list[HipsEvent] = []
    end = time.monotonic() + 3.0
    while len(out) < n and time.monotonic() < end:
        out += enf.poll(0.1)
    return out


def test_fanotify_uid_and_cgroup_deny_not_shadowed_by_exe_allow(
        tmp_path: Path, cg: tuple[Path, int], enforcer: FanotifyEnforcer) -> None:
    """Before: the exe rule (an allow) made mycat's only subject its exe, and the
    uid and cgroup deny rules were never looked at: mycat read both files."""
    mycat = tmp_path / "mycat"
    shutil.copy(shutil.which("cat") or "/bin/cat", mycat)
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.write_text("one\n")
    s2.write_text("two\n")
    rules = (
        _rule(1, Op.OPEN_READ, Action.DENY, ((abi.SubjectKind.UID, os.getuid(), 0),), files=(_target(s1),)),
        _rule(2, Op.OPEN_READ, Action.ALLOW, (_exe(mycat),), files=(_target(s1),)),
        _rule(3, Op.OPEN_READ, Action.DENY, ((abi.SubjectKind.CGROUP, cg[1], 0),), files=(_target(s2),)),
        _rule(4, Op.OPEN_READ, Action.ALLOW, (_exe(mycat),), files=(ANY,)),
    )
    enforcer.apply(compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, rules)),
                   [f for r in rules for f in r.files if f.path != "any"])
    r1 = run_in(cg[0], [str(mycat), str(s1)], timeout=TIMEOUT)
    r2 = run_in(cg[0], [str(mycat), str(s2)], timeout=TIMEOUT)
    assert r1.returncode != 0 and EPERM_TEXT in r1.stderr and "one" not in r1.stdout, r1
    assert r2.returncode != 0 and EPERM_TEXT in r2.stderr and "two" not in r2.stdout, r2
    evs = _events(enforcer, 2)
    got = [(e.rule_id, e.action, e.enforced) for e in evs]
    assert got == [(1, "deny", True), (3, "deny", True)], evs


def test_compat_bpf_uid_and_cgroup_deny_not_shadowed_by_exe_allow(
        tmp_path: Path, cg: tuple[Path, int]) -> None:
    """The same in the compat BPF object: exec (killed at sched_process_exec) and
    connect (cgroup socket program).  Before: mysh's and mypy's exe rules hid them."""
    tool, mysh, mypy = tmp_path / "tool", tmp_path / "mysh", tmp_path / "mypy"
    shutil.copy("/bin/true", tool)
    shutil.copy("/bin/dash", mysh)
    shutil.copy(PY, mypy)
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(8)
        port = lst.getsockname()[1]
        lo = NetTarget(b"\x00" * 10 + b"\xff\xff" + socket.inet_aton("127.0.0.1"), 128, port)
        any_net = NetTarget(b"\x00" * 16, 0, 0)
        rules = (
            _rule(1, Op.EXEC, Action.DENY, ((abi.SubjectKind.UID, os.getuid(), 0),), files=(_target(tool),)),
            _rule(2, Op.EXEC, Action.ALLOW, (_exe(mysh),), files=(ANY,)),
            _rule(3, Op.CONNECT, Action.DENY, ((abi.SubjectKind.CGROUP, cg[1], 0),), nets=(lo,)),
            _rule(4, Op.CONNECT, Action.ALLOW, (_exe(mypy),), nets=(any_net,)),
        )
        plan = compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, rules))
        hk = HipsKernel("compat", cgroup_id=cg[1], deadline_s=60, self_tgid=os.getpid(), cgroup_path=cg[0])
        hk.open()
        try:
            hk.apply(plan)
            hk.poll(0)
            ex = run_in(cg[0], [str(mysh), "-c", f"exec {tool}"], timeout=TIMEOUT)
            code = (f"import socket\ns = socket.socket()\ns.settimeout(5)\n"
                    f"try:\n    s.connect(('127.0.0.1', {port}))\n    print(0)\n"
                    f"except OSError as e:\n    print(e.errno)\n")
            net = run_in(cg[0], [str(mypy), "-c", code], timeout=TIMEOUT)
            time.sleep(0.05)
            evs = hk.poll(0)
        finally:
            hk.close()
    assert ex.returncode == -signal.SIGKILL, ex
    assert net.returncode == 0 and net.stdout.strip() == str(errno.EPERM), net
    got = {(e.op, e.rule_id, e.action, e.enforced) for e in evs}
    assert {("exec", 1, "deny", True), ("connect", 3, "deny", True)} <= got, evs
    # the reference matcher (the fanotify decisions) agrees with the kernel
    m = Matcher(plan)
    facts = TaskFacts(exe=(_exe(mysh)[2], _exe(mysh)[1]), uid=os.getuid(), cgroup_id=cg[1])
    d = m.decide_file(facts, abi.HipsOp.EXEC, (_target(tool).dev, _target(tool).ino))
    assert (d.action, d.rule_id) == (abi.HipsAction.DENY, 1)


def test_compat_link_out_of_a_directory_object_is_not_refused_but_named(
        tmp_path: Path, cg: tuple[Path, int], enforcer: FanotifyEnforcer) -> None:
    """fanotify has no permission event for link or rename: a hard link out of a
    directory object the task may not read gives the data an unmarked name.  This
    tier cannot refuse it; apply() says so (unenforced), and the lsm tier refuses it
    (tests/vm/test_hips_lsm.py)."""
    vault, out = tmp_path / "vault", tmp_path / "out"
    vault.mkdir()
    out.mkdir()
    (vault / "key").write_text("data\n")
    r = ResolvedRule(1, "vault", Location("test", 1), (), "everyone", (Op.OPEN_READ,),
                     (_target(vault, is_dir=True),), (), Action.DENY)
    enforcer.apply(compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, (r,))), list(r.files))
    notes = " | ".join(enforcer.unenforced())
    assert "'vault'" in notes and "hard link" in notes and "rename" in notes, notes
    direct = run_in(cg[0], ["cat", str(vault / "key")], timeout=TIMEOUT)
    assert direct.returncode != 0 and EPERM_TEXT in direct.stderr
    leak = run_in(cg[0], ["/bin/sh", "-c", f"ln {vault}/key {out}/k && cat {out}/k"], timeout=TIMEOUT)
    assert leak.returncode == 0 and leak.stdout == "data\n"   # the caveat, pinned


def test_compat_link_or_rename_out_of_a_directory_object_is_alerted(tmp_path: Path,
                                                                     cg: tuple[Path, int]) -> None:
    """What this tier can do instead of refusing: the sensor sees the link and the
    rename, and the policy manager raises an after-the-fact alert for a new name out
    of a directory object the task may not read (none for a new name inside it).
    Before: the sensor had no link event and nothing compared the two names."""
    from bastion.events import FileEvent
    from bastion.policy.manager import PolicyManager
    from bastion.proctable import ProcessTable
    from bastion.sensors.bpf import BpfSensor
    from bastion.tier import Tier

    vault, out = tmp_path / "vault", tmp_path / "out"
    vault.mkdir()
    out.mkdir()
    for n in ("key", "key2", "key3"):
        (vault / n).write_text("data\n")
    mgr = PolicyManager(Tier.COMPAT)
    mgr.apply_text(f"version: 1\nmode: enforce\nrules:\n  - {{name: vault, operations: [open-read], "
                   f"objects: ['{vault}/'], action: deny}}\n", "v.yaml")
    sensor = BpfSensor(cgroup_id=cg[1])
    sensor.open()
    try:
        r = run_in(cg[0], ["/bin/sh", "-c", f"ln {vault}/key {out}/k && mv {vault}/key2 {out}/k2 && "
                                            f"mv {vault}/key3 {vault}/key4"], timeout=TIMEOUT)
        assert r.returncode == 0, r
        evs = []
        end = time.monotonic() + 2
        while time.monotonic() < end:
            evs += sensor.poll(0.05) or []
    finally:
        sensor.close()
    procs = ProcessTable()
    seen = []
    for e in evs:        # as the agent's loop does before audit_event
        procs.update(e)
        seen.append(procs.enrich(e))
    names = [e for e in seen if isinstance(e, FileEvent) and e.op in ("link", "rename")]
    assert all(e.proc.exe for e in names), names
    assert {(e.op, e.path, e.path2) for e in names} >= {
        ("link", f"{vault}/key", f"{out}/k"), ("rename", f"{vault}/key2", f"{out}/k2"),
        ("rename", f"{vault}/key3", f"{vault}/key4")}, names
    found = {e.path2: mgr.audit_event(e, procs) for e in names}
    assert found[f"{vault}/key4"] is None
    for new in (f"{out}/k", f"{out}/k2"):
        f = found[new]
        assert f is not None, new
        assert (f.rule, f.severity, f.enforced_by) == ("hips:vault", "high", "after-the-fact")
        assert f.evidence["decision"] == "deny" and f.evidence["enforced"] is False
        assert f.evidence["object"] == new
