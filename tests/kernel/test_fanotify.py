"""The compat-tier fanotify enforcer on this host's kernel.

Kernel-safety rules every test here keeps: it marks only files and
directories under its own ``tmp_path`` (inode marks, never a mount or a
filesystem); decisions are scoped to a fresh test cgroup; the enforcer has a
dead-man deadline (<= 60 s) and a watchdog; it is closed in ``finally``.  The
test process itself is exempt (``self_tgid``), so pytest can never block on
its own marks.  Every subprocess has a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion import abi
from bastion.enforce.fanotify import FanotifyEnforcer, supported
from bastion.errors import ConfigError, Location
from bastion.events import HipsEvent
from bastion.policy.compile import FileTarget, MapPlan, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev
from bastion.policy.model import Action, Mode, Op
from support.cg import run_in, scoped_cgroup
from support.fuse import FuseFile

DEADLINE_S = 60.0
TIMEOUT = 30
pytestmark = pytest.mark.timeout(120)

EPERM_TEXT = "Operation not permitted"


@pytest.fixture(autouse=True)
def _need_fanotify() -> None:
    why = supported()
    if why is not None:
        pytest.skip(f"fanotify permission events unavailable: {why}")


def target(path: Path, *, is_dir: bool = False) -> FileTarget:
    st = os.stat(path)
    return FileTarget(kernel_dev(st.st_dev), st.st_ino, is_dir, str(path))


def rule(rule_id: int, ops: tuple[Op, ...], files: tuple[FileTarget, ...], action: Action,
         identities: tuple[tuple[int, int, int], ...] = (), name: str = "") -> ResolvedRule:
    return ResolvedRule(rule_id=rule_id, name=name or f"r{rule_id}", location=Location("test", rule_id),
                        identities=identities, subject="test", ops=ops, files=files, nets=(),
                        action=action)


def plan_of(*rules: ResolvedRule, mode: Mode = Mode.ENFORCE,
            default: Action = Action.ALLOW) -> MapPlan:
    return compile_plan(ResolvedPolicy(mode, default, tuple(rules)))


def targets_of(*rules: ResolvedRule) -> list[FileTarget]:
    return [f for r in rules for f in r.files]


@pytest.fixture
def cg() -> Iterator[tuple[Path, int]]:
    with scoped_cgroup() as c:
        yield c


@pytest.fixture
def enforcer(cg: tuple[Path, int]) -> Iterator[FanotifyEnforcer]:
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, decision_timeout_s=0.5)
    try:
        enf.open()
        enf.start()
        yield enf
    finally:
        enf.close()


def sh_in(cg: Path, script: str) -> subprocess.CompletedProcess[str]:
    return run_in(cg, ["/bin/sh", "-c", script], timeout=TIMEOUT)


def events_until(enf: FanotifyEnforcer, n: int, timeout_s: float = 3.0) -> list[HipsEvent]:
    out: list[HipsEvent] = []
    end = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < end:
        out += enf.poll(0.1)
    return out


def fanotify_marks(enf: FanotifyEnforcer) -> list[str]:
    """The marks of the group, as /proc/self/fdinfo shows them (procfs: safe).

    Inode marks read ``fanotify ino:...``, mount marks ``fanotify mnt_id:...``
    and filesystem marks ``fanotify sdev:...``: only the first kind may appear.
    """
    fd = enf.listener.fd   # white-box check of what the kernel holds
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    marks = [ln for ln in text.splitlines()
             if ln.startswith("fanotify ") and not ln.startswith("fanotify flags:")]
    assert all(m.startswith("fanotify ino:") for m in marks), marks
    return marks


# ---- tests ------------------------------------------------------------------------------------


def test_supported_here() -> None:
    assert supported() is None


def test_read_denied_in_the_cgroup_only(tmp_path: Path, cg: tuple[Path, int],
                                        enforcer: FanotifyEnforcer) -> None:
    secret = tmp_path / "secret"
    secret.write_text("top secret\n")
    r = rule(1, (Op.OPEN_READ,), (target(secret),), Action.DENY, name="no-secret")
    enforcer.apply(plan_of(r), targets_of(r))
    marks = fanotify_marks(enforcer)
    assert len(marks) == 1 and marks[0].startswith("fanotify ino:"), marks

    inside = run_in(cg[0], ["cat", str(secret)], timeout=TIMEOUT)
    assert inside.returncode != 0
    assert EPERM_TEXT in inside.stderr
    outside = subprocess.run(["cat", str(secret)], capture_output=True, text=True, timeout=TIMEOUT)
    assert outside.returncode == 0 and outside.stdout == "top secret\n"
    assert secret.read_text() == "top secret\n"          # this process is exempt

    evs = events_until(enforcer, 1)
    assert len(evs) == 1, evs
    ev = evs[0]
    assert (ev.mechanism, ev.op, ev.action, ev.enforced) == ("fanotify", "open-read", "deny", True)
    assert ev.path == str(secret) and ev.rule_id == 1 and ev.ret == -1
    assert (ev.dev, ev.ino) == (target(secret).dev, target(secret).ino)
    assert ev.proc.cgroup_id == cg[1] and ev.proc.comm == "cat" and ev.proc.exe.endswith("cat")
    s = enforcer.stats()
    assert s["denies"] == 1 and s["errors"] == 0 and s["watchdog_allows"] == 0
    assert s["out_of_scope"] >= 1


def test_write_denied_read_allowed(tmp_path: Path, cg: tuple[Path, int],
                                   enforcer: FanotifyEnforcer) -> None:
    f = tmp_path / "config"
    f.write_text("v1\n")
    r = rule(1, (Op.OPEN_WRITE,), (target(f),), Action.DENY)
    enforcer.apply(plan_of(r), targets_of(r))

    rd = run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT)
    assert rd.returncode == 0 and rd.stdout == "v1\n"
    wr = sh_in(cg[0], f"echo v2 >> {f}")
    assert wr.returncode != 0 and "not permitted" in wr.stderr
    rdwr = run_in(cg[0], [sys.executable, "-c", f"open({str(f)!r}, 'r+')"], timeout=TIMEOUT)
    assert rdwr.returncode != 0 and "PermissionError" in rdwr.stderr
    assert f.read_text() == "v1\n"
    evs = events_until(enforcer, 2)
    assert [e.op for e in evs] == ["open-write", "open-write"]
    assert enforcer.stats()["denies"] == 2


def test_directory_object_protects_a_subdirectory(tmp_path: Path, cg: tuple[Path, int],
                                                  enforcer: FanotifyEnforcer) -> None:
    d = tmp_path / "vault"
    deep = d / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "key").write_text("k\n")
    (d / "top").write_text("t\n")
    other = tmp_path / "public"
    other.write_text("p\n")
    r = rule(1, (Op.OPEN_READ,), (target(d, is_dir=True),), Action.DENY, name="vault")
    enforcer.apply(plan_of(r), targets_of(r))
    marks = fanotify_marks(enforcer)
    assert len(marks) == 3 and all(m.startswith("fanotify ino:") for m in marks), marks

    for f in (deep / "key", d / "top"):
        p = run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT)
        assert p.returncode != 0 and EPERM_TEXT in p.stderr, (f, p)
    ok = run_in(cg[0], ["cat", str(other)], timeout=TIMEOUT)
    assert ok.returncode == 0 and ok.stdout == "p\n"
    ls = run_in(cg[0], ["ls", str(deep)], timeout=TIMEOUT)     # directories themselves: not objects
    assert ls.returncode == 0 and ls.stdout.strip() == "key"
    evs = events_until(enforcer, 2)
    assert sorted(e.path for e in evs) == sorted([str(deep / "key"), str(d / "top")])
    assert {e.rule_id for e in evs} == {1}


def test_directory_object_too_large_is_refused(tmp_path: Path, cg: tuple[Path, int]) -> None:
    d = tmp_path / "big"
    for i in range(12):
        (d / f"s{i}").mkdir(parents=True)
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, max_dirs=10)
    try:
        enf.open()
        enf.start()
        r = rule(1, (Op.OPEN_READ,), (target(d, is_dir=True),), Action.DENY)
        with pytest.raises(ConfigError, match="more than 10 directories"):
            enf.apply(plan_of(r), targets_of(r))
        assert fanotify_marks(enf) == []
    finally:
        enf.close()


def test_an_allow_only_directory_object_is_not_marked(tmp_path: Path, cg: tuple[Path, int]) -> None:
    """A learned profile allows its program to write under /tmp/: only allow rules
    name that tree, so every decision in it is ALLOW and marking it costs without
    effect.  Before, the tree's every directory was marked, and a host whose /tmp held
    more than max_dirs directories refused the whole profile (a CI failure)."""
    d = tmp_path / "big"
    for i in range(12):
        (d / f"s{i}").mkdir(parents=True)
    secret = d / "s3" / "secret"
    secret.write_text("s\n")
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, max_dirs=10)
    try:
        enf.open()
        enf.start()
        allow = rule(1, (Op.OPEN_WRITE, Op.OPEN_READ), (target(d, is_dir=True),), Action.ALLOW)
        deny = rule(2, (Op.OPEN_READ,), (target(secret),), Action.DENY)
        enf.apply(plan_of(allow, deny), targets_of(allow, deny))
        assert set(enf.marked().values()) == {str(secret)}
        p = run_in(cg[0], ["cat", str(secret)], timeout=TIMEOUT)
        assert p.returncode != 0 and EPERM_TEXT in p.stderr, p
        w = run_in(cg[0], ["sh", "-c", f"echo x > {d}/s5/new && cat {d}/s5/new"], timeout=TIMEOUT)
        assert w.returncode == 0 and w.stdout == "x\n", w
        # with a default deny the allow rules do decide: the tree is marked (and too big)
        with pytest.raises(ConfigError, match="more than 10 directories"):
            enf.apply(plan_of(allow, deny, default=Action.DENY), targets_of(allow, deny))
        assert set(enf.marked().values()) == {str(secret)}   # the running plan is unchanged
    finally:
        enf.close()


def test_audit_mode_allows_and_reports(tmp_path: Path, cg: tuple[Path, int],
                                       enforcer: FanotifyEnforcer) -> None:
    f = tmp_path / "watched"
    f.write_text("w\n")
    g = tmp_path / "audited"
    g.write_text("a\n")
    r1 = rule(1, (Op.OPEN_READ,), (target(f),), Action.DENY)
    r2 = rule(2, (Op.OPEN_READ,), (target(g),), Action.AUDIT)
    enforcer.apply(plan_of(r1, r2, mode=Mode.AUDIT), targets_of(r1, r2))
    p = run_in(cg[0], ["cat", str(f), str(g)], timeout=TIMEOUT)
    assert p.returncode == 0 and p.stdout == "w\na\n"
    evs = sorted(events_until(enforcer, 2), key=lambda e: e.rule_id)
    assert [(e.action, e.enforced, e.ret, e.path) for e in evs] == [
        ("deny", False, 0, str(f)), ("audit", False, 0, str(g))]
    s = enforcer.stats()
    assert s["denies"] == 0 and s["audit_only"] == 1 and s["audits"] == 1


def test_exec_denied_and_kill(tmp_path: Path, cg: tuple[Path, int],
                              enforcer: FanotifyEnforcer) -> None:
    tool = tmp_path / "mytrue"
    shutil.copy2("/bin/true", tool)
    victim = tmp_path / "tripwire"
    victim.write_text("x\n")
    r1 = rule(1, (Op.EXEC,), (target(tool),), Action.DENY)
    r2 = rule(2, (Op.OPEN_READ,), (target(victim),), Action.KILL)
    enforcer.apply(plan_of(r1, r2), targets_of(r1, r2))

    ex = run_in(cg[0], [str(tool)], timeout=TIMEOUT)
    assert ex.returncode != 0 and "not permitted" in ex.stderr.lower()
    rd = sh_in(cg[0], f"cat {tool} > /dev/null")                   # reading it is fine
    assert rd.returncode == 0
    k = run_in(cg[0], ["sh", "-c", f"cat {victim}; echo survived"], timeout=TIMEOUT)
    assert "survived" in k.stdout                                   # the shell lives on
    k2 = run_in(cg[0], ["cat", str(victim)], timeout=TIMEOUT)
    assert k2.returncode == -9, (k2.returncode, k2.stderr)
    evs = events_until(enforcer, 3)
    assert [(e.op, e.action, e.enforced) for e in evs] == [
        ("exec", "deny", True), ("open-read", "kill", True), ("open-read", "kill", True)]
    assert evs[1].target_pid == evs[1].proc.pid
    assert enforcer.stats()["kills"] == 2 and enforcer.stats()["kill_failures"] == 0


def test_subject_facts_exe_and_cgroup(tmp_path: Path, cg: tuple[Path, int],
                                      enforcer: FanotifyEnforcer) -> None:
    """exe and cgroup subjects come from /proc: only cat is refused, head is not."""
    f = tmp_path / "f"
    f.write_text("hello\n")
    cat = target(Path(shutil.which("cat") or "/bin/cat"))
    g = tmp_path / "g"
    g.write_text("g\n")
    r1 = rule(1, (Op.OPEN_READ,), (target(f),), Action.DENY,
              identities=((abi.SubjectKind.EXE, cat.ino, cat.dev),))
    r2 = rule(2, (Op.OPEN_READ,), (target(g),), Action.DENY,
              identities=((abi.SubjectKind.CGROUP, cg[1], 0),))
    enforcer.apply(plan_of(r1, r2), targets_of(r1, r2))
    assert run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT).returncode != 0
    h = run_in(cg[0], ["head", str(f)], timeout=TIMEOUT)
    assert h.returncode == 0 and h.stdout == "hello\n"
    assert run_in(cg[0], ["head", str(g)], timeout=TIMEOUT).returncode != 0
    evs = events_until(enforcer, 2)
    assert [(e.rule_id, e.proc.comm) for e in evs] == [(1, "cat"), (2, "head")]
    assert all(e.subject != 0 for e in evs)


def _wait_stat(enf: FanotifyEnforcer, key: str, n: int, timeout_s: float = 5.0) -> dict[str, int | float]:
    end = time.monotonic() + timeout_s
    while enf.stats()[key] < n and time.monotonic() < end:
        time.sleep(0.05)
    return enf.stats()


def test_a_stalled_decision_fails_closed_on_a_denied_inode(tmp_path: Path,
                                                           cg: tuple[Path, int]) -> None:
    """Attack: stall the listener (a slow /proc, a FUSE exe, a flood) so the 0.2 s
    watchdog answers.  An inode a deny rule covers is refused (fail closed); an
    inode only audited is allowed and counted as a fail-open."""
    f = tmp_path / "slow"
    f.write_text("s\n")
    g = tmp_path / "audited"
    g.write_text("a\n")
    release = threading.Event()
    calls: list[str] = []

    def stall(tid: int, path: str) -> None:
        calls.append(path)
        release.wait(3.0)          # far beyond decision_timeout_s

    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, decision_timeout_s=0.2,
                           decision_hook=stall)
    try:
        enf.open()
        enf.start()
        r = rule(1, (Op.OPEN_READ,), (target(f),), Action.DENY)
        a = rule(2, (Op.OPEN_READ,), (target(g),), Action.AUDIT)
        enf.apply(plan_of(r, a), targets_of(r, a))
        t0 = time.monotonic()
        # two opens: the first stalls the listener, the second queues behind it
        p = run_in(cg[0], ["sh", "-c", f"cat {f}; cat {f}"], timeout=TIMEOUT)
        took = time.monotonic() - t0
        assert p.returncode != 0 and p.stdout == "", p
        assert p.stderr.count(EPERM_TEXT) == 2, p.stderr
        assert took < 2.0, took
        assert calls
        release.set()
        s = _wait_stat(enf, "late_decisions", 1)
        assert s["watchdog_denies"] >= 2 and s["watchdog_allows"] == 0, s
        assert s["fail_opens"] == 0 and s["late_decisions"] >= 1, s
        late = [e for e in events_until(enf, 1) if e.path == str(f)]
        assert late and late[0].enforced     # the late deny was enforced by the fallback

        release.clear()
        p = run_in(cg[0], ["cat", str(g)], timeout=TIMEOUT)   # audit only: stall allows
        assert p.returncode == 0 and p.stdout == "a\n", p.stderr
        release.set()
        s = _wait_stat(enf, "watchdog_allows", 1)
        assert s["watchdog_allows"] >= 1 and s["fail_opens"] >= 1, s
    finally:
        release.set()
        enf.close()


@pytest.fixture
def patient(cg: tuple[Path, int]) -> Iterator[FanotifyEnforcer]:
    """An enforcer whose watchdog waits 3 s: a decision on a loaded host is in time."""
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, decision_timeout_s=3.0)
    try:
        enf.open()
        enf.start()
        yield enf
    finally:
        enf.close()


def test_an_exe_on_a_stalled_fuse_filesystem_does_not_stall_decisions(
        tmp_path: Path, cg: tuple[Path, int], patient: FanotifyEnforcer) -> None:
    """Attack: run a shell from your own FUSE filesystem, make its daemon stop answering
    GETATTR, then open a denied file.  stat(/proc/<tid>/exe) in the listener waited on
    the daemon for ever: the watchdog allowed the open and every decision after it."""
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    true = target(Path("/bin/true"))
    r1 = rule(1, (Op.OPEN_READ,), (target(secret),), Action.ALLOW,
              identities=((abi.SubjectKind.EXE, true.ino, true.dev),))   # exe facts are needed
    r2 = rule(2, (Op.OPEN_READ,), (target(secret),), Action.DENY)
    patient.apply(plan_of(r1, r2), targets_of(r1, r2))
    script = f"read x; if true 3<{secret}; then echo opened; else echo refused; fi"
    with FuseFile(mnt, "sh", Path("/bin/dash")) as fuse:
        proc = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {cg[0]}/cgroup.procs && exec "$@"',
                                 "sh", str(fuse.path), "-c", script], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 5
            while time.monotonic() < end:
                try:
                    if os.readlink(f"/proc/{proc.pid}/exe") == str(fuse.path):
                        break
                except OSError:
                    pass
                time.sleep(0.02)
            fuse.stall_getattr.set()
            out, err = proc.communicate("go\n", timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert out.strip() == "refused", (out, err)
    s = patient.stats()
    assert (s["watchdog_allows"], s["watchdog_denies"], s["late_decisions"]) == (0, 0, 0), s
    evs = events_until(patient, 1)
    assert [(e.rule_id, e.enforced) for e in evs] == [(2, True)]
    assert evs[0].proc.pid == proc.pid        # the FUSE shell itself opened it


def test_locating_a_path_never_waits_on_a_stalled_fuse_file(tmp_path: Path) -> None:
    """A path a rename race points into the attacker's FUSE filesystem is unconfirmed
    at once (dentry cache only), instead of waiting on its daemon."""
    from bastion.kernel.opener import locate   # here: the other tests run on older code

    mnt = tmp_path / "fuse"
    mnt.mkdir()
    with FuseFile(mnt, "f", Path("/bin/true")) as fuse:
        key = target(fuse.path)
        fuse.stall_getattr.set()
        t0 = time.monotonic()
        confirmed, parents = locate(str(fuse.path), (key.dev, key.ino))
        took = time.monotonic() - t0
        assert not fuse.held, "a request reached the stalled daemon"
    assert (confirmed, parents) == (False, [])
    assert took < 0.5, took


def test_a_failing_decision_fails_closed_on_a_denied_inode(tmp_path: Path,
                                                           cg: tuple[Path, int]) -> None:
    """An exception in the decision (a vanished /proc entry, a bug) refuses a denied inode."""
    f = tmp_path / "boom"
    f.write_text("b\n")

    def boom(tid: int, path: str) -> None:
        raise RuntimeError("decision failed")

    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, decision_timeout_s=0.5,
                           decision_hook=boom)
    try:
        enf.open()
        enf.start()
        r = rule(1, (Op.OPEN_READ,), (target(f),), Action.DENY)
        enf.apply(plan_of(r), targets_of(r))
        p = run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT)
        assert p.returncode != 0 and EPERM_TEXT in p.stderr, p
        s = _wait_stat(enf, "error_denies", 1)      # counted just after the answer
        assert s["errors"] == 1 and s["error_denies"] == 1 and s["fail_opens"] == 0, s
    finally:
        enf.close()


def test_directory_object_rename_race_is_still_denied(tmp_path: Path,
                                                      cg: tuple[Path, int]) -> None:
    """Attack: open vault/key, and rename it out of the vault while the open waits for
    its decision; the path then says out/key (not in the vault): was allowed."""
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "gate").write_text("g\n")
    (vault / "key").write_text("k\n")
    out = tmp_path / "out"
    out.mkdir()
    go = threading.Event()
    gated = threading.Event()

    def hold_gate(tid: int, path: str) -> None:
        if path.endswith("/gate"):
            gated.set()
            go.wait(3.0)            # the listener is busy: the next open waits in the queue

    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, decision_timeout_s=6.0,
                           decision_hook=hold_gate)
    try:
        enf.open()
        enf.start()
        r = rule(1, (Op.OPEN_READ,), (target(vault, is_dir=True),), Action.DENY, name="vault")
        enf.apply(plan_of(r), targets_of(r))
        script = (f'echo $$ > {cg[0]}/cgroup.procs && (cat {vault}/gate 2>/dev/null &) && '
                  f'sleep 0.3 && cat {vault}/key')
        proc = subprocess.Popen(["/bin/sh", "-c", script], text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            assert gated.wait(5.0)
            time.sleep(0.8)                          # cat key is blocked in open now
            os.rename(vault / "key", out / "key")    # the race, made certain
            go.set()
            so, se = proc.communicate(timeout=TIMEOUT)
        finally:
            go.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode != 0 and so == "" and EPERM_TEXT in se, (so, se)
        assert enf.stats()["unplaced"] >= 1
    finally:
        go.set()
        enf.close()


def test_directory_object_through_a_private_bind_mount_is_still_denied(
        tmp_path: Path, cg: tuple[Path, int], enforcer: FanotifyEnforcer) -> None:
    """Attack: bind-mount the vault elsewhere in a private mount namespace and open it
    there; the listener's path names a directory of its own namespace: was allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    vault = tmp_path / "vault"
    (vault / "sub").mkdir(parents=True)
    (vault / "sub" / "key").write_text("k\n")
    view = tmp_path / "view"
    view.mkdir()
    r = rule(1, (Op.OPEN_READ,), (target(vault, is_dir=True),), Action.DENY, name="vault")
    enforcer.apply(plan_of(r), targets_of(r))
    p = run_in(cg[0], ["unshare", "-m", "--propagation", "private", "sh", "-c",
                       f"mount --bind {vault} {view} && cat {view}/sub/key"], timeout=TIMEOUT)
    assert p.returncode != 0 and EPERM_TEXT in p.stderr and p.stdout == "", p
    assert enforcer.stats()["unplaced"] >= 1
    evs = [e for e in events_until(enforcer, 1) if e.enforced]
    assert evs and evs[0].rule_id == 1
    assert not any(view.iterdir())           # the bind mount never reached this namespace


def test_plan_swap_under_load(tmp_path: Path, cg: tuple[Path, int],
                              enforcer: FanotifyEnforcer) -> None:
    allowed = tmp_path / "allowed"
    allowed.write_text("ok\n")
    b = tmp_path / "b"
    b.write_text("b\n")
    c = tmp_path / "c"
    c.write_text("c\n")
    ra = rule(1, (Op.OPEN_WRITE,), (target(allowed),), Action.DENY)   # reads: everyone
    rb = rule(2, (Op.OPEN_READ,), (target(b),), Action.DENY)
    rc = rule(2, (Op.OPEN_READ,), (target(c),), Action.DENY)
    plans = [(plan_of(ra, rb), targets_of(ra, rb)), (plan_of(ra, rc), targets_of(ra, rc))]
    enforcer.apply(*plans[0])
    loop = (f"import os, sys, time\nfail = n = 0\nend = time.monotonic() + 60\n"
            f"print('ready', flush=True)\n"
            f"while not os.path.exists({str(tmp_path / 'stop')!r}) and time.monotonic() < end:\n"
            f"    try:\n        os.close(os.open({str(allowed)!r}, os.O_RDONLY))\n"
            f"    except OSError as e:\n        fail += 1\n        print(e, file=sys.stderr)\n"
            f"    n += 1\nprint(n, fail)\n")
    shell = f'echo $$ > {cg[0]}/cgroup.procs && exec "$@"'
    proc = subprocess.Popen(["/bin/sh", "-c", shell, "sh", sys.executable, "-c", loop],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(0.05)
        for i in range(100):
            enforcer.apply(*plans[(i + 1) % 2])
            time.sleep(0.002)
        (tmp_path / "stop").touch()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    n, fail = map(int, out.split())
    assert fail == 0, err
    assert n >= 200, n
    s = enforcer.stats()
    assert s["swaps"] == 100 and s["denies"] == 0 and s["errors"] == 0 and s["gen"] == 101
    assert s["perm_events"] >= n
    # the final plan (index 0 after 100 swaps: plans[(99 + 1) % 2]) is in force
    assert run_in(cg[0], ["cat", str(b)], timeout=TIMEOUT).returncode != 0
    assert run_in(cg[0], ["cat", str(c)], timeout=TIMEOUT).returncode == 0
    assert len(fanotify_marks(enforcer)) == 2


def test_deadline_removes_marks(tmp_path: Path, cg: tuple[Path, int]) -> None:
    f = tmp_path / "f"
    f.write_text("f\n")
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=1.0)
    try:
        enf.open()
        enf.start()
        r = rule(1, (Op.OPEN_READ,), (target(f),), Action.DENY)
        enf.apply(plan_of(r), targets_of(r))
        assert run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT).returncode != 0
        time.sleep(1.3)
        assert enf.stats()["expired"] == 1
        assert fanotify_marks(enf) == []
        assert run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT).returncode == 0
    finally:
        enf.close()


def test_close_leaves_no_marks(tmp_path: Path, cg: tuple[Path, int]) -> None:
    f = tmp_path / "f"
    f.write_text("f\n")
    d = tmp_path / "d"
    d.mkdir()
    (d / "g").write_text("g\n")
    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S)
    try:
        enf.open()
        enf.start()
        r = rule(1, (Op.OPEN_READ, Op.OPEN_WRITE, Op.EXEC),
                 (target(f), target(d, is_dir=True)), Action.DENY)
        enf.apply(plan_of(r), targets_of(r))
        assert run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT).returncode != 0
    finally:
        enf.close()
    assert enf.stats()["marks"] == 0
    # the listener is gone: a leftover mark would block (or refuse) these opens
    for p in (f, d / "g"):
        inside = run_in(cg[0], ["timeout", "5", "cat", str(p)], timeout=10)
        assert inside.returncode == 0, (p, inside)
        outside = subprocess.run(["timeout", "5", "cat", str(p)], capture_output=True, timeout=10)
        assert outside.returncode == 0


def test_apply_reports_what_it_cannot_enforce(tmp_path: Path, cg: tuple[Path, int],
                                              enforcer: FanotifyEnforcer) -> None:
    f = tmp_path / "f"
    f.write_text("f\n")
    any_obj = FileTarget(0, 0, False, "any")
    r1 = rule(1, (Op.OPEN_READ,), (target(f),), Action.DENY)
    r2 = rule(2, (Op.UNLINK, Op.RENAME), (target(f),), Action.DENY, name="no-delete")
    r3 = rule(3, (Op.OPEN_WRITE,), (any_obj,), Action.DENY, name="no-writes")
    enforcer.apply(plan_of(r1, r2, r3), targets_of(r1, r2))
    notes = " | ".join(enforcer.unenforced())
    assert "'no-delete'" in notes and "unlink" in notes and "rename" in notes
    assert "'no-writes'" in notes and "any" in notes
    assert len(fanotify_marks(enforcer)) == 1
    # unlink really is not enforced in this tier
    assert sh_in(cg[0], f"rm {f}").returncode == 0


def test_what_this_tier_cannot_refuse(tmp_path: Path, cg: tuple[Path, int],
                                      enforcer: FanotifyEnforcer) -> None:
    """Pins the documented caveats: only opens raise permission events."""
    d = tmp_path / "vault"
    d.mkdir()
    f = d / "f"
    f.write_text("data\n")
    r = rule(1, (Op.OPEN_WRITE,), (target(d, is_dir=True),), Action.DENY)
    enforcer.apply(plan_of(r), targets_of(r))
    # an O_CREAT open is refused, but only after the file was created (empty)
    p = sh_in(cg[0], f"echo x > {d}/new")
    assert p.returncode != 0 and EPERM_TEXT in p.stderr
    assert (d / "new").exists() and (d / "new").stat().st_size == 0
    # truncate by fd needs a write open (refused); truncate(2) by path is not an open
    assert sh_in(cg[0], f"truncate -s 0 {f}").returncode != 0
    t = run_in(cg[0], [sys.executable, "-c", f"import os; os.truncate({str(f)!r}, 1)"],
               timeout=TIMEOUT)
    assert t.returncode == 0 and f.stat().st_size == 1
    # rename, chmod, unlink: no permission event at all
    assert sh_in(cg[0], f"mv {f} {d}/g && chmod 600 {d}/g && rm {d}/g").returncode == 0
    assert sorted(e.op for e in events_until(enforcer, 2)) == ["open-write", "open-write"]


def test_open_flags_of_a_non_leader_thread(tmp_path: Path, cg: tuple[Path, int],
                                           enforcer: FanotifyEnforcer) -> None:
    """Read vs write comes from the blocked *thread's* syscall (FAN_REPORT_TID)."""
    f = tmp_path / "f"
    f.write_text("v1\n")
    r = rule(1, (Op.OPEN_WRITE,), (target(f),), Action.DENY)
    enforcer.apply(plan_of(r), targets_of(r))
    code = (
        "import threading, time\n"
        "res = {}\n"
        "def go(mode):\n"
        "    try:\n"
        f"        open({str(f)!r}, mode).close(); res[mode] = 'ok'\n"
        "    except OSError as e:\n"
        "        res[mode] = type(e).__name__\n"
        "for mode in ('r', 'a'):\n"
        "    t = threading.Thread(target=go, args=(mode,)); t.start(); t.join()\n"
        "print(res['r'], res['a'])\n")
    p = run_in(cg[0], [sys.executable, "-c", code], timeout=TIMEOUT)
    assert p.returncode == 0 and p.stdout.split() == ["ok", "PermissionError"], p
    s = enforcer.stats()
    assert s["flags_unknown"] == 0 and s["denies"] == 1
    ev = events_until(enforcer, 1)[0]
    assert ev.proc.tid != ev.proc.pid


def test_a_stall_never_fails_a_read_of_a_write_protected_inode(tmp_path: Path,
                                                               cg: tuple[Path, int]) -> None:
    """The tamper guard denies only writes of the install tree (and the stdlib): a stalled
    decision (a loaded host) must not refuse the *reads* every program does, while a
    stalled write-open still fails closed."""
    f = tmp_path / "module.py"
    f.write_text("x = 1\n")
    release = threading.Event()

    def stall(tid: int, path: str) -> None:
        release.wait(3.0)

    enf = FanotifyEnforcer(scope_cgroup_id=cg[1], deadline_s=DEADLINE_S, decision_timeout_s=0.2,
                           decision_hook=stall)
    try:
        enf.open()
        enf.start()
        w = rule(1, (Op.OPEN_WRITE,), (target(f),), Action.DENY)
        enf.apply(plan_of(w), targets_of(w))
        p = run_in(cg[0], ["cat", str(f)], timeout=TIMEOUT)
        assert p.returncode == 0 and p.stdout == "x = 1\n", p.stderr
        p = run_in(cg[0], ["sh", "-c", f"echo evil >> {f}"], timeout=TIMEOUT)
        assert p.returncode != 0 and EPERM_TEXT in p.stderr, p
        assert f.read_text() == "x = 1\n"
        release.set()
        s = _wait_stat(enf, "watchdog_denies", 1)
        assert s["watchdog_denies"] >= 1, s
    finally:
        release.set()
        enf.close()


def test_a_subdirectory_removed_during_apply_does_not_refuse_the_policy(
        tmp_path: Path, cg: tuple[Path, int], enforcer: FanotifyEnforcer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory object's subdirectory removed between the walk and its mark (a
    build's or a job runner's temp dir, seen on a learned profile of /tmp): the
    policy is applied, the rest of the tree protected; before, `policy apply` was
    refused whole ("fanotify: cannot mark: No such file or directory")."""
    d = tmp_path / "vault"
    (d / "gone").mkdir(parents=True)
    (d / "kept").mkdir()
    (d / "kept" / "key").write_text("k\n")
    r = rule(1, (Op.OPEN_READ,), (target(d, is_dir=True),), Action.DENY, name="vault")
    real_mark = enforcer.listener.mark

    def racing_mark(path: str, key: tuple[int, int], mask: int) -> None:
        if path == str(d / "gone"):
            (d / "gone").rmdir()         # the race, made certain
        real_mark(path, key, mask)

    monkeypatch.setattr(enforcer.listener, "mark", racing_mark)
    enforcer.apply(plan_of(r), targets_of(r))
    assert str(d / "gone") not in enforcer.marked().values()
    p = run_in(cg[0], ["cat", str(d / "kept" / "key")], timeout=TIMEOUT)
    assert p.returncode != 0 and EPERM_TEXT in p.stderr, p


def test_reads_of_a_write_protected_file_never_fail_on_a_busy_host(tmp_path: Path, cg: tuple[Path, int],
                                                                   enforcer: FanotifyEnforcer) -> None:
    """The listener can read the opener's ``/proc/TID/syscall`` before the opener has gone
    to sleep in fanotify's wait: the kernel then answers ``running`` (no arguments), the
    flags look unknown and the read was refused as a write (seen in CI: a protected
    install tree's ``main.py`` refused to an administrator's query).  Reads in a tight
    loop from two processes on two cores: every one succeeds, no flags are unknown."""
    f = tmp_path / "f"
    f.write_text("v1\n")
    r = rule(1, (Op.OPEN_WRITE,), (target(f),), Action.DENY)
    enforcer.apply(plan_of(r), targets_of(r))
    code = (f"fails = 0\nfor _ in range(1500):\n    try:\n        open({str(f)!r}).close()\n"
            "    except OSError:\n        fails += 1\nprint(fails)\n")
    procs = [subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {cg[0]}/cgroup.procs && exec "$@"', "sh",
                               sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=TIMEOUT)[0].strip() for p in procs]
    s = enforcer.stats()
    assert outs == ["0", "0"] and s["flags_unknown"] == 0, (outs, s)
    assert sh_in(cg[0], f"echo x >> {f}").returncode != 0     # writes still refused
def test_every_answer_of_a_batch_reaches_the_kernel(tmp_path: Path) -> None:
    """Issue 16 item 4 (the wt-fandecide e2e hang): the kernel takes one
    ``fanotify_response`` per ``write()``; a batch written as one joined buffer
    answered its first event only and left the other openers blocked until the
    group closed.  Here the first decision is slowed (well inside the watchdog's
    timeout) so the other openers queue and are read, decided and answered as one
    batch: every one of them must finish while the group is still open."""
    from bastion.kernel.fanotify import FAN_OPEN_PERM, PermEvent, PermissionListener, Verdict
    f = tmp_path / "hot"
    f.write_text("hot\n")
    st = os.stat(f)
    first = threading.Event()

    def decide(ev: PermEvent) -> Verdict:
        if not first.is_set():
            first.set()
            time.sleep(0.3)      # the others queue meanwhile (timeout: 2 s)
        return Verdict.allow()

    lis = PermissionListener(decide, deadline_s=DEADLINE_S, decision_timeout_s=2.0)
    kids: list[subprocess.Popen[bytes]] = []
    try:
        lis.open()
        lis.start()
        with lis.mark_lock:
            lis.mark(str(f), (kernel_dev(st.st_dev), st.st_ino), FAN_OPEN_PERM)
        kids.append(subprocess.Popen(["cat", str(f)], stdout=subprocess.DEVNULL))
        assert first.wait(5)
        kids += [subprocess.Popen(["cat", str(f)], stdout=subprocess.DEVNULL) for _ in range(6)]
        end = time.monotonic() + 5
        while time.monotonic() < end and any(k.poll() is None for k in kids):
            time.sleep(0.02)
        blocked = [k.pid for k in kids if k.poll() is None]
        s = lis.stats()
    finally:
        lis.close()              # allows whatever is still blocked
        for k in kids:
            k.wait(timeout=TIMEOUT)
    assert blocked == []
    assert [k.returncode for k in kids] == [0] * 7
    assert s["perm_events"] == 7 and s["allows"] == 7 and s["fail_opens"] == 0


# ---- issue 16 item 4: the precomputed allow sets never outlive what they were built from ----


def _allow_open(enf: FanotifyEnforcer) -> frozenset[tuple[int, int]]:
    """The inodes the fast path answers without facts of the task: every open, or (s27:
    an inode every task may open is no longer marked) a read-only one."""
    state = enf._state   # white box
    assert state is not None
    return state.allow_open | state.allow_read


def test_a_fast_path_allow_does_not_outlive_a_policy_change(tmp_path: Path, cg: tuple[Path, int],
                                                            enforcer: FanotifyEnforcer) -> None:
    """A hot file every task may open is answered from the plan's allow set; the next
    plan denies it: the very next open is refused, and allowed again after a swap back."""
    hot = tmp_path / "hot"
    hot.write_text("hot\n")
    key = (target(hot).dev, target(hot).ino)
    allow = rule(1, (Op.OPEN_WRITE,), (target(hot),), Action.DENY)   # reads: everyone
    deny = rule(2, (Op.OPEN_READ,), (target(hot),), Action.DENY)
    enforcer.apply(plan_of(allow), targets_of(allow))
    assert key in _allow_open(enforcer)
    for _ in range(3):
        assert run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT).returncode == 0
    enforcer.apply(plan_of(deny), targets_of(deny))
    assert key not in _allow_open(enforcer)
    r = run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT)
    assert r.returncode != 0 and EPERM_TEXT in r.stderr
    enforcer.apply(plan_of(allow), targets_of(allow))
    assert run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT).returncode == 0
    assert enforcer.stats()["denies"] == 1


def test_an_exec_into_a_denied_binary_keeps_the_pid_but_not_the_allow(
        tmp_path: Path, cg: tuple[Path, int], enforcer: FanotifyEnforcer) -> None:
    """A process allowed to open a file execs (same pid) into a binary that is denied
    it: the open after the exec is refused.  A decision cached per pid, or per pid
    and a stale exe identity, would allow it."""
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    hot = tmp_path / "hot"
    hot.write_text("hot\n")
    denied_cat = tmp_path / "denied_cat"
    shutil.copy(shutil.which("cat") or "/bin/cat", denied_cat)
    dc = target(denied_cat)
    r1 = rule(1, (Op.OPEN_READ,), (target(secret),), Action.DENY,
              identities=((abi.SubjectKind.EXE, dc.ino, dc.dev),))
    r2 = rule(2, (Op.OPEN_WRITE,), (target(hot),), Action.DENY)   # reads: everyone
    enforcer.apply(plan_of(r1, r2), targets_of(r1, r2))
    assert (target(hot).dev, target(hot).ino) in _allow_open(enforcer)
    assert (target(secret).dev, target(secret).ino) not in _allow_open(enforcer)
    script = (f"import os\nfor _ in range(3):\n"
              f"    open({str(secret)!r}).read(); open({str(hot)!r}).read()\n"
              f"print(os.getpid(), flush=True)\n"
              f"os.execv({str(denied_cat)!r}, ['cat', {str(hot)!r}, {str(secret)!r}])\n")
    r = run_in(cg[0], [sys.executable, "-c", script], timeout=TIMEOUT)
    assert r.stdout.startswith(f"{r.stdout.split()[0]}\nhot\n"), r.stdout   # allowed before the exec
    assert r.returncode != 0 and EPERM_TEXT in r.stderr, (r.stdout, r.stderr)
    evs = events_until(enforcer, 1)
    assert [(e.rule_id, e.proc.pid, e.proc.exe) for e in evs] == \
        [(1, int(r.stdout.split()[0]), str(denied_cat))]


def test_a_file_moved_or_linked_over_an_allowed_path_keeps_its_own_rule(
        tmp_path: Path, cg: tuple[Path, int], enforcer: FanotifyEnforcer) -> None:
    """The allow set is keyed by inode, never by path: a denied file renamed over a
    hot allowed path, or hard-linked next to it, is still refused; a new file at the
    allowed path (a new inode, unmarked) is not answered from the old inode's entry."""
    hot = tmp_path / "hot"
    hot.write_text("hot\n")
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    r1 = rule(1, (Op.OPEN_WRITE,), (target(hot),), Action.DENY)   # reads: everyone
    r2 = rule(2, (Op.OPEN_READ,), (target(secret),), Action.DENY)
    enforcer.apply(plan_of(r1, r2), targets_of(r1, r2))
    old_hot = (target(hot).dev, target(hot).ino)
    assert old_hot in _allow_open(enforcer)
    assert run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT).returncode == 0
    os.link(secret, tmp_path / "alias")
    assert run_in(cg[0], ["cat", str(tmp_path / "alias")], timeout=TIMEOUT).returncode != 0
    os.rename(secret, hot)          # the hot path now names the denied inode
    r = run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT)
    assert r.returncode != 0 and EPERM_TEXT in r.stderr
    os.unlink(tmp_path / "alias")
    os.unlink(hot)
    hot.write_text("new\n")         # a new inode (even if its number is reused: no mark)
    assert run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT).stdout == "new\n"
    assert enforcer.stats()["denies"] == 2
