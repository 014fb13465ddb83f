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
from typing import Any, Sequence, TextIO

from bastion import __version__
from bastion.config import Policy
from bastion.control import ControlServer
from bastion.detect.engine import Engine, Finding, Rule, RuleContext, builtin_rules
from bastion.enforce.tiers import TierReport
from bastion.errors import BastionError
from bastion.detect.behavior import behavior_rules, live_probes
from bastion.events import Event, HipsEvent, to_json
from bastion.respond.quarantine import Quarantine
from bastion.respond.shadow import ShadowKeeper
from bastion.metrics import Metrics
from bastion.outputs import OutputManager
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.policy.manager import PolicyManager
from bastion.policy.model import Mode
from bastion.sensors.base import Sensor
from bastion.sensors.bpf import BpfSensor
from bastion.store.db import Store

log = logging.getLogger("bastion.agent")


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
    suppressed: int = 0      # repeated alert-only findings within the dedupe window
    drops: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.by_type.items(), key=lambda kv: -kv[1])[:6])
        return (f"bastion: stopped after {self.uptime_s:.1f}s: {self.events} events"
                f"{' (' + top + ')' if top else ''}, {self.alerts} alerts"
                f"{f' (+{self.suppressed} repeats suppressed)' if self.suppressed else ''}, "
                f"{self.drops} dropped")


class Agent:
    def __init__(
        self,
        *,
        policy: Policy,
        sensors: Sequence[Sensor],
        store: Store,
        tier: TierReport | None = None,
        socket_path: Path | None = None,
        feed: TextIO | None = None,
        feed_json: bool = False,
        policies: PolicyManager | None = None,
        apply_opts: dict[str, Any] | None = None,
        extra_rules: Sequence[Rule] = (),
        outputs: OutputManager | None = None,
        metrics: Metrics | None = None,
        quarantine: Quarantine | None = None,
        shadow: ShadowKeeper | None = None,
    ) -> None:
        self.policy = policy
        self.sensors = list(sensors)
        self.store = store
        self.tier = tier
        self.feed = feed
        self.feed_json = feed_json
        self.procs = ProcessTable()
        live = any(isinstance(s, BpfSensor) for s in sensors)
        self.engine = Engine([*builtin_rules(),
                              *behavior_rules(policy.behavior, live_probes() if live else None),
                              *extra_rules])
        self.ctx = RuleContext(self.procs)
        self.quarantine = quarantine
        self.shadow = shadow
        self.dispatcher = Dispatcher(self.procs, dry_run=policy.behavior.dry_run, quarantine=quarantine)
        self.outputs = outputs
        self.metrics = metrics
        self.policies = policies
        self.apply_opts = apply_opts or {}
        self.test_deadline: float | None = None   # tests: enforcement expires by itself
        self._policy_lock = threading.Lock()
        self.control = ControlServer(socket_path, {
            "ping": lambda req: {"pid": os.getpid()},
            "status": lambda req: self.status(),
            "policy.apply": self._policy_apply,
            "policy.show": self._policy_show,
        }) if socket_path else None
        self.summary = Summary()
        self._started = time.monotonic()
        self._rate: deque[tuple[float, int]] = deque(maxlen=64)
        self._last_drops = 0
        self._last_shed = 0
        self.dedupe_s = 30.0
        self._recent: dict[tuple[str, int, str], float] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()   # set once every sensor is open
        self._pending: deque[Finding] = deque(maxlen=1024)  # findings raised off the loop thread

    # ---- status (control thread) -------------------------------------------------

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
            if isinstance(s, BpfSensor):
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
            "programs_attached": programs,
            "programs_missing": missing,
            "events_total": self.summary.events,
            "events_per_s": round(self._events_per_s(), 1),
            "drops": self.summary.drops,
            "ring_fill": round(ring_fill, 4),
            "alerts_total": self.summary.alerts,
            "alerts_suppressed": self.summary.suppressed,
            "engine": self.engine.stats(),
            "quarantine": "loaded" if self.quarantine is not None else "unavailable (kill instead)",
            "shadow": self.shadow.stats() if self.shadow is not None else "off",
            "policy_mode": (self.policies.current.policy.hips.mode.value
                            if self.policies and self.policies.current else "none"),
            "policy_generation": (self.policies.current.gen
                                  if self.policies and self.policies.current else 0),
            "policy_degraded": (self.policies.current.degraded
                                if self.policies and self.policies.current else []),
            "uptime_s": round(uptime, 1),
            "rss_mb": round(rss_mb(), 1),
            "cpu_s": round(cpu_seconds(), 2),
            "data_dir": str(self.store.path.parent),
            "store_events": self.store.count_events(),
        }

    def add_handler(self, cmd: str, handler: Any) -> None:
        """An extra control command (e.g. the token-gated `stop`)."""
        if self.control is not None:
            self.control.handlers[cmd] = handler

    def raise_alert(self, rule: str, title: str, severity: str, evidence: dict[str, Any]) -> None:
        """An alert from another thread (control handlers): queued for the loop."""
        self._pending.append(Finding(rule=rule, title=title, severity=severity, attack=(),
                                     action="alert", event=None, pid=int(evidence.get("client_pid") or 0),
                                     evidence=evidence))

    # ---- policy (control thread) -----------------------------------------------------

    def _policy_apply(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.policies is None:
            raise ValueError("this agent runs without HIPS enforcement (replay mode)")
        text, source = req.get("text"), req.get("source", "<control>")
        if not isinstance(text, str) or not isinstance(source, str):
            raise ValueError("policy.apply needs 'text' and 'source' strings")
        mode = Mode(req["mode"]) if req.get("mode") else None
        try:
            with self._policy_lock:
                applied = self.policies.apply_text(
                    text, source, mode=mode, force=bool(req.get("force")),
                    allow_degraded=bool(req.get("allow_degraded")))
        except BastionError as exc:
            return {"applied": False, "error": str(exc)}
        for d in applied.degraded:
            self._pending.append(Finding(
                rule="bastion.policy.degraded", title=f"Policy rule not enforceable here: {d}",
                severity="high", attack=(), action="alert", event=None, pid=os.getpid(),
                evidence={"policy": source, "degraded": d}))
        return {"applied": True, **applied.summary()}

    def _policy_show(self, req: dict[str, Any]) -> dict[str, Any]:
        cur = self.policies.current if self.policies else None
        return {"policy": cur.summary() if cur else None}

    # ---- the loop ------------------------------------------------------------------

    def _alert(self, f: Finding) -> None:
        if f.action in ("alert", "audit"):
            # the same report about the same process within the window is counted, not repeated
            key = (f.rule, f.pid, f.title)
            now = time.monotonic()
            last = self._recent.get(key)
            if last is not None and now - last < self.dedupe_s:
                self.summary.suppressed += 1
                return
            self._recent[key] = now
            if len(self._recent) > 4096:
                cutoff = now - self.dedupe_s
                self._recent = {k: t for k, t in self._recent.items() if t >= cutoff}
        alert = self.dispatcher.dispatch(f, time.time_ns())
        if self.shadow is not None and f.rule == "behavior.ransomware" \
                and str(alert["action"]).startswith("kill"):
            e = self.procs.get(f.pid)
            start = (f.event.proc.start_ns if f.event is not None and f.event.proc.pid == f.pid
                     else (e.start_ns if e else 0))
            alert["shadow_incident"] = self.shadow.open_incident(f.pid, start)
            alert["title"] += f" (recover: bastion rollback --incident {alert['shadow_incident']})"
        self.store.add_alert(alert)
        self.summary.alerts += 1
        if self.outputs is not None:
            self.outputs.publish_alert(alert)
        if self.metrics is not None:
            self.metrics.alert(alert["severity"], alert["action"])
        if self.feed is not None:
            if self.feed_json:
                self.feed.write(json.dumps(alert) + "\n")
            else:
                p = alert["process"]
                self.feed.write(
                    f"{alert['time']} {alert['severity'].upper():8} {alert['rule']} "
                    f"[{alert['action']}] pid={p['pid']} {p['exe']}: {alert['title']}\n")
            self.feed.flush()

    def _health(self) -> None:
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
        if self.outputs is not None:
            for name, n in self.outputs.new_drops().items():
                self._alert(Finding(
                    rule="bastion.output.drops", title=f"{n} records not sent to output {name!r}: "
                    "its queue was full", severity="medium", attack=(), action="alert", event=None,
                    pid=os.getpid(), evidence={"output": name, "dropped": n}))
        drops = sum(s.stats().get("drops", 0) for s in self.sensors)
        if self.metrics is not None:
            self.metrics.set_sensor_drops(drops)
            self.metrics.set_ring_fill(max((s.ring_fill() for s in self.sensors
                                            if isinstance(s, BpfSensor)), default=0.0))
        if drops > self._last_drops:
            new = drops - self._last_drops
            self._last_drops = drops
            self.summary.drops = drops
            self._alert(Finding(
                rule="bastion.sensor.drops", title=f"{new} events lost: the ring buffer was full",
                severity="high", attack=(), action="alert", event=None, pid=os.getpid(),
                evidence={"dropped": new, "dropped_total": drops},
            ))

    def _start_bpf_guard(self, opened: list[Sensor]) -> None:
        """integrity.refuse_bpf_loads: in the lsm tier only the allowlisted loaders may
        load BPF programs; elsewhere that cannot be refused, and the agent says so."""
        cfg = self.policy.integrity
        if not cfg.refuse_bpf_loads or self.tier is None:
            return
        if self.tier.tier != "lsm":
            self._pending.append(Finding(
                rule="bastion.policy.degraded", severity="high", attack=(), action="alert",
                title="integrity.refuse_bpf_loads needs the lsm tier: BPF loads are detected "
                      "(integrity scan, behavior.bpf_load) but not refused on this kernel",
                event=None, pid=os.getpid(), evidence={"setting": "integrity.refuse_bpf_loads"}))
            return
        from bastion.enforce.lsm import BpfLoadGuard

        guard = BpfLoadGuard(cgroup_id=0, deadline_s=self.test_deadline, self_tgid=os.getpid())
        if not self._open_optional(guard, "bpf_guard_unavailable",
                                   "BPF load refusal cannot start"):
            return
        for exe in cfg.bpf_loaders:
            try:
                guard.allow(exe)
            except OSError as exc:
                log.warning("bpf loader %s not allowed: %s", exe, exc)
        self.sensors.append(guard)
        opened.append(guard)

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
            self._pending.append(Finding(
                rule=f"bastion.respond.{rule}", title=f"{what}: {exc}", severity="medium",
                attack=(), action="alert", event=None, pid=os.getpid()))
            return False

    def process(self, batch: list[Event]) -> None:
        rows = []
        by_type = self.summary.by_type
        batch_types: dict[str, int] = {}
        t0 = time.perf_counter()
        for ev in batch:
            self.procs.update(ev)
            ev = self.procs.enrich(ev)
            j = to_json(ev)
            rows.append(j)
            if self.outputs is not None:
                self.outputs.publish_event(j)
            batch_types[ev.type] = batch_types.get(ev.type, 0) + 1
            for f in self.engine.evaluate(ev, self.ctx):
                self._alert(f)
            if self.policies is not None:
                late = self.policies.audit_event(ev, self.procs)
                if late is not None:
                    self._alert(late)
        if rows:
            self.store.add_events(rows)
        for t, n in batch_types.items():
            by_type[t] = by_type.get(t, 0) + n
        if self.metrics is not None and batch:
            self.metrics.count_events(batch_types)
            self.metrics.observe_rules(time.perf_counter() - t0)
        self.summary.events += len(batch)

    def run(self, stop: threading.Event) -> Summary:
        self.procs.seed()
        opened: list[Sensor] = []
        try:
            if self.control is not None:
                self.control.start()  # first: a second agent fails before attaching anything
            for s in self.sensors:
                s.open()
                opened.append(s)
            if self.quarantine is not None and not self._open_optional(
                    self.quarantine, "quarantine_unavailable",
                    "Quarantine cannot load here; rules asking for it kill instead"):
                self.quarantine = self.dispatcher.quarantine = None
            if self.shadow is not None and not self._open_optional(
                    self.shadow, "shadow_unavailable",
                    "Ransomware shield (shadow copies) cannot start"):
                self.shadow = None
            if self.policies is not None and self.policy.hips.rules:
                applied = self.policies.apply(self.policy, **self.apply_opts)
                for d in applied.degraded:
                    self._pending.append(Finding(
                        rule="bastion.policy.degraded", title=f"Policy rule not enforceable here: {d}",
                        severity="high", attack=(), action="alert", event=None, pid=os.getpid(),
                        evidence={"policy": self.policy.source, "degraded": d}))
            self._start_bpf_guard(opened)
            if self.policy.integrity.interval_s and self.tier is not None:
                threading.Thread(target=self._integrity_loop, args=(stop,), name="bastion-integrity",
                                 daemon=True).start()
            self.ready.set()
            interval = self.policy.events.poll_interval_s
            last_health = last_retention = time.monotonic()
            eof = [False] * len(self.sensors)
            while not stop.is_set() and not all(eof):
                for i, s in enumerate(self.sensors):
                    if eof[i]:
                        continue
                    batch = s.poll(interval / len(self.sensors))
                    if batch is None:
                        eof[i] = True
                        continue
                    self.process(batch)
                if self.policies is not None:
                    for hev in self.policies.poll():
                        self.process([hev])
                        self._alert(self.policies.finding(hev))
                if self.quarantine is not None:
                    for qev in self.quarantine.poll():
                        self.process([qev])
                        if isinstance(qev, HipsEvent):
                            self._alert(Quarantine.finding(qev))
                now = time.monotonic()
                with self._lock:
                    self._rate.append((now, self.summary.events))
                if now - last_health >= 1.0:
                    self._health()
                    self.procs.expire(time.time_ns())
                    self.engine.expire(time.time_ns())
                    last_health = now
                if now - last_retention >= 60.0:
                    self.store.enforce_retention()
                    if self.shadow is not None:
                        self.shadow.maintain()
                        self.shadow.refresh_marks()
                    last_retention = now
            # drain what is left so the summary counts everything seen
            for i, s in enumerate(self.sensors):
                if not eof[i]:
                    batch = s.poll(0)
                    if batch:
                        self.process(batch)
            self._health()
        finally:
            if self.control is not None:
                self.control.stop()
            for s in opened:
                s.close()
            if self.policies is not None:
                self.policies.close()
            if self.quarantine is not None:
                self.quarantine.close()
            if self.shadow is not None:
                self.shadow.close()
            if self.outputs is not None:
                self.outputs.close(timeout=5)
            if self.metrics is not None:
                self.metrics.close()
        self.summary.uptime_s = time.monotonic() - self._started
        return self.summary
