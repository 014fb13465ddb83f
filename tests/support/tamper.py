"""A scoped TEST instance of tamper protection: guardian + agent in tmp, a test pin root.

Kernel safety: the protected set lives under tmp (never the repo, never
/sys/fs/bpf/bastion: both are passed as --test-forbid), the pin root is
/sys/fs/bpf/bastion-test-<random>, every program acts only on attackers in
the test cgroup and carries a dead-man deadline, and teardown SIGKILLs the
guardian and agent (the test process is outside the cgroup, so it may) and
removes the pins.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from bastion.control import request
from bastion.errors import ControlError
from bastion.kernel import bpffs
from bastion.store.db import Store
from support.stale import owned_name

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
TOKEN = b"correct horse battery staple 42"
WRONG = b"wrong horse battery staple 4242"
# one mark per test process: a teardown kills the stand-in agents of its own run only,
# never those of a suite running at the same time from another checkout
AGENT_MARK = f"bastion-tamper-test-agent-{os.getpid()}"
PTRACE_ATTACH, PTRACE_SEIZE, PTRACE_DETACH = 16, 0x4206, 17
# running, sleeping, or in a short uninterruptible wait (page-in over 9p in the VM):
# alive and not stopped
ALIVE = ("S", "R", "D")


@dataclass
class Instance:
    root: Path
    install: Path
    etc: Path
    data: Path
    pin_root: Path
    gsock: Path
    cg: Path
    cgid: int
    token_file: Path
    wrong_file: Path
    deadline_s: float
    guardian: subprocess.Popen[str] | None = None
    stderr: list[str] = field(default_factory=list)

    # ---- processes -------------------------------------------------------------
    def start_guardian(self, *extra: str, agent: list[str] | None = None, tier: str = "auto",
                       wait_agent: bool = True, token: bool = True,
                       start_timeout: float = 120, env: dict[str, str] | None = None) -> None:
        argv = [PY, "-m", "bastion.cli.guard", "guardian", "--data-dir", str(self.data),
                "--guardian-socket", str(self.gsock), "--pin-root", str(self.pin_root),
                "--no-install-tree", "--protect", str(self.install), "--config", str(self.etc),
                *(("--maintenance-token-file", str(self.token_file)) if token else ()), "--tier", tier,
                # the first-run token file in tmp (a test's own --token-out, later, wins)
                "--token-out", str(self.root / "first-run.token"),
                "--test-cgroup-id", str(self.cgid), "--test-deadline", str(self.deadline_s),
                "--test-forbid", str(REPO), "--test-forbid", "/sys/fs/bpf/bastion", *extra,
                "--", *(agent or default_agent())]
        self.stderr.clear()
        self.guardian = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True, cwd="/", env=env)
        threading.Thread(target=self._pump, args=(self.guardian,), daemon=True).start()
        deadline = time.monotonic() + start_timeout   # a readiness wait (slow TCG VM), not a target
        while not any("guardian running" in line for line in self.stderr):
            if self.guardian.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)   # the rest of its stderr
                raise AssertionError(f"guardian did not start (exit {self.guardian.poll()}):\n"
                                     + "".join(self.stderr))
            time.sleep(0.05)
        if wait_agent:
            self.wait_agent()

    def _pump(self, p: subprocess.Popen[str]) -> None:
        assert p.stderr is not None
        for line in p.stderr:
            self.stderr.append(line)

    def status(self) -> dict[str, object]:
        try:
            return request(self.gsock, "status")
        except ControlError as exc:
            raise AssertionError(f"guardian does not answer ({exc}); {self.guardian_state()}") from exc

    def guardian_state(self) -> str:
        """Whether the guardian lives, and the end of its stderr: what a failure report needs."""
        g = self.guardian
        alive = "not started" if g is None else (
            "alive" if g.poll() is None else f"exited with {g.returncode}")
        return f"guardian {alive}; its stderr ends:\n" + "".join(self.stderr[-40:])

    def agent_pid(self) -> int:
        return int(self.status()["agent_pid"])  # type: ignore[call-overload]

    def wait_agent(self, not_pid: int = 0, timeout: float = 20) -> int:
        """Pid of a running, registered agent (other than ``not_pid``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                st = self.status()
            except Exception:  # noqa: BLE001 - guardian busy restarting
                time.sleep(0.1)
                continue
            pid = int(st["agent_pid"])  # type: ignore[call-overload]
            idents = st["identities"]
            if pid and pid != not_pid and any(i["pid"] == pid for i in idents) and \
                    proc_state(pid) in ALIVE:  # type: ignore[index,union-attr]
                return pid
            time.sleep(0.1)
        raise AssertionError(f"no agent (not {not_pid}) came up; " + self.guardian_state())

    # ---- attackers (always inside the test cgroup) ---------------------------------------
    def attack(self, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str]:
        shell = f'echo $$ > {self.cg}/cgroup.procs && exec "$@"'
        return subprocess.run(["/bin/sh", "-c", shell, "sh", *argv], text=True,
                              capture_output=True, timeout=timeout, cwd="/")

    def attack_py(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.attack([PY, "-c", code])

    # ---- evidence ---------------------------------------------------------------------
    def alerts(self, rule_prefix: str = "bastion.tamper.") -> list[dict[str, object]]:
        with Store.open(self.data, readonly=True) as st:
            return [r.data for r in st.alerts(limit=10000)
                    if str(r.data.get("rule", "")).startswith(rule_prefix)]

    def settled_alerts(self, quiet_s: float = 1.0, timeout_s: float = 10.0) -> int:
        """The number of tamper alerts once none has arrived for ``quiet_s``: an earlier
        test's attacker (a strict xfail's killed child) may still be reported."""
        n, since = len(self.alerts()), time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)
            m = len(self.alerts())
            if m != n:
                n, since = m, time.monotonic()
        return n

    def wait_alert(self, rule: str, pred: object = None, timeout: float = 5,
                   after: int = 0) -> dict[str, object]:
        """The first alert ``rule`` matching ``pred`` among the tamper alerts stored
        after the first ``after`` ones."""
        deadline = time.monotonic() + timeout
        while True:
            for a in self.alerts()[after:]:
                if a["rule"] == rule and (pred is None or pred(a)):  # type: ignore[operator]
                    return a
            if time.monotonic() > deadline:
                raise AssertionError(f"no alert {rule}; have: "
                                     f"{[(a['rule'], a['title']) for a in self.alerts()]}; "
                                     + self.guardian_state())
            time.sleep(0.1)

    def wait_alert_all(self, rule: str, n: int, timeout: float = 10) -> list[dict[str, object]]:
        """The ``rule`` alerts once there are at least ``n`` of them (AssertionError if
        they do not come)."""
        deadline = time.monotonic() + timeout
        while True:
            got = [a for a in self.alerts(rule) if a["rule"] == rule]
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(got)} of {n} {rule} alerts; " + self.guardian_state())
            time.sleep(0.1)

    def stop(self, token_file: Path) -> dict[str, object]:
        """`bastion stop` as the library does it: the guardian checked, the token proven."""
        from bastion.guard.control import call_with_token
        from bastion.guard.identity import ROLE_GUARDIAN

        return call_with_token(self.gsock, "stop", token_file.read_bytes().strip(), "stop",
                               pin_root=self.pin_root, roles=(ROLE_GUARDIAN,), timeout=60)

    def teardown(self) -> None:
        pids: list[int] = []
        try:
            pids.append(self.agent_pid())
        except Exception:  # noqa: BLE001
            pass
        if self.guardian is not None and self.guardian.poll() is None:
            self.guardian.kill()
            self.guardian.wait(timeout=10)
        for pid in pids + _pids_with_mark():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.pin_root.exists():
            bpffs.remove_pins(self.pin_root)


def default_agent() -> list[str]:
    """A small stand-in agent: a Python process that only lives (marked for pkill)."""
    return [PY, "-c", f"import time, sys; sys.argv[0] = {AGENT_MARK!r}; time.sleep(3600)",
            AGENT_MARK]


def _pids_with_mark() -> list[int]:
    """Stand-in agents (``PY -c CODE MARK``) only: a guardian's argv ends with the same
    words after ``--`` and must not be killed by another test's teardown (tests of
    several worktrees run at once on one machine)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                args = (p / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            except OSError:
                continue
            if len(args) == 4 and args[1] == b"-c" and args[3] == AGENT_MARK.encode():
                out.append(int(p.name))
    return out


def proc_state(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return "gone"
    return raw[raw.rfind(b")") + 2:].split()[0].decode()


def make_instance(tmp: Path, cg: Path, cgid: int, deadline_s: float = 120) -> Instance:
    root = tmp / "t"
    install, etc, data = root / "opt" / "bastion", root / "etc" / "bastion", root / "data"
    (install / "lib").mkdir(parents=True)
    (install / "lib" / "agent.py").write_text("print('agent')\n")
    (install / "bin").mkdir()
    (install / "bin" / "bastion").write_text("#!/bin/sh\n")
    etc.mkdir(parents=True)
    (etc / "policy.yaml").write_text("version: 1\n")
    (etc / "outputs.yaml").write_text("outputs: []\n")
    token, wrong = tmp / "token", tmp / "wrong"
    token.write_bytes(TOKEN + b"\n")
    wrong.write_bytes(WRONG + b"\n")
    token.chmod(0o600)            # token files others may read or write are refused
    wrong.chmod(0o600)
    pin_root = Path("/sys/fs/bpf") / owned_name("bastion-test-")   # swept if we die
    return Instance(root, install, etc, data, pin_root, tmp / "guardian.sock", cg, cgid, token,
                    wrong, deadline_s)


def instance(tmp: Path, cg: Path, cgid: int) -> Iterator[Instance]:
    inst = make_instance(tmp, cg, cgid)
    try:
        yield inst
    finally:
        inst.teardown()


# ---- attack snippets (python, run in the cgroup) ----------------------------------------

def py_pidfd_kill(pid: int) -> str:
    return f"import os, signal; fd = os.pidfd_open({pid}); signal.pidfd_send_signal(fd, signal.SIGKILL)"


def py_ptrace(pid: int, req: int = PTRACE_ATTACH) -> str:
    return ("import ctypes, sys, time; libc = ctypes.CDLL(None, use_errno=True); "
            "libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]; "
            f"r = libc.ptrace({req}, {pid}, None, None); e = ctypes.get_errno(); "
            "print('rc', r, e); time.sleep(0.5); "
            f"libc.ptrace({PTRACE_DETACH}, {pid}, None, None); sys.exit(0 if r == 0 else 3)")


def py_proc_mem(pid: int) -> str:
    return (f"import os; fd = os.open('/proc/{pid}/mem', os.O_RDWR); "
            "os.pwrite(fd, b'\\xcc', 0x400000); print('wrote')")


def py_vm_writev(pid: int) -> str:
    return ("import ctypes, sys\n"
            "class IOV(ctypes.Structure):\n"
            "    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "buf = ctypes.create_string_buffer(8)\n"
            "l = IOV(ctypes.addressof(buf), 8); r = IOV(0x400000, 8)\n"
            f"n = libc.process_vm_writev({pid}, ctypes.byref(l), 1, ctypes.byref(r), 1, 0)\n"
            "print('n', n, ctypes.get_errno()); sys.exit(0 if n > 0 else 3)\n")


def errno_of(r: subprocess.CompletedProcess[str]) -> str:
    return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def threaded_agent() -> list[str]:
    """The stand-in agent with a second thread, and the guardian watch the real agent runs."""
    code = ("import threading, time, sys; sys.argv[0] = %r\n"
            "from bastion.guard.mutual import watch_guardian_from_env\n"
            "watch_guardian_from_env()\n"
            "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
            "time.sleep(3600)\n") % AGENT_MARK
    return [PY, "-c", code, AGENT_MARK]


def other_thread(pid: int) -> int:
    """A thread id of ``pid`` that is not its leader."""
    deadline = time.monotonic() + 10     # the agent starts its thread after its imports
    while True:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        if tids:
            return tids[0]
        assert time.monotonic() < deadline, f"pid {pid} has no second thread"
        time.sleep(0.05)


def cpu_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max cpu time"):
            return line.split()[3]
    return "?"


def py_sigio(pid: int) -> str:
    """F_SETOWN + F_SETSIG(SIGKILL) + O_ASYNC on a pipe, then a write: the kernel sends it."""
    return ("import fcntl, os, signal, time; r, w = os.pipe(); "
            f"fcntl.fcntl(r, fcntl.F_SETOWN, {pid}); fcntl.fcntl(r, 10, signal.SIGKILL); "
            "fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC); "
            "os.write(w, b'x'); time.sleep(0.5); print('sent')")


def py_proc_mem_variant(pid: int, tid: int, variant: str) -> str:
    path = {"tid": f"/proc/{tid}/mem", "task-tid": f"/proc/{pid}/task/{tid}/mem",
            "double-slash": f"/proc//{pid}/mem", "dirfd": "mem"}[variant]
    pre = (f"d = os.open('/proc/{pid}', os.O_PATH | os.O_DIRECTORY); "
           if variant == "dirfd" else "d = None; ")
    return (f"import os; {pre}fd = os.open({path!r}, os.O_RDWR, dir_fd=d); "
            "print('opened', fd)")


def py_pidfd_getfd_flush(gpid: int, match: str = "fanotify") -> str:
    """Steal the guardian's fanotify fd (``match`` in its link; "" = every fd) with
    pidfd_getfd and flush its marks."""
    # An fd the guardian closes between the listing and the readlink is skipped (the
    # agent opens and closes files all the time; stop 22's CI failed on that race).
    return ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def link(f):\n"
            "    try:\n"
            f"        return os.readlink('/proc/{gpid}/fd/' + f)\n"
            "    except FileNotFoundError:\n"
            "        return None\n"
            f"fds = [int(f) for f in os.listdir('/proc/{gpid}/fd') "
            f"if (l := link(f)) is not None and {match!r} in l]\n"
            f"pfd = os.pidfd_open({gpid})\n"
            "for n in fds:\n"
            "    fd = libc.syscall(438, pfd, n, 0)\n"
            "    print('stole', n, fd, ctypes.get_errno())\n"
            "    if fd >= 0:\n"
            "        libc.fanotify_mark(fd, 0x80, 0, -100, None)   # FAN_MARK_FLUSH\n"
            "        libc.fanotify_mark(fd, 0x80 | 0x10, 0, -100, None)   # + FAN_MARK_MOUNT\n"
            "print('flushed', fds)\n")


__all__ = ["ALIVE", "Instance", "other_thread", "cpu_limit", "py_sigio", "py_proc_mem_variant",
           "py_pidfd_getfd_flush", "threaded_agent", "PY", "TOKEN", "ctypes", "default_agent", "errno_of", "instance",
           "make_instance", "proc_state", "py_pidfd_kill", "py_proc_mem", "py_ptrace",
           "py_vm_writev"]
