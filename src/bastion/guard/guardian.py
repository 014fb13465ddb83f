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

import errno
import faulthandler
import logging
import resource
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bastion import abi
from bastion.enforce.tiers import quiet_libbpf
from bastion.tier import Tier
from bastion.alert import Alert, AlertProcess
from bastion.alertgate import AlertGate, AlertLimits, aggregate_alert
from bastion.control import NONCE_KEY, PEER_KEY, ControlServer, request
from bastion.errors import BastionError, ControlError, KernelError, Location
from bastion.guard import kernel as gk
from bastion.guard import protect
from bastion.guard.mutual import guardian_env
from bastion.guard.identity import ROLE_AGENT, ROLE_GUARDIAN, ROLE_WRITER, Identity
from bastion.guard.kernel import TamperKernel, TamperRecord
from bastion.guard.token import MaintenanceWindow, TokenStore, source_of
from bastion.procstat import read_stat
from bastion.store.owned import OwnedStore
from bastion.timefmt import format_time

log = logging.getLogger("bastion.guard")

IGNORED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                          signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE)
ATTACK: Final = {"signal": ["T1562.001", "T1489"], "ptrace": ["T1562.001", "T1055.008"],
                 "proc-mem": ["T1562.001", "T1055.009"], "vm-write": ["T1562.001", "T1055"],
                 "sigio": ["T1562.001", "T1489"], "prlimit": ["T1562.001", "T1489"],
                 "pidfd-getfd": ["T1562.001", "T1055"], "cgroup-move": ["T1562.001", "T1489"],
                 "exe-identity": ["T1562.001", "T1036"]}
DEFAULT_ATTACK: Final = ["T1562.001"]
#: the PR_SET_MM sub-options an exe-identity record names (bpf/lib/tamper.h)
PR_SET_MM_OPTIONS: Final = {13: "PR_SET_MM_EXE_FILE", 14: "PR_SET_MM_MAP"}
# how long a `maintenance` request waits for the loop to remove protection before it
# answers (under the clients' 30 s timeout; ~3 s measured in the TCG VM)
REMOVE_WAIT_S: Final = 25.0
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
    agent_socket: Path | None = None   # the agent's control socket: its loop heartbeat is watched
    stall_after_s: float = 30.0        # a loop silent this long is stalled: alert, restart
    heartbeat_every_s: float = 2.0
    watch_paths: tuple[Path, ...] = protect.WATCHED   # see protect.PathWatch
    remark_every_s: float = 5.0        # compat: new directories in the protected trees marked
    # BPF objects pinned under the pin root since the last pass (a HIPS policy reloaded by
    # the agent) get their maps, links and the maps their programs use protected by id
    reprotect_every_s: float = 2.0
    # the guardian's own loop silent this long: every thread's stack to stderr (the
    # journal), so a stall of the supervisor itself is never silent
    self_stall_dump_s: float = 10.0
    cgroup: Path | None = None         # run guardian + agent in this cgroup, protected
    token_file: Path | None = None     # the first-run token file: alerted while it is on the host
    token_file_every_s: float = 3600.0
    rearm_retry_s: float = 30.0        # a re-arm that failed is tried again after this long
    # the guardian's own alerts are rate limited like the agent's (a loop of refused
    # tamper attempts on the lsm tier must not flood the store): N more like this
    alert_limits: AlertLimits = field(default_factory=AlertLimits)


@dataclass
class _AgentProc:
    pid: int
    popen: subprocess.Popen[bytes] | None    # None: adopted from a crashed guardian
    ident: Identity | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class HeartbeatWatch:
    """Judges the agent's event loop from its ``ping`` answers (``loop_heartbeat_age_s``).

    A pid alone says nothing about the loop: an agent whose loop waits forever in
    one call still runs and still answers on its control thread.  Stalled when the
    agent reports a heartbeat older than ``stall_after_s``, or when an agent that
    answered before has not answered for ``stall_after_s`` (its control thread is
    stuck too).  An agent that never answered (starting, no socket, a stand-in) is
    not judged; an answer from another pid (someone else's socket) is no answer."""

    stall_after_s: float
    pid: int = 0
    answered: bool = False
    last_ok: float = 0.0
    age: float | None = None

    def observe(self, pid: int, resp: dict[str, Any] | None, now: float) -> str | None:
        """Why the loop of agent ``pid`` is stalled, or None."""
        if pid != self.pid:
            self.pid, self.answered, self.last_ok, self.age = pid, False, now, None
        if resp is not None and resp.get("pid") == pid:
            self.answered = True
            raw = resp.get("loop_heartbeat_age_s")
            if raw is None:
                self.last_ok, self.age = now, None       # its loop is not running yet
                return None
            self.age = float(raw)
            if self.age > self.stall_after_s:
                return f"its event loop made no progress for {self.age:.1f}s"
            self.last_ok = now
            return None
        if self.answered and now - self.last_ok > self.stall_after_s:
            return f"it stopped answering its control socket {now - self.last_ok:.1f}s ago"
        return None


def _parent_of(tgid: int) -> int:
    """The parent pid of ``tgid`` from procfs (never marked); 0 when unknown."""
    try:
        return read_stat(tgid).ppid
    except (OSError, ValueError):
        return 0


#: The agent's whole environment (plus ``BASTION_*`` of the guardian's and the
#: configured ``agent_env``): nothing of ``PYTHON*``, ``LD_*``, ``TMPDIR``, ``HOME``
#: of whoever started the guardian reaches the agent.  PYTHONDONTWRITEBYTECODE is
#: ours: an agent command that is not this interpreter (a wrapper script) still
#: writes no .pyc into the protected tree.
AGENT_BASE_ENV: Final = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                         "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
#: Isolated (-I: no PYTHON* variables, no user site, no script/working directory on
#: sys.path) and no bytecode written (-B: -I ignores PYTHONDONTWRITEBYTECODE).
PYTHON_ISOLATION: Final = ("-I", "-B")


def agent_env(parent: dict[str, str] | os._Environ[str],
              extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """The agent's environment: :data:`AGENT_BASE_ENV`, the ``BASTION_*`` variables
    of ``parent`` (the service unit's configuration), then ``extra``."""
    env = dict(AGENT_BASE_ENV)
    env.update({k: v for k, v in parent.items() if k.startswith("BASTION_")})
    env.update(dict(extra))
    return env


def _python_script(path: str) -> bool:
    """Is ``path`` a script run by this interpreter (a console script's shebang)?"""
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return False
    if not first.startswith(b"#!"):
        return False
    interp = first[2:].split()[0].decode("utf-8", "replace") if first[2:].split() else ""
    return bool(interp) and os.path.realpath(interp) == os.path.realpath(sys.executable)


def agent_command(argv: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` as the agent runs it: this interpreter runs isolated
    (:data:`PYTHON_ISOLATION`).  ``python ARGS`` of this interpreter gains the
    flags; this interpreter's console script (``/usr/bin/bastion run ...``, as
    the service unit names it) becomes ``python -I -B -m bastion.cli.main ...``
    (its shebang would start the interpreter without them); any other program
    runs as given."""
    if not argv:
        return argv
    # a bare name is found on the guardian's PATH (what its starter meant), once:
    # the agent's own PATH is AGENT_BASE_ENV's
    exe = argv[0] if "/" in argv[0] else (shutil.which(argv[0]) or argv[0])
    if os.path.realpath(exe) == os.path.realpath(sys.executable):
        return (exe, *PYTHON_ISOLATION, *argv[1:])
    if os.path.basename(exe) == "bastion" and _python_script(exe):
        return (sys.executable, *PYTHON_ISOLATION, "-m", "bastion.cli.main", *argv[1:])
    return (exe, *argv[1:])


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
        self.store: OwnedStore | None = None   # its own fd table: see store/owned.py
        self.protected: protect.ProtectedSet | None = None
        self.me: Identity | None = None
        self.agent: _AgentProc | None = None
        self.restarts = 0
        self.resumes = 0
        self.alerts = 0
        self.suppressed = 0                # alerts the gate held back (in aggregates)
        self.gate = AlertGate(cfg.alert_limits, time.monotonic())
        self._flushed_at = time.monotonic()
        self.protection = "off"           # "full", "partial", "off"
        self.map_birth = "off"            # "on" | "off: why" (maps protected from creation)
        self.exe_identity = "off"         # "on" | "off: why" (prctl PR_SET_MM guarded)
        self.unenforced: list[str] = []
        self._lock = threading.Lock()
        self._stop_req = threading.Event()
        self._remove_req = threading.Event()
        self._control: ControlServer | None = None
        self._started = time.monotonic()
        self.watch = HeartbeatWatch(cfg.stall_after_s)
        self.stalls = 0
        self.feed_off = False     # stderr's reader went away: alerts are stored, not printed
        self._stalled: tuple[int, str] | None = None   # (agent pid, why), set by the watch thread
        self.paths_watch = protect.PathWatch(cfg.watch_paths)
        self._watched_at = 0.0
        self._marks_at = time.monotonic()
        self._bpf_at = time.monotonic()
        self.bpf_degraded = ""             # why some of our BPF ids are not protected ("" ok)
        self._pin_mnt: int | None = None        # the pin root's mount id when we armed
        self._remount_alerted = -1              # the other mount id last alerted
        self._foreign_pins: set[Path] = set()   # foreign entries under the pin root, alerted
        self.foreign_mounts: set[Path] = set()  # mounts the last pin removal met under it
        self._limits: dict[int, tuple[int, int]] = {}
        self._cg_rel = ""                 # our cgroup as /proc/PID/cgroup names it
        self._end_req = threading.Event()  # `bastion maintenance end`: re-arm now
        self._removed_for: str = ""        # what a maintenance window removed protection for
        self._rearm_at = 0.0               # monotonic: next re-arm try after a failure
        self._token_file_at: float | None = None   # monotonic: last token-file alert

    # ---- set-up ---------------------------------------------------------------------

    def _open_kernel(self) -> TamperKernel:
        pin = self.cfg.pin_root / "tamper"
        tiers = ["lsm", "compat"] if self.cfg.tier == "auto" else [self.cfg.tier]
        last: BastionError | None = None
        for tier in tiers:
            tk = TamperKernel(Tier(tier), pin_dir=pin, cgroup_id=self.cfg.cgroup_id,
                              deadline_s=self.cfg.deadline_s)
            if pin.exists() and self.cfg.tier == "auto":
                # adopt whatever tier is pinned
                links = {p.name for p in (pin / "links").iterdir()} if (pin / "links").is_dir() else set()
                if tier == Tier.LSM and links and "tamper_task_kill" not in links:
                    continue
            adopting = tk.pins_complete()
            try:
                if tier == Tier.LSM and len(tiers) > 1 and not adopting:
                    # a probe: a kernel that refuses BPF LSM says so once, below (info)
                    with quiet_libbpf():
                        tk.open()
                else:
                    tk.open()
                self._crossed_mounts(tk, "clearing a half-made pin set at start")
                return tk
            except KernelError as exc:
                self._crossed_mounts(tk, "clearing a half-made pin set at start")
                if tier == Tier.LSM and adopting and exc.errno == errno.EPERM:
                    # pinned lsm protection refuses us a read-write fd of its maps (the
                    # bpf_map hook): we are not enrolled (a guardian restarted after a
                    # crash, or an impostor).  Enforcement stays as pinned; never fall
                    # back to another tier (that would try to remove these pins).
                    raise KernelError(
                        "the pinned lsm tamper protection refuses this guardian (not an enrolled "
                        "identity, e.g. restarted after a crash): its enforcement and the running "
                        "agent's exemption stay in force, unsupervised",
                        errno=errno.EPERM, location=Location(str(pin))) from exc
                last = exc
                log.info("tamper: %s tier unavailable: %s", tier, exc)
            except BastionError as exc:
                self._crossed_mounts(tk, "clearing a half-made pin set at start")
                last = exc
                log.info("tamper: %s tier unavailable: %s", tier, exc)
        assert last is not None
        raise last

    def setup(self) -> None:
        self.cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = OwnedStore.open(self.cfg.data_dir)
        self._limits = {r: resource.getrlimit(r) for r in RLIMITS}
        self._join_cgroup()
        self.me = Identity.of(os.getpid(), ROLE_GUARDIAN)
        self._arm()

    def _arm(self) -> None:
        """Load (or adopt) the tamper object and fill it; a failure leaves nothing of ours."""
        self.tk = self._open_kernel()
        try:
            self._setup_protection()
        except BaseException:
            # a start that fails leaves nothing of its own pinned (an adopted protection,
            # an earlier guardian's, stays): the next start must not meet our half-done pins
            tk, self.tk = self.tk, None
            if tk is not None and not tk.adopted:
                try:
                    tk.remove()
                except BastionError as exc:
                    log.error("tamper: cannot remove the protection of a failed start: %s", exc)
                finally:
                    self._crossed_mounts(tk, "removing the protection of a failed start")
            if self.files is not None:
                self.files.close()
                self.files = None
            raise

    def _setup_protection(self) -> None:
        assert self.tk is not None and self.me is not None
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
        self._record_pin_mount()
        self._protect_bpf()
        self.protection = "full" if self.tk.tier == Tier.LSM else "partial"
        why = self.tk.map_birth_gap()
        self.map_birth = f"off: {why}" if why else "on"
        if why:
            self._alert("bastion.tamper.map-birth-off",
                        f"our BPF maps are writable by id from their creation until the agent "
                        f"enters their ids: {why}", "high", {"tier": self.tk.tier, "reason": why})
        why = self.tk.exe_identity_gap()
        self.exe_identity = f"off: {why}" if why else "on"
        if why:
            self._alert("bastion.tamper.exe-identity-off",
                        f"a process can take another program's executable identity (prctl "
                        f"PR_SET_MM), which exe: rules, the BPF loader allowlist and trusted "
                        f"installers are keyed on: {why}", "high",
                        {"tier": self.tk.tier, "reason": why})
        if self.tk.tier == Tier.COMPAT:
            self._open_files()
        self._alert("bastion.tamper.protection-on",
                    f"tamper protection on ({self.protection}, tier {self.tk.tier}"
                    f"{', adopted from pins' if self.tk.adopted else ''})", "info",
                    {"tier": self.tk.tier, "adopted": self.tk.adopted,
                     "protected": [o.path for o in self.protected.roots()],
                     "missing": list(self.protected.missing)})
        for path in self.paths_watch.present():
            if Path(path).name == protect.LD_SO_PRELOAD.name:
                self._alert("bastion.tamper.ld-preload",
                            f"{path} exists: every program started on this host, the agent "
                            "included, loads the libraries it names (protected from now on)",
                            "high", {"path": path}, attack=["T1574.006"])

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
        shared = protect.system_libraries(self.protected)
        self.unenforced = list(fg.protect(protect.without(self.protected, shared)))
        self.unenforced += [f"{o.path}: shared library, writes not refused on the compat tier "
                            "(a permission mark would slow every exec on the host)"
                            for o in shared]
        self.files = fg
        if shared:
            self._alert("bastion.tamper.unenforced",
                        f"compat tier: writes to {len(shared)} shared libraries the agent runs "
                        f"(libc, libbpf ...) are not refused; the lsm tier refuses them", "high",
                        {"paths": [o.path for o in shared], "tier": "compat"})

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
        parent = _parent_of(tgid)
        if parent == os.getpid():
            return True
        # the agent's event writer process: enrolled (role writer) by the agent, which alone
        # (with us) may write tamper_idents, and a direct child of the enrolled agent
        a = self.agent.ident if self.agent else None
        if a is None or parent != a.tgid or self.tk is None:
            return False
        try:
            return any(i.tgid == tgid and i.role == ROLE_WRITER and i.alive()
                       for i in self.tk.identities())
        except KernelError:
            return False

    # ---- the agent ------------------------------------------------------------------

    def _spawn(self) -> None:
        # an isolated interpreter and a scrubbed environment: nothing the guardian was
        # started with (PYTHONPATH, PYTHONSTARTUP, LD_PRELOAD, ...) runs in the agent;
        # -B: nothing of ours writes into the protected install tree (no .pyc)
        env = agent_env(os.environ, (*guardian_env(os.getpid()).items(), *self.cfg.agent_env))
        p = subprocess.Popen(list(agent_command(self.cfg.agent_argv)), start_new_session=True,
                             env=env, stdin=subprocess.DEVNULL, preexec_fn=_default_signals)
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

    def _watch_heartbeat(self) -> None:
        """(thread) Ping the agent's socket every ``heartbeat_every_s``; a stalled loop is
        handed to :meth:`_supervise` (the only place that acts on the agent)."""
        sock = self.cfg.agent_socket
        assert sock is not None
        while not self._stop_req.wait(self.cfg.heartbeat_every_s):
            a = self.agent
            if a is None or self._stalled is not None:
                continue
            try:
                resp: dict[str, Any] | None = request(sock, "ping", timeout=2.0)
            except ControlError:
                resp = None
            why = self.watch.observe(a.pid, resp, time.monotonic())
            if why is not None and self.agent is a:
                self._stalled = (a.pid, why)

    def _stop_stalled(self) -> bool:
        """A stalled agent: critical alert, SIGKILL (the supervisor then restarts it)."""
        stalled, self._stalled = self._stalled, None
        a = self.agent
        if stalled is None or a is None or stalled[0] != a.pid:
            return False
        self.stalls += 1
        self._alert("bastion.tamper.agent-stalled",
                    f"agent pid {a.pid} is alive but {stalled[1]}: no event is processed; "
                    "killing and restarting it", "critical",
                    {"agent_pid": a.pid, "why": stalled[1], "heartbeat_age_s": self.watch.age,
                     "stall_after_s": self.cfg.stall_after_s}, attack=DEFAULT_ATTACK)
        try:
            os.kill(a.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True

    def _supervise(self) -> None:
        st = self._agent_state()
        self._keep_in_cgroup(os.getpid(), "guardian")
        if self.agent is not None and st != "dead":
            self._keep_in_cgroup(self.agent.pid, "agent")
        if st == "running":
            if self._stalled is not None and self._stop_stalled():
                return
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
            if not self.gate.admit(rule, alert.process.exe, title, severity, action,
                                   alert.process.pid, time.monotonic(), time.time_ns()):
                self.suppressed += 1
                return
            self._emit(alert)

    def _flush_alerts(self, now: float) -> None:
        """Every interval: one alert per key the gate held back ("N more like this")."""
        if now - self._flushed_at < self.cfg.alert_limits.interval_s:
            return
        self._flushed_at = now
        with self._lock:
            for agg, reason in self.gate.flush(now):
                self._emit(aggregate_alert(agg, reason))

    def _emit(self, alert: Alert) -> None:
        """Store and print one alert (the caller holds ``_lock``)."""
        self.alerts += 1
        if self.store is not None:
            try:
                self.store.add_alert(alert.to_json())
            except BastionError as exc:
                log.error("guardian: storing alert failed: %s", exc)
        if self.feed_off:
            return
        try:
            print(alert.feed_line(), file=sys.stderr, flush=True)
        except (OSError, ValueError) as exc:
            # s24: stderr's reader gone (the journal restarted): the print raised out of
            # the guardian's loop; the alert is stored, the feed dropped
            self.feed_off = True
            log.error("guardian: the alert feed on stderr is off: %s", exc)

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
        elif r.op == "exe-identity":
            sub = r.arg & ~abi.EXE_ID_CHANGED
            how = f"prctl PR_SET_MM, {PR_SET_MM_OPTIONS.get(sub, sub)}"
            # compat kills after the change (exe_fd changed once read): the exe is the one
            # it took, comm its own; otherwise before it (lsm: refused)
            what = (f"its executable identity changed to {r.exe} ({how}; comm {r.comm})"
                    if r.arg & abi.EXE_ID_CHANGED
                    else f"a change of its own executable identity ({how})")
        elif r.op == "bpf-map-fd":
            what = f"a write-mode fd (fmode {r.arg:#x}) of protected map id {r.obj_id}"
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

    def _watch_alerts(self) -> None:
        """Paths whose creation cannot be refused (ld.so.preload, unit drop-ins, the
        unit and its wants link where absent): say loudly when one appears or changes."""
        now = time.monotonic()
        if now - self._watched_at < 1.0:
            return
        self._watched_at = now
        for ch in self.paths_watch.changes():
            preload = Path(ch.path).name == protect.LD_SO_PRELOAD.name
            self._alert("bastion.tamper.runtime-path",
                        f"{ch.path} {ch.kind}: "
                        + ("every program started from now on, the agent included, loads the "
                           "libraries it names" if preload else
                           "changes how systemd starts Bastion")
                        + " (creation of this path cannot be refused)"
                        + (" during a maintenance window" if self.window.is_open() else ""),
                        "high" if self.window.is_open() else "critical",
                        {"path": ch.path, "change": ch.kind, "before": ch.before,
                         "after": ch.after, "verdict": "detected"},
                        action="alert",
                        attack=["T1574.006"] if preload else ["T1562.001", "T1543.002"])

    def _reprotect_bpf(self, now: float) -> None:
        """Every ``reprotect_every_s``: the BPF objects pinned under the pin root now (the
        agent loads and reloads its own after we armed) protected by id, with every map
        their programs use; only new ids are written.  The agent's unpinned objects are
        registered by the agent as it loads them (:class:`bastion.guard.kernel.ObjectGuard`)."""
        if self.tk is None or now - self._bpf_at < self.cfg.reprotect_every_s:
            return
        self._bpf_at = now
        self._protect_bpf()

    def _record_pin_mount(self) -> None:
        """Remember the mount the pin root is on now (we armed there): a later pass that
        finds it on another (a bpffs mounted over it) does not walk that one."""
        got = gk.pin_root_mount(self.cfg.pin_root)
        self._pin_mnt = got if got >= 0 else None
        self._remount_alerted = -1

    def _pin_root_moved(self) -> None:
        """A high alert, once per other mount, when the pin root is no longer on the mount
        it was on when we armed: what is mounted there now (an empty bpffs passes the
        filesystem check) is not walked as ours, and our pins are out of reach by path."""
        if self._pin_mnt is None:
            return
        now = gk.pin_root_mount(self.cfg.pin_root)
        if now in (self._pin_mnt, self._remount_alerted):
            return
        self._remount_alerted = now
        self._alert("bastion.tamper.pin-root-remounted",
                    f"the pin root {self.cfg.pin_root} is no longer on the mount Bastion armed "
                    f"on (mount {self._pin_mnt}, now {'none' if now < 0 else now}): something "
                    f"was mounted over it or it was unmounted; what is there now is not "
                    f"treated as ours", "high",
                    {"pin_root": str(self.cfg.pin_root), "armed_mount": self._pin_mnt,
                     "mount": now, "verdict": "detected"},
                    action="alert", attack=["T1562.001"])

    def _crossed_mounts(self, tk: TamperKernel, when: str) -> None:
        """A high ``bastion.tamper.foreign-mount`` alert for the mounts removing our pins
        met under the pin directory (a tmpfs or FUSE root mounted in it: never entered,
        never unlinked, the directories holding them left: ``bpffs.remove_pins(crossed=)``),
        except those the previous removal met already; ``foreign_mounts`` in the status."""
        got, tk.crossed = set(tk.crossed), []
        new = sorted(got - self.foreign_mounts)
        self.foreign_mounts = got
        if not new:
            return
        self._alert("bastion.tamper.foreign-mount",
                    f"{len(new)} mount{'' if len(new) == 1 else 's'} under the pin root that "
                    f"Bastion did not make, met while {when}: "
                    f"{', '.join(str(p) for p in new[:5])}"
                    + (f" and {len(new) - 5} more" if len(new) > 5 else "")
                    + " (not entered, not removed: the directories holding them stay)", "high",
                    {"paths": [str(p) for p in new[:100]], "count": len(new), "when": when,
                     "pin_root": str(self.cfg.pin_root), "verdict": "detected"},
                    action="alert", attack=["T1562.001"])

    def _protect_bpf(self) -> None:
        """One pass of :meth:`TamperKernel.protect_bpf` over the pin root.  A foreign entry
        there (a pin or symlink someone else made: never walked) is a high alert, once per
        path; a full id set leaves ids unprotected: a high alert when it starts (or its
        reason changes) and ``bpf_id_protection`` degraded in the status until a pass
        protects everything again.  The walk opens only our names (never a symlink, never
        off the pin root's bpffs mount) and reads at most ``PIN_WALK_LISTED`` listing
        entries, so it cannot block this loop or grow with what root puts there; what it
        remembers is the foreign paths of the last pass (bounded the same way)."""
        if self.tk is None:
            return
        foreign: list[Path] = []
        cut: list[Path] = []
        try:
            self._pin_root_moved()
            n = self.tk.protect_bpf(self.cfg.pin_root, foreign=foreign, cut=cut,
                                    mount=self._pin_mnt)
        except KernelError as exc:
            why = str(exc)
            if not self.bpf_degraded:      # once when it starts (the ids left change)
                self._alert("bastion.tamper.bpf-unprotected",
                            f"tamper protection degraded: our BPF objects' ids are not all "
                            f"protected: {why}", "high",
                            {"error": why, "errno": exc.errno, "verdict": "detected"},
                            action="alert", attack=["T1562.001"])
            self.bpf_degraded = why
        else:
            if self.bpf_degraded:
                log.warning("tamper: every BPF id of ours is protected again")
            self.bpf_degraded = ""
            if n["new_map"] or n["new_link"]:
                log.warning("tamper: %d new map ids and %d new link ids protected",
                            n["new_map"], n["new_link"])
        new = [p for p in foreign if p not in self._foreign_pins]
        self._foreign_pins = set(foreign)          # what is there now: re-alert a re-creation
        if new:
            self._alert("bastion.tamper.foreign-pin",
                        f"{len(new)} entr{'y' if len(new) == 1 else 'ies'} under the pin root "
                        f"that Bastion did not make (not protected, not trusted): "
                        f"{', '.join(str(p) for p in new[:5])}"
                        + (f" and {len(new) - 5} more" if len(new) > 5 else "")
                        + (f"; listing cut short in {', '.join(str(p) for p in cut)}" if cut
                           else ""), "high",
                        {"paths": [str(p) for p in new[:100]], "count": len(new),
                         "listing_cut": [str(p) for p in cut],
                         "pin_root": str(self.cfg.pin_root), "verdict": "detected"},
                        action="alert", attack=["T1562.001"])

    def _refresh_marks(self, now: float) -> None:
        """Compat: mark directories created in the protected trees since the last pass (the
        lsm tier protects subtrees by inode ancestry and needs none), and say so: only the
        agent, the guardian or a maintenance window may create them."""
        if self.files is None or now - self._marks_at < self.cfg.remark_every_s:
            return
        self._marks_at = now
        try:
            new = self.files.refresh()
        except BastionError as exc:
            log.error("tamper: cannot refresh the protected marks: %s", exc)
            return
        # the agent's own data dir grows directories of its own (integrity/, shadow/, the
        # Sigma releases): marked, not alerted; anywhere else only the agent's code lives
        data = str(self.cfg.data_dir.resolve())
        new = [p for p in new if p != data and not p.startswith(data + os.sep)]
        if new:
            inside = self.window.is_open()
            self._alert("bastion.tamper.tree-changed",
                        f"{len(new)} new director{'y' if len(new) == 1 else 'ies'} in the protected "
                        f"tree, now protected: {', '.join(new[:5])}"
                        + (" during a maintenance window" if inside else
                           " (created by someone other than Bastion: look at what it holds)"),
                        "high" if inside else "critical",
                        {"new": new, "verdict": "detected", "tier": "compat"}, action="alert",
                        attack=["T1562.001", "T1574"])

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
        tk = self.tk            # the loop may be removing or re-arming it right now
        try:
            idents = [i.to_json() for i in tk.identities()] if tk else []
            idents_error = ""
        except BastionError as exc:
            idents, idents_error = [], f"being removed or re-armed: {exc}"
        return {"pid": os.getpid(), "tier": tk.tier if tk else "none",
                "tamper_protection": self.protection, "tamper_map_birth": self.map_birth,
                "tamper_exe_identity": self.exe_identity,
                "agent_pid": a.pid if a else 0, "restarts": self.restarts, "resumes": self.resumes,
                "alerts": self.alerts, "alerts_suppressed": self.suppressed,
                "adopted": bool(tk and tk.adopted),
                "identities": idents, "identities_error": idents_error,
                "protected": [o.path for o in self.protected.roots()] if self.protected else [],
                "unenforced": self.unenforced,
                "foreign_mounts": [str(p) for p in sorted(self.foreign_mounts)],
                "bpf_id_protection": ({"state": "degraded", "why": self.bpf_degraded}
                                      if self.bpf_degraded else "ok" if tk else "off"),
                "agent_loop_heartbeat_age_s": self.watch.age, "agent_stalls": self.stalls,
                "watched_present": self.paths_watch.present(),
                "cgroup": str(self.cfg.cgroup or ""),
                "maintenance_until": self.window.until(),
                "token_file_on_host": str(self.cfg.token_file) if self.cfg.token_file
                and self.cfg.token_file.exists() else "",
                "uptime_s": round(time.monotonic() - self._started, 1)}

    def _check_token(self, req: dict[str, Any], what: str) -> dict[str, Any] | None:
        """The token proven for ``what`` by challenge-response (the token never travels:
        :mod:`bastion.guard.token`); rate-limited, both outcomes alerted."""
        peer = int(req.get(PEER_KEY, 0))
        nonce = req.get(NONCE_KEY)
        v = self.tokens.verify_proof(req.get("proof"), nonce if isinstance(nonce, bytes) else None,
                                     what, source=source_of(peer))
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
                + (f" (retry in {math.ceil(v.retry_after_s)}s)" if v.retry_after_s else "")}

    def _h_stop(self, req: dict[str, Any]) -> dict[str, Any]:
        bad = self._check_token(req, "stop")
        if bad is not None:
            return bad
        self._remove_req.set()
        self._stop_req.set()
        return {"done": True}

    def _h_maintenance(self, req: dict[str, Any]) -> dict[str, Any]:
        what = str(req.get("what", "maintenance"))
        bad = self._check_token(req, f"maintenance {what}")
        if bad is not None:
            return bad
        self._removed_for = f"maintenance {what}"
        self._end_req.clear()
        self._remove_req.set()
        # answer once the loop has removed protection (s22): the client acts at once —
        # `reset --emergency` unlinks the pins — and, inside the protected scope, was
        # refused (and alerted as tampering) while the loop had not yet come round
        deadline = time.monotonic() + REMOVE_WAIT_S
        while self._remove_req.is_set() and time.monotonic() < deadline \
                and not self._stop_req.is_set():
            time.sleep(0.05)
        if self._remove_req.is_set() or self.tk is not None:
            return {"done": False, "error": f"the maintenance window is open but tamper "
                    f"protection was not removed within {REMOVE_WAIT_S:.0f}s (the guardian's "
                    "alerts say why); nothing may rely on it yet"}
        return {"done": True, "until": self.window.until(), "tamper_protection": self.protection}

    def _h_maintenance_end(self, req: dict[str, Any]) -> dict[str, Any]:
        """`bastion maintenance end`: close the window now and re-arm protection (no token:
        it only gives protection back)."""
        if self.tk is not None and not self._remove_req.is_set():
            was_open = self.window.is_open()
            self.window.close()
            return {"done": True, "rearmed": False, "tamper_protection": self.protection,
                    "why": "tamper protection is on: the window is closed" if was_open
                    else "no maintenance window is open"}
        self._end_req.set()
        self._removed_for = self._removed_for or "maintenance"
        deadline = time.monotonic() + 60
        while self._end_req.is_set() and time.monotonic() < deadline \
                and not self._stop_req.is_set():
            time.sleep(0.05)
        return {"done": not self._end_req.is_set(), "rearmed": self.tk is not None,
                "tamper_protection": self.protection}

    def _rearm_due(self, now: float) -> str:
        """Why protection removed for a maintenance window comes back now ("" = not yet)."""
        if self.tk is not None or not self._removed_for or self._remove_req.is_set() \
                or self._stop_req.is_set() or now < self._rearm_at:
            return ""
        if self._end_req.is_set():
            return "ended with `bastion maintenance end`"
        if not self.window.is_open():
            return "its deadline passed"
        return ""

    def _rearm(self, why: str) -> None:
        """Issue 14.4: the maintenance window closed: tamper protection back on, the agent
        enrolled again, and an alert says so (critical when it cannot be re-armed)."""
        what = self._removed_for
        try:
            self._arm()
        except (BastionError, OSError) as exc:
            self._rearm_at = time.monotonic() + self.cfg.rearm_retry_s
            self._alert("bastion.tamper.rearm-failed",
                        f"maintenance window for {what} closed ({why}) but tamper protection "
                        f"could not be re-armed: {exc}; trying again in "
                        f"{self.cfg.rearm_retry_s:.0f}s", "critical",
                        {"what": what, "why": why, "error": str(exc)}, attack=DEFAULT_ATTACK)
            self._end_req.clear()
            return
        a = self.agent
        if a is not None:
            a.ident = None            # the new object enrols it afresh
            self._enrol_agent()
        self.window.close()
        self._removed_for = ""
        self._end_req.clear()
        self._alert("bastion.tamper.rearmed",
                    f"maintenance window for {what} closed ({why}): tamper protection re-armed "
                    f"({self.protection}, tier {self.tk.tier if self.tk else '?'})", "high",
                    {"what": what, "why": why, "protection": self.protection,
                     "agent_pid": a.pid if a else 0})

    def _token_file_alert(self, now: float) -> None:
        """The first-run token file left on the host: whoever reads it stops Bastion.  Said at
        start and every ``token_file_every_s`` while it is there."""
        path = self.cfg.token_file
        if path is None or (self._token_file_at is not None
                            and now - self._token_file_at < self.cfg.token_file_every_s):
            return
        if not path.exists():
            self._token_file_at = None
            return
        self._token_file_at = now
        self._alert("bastion.tamper.token-file-on-host",
                    f"the maintenance token is still in {path} on this host: whoever can read it "
                    "can stop Bastion; keep a copy off the host and delete it here", "high",
                    {"path": str(path)}, attack=["T1552.001"])

    # ---- the loop ---------------------------------------------------------------------

    def _remove_protection(self) -> None:
        if self.files is not None:
            self.files.close()
            self.files = None
        if self.tk is not None:
            try:
                removed = self.tk.remove()
            finally:
                self._crossed_mounts(self.tk, "removing the protection for a maintenance window")
            self.tk = None
            self.protection = self.map_birth = self.exe_identity = "off"
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
            "maintenance.end": self._h_maintenance_end,
        }, challenge=self.tokens.challenge)
        self._control.start()
        if self.agent is None:
            self._spawn()
        if self.cfg.agent_socket is not None:
            threading.Thread(target=self._watch_heartbeat, name="bastion-heartbeat",
                             daemon=True).start()
        print(f"bastion: guardian running (pid {os.getpid()}, tier "
              f"{self.tk.tier if self.tk else '?'}, protection {self.protection}, "
              f"agent pid {self.agent.pid if self.agent else 0})", file=sys.stderr, flush=True)
        try:
            while not self._stop_req.is_set():
                if self.cfg.self_stall_dump_s > 0:
                    faulthandler.dump_traceback_later(self.cfg.self_stall_dump_s, exit=False)
                if self.tk is not None:
                    for r in self.tk.poll():
                        self._tamper_alert(r)
                self._file_alerts()
                self._refresh_marks(time.monotonic())
                self._reprotect_bpf(time.monotonic())
                self._watch_alerts()
                self._flush_alerts(time.monotonic())
                if self._remove_req.is_set():
                    if self.tk is not None:
                        self._remove_protection()
                    self._remove_req.clear()
                why = self._rearm_due(time.monotonic())
                if why:
                    self._rearm(why)
                self._token_file_alert(time.monotonic())
                self._supervise()
                self._stop_req.wait(0.1)
            self._shutdown_agent()
            return 0
        finally:
            faulthandler.cancel_dump_traceback_later()
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


__all__ = ["Guardian", "GuardianConfig", "HeartbeatWatch"]
