"""Compat-tier parity of the provenance gate (s16-gate, issue 15).

1. The fanotify gate is marked again on the agent's tick: a must-stop object made
   after the start (a new ``~/.ssh`` in a home, a new home, a ``foo.service.d/``
   drop-in, a ``cron.d`` made later) is refused to an untrusted tree once a pass ran;
   before it the act went through (fanotify marks inodes: a grandchild of a marked
   directory raises no event).
2. Logs on compat: an overwriting open of a log (for writing without ``O_APPEND``, or
   with ``O_TRUNC``) by an untrusted tree is refused; appending and reading are not.

Scope: the objects are the default must-stop list laid out under the test's own root
(:func:`default_objects` with ``root``): every mark is on the test's inodes; the
provenance map's "temp dir" is the test's ``drop``; the gate acts in the test cgroup
only, with a dead-man deadline."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion.enforce.muststop import GateObject, default_objects
from bastion.enforce.provgate import REFRESH_RULE, AgentGate
from bastion.detect.engine import Finding
from bastion.policy.compile import kernel_dev
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup

DEADLINE_S = 90.0
TIMEOUT = 20
TICK_S = 0.3


class Env:
    def __init__(self, root: Path, cg: Path, part: AgentGate) -> None:
        self.root, self.cg, self.part = root, cg, part
        self.drop = root / "drop"
        self.findings: list[Finding] = []

    def tainted(self, body: str) -> subprocess.CompletedProcess[str]:
        """``body`` run by a script dropped in the temp dir (untrusted: tmp-script)."""
        p = self.drop / f"s{time.monotonic_ns()}.sh"
        p.write_text(body)
        return run_in(self.cg, ["/bin/sh", str(p)], timeout=TIMEOUT)

    def clean(self, body: str) -> subprocess.CompletedProcess[str]:
        return run_in(self.cg, ["/bin/sh", "-c", body], timeout=TIMEOUT)

    def wait_tick(self) -> None:
        """Drive the agent's tick until the gate made a pass (as the agent's loop does)."""
        n = self.part.refreshes + self.part.refresh_failures
        end = time.monotonic() + 10 * TICK_S + 5
        while self.part.refreshes + self.part.refresh_failures == n:
            assert time.monotonic() < end, "no re-mark pass within the interval"
            f = self.part.tick(time.monotonic())
            self.findings += [f] if f is not None else []
            time.sleep(TICK_S / 5)
        self.findings += self.part.wait_pass(10.0)   # the pass runs on its own thread


def _layout(root: Path) -> None:
    for d in ("drop", "etc/systemd/system", "home/bob", "root", "var/log/app"):
        (root / d).mkdir(parents=True)
    (root / "home/bob/.bashrc").write_text("# profile\n")
    (root / "etc/systemd/system/web.service").write_text("[Service]\n")
    (root / "var/log/app/app.log").write_text("line 1\n")
    (root / "var/log/syslog").write_text("boot\n")
    (root / "root/.bash_history").write_text("ls\n")
    (root / "home/bob/.bash_history").write_text("pwd\n")


@pytest.fixture
def env() -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="bgate-"))
    try:
        _layout(root)
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
            sensor.open()
            try:
                part = AgentGate(sensor.provenance, self_tgid=os.getpid(),
                                 deadline_s=DEADLINE_S, scope_cgroup_id=cgid,
                                 objects=lambda: default_objects(str(root)),
                                 tmp_dirs=[str(root / "drop")], refresh_s=TICK_S)
                try:
                    part.open()
                    assert part.unmarked == []
                    yield Env(root, cg, part)
                finally:
                    part.close()
            finally:
                sensor.close()
    finally:
        shutil.rmtree(root)


def _appended(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode == 0 and "Operation not permitted" not in r.stderr


def test_objects_made_after_the_start_are_refused_after_the_next_tick(env: Env) -> None:
    root = env.root
    assert env.part.tick(time.monotonic()) is None and env.part.refreshes == 0  # not due yet
    # made after the gate started: none of these inodes is marked
    keys_bob = root / "home/bob/.ssh/authorized_keys"       # a new ~/.ssh in a home
    keys_new = root / "home/carol/.ssh/authorized_keys"     # a new home
    dropin = root / "etc/systemd/system/web.service.d/override.conf"   # systemctl edit
    cron = root / "etc/cron.d/job"                          # a cron.d made later
    for p in (keys_bob, keys_new, dropin, cron):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("orig\n")
    targets = (keys_bob, keys_new, dropin, cron)
    # before a pass: the untrusted tree's write goes through (the attack of the row)
    for p in targets:
        r = env.tainted(f"echo before >> {p}\n")
        assert _appended(r), (p, r.stderr)
        assert p.read_text() == "orig\nbefore\n"
    env.wait_tick()
    assert env.findings == [] and env.part.last_refresh is not None
    assert env.part.last_refresh[3] == "" and "last re-mark" in env.part.refresh_state()
    for p in targets:
        r = env.tainted(f"echo after >> {p}\n")
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, (p, r.stderr)
        assert p.read_text() == "orig\nbefore\n"
    # the credential kind: reading the new authorized_keys is refused too
    r = env.tainted(f"cat {keys_new}\n")
    assert r.returncode != 0 and "orig" not in r.stdout
    # a clean tree (the administrator) is not looked at
    r = env.clean(f"echo admin >> {dropin}")
    assert r.returncode == 0 and dropin.read_text() == "orig\nbefore\nadmin\n"


def test_a_pass_writes_only_the_changes_and_drops_what_is_gone(env: Env) -> None:
    gate = env.part.gate
    assert gate is not None
    n0, added0 = gate.marked(), gate.marks_added
    env.wait_tick()                                   # nothing changed: nothing written
    assert gate.marked() == n0 and gate.marks_added == added0 and gate.marks_removed == 0
    ssh = env.root / "home/bob/.ssh"
    ssh.mkdir()
    env.wait_tick()
    assert gate.marked() == n0 + 1 and gate.marks_added == added0 + 1
    ssh.rmdir()
    env.wait_tick()
    assert gate.marked() == n0 and gate.marks_removed == 1
    # the refusal of the objects that stayed is unchanged
    r = env.tainted(f"echo x >> {env.root}/home/bob/.bashrc\n")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr


def test_a_failed_pass_keeps_every_mark_and_raises_a_high_alert(env: Env) -> None:
    gate = env.part.gate
    assert gate is not None
    n0 = gate.marked()
    bashrc = env.root / "home/bob/.bashrc"
    good = env.part._objects

    def broken() -> list[GateObject]:
        # an object the pass refuses (a profile directory that is a file): the pass fails
        return good() + [GateObject(str(bashrc), "profile-dir")]
    env.part._objects = broken
    (env.root / "home/bob/.ssh").mkdir()
    env.wait_tick()
    (f,) = env.findings
    assert f.rule == REFRESH_RULE and f.severity == "high"
    assert env.part.refresh_failures == 1 and "FAILED" in env.part.refresh_state()
    assert gate.marked() == n0
    r = env.tainted(f"echo x >> {bashrc}\n")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert bashrc.read_text() == "# profile\n"
    env.part._objects = good
    env.wait_tick()
    assert env.part.refreshes == 1 and gate.marked() == n0 + 1


def test_an_overwriting_open_of_a_log_is_refused_appending_is_not(env: Env) -> None:
    logs = [env.root / "var/log/app/app.log", env.root / "var/log/syslog",
            env.root / "root/.bash_history", env.root / "home/bob/.bash_history"]
    before = {p: p.read_text() for p in logs}
    for p in logs:
        for act in (f"echo wiped > {p}", f": > {p}", f"truncate -s 0 {p}",
                    f"dd if=/dev/null of={p}",
                    f"python3 -c \"open('{p}', 'r+').write('X')\""):
            r = env.tainted(act + "\n")
            assert r.returncode != 0 and "Operation not permitted" in r.stderr, (act, r.stderr)
            assert p.read_text() == before[p], act
        r = env.tainted(f"echo appended >> {p}\ncat {p}\n")
        assert r.returncode == 0, r.stderr
        assert r.stdout == before[p] + "appended\n"
    # a new log file made in a log directory without O_APPEND: nothing to wipe, allowed
    # and audited (s16-fixgate 5b; before: refused at its open)
    r = env.tainted(f"echo x > {env.root}/var/log/app/new.log\n")
    assert r.returncode == 0, r.stderr
    # logrotate-like truncation by a clean tree: allowed
    r = env.clean(f": > {logs[0]}")
    assert r.returncode == 0 and logs[0].read_text() == ""
    evs = env.part.gate.decisions(0.5) if env.part.gate is not None else []
    new = [d for d in evs if d.path.endswith("/new.log")]
    assert len(new) == 1 and new[0].action == "audit" and "empty" in new[0].why
    evs = [d for d in evs if d not in new]
    assert evs and all(d.kind == "log" and d.action == "deny" for d in evs)
    f = env.part.gate.finding(evs[0]) if env.part.gate is not None else None
    assert f is not None and f.severity == "critical" and "T1070.002" in f.attack
    assert f.title.startswith("Log overwrite refused")



@pytest.mark.parametrize("how", ["truncate", "ftruncate"])
def test_a_log_truncated_by_an_untrusted_tree_kills_the_tree(how: str) -> None:
    """Acts fanotify cannot refuse: ``truncate(2)`` by path, and ``ftruncate(2)`` through a
    descriptor opened ``O_APPEND`` (an open the gate allows).  The compat sensor reports
    them (``truncate``), the log-clearing rule stops the untrusted tree (critical,
    kill-tree).  Before: the sensor traced no truncate, nothing was reported and the tree
    lived.  The log is a file the test makes in /var/log (the rule's place) and removes."""
    _log_truncate(how, expect_kill=True)


def test_a_log_grown_by_ftruncate_is_not_a_truncate() -> None:
    """s16-fixlog, review 5a.  False alarm with a kill: a network daemon that
    preallocates or extends its log with ``ftruncate(fd, bigger)`` (mmap ring loggers)
    was reported as ``Log truncated`` and its tree killed (the record carried no length).
    The sensor now compares the length with the file's size at entry: growing (or
    keeping) the file is not reported.  Before: a critical kill-tree."""
    _log_truncate("grow", expect_kill=False)


def _log_truncate(how: str, expect_kill: bool) -> None:
    import signal
    import sys

    from bastion.detect.behavior import behavior_rules
    from bastion.detect.engine import Engine, RuleContext
    from bastion.proctable import ProcessTable
    from bastion.respond.dispatch import Dispatcher
    from bastion.sensors.provenance import default_interpreters

    root = Path(tempfile.mkdtemp(prefix="bgate-"))
    log_fd, log_name = tempfile.mkstemp(prefix="bastion-test-", suffix=".log", dir="/var/log")
    os.write(log_fd, b"evidence\n")
    os.close(log_fd)
    logp = Path(log_name)
    act = {"truncate": f"os.truncate({log_name!r}, 0)",
           "ftruncate": f"f = open({log_name!r}, 'a'); f.truncate(0)",
           "grow": f"f = open({log_name!r}, 'a'); f.truncate(1 << 20); f.truncate(1 << 20)"}[how]
    try:
        (root / "drop").mkdir()
        script = root / "drop" / "wipe.sh"
        script.write_text(f"{sys.executable} -c \"import os, time; {act}; time.sleep(20)\"\n")
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid)
            sensor.open()
            p = None
            try:
                prov = sensor.provenance()
                prov.set_dirs([str(root / "drop")])
                prov.set_interpreters(default_interpreters())
                procs, engine = ProcessTable(), Engine(behavior_rules())
                ctx, disp = RuleContext(procs), Dispatcher(procs)
                p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && "
                                      f"exec /bin/sh {script}"], stderr=subprocess.PIPE)
                alerts: list[dict[str, object]] = []
                end = time.monotonic() + (15 if expect_kill else 3)
                while time.monotonic() < end and not alerts:
                    for ev in sensor.poll(0.01) or []:
                        procs.update(ev)
                        ev = procs.enrich(ev)
                        for f in engine.evaluate(ev, ctx):
                            if f.rule == "behavior.log_clearing":
                                alerts.append(disp.dispatch(f, time.time_ns()).to_json())
                if not expect_kill:
                    assert not alerts, alerts
                    assert p.poll() is None       # the grower lives (sleeping)
                    assert not engine.errors
                    return
                assert alerts, "no log-clearing finding for the truncate"
                a = alerts[0]
                assert a["action"] == "kill-tree" and a["severity"] == "critical", a
                assert f"Log truncated: {log_name}" in str(a["title"])
                assert p.wait(5) == -signal.SIGKILL
                assert not engine.errors
            finally:
                if p is not None and p.poll() is None:
                    p.kill()
                if p is not None:
                    p.wait()
                sensor.close()
    finally:
        logp.unlink(missing_ok=True)
        shutil.rmtree(root)


MOUNT_SETATTR_NR, FSPICK_NR = 442, 433   # x86-64


def test_only_a_successful_mount_change_in_the_host_namespace_is_reported() -> None:
    """Item 3 (s16-gate): ``mount_setattr(MOUNT_ATTR_RDONLY)`` and ``fspick`` stop new log
    writes with no LSM hook on 6.1; the compat sensor reports them.  s16-fixlog (review 3):
    only a call that succeeded, in the host's mount namespace.  Attack: any user makes a
    failing ``mount_setattr("/var/log", RDONLY)`` or ``fspick("/")`` (EPERM) and each was a
    high log-clearing finding (pinned in the store, evicting queued rows).  Here: the
    test's own tmpfs made read-only and picked (root, host namespace: reported, no
    finding: it holds no log); as nobody, ``/var/log`` and ``/`` (EPERM: no record, no
    finding); as root, ``/var/log`` with an invalid size (EINVAL: none); in a mount
    namespace of the caller's own, its private tmpfs made read-only (none).  Before: the
    failed calls were records and high findings."""
    import sys

    from bastion.detect.behavior import behavior_rules
    from bastion.detect.engine import Engine, RuleContext
    from bastion.proctable import ProcessTable

    root = Path(tempfile.mkdtemp(prefix="bgate-"))
    priv = Path(tempfile.mkdtemp(prefix="bgate-ns-"))
    ms = (f"def ms(path, usize=32):\n"
          f"    return libc.syscall({MOUNT_SETATTR_NR}, -100, path, 0, ctypes.byref(attr), usize)\n"
          f"def fp(path):\n"
          f"    return libc.syscall({FSPICK_NR}, -100, path, 0)\n")
    head = ("import ctypes, os, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]\n"
            "attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)   # attr_set = MOUNT_ATTR_RDONLY\n" + ms)
    root_code = head + (
        "assert ms(ROOT) == 0, ctypes.get_errno()\n"
        "fd = fp(ROOT); assert fd >= 0, ctypes.get_errno(); os.close(fd)\n"
        "assert ms(b'/var/log', 0) == -1 and ctypes.get_errno() == 22\n")
    nobody_code = head + (
        "os.setgid(65534); os.setuid(65534)\n"
        "assert ms(b'/var/log') == -1 and ctypes.get_errno() == 1, ctypes.get_errno()\n"
        "assert fp(b'/') == -1 and ctypes.get_errno() == 1, ctypes.get_errno()\n")
    ns_code = head + (
        "assert libc.unshare(0x00020000) == 0, ctypes.get_errno()      # CLONE_NEWNS\n"
        "assert libc.mount(None, b'/', None, 0x4000 | 0x40000, None) == 0   # MS_REC|MS_PRIVATE\n"
        "assert libc.mount(b'none', PRIV, b'tmpfs', 0, None) == 0, ctypes.get_errno()\n"
        "assert ms(PRIV) == 0, ctypes.get_errno()\n")
    mounted = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "bgate", str(root)], check=True)
        mounted = True
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid)
            # the namespace this test runs in is the "host" one (a CI job may run in a
            # mount namespace of its own); the agent takes the initial one
            sensor.host_mnt_ns = os.stat("/proc/self/ns/mnt").st_ino
            sensor.open()
            try:
                procs, engine = ProcessTable(), Engine(behavior_rules())
                ctx = RuleContext(procs)
                for code in (root_code, nobody_code, ns_code):
                    code = code.replace("ROOT", repr(str(root).encode())).replace(
                        "PRIV", repr(str(priv).encode()))
                    r = run_in(cg, [sys.executable, "-c", code], timeout=TIMEOUT)
                    assert r.returncode == 0, r.stderr
                found = []
                seen: list[tuple[str, str, int]] = []
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    for ev in sensor.poll(0.05) or []:
                        procs.update(ev)
                        ev = procs.enrich(ev)
                        if ev.type in ("mount_setattr", "fspick"):
                            seen.append((ev.type, getattr(ev, "path", ""),
                                         getattr(ev, "mode", 0)))
                        found += [f for f in engine.evaluate(ev, ctx)
                                  if f.rule == "behavior.log_clearing"]
                assert seen == [("mount_setattr", str(root), 1), ("fspick", str(root), 0)], seen
                assert not found, [f.title for f in found]
                assert not engine.errors
            finally:
                sensor.close()
    finally:
        if mounted:
            subprocess.run(["umount", str(root)], check=True)
        shutil.rmtree(root)
        shutil.rmtree(priv)


def test_a_marked_tree_moved_away_is_unmarked_on_the_next_pass(env: Env) -> None:
    """Review fix (s16-fixgate, 2): `mv ~/.ssh ~/.junk/N; mkdir -p ~/.ssh/{1..N}` every
    pass left each moved tree's marks as orphans (removed by path: ESTALE) until the
    group's mark limit failed every pass.  The marks are removed through the inodes."""
    gate = env.part.gate
    assert gate is not None
    lis = gate.listener
    n0 = gate.marked()
    ssh = env.root / "home/bob/.ssh"
    for i in range(5):
        (ssh / str(i)).mkdir(parents=True)
    env.wait_tick()
    assert gate.marked() == n0 + 6
    junk = env.root / "home/bob/.junk"
    junk.mkdir()
    ssh.rename(junk / "0")
    env.wait_tick()
    assert gate.marked() == n0
    st = lis.stats()
    assert st["orphan_marks"] == 0 and st["handle_unmarks"] == 6, st
    # the moved tree is no object any more: its files are the user's (no event, allowed)
    (junk / "0/1/f").write_text("x\n")
    r = env.tainted(f"cat {junk}/0/1/f\n")
    assert r.returncode == 0, r.stderr


_OPENAT2 = """
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
how = ctypes.create_string_buffer(struct.pack("QQQ", {flags}, 0, 0))
fd = libc.syscall(437, ctypes.c_long(-100), sys.argv[1].encode(), how, ctypes.c_size_t(24))
sys.exit(0 if fd >= 0 else ctypes.get_errno())
"""


def test_log_opens_with_unknown_flags_and_histories_saved_by_their_program(env: Env) -> None:
    """s16-fixgate (8, 5b): an openat2 of a log (its flags unknown to the gate) was
    refused as a write; a new empty log file (rotation, os.Create) was refused; the
    owner's own python saving ~/.python_history was a critical "wipe".  All three
    allowed and audited; a history overwritten by another program stays refused."""
    gate = env.part.gate
    assert gate is not None
    log = env.root / "var/log/syslog"
    py = env.drop / "openat2.py"
    py.write_text(_OPENAT2.format(flags=os.O_RDONLY))
    r = env.tainted(f"python3 {py} {log}\n")
    assert r.returncode == 0, (r.returncode, r.stderr)
    hist = env.root / "home/bob/.python_history"
    hist.write_text("print(1)\n")
    r = env.tainted(f"python3 -c \"open('{hist}', 'w').write('print(2)')\"\n")
    assert r.returncode == 0, r.stderr
    assert hist.read_text() == "print(2)"
    r = env.tainted(f"cp /dev/null {hist}\n")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert hist.read_text() == "print(2)"
    ds = gate.decisions(0.5)
    got = {(os.path.basename(d.path), d.action) for d in ds}
    assert got == {("syslog", "audit"), (".python_history", "audit"),
                   (".python_history", "deny")}, ds
    audit = [d for d in ds if d.action == "audit" and d.path == str(log)][0]
    assert "flags unknown" in audit.why
    f = gate.finding(audit)
    assert f.severity == "high" and "flags unknown" in f.title
    assert any("own python" in d.why for d in ds)


def test_a_ssh_swapped_with_a_link_to_etc_in_a_loop_never_marks_etc(env: Env) -> None:
    """s16-fixgate (1): a user looping renameat2(RENAME_EXCHANGE) of ~/.ssh with a link
    to /etc: a pass that checked the path, then stat'ed and walked it again, marked /etc
    and its subdirectories as credential objects (every open under them refused).  The
    object is opened once without following a user's link and walked from its fds."""
    import ctypes
    import threading
    gate = env.part.gate
    assert gate is not None
    nobody = 65534
    home = env.root / "home/bob"
    os.chown(home, nobody, nobody)
    ssh, link = home / ".ssh", home / ".swap"
    (ssh / "keys").mkdir(parents=True)
    etc = env.root / "etc_target"
    for d in ("cron.d", "sudoers.d", "pam.d"):
        (etc / d).mkdir(parents=True)
    os.symlink(etc, link)
    os.lchown(link, nobody, nobody)
    bad = {(kernel_dev(os.stat(p).st_dev), os.stat(p).st_ino)
           for p in (etc, etc / "cron.d", etc / "sudoers.d", etc / "pam.d")}
    libc = ctypes.CDLL(None, use_errno=True)
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            if libc.renameat2(-100, bytes(ssh), -100, bytes(link), 2) == 0:  # RENAME_EXCHANGE
                swaps[0] += 1

    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    try:
        objs = [GateObject(str(ssh), "credential")]
        seen = 0
        for _ in range(300):
            gate.apply(objs)
            assert not bad & set(gate._marks), "a directory of the link's target was marked"
            seen += ssh in {Path(p) for p, _m in gate._marks.values()}
    finally:
        stop.set()
        t.join(5)
        if ssh.is_symlink():
            libc.renameat2(-100, bytes(ssh), -100, bytes(link), 2)
    assert swaps[0] > 100 and seen > 0, (swaps, seen)
