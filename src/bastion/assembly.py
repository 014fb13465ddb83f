"""The one place that assembles Bastion from its configuration.

Commands in :mod:`bastion.cli` parse flags and call into this module; they
never import :mod:`bastion.kernel`.  Everything an :class:`~bastion.agent.Agent`
uses is built here and injected.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TextIO

from bastion.agent import Agent, AgentParts
from bastion.alert import Alert
from bastion.config import AgentConfig
from bastion.errors import ConfigError, KernelError, Location, StoreError
from bastion.kernel.bpffs import HostMounts, prepare_pseudo_filesystems
from bastion.paths import DEFAULT_DATA_DIR, PIN_ROOT
from bastion.procstat import PROC
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import ActionHook, Dispatcher, QuarantineBackend
from bastion.sensors.base import Sensor
from bastion.tier import Tier

PUBLISH_SCAN_S = 0.05   # a provenance publish walks /proc for descendants at most this often

if TYPE_CHECKING:
    from bastion.detect.engine import Engine, Finding, Rule
    from bastion.sensors.bpf import BpfSensor
    from bastion.abi import SensClass
    from bastion.enforce.tiers import TierReport
    from bastion.guard.kernel import ObjectGuard

log = logging.getLogger("bastion")


def prepare_host(what: str) -> HostMounts:
    """Start of every entry point that touches the kernel: root, and the
    pseudo-filesystems (bpffs, tracefs, securityfs, cgroup2) checked and
    mounted where missing — a freshly booted host has not all of them."""
    if os.geteuid() != 0:
        raise KernelError(f"{what} needs root (BPF programs and pins)")
    res = prepare_pseudo_filesystems()
    if res.mounted:
        log.info("%s: mounted %s", what, ", ".join(res.mounted))
    return res


@dataclass(frozen=True)
class AgentOptions:
    """Everything ``bastion run`` (and the guardian's agent) is configured with."""

    policy: AgentConfig
    data_dir: Path
    socket_path: Path | None
    pin_root: Path = PIN_ROOT
    replay_path: Path | None = None
    #: where the installed Sigma set is read (None: ``data_dir``; a replay in a store of
    #: its own reads the live agent's installed set)
    sigma_data_dir: Path | None = None
    #: a replay's alerts go to the policy's outputs too (never its fleet link or metrics)
    replay_outputs: bool = False
    sigma_dirs: tuple[Path, ...] = ()
    force: bool = False
    allow_degraded: bool = False
    keep_pins: bool = False
    test_deadline: float | None = None
    test_cgroup_id: int = 0   # tests only: the BPF-load guard acts in this cgroup alone
    gate_refresh_s: float = 60.0   # the compat provenance gate's re-mark interval (tests: less)
    feed: TextIO | None = None
    feed_json: bool = False
    # event rows written by a writer process of their own (issue 16.3); False: a thread
    store_process: bool = True


def _same_dir(a: Path, b: Path) -> bool:
    """``a`` is ``b`` (by inode when both exist; by resolved path when one is missing)."""
    try:
        sa, sb = a.stat(), b.stat()
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    except OSError:
        return a.resolve() == b.resolve()


def _open_hips_backends(tier: Tier, pin_root: Path, deadline_s: float | None,
                        say: Callable[[str], None]) -> Callable[[], Any]:
    """A factory for the HIPS enforcement backends of this tier (loaded on first need)."""

    def open_backends() -> Any:
        from bastion.enforce.hips_kernel import HipsKernel

        pin_dir = pin_root / "hips"
        if (pin_dir / "links").is_dir() and any((pin_dir / "links").iterdir()):
            # a previous agent's enforcement is still in force: adopt it, no gap
            try:
                kernel = HipsKernel.adopt(pin_dir)
                say(f"adopted the pinned HIPS enforcement under {pin_dir}")
            except KernelError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                # pins of an older Bastion (no exempt-identity map): replaced, with a gap
                # of one load, and said
                say(f"the pinned HIPS enforcement under {pin_dir} predates this version "
                    f"({exc.message}): replacing it")
                crossed: list[Path] = []
                remove_pins_under(pin_dir, crossed)
                if crossed:
                    say(f"WARNING: mounts someone put under {pin_dir} were left in place "
                        f"(not entered, not removed): {', '.join(map(str, crossed[:5]))}")
                kernel = HipsKernel(tier, pin_dir=pin_dir, self_tgid=os.getpid(),
                                    deadline_s=deadline_s)
                kernel.open()
        else:
            kernel = HipsKernel(tier, pin_dir=pin_dir, self_tgid=os.getpid(), deadline_s=deadline_s)
            kernel.open()
        files = None
        if tier != Tier.LSM:
            from bastion.enforce.fanotify import FanotifyEnforcer

            files = FanotifyEnforcer(self_tgid=os.getpid(), deadline_s=deadline_s)
            try:
                files.open()
                files.start()
            except BaseException:
                kernel.close()
                raise
        return kernel, files

    return open_backends


def sigma_engine_rules(dirs: Sequence[Path], say: Callable[[str], None]) -> list[Rule]:
    """Sigma rules for the engine; a malformed file is reported and the rest load."""
    return _sigma_load(dirs, say)[0]


def _sigma_load(dirs: Sequence[Path], say: Callable[[str], None]) -> tuple[list[Rule], int]:
    """(engine rules, how many Sigma rules they evaluate)."""
    if not dirs:
        return [], 0
    from bastion.detect.sigma.rules import load_sigma

    res = load_sigma(list(dirs))
    for err in res.errors:
        say(f"sigma: {err}")
    say(f"sigma: {len(res.rules)} rules loaded, {len(res.unsupported)} unsupported "
        f"(bastion sigma check lists them), {len(res.errors)} files with errors")
    return list(res.engine_rules()), len(res.rules)


def _sigma_group(policy: AgentConfig, opts: AgentOptions,
                 say: Callable[[str], None]) -> tuple[list[Rule], dict[str, Any]]:
    """The Sigma rules to evaluate: the policy's directories, ``--sigma``, and the set
    `bastion sigma update` installed (``sigma_installed``); with what status shows."""
    from bastion.detect.sigma import install as inst

    dirs = list(dict.fromkeys([*policy.sigma, *opts.sigma_dirs]))
    info: dict[str, Any] = {}
    if policy.sigma_installed:
        src = opts.sigma_data_dir or opts.data_dir
        info = inst.installed_info(src)
        live = inst.installed_rules_dir(src)
        if live is not None and live.resolve() not in {d.resolve() for d in dirs}:
            dirs.append(live)
    rules, n = _sigma_load(dirs, say)
    if rules:
        say(inst.DRL_NOTICE)
    where = (f"SigmaHQ release {info['release']}" if info.get("installed") else "")
    extra_dirs = [str(d) for d in dirs if not info.get("installed") or str(d) != info.get("path")]
    detail = (f"{n} rules live from " + ", ".join(filter(None, [where, *extra_dirs]))
              if rules else ("installed set loads no rule: bastion sigma check "
                             f"{info.get('path')}" if info.get("installed")
                             else "no rules installed: bastion sigma update"
                             if policy.sigma_installed else "off (sigma_installed: false, no sigma dirs)"))
    return rules, {"rules": n, "dirs": [str(d) for d in dirs], "detail": detail,
                   "installed": info}


def _shadow_incident_hook(agent_ref: list[Agent], procs: ProcessTable) -> ActionHook:
    """A ransomware kill opens a shadow-copy incident so `bastion rollback` can restore it."""

    def hook(f: Finding, alert: Alert) -> None:
        shadow = agent_ref[0].shadow if agent_ref else None
        if shadow is None or not alert.killed:
            return   # nothing killed (kill-tree-skipped): no incident to roll back
        e = procs.get(f.pid)
        start = (f.event.proc.start_ns if f.event is not None and f.event.proc.pid == f.pid
                 else (e.start_ns if e else 0))
        incident = shadow.open_incident(f.pid, start, alert.members)
        alert.meta["shadow_incident"] = incident
        alert.title += f" (recover: bastion rollback --incident {incident})"

    return hook


def enrolled_ours(tamper_dir: Path | None, environ: Mapping[str, str] | None = None
                  ) -> Callable[[], dict[int, int]]:
    """The processes of ours that are not the agent's ancestors, pid -> start_ns, read at
    each call (the dispatcher spares them): the guardian the agent's environment names
    (:mod:`bastion.guard.mutual`) and, with tamper protection pinned under ``tamper_dir``,
    every identity enrolled in ``tamper_idents`` (only an enrolled process can write it):
    a guardian restarted after a crash adopts the running agent without being its parent."""
    from bastion.guard.mutual import ENV_PID, ENV_START
    from bastion.procstat import TICK_NS

    env = dict(os.environ if environ is None else environ)

    def ours() -> dict[int, int]:
        out: dict[int, int] = {}
        try:
            out[int(env[ENV_PID])] = int(env[ENV_START]) * TICK_NS
        except (KeyError, ValueError):
            pass
        if tamper_dir is not None and (tamper_dir / "maps" / "tamper_idents").exists():
            from bastion.guard.kernel import enrolled_identities
            try:
                for ident in enrolled_identities(tamper_dir):
                    out[ident.tgid] = ident.start_ticks * TICK_NS
            except (KernelError, OSError) as exc:
                log.error("respond: the enrolled identities cannot be read (the guardian is "
                          "spared by its parent lineage only): %s", exc)
        return out
    return ours


def make_dispatcher(procs: ProcessTable, *, dry_run: bool,
                    quarantine: QuarantineBackend | None,
                    tamper_dir: Path | None = None) -> Dispatcher:
    """The response layer with every rule-specific way of acting registered: a rogue
    BPF program's ``kill`` reaches every holder the scan named, each by pid and start
    time (never the first holder by pid alone).  It spares the agent's lineage and the
    processes :func:`enrolled_ours` names."""
    from bastion.integrity.response import RULE as ROGUE_BPF, respond_to_rogue_program

    dispatcher = Dispatcher(procs, dry_run=dry_run, quarantine=quarantine,
                            guardians=enrolled_ours(tamper_dir))
    dispatcher.acts(ROGUE_BPF, "kill", respond_to_rogue_program)
    return dispatcher


def build_agent(opts: AgentOptions, say: Callable[[str], None]) -> Agent:
    """Assemble an agent: sensors, tier, HIPS, store, rules, responses, outputs, metrics.

    A policy that cannot be applied here is refused before anything is
    attached.  ``say`` prints one operator-facing line (stderr in the CLI).

    The data dir's owner lock is taken first, before anything is loaded or opened
    (s26): a replay that cannot take it is refused; a live agent that cannot take it
    in 5 s (its predecessor still exiting) goes on, says so and raises a high
    finding (a root who holds the file must not keep the agent down).
    """
    from bastion.store.db import lock_data_dir

    replay = opts.replay_path is not None
    if replay and _same_dir(opts.data_dir, DEFAULT_DATA_DIR):
        # s25 (review 9 of s24): a replay wrote its alerts into the live agent's
        # tamper-evident store, as this host's, beside the live writer
        raise ConfigError("a replay keeps its own store: give it a --data-dir other than the "
                          f"live agent's {DEFAULT_DATA_DIR}", location=Location(str(opts.data_dir)))
    held: list[int | None] = [None]
    lock_error: StoreError | None = None
    try:
        held[0] = lock_data_dir(opts.data_dir, wait_s=0.0 if replay else 5.0)
    except StoreError as exc:
        if replay:
            # s26: a replay into a live agent's data dir elsewhere (its owner lock held,
            # or its tamper protection refusing the lock file)
            raise ConfigError(f"a replay keeps its own store: {exc.message}",
                              location=exc.location) from exc
        say(f"warning: {exc}")
        lock_error = exc
    try:
        return _build_agent(opts, say, held, lock_error)
    except BaseException:
        if held[0] is not None:
            os.close(held[0])
        raise


def _build_agent(opts: AgentOptions, say: Callable[[str], None], held: list[int | None],
                 lock_error: StoreError | None) -> Agent:
    """:func:`build_agent` once the owner lock is decided: ``held[0]`` (the lock's
    descriptor, or None) goes to the store, which releases it at its close."""
    from bastion.detect.behavior import behavior_rules, live_container_probes, live_probes
    from bastion.detect.engine import Engine, builtin_rules
    from bastion.store.db import Retention, Store

    policy = opts.policy
    report: TierReport | None = None
    sensor: Sensor
    object_guard: ObjectGuard | None = None
    if opts.replay_path is not None:
        from bastion.sensors.replay import ReplaySensor

        sensor = ReplaySensor(opts.replay_path)
    else:
        from bastion.enforce.tiers import probe

        prepare_host("bastion run")
        report = probe()
        if not report.can_run:
            raise KernelError("this kernel cannot run Bastion: " + "; ".join(report.problems))
        from bastion.guard.mutual import watch_guardian_from_env

        watch_guardian_from_env()   # under a guardian: resume it if someone stops it
        object_guard = guard_loaded_objects(opts.pin_root / "tamper")   # before any load
        from bastion.sensors.sensitive import patterns_for

        sensor = event_sensor(report.event_source, classes=policy.events.classes,
                              ring_bytes=policy.events.ring_bytes,
                              sensitive=patterns_for(policy.events.sensitive_defaults,
                                                     policy.events.sensitive, policy.source))
        say(f"events from {sensor.source} ({sensor.name})")
    replay = opts.replay_path is not None
    parts = AgentParts()
    from bastion.respond.shadow.rollback import shadow_handlers

    # whether or not the shield runs now: incidents it kept before can be rolled back
    parts.control = shadow_handlers(opts.data_dir / "shadow")
    if report is not None:
        parts.object_guard = object_guard
    if report is not None:
        from bastion.policy.manager import PolicyManager

        parts.policies = PolicyManager(report.tier, open_backends=_open_hips_backends(
            report.tier, opts.pin_root, opts.test_deadline, say))
        parts.policies.prepare(policy, force=opts.force, allow_degraded=opts.allow_degraded)
    store = Store.open(opts.data_dir, retention=Retention(
        max_age_s=policy.store.max_age_s, max_events=policy.store.max_events,
        max_bytes=policy.store.max_bytes, max_alerts=policy.store.max_alerts),
        busy_timeout_s=1.0)
    store.owner_lock, held[0] = held[0], None     # released with the store
    try:
        if lock_error is not None:
            # a live agent that could not take its data dir's owner lock: another writer
            # in its store (an agent or a replay), or a root holding the file
            from bastion.detect.engine import Finding
            parts.notices += (Finding(
                rule="bastion.store.owner_lock", severity="high", attack=("T1562.001",),
                action="alert", event=None, pid=os.getpid(),
                title=f"The data dir's owner lock is not this agent's: {lock_error.message}",
                evidence={"error": str(lock_error), "data_dir": str(opts.data_dir)}),)
        if store.anchor_note:
            # the alert chain lost records (or its anchor) while no agent ran: said before
            # the store is re-anchored at its current head (the alert itself is chained)
            from bastion.detect.engine import Finding
            parts.notices += (Finding(
                rule="bastion.store.chain_anchor", severity="critical", attack=("T1070",),
                action="alert", title=f"Alert log anchor mismatch at start: {store.anchor_note}",
                event=None, pid=os.getpid(), evidence={"detail": store.anchor_note}),)
        procs = ProcessTable(live=opts.replay_path is None)   # a replay's pids are not ours
        def load_sigma_group(quiet: bool = False) -> tuple[list[Rule], dict[str, Any]]:
            return _sigma_group(policy, opts, (lambda _m: None) if quiet else say)

        extra, parts.sigma = load_sigma_group()
        parts.sigma_rules = tuple(extra)
        parts.sigma_loader = lambda: load_sigma_group(quiet=True)
        engine = Engine([*builtin_rules(),
                         *behavior_rules(policy.behavior, live_probes() if report else None,
                                         cprobes=live_container_probes() if report else None),
                         *extra])
        # s25: a replay's alerts went to the SIEM, the fleet and the metrics as this host's
        # own; a replay reports to its feed and its own store, and to the policy's
        # outputs only when asked (``replay_outputs``: a SIEM pipeline test)
        outputs = list(policy.outputs) if not replay or opts.replay_outputs else []
        fleet = policy.fleet if not replay else None
        if replay and (policy.fleet is not None or policy.metrics is not None
                       or len(outputs) < len(policy.outputs)):
            say("replay: the policy's " + ("fleet link and metrics" if outputs else
                                           "outputs, fleet link and metrics")
                + " are not started (a recording's alerts are not this host's)")
        if outputs or fleet is not None:
            from bastion.outputs import build_manager

            parts.outputs = build_manager(outputs, start=False)
            if fleet is not None:
                _fleet_parts(parts, policy, opts.data_dir)
            parts.outputs.start()
        if policy.metrics is not None and not replay:
            from bastion.metrics import Metrics

            parts.metrics = Metrics()
            if parts.outputs is not None:
                parts.metrics.watch_outputs(parts.outputs.stats)
            port = parts.metrics.serve(policy.metrics.host, policy.metrics.port)
            say(f"metrics on http://{policy.metrics.host}:{port}/metrics")
        if report is not None:
            _kernel_parts(parts, opts, report)
            _provenance_gate(parts, opts, sensor, engine, procs, report.tier)
            from bastion.containers import ContainerResolver
            from bastion.kernel.bpffs import cgroup2_root

            parts.containers = ContainerResolver(cgroup2=str(cgroup2_root()))
            parts.writer_enrol = tamper_writer_enrol(opts.pin_root / "tamper")
        # s24: a replay never acts on this host: its pids are the recording's, which
        # live processes may hold now (a recording replayed where it was made); every
        # response is decided and alerted as would-<action>, none is taken
        if opts.replay_path is not None and not policy.behavior.dry_run:
            say("replay: responses are decided and alerted as would-<action>; none is taken")
        dispatcher = make_dispatcher(procs, dry_run=policy.behavior.dry_run or
                                     opts.replay_path is not None, quarantine=parts.quarantine,
                                     tamper_dir=opts.pin_root / "tamper" if report is not None else None)
        agent_ref: list[Agent] = []
        dispatcher.after("behavior.ransomware", "kill", _shadow_incident_hook(agent_ref, procs))
        agent = Agent(policy=policy, sensors=[sensor], store=store, procs=procs, engine=engine,
                      dispatcher=dispatcher, parts=parts, tier=report, socket_path=opts.socket_path,
                      feed=opts.feed, feed_json=opts.feed_json,
                      apply_opts={"force": opts.force, "allow_degraded": opts.allow_degraded},
                      keep_pins=opts.keep_pins, pin_dir=opts.pin_root / "hips",
                      test_deadline=opts.test_deadline, store_process=opts.store_process)
        agent_ref.append(agent)
    except BaseException:
        store.close()
        raise
    return agent


def guard_loaded_objects(tamper_dir: Path) -> ObjectGuard | None:
    """Under the guardian's tamper protection (its pins under ``tamper_dir``): every BPF
    object this agent loads or adopts from now on has its maps and links, and every map
    its programs use (``.bss``, scratch, task storage), protected by kernel id as soon as
    it is loaded (:class:`bastion.guard.kernel.ObjectGuard`, a loader hook).  None (and
    no hook) without tamper pins."""
    from bastion.guard.kernel import loaded_object_guard
    from bastion.kernel.loader import LOAD_HOOKS

    guard = loaded_object_guard(tamper_dir)
    if guard is None:
        LOAD_HOOKS.pop("tamper", None)
    else:
        LOAD_HOOKS["tamper"] = guard
    return guard


def tamper_writer_enrol(tamper_dir: Path) -> Callable[[int], Callable[[], None]] | None:
    """Under the guardian's tamper protection (its pins under ``tamper_dir``): enrol the
    agent's event writer process in ``tamper_idents`` (role writer; exact identity, as
    the agent's) so that it may write the protected store, and take it out once it is
    gone.  None without tamper pins (no protection: nothing to enrol in)."""
    idents = tamper_dir / "maps" / "tamper_idents"
    if not idents.exists():
        return None

    def enrol(pid: int) -> Callable[[], None]:
        from bastion.guard.identity import ROLE_WRITER, Identity
        from bastion.kernel.libbpf import Map

        ident = Identity.of(pid, ROLE_WRITER)
        with Map.open_pinned(idents) as m:
            # writers of an agent that died without taking them out (64 entries at most)
            for k in list(m.keys()):
                v = m.lookup(k)
                if v is not None:
                    old = Identity.from_map(k, v)
                    if old.role == ROLE_WRITER and not old.alive():
                        m.delete(k)
            m.update(ident.key(), ident.value())

        def undo() -> None:
            with Map.open_pinned(idents) as m:
                if m.lookup(ident.key()) == ident.value():
                    m.delete(ident.key())
        return undo

    return enrol


def _fleet_parts(parts: AgentParts, policy: AgentConfig, data_dir: Path) -> None:
    """The NATS fleet link (policy rollout, host status) and its output (alerts, events)."""
    from bastion.fleet.link import FleetLink
    from bastion.fleet.output import FleetOutput
    from bastion.fleet.queue import DiskQueue

    spec = policy.fleet
    assert spec is not None and parts.outputs is not None
    queue = (DiskQueue(data_dir / "fleet-queue.db", spec.queue_max)
             if spec.alerts or spec.events else None)
    parts.fleet = FleetLink(spec, data_dir=data_dir, queue=queue)
    if queue is not None:
        parts.outputs.add(FleetOutput(spec, queue, parts.fleet), events=spec.events)


def _provenance_gate(parts: AgentParts, opts: AgentOptions, sensor: Sensor,
                     engine: Engine, procs: ProcessTable, tier: Tier) -> None:
    """Issue 15: the fanotify gate on the must-stop objects, reading the event sensor's
    kernel provenance map; the Provenance rule mirrors its user-space reasons into it,
    and into the live descendants the process already has (the process table, and
    /proc at most every ``PUBLISH_SCAN_S``: a flood of publishes costs table walks)."""
    from bastion.detect.behavior.provenance import Provenance
    from bastion.enforce.provgate import AgentGate
    from bastion.sensors.bpf import BpfSensor
    from bastion.sensors.provenance import ProvenanceMap, publisher

    if not isinstance(sensor, BpfSensor):
        return

    last_scan = [0.0]

    def descendants(pid: int) -> list[tuple[int, int]]:
        now = time.monotonic()
        scan = now - last_scan[0] >= PUBLISH_SCAN_S
        if scan:
            last_scan[0] = now
        return procs.live_descendants(pid, proc=PROC if scan else None)

    def mirror(prov: ProvenanceMap) -> None:
        for r in engine.rules:
            if isinstance(r, Provenance):
                r.publish = publisher(prov, descendants)

    parts.provgate = AgentGate(sensor.provenance, self_tgid=os.getpid(),
                               deadline_s=opts.test_deadline,
                               scope_cgroup_id=opts.test_cgroup_id, on_map=mirror,
                               dry_run=opts.policy.behavior.dry_run,
                               refresh_s=opts.gate_refresh_s)
    if tier == Tier.LSM:
        from bastion.enforce.provgate_lsm import AgentLsmGate

        parts.lsmgate = AgentLsmGate(sensor.provenance, self_tgid=os.getpid(),
                                     deadline_s=opts.test_deadline,
                                     scope_cgroup_id=opts.test_cgroup_id,
                                     dry_run=opts.policy.behavior.dry_run)
        from bastion.enforce.svcgate_lsm import AgentSocketGate

        # s15-svc: control sockets (systemd's private socket, docker/containerd/podman)
        # refused to an untrusted tree in unix_stream_connect
        parts.svcgate = AgentSocketGate(sensor.provenance, self_tgid=os.getpid(),
                                        deadline_s=opts.test_deadline,
                                        scope_cgroup_id=opts.test_cgroup_id,
                                        dry_run=opts.policy.behavior.dry_run)
    else:
        _compat_socket_gate(parts, opts, sensor)
    _pipe_gate(parts, opts)


def _pipe_gate(parts: AgentParts, opts: AgentOptions) -> None:
    """s23-pipegate: a decoded payload piped into a shell is killed in the kernel at the
    exec that completes decoder -> shell (``pipegate.bpf.o``, both tiers), the in-kernel
    half of ``behavior.decoded_payload_shell``: off when that rule is, dry run
    (would-kill) when the pack or the rule is in dry run or its action does not kill."""
    from bastion.enforce.pipegate import SHELL_RULE, AgentPipeGate

    beh = opts.policy.behavior
    rs = beh.rules.get(SHELL_RULE)
    if rs is not None and not rs.enabled:
        return
    dry = beh.dry_run or (rs is not None and (rs.dry_run or rs.action not in
                                              (None, "kill", "kill-tree", "quarantine")))
    parts.pipegate = AgentPipeGate(self_tgid=os.getpid(), deadline_s=opts.test_deadline,
                                   scope_cgroup_id=opts.test_cgroup_id, dry_run=dry)


def _compat_socket_gate(parts: AgentParts, opts: AgentOptions, sensor: BpfSensor) -> None:
    """s19-compatconnect: on the compat tier an untrusted tree's tmux/screen client is
    killed in the kernel at its connect to a clean server (``svcgate_compat.bpf.o``), the
    in-kernel half of ``behavior.launder_via_daemon``: off when that rule is, dry run
    (would-kill) when the pack or the rule is in dry run or the rule's action does not
    kill."""
    from bastion.enforce.svcgate_compat import LAUNDER_RULE, CompatSocketGate
    from bastion.enforce.svcgate_lsm import AgentSocketGate

    beh = opts.policy.behavior
    rs = beh.rules.get(LAUNDER_RULE)
    if rs is not None and not rs.enabled:
        return
    dry = beh.dry_run or (rs is not None and (rs.dry_run or rs.action not in
                                              (None, "kill", "kill-tree", "quarantine")))
    parts.svcgate = AgentSocketGate(sensor.provenance, self_tgid=os.getpid(),
                                    deadline_s=opts.test_deadline,
                                    scope_cgroup_id=opts.test_cgroup_id, dry_run=dry,
                                    sockets={}, gate_type=CompatSocketGate)


def _kernel_parts(parts: AgentParts, opts: AgentOptions, report: TierReport) -> None:
    """Quarantine, the ransomware shield and BPF-load refusal: the parts that need a kernel."""
    from bastion.detect.engine import Finding
    from bastion.respond.quarantine import Quarantine

    policy = opts.policy
    parts.quarantine = Quarantine(tier=report.tier, self_tgid=os.getpid(),
                                  deadline_s=opts.test_deadline or 0.0)
    if policy.shield.protect:
        from bastion.respond.shadow import ShadowKeeper
        from bastion.respond.shadow.store import Quotas

        sh = policy.shield
        parts.shadow = ShadowKeeper(list(policy.shield.protect), opts.data_dir / "shadow",
                                    max_bytes=policy.shield.max_bytes,
                                    quotas=Quotas(uid_max_bytes=sh.uid_max_bytes,
                                                  tree_max_bytes=sh.tree_max_bytes,
                                                  max_rows=sh.max_rows,
                                                  uid_max_rows=sh.uid_max_rows,
                                                  tree_max_rows=sh.tree_max_rows),
                                    trusted_exes=frozenset(policy.shield.trusted),
                                    self_tgid=os.getpid(), deadline_s=opts.test_deadline,
                                    max_dirs=policy.shield.max_dirs,
                                    exclude=policy.shield.exclude)
    cfg = policy.integrity
    if cfg.refuse_bpf_loads:
        if report.tier != Tier.LSM:
            parts.notices += (Finding(
                rule="bastion.policy.degraded", severity="high", attack=(), action="alert",
                title="integrity.refuse_bpf_loads needs the lsm tier: BPF loads are detected "
                      "(integrity scan, behavior.bpf_load) but not refused on this kernel",
                event=None, pid=os.getpid(), evidence={"setting": "integrity.refuse_bpf_loads"}),)
        else:
            from bastion.enforce.lsm import BpfLoadGuard

            parts.bpf_guard = BpfLoadGuard(cgroup_id=opts.test_cgroup_id,
                                           deadline_s=opts.test_deadline, self_tgid=os.getpid())
            parts.bpf_loaders = tuple(cfg.bpf_loaders)


def event_sensor(source: str, *, classes: Sequence[str] | None = None, cgroup_id: int = 0,
                 open_reads: bool = False, ring_bytes: int | None = None,
                 sensitive: Sequence[tuple[str, SensClass]] | None = None) -> BpfSensor:
    """The kernel event sensor for an event source of the tier report: ``hooks`` (the
    LSM/fentry sensor, where BPF trampolines work) or ``tracepoints`` (compat).
    Our own processes (this one, the guardian named in the environment) are quiet.
    ``sensitive``: the patterns of the sensitive read set (None: the defaults);
    both sensors fill the same ``sens_inodes`` map from them."""
    from bastion import abi
    from bastion.sensors.bpf import (
        DEFAULT_MMAP_DEDUP_S, DEFAULT_NET_DEDUP_S, DEFAULT_OPEN_DEDUP_S, EVENT_CLASSES,
        BpfSensor as Tp, HookSensor,
    )

    kw: dict[str, Any] = {"classes": tuple(classes) if classes else tuple(EVENT_CLASSES),
                          "self_tgid": os.getpid(), "cgroup_id": cgroup_id,
                          "open_reads": open_reads,
                          "ring_bytes": ring_bytes or abi.RINGBUF_BYTES,
                          # repeats filtered in the kernel, the same on both sensors
                          "open_dedup_s": DEFAULT_OPEN_DEDUP_S,
                          "net_dedup_s": DEFAULT_NET_DEDUP_S,
                          "mmap_dedup_s": DEFAULT_MMAP_DEDUP_S}
    if sensitive is not None:
        kw["sensitive"] = tuple(sensitive)
    if source == "hooks":
        from bastion.guard.mutual import ENV_PID

        quiet = [os.getpid()]
        if os.environ.get(ENV_PID, "").isdigit():
            quiet.append(int(os.environ[ENV_PID]))
        return HookSensor(quiet_tgids=quiet, **kw)
    if source != "tracepoints":
        raise KernelError(f"unknown event source {source!r} (hooks, tracepoints)")
    return Tp(**kw)


def _event_source() -> str:
    from bastion.enforce.tiers import probe

    return probe().event_source


def record_sensor(classes: Sequence[str]) -> Sensor:
    """The kernel sensor for ``bastion record`` (every class unless some are named)."""
    prepare_host("bastion record")
    return event_sensor(_event_source(), classes=classes)


def cgroup2_root() -> Path:
    """Where the cgroup v2 hierarchy is mounted (its root)."""
    from bastion.kernel.bpffs import cgroup2_root as root

    return root()


def cgroup_id_of(path: Path) -> int:
    """The kernel id of a cgroup v2 directory (a clear error when it is not one)."""
    from bastion.kernel.cgroup import cgroup_id

    return cgroup_id(path)


def learn_sensor(cgroup_path: Path | None) -> tuple[Sensor, int]:
    """The kernel sensor for ``bastion learn`` (read-opens on; scoped to a cgroup when given)."""
    prepare_host("bastion learn")
    scope = cgroup_id_of(cgroup_path) if cgroup_path is not None else 0
    return event_sensor(_event_source(), cgroup_id=scope, open_reads=True), scope


def remove_pins_under(path: Path, crossed: list[Path] | None = None) -> list[Path]:
    """Every pin under ``path`` (bpffs only); the mounts met under it (never entered) are
    appended to ``crossed``."""
    from bastion.kernel import bpffs

    return bpffs.remove_pins(path, crossed)


def remove_all_pins(pin_root: Path, crossed: list[Path] | None = None) -> list[Path]:
    """Break-glass: every pin under ``<pin root>`` and ``<pin root>-*`` (bpffs only); the
    mounts met under them (never entered, left with the directories holding them) are
    appended to ``crossed``."""
    from bastion.kernel import bpffs

    removed: list[Path] = []
    parent = pin_root.parent
    if parent.is_dir():
        for p in sorted(parent.iterdir()):
            if p.name == pin_root.name or p.name.startswith(pin_root.name + "-"):
                removed += bpffs.remove_pins(p, crossed)
    return removed

