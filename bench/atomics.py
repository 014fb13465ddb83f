"""Atomic Red Team's Linux atomics against the behaviour pack, in a throwaway sandbox.

Not part of ``make test``.  Run as root on a host whose kernel runs Bastion::

    flock /work/_prompts/heavy.lock .venv/bin/python bench/atomics.py \\
        --atomics /path/to/atomic-red-team/atomics --out results.json \\
        [--techniques T1053.003,T1059.004] [--timeout 20]

Each atomic runs the way Invoke-AtomicTest runs it on Linux: its ``sh`` or
``bash`` executor with ``-c`` and the command, ``#{input}`` replaced by the
input's default, ``PathToAtomicsFolder`` by the atomics folder (mounted
read-only at /AtomicRedTeam/atomics).

Prerequisites (``--prereqs``): Invoke-AtomicTest's documented way is ``-GetPrereqs``
then the test.  ``offline`` (the default) runs, in the atomic's own sandbox and before
it, each dependency's ``prereq_command`` and, when that fails, its
``get_prereq_command`` — only when they are offline-safe (:func:`prereq_unsafe`: no
URL, no downloader, no package or language-package install, nothing the skip list
names; a dependency executor other than sh/bash is skipped too); an atomic with an
unsafe dependency runs without any of its prerequisites, and the row says why.  The
prerequisites run outside the measured window: the sandbox signals their end on a
FIFO, the runner drains the sensor and sets their events, execs and alerts apart
(``prereq_alerts``), then releases the atomic.  ``none``: no prerequisites (the
runs before s16-stage).

Sandbox (never damage the host): ``unshare --mount --pid --fork --net --uts
--ipc`` with a private mount tree; an overlayfs over / whose upper dir is a
tmpfs, made the namespace's root (pivot_root, the old root unmounted), so every file change vanishes with the namespace; a
fresh /proc (with /proc/sys and /proc/sysrq-trigger read-only), a minimal
tmpfs /dev (null, zero, full, random, urandom, tty, ptmx + devpts), /sys
read-only, an empty network namespace (loopback only) and its own hostname.
The kernel's sensitive read set is keyed by the host file's (dev, ino); a file
read through the overlay keeps its inode number but has the overlay's device, so
the runner adds the same inodes on the sandbox's overlay device to the set before
the atomic starts (the sandbox waits on a FIFO, a shell builtin, until then).
Atomics that would touch kernel state no namespace isolates (module loads,
sysctl writes, the clock, swap, audit rules, AppArmor, BPF programs, reboot)
are skipped and listed with the reason.

The agent side is the embedded default policy's behaviour pack plus the
built-in rules, fed by the live BPF sensor scoped to the sandbox's cgroup and
armed: its kills can only land on the sandbox's processes.  (The full agent
would watch the whole shared host, where an armed response could hit other
people's processes.)  Per atomic: exit code, events seen, alerts (rule,
severity, action as taken).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

SKIP = [
    (re.compile(r"\b(reboot|shutdown|halt|poweroff)\b|\binit\s+[06]\b|systemctl\s+(reboot|poweroff|halt)"),
     "reboot/shutdown"),
    (re.compile(r"\b(insmod|rmmod|modprobe|kmod)\b|\.ko\b"), "kernel module load"),
    (re.compile(r"\bsysctl\b|/proc/sys/|sysrq"), "sysctl write"),
    (re.compile(r"\b(hwclock|timedatectl)\b|\bdate\s+-s\b|\bdate\s+--set"), "system clock"),
    (re.compile(r"\bswapo(ff|n)\b"), "swap"),
    (re.compile(r"\bauditctl\b|\bauditd\b"), "kernel audit rules (not namespaced)"),
    (re.compile(r"\b(aa-teardown|aa-disable|apparmor_parser|setenforce)\b"), "LSM state"),
    (re.compile(r"\bbpftrace\b|\bbpftool\b"), "BPF programs (global)"),
    (re.compile(r"\bmkfs\b|\bwipefs\b|of=/dev/[sv]d|/dev/[sv]d[a-z]"), "block devices"),
    (re.compile(r"\bkillall5\b|kill\s+-9\s+-1\b|:\(\)\s*\{"), "kills everything / fork bomb"),
    (re.compile(r"\bdocker\b|\bkubectl\b|\bpodman\b"), "container runtime (host daemon)"),
]

SETUP = r"""
set -e
T="$1"; shift
mount -t tmpfs -o size=512m bastion-sbx "$T"
mkdir -p "$T/u" "$T/w" "$T/m"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/u,workdir=$T/w${SBX_OVL_OPTS:+,$SBX_OVL_OPTS}" "$T/m"
M="$T/m"
mount -t proc proc "$M/proc"
mount --bind -o ro "$M/proc/sys" "$M/proc/sys" && mount -o remount,bind,ro "$M/proc/sys"
if [ -e "$M/proc/sysrq-trigger" ]; then mount --bind /dev/null "$M/proc/sysrq-trigger"; fi
mount -t sysfs -o ro sysfs "$M/sys" 2>/dev/null || true
mount -t tmpfs -o mode=755 devtmp "$M/dev"
mknod -m 666 "$M/dev/null" c 1 3; mknod -m 666 "$M/dev/zero" c 1 5
mknod -m 666 "$M/dev/full" c 1 7; mknod -m 666 "$M/dev/random" c 1 8
mknod -m 666 "$M/dev/urandom" c 1 9; mknod -m 666 "$M/dev/tty" c 5 0
mkdir -p "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs shm "$M/dev/shm"
mount -t tmpfs run "$M/run"
mount -t tmpfs tmp "$M/tmp"
mkdir -p "$M/AtomicRedTeam/atomics"
mount --bind -o ro "$ATOMICS" "$M/AtomicRedTeam/atomics"
# Invoke-AtomicTest runs as root; many atomics prefix `sudo`, which is not installed
# here: a pass-through shim in the overlay (vanishes with it), options dropped
if ! command -v sudo >/dev/null; then
  printf '%s\n' '#!/bin/sh' 'while [ $# -gt 0 ]; do case "$1" in -u|-g) shift 2;; -*) shift;; *) break;; esac; done' \
    '[ $# -eq 0 ] && exec /bin/sh' 'exec "$@"' > "$M/usr/local/bin/sudo"
  chmod 755 "$M/usr/local/bin/sudo"
fi
ip link set lo up 2>/dev/null || true
hostname atomic-sandbox
# pivot_root (not chroot alone): the sensor names paths from the mount namespace's
# root, so the atomic's /etc/cron.d/x is reported as such, not under the sandbox dir
mkdir -p "$M/.oldroot"
# wait (a builtin, no exec) until the runner has put the overlay's device into the
# sensitive set: a file read through the overlay has the overlay's dev, not the host's
if [ -n "$SBX_GO" ]; then read -r _ < "$SBX_GO"; fi
cd "$M"
pivot_root . .oldroot
# the namespace's init (pid 1) outlives the executor by a moment: when pid 1 exits the
# kernel kills the namespace, and an atomic that backgrounds a program (`awk
# 'BEGIN{system("/bin/sh &")}'`, `busybox sh &`) exits before that program's exec
# prerequisites (--prereqs): run with the atomic's environment, then tell the runner
# (a FIFO under the old root) and wait for its go: the runner sets their events apart
exec /usr/sbin/chroot . /bin/sh -c 'if [ -n "$SBX_PRE" ]; then
  /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    TERM=dumb PathToAtomicsFolder=/AtomicRedTeam/atomics /bin/sh -c "$SBX_PRE" </dev/null
  echo done > "/.oldroot$SBX_PRE_DONE"; read -r _ < "/.oldroot$SBX_GO2"; fi
  umount -l /.oldroot || exit 125; "$@"; rc=$?; sleep 0.51; exit $rc' sandbox /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb PathToAtomicsFolder=/AtomicRedTeam/atomics "$@"
"""


def atomics(root: Path, techniques: set[str] | None) -> list[dict[str, Any]]:
    out = []
    for f in sorted(root.glob("T*/T*.yaml")):
        tech = f.parent.name
        if techniques and tech not in techniques and tech.split(".")[0] not in techniques:
            continue
        doc = yaml.safe_load(f.read_text())
        for i, t in enumerate(doc.get("atomic_tests") or [], 1):
            if "linux" not in (t.get("supported_platforms") or []):
                continue
            ex = t.get("executor") or {}
            if ex.get("name") not in ("sh", "bash"):
                continue
            def fill(cmd: str) -> str:
                for name, arg in (t.get("input_arguments") or {}).items():
                    cmd = cmd.replace("#{" + name + "}", str(arg.get("default", "")))
                return cmd.replace("PathToAtomicsFolder", "/AtomicRedTeam/atomics").replace(
                    "$/AtomicRedTeam", "/AtomicRedTeam")
            deps = [(fill(d.get("prereq_command") or "true"), fill(d.get("get_prereq_command") or "true"))
                    for d in t.get("dependencies") or []]
            filled = {**t, "dependencies": [{"prereq_command": p, "get_prereq_command": g}
                                             for p, g in deps]}
            out.append({"technique": tech, "n": i, "name": t.get("name", ""),
                        "guid": t.get("auto_generated_guid", ""), "executor": ex["name"],
                        "command": fill(ex.get("command") or ""), "deps": deps,
                        "dep_executor": t.get("dependency_executor_name") or ex["name"],
                        "prereq_unsafe": prereq_unsafe(filled)})
    return out


def skip_reason(cmd: str) -> str | None:
    for rx, why in SKIP:
        if rx.search(cmd):
            return why
    return None


# What makes a prerequisite unsafe offline: a network fetch or a package install (the
# bench host is shared and the sandbox has no network), or what SKIP refuses.
PREREQ_UNSAFE = re.compile(
    r"://|\b(curl|wget|fetch|aria2c|git\s+clone|Invoke-WebRequest)\b"
    r"|\b(apt|apt-get|aptitude|yum|dnf|zypper|pacman|apk|pkg|brew|snap|port|emerge)\s"
    r"|\b(pip3?|pipx|npm|gem|cpanm?)\s+install\b|\bcargo\s+install\b|\bgo\s+(get|install)\b")


def prereq_unsafe(t: dict[str, Any]) -> str | None:
    """Why the dependencies of atomic ``t`` (its YAML test, inputs replaced) cannot run
    offline, or None when they can (also when it has none)."""
    deps = t.get("dependencies") or []
    ex = t.get("dependency_executor_name") or (t.get("executor") or {}).get("name")
    if deps and ex not in ("sh", "bash"):
        return f"dependency executor {ex}"
    for d in deps:
        for k in ("prereq_command", "get_prereq_command"):
            cmd = d.get(k) or ""
            m = PREREQ_UNSAFE.search(cmd)
            if m:
                return f"{k}: {m.group(0).strip()}"
            why = skip_reason(cmd)
            if why:
                return f"{k}: {why}"
    return None


def prereq_script(a: dict[str, Any]) -> str:
    """A shell script running each dependency the way Invoke-AtomicTest -GetPrereqs
    does: the check, and the fetch when the check fails."""
    ex = "/bin/bash" if a["dep_executor"] == "bash" else "/bin/sh"
    lines = [f"{ex} -c {shlex.quote(pre)} >/dev/null 2>&1 || {ex} -c {shlex.quote(get)} "
             ">/dev/null 2>&1" for pre, get in a["deps"]]
    return "\n".join(lines) + "\n"


def sandbox_trust() -> Any:
    """Trusted tools by inode, as the sandbox's executables are seen.

    Inside the overlay every executable has the overlay's device number, so the
    host's (device, inode) identities of ``/usr/sbin/useradd`` and friends match
    nothing, and the rules that exempt trusted tools would over-report.  This
    measurement shim (never used by the agent) learns, from exec events, the
    overlay identity of each path under the trust directories whose host file is a
    trusted file.  Limit: a system binary replaced inside the sandbox would be
    trusted here; no selected atomic does that."""
    from bastion.detect.behavior.trust import TRUST_DIRS, ExeTrust, secure_file
    from bastion.abi import kernel_dev
    from bastion.events import Event, ExecEvent

    class SandboxTrust(ExeTrust):
        def __init__(self) -> None:
            self.extra: dict[str, set[tuple[int, int]]] = {}
            super().__init__()

        def idents(self, name: str) -> frozenset[tuple[int, int]]:
            return super().idents(name) | frozenset(self.extra.get(name, ()))

        def learn(self, ev: Event) -> None:
            if isinstance(ev, ExecEvent) and os.path.dirname(ev.proc.exe) in TRUST_DIRS:
                st = secure_file(ev.proc.exe)
                if st is not None and (kernel_dev(st.st_dev), st.st_ino) != (ev.exe_dev, ev.exe_ino):
                    self.extra.setdefault(os.path.basename(ev.proc.exe), set()).add(
                        (ev.exe_dev, ev.exe_ino))

    return SandboxTrust()


class Watch:
    def __init__(self, cgid: int, tier: str = "compat") -> None:
        from bastion.config import load_policy
        from bastion.detect.behavior import behavior_rules, live_probes
        from bastion.detect.engine import Engine, RuleContext, builtin_rules
        from bastion.proctable import ProcessTable
        from bastion.respond.dispatch import Dispatcher
        from bastion.sensors.bpf import BpfSensor, HookSensor

        from bastion.sensors.sensitive import SensEntry, resolve

        policy = load_policy(None)
        # the sandbox's overlay device, set per atomic (see overlay_dev())
        self.overlay_dev: tuple[int, ...] = ()
        # the bits overlayfs's xino puts above a lower file's inode number (lsm mode's
        # overlay; 0 without xino), set per atomic (see overlay_ino_bits())
        self.overlay_bits = 0

        def sandbox_sensitive(patterns: Any) -> list[SensEntry]:
            """The host's sensitive entries plus the same inodes on the sandbox's overlay
            device (an overlayfs file keeps the lower inode number, not the device)."""
            host = resolve(patterns)
            return host + [SensEntry(e.sens_id, e.path, e.pattern, e.sens_class, d,
                                     e.ino | self.overlay_bits)
                           for d in self.overlay_dev for e in host]

        # the event sensor the agent assembles on the tier (assembly.event_sensor): the
        # kernel hooks on lsm (our own process quiet in the kernel), the tracepoints on compat
        self.tier = tier
        if tier == "lsm":
            self.sensor = HookSensor(cgroup_id=cgid, self_tgid=os.getpid(),
                                     quiet_tgids=[os.getpid()], classes=policy.events.classes,
                                     resolve_sensitive=sandbox_sensitive, sensitive_refresh_s=0.2)
        else:
            self.sensor = BpfSensor(cgroup_id=cgid, self_tgid=os.getpid(),
                                    classes=policy.events.classes,
                                    resolve_sensitive=sandbox_sensitive, sensitive_refresh_s=0.2)
        self.cgid = cgid
        self.gate: Any = None     # the compat tier's provenance gate: one per sandbox
        self.lsmgate: Any = None  # the lsm tier's in-hook gate (AgentLsmGate): one per run
        self.prov: Any = None     # the provenance map the gates read (open_gate)
        self.gate_deadline_s = 0.0
        self.pipegate: Any = None  # s23-pipegate: the in-kernel decoder -> shell pipe gate
        self.gate_marks = 0
        self.gate_problems: list[str] = []
        self.procs = ProcessTable()
        self.trust = sandbox_trust()
        self.engine = Engine([*builtin_rules(),
                              *behavior_rules(policy.behavior, live_probes(), trust=self.trust)])
        self.disp = Dispatcher(self.procs, dry_run=policy.behavior.dry_run)
        self.ctx = RuleContext(self.procs)
        self.lock = threading.Lock()
        self.alerts: list[dict[str, Any]] = []
        self.events = 0
        self.drops_seen = 0
        self.execs: list[tuple[str, tuple[str, ...]]] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def open_gate(self, deadline_s: float) -> None:
        """The provenance gate (issue 15) on the sensor's provenance map: temp dirs and
        interpreters of the policy, reasons from the Provenance rule mirrored into the
        map; marks are set per sandbox (:meth:`mark_sandbox`)."""
        from bastion.detect.behavior.provenance import Provenance
        from bastion.sensors.provenance import TMP_DIRS, default_interpreters, publisher

        prov = self.sensor.provenance()
        prov.set_dirs(list(TMP_DIRS))
        self.interps = default_interpreters()
        prov.set_interpreters(self.interps)
        for r in self.engine.rules:
            if isinstance(r, Provenance):
                r.publish = publisher(prov)
        self.prov = prov
        self.gate_deadline_s = deadline_s
        if self.tier == "lsm":
            # s24: the in-hook gate as the agent assembles it on the lsm tier
            # (assembly._provenance_gate: AgentLsmGate on the sensor's prov map, scoped to
            # the runner's cgroup, armed, a dead-man deadline); the fanotify gate is off
            # there (agent: marks_off).  Its objects are the sandbox's, entered per sandbox
            # (enter_sandbox_lsm), not the runner's namespace's
            import dataclasses

            from bastion.enforce.provgate_lsm import AgentLsmGate, LsmProvenanceGate

            class SandboxNetGate(LsmProvenanceGate):
                """Measurement shim: a firewall change is judged in every network namespace
                (``cfg_host_netns`` 0, the object's fail-closed setting), the sandbox's
                empty one standing for the host's the atomic would change."""

                def spec(self) -> Any:
                    sp = super().spec()
                    return dataclasses.replace(sp, rodata={**sp.rodata, "cfg_host_netns": 0})

            gate = SandboxNetGate(prov, cgroup_id=self.cgid, deadline_s=deadline_s,
                                  self_tgid=os.getpid())
            gate.open()
            part = AgentLsmGate(lambda: prov, self_tgid=os.getpid(), deadline_s=deadline_s,
                                scope_cgroup_id=self.cgid)
            part.gate = gate
            self.lsmgate = part

    def open_pipegate(self, deadline_s: float) -> None:
        """The pipe gate (s23-pipegate) scoped to the runner's cgroup, armed."""
        from bastion.enforce.pipegate import PipeGate

        self.pipegate = PipeGate(cgroup_id=self.cgid, deadline_s=deadline_s,
                                 self_tgid=os.getpid())
        self.pipegate.open()

    def enter_pipegate(self, devs: tuple[int, ...]) -> None:
        """The installed decoders and shells as the sandbox sees them: the host's inodes
        on the sandbox's overlay devices too (an overlayfs file keeps its inode number)."""
        from bastion.detect.behavior.trust import ExeTrust
        from bastion.enforce.pipegate import installed_shells

        if self.pipegate is None:
            return
        trust = ExeTrust()

        def idents(name: str) -> frozenset[tuple[int, int]]:
            host = trust.idents(name)
            return host | {(d, ino | bits) for d in devs for _, ino in host}

        bits = self.overlay_bits
        sh = installed_shells()
        shells = {**sh, **{(d, ino | bits): f for d in devs for (_, ino), f in sh.items()}}
        self.pipegate.apply(idents=idents, shells=lambda: shells)

    def mark_sandbox(self, root: str, devs: tuple[int, ...]) -> None:
        """Mark the must-stop objects as the sandbox sees them (``root``: its overlay
        from the runner's side, ``/proc/PID/root/<dir>``) and add the interpreters'
        overlay identities.

        s18-gate: a fresh gate (fanotify group) per sandbox: one group for every sandbox
        kept a mark by (dev, ino) and skipped a new overlay's object whose numbers
        repeated the last one's (another inode); and the objects are walked inside the
        sandbox's root (``apply(root=)``: ``/proc/PID/root`` is a link whose text is
        ``/``, so the walk looked them up in the runner's namespace: nothing marked)."""
        from bastion.enforce.provgate import GateObject, ProvenanceGate, default_objects
        from bastion.abi import InodeKey, ProvInterp
        from bastion.sensors.provenance import letters_mask

        if self.prov is None:
            return
        if self.lsmgate is not None:
            self.enter_sandbox_lsm(root, devs)
            return
        gate = ProvenanceGate(self.prov, scope_cgroup_id=self.cgid, self_tgid=os.getpid(),
                              deadline_s=self.gate_deadline_s, decision_timeout_s=0.5)
        try:
            gate.start()
            objs = [GateObject(o.path[len(root):], o.kind) for o in default_objects(root)]
            problems = gate.apply(objs, root=root)
        except BaseException:
            gate.close()
            raise
        old, self.gate = self.gate, gate
        if old is not None:
            self.drain(old)
            old.close()
        self.gate_marks = gate.marked()
        self.gate_problems = problems
        prov = gate.prov
        for path, letters in self.interps:
            try:
                st = os.stat(path)
            except OSError:
                continue
            for d in devs:
                prov.interp.update(bytes(InodeKey(ino=st.st_ino | self.overlay_bits, dev=d)),
                                   bytes(ProvInterp(code_letters=letters_mask(letters))))

    def enter_sandbox_lsm(self, root: str, devs: tuple[int, ...]) -> None:
        """The lsm tier: the sandbox's must-stop objects and names entered into the in-hook
        gate (replacing the last sandbox's), walked inside its root (its overlay mounted
        with ``xino=on``: ``stat`` gives the keys the hooks see, checked here); the
        interpreters' overlay identities as :meth:`mark_sandbox`."""
        from bastion.abi import InodeKey, ProvInterp
        from bastion.enforce.muststop import GateObject, KINDS, default_names, default_objects
        from bastion.sensors.provenance import letters_mask

        if len(devs) != 1:
            raise RuntimeError(f"the sandbox's overlay reports devices {devs}: its files' "
                               "st_dev is not its superblock's (no xino?); the in-hook gate's "
                               "keys would not be the kernel's")
        gate = self.lsmgate.gate
        objs = [GateObject(o.path[len(root):], o.kind) for o in default_objects(root, kinds=KINDS)]
        names = [(d[len(root):], n, k) for d, n, k in default_names(root)]
        self.gate_problems = gate.apply(objs, names, root=root)
        # which of the sandbox's must-stop directories the kernel map holds, by the key
        # stat gives now (a row shows it: a refusal missing on one is then explained)
        self.gate_probe = {}
        for d in ("/etc/cron.d", "/etc/cron.daily", "/etc/systemd/system", "/var/log",
                  "/root/.bashrc", "/root/.profile", "/root/.bash_history", "/etc/rsyslog.conf"):
            try:
                st = os.stat(root + d)
            except OSError:
                continue
            k = bytes(InodeKey(ino=st.st_ino, dev=(os.major(st.st_dev) << 20) | os.minor(st.st_dev)))
            self.gate_probe[d] = f"{st.st_dev}:{st.st_ino}:{'in' if k in gate._objs else 'out'}"
        self.lsmgate.refresh_tools()
        n = gate.entered()
        self.gate_marks = n["objects"] + n["names"]
        for path, letters in self.interps:
            try:
                st = os.stat(path)
            except OSError:
                continue
            for d in devs:
                # s26: with xino the overlay's number is the host's with the layer's
                # bits above it; the host's number alone left every interpreter scan
                # of the sandbox unmatched (a tmp-script's taint came only from user
                # space's mirror, after the act when the run was slow)
                self.prov.interp.update(bytes(InodeKey(ino=st.st_ino | self.overlay_bits,
                                                       dev=d)),
                                        bytes(ProvInterp(code_letters=letters_mask(letters))))

    def drain(self, gate: Any) -> None:
        """The gate's decisions as alerts."""
        gate.poll(0)            # the HipsEvents (unused here): keep the queue short
        for d in gate.decisions():
            verb = "refused" if d.action == "deny" else f"allowed ({d.why or d.action})"
            a = {"rule": "provenance.gate",
                 "severity": "critical" if d.action == "deny" else "high",
                 "action": d.action,
                 "title": f"{d.prevented} {verb} [untrusted provenance: "
                          f"{', '.join(d.reasons)}]"}
            with self.lock:
                self.alerts.append(a)

    def run(self) -> None:
        while not self.stop.is_set():
            gate = self.gate
            if gate is not None:
                self.drain(gate)
            for pg in (self.lsmgate, self.pipegate):
                if pg is None:
                    continue
                for pev in pg.poll(0):
                    pf = pg.finding(pev)
                    if pf is not None:
                        a = self.disp.dispatch(pf, time.time_ns()).to_json()
                        with self.lock:
                            self.alerts.append(a)
            for ev in self.sensor.poll(0.01) or []:
                self.procs.update(ev)
                ev = self.procs.enrich(ev)
                self.trust.learn(ev)
                with self.lock:
                    self.events += 1
                    if ev.type == "exec":
                        self.execs.append((getattr(ev, "filename", "") or ev.proc.exe,
                                           tuple(getattr(ev, "argv", ()))))
                for f in self.engine.evaluate(ev, self.ctx):
                    a = self.disp.dispatch(f, time.time_ns()).to_json()
                    with self.lock:
                        self.alerts.append(a)

    def drops_since(self) -> int:
        """Records the kernel could not put in the ring since the last call (s22: ``rm -rf
        /`` outran the runner's loop; what a row missed is then no verdict of the rules)."""
        now = int(self.sensor.stats().get("drops", 0))
        d, self.drops_seen = now - self.drops_seen, now
        return d

    def take(self) -> tuple[int, list[tuple[str, tuple[str, ...]]], list[dict[str, Any]]]:
        with self.lock:
            out = (self.events, self.execs, self.alerts)
            self.events, self.execs, self.alerts = 0, [], []
        return out


def overlay_ino_bits(pid: str, mnt: str) -> int:
    """The bits overlayfs's xino puts above a lower file's inode number in the overlay
    mounted at ``mnt`` in ``pid``'s namespace (lsm mode: ``xino=on``, the lower layer's
    fsid in the top bits); 0 without xino.  Checked on /etc/passwd: the overlay's number
    must be the host's with bits added, else the sandbox's identities are not derivable
    (RuntimeError: the run would measure a gate that matches nothing)."""
    host = os.stat("/etc/passwd").st_ino
    sbx = os.stat(f"/proc/{pid}/root{mnt}/etc/passwd").st_ino
    bits = sbx & ~host
    if host | bits != sbx:
        raise RuntimeError(f"the sandbox's /etc/passwd is inode {sbx:#x}, the host's {host:#x}: "
                           "not the host's number with bits above it")
    return bits


def overlay_dev(cg: Path, mnt: str, deadline: float) -> tuple[int, ...]:
    """The kernel devs a file read through the overlay mounted at ``mnt`` by the sandbox
    in cgroup ``cg`` can carry: the overlay superblock's (from a sandbox process's
    mountinfo; first) and the lower layer's pseudo device that ``stat`` reports; () when the
    mount did not appear before ``deadline``."""
    while time.monotonic() < deadline:
        for pid in (cg / "cgroup.procs").read_text().split():
            try:
                info = Path(f"/proc/{pid}/mountinfo").read_text()
            except OSError:
                continue
            for line in info.splitlines():
                f = line.split()
                if len(f) > 4 and f[4] == mnt and " - overlay " in line:
                    major, minor = (int(x) for x in f[2].split(":"))
                    sb = (major << 20) | minor
                    devs = {sb}
                    try:   # a non-directory of the lower layer: overlayfs's per-layer st_dev
                        st = os.stat(f"/proc/{pid}/root{mnt}/etc/passwd")
                        devs.add((os.major(st.st_dev) << 20) | os.minor(st.st_dev))
                    except OSError:
                        pass
                    return (sb, *sorted(devs - {sb}))
        time.sleep(0.02)
    return ()


def release(fifo: str, deadline: float) -> bool:
    """Open the sandbox's go-FIFO for writing once its reader is there; write a line."""
    while time.monotonic() < deadline:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:       # ENXIO: no reader yet
            time.sleep(0.02)
            continue
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        return True
    return False


# How a dropper runs what it fetched: the command as a script in /tmp, run by the shell
# (``sh /tmp/x.sh``), stdin not a terminal.  Written inside the sandbox (its /tmp is
# a tmpfs of the namespace), so nothing of the host is touched.
AS_TMP_SCRIPT = 'printf "%s\\n" "$1" > /tmp/atomic-payload.sh && exec "$0" /tmp/atomic-payload.sh'


def _await_fifo(fd: int, deadline: float) -> bool:
    """Wait for a line on the FIFO ``fd`` (opened read-write: never EOF) until ``deadline``."""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
        if r:
            os.read(fd, 64)
            return True
    return False


def run_one(a: dict[str, Any], cg: Path, root: Path, timeout: float,
            watch: "Watch | None" = None, provenance: str = "shell",
            prereqs: str | None = None) -> dict[str, Any]:
    """Run atomic ``a`` in a fresh sandbox; ``prereqs``: the script of its offline-safe
    dependencies, run first in the same sandbox outside the measured window."""
    base = Path(tempfile.mkdtemp(prefix="bastion-sbx-"))
    fifo = f"{base}.go"
    os.mkfifo(fifo, 0o600)
    pre_done, go2 = f"{base}.pre", f"{base}.go2"
    pre_fd = -1
    extra: dict[str, Any] = {}
    env = {"ATOMICS": str(root), "PATH": os.environ["PATH"], "SBX_GO": fifo}
    if watch is not None and watch.tier == "lsm":
        # the in-hook gate keys objects by (i_sb->s_dev, i_ino): with xino an overlayfs file
        # has the overlay's device and a layer-unique inode number in the kernel and in
        # stat alike; without it a lower file's st_dev is its layer's and its i_ino can
        # equal a new upper file's (s24: new files in the sandbox were refused as objects)
        env["SBX_OVL_OPTS"] = "xino=on"
    if prereqs:
        os.mkfifo(pre_done, 0o600)
        os.mkfifo(go2, 0o600)
        pre_fd = os.open(pre_done, os.O_RDWR | os.O_NONBLOCK)
        env.update({"SBX_PRE": prereqs, "SBX_PRE_DONE": pre_done, "SBX_GO2": go2})
    shell = "/bin/bash" if a["executor"] == "bash" else "/bin/sh"
    # "shell": the executor's ``-c``, as Invoke-AtomicTest runs it (an administrator's
    # provenance); "tmp-script": the same command as a script in /tmp (untrusted)
    run = [shell, "-c", a["command"]] if provenance == "shell" else \
        ["/bin/sh", "-c", AS_TMP_SCRIPT, shell, a["command"]]
    argv = ["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "join",
            "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--net",
            "--uts", "--ipc", "--kill-child", "/bin/sh", "-c", SETUP, "setup", str(base),
            *run]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        if watch is not None:
            watch.overlay_dev = overlay_dev(cg, f"{base}/m", t0 + 10)
            pid = next(iter((cg / "cgroup.procs").read_text().split()), "")
            watch.overlay_bits = overlay_ino_bits(pid, f"{base}/m") if watch.overlay_dev else 0
            extra["overlay_bits"] = f"{watch.overlay_bits:#x}"
            watch.enter_pipegate(watch.overlay_dev)
            if watch.prov is not None:
                watch.mark_sandbox(f"/proc/{pid}/root{base}/m", watch.overlay_dev)
                extra["gate_marks"] = watch.gate_marks
                if getattr(watch, "gate_probe", None):
                    extra["gate_probe"] = watch.gate_probe
                if watch.gate_problems:
                    extra["gate_problems"] = watch.gate_problems[:5]
            time.sleep(0.5)   # two refreshes of the sensitive set (every 0.2 s)
        release(fifo, t0 + 10)
        if prereqs:
            ok = _await_fifo(pre_fd, t0 + 10 + timeout)
            extra["prereq"] = "ran" if ok else "timeout"
            if watch is not None:
                time.sleep(0.5)   # the sensor drained: the prerequisites' events set apart
                ev_n, execs, alerts = watch.take()
                extra["prereq_events"] = ev_n
                extra["prereq_drops"] = watch.drops_since()
                extra["prereq_alerts"] = sorted({f"{x['rule']}({x['severity']})" for x in alerts})
            if ok:
                release(go2, time.monotonic() + 10)
            t0 = time.monotonic()   # the atomic's own timeout starts now
        stdout, _ = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        rc, out = p.returncode, stdout[-600:]
    except subprocess.TimeoutExpired:
        rc, out = "timeout", ""
        subprocess.run(["sh", "-c", f"for p in $(cat {cg}/cgroup.procs); do kill -9 $p; done"],
                       check=False)
        stdout, _ = p.communicate()
        out = (stdout or "")[-300:]
    finally:
        if watch is not None:
            watch.overlay_dev = ()
            watch.overlay_bits = 0
        os.unlink(fifo)
        if prereqs:
            os.close(pre_fd)
            os.unlink(pre_done)
            os.unlink(go2)
        time.sleep(0.3)
        try:
            base.rmdir()
        except OSError:
            shutil.rmtree(base, ignore_errors=True)
    return {"rc": rc, "seconds": round(time.monotonic() - t0, 2), "output": out, **extra}


def atomic_execs(execs: list[tuple[str, tuple[str, ...]]], provenance: str) -> list[str]:
    """The programs the atomic ran: the execs after the sandbox's ``env -i`` that starts
    it, less its executor shell (and, as a /tmp script, the shell that runs the script)
    and the namespace init's closing ``sleep``.  By position, not by name: an atomic's
    own ``ln``, ``mkdir`` or ``sh`` counts (a name list of the setup's tools hid them)."""
    start = min((i for i, (f, a) in enumerate(execs) if f.endswith("/env") and a[1:2] == ("-i",)),
                default=-1)
    if start < 0:
        return []
    own = execs[start + 1:]
    own = own[1:] if provenance == "shell" else own[2:]
    return [f for f, a in own if a != ("sleep", "0.51")]


SEV = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


def dump(args: argparse.Namespace, results: list[dict[str, Any]], errs: Any) -> None:
    """Write the run's JSON (atomically: a reader never sees half a file)."""
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps({"label": args.label, "provenance": args.provenance,
                               "tier": args.tier, "prereqs": args.prereqs,
                               "results": results, "rule_errors": errs}, indent=1))
    os.replace(tmp, args.out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--atomics", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--techniques", default="")
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--gate", action="store_true",
                    help="run the tier's provenance gate (issue 15) on the sandbox's must-stop "
                         "objects: compat, fanotify (opens refused); lsm, in the hook "
                         "(opens, creates, renames, unlinks, signals, firewall changes)")
    ap.add_argument("--tier", choices=("compat", "lsm"), default="compat",
                    help="the enforcement tier the agent would assemble here: compat (the "
                         "tracepoint sensor, the fanotify gate) or lsm (the hook sensor, the "
                         "in-hook gate; needs BPF LSM: the test VM, bench/vm_atomics.py)")
    ap.add_argument("--pipegate", action="store_true",
                    help="run the in-kernel pipe gate (s23-pipegate: a decoded payload piped "
                         "into a shell killed at exec) on the sandbox's decoders and shells")
    ap.add_argument("--prereqs", choices=("offline", "none"), default="offline",
                    help="run each atomic's offline-safe dependencies first, outside the "
                         "measured window (default; Invoke-AtomicTest -GetPrereqs), or none")
    ap.add_argument("--provenance", choices=("shell", "tmp-script"), default="shell",
                    help="run each atomic as its executor's -c (default) or as a script "
                         "dropped in /tmp (an untrusted provenance: measures blocking)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("atomics: needs root (namespaces, overlayfs, the BPF sensor)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from bastion.kernel import cgroup
    from bastion.kernel.bpffs import prepare_pseudo_filesystems

    prepare_pseudo_filesystems()
    # a SIGTERM unwinds like an exception, so the cgroup and sandbox dirs are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tech = {t.strip() for t in args.techniques.split(",") if t.strip()} or None
    tests = atomics(args.atomics.resolve(), tech)
    cg = cgroup.create(f"bastion-atomics-{uuid.uuid4().hex[:8]}")
    results = []
    try:
        w = Watch(cgroup.cgroup_id(cg), tier=args.tier)
        w.sensor.open()
        if args.gate:
            w.open_gate(deadline_s=max(600.0, 4 * args.timeout * len(tests)))
        if args.pipegate:
            w.open_pipegate(deadline_s=max(600.0, 4 * args.timeout * len(tests)))
        w.t.start()
        try:
            for a in tests:
                why = skip_reason(a["command"])
                row: dict[str, Any] = {k: a[k] for k in ("technique", "n", "name", "guid", "executor")}
                if why:
                    row["skipped"] = why
                    results.append(row)
                    continue
                pre = None
                if args.prereqs == "offline" and a["deps"]:
                    if a["prereq_unsafe"]:
                        row["prereq"] = f"skipped: {a['prereq_unsafe']}"
                    else:
                        pre = prereq_script(a)
                row.update(run_one(a, cg, args.atomics.resolve(), args.timeout, w, args.provenance,
                                   pre))
                time.sleep(0.5)
                events, execs, alerts = w.take()
                own = atomic_execs(execs, args.provenance)
                row["events"] = events
                row["drops"] = w.drops_since()
                row["execs"] = own[:30]
                row["alert_count"] = len(alerts)
                keep: dict[tuple[str, str], dict[str, Any]] = {}
                for x in alerts:   # one per (rule, action): a scan loop raises hundreds;
                    # the first of the rule's highest severity (s22: the first only hid
                    # which rule made an atomic's top severity)
                    got_ = keep.get((x["rule"], x["action"]))
                    if got_ is None or SEV.get(x["severity"], 0) > SEV.get(got_["severity"], 0):
                        keep[(x["rule"], x["action"])] = {
                            "rule": x["rule"], "severity": x["severity"], "action": x["action"],
                            "title": x["title"][:160]}
                row["alerts"] = list(keep.values())[:20]
                top = max((SEV.get(x["severity"], 0) for x in alerts), default=-1)
                row["detected"] = top >= SEV["medium"]
                row["top_severity"] = next((k for k, v in SEV.items() if v == top), "")
                # taken, not attempted: "kill-skipped: already exited" stopped nothing
                row["blocked"] = any(x["action"] in ("kill", "kill-tree", "quarantine", "deny")
                                     for x in alerts)
                results.append(row)
                dump(args, results, [])   # each row as it comes: a killed run keeps its rows
                print(f"{a['technique']}-{a['n']} rc={row['rc']} det={row['detected']}"
                      f"({row['top_severity']}) blk={row['blocked']} pre={row.get('prereq', '-')} "
                      f"{a['name'][:50]}", flush=True)
        finally:
            w.stop.set()
            w.t.join(5)
            if w.gate is not None:
                w.gate.close()
            if w.lsmgate is not None:
                w.lsmgate.close()
            if w.pipegate is not None:
                w.pipegate.close()
            w.sensor.close()
            errs = w.engine.errors
    finally:
        cgroup.remove(cg)
    dump(args, results, errs)
    ran = [r for r in results if "skipped" not in r]
    # ran to completion, or was stopped by a block (a killed atomic exits non-zero)
    ok = [r for r in ran if r["rc"] == 0 or r["blocked"]]
    print(f"bench atomics_ran {len(ran)} count")
    print(f"bench atomics_completed {len(ok)} count")
    print(f"bench atomics_detected_medium_plus {sum(r['detected'] for r in ok)} count")
    print(f"bench atomics_blocked {sum(r['blocked'] for r in ran)} count")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
