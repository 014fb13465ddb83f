"""HIPS enforcement, compat tier, on this host's kernel.

The matcher is scoped to a test cgroup (its sock_addr programs are attached to
that cgroup only) and carries a dead-man deadline; the test process stays
outside.  Policies are compiled from real inodes with compile_plan, and the
kernel's decisions are compared with the reference matcher's.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from bastion import abi
from bastion.enforce.hips_kernel import HipsKernel
from bastion.errors import Location
from bastion.events import HipsEvent
from bastion.policy.compile import (
    FileTarget, MapPlan, NetTarget, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev,
)
from bastion.policy.match import Matcher, TaskFacts
from bastion.policy.model import Action, Mode, Op
from support.cg import run_in, scoped_cgroup

PY = os.path.realpath(sys.executable)
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def _fid(p: Path | str) -> tuple[int, int]:
    st = os.stat(p)
    return kernel_dev(st.st_dev), st.st_ino


def _file(p: Path, is_dir: bool = False) -> FileTarget:
    dev, ino = _fid(p)
    return FileTarget(dev, ino, is_dir, str(p))


def _exe_id(p: Path | str) -> tuple[int, int, int]:
    dev, ino = _fid(p)
    return (abi.SubjectKind.EXE, ino, dev)


def _rule(rid: int, op: Op, action: Action, *, files: tuple[FileTarget, ...] = (),
          nets: tuple[NetTarget, ...] = (), ids: tuple[tuple[int, int, int], ...] = ()) -> ResolvedRule:
    return ResolvedRule(rid, f"r{rid}", Location("test", rid), ids, "test", (op,), files, nets, action)


def _lo(port: int, prefix: int = 128) -> NetTarget:
    return NetTarget(V4_MAPPED + socket.inet_aton("127.0.0.1"), prefix, port)


def _plan(mode: Mode, default: Action, *rules: ResolvedRule) -> MapPlan:
    return compile_plan(ResolvedPolicy(mode, default, rules))


class Listener:
    """A TCP listener outside the cgroup that accepts and closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass
class World:
    cg: Path
    cgid: int
    hk: HipsKernel
    d: Path
    denied: Path
    listener: Listener


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("hips")
    denied = d / "denied"
    shutil.copy("/bin/true", denied)
    listener = Listener()
    try:
        with scoped_cgroup() as (cg, cgid):
            hk = HipsKernel("compat", cgroup_id=cgid, deadline_s=110, self_tgid=os.getpid(),
                            cgroup_path=cg)
            hk.open()
            try:
                yield World(cg, cgid, hk, d, denied, listener)
            finally:
                hk.close()
    finally:
        listener.close()


def _drain(hk: HipsKernel) -> list[HipsEvent]:
    time.sleep(0.05)
    return hk.poll(0)


def _py_errno(cg: Path | None, code: str) -> int:
    """Run ``code`` in a fresh python (in cgroup ``cg``); the errno it raised, or 0."""
    prog = "import errno, socket, sys\ntry:\n" + "".join(f"    {ln}\n" for ln in code.splitlines()) + \
        "    print(0)\nexcept OSError as e:\n    print(e.errno)\n"
    argv = [PY, "-c", prog]
    r = run_in(cg, argv, timeout=30) if cg else subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def _connect(port: int) -> str:
    return f"s = socket.socket()\ns.settimeout(5)\ns.connect(('127.0.0.1', {port}))"


# ---- basic enforcement ----------------------------------------------------------------


def test_no_policy_allows_everything(world: World) -> None:
    world.hk.clear()
    assert world.hk.active_gen() == 0
    assert run_in(world.cg, [str(world.denied)], timeout=30).returncode == 0
    assert _py_errno(world.cg, _connect(world.listener.port)) == 0


def test_seeded_task_subjects(world: World) -> None:
    assert world.hk.seeded > 0
    ts = world.hk.task_subject(os.getpid())
    assert ts is not None
    assert (ts.exe_dev, ts.exe_ino) == _fid("/proc/self/exe")


def test_exec_and_connect_enforced(world: World) -> None:
    port = world.listener.port
    plan = _plan(Mode.ENFORCE, Action.ALLOW,
                 _rule(1, Op.EXEC, Action.DENY, files=(_file(world.denied),)),
                 _rule(2, Op.CONNECT, Action.DENY, nets=(_lo(port),)))
    gen = world.hk.apply(plan)
    assert world.hk.active_gen() == gen
    _drain(world.hk)
    r = run_in(world.cg, [str(world.denied)], timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (-signal.SIGKILL, "", "")
    assert subprocess.run([str(world.denied)]).returncode == 0          # outside the cgroup
    assert _py_errno(world.cg, _connect(port)) == errno.EPERM
    assert _py_errno(None, _connect(port)) == 0
    # sendmsg (UDP sendto) is a connect too
    assert _py_errno(world.cg, f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                               f"s.sendto(b'x', ('127.0.0.1', {port}))") == errno.EPERM
    evs = _drain(world.hk)
    ex = [e for e in evs if e.op == "exec"]
    assert len(ex) == 1
    e = ex[0]
    assert (e.action, e.rule_id, e.mechanism, e.enforced, e.gen) == ("deny", 1, "exec-kill", True, gen)
    assert (e.path, (e.dev, e.ino)) == (str(world.denied), _fid(world.denied))
    assert e.proc.cgroup_id == world.cgid
    net = [e for e in evs if e.op == "connect"]
    assert len(net) == 2
    assert all((n.action, n.rule_id, n.mechanism, n.enforced, n.ret) ==
               ("deny", 2, "cgroup-sock", True, -errno.EPERM) for n in net)
    assert {(n.daddr, n.dport) for n in net} == {("127.0.0.1", port)}


def test_kill_action(world: World) -> None:
    port = world.listener.port
    world.hk.apply(_plan(Mode.ENFORCE, Action.ALLOW,
                         _rule(1, Op.CONNECT, Action.KILL, nets=(_lo(port),))))
    _drain(world.hk)
    r = run_in(world.cg, [PY, "-c", "import socket;" + _connect(port).replace("\n", ";") + ";print('survived')"], timeout=30)
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout
    evs = [e for e in _drain(world.hk) if e.op == "connect"]
    assert [(e.action, e.enforced) for e in evs] == [("kill", True)]


def test_bind_enforced(world: World) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    world.hk.apply(_plan(Mode.ENFORCE, Action.ALLOW, _rule(3, Op.BIND, Action.DENY, nets=(_lo(port),))))
    _drain(world.hk)
    assert _py_errno(world.cg, f"s = socket.socket()\ns.bind(('127.0.0.1', {port}))") == errno.EPERM
    assert _py_errno(world.cg, "s = socket.socket()\ns.bind(('127.0.0.1', 0))") == 0
    assert _py_errno(None, f"s = socket.socket()\ns.bind(('127.0.0.1', {port}))") == 0
    evs = [e for e in _drain(world.hk) if e.op == "bind"]
    assert [(e.rule_id, e.dport, e.enforced) for e in evs] == [(3, port, True)]


def test_audit_mode_reports_only(world: World) -> None:
    port = world.listener.port
    world.hk.apply(_plan(Mode.AUDIT, Action.ALLOW,
                         _rule(1, Op.EXEC, Action.DENY, files=(_file(world.denied),)),
                         _rule(2, Op.CONNECT, Action.KILL, nets=(_lo(port),))))
    _drain(world.hk)
    assert run_in(world.cg, [str(world.denied)], timeout=30).returncode == 0
    assert _py_errno(world.cg, _connect(port)) == 0
    evs = _drain(world.hk)
    got = sorted((e.op, e.action, e.rule_id, e.enforced, e.ret) for e in evs)
    assert got == [("connect", "kill", 2, False, 0), ("exec", "deny", 1, False, 0)]


def test_dead_man(world: World, tmp_path: Path) -> None:
    tool = tmp_path / "t"
    shutil.copy("/bin/true", tool)
    plan = _plan(Mode.ENFORCE, Action.ALLOW, _rule(1, Op.EXEC, Action.DENY, files=(_file(tool),)))
    world.hk.clear()   # one matcher at a time in this cgroup
    # the deadline runs from open(): 3 s leave a loaded host room for the first run
    # (1 s did not: the tool ran after it, unkilled); the second run waits it out
    first_by = time.monotonic() + 3.0          # the earliest the deadline can fall
    hk = HipsKernel("compat", cgroup_id=world.cgid, deadline_s=3.0, cgroup_path=world.cg)
    hk.open()
    over_at = time.monotonic() + 3.0 + 0.3     # past the latest it can fall
    try:
        hk.apply(plan)
        assert run_in(world.cg, [str(tool)], timeout=30).returncode == -signal.SIGKILL
        assert time.monotonic() < first_by, "the host took longer than the deadline to run it"
        time.sleep(max(0.0, over_at - time.monotonic()))
        assert run_in(world.cg, [str(tool)], timeout=30).returncode == 0, "deny outlived its deadline"
    finally:
        hk.close()


# ---- the kernel decides like the reference matcher ------------------------------------


def test_kernel_matches_reference_matcher(world: World, tmp_path: Path) -> None:
    d = tmp_path
    t1, t2, t3 = d / "t1", d / "t2", d / "t3"
    sub = d / "sub"
    sub.mkdir()
    t4 = sub / "t4"
    for t in (t1, t2, t3, t4):
        shutil.copy("/bin/true", t)
    mysh, mysh2 = d / "mysh", d / "mysh2"
    shutil.copy("/bin/dash", mysh)
    shutil.copy("/bin/dash", mysh2)
    mypy = d / "mypy"
    shutil.copy(PY, mypy)
    lp = world.listener.port
    with socket.socket() as s2:
        s2.bind(("127.0.0.1", 0))
        free = s2.getsockname()[1]
    rules = (
        _rule(1, Op.EXEC, Action.DENY, files=(_file(t1),)),
        _rule(2, Op.EXEC, Action.ALLOW, files=(_file(t1),), ids=(_exe_id(mysh),)),
        _rule(3, Op.EXEC, Action.AUDIT, files=(_file(sub, is_dir=True),)),
        _rule(4, Op.EXEC, Action.AUDIT, files=(FileTarget(0, 0, False, "any"),), ids=(_exe_id(mysh),)),
        _rule(5, Op.EXEC, Action.KILL, files=(_file(t2),), ids=((abi.SubjectKind.PARENT_EXE, *_fid(mysh2)[::-1]),)),
        _rule(6, Op.CONNECT, Action.DENY, nets=(_lo(lp),)),
        _rule(7, Op.CONNECT, Action.AUDIT, nets=(_lo(0, 96 + 8),), ids=(_exe_id(mypy),)),
        _rule(8, Op.CONNECT, Action.AUDIT, nets=(_lo(free),)),
    )
    plan = _plan(Mode.ENFORCE, Action.ALLOW, *rules)
    gen = world.hk.apply(plan)
    m = Matcher(plan)
    me = _fid("/proc/self/exe")
    dash = _fid("/bin/sh")
    cg = world.cgid
    # (argv run in the cgroup, op, object, the deciding task's facts)
    cases: list[tuple[list[str], abi.HipsOp, object, TaskFacts]] = [
        (["/bin/sh", "-c", f"exec {t1}"], abi.HipsOp.EXEC, t1, TaskFacts(dash, me, 0, cg)),
        ([str(mysh), "-c", f"exec {t1}"], abi.HipsOp.EXEC, t1, TaskFacts(_fid(mysh), me, 0, cg)),
        ([str(mysh), "-c", f"exec {t2}"], abi.HipsOp.EXEC, t2, TaskFacts(_fid(mysh), me, 0, cg)),
        (["/bin/sh", "-c", f"exec {t4}"], abi.HipsOp.EXEC, t4, TaskFacts(dash, me, 0, cg)),
        ([str(mysh2), "-c", f"/bin/sh -c 'exec {t2}'; true"], abi.HipsOp.EXEC, t2,
         TaskFacts(dash, _fid(mysh2), 0, cg)),
        (["/bin/sh", "-c", f"exec {t3}"], abi.HipsOp.EXEC, t3, TaskFacts(dash, me, 0, cg)),
        ([PY, "-c", "import socket;" + _connect(lp).replace("\n", ";")], abi.HipsOp.CONNECT, ("127.0.0.1", lp),
         TaskFacts(me, dash, 0, cg)),
        ([str(mypy), "-c", "import socket;" + _connect(lp).replace("\n", ";")], abi.HipsOp.CONNECT, ("127.0.0.1", lp),
         TaskFacts(_fid(mypy), dash, 0, cg)),
        ([PY, "-c", "import socket;" + _connect(free).replace("\n", ";")], abi.HipsOp.CONNECT, ("127.0.0.1", free),
         TaskFacts(me, dash, 0, cg)),
    ]
    _drain(world.hk)
    mismatches = []
    for argv, op, obj, facts in cases:
        if argv[0] == PY or argv[0] == str(mypy):  # run_in's /bin/sh execs python: parent is pytest
            facts = TaskFacts(facts.exe, me, 0, cg)
        run_in(world.cg, argv, timeout=30)
        evs = [e for e in _drain(world.hk) if e.op == op.name.lower()]
        if isinstance(obj, Path):
            want = m.decide_file(facts, op, _fid(obj), [_fid(p) for p in obj.parents])
            evs = [e for e in evs if (e.dev, e.ino) == _fid(obj)]
        else:
            assert isinstance(obj, tuple)
            want = m.decide_net(facts, op, obj[0], obj[1])
            evs = [e for e in evs if e.dport == obj[1]]
        got = [(abi.HipsAction[e.action.upper()], e.rule_id, e.subject) for e in evs]
        expect = [] if want.action is abi.HipsAction.ALLOW else [(want.action, want.rule_id, want.subject)]
        if got != expect:
            mismatches.append((argv, expect, got))
        assert all(e.gen == gen for e in evs)
    assert not mismatches, mismatches
    assert len({m.subject(f) for *_, f in cases}) > 1  # the table exercises several subjects


# ---- policy swaps under load ----------------------------------------------------------

LOOP = r"""
import os, socket, subprocess, sys, time
allowed_port, tool, stop, progress = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = bad = execs = 0
print("ready", flush=True)
while not os.path.exists(stop):
    try:
        s.sendto(b"x", ("127.0.0.1", allowed_port))
    except OSError as e:
        bad += 1
        print("spurious", e.errno, flush=True)
    n += 1
    if n % 50 == 0:
        if subprocess.run([tool]).returncode != 0:
            bad += 1
            print("spurious exec", flush=True)
        execs += 1
        with open(progress, "w") as f:
            f.write(f"{n} {execs}")
print("done", n, execs, bad, flush=True)
"""

PROBE = r"""
import socket, sys
port = int(sys.argv[1])
for line in sys.stdin:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("127.0.0.1", port))
        print(0, flush=True)
    except OSError as e:
        print(e.errno, flush=True)
    s.close()
"""


def test_swaps_under_load(world: World, tmp_path: Path) -> None:
    ok_tool = tmp_path / "ok"
    shutil.copy("/bin/true", ok_tool)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u1, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u2:
        u1.bind(("127.0.0.1", 0))
        u2.bind(("127.0.0.1", 0))
        allowed, banned = u1.getsockname()[1], u2.getsockname()[1]
        plan_a = _plan(Mode.ENFORCE, Action.ALLOW,
                       _rule(1, Op.CONNECT, Action.DENY, nets=(_lo(banned),)),
                       _rule(2, Op.EXEC, Action.DENY, files=(_file(world.denied),)))
        plan_b = _plan(Mode.ENFORCE, Action.ALLOW,
                       _rule(1, Op.CONNECT, Action.ALLOW, nets=(_lo(allowed),)),
                       _rule(2, Op.EXEC, Action.ALLOW, files=(_file(ok_tool),)),
                       _rule(3, Op.CONNECT, Action.DENY, nets=(_lo(0),)))
        # plan_b: every 127.0.0.1 port denied but `allowed` (exact port beats any port)
        assert Matcher(plan_b).decide_net(TaskFacts((0, 0)), abi.HipsOp.CONNECT, "127.0.0.1", allowed).action \
            is abi.HipsAction.ALLOW
        world.hk.apply(plan_a)
        stop, progress = tmp_path / "stop", tmp_path / "progress"
        shell = f'echo $$ > {world.cg}/cgroup.procs && exec "$@"'
        loop = subprocess.Popen(["/bin/sh", "-c", shell, "sh", PY, "-c", LOOP, str(allowed), str(ok_tool),
                                 str(stop), str(progress)], stdout=subprocess.PIPE, text=True)
        probe = subprocess.Popen(["/bin/sh", "-c", shell, "sh", PY, "-c", PROBE, str(banned)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert probe.stdin is not None and probe.stdout is not None and loop.stdout is not None
        leaked = []
        def loop_progress() -> tuple[int, int]:
            try:
                n, execs = progress.read_text().split()
                return int(n), int(execs)
            except (OSError, ValueError):
                return 0, 0

        try:
            # the swaps must overlap the loop's traffic whatever the host's load: start
            # once the loop runs, and go on swapping until it has done enough under them
            assert loop.stdout.readline().strip() == "ready"
            t0 = time.monotonic()
            i = 0
            while i < 100 or (min(a - b for a, b in zip(loop_progress(), (250, 4))) < 0
                                and time.monotonic() - t0 < 120):
                world.hk.apply(plan_b if i % 2 == 0 else plan_a)
                probe.stdin.write("x\n")
                probe.stdin.flush()
                got = int(probe.stdout.readline())
                if got != errno.EPERM:
                    leaked.append((i, got))
                i += 1
            swap_s = (time.monotonic() - t0) / i * 100
        finally:
            stop.touch()
            out, _ = loop.communicate(timeout=30)
            probe.stdin.close()
            probe.wait(timeout=30)
    assert not leaked, leaked
    done = [ln for ln in out.splitlines() if ln.startswith("done")]
    assert done, out
    _, n, execs, bad = done[0].split()
    assert int(bad) == 0, out
    assert int(n) > 200 and int(execs) > 2, out
    assert swap_s < 20
    # the old generations are gone: only the active one is in the maps
    gen = world.hk.active_gen()
    for name, off in (("hips_rules", 0), ("hips_net", 4), ("hips_gens", 0)):
        gens = {int.from_bytes(k[off:off + 4], "little") for k in world.hk._map(name).keys()}
        assert gens <= {gen}, (name, gens)


def test_clear_and_stats(world: World) -> None:
    world.hk.apply(_plan(Mode.ENFORCE, Action.ALLOW,
                         _rule(1, Op.EXEC, Action.DENY, files=(_file(world.denied),))))
    assert run_in(world.cg, [str(world.denied)], timeout=30).returncode == -signal.SIGKILL
    st = world.hk.stats()
    assert st["decisions.exec.deny"] >= 1 and st["drops"] == 0 and st["programs"] == 16
    world.hk.clear()
    assert world.hk.active_gen() == 0
    assert run_in(world.cg, [str(world.denied)], timeout=30).returncode == 0
    for name in ("hips_gens", "hips_subjects", "hips_rules", "hips_net"):
        assert not list(world.hk._map(name).keys()), name


def test_pin_and_adopt(tmp_path: Path) -> None:
    from bastion.kernel import bpffs
    bpffs.ensure_bpffs()
    pins = bpffs.BPFFS / f"bastion-test-{os.getpid()}"
    tool = tmp_path / "t"
    shutil.copy("/bin/true", tool)
    plan = _plan(Mode.ENFORCE, Action.ALLOW, _rule(1, Op.EXEC, Action.DENY, files=(_file(tool),)))
    with scoped_cgroup() as (cg, cgid):
        hk = HipsKernel("compat", pin_dir=pins, cgroup_id=cgid, deadline_s=60, cgroup_path=cg)
        hk.open()
        adopted: HipsKernel | None = None
        try:
            gen = hk.apply(plan)
            hk.close()                      # the agent goes; enforcement stays
            assert run_in(cg, [str(tool)], timeout=30).returncode == -signal.SIGKILL
            adopted = HipsKernel.adopt(pins)
            assert adopted.tier == "compat" and adopted.active_gen() == gen
            assert any(e.op == "exec" for e in _drain(adopted))
            assert adopted.apply(plan) == gen + 1
            assert run_in(cg, [str(tool)], timeout=30).returncode == -signal.SIGKILL
        finally:
            if adopted is not None:
                adopted.close(unpin=True)
            else:
                hk.close(unpin=True)
            bpffs.remove_pins(pins)
        assert run_in(cg, [str(tool)], timeout=30).returncode == 0  # detached
