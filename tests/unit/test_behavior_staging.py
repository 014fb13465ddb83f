"""Account and credential databases staged into a file (issue 15, s16-stage): the
positives by structure (option tables, resolved paths, the kernel's fd 1 at exec) and
the benign look-alikes that must stay silent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.staging import copy_of, db_severity
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import ExecEvent, Proc
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all
from support.trust import RecordedTrust, path_ino


class Rec:
    """exec/open/exit events with the kernel's fd 0/1 kinds."""

    def __init__(self) -> None:
        self.n = 0
        self.lines: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[int, str]] = {}
        self.exec(1, 0, "/sbin/init", ["/sbin/init"])
        self.exec(100, 1, "/usr/bin/bash", ["-bash"])

    def _hdr(self, pid: int) -> dict[str, Any]:
        self.n += 1
        ppid, exe = self.procs[pid]
        return {"time": "2026-01-01T00:00:%02d.%06dZ" % divmod(self.n * 10000, 1_000_000),
                "pid": pid, "tid": pid, "ppid": ppid, "uid": 0, "euid": 0, "gid": 0,
                "cgroup_id": 1, "comm": exe.rsplit("/", 1)[1][:15], "start_ns": pid * 1000,
                "exe": exe}

    def exec(self, pid: int, ppid: int, exe: str, argv: list[str], stdin: str = "tty",
             stdout: str = "tty", cwd: str = "/root", ino: int = 0) -> "Rec":
        self.procs[pid] = (ppid, exe)
        self.lines.append({"type": "exec", **self._hdr(pid), "filename": exe, "cwd": cwd,
                           "argv": argv, "exe_dev": 1, "exe_ino": ino or path_ino(exe),
                           "exe_nlink": 1, "stdin": stdin, "stdout": stdout})
        return self

    def redirect(self, pid: int, path: str) -> "Rec":
        """The shell's fork opening ``> path`` before it execs (pid runs the shell)."""
        self.procs.setdefault(pid, (100, "/usr/bin/bash"))
        self.lines.append({"type": "open", **self._hdr(pid), "path": path, "path2": "",
                           "flags": 0o1101, "mode": 0o644, "owner_uid": -1, "owner_gid": -1,
                           "dev": 1, "ino": 77})
        return self

    def read(self, pid: int, path: str, sensitive: str) -> "Rec":
        self.lines.append({"type": "open", **self._hdr(pid), "path": path, "path2": "",
                           "flags": 0, "mode": 0, "owner_uid": -1, "owner_gid": -1,
                           "dev": 1, "ino": 5, "sensitive": sensitive, "sensitive_id": 1})
        return self

    def exit(self, pid: int) -> "Rec":
        self.lines.append({"type": "exit", **self._hdr(pid), "exit_code": 0, "signal": 0,
                           "status": 0})
        return self

    def run(self, tmp: Path, trusted: dict[str, str] | None = None) -> list[Finding]:
        p = tmp / "rec.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in self.lines))
        procs, trust = ProcessTable(), RecordedTrust()
        engine = Engine(behavior_rules(trust=trust))
        ctx = RuleContext(procs)
        out: list[Finding] = []
        for ev in read_all(p):
            trust.learn(ev)
            procs.update(ev)
            out += engine.evaluate(ev, ctx)
        assert not engine.errors, engine.disabled
        return out


def of(found: list[Finding], rule: str) -> list[Finding]:
    return [f for f in found if f.rule == f"behavior.{rule}"]


def ex(exe: str, argv: list[str], cwd: str = "/root") -> ExecEvent:
    return ExecEvent(time_ns=1, proc=Proc(pid=5, tid=5, ppid=1, uid=0, euid=0, gid=0,
                                          cgroup_id=1, comm="x", exe=exe), argv=tuple(argv),
                     cwd=cwd)


@pytest.mark.parametrize("exe,argv,sources,dest", [
    ("/usr/bin/cp", ["cp", "-p", "/etc/shadow", "/tmp/s"], ("/etc/shadow",), "/tmp/s"),
    ("/usr/bin/cp", ["cp", "-t", "/dev/shm", "/etc/passwd", "/etc/group"],
     ("/etc/passwd", "/etc/group"), "/dev/shm"),
    ("/usr/bin/cp", ["cp", "--suffix", "/etc/shadow", "a", "b"], ("a",), "b"),   # a value, not a file
    ("/usr/bin/install", ["install", "-m", "0644", "/etc/gshadow", "/var/tmp/g"],
     ("/etc/gshadow",), "/var/tmp/g"),
    ("/usr/bin/dd", ["dd", "if=/etc/shadow", "of=/tmp/d", "bs=1k"], ("/etc/shadow",), "/tmp/d"),
    ("/usr/bin/tar", ["tar", "czf", "/tmp/a.tgz", "etc/shadow"], ("etc/shadow",), "/tmp/a.tgz"),
    ("/usr/bin/tar", ["tar", "-C", "/etc", "-c", "-f", "/tmp/a.tar", "passwd"], ("passwd",),
     "/tmp/a.tar"),
    ("/usr/bin/tar", ["tar", "-tf", "/tmp/a.tar", "etc/shadow"], None, None),   # a listing
    ("/usr/bin/rsync", ["rsync", "-a", "--exclude", "/etc/shadow", "/etc/group", "/tmp/"],
     ("/etc/group",), "/tmp/"),
    ("/usr/bin/xxd", ["xxd", "/etc/sudoers", "/tmp/h"], ("/etc/sudoers",), "/tmp/h"),
    ("/usr/bin/grep", ["grep", "/etc/passwd", "notes.txt"], ("notes.txt",), None),  # a pattern
    ("/usr/bin/grep", ["grep", "-e", "root", "/etc/passwd"], ("/etc/passwd",), None),
    ("/usr/bin/grep", ["grep", "-c", "root", "/etc/passwd"], None, None),         # a count
    ("/usr/bin/awk", ["awk", "-F:", "{print $1}", "/etc/passwd"], ("/etc/passwd",), None),
    ("/usr/bin/gzip", ["gzip", "/etc/shadow"], (), None),                         # in place, no -c
    ("/usr/bin/gzip", ["gzip", "-9c", "/etc/shadow"], ("/etc/shadow",), None),
    ("/usr/bin/head", ["head", "-5", "/etc/group"], ("/etc/group",), None),
    ("/usr/bin/head", ["head", "-n", "/etc/group"], (), None),                   # -n's value
])
def test_option_tables(exe: str, argv: list[str], sources: tuple[str, ...] | None,
                       dest: str | None) -> None:
    cp = copy_of(ex(exe, argv))
    if sources is None:
        assert cp is None
        return
    assert cp is not None and (cp.sources, cp.dest) == (sources, dest)


def test_paths_by_resolution_not_substring() -> None:
    assert db_severity("/etc/passwd") == "medium" and db_severity("/etc/shadow") == "high"
    assert db_severity("/etc/sudoers.d/90-x") == "high"
    assert db_severity("/home/u/etc/passwd") is None and db_severity("/etc/passwd.bak") is None


def test_cat_redirected_into_tmp(tmp_path: Path) -> None:
    """``cat /etc/passwd > /tmp/x`` (medium) and a relative ``cat passwd`` from /etc into a
    home dir: fd 1 is a regular file, the redirect's path comes from the shell's open."""
    r = Rec().redirect(200, "/tmp/x").exec(200, 100, "/usr/bin/cat", ["cat", "/etc/passwd"],
                                           stdout="file")
    r.redirect(201, "/home/u/.g").exec(201, 100, "/usr/bin/cat", ["cat", "group"], stdout="file",
                                       cwd="/etc")
    got = of(r.run(tmp_path), "account_staging")
    assert [(f.pid, f.severity, f.evidence["dest"]) for f in got] == [
        (200, "medium", "/tmp/x"), (201, "medium", "/home/u/.g")]


def test_absent_master_passwd_is_the_attempt(tmp_path: Path) -> None:
    """``cat /etc/master.passwd > /tmp/x`` on Linux: nothing read, the attempt is
    alerted (high); sudo's child inherits the redirect."""
    r = Rec().redirect(200, "/tmp/m").exec(200, 100, "/usr/bin/sudo", ["sudo", "cat", "x"],
                                           stdout="file")
    r.exec(201, 200, "/usr/bin/cat", ["cat", "/etc/master.passwd"], stdout="file")
    got = of(r.run(tmp_path), "account_staging")
    assert [(f.pid, f.severity, f.evidence["dest"]) for f in got] == [(201, "high", "/tmp/m")]


def test_shadow_is_not_alerted_twice(tmp_path: Path) -> None:
    """``cat /etc/shadow > /tmp/s``: credential_access raises high on the read, this rule
    stays silent; ``rsync /etc/shadow /tmp/s`` (a reader credential_access trusts) is
    raised by this rule at the reader's exit."""
    r = Rec().redirect(200, "/tmp/s").exec(200, 100, "/usr/bin/cat", ["cat", "/etc/shadow"],
                                           stdout="file")
    r.read(200, "/etc/shadow", "credentials").exit(200)
    r.exec(300, 100, "/usr/bin/rsync", ["rsync", "/etc/shadow", "/tmp/s2"])
    r.read(300, "/etc/shadow", "credentials").exit(300)
    found = r.run(tmp_path)
    assert [f.event.proc.pid for f in of(found, "credential_access")] == [200]
    got = of(found, "account_staging")
    assert [(f.pid, f.severity, f.evidence["dest"]) for f in got] == [(300, "high", "/tmp/s2")]


def test_pipeline_into_a_file(tmp_path: Path) -> None:
    """``cat /etc/passwd | base64 > /tmp/b`` and ``cat /etc/group | gzip -c | tee /tmp/z``,
    in either exec order; ``cat /etc/passwd | grep x`` to a terminal stays silent."""
    r = Rec().exec(200, 100, "/usr/bin/cat", ["cat", "/etc/passwd"], stdout="pipe:[9]")
    r.redirect(201, "/tmp/b").exec(201, 100, "/usr/bin/base64", ["base64"], stdin="pipe:[9]",
                                   stdout="file")
    r.exec(301, 100, "/usr/bin/tee", ["tee", "/tmp/z"], stdin="pipe:[12]", stdout="tty")
    r.exec(302, 100, "/usr/bin/gzip", ["gzip", "-c"], stdin="pipe:[11]", stdout="pipe:[12]")
    r.exec(300, 100, "/usr/bin/cat", ["cat", "/etc/group"], stdout="pipe:[11]")
    r.exec(400, 100, "/usr/bin/cat", ["cat", "/etc/passwd"], stdout="pipe:[20]")
    r.exec(401, 100, "/usr/bin/grep", ["grep", "x"], stdin="pipe:[20]", stdout="tty")
    got = of(r.run(tmp_path), "account_staging")
    assert sorted((f.pid, f.evidence["dest"]) for f in got) == [(200, "/tmp/b")]


def test_copies_by_structure(tmp_path: Path) -> None:
    r = Rec().exec(200, 100, "/usr/bin/cp", ["cp", "/etc/sudoers", "/dev/shm/.s"])
    r.exec(201, 100, "/usr/bin/dd", ["dd", "if=/etc/master.passwd", "of=/var/tmp/m"])
    r.exec(202, 100, "/usr/bin/tar", ["tar", "-C", "/etc", "-cf", "/tmp/a.tar", "passwd"])
    got = of(r.run(tmp_path), "account_staging")
    assert [(f.pid, f.severity) for f in got] == [(200, "high"), (201, "high"), (202, "medium")]


def test_benign_look_alikes_stay_silent(tmp_path: Path) -> None:
    """``getent passwd`` to a file, ``cat /etc/passwd`` to a terminal or a pipe, a
    backup next to the original in /etc or /var/backups, ``cp -a /etc /backup`` (a
    directory: not the file), ``grep -c`` of passwd into a file, a path that merely
    contains the name, ``gzip`` without -c."""
    r = Rec().redirect(200, "/tmp/u").exec(200, 100, "/usr/bin/getent", ["getent", "passwd"],
                                           stdout="file")
    r.exec(201, 100, "/usr/bin/cat", ["cat", "/etc/passwd"])
    r.exec(202, 100, "/usr/bin/cat", ["cat", "/etc/passwd"], stdout="pipe:[3]")
    r.exec(203, 100, "/usr/bin/cp", ["cp", "/etc/passwd", "/etc/passwd.bak"])
    r.exec(204, 100, "/usr/bin/cp", ["cp", "-a", "/etc/group", "/var/backups/group.bak"])
    r.exec(205, 100, "/usr/bin/cp", ["cp", "-a", "/etc", "/backup"])
    r.redirect(206, "/tmp/n").exec(206, 100, "/usr/bin/grep", ["grep", "-c", "x", "/etc/passwd"],
                                   stdout="file")
    r.exec(207, 100, "/usr/bin/cp", ["cp", "/srv/etc/passwd", "/tmp/p"])
    r.exec(208, 100, "/usr/bin/tar", ["tar", "-C", "/etc", "-cf", "/tmp/e.tar", "."])
    got = of(r.run(tmp_path), "account_staging")
    assert got == []


def test_package_and_backup_trees_by_inode(tmp_path: Path) -> None:
    """A maintainer script under dpkg and a backup tool copying the account files are
    trusted by executable inode; a ``dpkg`` in /tmp is trusted as nothing."""
    r = Rec().exec(200, 1, "/usr/bin/dpkg", ["dpkg", "-i", "x.deb"], ino=7001)
    r.exec(201, 200, "/usr/bin/dash", ["/bin/sh", "/var/lib/dpkg/info/x.postinst"], ino=7002)
    r.exec(202, 201, "/usr/bin/cp", ["cp", "/etc/passwd", "/tmp/pw.save"], ino=7003)
    r.exec(300, 1, "/usr/bin/rsnapshot", ["rsnapshot", "daily"], ino=7004)
    r.exec(301, 300, "/usr/bin/rsync", ["rsync", "-a", "/etc/shadow", "/backup/daily/"], ino=7005)
    r.exit(301)
    r.exec(400, 100, "/tmp/dpkg", ["dpkg"], ino=7006)
    r.exec(401, 400, "/usr/bin/cp", ["cp", "/etc/passwd", "/tmp/pw.save"], ino=7003)
    got = of(r.run(tmp_path), "account_staging")
    assert [f.pid for f in got] == [401]


def test_padding_read_through_the_parent_when_the_writer_is_gone(tmp_path: Path) -> None:
    """``truncate -s +1 prog`` exits before the rule reads ``prog`` through its root: the
    nearest live ancestor's root answers (s16-stage); a file created by the open (O_EXCL: ``cp``'s new
    copy) is never padding, whoever answers."""
    from bastion.detect.behavior import Probes
    asked: list[int] = []

    def elf(pid: int, path: str) -> bool | None:
        asked.append(pid)
        return None if pid != 100 else True          # only the script (pid 100) is alive

    r = Rec().exec(200, 100, "/usr/bin/cp", ["cp", "/bin/true", "/tmp/p"])
    r.lines.append({"type": "open", **r._hdr(200), "path": "/tmp/p", "path2": "",
                    "flags": 0o301, "mode": 0o755, "owner_uid": -1, "owner_gid": -1,
                    "dev": 1, "ino": 8})                      # O_WRONLY|O_CREAT|O_EXCL
    r.exec(201, 100, "/usr/bin/truncate", ["truncate", "-s", "+1", "/tmp/p"])
    r.lines.append({"type": "open", **r._hdr(201), "path": "/tmp/p", "path2": "",
                    "flags": 0o4101, "mode": 0o666, "owner_uid": -1, "owner_gid": -1,
                    "dev": 1, "ino": 8})                      # O_WRONLY|O_CREAT|O_NONBLOCK
    # its ``sh -c`` gone too: the nearest live ancestor (the script, 100) answers
    r.exec(210, 100, "/usr/bin/dash", ["sh", "-c", "truncate -s +1 /tmp/p; echo"])
    r.exec(211, 210, "/usr/bin/truncate", ["truncate", "-s", "+1", "/tmp/p"])
    r.lines.append({"type": "open", **r._hdr(211), "path": "/tmp/p", "path2": "",
                    "flags": 0o4101, "mode": 0o666, "owner_uid": -1, "owner_gid": -1,
                    "dev": 1, "ino": 8})
    p = tmp_path / "rec.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in r.lines))
    procs, trust = ProcessTable(), RecordedTrust()
    def ident(pid: int, path: str) -> tuple[int, int, bool | None] | None:
        if pid != 100:
            return None                               # gone
        asked.append(pid)                             # its verdict on the same fd
        return (1, 8, True)

    engine = Engine(behavior_rules(probes=Probes(elf_exec=elf, file_ident=ident),
                                   trust=trust))
    ctx = RuleContext(procs)
    found: list[Finding] = []
    for ev in read_all(p):
        trust.learn(ev)
        procs.update(ev)
        found += engine.evaluate(ev, ctx)
    got = of(found, "binary_padding")
    assert [(f.event.proc.pid, f.evidence["path"]) for f in got] == [(201, "/tmp/p"),
                                                                      (211, "/tmp/p")]
    assert asked == [201, 100, 211, 100]      # 210 gone: its identity unknown, not asked


def test_discovery_of_an_ordinary_script_needs_four(tmp_path: Path) -> None:
    """An installer in /opt asking three facts stays silent, four raise the burst; a
    script in /var/tmp asking three stays silent too (a temp dir alone does not lower
    the threshold: installers run from /tmp ask the architecture and the uid)."""
    r = Rec().exec(300, 100, "/usr/bin/bash", ["bash", "/opt/app/install.sh"])
    for pid, argv in ((301, ["uname", "-m"]), (302, ["id", "-u"]), (303, ["hostname"])):
        r.exec(pid, 300, f"/usr/bin/{argv[0]}", argv)
    r.exec(400, 100, "/usr/bin/bash", ["bash", "/opt/app/survey.sh"])
    for pid, argv in ((401, ["uname", "-m"]), (402, ["id", "-u"]), (403, ["hostname"]),
                      (404, ["ps", "-e"])):
        r.exec(pid, 400, f"/usr/bin/{argv[0]}", argv)
    r.exec(500, 100, "/usr/bin/bash", ["bash", "/var/tmp/s.sh"])
    for pid, argv in ((501, ["uname", "-m"]), (502, ["id", "-u"]), (503, ["hostname"])):
        r.exec(pid, 500, f"/usr/bin/{argv[0]}", argv)
    got = of(r.run(tmp_path), "discovery_burst")
    assert [(f.pid, len(f.evidence["facts"]), "provenance" in f.evidence) for f in got] == [
        (400, 4, False)], [f.title for f in got]


def test_discovery_of_a_network_service_tree_counts_its_tree(tmp_path: Path) -> None:
    """A web service (it listens) running ``system("id")`` and ``system("uname -a")``: two
    ``sh -c`` scripts, one untrusted tree (the service) -> one medium on the service; the
    same two commands from an application that never listened stay silent."""
    r = Rec().exec(600, 100, "/usr/bin/python3", ["python3", "/srv/app.py"])
    r.lines.append({"type": "listen", **r._hdr(600), "family": "inet", "protocol": "tcp",
                    "saddr": "0.0.0.0", "sport": 8080, "daddr": "", "dport": 0, "backlog": 5})
    r.exec(601, 600, "/usr/bin/dash", ["sh", "-c", "id"])
    r.exec(601, 600, "/usr/bin/id", ["id"])
    r.exec(602, 600, "/usr/bin/dash", ["sh", "-c", "uname -a"])
    r.exec(602, 600, "/usr/bin/uname", ["uname", "-a"])
    r.exec(700, 100, "/usr/bin/python3", ["python3", "/srv/batch.py"])
    r.exec(701, 700, "/usr/bin/dash", ["sh", "-c", "id"])
    r.exec(701, 700, "/usr/bin/id", ["id"])
    r.exec(702, 700, "/usr/bin/dash", ["sh", "-c", "uname -a"])
    r.exec(702, 700, "/usr/bin/uname", ["uname", "-a"])
    got = of(r.run(tmp_path), "discovery_burst")
    assert [(f.pid, f.evidence["facts"], list(f.evidence["provenance"])) for f in got] == [
        (600, ["id", "uname"], ["network-service"])], [f.title for f in got]


def test_discovery_reason_at_the_deepest_inherited_level(tmp_path: Path) -> None:
    """s16-fixdet (review 12): a network service 16 levels above the discovery commands
    (the deepest ancestor Provenance.reasons inherits from): its tree is found, not
    dropped; with the service 17 levels above, no reason reaches them and the script's
    own count (four) applies, so two facts stay silent."""
    for depth, want in ((16, [(600, ["id", "uname"])]), (17, [])):
        r = Rec().exec(600, 100, "/usr/bin/python3", ["python3", "/srv/app.py"])
        r.lines.append({"type": "listen", **r._hdr(600), "family": "inet", "protocol": "tcp",
                        "saddr": "0.0.0.0", "sport": 8080, "daddr": "", "dport": 0,
                        "backlog": 5})
        parent = 600
        for pid in range(601, 600 + depth):
            r.exec(pid, parent, "/usr/bin/dash", ["sh", "-c", f"level {pid}"])
            parent = pid
        r.exec(800, parent, "/usr/bin/id", ["id"])
        r.exec(801, parent, "/usr/bin/uname", ["uname", "-a"])
        got = of(r.run(tmp_path), "discovery_burst")
        assert [(f.pid, f.evidence["facts"]) for f in got] == want, (depth, [f.title for f in got])


def test_discovery_falls_back_to_the_script_count(tmp_path: Path) -> None:
    """s16-fixdet (review 12): a reason on an ancestor the per-process walk does not see
    as its own (inherited only) must not silence the script's ordinary four-fact count."""
    from bastion.detect.behavior.rules import DiscoveryBurst
    r = Rec().exec(400, 100, "/usr/bin/bash", ["bash", "/opt/app/survey.sh"])
    for pid, argv in ((401, ["uname", "-m"]), (402, ["id", "-u"]), (403, ["hostname"]),
                      (404, ["ps", "-e"])):
        r.exec(pid, 400, f"/usr/bin/{argv[0]}", argv)
    p = tmp_path / "rec.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in r.lines))
    procs = ProcessTable()
    rules = behavior_rules(trust=RecordedTrust())
    burst = next(x for x in rules if isinstance(x, DiscoveryBurst))
    assert burst.prov is not None
    # a reason the actor inherits but no process within the walk carries itself
    burst.prov.reasons = lambda ev, ctx, depth=16: ({"network-service": "x"}, None)  # type: ignore[method-assign]
    engine = Engine(rules)
    ctx = RuleContext(procs)
    found: list[Finding] = []
    for ev in read_all(p):
        procs.update(ev)
        found += engine.evaluate(ev, ctx)
    assert [(f.pid, len(f.evidence["facts"])) for f in of(found, "discovery_burst")] == [
        (400, 4)]


def test_padding_fallback_stops_at_another_mount_namespace(tmp_path: Path) -> None:
    """s16-fixdet (review 13): a container's ``truncate -s +1 /usr/bin/p`` (its ``sh -c``
    gone too): the nearest live ancestor is the container's shim, whose root shows the
    HOST's /usr/bin/p (another inode): the host file is not judged for the container's
    write -- the walk stops there.  The same walk whose ancestor shows the written inode
    answers (the other test); without the identity probe no ancestor is asked."""
    from bastion.detect.behavior import Probes
    asked: list[int] = []

    def elf(pid: int, path: str) -> bool | None:
        asked.append(pid)
        return None if pid != 100 else True          # only the shim (pid 100) is alive

    r = Rec().exec(210, 100, "/usr/bin/dash", ["sh", "-c", "truncate -s +1 /usr/bin/p"])
    r.exec(211, 210, "/usr/bin/truncate", ["truncate", "-s", "+1", "/usr/bin/p"])
    r.lines.append({"type": "open", **r._hdr(211), "path": "/usr/bin/p", "path2": "",
                    "flags": 0o4101, "mode": 0o666, "owner_uid": -1, "owner_gid": -1,
                    "dev": 41, "ino": 8})                    # the container's overlay inode
    p = tmp_path / "rec.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in r.lines))
    for ident in ((lambda pid, path: (1, 8, True) if pid == 100 else None), None):
        asked.clear()
        procs, trust = ProcessTable(), RecordedTrust()
        engine = Engine(behavior_rules(probes=Probes(elf_exec=elf, file_ident=ident),
                                       trust=trust))
        ctx = RuleContext(procs)
        found: list[Finding] = []
        for ev in read_all(p):
            trust.learn(ev)
            procs.update(ev)
            found += engine.evaluate(ev, ctx)
        assert of(found, "binary_padding") == []
        assert asked == [211]                             # the writer only, never the shim


MOUNTINFO = (
    "49 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "75 49 0:42 / /sbx/m rw,relatime - overlay overlay rw,lowerdir=/,upperdir=/t/u,workdir=/t/w\n"
    "76 75 0:43 / /sbx/m/tmp rw - tmpfs tmp rw\n")


def test_padding_identity_names_the_mount_superblock(tmp_path: Path) -> None:
    """s17-pad: the fallback's identity is the mount's superblock dev (mountinfo's
    major:minor, kernel-encoded like the sensor's ``i_sb->s_dev``), not ``lstat``'s
    ``st_dev`` (overlayfs reports a non-directory's layer dev there); a mount not
    listed: unknown.  Live on a plain file it equals lstat's; a FIFO is looked up
    without being opened (O_PATH: no wait on a writer)."""
    import os
    from bastion.abi import kernel_dev
    from bastion.detect.behavior.rules import fdinfo_fields, file_ident, mount_dev
    assert mount_dev(MOUNTINFO.encode(), 75) == (0 << 20) | 42
    assert mount_dev(MOUNTINFO.encode(), 49) == (254 << 20) | 0
    assert mount_dev(MOUNTINFO.encode(), 77) is None
    assert fdinfo_fields("pos:\t0\nflags:\t012400000\nmnt_id:\t75\nino:\t8\n") == {
        "pos": "0", "flags": "012400000", "mnt_id": "75", "ino": "8"}
    prog = tmp_path / "p"
    prog.write_bytes(b"\x7fELF")
    st = os.lstat(prog)
    assert file_ident(os.getpid(), str(prog)) == (kernel_dev(st.st_dev), st.st_ino, False)
    os.mkfifo(tmp_path / "f")
    st = os.lstat(tmp_path / "f")
    assert file_ident(os.getpid(), str(tmp_path / "f")) == (kernel_dev(st.st_dev), st.st_ino,
                                                            False)
    assert file_ident(os.getpid(), str(tmp_path / "gone")) is None
    assert file_ident(os.getpid(), "relative") is None


def test_touch_is_no_padding(tmp_path: Path) -> None:
    """``touch -r ref prog`` opens the program for writing without truncation (to create
    it when absent) and writes nothing: not binary padding, by touch's inode."""
    from bastion.detect.behavior import Probes
    r = Rec().exec(220, 100, "/usr/bin/touch", ["touch", "-r", "/usr/sbin/cron", "/usr/bin/p"])
    r.lines.append({"type": "open", **r._hdr(220), "path": "/usr/bin/p", "path2": "",
                    "flags": 0o4501, "mode": 0o666, "owner_uid": -1, "owner_gid": -1,
                    "dev": 1, "ino": 9})
    p = tmp_path / "rec.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in r.lines))
    procs, trust = ProcessTable(), RecordedTrust()
    engine = Engine(behavior_rules(probes=Probes(elf_exec=lambda pid, path: True), trust=trust))
    ctx = RuleContext(procs)
    found: list[Finding] = []
    for ev in read_all(p):
        trust.learn(ev)
        procs.update(ev)
        found += engine.evaluate(ev, ctx)
    assert of(found, "binary_padding") == []


# ---- s16-fixdet (review 11): getopt_long prefixes, symlinked sources ---------------------

@pytest.mark.parametrize("exe,argv,sources,dest", [
    ("/usr/bin/cp", ["cp", "--target=/tmp/x", "/etc/shadow"], ("/etc/shadow",), "/tmp/x"),
    ("/usr/bin/cp", ["cp", "--targ", "/tmp/x", "/etc/shadow"], ("/etc/shadow",), "/tmp/x"),
    ("/usr/bin/cp", ["cp", "--suf", "/etc/shadow", "a", "b"], ("a",), "b"),
    ("/usr/bin/cp", ["cp", "--no-p", "mode", "/etc/shadow", "/tmp/s"], ("/etc/shadow",),
     "/tmp/s"),
    ("/usr/bin/cp", ["cp", "--s", "x", "/etc/shadow", "/tmp/s"], None, None),  # ambiguous: refused
    ("/usr/bin/install", ["install", "--target=/tmp/x", "/etc/gshadow"], ("/etc/gshadow",),
     "/tmp/x"),
    ("/usr/bin/tee", ["tee", "--output-error", "/tmp/z"], (), "/tmp/z"),
])
def test_long_option_prefixes(exe: str, argv: list[str], sources: tuple[str, ...] | None,
                              dest: str | None) -> None:
    cp = copy_of(ex(exe, argv))
    if sources is None:
        assert cp is None
        return
    assert cp is not None and (cp.sources, cp.dest) == (sources, dest)


def test_symlinked_source_by_the_kernels_open(tmp_path: Path) -> None:
    """``ln -s /etc/sudoers /tmp/l; cp /tmp/l /tmp/x``: the operand names no database, the
    kernel's open (sensitive by inode) does: high (credential_access reports the read
    too, as for a named source).  The same through a link to /etc/shadow: credential_access
    alerts the read and this rule defers to it (as for a named source).
    An ordinary copy that opens no sensitive inode stays silent."""
    r = Rec().exec(200, 100, "/usr/bin/cp", ["cp", "/tmp/l", "/tmp/x"])
    r.lines.append({"type": "open", **r._hdr(200), "path": "/etc/sudoers", "path2": "",
                    "flags": 0, "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1,
                    "ino": 5, "sensitive": "auth-config", "sensitive_id": 1})
    r.exit(200)
    r.exec(205, 100, "/usr/bin/cp", ["cp", "/tmp/m", "/tmp/w"])
    r.lines.append({"type": "open", **r._hdr(205), "path": "/etc/shadow", "path2": "",
                    "flags": 0, "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1,
                    "ino": 6, "sensitive": "credentials", "sensitive_id": 2})
    r.exit(205)
    r.exec(210, 100, "/usr/bin/cp", ["cp", "/tmp/notes", "/tmp/y"])
    r.exit(210)
    found = r.run(tmp_path)
    got = of(found, "account_staging")
    assert [(f.pid, f.severity, f.evidence["sources"], f.evidence["dest"]) for f in got] == [
        (200, "high", ["/etc/sudoers"], "/tmp/x")], [f.title for f in got]
    assert [f.pid for f in of(found, "credential_access")] == [200, 205]



def test_symlinked_source_resolved_through_the_process_root(tmp_path: Path) -> None:
    """``ln -s /etc/passwd /tmp/l; cat /tmp/l > /tmp/x`` (/etc/passwd is in no sensitive
    set: no kernel open to go by): the operand, in a place anyone may plant a link, is
    resolved as the process sees it -> medium; an operand outside those places is not
    looked up."""
    from bastion.detect.behavior import Probes
    asked: list[tuple[int, str]] = []

    def resolve(pid: int, path: str) -> str | None:
        asked.append((pid, path))
        return {"/tmp/l": "/etc/passwd"}.get(path, path)

    r = Rec().redirect(200, "/tmp/x")
    r.exec(200, 100, "/usr/bin/cat", ["cat", "/tmp/l"], stdout="file")
    r.exec(201, 100, "/usr/bin/cp", ["cp", "/opt/l", "/tmp/y"])
    p = tmp_path / "rec.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in r.lines))
    procs, trust = ProcessTable(), RecordedTrust()
    engine = Engine(behavior_rules(probes=Probes(resolve=resolve), trust=trust))
    ctx = RuleContext(procs)
    found: list[Finding] = []
    for ev in read_all(p):
        trust.learn(ev)
        procs.update(ev)
        found += engine.evaluate(ev, ctx)
    got = of(found, "account_staging")
    assert [(f.pid, f.severity, f.evidence["sources"], f.evidence["dest"]) for f in got] == [
        (200, "medium", ["/etc/passwd"], "/tmp/x")], [f.title for f in got]
    assert asked == [(200, "/tmp/l")]


def test_resolve_in_follows_links_inside_the_root(tmp_path: Path) -> None:
    """The live resolver (lstat/readlink through /proc/PID/root, this process): relative
    and absolute links, a linked directory, ``..``; a dangling link or a loop: None."""
    import os
    from bastion.detect.behavior.rules import resolve_in
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "dl").symlink_to("d")                         # relative, a directory
    (tmp_path / "abs").symlink_to(tmp_path / "dl" / "f")      # absolute, through a link
    (tmp_path / "up").symlink_to("d/../d/f")
    (tmp_path / "gone").symlink_to("nowhere")
    (tmp_path / "loop").symlink_to("loop")
    me = os.getpid()
    real = str((tmp_path / "d" / "f").resolve())
    assert resolve_in(me, str(tmp_path / "abs")) == real
    assert resolve_in(me, str(tmp_path / "dl" / "f")) == real
    assert resolve_in(me, str(tmp_path / "up")) == real
    assert resolve_in(me, str(tmp_path / "gone")) is None
    assert resolve_in(me, str(tmp_path / "loop")) is None
    assert resolve_in(me, "relative") is None


def test_padding_mountinfo_is_parsed_as_bytes_without_raising() -> None:
    """s17-pad review: a mount point named with \\xff (the kernel escapes only space,
    tab, newline, backslash) made ``read_text`` raise UnicodeDecodeError out of the rule;
    one named ``/tmp/a\\x0b77 1 0:99 / /b`` forged a line for mount 77 through
    ``splitlines`` (a wrong dev: evasion); a malformed major:minor raised ValueError.
    Read as bytes, split on b"\\n" only, every field checked: the real dev or None."""
    from bastion.detect.behavior.rules import mount_dev
    forged = (b"49 1 254:0 / / rw - ext4 /dev/vda rw\n"
              b"80 49 0:50 / /tmp/a\x0b77 1 0:99 / /b\xff\r76 1 0:98 / /c rw - tmpfs x rw\n"
              b"76 49 0:43 / /t rw - tmpfs tmp rw\n"
              b"77 49 0:42 / /sbx rw - overlay overlay rw\n")
    assert mount_dev(forged, 77) == 42
    assert mount_dev(forged, 76) == 43
    assert mount_dev(forged, 80) == 50
    assert mount_dev(b"77 1 x:y / / rw - ext4 d rw\n", 77) is None
    assert mount_dev(b"77 1 99999999999999999999:1 / / rw - ext4 d rw\n", 77) is None
    assert mount_dev(b"77 49 0:42 / /sbx rw - overlay o rw\n" * 4, 78, cap=64) is None


def test_padding_elf_verdict_on_the_looked_up_inode_never_a_swapped_fifo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s17-pad review 4: ``elf_exec`` judged a ``lstat`` and then opened the path again
    by name: a FIFO (or a bind-mounted /dev/watchdog) put over the path between the two
    was opened by root.  The path is swapped for a FIFO right after the first look-up of
    it: no fd other than ``O_PATH`` may ever be a FIFO, and the verdict is that of the
    inode first looked up (an executable ELF), for ``elf_exec`` and ``file_ident`` both."""
    import os
    import stat as st_
    from bastion.detect.behavior.rules import elf_exec, file_ident
    prog = tmp_path / "p"
    real_open, real_lstat = os.open, os.lstat
    opened_fifo: list[str] = []
    swapped: list[bool] = []

    def swap_after(path: Any) -> None:
        if str(path).endswith(str(prog)) and not swapped:   # via /proc/PID/root
            swapped.append(True)
            os.unlink(prog)
            os.mkfifo(prog)

    def lstat(path: Any, *a: Any, **k: Any) -> os.stat_result:
        got = real_lstat(path, *a, **k)
        swap_after(path)
        return got

    def open_(path: Any, flags: int, *a: Any, **k: Any) -> int:
        fd = real_open(path, flags, *a, **k)
        if not flags & os.O_PATH and st_.S_ISFIFO(os.fstat(fd).st_mode):
            opened_fifo.append(str(path))
        swap_after(path)
        return fd

    for probe in (elf_exec, lambda pid, path: (r[2] if (r := file_ident(pid, path)) else r)):
        swapped.clear()
        if prog.exists():
            prog.unlink()
        prog.write_bytes(b"\x7fELF" + b"\0" * 60)
        prog.chmod(0o755)
        with monkeypatch.context() as m:
            m.setattr(os, "lstat", lstat)
            m.setattr(os, "open", open_)
            got = probe(os.getpid(), str(prog))
        assert swapped == [True]
        assert opened_fifo == []
        assert got is True
