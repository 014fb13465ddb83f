"""Issue 15 on Debian's stock kernel (test VM): the provenance decision in the LSM hook
(``lsm_provgate.bpf.o``, :mod:`bastion.enforce.provgate_lsm`).

A /tmp-style script (its dir registered as a provenance temp dir) creates a first
``ld.so.preload`` in a directory, renames a file over a ``cron.d`` entry, overwrites,
truncates and unlinks a log, reads a credential file and kills a registered security
tool: each refused in the hook (the file absent or intact, the tool alive), each a
``deny`` record.  The same acts by a clean shell succeed unseen; by an administrator's
session (the admin-tty bit) running the same script they succeed and are reported
(``audit``); with the class in dry run they succeed as would-deny.

Every object is the test's own (a temp tree registered as must-stop objects: touching
the host's /etc or /var/log is unsafe); the gate is scoped to the test's cgroup with a
dead-man deadline, the sensor that keeps ``prov`` to the same cgroup."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion import abi  # noqa: E402
from bastion.enforce.muststop import GateObject, Kind  # noqa: E402
from bastion.enforce.provgate_lsm import LsmProvenanceGate  # noqa: E402
from bastion.events import HipsEvent  # noqa: E402
from bastion.procstat import read_stat  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from bastion.sensors.provenance import ProvenanceMap, default_interpreters  # noqa: E402
from bastion.kernel import bpffs  # noqa: E402
from bastion.kernel.clock import boot_ns  # noqa: E402
from bastion.kernel.loader import ObjectSpec  # noqa: E402
from bastion.store.db import Store  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402
from support.policies import default_policy  # noqa: E402

BASTION = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "bastion")

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)


@dataclass
class Env:
    root: Path
    cg: Path
    prov: ProvenanceMap
    gate: LsmProvenanceGate
    tool: subprocess.Popen[bytes]
    tools: list[subprocess.Popen[bytes]]   # every tool started, killed at teardown
    cgid: int

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    def reset(self) -> None:
        (self.etc / "ld.so.preload").unlink(missing_ok=True)
        (self.etc / "cron.d" / "x").write_text("# legit\n")
        (self.root / "log" / "syslog").write_text("line 1\nline 2\n")
        (self.root / "log" / "auth.log").write_text("auth 1\n")
        (self.root / "drop" / "evil").write_text("* * * * * root id\n")
        (self.etc / "default" / "ufw").write_text("ENABLED=yes\n")
        (self.etc / "rsyslog.conf").write_text("*.* /var/log/syslog on\n")
        (self.etc / "rsyslog.conf").chmod(0o644)
        (self.etc / "rsyslog.d" / "00-stop.conf").unlink(missing_ok=True)
        (self.root / "mail" / "root").write_text("From x\nmail 1\n")
        for left in self.etc.glob("sed*"):       # sed -i's temp file, its rename refused
            left.unlink()

    def records(self, n: int) -> list[HipsEvent]:
        out: list[HipsEvent] = []
        end = time.monotonic() + 5
        while len(out) < n and time.monotonic() < end:
            out += self.gate.poll(0.2)
        out += self.gate.poll(0.2)
        return out


OLD_PROV, OLD_LOST, STORM = 3, 2, 8   # a storm of STORM > OLD_PROV + OLD_LOST tainted


def _old_capacity_small(spec: ObjectSpec) -> ObjectSpec:
    """The capacities of the tgid-keyed hash map of ABI 2.4 (65,536 + 4,096 lost), shrunk
    so a small storm fills them; a map without capacity (task storage) is left alone."""
    small = {"prov_lost": OLD_LOST}
    if hasattr(abi, "PROV_MAX"):       # `prov` is a hash map with a capacity
        small["prov"] = OLD_PROV
    return replace(spec, max_entries={**spec.max_entries, **small})


#: The module's gate is loaded again before a test when less than GATE_MIN_LEFT_S of its
#: dead-man deadline is left (s24 CI: with one 120 s gate for the whole module, every
#: test after the two minutes a slow TCG host needed found a gate past its deadline,
#: which allows everything, and failed as if nothing were refused).
GATE_DEADLINE_S, GATE_MIN_LEFT_S = 300, 120


def _load_gate(prov: ProvenanceMap, cgid: int, root: Path) -> LsmProvenanceGate:
    gate = LsmProvenanceGate(prov, cgroup_id=cgid, deadline_s=GATE_DEADLINE_S,
                             self_tgid=os.getpid())
    gate.open()
    try:
        problems = gate.apply(*_objects(root))
        assert problems == []
    except BaseException:
        gate.close()
        raise
    return gate


@pytest.fixture(scope="module")
def loaded() -> Iterator[Env]:
    """One sensor and one gate for the module (loads are slow under TCG)."""
    root = Path(tempfile.mkdtemp(prefix="bpgate-"))
    tool = subprocess.Popen(["sleep", "600"])
    tools = [tool]
    try:
        for d in ("drop", "etc/cron.d", "log", "home", "etc/default", "etc/rsyslog.d", "mail"):
            (root / d).mkdir(parents=True)
        (root / "home" / "shadow").write_text("root:$6$secret:19000::::::\n")
        (root / "etc" / "default" / "ufw").write_text("ENABLED=yes\n")
        (root / "etc" / "rsyslog.conf").write_text("*.* /var/log/syslog on\n")
        with scoped_cgroup() as (cg, cgid):
            sensor = HookSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
            spec = _old_capacity_small(sensor.spec())
            sensor.spec = lambda: spec   # type: ignore[method-assign]
            sensor.open()
            try:
                prov = sensor.provenance()
                prov.set_dirs([str(root / "drop")])
                assert prov.set_interpreters(default_interpreters()) >= 1
                env = Env(root, cg, prov, _load_gate(prov, cgid, root), tool, tools, cgid)
                try:
                    assert env.gate.set_tools([tool.pid]) == [tool.pid]
                    yield env
                finally:
                    env.gate.close()
            finally:
                sensor.close()
    finally:
        for t in tools:
            t.kill()
            t.wait()
        shutil.rmtree(root)


def _objects(root: Path) -> tuple[list[GateObject], list[tuple[str, str, Kind]]]:
    return ([GateObject(str(root / "etc" / "cron.d"), "persistence"),
             GateObject(str(root / "log"), "log"),
             GateObject(str(root / "home" / "shadow"), "credential"),
             # s23: security configuration (a file, a drop-in directory), a mail spool
             GateObject(str(root / "etc" / "default" / "ufw"), "security-config"),
             GateObject(str(root / "etc" / "rsyslog.conf"), "security-config"),
             GateObject(str(root / "etc" / "rsyslog.d"), "security-config"),
             GateObject(str(root / "mail"), "log")],
            [(str(root / "etc"), "ld.so.preload", "persistence"),
             (str(root / "etc" / "default"), "ufw", "security-config"),
             (str(root / "etc"), "rsyslog.conf", "security-config")])


@pytest.fixture
def env(loaded: Env) -> Env:
    return _reset(loaded)


def _reset(e: Env) -> Env:
    """The module's gate, reset: objects as at start, no dry run, a live tool, no record;
    loaded again when its deadline is near."""
    fresh = False
    if e.gate.deadline_ns - boot_ns() < GATE_MIN_LEFT_S * 10**9:
        e.gate.close()
        e.gate = _load_gate(e.prov, e.cgid, e.root)
        fresh = True
    if e.tool.poll() is not None:
        e.tool = subprocess.Popen(["sleep", "600"])
        e.tools.append(e.tool)
        fresh = True
    if fresh:
        assert e.gate.set_tools([e.tool.pid]) == [e.tool.pid]
    e.gate.set_dry_run(False)
    e.reset()
    e.gate.poll(0.0)
    return e


def _script(e: Env) -> str:
    r = e.root
    return (f"echo /tmp/x.so > {r}/etc/ld.so.preload; echo preload=$?\n"
            f"mv {r}/drop/evil {r}/etc/cron.d/x; echo rename=$?\n"
            f"echo wiped > {r}/log/syslog; echo overwrite=$?\n"
            f"truncate -s 0 {r}/log/syslog; echo truncate=$?\n"
            f"rm -f {r}/log/auth.log; echo unlink=$?\n"
            f"cat {r}/home/shadow > /dev/null; echo read=$?\n"
            f"kill -TERM {e.tool.pid}; echo kill=$?\n")


def _codes(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split("=") for ln in out.split() if "=" in ln)}


ACTS = ("preload", "rename", "overwrite", "truncate", "unlink", "read", "kill")


def _untouched(e: Env) -> None:
    assert not (e.etc / "ld.so.preload").exists()
    assert (e.etc / "cron.d" / "x").read_text() == "# legit\n"
    assert (e.root / "log" / "syslog").read_text() == "line 1\nline 2\n"
    assert (e.root / "log" / "auth.log").exists()
    assert e.tool.poll() is None


def _done(e: Env) -> None:
    assert (e.etc / "ld.so.preload").read_text() == "/tmp/x.so\n"
    assert (e.etc / "cron.d" / "x").read_text() == "* * * * * root id\n"
    assert (e.root / "log" / "syslog").read_text() == ""
    assert not (e.root / "log" / "auth.log").exists()
    assert e.tool.wait(timeout=5) == -15


# Before the fix (the same module against a build of this object with no objects
# entered: main, where the lsm tier has only the fanotify gate, which sees opens of
# existing marked inodes only): every act of the tainted script succeeded (preload=0
# rename=0 overwrite=0 truncate=0 unlink=0 read=0 kill=0), the tool was killed.


def test_a_tmp_script_is_refused_in_the_hook(env: Env) -> None:
    script = env.root / "drop" / "payload.sh"
    script.write_text(_script(env))
    r = run_in(env.cg, ["/bin/sh", str(script)], timeout=30)
    codes = _codes(r.stdout)
    assert [a for a in ACTS if codes.get(a) == 0] == [], r.stdout + r.stderr
    assert "Operation not permitted" in r.stderr
    _untouched(env)
    recs = env.records(7)
    got = {(ev.op, ev.rule_id) for ev in recs}
    P, C, L, T = (abi.PgateClass.PERSISTENCE, abi.PgateClass.CREDENTIAL, abi.PgateClass.LOG,
                  abi.PgateClass.SECURITY_TOOL)
    assert {("create", P), ("rename", P), ("open-write", L), ("unlink", L),
            ("open-read", C), ("signal", T)} <= got, got
    assert all(ev.action == "deny" and ev.enforced and ev.ret == -1 for ev in recs), recs
    assert all(ev.subject == abi.PROV_TMP_SCRIPT for ev in recs), recs
    kill = next(ev for ev in recs if ev.op == "signal")
    assert kill.target_pid == env.tool.pid
    f = env.gate.finding(kill)
    assert f is not None and f.action == "deny" and f.rule == "bastion.provenance.gate"
    assert f.evidence["provenance"] == ["tmp-script"]
    assert f.evidence["prevented"].startswith("security-tool shutdown")
    pre = next(ev for ev in recs if ev.op == "create")
    assert pre.path.endswith("/etc/ld.so.preload"), pre.path
    assert env.prov.errors() == 0


def test_a_clean_shell_and_an_admin_session_are_allowed(env: Env) -> None:
    # a clean tree (no provenance entry): allowed, unseen
    r = run_in(env.cg, ["/bin/sh", "-c", _script(env)], timeout=30)
    assert [a for a in ACTS if _codes(r.stdout).get(a) != 0] == [], r.stdout + r.stderr
    _done(env)
    assert env.records(0) == []
    # an administrator's session (admin-tty bit) running the same /tmp script: allowed,
    # reported as audit
    _reset(env)   # a live tool and the objects as at start again
    script = env.root / "drop" / "admin.sh"
    script.write_text(_script(env))
    ready = env.root / "ready"
    p = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {env.cg}/cgroup.procs; echo $$ > {ready}; '
                          f'read go; exec /bin/sh {script}'], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 10
        while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < end:
            time.sleep(0.05)
        pid = int(ready.read_text())
        assert env.prov.add(pid, read_stat(pid).start_ns, abi.PROV_ADMIN_TTY)
        out, _ = p.communicate("go\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert [a for a in ACTS if _codes(out).get(a) != 0] == [], out
    _done(env)
    recs = env.records(7)
    assert recs and all(ev.action == "audit" and not ev.enforced for ev in recs), recs
    assert {ev.op for ev in recs} >= {"create", "rename", "unlink", "open-read", "signal"}
    f = env.gate.finding(recs[0])
    assert f is not None and f.action == "audit"


def _slot(env: Env, k: int, v: int) -> None:
    assert env.prov.errors_map is not None
    env.prov.errors_map.update(k.to_bytes(4, "little"), v.to_bytes(8, "little"))


def test_a_process_the_full_map_could_not_take_is_refused_in_the_hook(env: Env) -> None:
    """The full ``prov`` map (hyg's overflow handling, prov_map.h): a tainted process it
    could not take is in ``prov_lost``; the fanotify gate refused it as untracked, the
    in-hook gate trusted it (no entry = clean) before it read the overflow maps.  The
    overflow is written into the maps here (filling 65,536 entries under TCG is slow)."""
    shadow = env.root / "home" / "shadow"
    ready = env.root / "ready-lost"

    def reader() -> tuple[int, subprocess.Popen[str]]:
        ready.unlink(missing_ok=True)
        p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {env.cg}/cgroup.procs; echo $$ > "
                              f"{ready}; read go; exec cat {shadow}"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 10
        while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < end:
            time.sleep(0.05)
        return int(ready.read_text()), p

    assert env.prov.lost is not None
    try:
        _slot(env, 0, 1)                       # the map overflowed once
        pid, p = reader()                      # a lost process
        env.prov.lost.update(pid.to_bytes(4, "little"),
                             read_stat(pid).start_ns.to_bytes(8, "little"))
        out, err = p.communicate("go\n", timeout=30)
        assert p.returncode != 0 and "secret" not in out, (out, err)
        pid2, p2 = reader()                    # not lost: still a clean process
        out2, _ = p2.communicate("go\n", timeout=30)
        assert p2.returncode == 0 and "secret" in out2
        _slot(env, 1, 1)                       # the lost list overflowed too: every untracked
        pid3, p3 = reader()
        out3, _ = p3.communicate("go\n", timeout=30)
        assert p3.returncode != 0 and "secret" not in out3
        recs = env.records(2)
        assert [(ev.op, ev.action, ev.proc.pid) for ev in recs] == [
            ("open-read", "deny", pid), ("open-read", "deny", pid3)], recs
        assert all(ev.subject & abi.PROV_UNTRACKED for ev in recs), recs
        f = env.gate.finding(recs[0])
        assert f is not None and "untracked" in f.title, f
    finally:
        _slot(env, 0, 0)
        _slot(env, 1, 0)
        for q in [locals().get(n) for n in ("p", "p2", "p3")]:
            if isinstance(q, subprocess.Popen) and q.poll() is None:
                q.kill()
                q.wait()


def _raw_entry(env: Env, pid: int) -> abi.ProvVal | None:
    """The kernel's `prov` entry of ``pid`` as stored (an empty one included)."""
    fd = os.pidfd_open(pid)
    try:
        raw = env.prov.prov.lookup(fd.to_bytes(4, "little", signed=True))
    finally:
        os.close(fd)
    return abi.ProvVal.from_buffer_copy(raw) if raw is not None else None


def test_an_entry_less_actor_is_settled_with_an_empty_entry_that_takes_reasons(
        env: Env) -> None:
    """s16-sig, re-applied s21-regate (prov_map.h prov_actor_settle): a process with no
    entry that touches a must-stop object is read again with F_CREATE, so a NULL can only
    be the busy counter or no memory (refused).  Here the entry is made: the clean read is
    allowed, the entry is empty (no reason, no start), user space reads it as none, a
    child forked afterwards gets no copy, no NULL was counted, and a reason user space
    publishes for the process afterwards lands (the empty entry's start 0 made add()
    refuse it before the s16 fix: the tainted process then read the store)."""
    shadow = env.root / "home" / "shadow"
    ready = env.root / "ready-empty"
    ready.unlink(missing_ok=True)
    p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {env.cg}/cgroup.procs; echo $$ > "
                          f"{ready}; read go; {{ read l; }} < {shadow}; echo r1=$?; "
                          f"sleep 30 & echo child=$!; read go; {{ read l; }} < {shadow}; "
                          f"echo r2=$?; kill $!"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        end = time.monotonic() + 10
        while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < end:
            time.sleep(0.05)
        pid = int(ready.read_text())
        assert _raw_entry(env, pid) is None
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "r1=0"          # clean: allowed
        child = int(p.stdout.readline().strip().split("=")[1])
        got = _raw_entry(env, pid)
        assert got is not None and (got.reasons, got.start_ns) == (0, 0), got
        assert env.prov.get(pid) is None
        assert _raw_entry(env, child) is None                 # not inherited
        assert env.prov.gate_null_refusals() == 0
        assert env.records(0) == []
        assert env.prov.add(pid, read_stat(pid).start_ns, abi.PROV_NETWORK_SERVICE)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=30)
        assert out.strip() != "r2=0", out                     # tainted now: refused
        recs = env.records(1)
        assert [(ev.op, ev.action, ev.proc.pid, ev.subject) for ev in recs] == [
            ("open-read", "deny", pid, abi.PROV_NETWORK_SERVICE)], recs
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _unprivileged(cg: Path) -> Callable[[], None]:
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    return enter


def test_a_tainted_process_storm_locks_no_one_out_in_the_hook(env: Env) -> None:
    """Attack (threat model "... a host-wide login lockout"): an unprivileged tree
    starts more tainted processes than the provenance map and its lost list take (the
    ABI 2.4 hash map shrunk to OLD_PROV + OLD_LOST at the module's load).  Before: the
    lost list overflowed and the in-hook gate refused every process without an entry
    (a login's unix_chkpwd reading shadow).  After (task-local storage): an untainted
    reader is allowed, a tainted one refused, nothing counted as lost."""
    shadow = env.root / "home" / "shadow"
    for d in (env.root, env.root / "drop"):
        d.chmod(0o755)
    hold = env.root / "drop" / "hold.sh"
    hold.write_text("exec sleep 60\n")
    holders = [subprocess.Popen(["/bin/sh", str(hold)], preexec_fn=_unprivileged(env.cg))
               for _ in range(STORM)]
    try:
        end = time.monotonic() + 30
        while not all(Path(f"/proc/{h.pid}/cmdline").read_bytes().startswith(b"sleep")
                      for h in holders):
            assert time.monotonic() < end, "the storm did not start"
            time.sleep(0.05)
        r = run_in(env.cg, ["/bin/cat", str(shadow)], timeout=30)
        assert r.returncode == 0 and "secret" in r.stdout, r
        hunt = env.root / "drop" / "hunt.sh"
        hunt.write_text(f"cat {shadow}\n")
        r = run_in(env.cg, ["/bin/sh", str(hunt)], timeout=30)
        assert r.returncode != 0 and "secret" not in r.stdout, r
        assert env.prov.errors() == 0 and env.prov.lost_errors() == 0
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_dry_run_is_honoured_in_the_kernel(env: Env) -> None:
    env.gate.set_dry_run(["log"])
    script = env.root / "drop" / "wipe.sh"
    script.write_text(f"rm -f {env.root}/log/auth.log; echo unlink=$?\n"
                      f"echo /tmp/x.so > {env.etc}/ld.so.preload; echo preload=$?\n")
    r = run_in(env.cg, ["/bin/sh", str(script)], timeout=30)
    codes = _codes(r.stdout)
    assert codes["unlink"] == 0 and codes["preload"] != 0, r.stdout + r.stderr
    assert not (env.root / "log" / "auth.log").exists()
    recs = env.records(2)
    wipe = [ev for ev in recs if ev.rule_id == abi.PgateClass.LOG]
    assert wipe and all(ev.action == "deny" and not ev.enforced and ev.ret == 0 for ev in wipe)
    f = env.gate.finding(wipe[0])
    assert f is not None and f.action == "would-deny" and f.dry_run
    assert any(ev.rule_id == abi.PgateClass.PERSISTENCE and ev.enforced for ev in recs)


def test_the_agent_refuses_a_tmp_script_in_the_hook_and_alerts(tmp_path: Path) -> None:
    """The agent on the lsm tier (one start): its in-hook gate refuses a /tmp script's
    read of /etc/shadow (the guest's real file, read-only to it anyway) with one
    critical ``bastion.provenance.gate`` alert enforced by ``lsm-prov`` (the fanotify
    gate marks nothing there: one decision per act), and status says where it decides.
    The agent and the attacker run in the test cgroup, the gate only acts there and
    only until --test-deadline."""
    pol = default_policy(tmp_path / "policy.yaml", tmp_path / "shielded")
    data, sock, log = tmp_path / "data", tmp_path / "agent.sock", tmp_path / "agent.log"
    pin_root = Path("/sys/fs/bpf") / f"bastion-test-{uuid.uuid4().hex[:8]}"
    drop = Path(tempfile.mkdtemp(prefix="bpgate-agent-", dir="/tmp"))
    with scoped_cgroup() as (cg, cgid), log.open("wb") as logf:
        agent = subprocess.Popen(
            ["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", BASTION, "run",
             "--policy", str(pol), "--data-dir", str(data), "--socket", str(sock), "--quiet",
             "--pin-root", str(pin_root), "--test-deadline", "300", "--test-cgroup-id", str(cgid)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            def gate_status() -> str | None:
                r = subprocess.run([BASTION, "status", "--socket", str(sock), "--json"],
                                   capture_output=True, text=True, timeout=30)
                if r.returncode != 0:
                    return None
                g = json.loads(r.stdout).get("protections", {}).get("provenance gate")
                return str(g["detail"]) if g and g.get("on") else None
            detail = _wait("the agent's provenance gate", gate_status, 240, agent, log)
            assert str(detail).startswith("in the LSM hook"), detail
            script = drop / "hunt.sh"
            script.write_text("cat /etc/shadow > /dev/null; echo read=$?\n")
            r = run_in(cg, ["/bin/sh", str(script)], timeout=30)
            # refused (the behaviour rules may also kill the tree after: no echo then)
            assert "read=0" not in r.stdout and "Operation not permitted" in r.stderr, \
                r.stdout + r.stderr

            def gate_alerts() -> list[dict[str, object]]:
                with Store.open(data, readonly=True) as st:
                    return [a.data for a in st.alerts(limit=10000)
                            if a.data.get("rule") == "bastion.provenance.gate"]
            got = _wait("the gate's alert", gate_alerts, 90, agent, log)
            assert isinstance(got, list)
            a = got[0]
            assert a["action"] == "deny" and a.get("enforced_by") == "lsm-prov", a
            assert a["severity"] == "critical", a
            ev = a["evidence"]
            assert isinstance(ev, dict) and "/etc/shadow" in str(ev["prevented"]), ev
            assert ev["provenance"] == ["tmp-script"], ev
            assert all(x.get("enforced_by") == "lsm-prov" for x in got), got
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
            if pin_root.exists():
                bpffs.remove_pins(pin_root)
            shutil.rmtree(drop)


def _wait(what: str, cond: Callable[[], object], timeout: float, agent: subprocess.Popen[bytes],
          log: Path) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert agent.poll() is None, f"the agent died ({agent.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


# ---- s15: rewriting an object through an open file; its ancestors; objects made later ----

_REWRITE = r'''
import ctypes, errno, fcntl, mmap, os, struct, sys
log, cron = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
def code(f):
    try:
        f()
        return 0
    except OSError as exc:
        return exc.errno
def cc(rc):
    if rc == 0:
        return 0
    return ctypes.get_errno()
out = {}
fd = os.open(log, os.O_WRONLY | os.O_APPEND)
out["fcntl"] = code(lambda: fcntl.fcntl(fd, fcntl.F_SETFL, 0))
os.pwrite(fd, b"P", 0)    # appends while O_APPEND holds, overwrites "l" once cleared
out["noappend"] = code(lambda: os.pwritev(fd, [b"N"], 0, 0x20))
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
out["fallocate"] = cc(libc.fallocate(fd, 3, 0, 4096))    # PUNCH_HOLE | KEEP_SIZE
rw = os.open(log, os.O_RDWR | os.O_APPEND)
def shared():
    m = mmap.mmap(rw, 4, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    m[0:1] = b"M"
    m.close()
out["mmap"] = code(shared)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
addr = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, rw, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
out["mprotect"] = cc(libc.mprotect(addr, 4096, mmap.PROT_READ | mmap.PROT_WRITE))
if out["mprotect"] == 0:
    ctypes.memmove(addr, b"R", 1)
ro = os.open(cron, os.O_RDONLY)
out["chattr"] = code(lambda: fcntl.ioctl(ro, 0x40086602, struct.pack("i", 0x10)))   # +i
out["fsxattr"] = code(lambda: fcntl.ioctl(ro, 0x401c5820, struct.pack("IIIII8x", 8, 0, 0, 0, 0)))
print(" ".join(f"{k}={v}" for k, v in out.items()))
'''
REWRITES = ("fcntl", "noappend", "fallocate", "mmap", "mprotect", "chattr", "fsxattr")
_DONE = ("fcntl", "fallocate", "mmap", "mprotect", "chattr")


def _flags(path: Path) -> int:
    import fcntl
    import struct
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, 0x80086601, b"\0" * 4))[0])
    finally:
        os.close(fd)


def _clear_flags(path: Path) -> None:
    import fcntl
    import struct
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, 0x40086602, struct.pack("i", 0))
    finally:
        os.close(fd)


# Before the fix (this module against the previous lsm_provgate.bpf.o, seen): fcntl=0
# fallocate=0 mmap=0 mprotect=0 chattr=0 fsxattr=0 (the cron entry immutable), the log
# rewritten at 0; noappend=95 (RWF_NOAPPEND is 6.9's: EOPNOTSUPP on 6.1, EPERM after).


def test_a_log_opened_for_appending_is_not_rewritten_through_its_file(env: Env) -> None:
    logf, cron = env.root / "log" / "syslog", env.etc / "cron.d" / "x"
    py = env.root / "drop" / "rewrite.py"
    py.write_text(_REWRITE)
    sh = env.root / "drop" / "rewrite.sh"
    sh.write_text(f"exec python3 {py} {logf} {cron}\n")
    try:
        r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
        codes = _codes(r.stdout)
        assert {a: codes.get(a) for a in REWRITES} == {a: 1 for a in REWRITES}, r.stdout + r.stderr
        # the refused fcntl left O_APPEND on: the pwrite at 0 appended
        assert logf.read_text() == "line 1\nline 2\nP", logf.read_text()
        assert _flags(cron) & 0x10 == 0
        recs = env.records(len(REWRITES))
        how = {(ev.op, ev.detail, ev.rule_id) for ev in recs}
        L, P, H = abi.PgateClass.LOG, abi.PgateClass.PERSISTENCE, abi.PgateHow
        assert {("open-write", H.FCNTL, L), ("open-write", H.NOAPPEND, L),
                ("open-write", H.FALLOCATE, L), ("open-write", H.MMAP, L),
                ("chmod", H.IOCTL, P)} <= how, how
        assert all(ev.action == "deny" and ev.enforced for ev in recs), recs
        f = env.gate.finding(next(ev for ev in recs if ev.detail == H.FCNTL))
        assert f is not None and "fcntl clearing O_APPEND" in f.title, f
        assert f.evidence["class"] == "log"
    finally:
        _clear_flags(cron)


def test_a_clean_tree_and_dry_run_still_rewrite(env: Env) -> None:
    """The same rewrites by a clean process: allowed, unseen; with the log class in dry
    run the log's are reported as would-deny and done."""
    logf, cron = env.root / "log" / "syslog", env.etc / "cron.d" / "x"
    py = env.root / "rewrite-clean.py"
    py.write_text(_REWRITE)
    try:
        r = run_in(env.cg, ["python3", str(py), str(logf), str(cron)], timeout=60)
        codes = _codes(r.stdout)
        # RWF_NOAPPEND is 6.9's: EOPNOTSUPP on 6.1 for everyone (the tainted tree: EPERM first)
        assert {a: codes.get(a) for a in _DONE} == {a: 0 for a in _DONE}, r.stdout + r.stderr
        assert env.records(0) == []
        _clear_flags(cron)
        _reset(env)
        env.gate.set_dry_run(["log"])
        sh = env.root / "drop" / "rewrite-dry.sh"
        sh.write_text(f"exec python3 {py} {logf} {cron}\n")
        r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
        codes = _codes(r.stdout)
        assert [codes.get(a) for a in _DONE[:-1]] == [0] * 4, r.stdout + r.stderr
        assert codes["chattr"] == 1      # persistence is enforced
        recs = env.records(6)
        logs = [ev for ev in recs if ev.rule_id == abi.PgateClass.LOG]
        assert {ev.detail for ev in logs} >= {abi.PgateHow.FCNTL, abi.PgateHow.FALLOCATE,
                                              abi.PgateHow.MMAP}, recs
        assert all(ev.action == "deny" and not ev.enforced for ev in logs), logs
    finally:
        _clear_flags(cron)
        env.gate.set_dry_run(False)


# Before the fix (the previous object): a file in a directory made in cron.d after the
# objects were entered was written (later=0), the bind over cron.d and over a log, the
# unmount of the log tree, the tmpfs over etc and `mv etc etc.old` all succeeded.


def test_the_directories_above_objects_are_not_renamed_or_mounted_on(env: Env) -> None:
    etc, old = env.etc, env.root / "etc.old"
    later = env.etc / "cron.d" / "later.d"
    later.mkdir()
    sh = env.root / "drop" / "move.sh"
    sh.write_text(f"echo '* * * * * root id' > {later}/evil; echo later=$?\n"
                  f"mount --bind {env.root}/drop {etc}/cron.d; echo bind=$?\n"
                  f"umount {env.root}/log; echo umount=$?\n"
                  f"mount --bind {env.root}/drop/payload.sh {env.root}/log/syslog; echo file=$?\n"
                  f"mount -t tmpfs none {etc}; echo tmpfs=$?\n"
                  f"umount {etc} 2>/dev/null\n"
                  f"mv {etc} {old}; echo rename=$?\n")
    (env.root / "drop" / "payload.sh").write_text("")
    logd = env.root / "log"
    try:
        # /var/log on a filesystem of its own: a bind of the log tree on itself (the test's)
        subprocess.run(["mount", "--bind", str(logd), str(logd)], check=True)
        r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
        codes = _codes(r.stdout)
        assert {k: codes.get(k) for k in ("rename", "tmpfs", "bind", "file", "later", "umount")} \
            == {"rename": 1, "tmpfs": 32, "bind": 32, "file": 32, "later": 2, "umount": 32}, \
            r.stdout + r.stderr
        assert subprocess.run(["mountpoint", "-q", str(logd)]).returncode == 0
        assert etc.is_dir() and not old.exists() and not (later / "evil").exists()
        assert "Operation not permitted" in r.stderr   # later: the shell's redirect (2)
        recs = env.records(4)
        got = {(ev.op, ev.detail) for ev in recs}
        H = abi.PgateHow
        assert {("rename", H.ANCESTOR), ("rename", H.MOUNT)} <= got, got
        assert any(ev.op == "create" and ev.path.endswith("/later.d/evil") for ev in recs), recs
        anc = next(ev for ev in recs if ev.detail == H.ANCESTOR)
        assert anc.path.endswith("/etc") and anc.rule_id == abi.PgateClass.PERSISTENCE, anc
        # a clean shell renames and mounts as before
        r = run_in(env.cg, ["/bin/sh", "-c", f"mv {etc} {old} && mv {old} {etc} && "
                            f"mount -t tmpfs none {etc} && umount {etc}"],
                   timeout=30)
        assert r.returncode == 0, r.stderr
        # re-entering (the agent's tick) enters a directory made deeper meanwhile
        deeper = later / "sub"
        deeper.mkdir()
        sh2 = env.root / "drop" / "deeper.sh"
        sh2.write_text(f"echo x > {deeper}/evil; echo deeper=$?\n")
        r = run_in(env.cg, ["/bin/sh", str(sh2)], timeout=30)
        assert _codes(r.stdout) == {"deeper": 0}, r.stdout + r.stderr   # not entered yet
        (deeper / "evil").unlink()
        n = env.gate.stats()["objects"]
        assert env.gate.apply(*_objects(env.root)) == []
        assert env.gate.stats()["objects"] == n + 2     # later.d and sub
        r = run_in(env.cg, ["/bin/sh", str(sh2)], timeout=30)
        assert _codes(r.stdout) == {"deeper": 2}, r.stdout + r.stderr   # the redirect refused
        assert not (deeper / "evil").exists()
    finally:
        for m in (etc, old):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        if old.exists() and not etc.exists():
            old.rename(etc)
        for m in (etc / "cron.d", etc / "cron.d", logd / "syslog", logd, logd):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        shutil.rmtree(later, ignore_errors=True)
        env.gate.apply(*_objects(env.root))


# ---- s15-fixlsm: mounts in the caller's own namespace; writes outside a plain write ----

# Before the fix (the previous object, seen): `unshare -m --propagation private` of the
# tainted tree failed (its MS_PRIVATE|MS_REC on `/`, an ancestor of every object, was
# refused: unshare=1, no ns= line), so bwrap, flatpak, podman, ip netns exec, nspawn too.


def test_a_tainted_tree_mounts_in_its_own_namespace_not_the_hosts(env: Env) -> None:
    etc = env.etc
    sh = env.root / "drop" / "ns.sh"
    sh.write_text(f"unshare -m --propagation private sh -c '"
                  f"mount -t tmpfs none {etc} && echo inner > {etc}/probe && "
                  f"mount --bind {env.root}/drop {env.root}/log && umount {env.root}/log && "
                  f"umount {etc}; echo ns=$?'; echo unshare=$?\n"
                  f"mount -t tmpfs none {etc}; echo host=$?\n"
                  f"umount {etc} 2>/dev/null\n")
    try:
        r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
        codes = _codes(r.stdout)
        assert {k: codes.get(k) for k in ("ns", "unshare", "host")} \
            == {"ns": 0, "unshare": 0, "host": 32}, r.stdout + r.stderr
        assert not (etc / "probe").exists()
        assert subprocess.run(["mountpoint", "-q", str(etc)]).returncode != 0
        recs = env.records(1)
        mounts = [ev for ev in recs if ev.detail == abi.PgateHow.MOUNT]
        assert len(mounts) == 1 and mounts[0].path.endswith("/etc"), recs
    finally:
        subprocess.run(["umount", "-l", str(etc)], capture_output=True)


_OTHER_WRITE = r'''
import os, sys
log, src = sys.argv[1], sys.argv[2]
def code(f):
    try:
        f()
        return 0
    except OSError as exc:
        return exc.errno
fd = os.open(log, os.O_WRONLY | os.O_APPEND)
s = os.open(src, os.O_RDONLY)
out = {"sendfile": code(lambda: os.sendfile(fd, s, None, 2)),
       "write": code(lambda: os.write(fd, b"W")),
       "writev": code(lambda: os.writev(fd, [b"V"])),
       "pwrite": code(lambda: os.pwrite(fd, b"P", 0))}
print(" ".join(f"{k}={v}" for k, v in out.items()))
'''

# Before the fix (the previous object, seen): the write by sendfile reached the file
# (the hook allowed every syscall but fallocate, pwritev2(RWF_NOAPPEND), io_uring_enter
# and io_submit: sendfile=22, do_splice_direct's O_APPEND check, not the gate).  The
# same deny-list let an io_uring write run as task work during another syscall through.


def test_a_log_is_written_only_by_a_plain_write(env: Env) -> None:
    logf = env.root / "log" / "syslog"
    src = env.root / "drop" / "src"
    src.write_text("SS")
    py = env.root / "drop" / "other.py"
    py.write_text(_OTHER_WRITE)
    sh = env.root / "drop" / "other.sh"
    sh.write_text(f"echo appended >> {logf}; echo append=$?\npython3 {py} {logf} {src}\n")
    r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
    codes = _codes(r.stdout)
    assert codes == {"append": 0, "sendfile": 1, "write": 0, "writev": 0, "pwrite": 0}, \
        r.stdout + r.stderr
    assert logf.read_text() == "line 1\nline 2\nappended\nWVP", logf.read_text()
    recs = env.records(1)
    assert [(ev.op, ev.detail, ev.rule_id, ev.action) for ev in recs] \
        == [("open-write", abi.PgateHow.NOAPPEND, abi.PgateClass.LOG, "deny")], recs



# ---- s23-muststop: security configuration, mail spools, the firewall ----

def _seccfg_script(e: Env) -> str:
    r, etc = e.root, e.etc
    return (f"echo ENABLED=no >> {etc}/default/ufw; echo append=$?\n"
            f"sed -i s/on/off/ {etc}/rsyslog.conf; echo sed=$?\n"
            f"echo '*.* stop' > {etc}/rsyslog.d/00-stop.conf; echo dropin=$?\n"
            f"chmod 600 {etc}/rsyslog.conf; echo chmod=$?\n"
            f"rm -f {etc}/default/ufw; echo unlink=$?\n"
            f"cat {etc}/rsyslog.conf > /dev/null; echo read=$?\n"
            f"echo 0> {r}/mail/root; echo mailwipe=$?\n"
            f"truncate -s 0 {r}/mail/root; echo mailtrunc=$?\n"
            f"echo delivered >> {r}/mail/root; echo mailappend=$?\n"
            # a delivery agent's dotlock (O_EXCL), a new mailbox and its chown, the unlock:
            # empty files, nothing to wipe (s23 review 4: refused before)
            f"(set -C; : > {r}/mail/root.lock); echo maillock=$?\n"
            f"chown 0:0 {r}/mail/root.lock; echo lockchown=$?\n"
            f"rm {r}/mail/root.lock; echo unlock=$?\n"
            f": > {r}/mail/newbox; echo newbox=$?\n"
            f"chown 0:0 {r}/mail/newbox; echo newboxchown=$?\n"
            f"rm -f {r}/mail/newbox\n")


SECCFG_REFUSED = ("append", "sed", "dropin", "chmod", "unlink", "mailwipe", "mailtrunc")

# Before the change (main at 73a202c): "security-config" was no kind (the objects could
# not be entered: ConfigError), /var/spool/mail and /var/mail were no log objects, and
# lsm_provgate.bpf.o had no netlink_send/socket_setsockopt program: the firewall test's
# tainted batch was sent (newtable=0) and its SET_REPLACE reached the kernel (EINVAL or
# ENOPROTOOPT, no EPERM), no record.


def test_security_config_and_a_mail_spool_are_refused_in_the_hook(env: Env) -> None:
    """T1562.004 (`>> /etc/default/ufw`), T1562.006 (`sed -i` of rsyslog.conf: a new
    file renamed over it), a drop-in, a chmod, an unlink; T1070.002 (`echo 0>` of a mail
    spool, a truncate): refused for a /tmp script; reading the config and appending
    to the spool (delivery) stay allowed."""
    script = env.root / "drop" / "seccfg.sh"
    script.write_text(_seccfg_script(env))
    r = run_in(env.cg, ["/bin/sh", str(script)], timeout=30)
    codes = _codes(r.stdout)
    assert [a for a in SECCFG_REFUSED if codes.get(a) == 0] == [], r.stdout + r.stderr
    assert codes["read"] == 0 and codes["mailappend"] == 0, r.stdout + r.stderr
    assert [a for a in ("maillock", "lockchown", "unlock", "newbox", "newboxchown")
            if codes.get(a) != 0] == [], r.stdout + r.stderr
    assert (env.etc / "default" / "ufw").read_text() == "ENABLED=yes\n"
    assert (env.etc / "rsyslog.conf").read_text() == "*.* /var/log/syslog on\n"
    assert (env.etc / "rsyslog.conf").stat().st_mode & 0o777 == 0o644
    assert not (env.etc / "rsyslog.d" / "00-stop.conf").exists()
    assert (env.root / "mail" / "root").read_text() == "From x\nmail 1\ndelivered\n"
    recs = env.records(7)
    S, L = abi.PgateClass.SECURITY_CONFIG, abi.PgateClass.LOG
    got = {(ev.op, ev.rule_id) for ev in recs}
    assert {("open-write", S), ("rename", S), ("create", S), ("chmod", S), ("unlink", S),
            ("open-write", L)} <= got, got
    assert all(ev.action == "deny" and ev.enforced for ev in recs), recs
    f = env.gate.finding(next(ev for ev in recs if ev.op == "rename"))
    assert f is not None and f.rule == "bastion.provenance.gate" and f.action == "deny"
    assert f.evidence["class"] == "security-config", f.evidence
    assert f.evidence["prevented"].startswith("security-configuration change (rename)"), f
    assert "T1562.006" in f.attack


def test_security_config_and_a_mail_spool_stay_writable_for_a_clean_tree(env: Env) -> None:
    try:
        r = run_in(env.cg, ["/bin/sh", "-c", _seccfg_script(env)], timeout=30)
        codes = _codes(r.stdout)
        assert [a for a, c in codes.items() if c != 0] == [], r.stdout + r.stderr
        assert not (env.etc / "default" / "ufw").exists()
        assert (env.etc / "rsyslog.conf").read_text() == "*.* /var/log/syslog off\n"
        assert env.records(0) == []
    finally:
        _reset(env)
        assert env.gate.apply(*_objects(env.root)) == []   # new inodes: entered again


_NFT = r"""
import errno, os, socket, struct, sys
NETLINK_NETFILTER, SUBSYS_NFT = 12, 10
BATCH_BEGIN, BATCH_END = 0x10, 0x11
NEWTABLE, GETTABLE, DELTABLE = SUBSYS_NFT << 8 | 0, SUBSYS_NFT << 8 | 1, SUBSYS_NFT << 8 | 2
REQ, ACK, CREATE, DUMP = 1, 4, 0x400, 0x300

def msg(t, flags, seq, family, res_id, attrs=b""):
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + attrs
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

def name_attr(name):
    b = name.encode() + b"\0"
    a = struct.pack("=HH", 4 + len(b), 1) + b      # NFTA_TABLE_NAME
    return a + b"\0" * (-len(a) % 4)

def batch(t, name):
    return (msg(BATCH_BEGIN, REQ, 1, 0, SUBSYS_NFT)
            + msg(t, REQ | ACK | CREATE, 2, 2, 0, name_attr(name))   # NFPROTO_IPV4
            + msg(BATCH_END, REQ, 3, 0, SUBSYS_NFT))

def talk(data, dump=False, proto=NETLINK_NETFILTER):
    # (errno of the send, the first error an ack carried or 0, message types seen)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    s.settimeout(3)
    try:
        s.bind((0, 0))
        try:
            s.send(data)
        except OSError as e:
            return e.errno, 0, []
        first, types = 0, []
        while True:
            try:
                buf = s.recv(65536)
            except socket.timeout:
                return 0, first, types
            off = 0
            while off + 16 <= len(buf):
                ln, t = struct.unpack_from("=IH", buf, off)
                types.append(t)
                if t == 2:                                 # NLMSG_ERROR (an ack: 0)
                    err = -struct.unpack_from("=i", buf, off + 16)[0]
                    first = first or err
                    if not dump:
                        if err or struct.unpack_from("=I", buf, off + 28)[0] == 2:
                            return 0, first, types
                if t == 3:                                 # NLMSG_DONE
                    return 0, first, types
                off += (ln + 3) & ~3
    finally:
        s.close()

mode, table = sys.argv[1], sys.argv[2]
sent, ack, _ = talk(batch(NEWTABLE, table))
print(f"newtable={sent} newack={ack}")
sent, ack, types = talk(msg(GETTABLE, REQ | DUMP, 4, 0, 0), dump=True)
print(f"list={sent} listack={ack}")
if mode == "clean" and sent == 0:
    have = any(t == NEWTABLE for t in talk(msg(GETTABLE, REQ | ACK, 5, 2, 0, name_attr(table)))[2])
    print(f"have={int(have)}")
    if have:
        print("delete=%d deleteack=%d" % talk(batch(DELTABLE, table))[:2])
# s24: an ipset change (no batch), and one hidden behind a dump in the same send (the
# sets need not exist: the hook judges the send, before nfnetlink looks at it)
SUBSYS_IPSET = 6
IPSET_CREATE, IPSET_DEL = SUBSYS_IPSET << 8 | 2, SUBSYS_IPSET << 8 | 10
print("ipset=%d" % talk(msg(IPSET_CREATE, REQ | ACK, 6, 2, 0))[0])
print("hidden=%d" % talk(msg(GETTABLE, REQ | DUMP, 7, 0, 0) + msg(IPSET_DEL, REQ | ACK, 8, 2, 0),
                         dump=True)[0])
# s24: a null route and a prohibit rule for TEST-NET-1 (192.0.2.0/24); deleted again
# whenever the kernel took them
NETLINK_ROUTE, NEWROUTE, DELROUTE, NEWRULE, DELRULE = 0, 24, 25, 32, 33
BLACKHOLE, PROHIBIT, CREATE_EXCL = 6, 8, 0x600

def rt(t, flags, seq, kind):
    body = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 4, 0, kind, 0)   # main table, static
    body += struct.pack("=HH4s", 8, 1, socket.inet_aton("192.0.2.55"))  # RTA_DST
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

def rule(t, flags, seq, action):
    body = struct.pack("=BBBBBBBBI", 2, 0, 24, 0, 0, 0, 0, action, 0)
    body += struct.pack("=HH4s", 8, 2, socket.inet_aton("192.0.2.0"))   # FRA_SRC /24
    body += struct.pack("=HHI", 8, 6, 32123)                             # FRA_PRIORITY
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

for name, new, delete in (("blackhole", rt(NEWROUTE, REQ | ACK | CREATE_EXCL, 9, BLACKHOLE),
                           rt(DELROUTE, REQ | ACK, 10, BLACKHOLE)),
                          ("rule", rule(NEWRULE, REQ | ACK | CREATE_EXCL, 11, PROHIBIT),
                           rule(DELRULE, REQ | ACK, 12, PROHIBIT))):
    sent, ack, _ = talk(new, proto=NETLINK_ROUTE)
    print(f"{name}={sent} {name}ack={ack}")
    if sent == 0 and ack == 0:
        dsent, dack, _ = talk(delete, proto=NETLINK_ROUTE)
        print(f"{name}del={dsent} {name}delack={dack}")
# s25 (review 5 of s24): a local route for TEST-NET-2 (198.51.100.7: this host's then),
# a blackhole nexthop object, the legacy route ioctl (SIOCADDRT, a reject route); each
# deleted again whenever the kernel took it.  The default route's deletion is tried by
# the attack alone (the guest has none: the kernel answers ESRCH if the send passes).
NEWNEXTHOP, DELNEXTHOP, LOCAL = 104, 105, 2

def local(t, flags, seq):
    body = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 255, 4, 254, LOCAL, 0)  # local table, host
    body += struct.pack("=HH4s", 8, 1, socket.inet_aton("198.51.100.7"))  # RTA_DST
    body += struct.pack("=HHi", 8, 4, socket.if_nametoindex("lo"))         # RTA_OIF
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

def nexthop(t, flags, seq):
    body = struct.pack("=BBBBI", 2, 0, 4 if t == NEWNEXTHOP else 0, 0, 0)   # AF_INET
    body += struct.pack("=HHI", 8, 1, 32123)                               # NHA_ID
    if t == NEWNEXTHOP:
        body += struct.pack("=HH", 4, 4)                                   # NHA_BLACKHOLE
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

# s26: a unicast route put in the local table by RTA_TABLE (rtm_table 0: the kernel
# takes the attribute over the header's byte; the header alone was checked)
def ltable(t, flags, seq, table=255, dst="198.51.100.9", decoy=False):
    body = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 0, 4, 253, 1, 0)    # unspec table, link
    body += struct.pack("=HH4s", 8, 1, socket.inet_aton(dst))            # RTA_DST
    body += struct.pack("=HHi", 8, 4, socket.if_nametoindex("lo"))       # RTA_OIF
    if decoy:   # a main-table RTA_TABLE first: the kernel keeps the last, flags masked
        body += struct.pack("=HHI", 8, 15, 254)
        body += struct.pack("=HHI", 8, 15 | 0x4000, table)               # NLA_F_NET_BYTEORDER
    else:
        body += struct.pack("=HHI", 8, 15, table)                        # RTA_TABLE
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

for name, new, delete in (("local", local(NEWROUTE, REQ | ACK | CREATE_EXCL, 13),
                           local(DELROUTE, REQ | ACK, 14)),
                          ("ltable", ltable(NEWROUTE, REQ | ACK | CREATE_EXCL, 19),
                           ltable(DELROUTE, REQ | ACK, 20)),
                          ("ltable2", ltable(NEWROUTE, REQ | ACK | CREATE_EXCL, 22,
                                             dst="198.51.100.11", decoy=True),
                           ltable(DELROUTE, REQ | ACK, 23, dst="198.51.100.11", decoy=True)),
                          ("nexthop", nexthop(NEWNEXTHOP, REQ | ACK | CREATE_EXCL, 15),
                           nexthop(DELNEXTHOP, REQ | ACK, 16))):
    sent, ack, _ = talk(new, proto=NETLINK_ROUTE)
    print(f"{name}={sent} {name}ack={ack}")
    if sent == 0 and ack == 0:
        dsent, dack, _ = talk(delete, proto=NETLINK_ROUTE)
        print(f"{name}del={dsent} {name}delack={dack}")
if mode == "attack":
    body = struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 254, 0, 0, 1, 0)          # main, unicast, /0
    print("defdel=%d defdelack=%d" % talk(struct.pack("=IHHII", 16 + len(body), DELROUTE,
                                                      REQ | ACK, 17, 0) + body,
                                          proto=NETLINK_ROUTE)[:2])
    # s25 review: the default route's halves (0.0.0.0/1 dev lo: half of every address
    # looped back), a throw route, a rule and a nexthop deleted (neither exists: the
    # kernel answers ENOENT when the send passes)
    def1 = struct.pack("=BBBBBBBBI", 2, 1, 0, 0, 254, 4, 0, 1, 0)
    def1 += struct.pack("=HH4s", 8, 1, socket.inet_aton("0.0.0.0"))
    def1 += struct.pack("=HHi", 8, 4, socket.if_nametoindex("lo"))
    throw = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 254, 4, 0, 9, 0)
    throw += struct.pack("=HH4s", 8, 1, socket.inet_aton("192.0.2.77"))
    # s26 review: a plain unicast /32 through lo in the main table is refused too
    # (224 /8 routes replaced the default route, 16 a send; replaced when it passes)
    sent, ack, _ = talk(ltable(NEWROUTE, REQ | ACK | 0x500, 21, 254, "198.51.100.10"),
                        proto=NETLINK_ROUTE)
    print(f"mtable={sent} mtableack={ack}")
    for name, t, body in (("def1", NEWROUTE, def1), ("throw", NEWROUTE, throw),
                          ("delrule", DELRULE, rule(DELRULE, 0, 0, 1)[16:]),
                          ("delnexthop", DELNEXTHOP, nexthop(DELNEXTHOP, 0, 0)[16:])):
        sent, ack, _ = talk(struct.pack("=IHHII", 16 + len(body), t, REQ | ACK | CREATE_EXCL, 18, 0)
                            + body, proto=NETLINK_ROUTE)
        print(f"{name}={sent} {name}ack={ack}")
import ctypes, fcntl
class RtEntry(ctypes.Structure):
    _fields_ = [("pad1", ctypes.c_ulong), ("dst", ctypes.c_ubyte * 16),
                ("gateway", ctypes.c_ubyte * 16), ("genmask", ctypes.c_ubyte * 16),
                ("flags", ctypes.c_ushort), ("pad2", ctypes.c_short), ("pad3", ctypes.c_ulong),
                ("pad4", ctypes.c_void_p), ("metric", ctypes.c_short),
                ("dev", ctypes.c_char_p), ("mtu", ctypes.c_ulong), ("window", ctypes.c_ulong),
                ("irtt", ctypes.c_ushort)]

def sin(addr):
    return (ctypes.c_ubyte * 16)(*(struct.pack("=H2x4s", socket.AF_INET,
                                               socket.inet_aton(addr)) + b"\0" * 8))

e = RtEntry(dst=sin("198.51.100.0"), genmask=sin("255.255.255.0"), flags=0x1 | 0x200)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name, req in (("ioctl", 0x890B), ("ioctldel", 0x890C)):
    try:
        fcntl.ioctl(u, req, bytes(e))
        print(f"{name}=0")
    except OSError as ex:
        print(f"{name}={ex.errno}")
        break
# s25 review: the same ioctl as a 32-bit syscall (int 0x80: compat_sys_ioctl, whose
# hook is file_ioctl_compat on this kernel), its rtentry32 below 4 GiB
import mmap

def ioctl32(fd, req, rt):
    m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40,   # MAP_32BIT
                  prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    code = (b"\x53" + b"\xb8" + struct.pack("<I", 54) + b"\xbb" + struct.pack("<I", fd)
            + b"\xb9" + struct.pack("<I", req) + b"\xba" + struct.pack("<I", addr + 256)
            + b"\xcd\x80\x5b\xc3")                 # push rbx; ioctl by int 0x80; pop; ret
    m[0:len(code)] = code
    m[256:256 + len(rt)] = rt
    r = ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
    return -r if r < 0 else 0

rt32 = bytearray(96)
rt32[4:20] = struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton("198.51.101.0"))
rt32[36:52] = struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton("255.255.255.0"))
struct.pack_into("=H", rt32, 52, 0x1 | 0x200)
err = ioctl32(u.fileno(), 0x890B, bytes(rt32))
print(f"ioctl32={err}")
if err == 0:
    print("ioctl32del=%d" % ioctl32(u.fileno(), 0x890C, bytes(rt32)))
# s26: links, addresses, neighbours and traffic control (rtnetlink), each a no-op or
# undone when the kernel takes it: lo's MTU set to what it is, TEST-NET-2's .20 added
# to lo (deleted again), .21 removed (not there: the kernel answers EADDRNOTAVAIL),
# a neighbour deleted and lo's root qdisc deleted (neither exists); lo's flags set by
# SIOCSIFFLAGS to what they are (ifconfig's ioctl)
LO = socket.if_nametoindex("lo")
NEWLINK, NEWADDR, DELADDR, DELNEIGH, DELQDISC = 16, 20, 21, 29, 37

def rtm(t, flags, seq, body):
    return struct.pack("=IHHII", 16 + len(body), t, flags, seq, 0) + body

mtu = int(open("/sys/class/net/lo/mtu").read())
link = struct.pack("=BBHiII", 0, 0, 0, LO, 0, 0) + struct.pack("=HHI", 8, 4, mtu)  # IFLA_MTU

def ifaddr(a):
    return (struct.pack("=BBBBI", 2, 32, 0, 254, LO)                     # host scope
            + struct.pack("=HH4s", 8, 2, socket.inet_aton(a))             # IFA_LOCAL
            + struct.pack("=HH4s", 8, 1, socket.inet_aton(a)))            # IFA_ADDRESS

neigh = struct.pack("=BBHiHBB", 2, 0, 0, LO, 0, 0, 0) + struct.pack(
    "=HH4s", 8, 1, socket.inet_aton("198.51.100.22"))                     # NDA_DST
qdisc = struct.pack("=BBHiIII", 0, 0, 0, LO, 0, 0xFFFFFFFF, 0)            # TC_H_ROOT
for name, t, body in (("mtu", NEWLINK, link), ("addr", NEWADDR, ifaddr("198.51.100.20")),
                      ("deladdr", DELADDR, ifaddr("198.51.100.21")),
                      ("delneigh", DELNEIGH, neigh), ("delqdisc", DELQDISC, qdisc)):
    sent, ack, _ = talk(rtm(t, REQ | ACK | (CREATE_EXCL if t == NEWADDR else 0), 30, body),
                        proto=NETLINK_ROUTE)
    print(f"{name}={sent} {name}ack={ack}")
    if name == "addr" and sent == 0 and ack == 0:
        print("addrdel=%d addrdelack=%d" % talk(rtm(DELADDR, REQ | ACK, 31, body),
                                                proto=NETLINK_ROUTE)[:2])
# s26 review: a namespace id for the host's namespace (RTM_NEWNSID with NETNSA_FD),
# and a link deleted through IFLA_TARGET_NETNSID (index 999999: none; the kernel
# answers when the send passes) -- judged from any namespace: run inside
# `unshare -n` they reach the host's
try:
    nsfd = os.open("/proc/1/ns/net", os.O_RDONLY)
except PermissionError:   # a host that hides pid 1's: the hook judges the type alone
    nsfd = os.open("/proc/self/ns/net", os.O_RDONLY)
nsid = struct.pack("=B3x", 0) + struct.pack("=HHi", 8, 1, 4242) + struct.pack("=HHi", 8, 3, nsfd)
print("nsid=%d nsidack=%d" % talk(rtm(88, REQ | ACK, 32, nsid), proto=NETLINK_ROUTE)[:2])
tgt = struct.pack("=BBHiII", 0, 0, 0, 999999, 0, 0) + struct.pack("=HHi", 8, 46, 4242)
print("tgtlink=%d tgtlinkack=%d" % talk(rtm(17, REQ | ACK, 33, tgt), proto=NETLINK_ROUTE)[:2])
flags = fcntl.ioctl(u, 0x8913, struct.pack("16sH22x", b"lo", 0))       # SIOCGIFFLAGS
try:
    fcntl.ioctl(u, 0x8914, flags)                                        # SIOCSIFFLAGS
    print("ifflags=0")
except OSError as ex:
    print(f"ifflags={ex.errno}")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for name, level, opt in (("ipt", 0, 64), ("ip6t", 41, 64), ("ebt", 0, 128)):
    try:
        s.setsockopt(level, opt, b"\0" * 8)    # malformed: no table is replaced
        print(f"{name}=0")
    except OSError as e:
        print(f"{name}={e.errno}")
"""


def test_a_firewall_change_is_refused_and_a_listing_allowed_in_the_hook(env: Env) -> None:
    """T1562.004 (`iptables -F`): an nftables batch (iptables-nft, nft, ufw) from a /tmp
    tree is refused at netlink_send, a legacy table replace (setsockopt *_SO_SET_REPLACE,
    EBT_SO_SET_ENTRIES) at socket_setsockopt; a dump of the ruleset (a read) is sent.
    s24: an ipset change (`ipset del f2b-sshd <ip>`: no batch), one sent behind a dump
    in the same send (only the first message was judged), a blackhole route and a
    prohibit rule (traffic null-routed) are refused too.
    The refused batch only creates a table of the test's own (never a flush); a clean
    tree's same batch is sent (the table made and deleted again where nf_tables loads),
    its route and rule made and deleted again.  s26: a unicast route put in the local
    table by RTA_TABLE (the header's rtm_table 0) is refused, one whose RTA_TABLE names
    the main table is made."""
    py = env.root / "nft.py"
    py.write_text(_NFT)
    table = f"bastion_s23_{uuid.uuid4().hex[:8]}"
    sh = env.root / "drop" / "nft.sh"          # the /tmp script: python run by it
    sh.write_text(f"exec python3 {py} attack {table}\n")
    r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
    codes = _codes(r.stdout)
    EPERM = 1
    assert codes.get("newtable") == EPERM, r.stdout + r.stderr
    assert codes.get("list") == 0, r.stdout + r.stderr
    assert (codes.get("ipt"), codes.get("ip6t"), codes.get("ebt")) == (EPERM,) * 3, r.stdout
    assert (codes.get("ipset"), codes.get("hidden")) == (EPERM, EPERM), r.stdout
    assert (codes.get("blackhole"), codes.get("rule")) == (EPERM, EPERM), r.stdout
    # s25: a local route, a nexthop object, the default route's deletion, SIOCADDRT
    acts = ("local", "nexthop", "defdel", "def1", "throw", "delrule", "delnexthop", "ioctl",
            "ioctl32", "ltable", "ltable2", "mtable", "mtu", "addr", "deladdr", "delneigh",
            "delqdisc", "nsid", "tgtlink", "ifflags")
    assert [codes.get(k) for k in acts] == [EPERM] * len(acts), r.stdout + r.stderr
    assert "ioctldel" not in codes and "ioctl32del" not in codes, r.stdout
    recs = env.records(28)
    fw = [ev for ev in recs if ev.rule_id == abi.PgateClass.FIREWALL]
    H = abi.PgateHow
    assert sorted(ev.detail for ev in fw) == [H.NFT_BATCH, H.SOCKOPT, H.SOCKOPT, H.SOCKOPT,
                                              H.NFNL_WRITE, H.NFNL_WRITE, H.ROUTE, H.ROUTE,
                                              H.ROUTE, H.ROUTE, H.ROUTE, *[H.ROUTE] * 7,
                                              H.ROUTE_IOCTL, H.ROUTE_IOCTL, *[H.NETDEV] * 7,
                                              H.NETDEV_IOCTL], recs
    assert all(ev.action == "deny" and ev.enforced and ev.subject == abi.PROV_TMP_SCRIPT
               for ev in fw), fw
    assert len(recs) == len(fw), recs          # the listing made no record
    f = env.gate.finding(next(ev for ev in fw if ev.detail == H.NFT_BATCH))
    assert f is not None and f.rule == "bastion.provenance.gate" and f.action == "deny"
    assert f.evidence["class"] == "firewall" and f.evidence["operation"] == "firewall-change"
    assert f.evidence["prevented"].startswith("security-tool shutdown (firewall)"), f
    assert "T1562.004" in f.attack
    # a clean tree: the same acts reach the kernel (no EPERM, no record)
    r = run_in(env.cg, ["python3", str(py), "clean", table], timeout=60)
    codes = _codes(r.stdout)
    assert codes.get("newtable") == 0 and codes.get("list") == 0, r.stdout + r.stderr
    if codes.get("newack") == 0:                # nf_tables loaded: the table was made
        assert codes.get("have") == 1 and codes.get("delete") == 0, r.stdout
        assert codes.get("deleteack") == 0, r.stdout
    assert EPERM not in (codes.get("ipt"), codes.get("ip6t"), codes.get("ebt")), r.stdout
    assert (codes.get("ipset"), codes.get("hidden")) == (0, 0), r.stdout
    for name in ("blackhole", "rule", "local", "nexthop", "ltable", "ltable2"):   # made, deleted
        assert codes.get(name) == 0 and codes.get(f"{name}ack") == 0, r.stdout + r.stderr
        assert (codes.get(f"{name}del"), codes.get(f"{name}delack")) == (0, 0), r.stdout
    assert (codes.get("ioctl"), codes.get("ioctldel")) == (0, 0), r.stdout + r.stderr
    assert (codes.get("ioctl32"), codes.get("ioctl32del")) == (0, 0), r.stdout + r.stderr
    # s26: the link, address, neighbour, qdisc and interface-flag changes reach the
    # kernel (the address made and removed again; the others answered by the kernel)
    assert (codes.get("mtu"), codes.get("mtuack"), codes.get("ifflags")) == (0, 0, 0), r.stdout
    assert [codes.get(k) for k in ("addr", "addrack", "addrdel", "addrdelack")] == [0] * 4, \
        r.stdout + r.stderr
    assert [codes.get(k) for k in ("deladdr", "delneigh", "delqdisc", "nsid", "tgtlink")] == \
        [0] * 5, r.stdout
    assert EPERM not in [codes.get(f"{k}ack") for k in ("deladdr", "delneigh", "delqdisc")], \
        r.stdout
    assert env.records(0) == []


def _run_with_reasons(env: Env, command: str, reasons: int) -> str:
    """Run ``command`` in the test cgroup as a process whose provenance entry carries
    ``reasons`` (set before it runs); its stdout."""
    ready = env.root / f"ready-{reasons}"
    ready.unlink(missing_ok=True)
    p = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {env.cg}/cgroup.procs; echo $$ > {ready}; '
                          f'read go; exec {command}'], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 10
        while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < end:
            time.sleep(0.05)
        pid = int(ready.read_text())
        assert env.prov.add(pid, read_stat(pid).start_ns, reasons)
        out, _ = p.communicate("go\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return out


def test_a_firewall_change_from_an_admin_session_is_allowed_and_audited(env: Env) -> None:
    """The trust path of every other class: an administrator's session (admin-tty bit)
    running the /tmp script: the batch is sent (the test's table made and deleted), the
    setsockopts reach the kernel, each an `audit` record, nothing refused."""
    py = env.root / "nft.py"
    py.write_text(_NFT)
    table = f"bastion_s23_{uuid.uuid4().hex[:8]}"
    script = env.root / "drop" / "nft-admin.sh"
    script.write_text(f"exec python3 {py} clean {table}\n")
    out = _run_with_reasons(env, f"/bin/sh {script}", abi.PROV_ADMIN_TTY)
    codes = _codes(out)
    assert codes.get("newtable") == 0 and codes.get("list") == 0, out
    assert 1 not in (codes.get("ipt"), codes.get("ip6t"), codes.get("ebt")), out
    sent = ("ipset", "hidden", "blackhole", "rule", "local", "nexthop", "ioctl", "ioctl32",
            "ltable", "mtu", "addr", "deladdr", "delneigh", "delqdisc", "ifflags")
    assert all(k in codes and codes[k] != 1 for k in sent), out
    recs = env.records(4)
    fw = [ev for ev in recs if ev.rule_id == abi.PgateClass.FIREWALL]
    assert len(fw) >= 4 and all(ev.action == "audit" and not ev.enforced for ev in fw), recs
    f = env.gate.finding(fw[0])
    assert f is not None and f.action == "audit" and "administrator" in f.title, f


def test_a_firewall_change_in_a_network_namespace_of_its_own_is_not_refused(env: Env) -> None:
    """s23 review 5: only the host's firewall is refused.  The same /tmp script's batch
    and legacy replaces inside `unshare -n` (a namespace of its own: the host is not
    opened by anything it does there) reach the kernel; and a tree whose only reason is
    being a network service's (kube-proxy, calico: the firewall is their job) is left to
    the user-space rule."""
    py = env.root / "nft.py"
    py.write_text(_NFT)
    table = f"bastion_s23_{uuid.uuid4().hex[:8]}"
    sh = env.root / "drop" / "nft-netns.sh"
    sh.write_text(f"exec unshare -n python3 {py} clean {table}\n")
    r = run_in(env.cg, ["/bin/sh", str(sh)], timeout=60)
    codes = _codes(r.stdout)
    EPERM = 1
    assert codes.get("newtable") == 0 and codes.get("list") == 0, r.stdout + r.stderr
    assert EPERM not in (codes.get("ipt"), codes.get("ip6t"), codes.get("ebt")), r.stdout
    sent = ("ipset", "blackhole", "rule", "local", "nexthop", "ioctl", "ioctl32", "ltable",
            "mtu", "addr", "deladdr", "delneigh", "delqdisc", "ifflags")
    assert all(k in codes and codes[k] != EPERM for k in sent), r.stdout + r.stderr
    # s26 review: but a namespace id for the host's namespace, and a link message that
    # names another namespace, are judged from any namespace: refused
    assert (codes.get("nsid"), codes.get("tgtlink")) == (EPERM, EPERM), r.stdout + r.stderr
    recs = env.records(2)
    assert sorted(ev.detail for ev in recs) == [abi.PgateHow.NETDEV] * 2, recs
    assert all(ev.action == "deny" and ev.enforced for ev in recs), recs
    # a network service's own tree in the host's namespace
    out = _run_with_reasons(env, f"python3 {py} clean {table}", abi.PROV_NETWORK_SERVICE)
    codes = _codes(out)
    assert codes.get("newtable") == 0, out
    assert EPERM not in (codes.get("ipt"), codes.get("ip6t"), codes.get("ebt")), out
    assert EPERM not in (codes.get("ipset"), codes.get("blackhole"), codes.get("rule")), out
    assert env.records(0) == []
