"""The agent: sensors -> process table -> rules -> response -> store, with a
control socket, a live alert feed, health alerts and a clean stop.

One thread polls the sensors and writes the store; the control socket runs
in a second thread and only reads counters.  Everything the agent uses is
passed in; nothing is global.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Final, Sequence, TextIO

from bastion import __version__
from bastion.alert import Alert, AlertProcess
from bastion.alertgate import AlertGate, aggregate_alert
from bastion.config import AgentConfig
from bastion.control import ControlServer
from bastion.detect.engine import Engine, Finding, Rule, RuleContext
from bastion.errors import BastionError, StoreError
from bastion.containers import ContainerResolver
from bastion.events import Event, HipsEvent, to_json
from bastion.eventwriter import EventWriter
from bastion.guard.token import TokenStore
from bastion.metrics import Metrics
from bastion.outputs import OutputManager
from bastion.policy.model import Mode
from bastion.proctable import ProcessTable
from bastion.pump import EventPump, Source
from bastion.respond.dispatch import Dispatcher
from bastion.sensors.base import Sensor
from bastion.store.db import MalformedRecordError, Store
from bastion.store.eventproc import STALL_S as WRITER_STALL_S
from bastion.store.eventproc import EventStoreProcess
from bastion.timefmt import format_time
from bastion.store.remote import store_handlers

if TYPE_CHECKING:  # the kernel-backed parts are built by bastion.assembly, not imported here
    from bastion.fleet.link import FleetLink
    from bastion.enforce.tiers import TierReport
    from bastion.integrity.worker import WorkerScanner
    from bastion.enforce.lsm import BpfLoadGuard
    from bastion.policy.manager import PolicyManager
    from bastion.respond.quarantine import Quarantine
    from bastion.respond.shadow import ShadowKeeper
    from bastion.enforce.provgate import AgentGate
    from bastion.enforce.provgate_lsm import AgentLsmGate
    from bastion.enforce.pipegate import AgentPipeGate
    from bastion.enforce.svcgate_lsm import AgentSocketGate
    from bastion.guard.kernel import ObjectGuard

log = logging.getLogger("bastion.agent")

# How often the running HIPS policy is re-resolved (files replaced by rename).
RESOLVE_INTERVAL_S: Final = 2.0        # stat the resolved paths
FULL_RESOLVE_INTERVAL_S: Final = 30.0  # globs and subjects too


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class Summary:
    uptime_s: float = 0.0
    events: int = 0
    alerts: int = 0
    suppressed: int = 0      # alerts held back by the rate limit or quota (in aggregates)
    drops: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    enforcement: str = ""    # what became of pinned HIPS enforcement at the stop


    def line(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.by_type.items(), key=lambda kv: -kv[1])[:6])
        return (f"bastion: stopped after {self.uptime_s:.1f}s: {self.events} events"
                f"{' (' + top + ')' if top else ''}, {self.alerts} alerts"
                f"{f' (+{self.suppressed} summarised in aggregates)' if self.suppressed else ''}, "
                f"{self.drops} dropped" + (f"; {self.enforcement}" if self.enforcement else ""))


@dataclass
class StoreHealth:
    """Whether the store takes writes; what could not be written meanwhile."""

    state: str = "ok"            # ok | failing
    error: str = ""
    since: str = ""              # when it started failing (RFC 3339)
    failures: int = 0            # failed writes
    events_not_stored: int = 0   # events given to the outputs but not stored
    alerts_lost: int = 0         # alerts neither stored nor held (the queue was full)
    malformed: int = 0           # records the store refused as malformed (the store works)
    recovered: int = 0           # times the store came back

    def to_json(self, queued: int) -> dict[str, Any]:
        return {"state": self.state, "error": self.error, "since": self.since,
                "failures": self.failures, "alerts_queued": queued,
                "alerts_lost": self.alerts_lost, "events_not_stored": self.events_not_stored,
                "malformed": self.malformed,
                "recovered": self.recovered}


STORE_RETRY_S: Final = 5.0   # a failing store is tried again this often
# Events waiting for the writer thread (store rows, event outputs); beyond, batches are shed
# (counted in the store's events_not_stored and events_shed, alerted once per interval).
WRITER_MAX_EVENTS: Final = 50_000
# findings whose event rows are kept when the writer's queue is full (they may evict
# queued rows); low and medium ones are cheap to raise in a loop (s16): shed like others
_PINNING: Final = frozenset({"high", "critical"})


def _by_rule(pinned: Sequence[tuple[Event, str]]) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for ev, rule in pinned:
        out.setdefault(rule, []).append(ev)
    return out


@dataclass
class AgentParts:
    """The optional parts of an agent, built by :mod:`bastion.assembly`.

    ``quarantine``, ``shadow`` and ``bpf_guard`` are opened by the agent: one
    that cannot open is reported (medium alert) and the agent goes on
    without it.  ``notices`` are findings raised at start (e.g. a setting
    this kernel cannot honour)."""

    policies: PolicyManager | None = None
    quarantine: Quarantine | None = None
    shadow: ShadowKeeper | None = None
    # issue 15: must-stop opens of an untrusted tree refused (opened after the sensors)
    provgate: AgentGate | None = None
    # issue 15, lsm tier: the same decision in the LSM hooks (creates, renames, unlinks,
    # truncates, log wiping, security-tool kills too); when it runs, the fanotify gate
    # keeps the provenance maps filled and marks nothing
    lsmgate: AgentLsmGate | None = None
    # issue 15, lsm tier (s15-svc): control sockets refused to an untrusted tree
    svcgate: AgentSocketGate | None = None
    # issue 15 (s23-pipegate): a decoded payload piped into a shell, killed at exec
    pipegate: AgentPipeGate | None = None
    bpf_guard: BpfLoadGuard | None = None
    bpf_loaders: tuple[Path, ...] = ()
    outputs: OutputManager | None = None
    fleet: FleetLink | None = None       # NATS fleet link (policy rollout, host status)
    metrics: Metrics | None = None
    notices: tuple[Finding, ...] = ()
    sigma: dict[str, Any] = field(default_factory=dict)   # rules live, from where, or why none
    sigma_rules: tuple[Rule, ...] = ()                     # the Sigma group in the engine
    # reload the Sigma group (after `bastion sigma update`): (rules, info like ``sigma``)
    sigma_loader: Callable[[], tuple[list[Rule], dict[str, Any]]] | None = None
    # container context on every event (local cgroup + runtime state, cached by cgroup id)
    containers: ContainerResolver | None = None
    # under the guardian: enrol the event writer process (pid) with tamper protection so
    # it may write the protected store; returns the undo (bastion.assembly)
    writer_enrol: Callable[[int], Callable[[], None]] | None = None
    # under the guardian: our BPF objects' maps/links protected by id as they load; its
    # refresh() fills the id sets again after protection was re-armed (bastion.assembly)
    object_guard: ObjectGuard | None = None
    # more control-socket commands the assembly builds (``shadow.rollback``: the shadow
    # index is in the protected data dir, so `bastion rollback` runs in the agent)
    control: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)


class Agent:
    """One running agent: owns the loop that turns events into stored events and alerts.

    It owns the process table's updates, rule evaluation (through the
    injected :class:`~bastion.detect.engine.Engine`), the hand-off of
    findings to the :class:`~bastion.respond.dispatch.Dispatcher` (the only
    part that acts), the store writes, the live alert feed, health alerts
    (drops, shed state, output drops), the control socket and a clean stop.
    It builds nothing: :func:`bastion.assembly.build_agent` injects every
    part, and the sources are drained by the shared :class:`~bastion.pump.EventPump`.
    """

    def __init__(
        self,
        *,
        policy: AgentConfig,
        sensors: Sequence[Sensor],
        store: Store,
        procs: ProcessTable,
        engine: Engine,
        dispatcher: Dispatcher,
        parts: AgentParts | None = None,
        tier: TierReport | None = None,
        socket_path: Path | None = None,
        feed: TextIO | None = None,
        feed_json: bool = False,
        apply_opts: dict[str, Any] | None = None,
        keep_pins: bool = False,
        pin_dir: Path | None = None,
        test_deadline: float | None = None,
        store_process: bool = False,
    ) -> None:
        """``store_process``: event rows are written by a writer process of their own
        (:mod:`bastion.store.eventproc`; the assembly's choice) instead of a thread."""
        parts = parts or AgentParts()
        self.policy = policy
        self.sensors = list(sensors)
        self.store = store
        self.tier = tier
        self.feed = feed
        self.feed_json = feed_json
        self.procs = procs
        self.engine = engine
        self.ctx = RuleContext(self.procs)
        self.quarantine = parts.quarantine
        self.shadow = parts.shadow
        self.provgate = parts.provgate
        self.lsmgate = parts.lsmgate
        self.svcgate = parts.svcgate
        self.pipegate = parts.pipegate
        self.bpf_guard = parts.bpf_guard
        self.bpf_loaders = parts.bpf_loaders
        self.dispatcher = dispatcher
        self.outputs = parts.outputs
        self.metrics = parts.metrics
        self.policies = parts.policies
        self.fleet = parts.fleet
        if self.fleet is not None:
            self.fleet.bind(self._fleet_apply if self.policies is not None else None,
                            self.raise_fleet_alert, self._fleet_info)
        self.containers = parts.containers
        self._ctr_gen = 0
        self.apply_opts = apply_opts or {}
        self.keep_pins = keep_pins        # under the guardian: enforcement outlives restarts
        self.pin_dir = pin_dir
        self.test_deadline = test_deadline   # tests: enforcement expires by itself
        self._policy_lock = threading.Lock()
        self.control = ControlServer(socket_path, {
            "ping": lambda req: {"pid": os.getpid(), "data_dir": str(self.store.path.parent),
                                 "loop_heartbeat_age_s": self.loop_heartbeat_age()},
            "status": lambda req: self.status(),
            "policy.apply": self._policy_apply,
            "policy.show": self._policy_show,
            "sigma.update": self._sigma_update,
            "sigma.rollback": self._sigma_rollback,
            "sigma.job": lambda req: {"job": dict(self._sigma_job)},
            **store_handlers(self.store.path.parent, lambda: self.store.anchor),
            **parts.control,
        }, challenge=TokenStore(self.store.path.parent).challenge) if socket_path else None
        self.summary = Summary()
        self._started = time.monotonic()
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self._last_drops = 0
        self._last_shed = 0
        self._last_fail_opens = self._last_fail_closed = 0
        self.limits = policy.alerts
        self.gate = AlertGate(self.limits, self._started)
        self._last_flush = self._started
        self._last_drop_alert = self._last_store_alert = float("-inf")
        self._drops_by_class: dict[str, int] = {}
        self._drops_by_ring: dict[str, int] = {}
        self._drops_alerted: dict[str, int] = {}
        self._drops_ring_alerted: dict[str, int] = {}
        self.store_health = StoreHealth()
        self._store_queue: deque[dict[str, Any]] = deque()   # alerts waiting for the store
        self._store_retry_at = 0.0
        self._stored_events: int | None = None   # counted once at start, then kept by the loop
        self._lock = threading.Lock()
        self.ready = threading.Event()   # set once every sensor is open
        self._anchor_said = ""   # the alert chain anchor-file failure last alerted
        self._pending: deque[Finding] = deque(maxlen=1024)  # findings raised off the loop thread
        self._pending.extend(parts.notices)
        self.sigma = dict(parts.sigma)
        self._sigma_rules = list(parts.sigma_rules)
        self._sigma_loader = parts.sigma_loader
        self._sigma_swap: deque[tuple[list[Rule], dict[str, Any]]] = deque(maxlen=1)
        self._sigma_job: dict[str, Any] = {}
        self._sigma_lock = threading.Lock()
        self._why_off: dict[str, str] = {}   # optional part -> why it is not running
        self._last_health = self._last_retention = 0.0
        self._last_resolve = self._last_full_resolve = 0.0
        self.integrity_scanner: WorkerScanner | None = None   # set by the integrity thread
        self._heartbeat = time.monotonic()   # the loop's last round (set by _tick)
        # store rows and event outputs: off the loop while run() runs (inline otherwise)
        self._writer: EventWriter[Event] | None = None
        self._last_shed_events = 0
        self._last_shed_alert = float("-inf")
        self._writer_said = ""   # the writer error last alerted
        self.writer_max_events = WRITER_MAX_EVENTS
        self.writer_stall_s = WRITER_STALL_S   # the writer process: no answer with work
        self.store_process = store_process
        self._writer_enrol = parts.writer_enrol
        self._object_guard = parts.object_guard
        self._store_proc: EventStoreProcess | None = None   # while run() runs, if asked
        self._proc_said = ""    # the writer process's error last alerted
        self._stored_facts = 0   # events the writer process stored since the start
        self._stored_rows = 0    # in this many rows (exact repeats coalesced)
        self._last_kept_shed = 0
        self.finding_rows_shed_low = 0   # rows of low/medium findings shed with a full queue
        self._last_evicted = 0
        self._last_evicted_alert = -1e9

    # ---- status (control thread) -------------------------------------------------

    def loop_heartbeat_age(self) -> float | None:
        """Seconds since the event loop last completed a round; None before it runs.

        The control socket answers from its own thread, so a loop stuck in one
        call (a blocking open, a deadlock) still answers ``ping``: the guardian
        judges the agent by this age, not by its pid or its socket."""
        if not self.ready.is_set():
            return None
        return round(time.monotonic() - self._heartbeat, 3)

    def _events_per_s(self) -> float:
        with self._lock:
            if len(self._rate) < 2:
                return 0.0
            (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def status(self) -> dict[str, Any]:
        programs = 0
        ring_fill = 0.0
        missing: list[str] = []
        for s in self.sensors:
            programs += len(s.attached)
            missing += s.missing
            ring_fill = max(ring_fill, s.ring_fill())
        uptime = time.monotonic() - self._started
        return {
            "version": __version__,
            "pid": os.getpid(),
            "tier": self.tier.tier if self.tier else "unknown",
            "capabilities": {c.name: {"available": c.available, "mechanism": c.mechanism}
                             for c in self.tier.capabilities} if self.tier else {},
            "policy": self.policy.source,
            "sensors": [s.name for s in self.sensors],
            "event_source": ", ".join(str(getattr(s, "source", s.name)) for s in self.sensors),
            "programs_attached": programs,
            "programs_missing": missing,
            "events_total": self.summary.events,
            "events_per_s": round(self._events_per_s(), 1),
            "drops": self.summary.drops,
            "drops_by_class": dict(self._drops_by_class),
            "drops_by_ring": dict(self._drops_by_ring),
            "ring_fill": round(ring_fill, 4),
            "alerts_total": self.summary.alerts,
            "alerts_suppressed": self.summary.suppressed,
            "alert_limits": {"interval_s": self.limits.interval_s, "per_rule": self.limits.per_rule,
                             "quota": self.limits.quota},
            "engine": self.engine.stats(),
            "quarantine": "loaded" if self.quarantine is not None else "unavailable (kill instead)",
            "shadow": self.shadow.stats() if self.shadow is not None else "off",
            "shield_usage": (self.shadow.store.top_usage()
                             if self.shadow is not None and self.shadow.is_open else {}),
            "policy_mode": (self.policies.current.policy.hips.mode.value
                            if self.policies and self.policies.current else "none"),
            "policy_generation": (self.policies.current.gen
                                  if self.policies and self.policies.current else 0),
            "policy_degraded": (self.policies.current.degraded
                                if self.policies and self.policies.current else []),
            "hips_files": self.policies.file_stats() if self.policies else {},
            "file_read_check": self.policies.file_read_check() if self.policies else "",
            # container context: lookups, first resolutions, cached cgroups, state read errors
            "containers": self.containers.stats() if self.containers is not None else "off",
            "uptime_s": round(uptime, 1),
            "loop_heartbeat_age_s": self.loop_heartbeat_age(),
            "rss_mb": round(rss_mb(), 1),
            "cpu_s": round(cpu_seconds(), 2),
            "data_dir": str(self.store.path.parent),
            "store_events": self._count_stored_events(),
            "store": {**self.store_health.to_json(len(self._store_queue)),
                      "events_queued": self._events_queued(),
                      "events_shed": self._events_shed(),
                      "writer": self._writer_status()},
            "protections": self.protections(),
            # under the guardian: "ok", or degraded while some of our BPF objects' ids are
            # not in the tamper id sets (a full set, a failed load hook)
            "bpf_id_protection": self._bpf_id_protection(),
            "fleet": self.fleet.stats() if self.fleet is not None else "off",
        }

    def _bpf_id_protection(self) -> dict[str, Any] | str:
        g = self._object_guard
        if g is None:
            return "off"
        if not g.unprotected:
            return "ok"
        return {"state": "degraded", "unprotected": dict(g.unprotected)}

    def _events_queued(self) -> int:
        sp, w = self._store_proc, self._writer
        return (sp.queued if sp is not None else 0) + (w.queued if w is not None else 0)

    def _events_shed(self) -> int:
        """Events whose storage (or event-output delivery) was shed above capacity."""
        sp, w = self._store_proc, self._writer
        return (sp.shed if sp is not None else 0) + (w.shed if w is not None else 0)

    def _writer_status(self) -> dict[str, Any]:
        sp = self._store_proc
        if sp is None:
            return {"kind": "thread" if self._writer is not None else "inline"}
        return {"kind": "process", "pid": sp.pid, "restarts": sp.restarts, "lost": sp.lost,
                "events_stored": self._stored_facts, "rows_stored": self._stored_rows,
                "finding_rows_shed": sp.kept_shed, "rows_evicted": sp.evicted,
                "finding_rows_shed_low_medium": self.finding_rows_shed_low}

    def _count_stored_events(self) -> int | None:
        """Events in the store (kept by the loop: a count(*) of millions of rows under the
        store lock would stall status and the loop alike); None while the store fails."""
        return self._stored_events if self.store_health.state == "ok" else None

    def protections(self) -> dict[str, dict[str, Any]]:
        """Each protection Bastion turns on by default: on or off, and why."""
        pol = self.policy
        out: dict[str, dict[str, Any]] = {}
        behaviour = [r for r in self.engine.rules if r.name.startswith("behavior.")]
        out["behaviour blocking"] = {
            "on": bool(behaviour),
            "detail": f"{len(behaviour)} rules" + (", dry run (responses not taken)"
                                                   if pol.behavior.dry_run else ", responses taken")}
        cur = self.policies.current if self.policies else None
        out["hips"] = {"on": cur is not None and bool(cur.policy.hips.rules),
                       "detail": (f"{len(cur.policy.hips.rules)} rules, mode {cur.policy.hips.mode.value}"
                                  if cur is not None and cur.policy.hips.rules else
                                  "no per-program rules (bastion learn, bastion policy apply)")}
        if self.shadow is not None:
            sh = self.shadow
            out["ransomware shield"] = {
                "on": True, "detail": f"shadow copies of {', '.join(map(str, sh.protected))} "
                f"within {pol.shield.max_bytes // 2**20} MiB"
                + (f"; {sh.over_budget} directories beyond max_dirs {pol.shield.max_dirs} "
                   "not shielded" if sh.over_budget else "")
                + (f"; absent here: {', '.join(map(str, sh.missing))}" if sh.missing else "")
                + (f"; trusted entries that trust nothing (not root-only files): "
                   f"{', '.join(sh.untrusted_entries)}" if sh.untrusted_entries else "")}
        else:
            out["ransomware shield"] = {"on": False, "detail": self._why_off.get(
                "shield", "no shield.protect directories in the policy")}
        if self.lsmgate is not None and self.lsmgate.gate is not None:
            gs = self.lsmgate.stats()
            out["provenance gate"] = {
                "on": True, "detail": f"in the LSM hook: {gs.get('objects', 0)} objects, "
                f"{gs.get('names', 0)} names, {gs.get('ancestors', 0)} directories above them, "
                f"{gs.get('tools', 0)} security-tool processes"
                + (", dry run (would-deny)" if self.lsmgate.dry_run else "")}
        elif self.provgate is not None and self.provgate.gate is not None:
            why = self._why_off.get("lsmgate")
            out["provenance gate"] = {
                "on": True, "detail": "fanotify (open refusals of existing objects only, "
                f"marked again every {self.provgate.refresh_s:g}s"
                + (f", {self.provgate.refresh_state()}" if self.provgate.refresh_state() else "")
                + ")" + (f"; the in-hook gate {why}" if why else "")
                + "; NOT refused on this tier for untrusted trees: creates, renames, "
                "unlinks, truncate(2)/ftruncate of logs (the tree killed after), "
                "security-tool kills, rewrites through an open file (fcntl clearing "
                "O_APPEND, shared writable mmap, fallocate, chattr), renames of and mounts on the directories above objects, objects "
                "made since the last pass (a file in a new subdirectory of a marked tree), "
                "firewall changes (nftables batches, legacy table replaces)"}
        else:
            out["provenance gate"] = {"on": False, "detail": self._why_off.get(
                "lsmgate", self._why_off.get("provgate", "no kernel event sensor"))}
        if self.svcgate is not None and self.svcgate.gate is not None:
            ss = self.svcgate.stats()
            compat = self.svcgate.gate.mechanism != "lsm-prov"
            out["control-socket gate"] = {
                "on": True, "detail": (f"at connect's exit (compat): {ss.get('servers', 0)} "
                                       f"tmux/screen executables, the client killed"
                                       + (", dry run (would-kill)" if self.svcgate.dry_run else ""))
                if compat else f"in the LSM hook: {ss.get('sockets', 0)} sockets"
                + (", dry run (would-deny)" if self.svcgate.dry_run else "")}
        if self.pipegate is not None and self.pipegate.gate is not None:
            ps = self.pipegate.stats()
            out["pipe gate"] = {
                "on": True, "detail": f"at exec: {ps.get('programs_entered', 0)} installed "
                                      f"decoders and shells, the process completing a "
                                      f"decoder -> shell pipe killed"
                + (", dry run (would-kill)" if self.pipegate.dry_run else "")}
        if self.provgate is not None:   # the maps both gates read: overflow, dry run
            pg = out["provenance gate"]
            gate_state = self.provgate.overflow_state()
            if self.provgate.dry_run and self.lsmgate is None:
                pg["detail"] = f"{pg['detail']}; dry run (would-deny)"
            if gate_state:
                pg["detail"] = f"{pg['detail']}; {gate_state}"
        if pol.integrity.interval_s and self.tier is not None:
            st = self.integrity_scanner.status() if self.integrity_scanner is not None else {}
            last = st.get("last_scan")
            out["kernel integrity guard"] = {
                "on": True, "detail": f"scan every {pol.integrity.interval_s:g}s; "
                + (str(st.get("baseline_note") or f"baseline {st.get('baseline')}") if st
                   else "taking the baseline of this kernel release")
                + (f"; last scan {format_time(int(float(last) * 1e9))}: "
                   f"{st.get('last_findings')} findings" if last else "")
                + (f"; baseline unusable: {st['baseline_error']}" if st.get("baseline_error") else "")
                + (f"; checks not run: {', '.join(st['checks_not_run'])}"
                   if st.get("checks_not_run") else ""),
                **({"state": st} if st else {})}
        else:
            out["kernel integrity guard"] = {"on": False, "detail": (
                "integrity.interval is 0 in the policy" if self.tier is not None
                else "replay: no kernel")}
        n = int(self.sigma.get("rules", 0))
        out["sigma"] = {"on": n > 0, "detail": str(self.sigma.get("detail") or (
            f"{n} rules live" if n else "no rules installed: bastion sigma update"))}
        return out

    def add_handler(self, cmd: str, handler: Any) -> None:
        """An extra control command (e.g. the token-gated `stop`)."""
        if self.control is not None:
            self.control.handlers[cmd] = handler

    def raise_alert(self, rule: str, title: str, severity: str, evidence: dict[str, Any]) -> None:
        """An alert from another thread (control handlers): queued for the loop."""
        self._pending.append(Finding(rule=rule, title=title, severity=severity, attack=(),
                                     action="alert", event=None, pid=int(evidence.get("client_pid") or 0),
                                     evidence=evidence))

    # ---- fleet (the fleet link's thread) ----------------------------------------------

    def raise_fleet_alert(self, rule: str, title: str, severity: str,
                          evidence: dict[str, Any]) -> None:
        self._pending.append(Finding(rule=rule, title=title, severity=severity,
                                     attack=("T1072",) if severity != "info" else (),
                                     action="alert", event=None, pid=os.getpid(),
                                     evidence=evidence))

    def _fleet_info(self) -> dict[str, Any]:
        return {"tier": str(self.tier.tier) if self.tier is not None else "replay",
                "agent_pid": os.getpid(), "events_total": self.summary.events}

    def _fleet_apply(self, text: str, source: str) -> dict[str, Any]:
        """A verified fleet policy: the same path as ``policy.apply`` (parse, compile and
        check everything, then one atomic swap); its signature stands for the token."""
        assert self.policies is not None
        with self._policy_lock:
            applied = self.policies.apply_text(text, source, **self.apply_opts)
        for d in applied.degraded:
            self._pending.append(Finding(
                rule="bastion.policy.degraded", title=f"Policy rule not enforceable here: {d}",
                severity="high", attack=(), action="alert", event=None, pid=os.getpid(),
                evidence={"policy": source, "degraded": d}))
        return applied.summary()

    # ---- policy (control thread) -----------------------------------------------------

    def _policy_apply(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.policies is None:
            raise ValueError("this agent runs without HIPS enforcement (replay mode)")
        text, source = req.get("text"), req.get("source", "<control>")
        if not isinstance(text, str) or not isinstance(source, str):
            raise ValueError("policy.apply needs 'text' and 'source' strings")
        mode = Mode(req["mode"]) if req.get("mode") else None
        # issue 13 item 10: the token once protection is on; every apply alerted (chained)
        from bastion.guard.control import PolicyApplyGuard

        guard = PolicyApplyGuard(self.store.path.parent,
                                 self.pin_dir.parent if self.pin_dir else None, self.raise_alert)
        refused = guard.check(req, mode.value if mode else None)
        if refused is not None:
            return {"applied": False, "error": refused}
        try:
            with self._policy_lock:
                old = self.policies.current.summary() if self.policies.current else None
                applied = self.policies.apply_text(
                    text, source, mode=mode, force=bool(req.get("force")),
                    allow_degraded=bool(req.get("allow_degraded")))
        except BastionError as exc:
            return {"applied": False, "error": str(exc)}
        guard.applied(old, applied.summary(), req)
        for d in applied.degraded:
            self._pending.append(Finding(
                rule="bastion.policy.degraded", title=f"Policy rule not enforceable here: {d}",
                severity="high", attack=(), action="alert", event=None, pid=os.getpid(),
                evidence={"policy": source, "degraded": d}))
        return {"applied": True, **applied.summary()}

    def _policy_show(self, req: dict[str, Any]) -> dict[str, Any]:
        cur = self.policies.current if self.policies else None
        return {"policy": cur.summary() if cur else None}

    # ---- sigma (control thread starts it; a worker thread runs it; the loop swaps) ----------

    def _sigma_gate(self, req: dict[str, Any], cmd: str, args: dict[str, Any]) -> str | None:
        """Issue 14.4: once tamper protection is on, replacing the live Sigma set (update or
        rollback) needs the maintenance token, like ``policy.apply``; refusals alerted."""
        from bastion.guard.control import TokenGate, sigma_subject

        gate = TokenGate(self.store.path.parent, self.pin_dir.parent if self.pin_dir else None,
                         self.raise_alert)
        return gate.gate(req, sigma_subject(cmd, args), cmd, cmd.replace(".", " "))

    def _sigma_update(self, req: dict[str, Any]) -> dict[str, Any]:
        """Install a Sigma rule set from inside the agent (exempt from tamper protection, so
        the protected data dir can take it) and make it live without a restart."""
        args = req.get("args")
        if not isinstance(args, dict):
            raise ValueError("sigma.update needs 'args'")
        return self._sigma_start(req, "sigma.update", args)

    def _sigma_rollback(self, req: dict[str, Any]) -> dict[str, Any]:
        """Make the previous installed set live again (in the agent, like an update)."""
        return self._sigma_start(req, "sigma.rollback", {})

    def _sigma_start(self, req: dict[str, Any], cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        refused = self._sigma_gate(req, cmd, args)
        if refused is not None:
            return {"started": False, "error": refused}
        with self._sigma_lock:
            if self._sigma_job.get("state") == "running":
                return {"started": False, "error": "an update is already running"}
            job_id = int(self._sigma_job.get("id", 0)) + 1
            self._sigma_job = {"id": job_id, "state": "running", "cmd": cmd}
        threading.Thread(target=self._sigma_update_job, args=(job_id, cmd, args), daemon=True,
                         name="bastion-sigma-update").start()
        return {"started": True, "id": job_id}

    def _sigma_update_job(self, job_id: int, cmd: str, args: dict[str, Any]) -> None:
        from bastion.detect.sigma import install as inst

        data_dir = self.store.path.parent
        try:
            if cmd == "sigma.rollback":
                res = inst.rollback(data_dir)
            else:
                from_path = args.get("from_path")
                res = inst.update(data_dir, from_path=Path(from_path) if from_path else None,
                                  url=str(args.get("url") or inst.DEFAULT_API),
                                  tag=args.get("tag"),
                                  asset=str(args.get("asset") or inst.DEFAULT_ASSET),
                                  sha256=args.get("sha256"),
                                  allow_unverified=bool(args.get("allow_unverified")),
                                  token=args.get("token"))
            live = False
            if self._sigma_loader is not None and self.policy.sigma_installed:
                self._sigma_swap.append(self._sigma_loader())
                live = True
            job: dict[str, Any] = {"id": job_id, "state": "done", "result": res.to_json(),
                                   "live": live}
        except BastionError as exc:
            job = {"id": job_id, "state": "failed", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a job's failure is reported, never lost
            log.exception("%s failed", cmd)
            job = {"id": job_id, "state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        with self._sigma_lock:
            self._sigma_job = job

    def _swap_sigma(self) -> None:
        while self._sigma_swap:
            rules, info = self._sigma_swap.popleft()
            before, after = int(self.sigma.get("rules", 0)), int(info.get("rules", 0))
            self.engine.replace(self._sigma_rules, rules)
            self._sigma_rules = list(rules)
            self.sigma = info
            # fewer live rules is how a set swapped in to blind detection looks: said loudly
            self._pending.append(Finding(
                rule="bastion.sigma.updated", severity="high" if after < before else "info",
                attack=("T1562.001",) if after < before else (), action="alert", event=None,
                pid=os.getpid(), title=f"Sigma rules reloaded: {before} -> {after} rules live",
                evidence={**{k: v for k, v in info.items() if k != "detail"},
                          "rules_before": before}))

    # ---- the loop ------------------------------------------------------------------

    def _alert(self, f: Finding) -> None:
        """Act (the dispatcher always takes the action), then emit the alert unless the
        rate limit or quota holds it back; held-back alerts come out in aggregates."""
        now_ns = time.time_ns()
        d = self.dispatcher
        if d.passive(f):
            # no act, no hook: the gate first, and a held-back alert is never built (issue
            # 16.3: most findings of a burst are held; the alert and its event's JSON were
            # built for each).  Its severity and action are the finding's
            if not self.gate.admit(f.rule, d.alert_exe(f), f.title, f.severity, f.action,
                                   f.pid, time.monotonic(), now_ns):
                d.held(f)
                self.summary.suppressed += 1
                return
            alert = d.dispatch(f, now_ns)
            self._pending.extend(d.take_notices())
            self._emit(alert)
            return
        alert = d.dispatch(f, now_ns)
        self._pending.extend(d.take_notices())   # an act refused on ourselves
        if not self.gate.admit(f.rule, alert.process.exe, f.title, alert.severity, alert.action,
                               f.pid, time.monotonic(), now_ns):
            self.summary.suppressed += 1
            return
        self._emit(alert)

    def _emit(self, alert: Alert) -> None:
        record = alert.to_json()
        self._store_alert(record)
        self.summary.alerts += 1
        if self.store.anchor_error != self._anchor_said:   # said once per distinct failure
            self._anchor_said = self.store.anchor_error
            if self._anchor_said:
                self._pending.append(Finding(
                    rule="bastion.store.chain_anchor", severity="critical", attack=("T1070",),
                    action="alert", title=f"Alert log anchor file not written: {self._anchor_said}",
                    event=None, pid=os.getpid(), evidence={"detail": self._anchor_said}))
        if self.outputs is not None:
            # with its place in the chain: the remote copy anchors the chain's length and head
            anchor = self.store.anchor
            self.outputs.publish_alert({**record, "chain": anchor.to_json()} if anchor else record)
        if self.metrics is not None:
            self.metrics.alert(alert.severity, alert.action)
        if self.feed is not None:
            try:
                self.feed.write((json.dumps(record) if self.feed_json else alert.feed_line())
                                + "\n")
                self.feed.flush()
            except (OSError, ValueError) as exc:
                # s24: its reader gone (the journal restarted, a pager quit, a terminal
                # closed): the write raised out of the loop and ended it.  The feed is
                # dropped; the store and the outputs have every alert
                log.error("live alert feed: %s: the feed is off (alerts still go to the "
                          "store and the outputs)", exc)
                self.feed = None

    def _flush_aggregates(self, now: float) -> None:
        """One alert per key held back since the last flush: "N more like this"."""
        self._last_flush = now
        for agg, reason in self.gate.flush(now):
            self._emit(aggregate_alert(agg, reason))

    # ---- the store: a failing store never stops the loop --------------------------------

    def _store_failed(self, what: str, exc: StoreError) -> None:
        h = self.store_health
        h.failures += 1
        h.error = f"{what}: {exc}"
        if h.state == "ok":
            h.state, h.since = "failing", format_time(time.time_ns())
            log.error("store failing (%s); enforcement and outputs go on, alerts are held in "
                      "memory (up to %d)", exc, self.limits.store_queue)
        self._store_retry_at = time.monotonic() + STORE_RETRY_S

    def _store_usable(self) -> bool:
        return self.store_health.state == "ok" or time.monotonic() >= self._store_retry_at

    def _store_alert(self, record: dict[str, Any]) -> None:
        self._store_queue.append(record)
        if len(self._store_queue) > self.limits.store_queue:
            self._store_queue.pop()          # the newest goes: it reached the outputs already
            self.store_health.alerts_lost += 1
        self._drain_store_queue()

    def _drain_store_queue(self) -> None:
        """Write the held alerts, oldest first, while the store takes them."""
        if not self._store_usable():
            return
        q = self._store_queue
        written = 0
        while q:
            try:
                self.store.add_alert(q[0])
            except MalformedRecordError as exc:   # the record, not the store: never wedges
                log.error("alert not stored: %s", exc)
                self.store_health.malformed += 1
                q.popleft()
                continue
            except StoreError as exc:
                self._store_failed("storing an alert", exc)
                return
            q.popleft()
            written += 1
        self._store_recovered(written)

    def _store_events(self, rows: list[dict[str, Any]], drain_alerts: bool = True,
                      times_ns: Sequence[int] | None = None) -> None:
        if not self._store_usable():
            self.store_health.events_not_stored += len(rows)
            return
        try:
            self.store.add_events(rows, times_ns=times_ns)
        except MalformedRecordError as exc:
            log.error("event batch not stored: %s", exc)
            self.store_health.malformed += 1
            self.store_health.events_not_stored += len(rows)
            return
        except StoreError as exc:
            self.store_health.events_not_stored += len(rows)
            self._store_failed(f"storing {len(rows)} events", exc)
            return
        if self._stored_events is not None:
            self._stored_events += len(rows)
        if drain_alerts:   # (not from the writer thread: alerts are the loop's)
            self._drain_store_queue()

    def _store_recovered(self, written: int) -> None:
        h = self.store_health
        if h.state == "ok":
            return
        h.state, h.recovered = "ok", h.recovered + 1
        log.warning("store works again: %d held alerts written", written)
        self._pending.append(Finding(
            rule="bastion.store.recovered", severity="medium", attack=(), action="alert",
            event=None, pid=os.getpid(),
            title=f"Store works again after failing since {h.since}: {written} held alerts "
                  f"written, {h.alerts_lost} alerts and {h.events_not_stored} events not stored",
            evidence=h.to_json(len(self._store_queue))))
        h.error = ""

    def _store_alarm(self, now: float, force: bool = False) -> None:
        """While the store fails: one high alert per interval (outputs and feed get it)."""
        h = self.store_health
        if h.state == "ok" or (not force and now - self._last_store_alert < self.limits.interval_s):
            return
        self._last_store_alert = now
        self._alert(Finding(
            rule="bastion.store.failing", severity="high", attack=("T1562",), action="alert",
            event=None, pid=os.getpid(),
            title=f"Store failing since {h.since} ({h.error}); enforcement goes on, "
                  f"{len(self._store_queue)} alerts held in memory, {h.alerts_lost} lost, "
                  f"{h.events_not_stored} events not stored",
            evidence=h.to_json(len(self._store_queue))))

    def _bpf_unprotected(self) -> None:
        """A high alert for each of our BPF objects whose ids could not be registered with
        tamper protection (a full id set, a failed load hook): until they are, root may
        write those maps unnoticed (compat: without the sender being killed)."""
        if self._object_guard is None:
            return
        for what, why in self._object_guard.take_failures():
            self._alert(Finding(
                rule="bastion.tamper.bpf-unprotected", severity="high", attack=("T1562.001",),
                action="alert", event=None, pid=os.getpid(),
                title=f"tamper protection degraded: the maps and links of {what} are not "
                      f"protected by id: {why}",
                evidence={"object": what, "error": why,
                          "unprotected": sorted(self._object_guard.unprotected)}))

    def _health(self, final: bool = False) -> None:
        """Health alerts (each at most once per ``alerts.interval``, and once more at the
        stop for what is left), queued findings, and the aggregates that are due."""
        now = time.monotonic()
        while self._pending:
            self._alert(self._pending.popleft())
        shed = int(self.engine.stats().get("state_shed", 0))
        if shed > self._last_shed:
            self._alert(Finding(
                rule="bastion.engine.state_shed", title=f"{shed - self._last_shed} behaviour states "
                "shed: the state bound was reached (many processes or a flood)", severity="medium",
                attack=(), action="alert", event=None, pid=os.getpid(),
                evidence={"shed": shed - self._last_shed, "shed_total": shed}))
            self._last_shed = shed
        self._hips_fail_opens()
        self._bpf_unprotected()
        if self.provgate is not None:
            overflow = self.provgate.overflow_finding()
            if overflow is not None:
                self._alert(overflow)
        shed_total = self._events_shed()
        if shed_total > self._last_shed_events and (
                final or now - self._last_shed_alert >= self.limits.interval_s):
            new_shed, self._last_shed_events = shed_total - self._last_shed_events, shed_total
            self._last_shed_alert = now
            self._alert(Finding(
                rule="bastion.store.events_shed", severity="medium", attack=(), action="alert",
                event=None, pid=os.getpid(),
                title=f"{new_shed} events not stored nor sent to event outputs: the writer "
                      "fell behind (detection saw them; events that raised a high or critical "
                      "finding are kept)",
                evidence={"shed": new_shed, "shed_total": shed_total,
                          "queue_max": self.writer_max_events,
                          "finding_rows_shed_low_medium": self.finding_rows_shed_low}))
        sp = self._store_proc
        if sp is not None and sp.kept_shed > self._last_kept_shed:
            new_kept, self._last_kept_shed = sp.kept_shed - self._last_kept_shed, sp.kept_shed
            self._alert(Finding(
                rule="bastion.store.finding_rows_shed", severity="high", attack=("T1562",),
                action="alert", event=None, pid=os.getpid(),
                title=f"{new_kept} events that raised a high or critical finding not stored: "
                      "the writer's queue held nothing else to give up, or their rule's "
                      "evictions a second were spent (their alerts were raised and stored)",
                evidence={"shed": new_kept, "shed_total": sp.kept_shed,
                          "queue_max": self.writer_max_events,
                          "by_rule_total": dict(sp.not_kept_by),
                          "evict_per_s": sp.evict_per_s,
                          "evict_per_actor_s": sp.evict_per_actor_s}))
        if sp is not None and sp.evicted > self._last_evicted and (
                final or now - self._last_evicted_alert >= self.limits.interval_s):
            self._last_evicted, self._last_evicted_alert = sp.evicted, now
            by_rule, lost, more = sp.take_evictions()
            if by_rule:
                n_ev = sum(by_rule.values())
                self._alert(Finding(
                    rule="bastion.store.rows_evicted", severity="medium", attack=("T1562",),
                    action="alert", event=None, pid=os.getpid(),
                    title=f"{n_ev} queued event rows evicted, not stored, for the rows of high "
                          "or critical findings (the writer's queue was full)",
                    evidence={"evicted": n_ev, "evicted_total": sp.evicted, "by_rule": by_rule,
                              "lost": lost, "lost_other_kinds": more,
                              "evict_per_s": sp.evict_per_s,
                              "evict_per_actor_s": sp.evict_per_actor_s}))
        if self.outputs is not None:
            for name, n in self.outputs.new_drops().items():
                self._alert(Finding(
                    rule="bastion.output.drops", title=f"{n} records not sent to output {name!r}: "
                    "its queue was full", severity="medium", attack=(), action="alert", event=None,
                    pid=os.getpid(), evidence={"output": name, "dropped": n}))
        drops = 0
        by_class: dict[str, int] = {}
        by_ring: dict[str, int] = {}     # the sensors' two rings (s23-prioring)
        # every ring the agent drains: the sensor's, and the HIPS and quarantine decisions'
        counters = [s.stats() for s in self.sensors]
        if self.policies is not None:
            counters.append(self.policies.kernel_stats())
        if self.quarantine is not None:
            counters.append(self.quarantine.stats())
        for st in counters:
            drops += int(st.get("drops", 0))
            for key, n in st.items():
                if key.startswith("drops."):
                    by_class[key[6:]] = by_class.get(key[6:], 0) + int(n)
                elif key.startswith("drops_ring."):
                    by_ring[key[11:]] = by_ring.get(key[11:], 0) + int(n)
        self.summary.drops = drops
        self._drops_by_class = by_class
        self._drops_by_ring = by_ring
        if self.metrics is not None:
            self.metrics.set_sensor_drops(drops)
            self.metrics.set_ring_fill(max((s.ring_fill() for s in self.sensors), default=0.0))
        if drops > self._last_drops and (
                final or now - self._last_drop_alert >= self.limits.interval_s):
            # once per interval however many batches lost records (a flood is one alert
            # a minute, not one a second), with the losses per event class
            new = drops - self._last_drops
            new_by_class = {c: n - self._drops_alerted.get(c, 0) for c, n in by_class.items()
                            if n > self._drops_alerted.get(c, 0)}
            new_by_ring = {r: n - self._drops_ring_alerted.get(r, 0) for r, n in by_ring.items()
                           if n > self._drops_ring_alerted.get(r, 0)}
            self._last_drops, self._drops_alerted = drops, dict(by_class)
            self._drops_ring_alerted = dict(by_ring)
            self._last_drop_alert = now
            classes = ", ".join(f"{c} {n}" for c, n in
                                sorted(new_by_class.items(), key=lambda kv: -kv[1]))
            # which ring: the bulk ring's losses are a flood's; the priority ring's are
            # the payload records themselves (exec, connect ...)
            rings = " and ".join(f"the {r} ring" for r in sorted(new_by_ring, reverse=True))
            self._alert(Finding(
                rule="bastion.sensor.drops", severity="high", attack=(), action="alert",
                event=None, pid=os.getpid(),
                title=f"{new} events lost: {rings or 'the ring buffer'} was full"
                      + (f" ({classes})" if classes else ""),
                evidence={"dropped": new, "dropped_total": drops, "by_class": new_by_class,
                          "by_class_total": by_class, "by_ring": new_by_ring,
                          "by_ring_total": by_ring},
            ))
        self._store_alarm(now, force=final)
        if self.store_health.state != "ok":
            self._drain_store_queue()
        if final or now - self._last_flush >= self.limits.interval_s:
            self._flush_aggregates(now)

    def _hips_fail_opens(self) -> None:
        """One alert per health interval in which compat HIPS answered opens undecided:
        high when it allowed any (fail-open), medium when it only refused (fail closed:
        a stalled listener refuses what a rule would have allowed)."""
        fs = self.policies.file_stats() if self.policies is not None else {}
        n, d = int(fs.get("fail_opens", 0)), int(fs.get("watchdog_denies", 0))
        new, new_d = n - self._last_fail_opens, d - self._last_fail_closed
        self._last_fail_opens, self._last_fail_closed = n, d
        if new <= 0 and new_d <= 0:
            return
        title = (f"{new} opens of HIPS-marked files allowed undecided (decision stalled or "
                 "failed, or the fanotify queue overflowed)" if new > 0 else
                 f"{new_d} opens of HIPS-marked files refused undecided (decision stalled)")
        self._alert(Finding(
            rule="bastion.hips.fail_open" if new > 0 else "bastion.hips.fail_closed",
            title=title, severity="high" if new > 0 else "medium", attack=(), action="alert",
            event=None, pid=os.getpid(),
            evidence={"fail_opens": max(new, 0), "fail_opens_total": n,
                      "fail_closed": max(new_d, 0),
                      **{k: fs.get(k, 0) for k in ("watchdog_allows", "watchdog_denies",
                                                    "errors", "error_allows", "error_denies",
                                                    "overflows")}}))

    def _start_store_process(self) -> None:
        """The event writer process; one that cannot start is alerted and the rows are
        written by the in-process writer thread instead (said, never silent)."""
        sp = EventStoreProcess(self.store.path.parent, max_items=self.writer_max_events,
                               on_result=self._store_result, on_died=self._store_writer_died,
                               enrol=self._writer_enrol, stall_s=self.writer_stall_s)
        try:
            sp.start()
        except (StoreError, OSError) as exc:
            log.error("event writer process: %s", exc)
            self._pending.append(Finding(
                rule="bastion.store.writer_unavailable", severity="high", attack=(),
                action="alert", event=None, pid=os.getpid(),
                title=f"Event writer process cannot start ({exc}); events are stored by the "
                      "agent's writer thread (lower capacity under a flood)",
                evidence={"error": str(exc)}))
            return
        self._store_proc = sp

    def _start_bpf_guard(self) -> Source | None:
        """integrity.refuse_bpf_loads (lsm tier): only the allowlisted loaders may load BPF."""
        guard = self.bpf_guard
        if guard is None or not self._open_optional(guard, "bpf_guard_unavailable",
                                                    "BPF load refusal cannot start"):
            self.bpf_guard = None
            return None
        for exe in self.bpf_loaders:
            try:
                guard.allow(exe)
            except OSError as exc:
                log.warning("bpf loader %s not allowed: %s", exe, exc)
        return Source(guard.name, guard.poll)

    def _integrity_loop(self, stop: threading.Event) -> None:
        """The kernel integrity guard, off the event loop and in worker processes (a
        baseline or scan costs ~0.5 s CPU and 40-100 MB of heap): the baseline of this
        kernel release is taken on first start (a new release takes a new one; an
        informational alert says so), then a scan every ``interval_s``."""
        from bastion.integrity.worker import WorkerScanner, ensure_in_worker

        cfg = self.policy.integrity
        data_dir = self.store.path.parent
        me = (os.getpid(),)   # BPF programs held by the agent alone are ours
        if stop.wait(2.0):    # enforcement and the event loop first
            return
        path: Path | None = None
        taken, said = False, ""
        try:
            outcome, said = ensure_in_worker(data_dir, path=cfg.baseline, allow_bpf=cfg.allow_bpf,
                                             trusted_pids=me)
        except BastionError as exc:
            log.warning("integrity baseline unusable: %s", exc)
            said = f"baseline unusable: {exc}"
            self._pending.append(Finding(
                rule="bastion.integrity.baseline_unusable", severity="high", attack=("T1014",),
                title=f"Integrity baseline unusable ({exc}); only the checks that need no baseline run",
                action="alert", event=None, pid=os.getpid(), evidence={"error": str(exc)}))
        else:
            path, taken = Path(outcome["path"]), outcome["kind"] != "existing"
            log.info("%s", said)
            if taken:
                self._pending.append(Finding(
                    rule="bastion.integrity.baseline_taken", severity="info", attack=(),
                    title=said[0].upper() + said[1:], action="alert",
                    event=None, pid=os.getpid(), evidence=outcome))

        scanner = WorkerScanner(data_dir, path, cfg.interval_s, self._pending.append,
                                allow_bpf=cfg.allow_bpf, trusted_pids=me)
        scanner.baseline_note = said
        self.integrity_scanner = scanner   # status(): scanner.status()
        if taken:
            scanner.next_due = time.monotonic() + cfg.interval_s   # it was just taken: nothing to compare yet
        said_err = ""
        while not stop.wait(1.0):
            try:
                scanner.tick(time.monotonic())
            except BastionError as exc:
                log.warning("integrity scan failed: %s", exc)
                if str(exc) != said_err:   # said once per distinct failure
                    self._pending.append(Finding(
                        rule="bastion.integrity.scan_failed", severity="medium", attack=(),
                        title=f"Kernel integrity scan failed: {exc}", action="alert", event=None,
                        pid=os.getpid(), evidence={"error": str(exc)}))
                said_err = str(exc)
            else:
                said_err = ""

    def _open_optional(self, part: Any, rule: str, what: str) -> bool:
        """Open an optional part; when it cannot, say so loudly and go on without it."""
        try:
            part.open()
            return True
        except BastionError as exc:
            log.warning("%s: %s", what, exc)
            self._why_off[rule.removesuffix("_unavailable").replace("shadow", "shield")] = \
                f"could not start: {exc}"
            self._pending.append(Finding(
                rule=f"bastion.respond.{rule}", title=f"{what}: {exc}", severity="medium",
                attack=(), action="alert", event=None, pid=os.getpid()))
            return False

    def process(self, batch: list[Event]) -> list[Event]:
        """Process table, container context, rules, HIPS audit and alerts on this thread;
        the store rows and event outputs (the events' JSON) on the writer thread while
        :meth:`run` runs (inline otherwise).  Returns the batch enriched."""
        by_type = self.summary.by_type
        batch_types: dict[str, int] = {}
        t0 = time.perf_counter()
        update, enrich, evaluate, ctx = self.procs.update, self.procs.enrich, \
            self.engine.evaluate, self.ctx
        policies, containers = self.policies, self.containers
        seen: list[Event] = []
        keep = seen.append
        flagged: list[Event] = []   # events that raised a finding: rows of their own
        # ... of them, those whose finding was high or critical, with its rule: their rows
        # may take the place of queued ones when the writer's queue is full (store.keep)
        pinned: list[tuple[Event, str]] = []
        follow = self.dispatcher.follow
        for ev in batch:
            update(ev)
            ev = enrich(ev, True)
            if containers is not None:
                ev = containers.enrich(ev)
            keep(ev)
            t = ev.type
            batch_types[t] = batch_types.get(t, 0) + 1
            if t == "fork" and (late := follow(ev)) is not None:
                self._alert(late)       # forked by a tree killed lately (s24)
            found = evaluate(ev, ctx)
            for f in found:
                self._alert(f)
            if policies is not None:
                late = policies.audit_event(ev, self.procs)
                if late is not None:
                    self._alert(late)
                    found = [late]
            if found:
                flagged.append(ev)
                for f in found:
                    if f.severity in _PINNING:
                        pinned.append((ev, f.rule))
                        break
        if seen:
            self._hand_off(seen, flagged, pinned)
        for t, n in batch_types.items():
            by_type[t] = by_type.get(t, 0) + n
        if self.metrics is not None and batch:
            self.metrics.count_events(batch_types)
            self.metrics.observe_rules(time.perf_counter() - t0)
        self.summary.events += len(batch)
        return seen

    def _hand_off(self, seen: list[Event], flagged: list[Event],
                  pinned: Sequence[tuple[Event, str]] = ()) -> None:
        """The batch's rows to the writer process (or thread) and, when an output takes
        events, to the outputs' thread; above capacity whole batches are shed (counted,
        alerted) except the events that raised a high or critical finding (``pinned``,
        with the rule): those are kept, taking the place of queued rows not pinned (a
        budget per rule a second: counted, alerted with what was lost).  Rows of low and
        medium findings are shed like benign ones (counted): a flood of cheap findings
        must not evict the benign rows of an attack's quiet steps (s16)."""
        sp, w = self._store_proc, self._writer
        if sp is not None:
            if not sp.offer(seen, flagged, [ev for ev, _ in pinned]):
                self.store_health.events_not_stored += len(seen) - len(pinned)
                self.finding_rows_shed_low += len(flagged) - len(pinned)
                for rule, evs in _by_rule(pinned).items():
                    kept, evicted = sp.keep(evs, rule)
                    self.store_health.events_not_stored += evicted + len(evs) - kept
            if w is not None:
                w.offer(seen)     # the outputs' copy (its sheds are counted in w.shed)
            return
        if w is None:
            self._write_events(seen, drain_alerts=True)
        elif not w.offer(seen):
            self.store_health.events_not_stored += len(seen) - len(pinned)
            self.finding_rows_shed_low += len(flagged) - len(pinned)
            kept, _ = w.keep([ev for ev, _ in pinned])
            self.store_health.events_not_stored += len(pinned) - kept

    def _store_result(self, kind: str, n: int, detail: str) -> None:
        """An answer of the writer process (its reader thread)."""
        if kind == "stored":
            with self._lock:
                if self._stored_events is not None:
                    self._stored_events += n
                self._stored_facts += n
                self._stored_rows += int(detail) if detail.isdigit() else n
            return
        self.store_health.events_not_stored += n
        if kind == "malformed":
            self.store_health.malformed += 1
        said = f"{kind}: {detail}"
        if said != self._proc_said:   # once per distinct error
            self._proc_said = said
            self._pending.append(Finding(
                rule="bastion.store.writer_error", severity="high", attack=(), action="alert",
                event=None, pid=os.getpid(),
                title=f"{n} events not stored by the event writer process: {detail}",
                evidence={"error": detail, "kind": kind, "events": n}))

    def _store_writer_died(self, why: str, lost: int, cause: str, pid: int) -> None:
        """The writer process exited, was killed, stopped making progress (stopped,
        hung: killed by us) or its pipes carried what it or we did not write (killed):
        restarted, always alerted; tampering is critical."""
        self.store_health.events_not_stored += lost
        sp = self._store_proc
        rule, severity = {"stalled": ("bastion.store.writer_stalled", "high"),
                          "tampered": ("bastion.store.writer_tampered", "critical")}.get(
                              cause, ("bastion.store.writer_died", "high"))
        self._pending.append(Finding(
            rule=rule, severity=severity, attack=("T1562.001",),
            action="alert", event=None, pid=os.getpid(),
            title=f"Event writer process {pid} {why}; restarted ({lost} events it had not "
                  "confirmed are not stored)",
            evidence={"why": why, "lost": lost, "pid": pid, "cause": cause,
                      "restarts": sp.restarts if sp is not None else 0}))

    def _write_outputs(self, events: Sequence[Event]) -> None:
        """The events' JSON form to the event outputs (the writer process stores them)."""
        outputs = self.outputs
        if outputs is None or not outputs.wants_events:
            return
        publish = outputs.publish_event
        for ev in events:
            publish(to_json(ev))

    def _writer_failed(self, events: Sequence[Event], exc: Exception) -> None:
        """A batch the writer could not turn into rows (not a store failure: those are
        counted by ``_store_events``): counted as not stored, said once per distinct error."""
        self.store_health.events_not_stored += len(events)
        said = f"{type(exc).__name__}: {exc}"
        if said != self._writer_said:
            self._writer_said = said
            self._pending.append(Finding(
                rule="bastion.store.writer_error", severity="high", attack=(), action="alert",
                event=None, pid=os.getpid(),
                title=f"{len(events)} events neither stored nor sent to event outputs: {said}",
                evidence={"error": said, "events": len(events)}))

    def _write_events(self, events: Sequence[Event], drain_alerts: bool = False) -> None:
        """The events' JSON form to the event outputs (only when one takes events) and to
        the store.  On the writer thread, or inline when no writer runs."""
        outputs = self.outputs
        publish = outputs.publish_event if outputs is not None and outputs.wants_events else None
        rows = [to_json(ev) for ev in events]
        if publish is not None:
            for j in rows:
                publish(j)
        self._store_events(rows, drain_alerts=drain_alerts, times_ns=[ev.time_ns for ev in events])

    def _handle(self, source: Source, batch: list[Event]) -> None:
        batch = self.process(batch)
        if source.findings is not None:
            for ev in batch:
                f = source.findings(ev)
                if f is not None:
                    self._alert(f)

    def _tick(self, now: float) -> None:
        self._heartbeat = now
        if self._sigma_swap:
            self._swap_sigma()
        with self._lock:
            self._rate.append((now, self.summary.events))
        if now - self._last_health >= 1.0:
            if self._store_proc is not None:
                self._store_proc.check()
            self._health()
            self.procs.expire(time.time_ns())
            self.engine.expire(time.time_ns())
            if self._object_guard is not None:
                try:
                    self._object_guard.refresh()   # one stat unless protection was re-armed
                except (BastionError, OSError) as exc:
                    log.error("tamper: our BPF objects not protected again: %s", exc)
            self._last_health = now
        if self.policies is not None and now - self._last_resolve >= RESOLVE_INTERVAL_S:
            # files replaced by rename (passwd, sed -i, upgrades): follow the names;
            # globs and subjects are re-expanded less often
            full = now - self._last_full_resolve >= FULL_RESOLVE_INTERVAL_S
            if self.containers is not None and self.containers.generation != self._ctr_gen:
                # a container appeared: container:/host: subjects are re-resolved now
                self._ctr_gen = self.containers.generation
                full = True
            with self._policy_lock:
                drifted = self.policies.refresh(full=full)
            for f in drifted:
                self._alert(f)
            self._last_resolve = now
            if full:
                self._last_full_resolve = now
        if self.lsmgate is None and self.provgate is not None:
            # compat: the must-stop objects made since the last pass are marked (s16-gate);
            # its own interval, not the retention pass's (skipped while the store fails)
            if (pf := self.provgate.tick(now)) is not None:
                self._alert(pf)
        if now - self._last_retention >= 60.0 and self._store_usable():
            try:
                gone = self.store.event_facts_deleted
                self.store.enforce_retention()
                deleted = self.store.event_facts_deleted - gone   # events, not rows
                with self._lock:
                    if self._stored_events is not None:
                        self._stored_events = max(0, self._stored_events - deleted)
            except StoreError as exc:
                self._store_failed("enforcing retention", exc)
            if self.lsmgate is not None:
                try:
                    self.lsmgate.refresh_tools()   # a restarted syslog daemon has a new pid
                except BastionError as exc:
                    log.warning("provenance gate: security tools not refreshed: %s", exc)
                # objects made since the last pass (a new ~/.ssh, a new home)
                if (rf := self.lsmgate.refresh()) is not None:
                    self._alert(rf)
            # a restarted daemon binds a new socket inode; a failed pass is alerted
            if self.svcgate is not None and (sf := self.svcgate.refresh()) is not None:
                self._alert(sf)
            if self.pipegate is not None and (pf := self.pipegate.refresh()) is not None:
                self._alert(pf)
            if self.shadow is not None:
                self.shadow.maintain(self.policy.shield.max_age_s)
                self.shadow.refresh_marks()
                # one alert per interval naming each uid/tree whose quota bit
                if (qf := self.shadow.quota_finding(os.getpid())) is not None:
                    self._alert(qf)
            self._last_retention = now

    def _enforcement_sources(self) -> list[Source]:
        """Records of decisions already taken in the kernel, each reported as an alert."""
        out: list[Source] = []
        policies, quarantine = self.policies, self.quarantine
        if policies is not None:
            out.append(Source("hips", lambda _t: list(policies.poll()), blocking=False,
                              findings=lambda ev: policies.finding(ev)
                              if isinstance(ev, HipsEvent) else None))
        lgate = self.lsmgate
        if lgate is not None:
            out.append(Source("lsmgate", lambda t: list(lgate.poll(t)), blocking=False,
                              findings=lambda ev: lgate.finding(ev)
                              if isinstance(ev, HipsEvent) else None))
        sgate = self.svcgate
        if sgate is not None:
            out.append(Source("svcgate", lambda t: list(sgate.poll(t)), blocking=False,
                              findings=lambda ev: sgate.finding(ev)
                              if isinstance(ev, HipsEvent) else None))
        pgate = self.pipegate
        if pgate is not None:
            out.append(Source("pipegate", lambda t: list(pgate.poll(t)), blocking=False,
                              findings=lambda ev: pgate.finding(ev)
                              if isinstance(ev, HipsEvent) else None))
        gate = self.provgate
        if gate is not None:
            out.append(Source("provgate", lambda t: list(gate.poll(t)), blocking=False,
                              findings=lambda ev: gate.finding(ev)
                              if isinstance(ev, HipsEvent) else None))
        if quarantine is not None:
            out.append(Source("quarantine", lambda _t: quarantine.poll(), blocking=False,
                              findings=lambda ev: quarantine.finding(ev)
                              if isinstance(ev, HipsEvent) else None))
        return out

    def run(self, stop: threading.Event) -> Summary:
        """Open every source and part, apply the policy, pump events until ``stop``, then
        close everything (pinned HIPS enforcement is removed unless ``keep_pins``)."""
        self.procs.seed()
        try:
            self._stored_events = self.store.count_event_facts()
        except StoreError as exc:
            self._store_failed("counting stored events", exc)
        opened: list[Sensor] = []
        guard_open = False
        try:
            if self.control is not None:
                self.control.start()  # first: a second agent fails before attaching anything
            for s in self.sensors:
                s.open()
                opened.append(s)
            if self.provgate is not None:   # the maps every gate reads, before any opens
                try:
                    self.provgate.prime()
                except (BastionError, OSError) as exc:   # open() below tries again
                    log.warning("provenance maps not configured before the gates: %s", exc)
                    self._pending.append(Finding(
                        rule="bastion.provenance.maps", severity="high", attack=("T1562.001",),
                        action="alert", event=None, pid=os.getpid(),
                        title="Provenance maps not configured before the gates opened "
                              f"({exc}): until the fanotify gate's start configures them, "
                              "the in-hook, socket and pipe gates see no untrusted provenance",
                        evidence={"error": str(exc)}))
            if self.quarantine is not None and not self._open_optional(
                    self.quarantine, "quarantine_unavailable",
                    "Quarantine cannot load here; rules asking for it kill instead"):
                self.quarantine = self.dispatcher.quarantine = None
            if self.shadow is not None and not self._open_optional(
                    self.shadow, "shadow_unavailable",
                    "Ransomware shield (shadow copies) cannot start"):
                self.shadow = None
            if self.lsmgate is not None and not self._open_optional(
                    self.lsmgate, "lsmgate_unavailable",
                    "Provenance gate in the LSM hook cannot load: creates, renames, unlinks, "
                    "log wiping and security-tool kills of untrusted trees are not refused "
                    "(the fanotify gate refuses opens of existing objects only)"):
                self.lsmgate = None
            if self.svcgate is not None and not self._open_optional(
                    self.svcgate, "svcgate_unavailable",
                    "Control-socket gate cannot load: an untrusted tree's requests to "
                    "systemd, docker, containerd and podman (lsm tier) or commands handed "
                    "to a clean tmux/screen server (both tiers) are not stopped in the kernel"):
                self.svcgate = None
            if self.pipegate is not None and not self._open_optional(
                    self.pipegate, "pipegate_unavailable",
                    "Pipe gate cannot load: a decoded payload piped into a shell is "
                    "killed from user space after the shell's exec (a short pipeline "
                    "runs first)"):
                self.pipegate = None
            if self.lsmgate is not None and self.provgate is not None:
                self.provgate.marks_off()
            if self.provgate is not None and not self._open_optional(
                    self.provgate, "provgate_unavailable",
                    "Provenance gate cannot start: must-stop file acts of untrusted trees "
                    "are killed after the act, not refused"):
                self.provgate = None
            if self.provgate is not None:
                for why in self.provgate.over_budget():   # a tree someone filled: say so
                    self._pending.append(Finding(
                        rule="bastion.provenance.gate_partial", severity="high",
                        title=f"Provenance gate marks a must-stop tree only in part: {why}",
                        attack=("T1562",), action="alert", event=None, pid=os.getpid()))
            if self.policies is not None and self.policy.hips.rules:
                applied = self.policies.apply(self.policy, **self.apply_opts)
                for d in applied.degraded:
                    self._pending.append(Finding(
                        rule="bastion.policy.degraded", title=f"Policy rule not enforceable here: {d}",
                        severity="high", attack=(), action="alert", event=None, pid=os.getpid(),
                        evidence={"policy": self.policy.source, "degraded": d}))
            pump = EventPump([Source(s.name, s.poll) for s in self.sensors],
                             self.policy.events.poll_interval_s)
            for src in self._enforcement_sources():
                pump.add(src)
            guard_src = self._start_bpf_guard()
            if guard_src is not None:
                guard_open = True
                pump.add(guard_src)
            if self.policy.integrity.interval_s and self.tier is not None:
                threading.Thread(target=self._integrity_loop, args=(stop,), name="bastion-integrity",
                                 daemon=True).start()
            if self.store_process:
                self._start_store_process()
            writer: EventWriter[Event] | None = None
            if self._store_proc is None:
                writer = EventWriter(self._write_events, max_items=self.writer_max_events,
                                     on_error=self._writer_failed)
            elif self.outputs is not None and self.outputs.wants_events:
                writer = EventWriter(self._write_outputs, max_items=self.writer_max_events,
                                     on_error=self._writer_failed, name="bastion-outputs")
            self._writer = writer
            if writer is not None:
                writer.start()
            if self.fleet is not None:
                self.fleet.start()   # after the local policy: a fleet policy replaces it
            self._heartbeat = self._last_health = self._last_retention = time.monotonic()
            self.ready.set()
            pump.run(stop, self._handle, tick=self._tick)
            if writer is not None:
                writer.close(timeout=30)   # what the loop saw is stored before the stop
                if writer.queued and self._store_proc is None:   # counted, not silent
                    self.store_health.events_not_stored += writer.queued
            if self._store_proc is not None:
                self.store_health.events_not_stored += self._store_proc.close(timeout=30)
            self._health(final=True)
        finally:
            if self._writer is not None:
                self._writer.close(timeout=5)
                self._writer = None
            if self._store_proc is not None:
                self._store_proc.close(timeout=5)
                self._store_proc = None
            if self.control is not None:
                self.control.stop()
            for s in opened:
                s.close()
            if guard_open and self.bpf_guard is not None:
                self.bpf_guard.close()
            if self.policies is not None:
                state = self.policies.close(unpin=not self.keep_pins)
                where = f" under {self.pin_dir}" if self.pin_dir else ""
                if state == "pinned":
                    self.summary.enforcement = (
                        f"HIPS enforcement stays pinned{where} and keeps denying with no agent to "
                        "record it (--keep-pins); `bastion reset --emergency` removes it")
                elif state == "removed":
                    self.summary.enforcement = f"HIPS enforcement removed (pins{where} deleted)"
            if self.quarantine is not None:
                self.quarantine.close()
            if self.containers is not None:
                self.containers.close()
            if self.shadow is not None:
                self.shadow.close()
            if self.provgate is not None:
                self.provgate.close()
            if self.lsmgate is not None:
                self.lsmgate.close()
            if self.svcgate is not None:
                self.svcgate.close()
            if self.pipegate is not None:
                self.pipegate.close()
            if self.outputs is not None:
                self.outputs.close(timeout=5)
            if self.fleet is not None:
                self.fleet.close(timeout=5)
            if self.metrics is not None:
                self.metrics.close()
        self.summary.uptime_s = time.monotonic() - self._started
        return self.summary
