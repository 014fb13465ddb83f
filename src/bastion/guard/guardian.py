"""The guardian: holds tamper protection and keeps the agent running.

``bastion guardian [options] -- AGENT ARGV`` (default agent: ``bastion run``)
is a small supervisor that

1. loads (or adopts from ``<pin root>/tamper``) the tamper BPF object of this
   tier and fills it: its own identity and the agent's (tgid + start + exe
   inode), the protected set, the kernel ids of every map/link pinned under
   the pin root (tamper and HIPS pins);
2. on the compat tier, also denies write-opens of the protected set with
   fanotify (:class:`~bastion.guard.fanguard.FileGuard`);
3. starts the agent in its own session and restarts it when it dies,
   resumes it when it is stopped (SIGSTOP/SIGTSTP), and re-registers its
   identity on every restart;
4. turns every tamper record into a critical alert in the agent's store
   (the same hash-chained alert log; SQLite serialises the two writers),
   and undoes what it can of the attempt: puts back the resource limits a
   prlimit(2) changed, moves a process of ours back into our cgroup;
5. runs itself and the agent in their own cgroup (``cgroup``: directly under
   the cgroup2 root, so no ancestor has a ``cgroup.kill``), protected like
   the install tree: ``cgroup.kill``, ``cgroup.freeze``, ``cgroup.procs``,
   ``memory.max`` … cannot be opened for writing by anyone else;
6. tells the agent who it is (:func:`bastion.guard.mutual.guardian_env`) so
   the agent resumes a stopped guardian (mutual supervision);
7. answers a root-only control socket: ``ping``, ``status``, ``stop`` and
   ``maintenance`` — the last two only with the maintenance token.  A valid
   token opens a maintenance window (an alert), removes tamper protection,
   and (``stop``) ends the agent and the guardian.

Catchable termination signals (TERM, INT, HUP, QUIT, USR1, USR2) are
ignored: only the token stops the guardian.  On the lsm tier nobody else
can deliver them anyway; on the compat tier the sender is killed.
"""

from __future__ import annotations

import base64
import logging
import resource
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bastion.procstat import read_stat
from bastion.alert import Alert, AlertProcess
from bastion.control import ControlServer
from bastion.errors import BastionError, KernelError
from bastion.guard import protect
from bastion.guard.mutual import guardian_env
from bastion.guard.identity import ROLE_AGENT, ROLE_GUARDIAN, Identity
from bastion.guard.kernel import TamperKernel, TamperRecord
from bastion.guard.token import MaintenanceWindow, TokenStore
from bastion.procstat import read_stat
from bastion.store.db import Store
from bastion.timefmt import format_time

log = logging.getLogger("bastion.guard")

IGNORED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                          signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE)
ATTACK: Final = {"signal": ["T1562.001", "T1489"], "ptrace": ["T1562.001", "T1055.008"],
                 "proc-mem": ["T1562.001", "T1055.009"], "vm-write": ["T1562.001", "T1055"],
                 "sigio": ["T1562.001", "T1489"], "prlimit": ["T1562.001", "T1489"],
                 "pidfd-getfd": ["T1562.001", "T1055"], "cgroup-move": ["T1562.001", "T1489"]}
DEFAULT_ATTACK: Final = ["T1562.001"]
SIGNAL_NAMES: Final = {s.value: s.name for s in signal.Signals}
STOP_SIGNALS: Final = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
RLIMITS: Final = tuple(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))


def own_cgroup(pid: int) -> str:
    """The cgroup v2 path of ``pid`` ("" when unknown), as /proc/PID/cgroup names it."""
    try:
        text = open(f"/proc/{pid}/cgroup", encoding="ascii").read()   # noqa: SIM115
    except OSError:
        return ""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


@dataclass(frozen=True)
class GuardianConfig:
    agent_argv: tuple[str, ...]
    data_dir: Path
    pin_root: Path
    socket: Path
    protect_paths: tuple[Path, ...]
    forbid: tuple[Path, ...] = ()
    tier: str = "auto"                 # "lsm", "compat" or "auto" (lsm when it loads)
    cgroup_id: int = 0                 # tests: only attackers in this cgroup are acted on
    deadline_s: float | None = None    # tests: dead-man deadline of every program
    restart_delay_s: float = 0.5
    window_s: float = 600.0
    fault_after_s: float | None = None  # tests: crash (os._exit) after this long
    agent_env: tuple[tuple[str, str], ...] = ()
    cgroup: Path | None = None         # run guardian + agent in this cgroup, protected


@dataclass
class _AgentProc:
    pid: int
    popen: subprocess.Popen[bytes] | None    # None: adopted from a crashed guardian
    ident: Identity | None = None
    started: float = field(default_factory=time.monotonic)


def _parent_of(tgid: int) -> int:
    """The parent pid of ``tgid`` from procfs (never marked); 0 when unknown."""
    try:
        return read_stat(tgid).ppid
    except (OSError, ValueError):
        return 0


def _tgid_of(tid: int) -> int:
    """The process a thread id belongs to (0 when gone)."""
    try:
        for line in open(f"/proc/{tid}/status", encoding="ascii"):   # noqa: SIM115
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _default_signals() -> None:
    """In the agent child: undo the guardian's ignored signals (inherited across exec)."""
    for s in IGNORED_SIGNALS:
        signal.signal(s, signal.SIG_DFL)


class Guardian:
    def __init__(self, cfg: GuardianConfig) -> None:
        self.cfg = cfg
        self.tokens = TokenStore(cfg.data_dir)
        self.window = MaintenanceWindow(cfg.data_dir, cfg.window_s)
        self.tk: TamperKernel | None = None
        self.files: Any = None            # FileGuard on the compat tier
        self.store: Store | None = None
        self.protected: protect.ProtectedSet | None = None
        self.me: Identity | None = None
        self.agent: _AgentProc | None = None
        self.restarts = 0
        self.resumes = 0
        self.alerts = 0
        self.protection = "off"           # "full", "partial", "off"
        self.unenforced: list[str] = []
        self._lock = threading.Lock()
        self._stop_req = threading.Event()
        self._remove_req = threading.Event()
        self._control: ControlServer | None = None
        self._started = time.monotonic()
        self._limits: dict[int, tuple[int, int]] = {}
        self._cg_rel = ""                 # our cgroup as /proc/PID/cgroup names it

    # ---- set-up ---------------------------------------------------------------------

    def _open_kernel(self) -> TamperKernel:
        pin = self.cfg.pin_root / "tamper"
        tiers = ["lsm", "compat"] if self.cfg.tier == "auto" else [self.cfg.tier]
        last: BastionError | None = None
        for tier in tiers:
            tk = TamperKernel(tier, pin_dir=pin, cgroup_id=self.cfg.cgroup_id,
                              deadline_s=self.cfg.deadline_s)
            if pin.exists() and self.cfg.tier == "auto":
                # adopt whatever tier is pinned
                links = {p.name for p in (pin / "links").iterdir()} if (pin / "links").is_dir() else set()
                if tier == "lsm" and links and "tamper_task_kill" not in links:
                    continue
            try:
                tk.open()
                return tk
            except BastionError as exc:
                last = exc
                log.info("tamper: %s tier unavailable: %s", tier, exc)
        assert last is not None
        raise last

    def setup(self) -> None:
        self.cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = Store.open(self.cfg.data_dir)
        self._limits = {r: resource.getrlimit(r) for r in RLIMITS}
        self._join_cgroup()
        self.me = Identity.of(os.getpid(), ROLE_GUARDIAN)
        self.tk = self._open_kernel()
        try:
            self.tk.register(self.me)
        except KernelError as exc:
            # adopted pins of a guardian that crashed, and we are not exempt: only the
            # agent (still registered) can enrol us; enforcement itself is unchanged
            self._alert("bastion.tamper.guardian-not-enrolled",
                        f"restarted guardian cannot update the pinned protection: {exc}", "high",
                        {"error": str(exc)})
        for ident in self.tk.identities():
            if ident.role == ROLE_AGENT and ident.alive() and self.agent is None:
                self.agent = _AgentProc(ident.tgid, None, ident)   # adopt the running agent
            elif not ident.alive():
                self._try(lambda: self.tk.unregister(ident.tgid) if self.tk else None)
        paths = self.cfg.protect_paths + ((self.cfg.cgroup,) if self.cfg.cgroup else ())
        self.protected = protect.resolve(paths, forbid=self.cfg.forbid)
        self._try(lambda: self.tk.protect(self.protected) if self.tk and self.protected else None)
        self._try(lambda: self.tk.protect_bpf(self.cfg.pin_root) if self.tk else None)
        self.protection = "full" if self.tk.tier == "lsm" else "partial"
        if self.tk.tier == "compat":
            self._open_files()
        self._alert("bastion.tamper.protection-on",
                    f"tamper protection on ({self.protection}, tier {self.tk.tier}"
                    f"{', adopted from pins' if self.tk.adopted else ''})", "info",
                    {"tier": self.tk.tier, "adopted": self.tk.adopted,
                     "protected": [o.path for o in self.protected.roots()],
                     "missing": list(self.protected.missing)})

    def _join_cgroup(self) -> None:
        """Move the guardian (and so every agent it starts) into ``cfg.cgroup``."""
        cg = self.cfg.cgroup
        if cg is None:
            return
        from bastion.kernel import cgroup

        cg.mkdir(exist_ok=True)
        cgroup.move(os.getpid(), cg)
        self._cg_rel = own_cgroup(os.getpid())

    def _keep_in_cgroup(self, pid: int, who: str) -> None:
        """Move ``pid`` back into our cgroup when someone moved it out (critical alert)."""
        if not self._cg_rel or self.cfg.cgroup is None:
            return
        now = own_cgroup(pid)
        if not now or now == self._cg_rel:
            return
        try:
            (self.cfg.cgroup / "cgroup.procs").write_text(f"{pid}\n")
            done = "moved back"
        except OSError as exc:
            done = f"cannot move it back: {exc.strerror}"
        self._alert("bastion.tamper.cgroup-escape", f"{who} pid {pid} was moved to cgroup {now}: {done}",
                    "critical", {"pid": pid, "role": who, "cgroup": now, "expected": self._cg_rel},
                    attack=ATTACK["cgroup-move"])

    def _open_files(self) -> None:
        from bastion.guard.fanguard import FileGuard

        assert self.protected is not None
        fg = FileGuard(self._is_ours, scope_cgroup_id=self.cfg.cgroup_id,
                       deadline_s=self.cfg.deadline_s, self_tgid=os.getpid())
        fg.open()
        fg.start()
        self.unenforced = list(fg.protect(self.protected))
        self.files = fg

    def _try(self, fn: Any) -> None:
        try:
            fn()
        except KernelError as exc:
            log.error("tamper: %s", exc)

    def _is_ours(self, tgid: int) -> bool:
        for ident in (self.me, self.agent.ident if self.agent else None):
            if ident is not None and ident.tgid == tgid:
                return ident.alive()
        # the agent between its exec and its enrolment (its first imports): a direct child
        # of this guardian — only the guardian creates those, and nothing reparents to it
        return _parent_of(tgid) == os.getpid()

    # ---- the agent ------------------------------------------------------------------

    def _spawn(self) -> None:
        # nothing of ours writes into the protected install tree (no .pyc next to modules)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **guardian_env(os.getpid()),
               **dict(self.cfg.agent_env)}
        p = subprocess.Popen(list(self.cfg.agent_argv), start_new_session=True, env=env,
                             stdin=subprocess.DEVNULL, preexec_fn=_default_signals)
        self.agent = _AgentProc(p.pid, p)
        self._enrol_agent()
        log.warning("guardian: agent started (pid %d)", p.pid)

    def _enrol_agent(self) -> None:
        a = self.agent
        if a is None or self.tk is None:
            return
        try:
            ident = Identity.of(a.pid, ROLE_AGENT)
        except KernelError:
            return
        if ident != a.ident:
            if a.ident is not None:
                self._try(lambda: self.tk.unregister(a.pid) if self.tk else None)
            self._try(lambda: self.tk.register(ident) if self.tk else None)
            a.ident = ident

    def _agent_state(self) -> str:
        """'running', 'stopped' or 'dead' (reaping our child)."""
        a = self.agent
        if a is None:
            return "dead"
        if a.popen is not None:
            try:
                pid, status = os.waitpid(a.pid, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return "dead"
            if pid == 0:
                return "running"
            if os.WIFSTOPPED(status):
                return "stopped"
            a.popen.returncode = os.waitstatus_to_exitcode(status)
            return "dead"
        try:
            state = read_stat(a.pid).state
        except (OSError, ValueError):
            return "dead"
        if a.ident is not None and not a.ident.alive():
            return "dead"
        return "stopped" if state in ("T", "t") else ("dead" if state in ("Z", "X") else "running")

    def _supervise(self) -> None:
        st = self._agent_state()
        self._keep_in_cgroup(os.getpid(), "guardian")
        if self.agent is not None and st != "dead":
            self._keep_in_cgroup(self.agent.pid, "agent")
        if st == "running":
            self._enrol_agent()       # after exec the identity is the same; cheap check
            return
        a = self.agent
        if st == "stopped" and a is not None:
            os.kill(a.pid, signal.SIGCONT)
            self.resumes += 1
            self._alert("bastion.tamper.agent-stopped", f"agent pid {a.pid} was stopped: resumed",
                        "critical", {"agent_pid": a.pid})
            return
        code = a.popen.returncode if a is not None and a.popen is not None else None
        if a is not None:
            if self.tk is not None and a.ident is not None:
                self._try(lambda: self.tk.unregister(a.pid) if self.tk else None)
            why = (f"killed by {SIGNAL_NAMES.get(-code, -code)}" if code is not None and code < 0
                   else f"exited with {code}")
            self._alert("bastion.tamper.agent-died", f"agent pid {a.pid} {why}: restarting",
                        "critical", {"agent_pid": a.pid, "exit": code})
        self.agent = None
        if not self._stop_req.is_set():
            time.sleep(self.cfg.restart_delay_s)
            self._spawn()
            self.restarts += 1

    # ---- alerts ---------------------------------------------------------------------------

    def _alert(self, rule: str, title: str, severity: str, evidence: dict[str, Any],
               process: dict[str, Any] | None = None, action: str = "alert",
               attack: list[str] | None = None) -> None:
        proc = process or {"pid": os.getpid(), "ppid": os.getppid(), "exe": sys.executable,
                           "cmdline": "bastion guardian", "uid": os.getuid()}
        alert = Alert(time=format_time(time.time_ns()), rule=rule, title=title, severity=severity,
                      action=action, attack=list(attack or []), evidence=evidence,
                      process=AlertProcess(pid=int(proc["pid"]), ppid=int(proc.get("ppid") or 0),
                                           exe=str(proc.get("exe") or ""),
                                           cmdline=str(proc.get("cmdline") or ""),
                                           uid=int(proc.get("uid") or 0)))
        with self._lock:
            self.alerts += 1
            if self.store is not None:
                try:
                    self.store.add_alert(alert.to_json())
                except BastionError as exc:
                    log.error("guardian: storing alert failed: %s", exc)
        print(alert.feed_line(), file=sys.stderr, flush=True)

    def _tamper_alert(self, r: TamperRecord) -> None:
        what = r.op
        ev: dict[str, Any] = {**r.to_json(), "tier": self.tk.tier if self.tk else "?",
                              "mechanism": "lsm" if r.verdict == "denied" else "kill-sender"}
        if r.op == "sigio" and r.verdict != "denied":
            what = f"file owner set to pid {r.target_pid} (fcntl/ioctl cmd {r.arg:#x}) for SIGIO"
        elif r.op in ("signal", "sigio"):
            what = f"{r.op} {SIGNAL_NAMES.get(r.arg, r.arg)} to pid {r.target_pid}"
        elif r.op == "prlimit":
            what = f"prlimit (resource {r.arg}) of pid {r.target_pid}"
            ev["limits"] = self._undo_prlimit(r.target_pid)
        elif r.op in ("pidfd-getfd", "cgroup-move"):
            what = f"{r.op} of pid {r.target_pid}"
        elif r.op in ("ptrace", "proc-mem", "vm-write"):
            what = f"{r.op} of pid {r.target_pid}"
        elif r.op.startswith("bpf-"):
            what = f"{r.op} (bpf cmd {r.arg}) on id {r.obj_id}"
        elif r.path or r.obj_id:
            obj = self.protected.by_id(r.obj_id) if self.protected and r.obj_id else None
            what = f"{r.op} of {r.path or '?'}" + (f" (protected {obj.path})" if obj else "")
            if obj:
                ev["protected_path"] = obj.path
        title = (f"Tamper attempt {'refused' if r.verdict == 'denied' else 'detected, attacker killed'}"
                 f": {what} by {r.exe or r.comm} (pid {r.pid}, uid {r.uid})")
        self._alert(f"bastion.tamper.{r.op}", title, "critical", ev,
                    process={"pid": r.pid, "ppid": r.ppid, "exe": r.exe, "cmdline": r.comm,
                             "uid": r.uid},
                    action=r.verdict, attack=ATTACK.get(r.op, DEFAULT_ATTACK))
        if r.op == "signal" and r.target_pid == os.getpid() and r.arg in STOP_SIGNALS:
            # we only get here once resumed (by the agent's watch, or SIGCONT by an admin)
            self._alert("bastion.tamper.guardian-stopped",
                        f"guardian pid {r.target_pid} was stopped by {SIGNAL_NAMES[r.arg]} from pid "
                        f"{r.pid}: resumed", "critical", {"guardian_pid": r.target_pid, "by": r.pid},
                        attack=ATTACK["signal"])

    def _undo_prlimit(self, pid: int) -> str:
        """Put the limits back; an agent whose hard limit cannot be raised again (no
        CAP_SYS_RESOURCE) is restarted: a new agent inherits the guardian's limits."""
        if self._restore_limits(pid):
            return "restored"
        a = self.agent
        if a is not None and _tgid_of(pid) == a.pid:
            try:
                os.kill(a.pid, signal.SIGKILL)    # supervise() restarts it with our limits
            except ProcessLookupError:
                pass
            return "agent restarted (hard limit could not be raised again)"
        return "NOT restored: restart Bastion to shed the limit"

    def _restore_limits(self, pid: int) -> bool:
        """Put back every resource limit of ``pid`` (ours: agent or guardian) to the
        guardian's own at start (the agent inherits them)."""
        ok = True
        for r, lim in self._limits.items():
            try:
                if resource.prlimit(pid, r) != lim:
                    resource.prlimit(pid, r, lim)
            except (OSError, ValueError) as exc:
                log.error("tamper: cannot restore limit %d of pid %d: %s", r, pid, exc)
                ok = False
        return ok

    def _file_alerts(self) -> None:
        if self.files is None:
            return
        for ev in self.files.poll(0):
            p = ev.proc
            self._alert("bastion.tamper.open-write",
                        f"Tamper attempt refused: write-open of {ev.path} by {p.exe or p.comm} "
                        f"(pid {p.pid}, uid {p.uid})", "critical",
                        {"op": "open-write", "path": ev.path, "ino": ev.ino, "dev": ev.dev,
                         "mechanism": "fanotify", "verdict": "denied", "tier": "compat"},
                        process={"pid": p.pid, "ppid": p.ppid, "exe": p.exe, "cmdline": p.comm,
                                 "uid": p.uid}, action="denied", attack=DEFAULT_ATTACK)

    # ---- control --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        a = self.agent
        return {"pid": os.getpid(), "tier": self.tk.tier if self.tk else "none",
                "tamper_protection": self.protection,
                "agent_pid": a.pid if a else 0, "restarts": self.restarts, "resumes": self.resumes,
                "alerts": self.alerts, "adopted": bool(self.tk and self.tk.adopted),
                "identities": [i.to_json() for i in self.tk.identities()] if self.tk else [],
                "protected": [o.path for o in self.protected.roots()] if self.protected else [],
                "unenforced": self.unenforced,
                "cgroup": str(self.cfg.cgroup or ""),
                "maintenance_until": self.window.until(),
                "uptime_s": round(time.monotonic() - self._started, 1)}

    def _check_token(self, req: dict[str, Any], what: str) -> dict[str, Any] | None:
        raw = req.get("token")
        peer = req.get("client_pid", 0)
        try:
            token = base64.b64decode(raw) if isinstance(raw, str) else b""
        except ValueError:
            token = b""
        v = self.tokens.verify(token)
        if v.ok:
            until = self.window.open(what)
            self._alert("bastion.tamper.maintenance",
                        f"maintenance window opened for {what} (valid token); closes at "
                        f"{format_time(int(until * 1e9))}", "high",
                        {"what": what, "until": until, "client_pid": peer})
            return None
        self._alert("bastion.tamper.bad-token", f"maintenance token refused for {what}: {v.reason}",
                    "critical", {"what": what, "reason": v.reason, "failures": v.failures,
                                 "retry_after_s": round(v.retry_after_s, 1), "client_pid": peer},
                    action="denied", attack=DEFAULT_ATTACK)
        return {"done": False, "error": f"maintenance token refused: {v.reason}"
                + (f" (retry in {v.retry_after_s:.0f}s)" if v.retry_after_s else "")}

    def _h_stop(self, req: dict[str, Any]) -> dict[str, Any]:
        bad = self._check_token(req, "stop")
        if bad is not None:
            return bad
        self._remove_req.set()
        self._stop_req.set()
        return {"done": True}

    def _h_maintenance(self, req: dict[str, Any]) -> dict[str, Any]:
        what = str(req.get("what", "maintenance"))
        bad = self._check_token(req, what)
        if bad is not None:
            return bad
        self._remove_req.set()
        return {"done": True, "until": self.window.until()}

    # ---- the loop ---------------------------------------------------------------------

    def _remove_protection(self) -> None:
        if self.files is not None:
            self.files.close()
            self.files = None
        if self.tk is not None:
            removed = self.tk.remove()
            self.tk = None
            self.protection = "off"
            self._alert("bastion.tamper.protection-off",
                        f"tamper protection removed ({len(removed)} pins) under a maintenance window",
                        "high", {"pins_removed": len(removed)})

    def run(self) -> int:
        for s in IGNORED_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        if self.cfg.fault_after_s:
            from bastion.guard.fault import arm

            arm(self.cfg.fault_after_s)
        self.setup()
        self._control = ControlServer(self.cfg.socket, {
            "ping": lambda req: {"pid": os.getpid(), "role": "guardian"},
            "status": lambda req: self.status(),
            "stop": self._h_stop,
            "maintenance": self._h_maintenance,
        })
        self._control.start()
        if self.agent is None:
            self._spawn()
        print(f"bastion: guardian running (pid {os.getpid()}, tier "
              f"{self.tk.tier if self.tk else '?'}, protection {self.protection}, "
              f"agent pid {self.agent.pid if self.agent else 0})", file=sys.stderr, flush=True)
        try:
            while not self._stop_req.is_set():
                if self.tk is not None:
                    for r in self.tk.poll():
                        self._tamper_alert(r)
                self._file_alerts()
                if self._remove_req.is_set() and self.tk is not None:
                    self._remove_protection()
                self._supervise()
                self._stop_req.wait(0.1)
            self._shutdown_agent()
            return 0
        finally:
            if self._control is not None:
                self._control.stop()
            if self.files is not None:
                self.files.close()
            if self.tk is not None:
                self.tk.close()        # pins stay: enforcement outlives us
            if self.store is not None:
                self.store.close()

    def _shutdown_agent(self) -> None:
        if self._remove_req.is_set() and self.tk is not None:
            self._remove_protection()
        a = self.agent
        if a is None:
            return
        try:
            os.kill(a.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        if a.popen is not None:
            try:
                a.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                a.popen.kill()
                a.popen.wait()
        else:
            fd = os.pidfd_open(a.pid)
            try:
                select.select([fd], [], [], 15)
            finally:
                os.close(fd)
        self._alert("bastion.tamper.stopped", f"agent pid {a.pid} and guardian stopped with the "
                    "maintenance token", "high", {"agent_pid": a.pid})


__all__ = ["Guardian", "GuardianConfig"]
