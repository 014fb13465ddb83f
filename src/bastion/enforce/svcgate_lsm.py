"""Control sockets refused to an untrusted tree on the lsm tier (issue 15; s15-svc).

A security tool is stopped *for* a tree by a clean daemon: ``systemctl stop auditd``
asks PID 1 over ``/run/systemd/private`` and PID 1 sends the signal (the in-hook
gate's ``task_kill`` check sees PID 1, not the tree); ``docker run -v /:/h`` asks a
root daemon for anything.  ``lsm_svcgate.bpf.o`` refuses, in
``unix_stream_connect``, the connect of a task whose tree has untrusted provenance
(the event sensor's ``prov`` map, shared at load as the provenance gate shares it)
to a socket whose bound inode is entered here.  Trust rules are the provenance
gate's: no entry (a clean tree, an administrator's ``sh -c``) is allowed unseen; an
administrator's interactive session with only local reasons is allowed and
reported (``audit``); every other tainted tree is refused, with ``EPERM`` from
``connect(2)``; in dry run the refusal is reported (would-deny) and the connect
allowed.

What this does not cover: a root tree that finds the private socket refused falls
back to the D-Bus system bus (``systemctl`` does), whose method calls this hook
cannot tell apart (left open, docs/threat-model.md); the exec-time rule
(``behavior.disable_security_tools``) stops those trees after the fact.

Each record is a ``hips`` record (mechanism ``lsm-prov``, op ``connect``, rule id =
the socket's kind) turned into a ``bastion.provenance.gate`` finding.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
import struct
from typing import Callable, Final, Mapping

from bastion import abi
from bastion.detect.engine import Finding
from bastion.enforce.provgate import GATE_RULE
from bastion.enforce.provgate_lsm import AgentGatePart, GateUser, shared_prov_maps
from bastion.errors import BastionError, KernelError, Location
from bastion.events import HipsEvent
from bastion.kernel.clock import deadline_ns
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import LoadedObject, ObjectSpec
from bastion.paths import bpf_object
from bastion.policy.compile import kernel_dev
from bastion.sensors.provenance import ProvenanceMap, reason_names

log = logging.getLogger(__name__)

OBJECT: Final = "lsm_svcgate.bpf.o"
MECHANISM: Final = "lsm-prov"
_U32: Final = struct.Struct("<I")


class SocketKind(enum.IntEnum):
    """The rule id of a record: which daemon the refused connect would have asked."""

    SYSTEMD = 1
    DOCKER = 2
    CONTAINERD = 3
    PODMAN = 4
    TMUX = 5        # a tmux server, found by its executable (s18-launder)
    SCREEN = 6      # a screen session's server, likewise
    SWAPPED = 7     # compat only: a connect returned 0 on a descriptor swapped during the
                    # call (the server unknown; svcgate_compat.bpf.c, s19-gatefix)


# the daemons' API sockets (an absent one is skipped, named in apply()'s problems)
DEFAULT_SOCKETS: Final[Mapping[str, SocketKind]] = {
    "/run/systemd/private": SocketKind.SYSTEMD,
    "/run/docker.sock": SocketKind.DOCKER,
    "/run/containerd/containerd.sock": SocketKind.CONTAINERD,
    "/run/podman/podman.sock": SocketKind.PODMAN,
}
_WHAT: Final = {SocketKind.SYSTEMD: "service manager (systemd's private socket)",
                SocketKind.DOCKER: "docker API", SocketKind.CONTAINERD: "containerd API",
                SocketKind.PODMAN: "podman API", SocketKind.TMUX: "tmux server",
                SocketKind.SCREEN: "screen session",
                SocketKind.SWAPPED: "unknown server (a descriptor swapped during the connect)"}
# servers found by the executable listening (any socket path, bound at any time): the
# installed files of these names in the trust directories (detect/behavior/trust.py)
DEFAULT_SERVERS: Final[Mapping[str, SocketKind]] = {"tmux": SocketKind.TMUX,
                                                    "screen": SocketKind.SCREEN}
_SERVERS: Final = frozenset({SocketKind.TMUX, SocketKind.SCREEN})


def running_executables(names: frozenset[str]) -> frozenset[tuple[int, int]]:
    """(kernel dev, ino) of the executables of live processes whose executable's name
    (an unlinked file's too: ``/usr/bin/tmux (deleted)``) is one of ``names``; read
    from /proc (the executable's stat follows the link to the inode it runs)."""
    out: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return frozenset()
    for pid in pids:
        try:
            target = os.readlink(f"/proc/{pid}/exe")
            if target.removesuffix(" (deleted)").rsplit("/", 1)[-1] not in names:
                continue
            st = os.stat(f"/proc/{pid}/exe")
        except OSError:
            continue            # gone, a kernel thread, not ours to read
        out.add((kernel_dev(st.st_dev), st.st_ino))
    return frozenset(out)


def fill_servers(m: Map, entered: Mapping[bytes, str], servers: Mapping[str, SocketKind],
                 idents: Callable[[str], frozenset[tuple[int, int]]] | None = None,
                 running: Callable[[frozenset[str]], frozenset[tuple[int, int]]]
                 | None = None) -> tuple[dict[bytes, str], list[str]]:
    """Enter the servers' executables into ``m`` (an object's ``svcgate_servers``,
    bpf/lib/svcgate.h: the lsm gate's and the compat gate's), replacing ``entered``
    (key -> name, what was entered before): each name's installed files
    (``idents(name)``: (kernel dev, ino); default the root-only files of that name in
    the trust directories).  An inode entered before and no longer installed (an
    upgrade replaced the file) stays entered while a live process still runs it
    (``running(names)``: the executables of the processes whose executable has one of
    those names, default a /proc scan): the servers started before the upgrade keep
    their gate (s18 review item 7).  Returns what is entered now and the names with no
    file entered."""
    if idents is None:
        from bastion.detect.behavior.trust import ExeTrust
        idents = ExeTrust().idents
    new: dict[bytes, tuple[str, SocketKind]] = {}
    problems: list[str] = []
    for name, kind in servers.items():
        got = idents(name)
        if not got:
            problems.append(f"{name}: no installed file: not entered")
        for dev, ino in got:
            new[bytes(abi.InodeKey(ino=ino, dev=dev))] = (name, kind)
    gone = {k: n for k, n in entered.items() if k not in new and n in servers}
    if gone:
        live = {bytes(abi.InodeKey(ino=ino, dev=dev))
                for dev, ino in (running or running_executables)(frozenset(gone.values()))}
        for k, n in gone.items():
            if k in live:
                new[k] = (n, servers[n])
    for k, (_, kind) in new.items():
        m.update(k, _U32.pack(int(kind)))
    for k in entered.keys() - new.keys():
        m.delete(k)
    return {k: n for k, (n, _) in new.items()}, problems


class LsmSocketGate(GateUser):
    """Load (sharing ``prov``), enter the sockets, drain the refusals.

    Typical use::

        gate = LsmSocketGate(sensor.provenance(), cgroup_id=cgid, deadline_s=60)
        gate.open()
        gate.apply(DEFAULT_SOCKETS)
        for ev in gate.poll(0.5): gate.finding(ev)
        gate.close()
    """

    name: Final = "svcgate"
    mechanism: str = MECHANISM
    label = "the socket gate"
    object_name: str = OBJECT

    def __init__(self, prov: ProvenanceMap, *, cgroup_id: int = 0,
                 deadline_s: float | None = None, self_tgid: int = 0,
                 dry_run: bool = False) -> None:
        if not isinstance(prov.prov, Map):
            raise KernelError("the socket gate needs the sensor's kernel map `prov`",
                              errno=errno.EINVAL, location=Location(self.object_name))
        self.prov = prov
        self.cgroup_id = cgroup_id
        self.deadline_ns = deadline_ns(deadline_s)
        self.self_tgid = self_tgid
        self.dry_run = dry_run
        self._lo: LoadedObject | None = None
        self._socks: dict[bytes, str] = {}
        self._servers: dict[bytes, str] = {}
        self.denies = self.dry_runs = self.failed = self.audits = 0

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=bpf_object(self.object_name),
            rodata={"cfg_cgroup_id": self.cgroup_id, "cfg_deadline_ns": self.deadline_ns,
                    "cfg_self_tgid": self.self_tgid},
            max_entries={"events": abi.SMALL_RINGBUF_BYTES},
            reuse_maps=shared_prov_maps(self.prov, "the socket gate", Location(self.object_name)))

    def open(self) -> None:
        if self._lo is not None and not self._lo.closed:
            raise KernelError("the socket gate is already open", errno=errno.EALREADY,
                              location=Location(self.object_name))
        self._lo = lo = LoadedObject.load(self.spec())
        try:
            self.set_dry_run(self.dry_run)
        except BaseException:
            lo.close()
            raise
        log.info("control-socket gate: %d programs attached (scope cgroup %d)",
                 len(lo.links), self.cgroup_id)


    def set_dry_run(self, dry: bool) -> None:
        self.dry_run = dry
        self._map("svcgate_cfg").update(_U32.pack(0), _U32.pack(1 if dry else 0))

    def apply(self, sockets: Mapping[str, SocketKind]) -> list[str]:
        """Enter the sockets by the inode their path is bound to (replacing the set);
        returns what was not entered (absent, or not a socket)."""
        problems: list[str] = []
        new: dict[bytes, tuple[str, SocketKind]] = {}
        for path, kind in sockets.items():
            try:
                st = os.stat(path)
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror}: not entered")
                continue
            if not stat.S_ISSOCK(st.st_mode):
                problems.append(f"{path}: not a socket: not entered")
                continue
            new[bytes(abi.InodeKey(ino=st.st_ino, dev=kernel_dev(st.st_dev)))] = (path, kind)
        m = self._map("svcgate_socks")
        for k, (_, kind) in new.items():
            m.update(k, _U32.pack(int(kind)))
        for k in self._socks.keys() - new.keys():
            m.delete(k)
        self._socks = {k: p for k, (p, _) in new.items()}
        for p in problems:
            log.info("control-socket gate: %s", p)
        return problems

    def apply_servers(self, servers: Mapping[str, SocketKind],
                      idents: Callable[[str], frozenset[tuple[int, int]]] | None = None,
                      running: Callable[[frozenset[str]], frozenset[tuple[int, int]]]
                      | None = None) -> list[str]:
        """Enter the servers' executables (replacing the set): each name's installed
        files (``idents(name)``: (kernel dev, ino); default the root-only files of that
        name in the trust directories).  An inode entered before and no longer installed
        (an upgrade replaced the file) stays entered while a live process still runs it
        (``running(names)``: the executables of the processes whose executable has one of
        those names, default a /proc scan): the servers started before the upgrade keep
        their gate (s18 review item 7).  Returns the names with no file entered."""
        self._servers, problems = fill_servers(self._map("svcgate_servers"), self._servers,
                                               servers, idents, running)
        return problems

    @property
    def entered(self) -> int:
        """How many sockets are entered now."""
        return len(self._socks)

    def finding(self, ev: HipsEvent) -> Finding | None:
        """A refused (or an admin session's allowed) connect as the gate's finding."""
        if ev.mechanism != MECHANISM or ev.op != "connect":
            return None
        try:
            kind = SocketKind(ev.rule_id)
        except ValueError:
            return None
        reasons = reason_names(ev.subject)
        dry = ev.action == "deny" and not ev.enforced
        verb = ("would be refused (dry run: allowed)" if dry else "refused"
                if ev.action == "deny" else "allowed (administrator's interactive session)")
        what = _WHAT[kind]
        if kind in _SERVERS:
            prevented = f"a command run or typed for the tree by the {what} ({ev.path})"
            attack: tuple[str, ...] = ("T1059.004",)
        else:
            prevented = (f"a request to the {what} ({ev.path}): a security tool's shutdown "
                         f"or a root action done for the tree")
            attack = ("T1562.001", "T1610") if kind != SocketKind.SYSTEMD else ("T1562.001",)
        return Finding(
            rule=GATE_RULE, severity="critical" if ev.action == "deny" else "high", dry_run=dry,
            attack=attack,
            action="would-deny" if dry else ev.action, event=ev, pid=ev.proc.pid,
            title=f"Connect to the {what} {verb}: {ev.path} "
                  f"[untrusted provenance: {', '.join(reasons)}]",
            evidence={"prevented": prevented,
                      "provenance": reasons, "operation": "connect", "object": ev.path,
                      "class": "control-socket", "socket": kind.name.lower()},
            enforced_by=MECHANISM)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update(denies=self.denies, dry_runs=self.dry_runs, failed=self.failed,
                   audits=self.audits, sockets=len(self._socks), servers=len(self._servers),
                   prov_gate_null=self.prov.gate_null_refusals())
        return out




class AgentSocketGate(AgentGatePart):
    """The socket gate as a part of the agent (:mod:`bastion.assembly`, lsm tier): opened
    once the event sensor is, the default sockets entered (re-entered at the maintenance
    tick: a restarted dockerd binds a new inode); its records are an enforcement source.
    When it cannot load the agent says so (``bastion.respond.svcgate_unavailable``)."""

    name: Final = "svcgate"

    def __init__(self, maps: Callable[[], ProvenanceMap], *, self_tgid: int,
                 deadline_s: float | None, scope_cgroup_id: int = 0, dry_run: bool = False,
                 sockets: Mapping[str, SocketKind] = DEFAULT_SOCKETS,
                 servers: Mapping[str, SocketKind] = DEFAULT_SERVERS,
                 gate_type: type[LsmSocketGate] = LsmSocketGate) -> None:
        self._maps = maps
        self.gate_type = gate_type   # the compat tier's: svcgate_compat.CompatSocketGate
        self.self_tgid = self_tgid
        self.deadline_s = deadline_s
        self.scope_cgroup_id = scope_cgroup_id
        self.dry_run = dry_run
        self.sockets = dict(sockets)
        self.servers = dict(servers)
        self.gate: LsmSocketGate | None = None
        self.unentered: list[str] = []

    def open(self) -> None:
        gate = self.gate_type(self._maps(), cgroup_id=self.scope_cgroup_id,
                              deadline_s=self.deadline_s, self_tgid=self.self_tgid,
                              dry_run=self.dry_run)
        gate.open()
        try:
            self.unentered = gate.apply(self.sockets) + gate.apply_servers(self.servers)
        except BaseException:
            gate.close()
            raise
        self.gate = gate

    def refresh(self) -> Finding | None:
        """Re-enter the sockets (the maintenance tick: a restarted daemon binds a new
        inode).  A pass that fails keeps the entries written so far (nothing is dropped
        before every new one is in) and is returned as a high finding to alert: a
        restarted dockerd's new socket would otherwise be reachable unseen."""
        gate = self.gate
        if gate is None:
            return None
        try:
            self.unentered = gate.apply(self.sockets) + gate.apply_servers(self.servers)
        except (BastionError, OSError) as exc:
            log.warning("control-socket gate: sockets not re-entered: %s", exc)
            return Finding(
                rule=GATE_RULE + ".sockets.refresh", severity="high", attack=("T1562.001",),
                action="alert", event=None, pid=os.getpid(),
                title=f"Control-socket gate sockets not re-entered ({exc}); the previous "
                      f"{gate.entered} sockets stay entered, a socket bound since "
                      f"(a restarted daemon's) is not gated",
                evidence={"error": str(exc), "sockets": gate.entered})
        return None


__all__ = ["LsmSocketGate", "AgentSocketGate", "running_executables", "fill_servers", "SocketKind", "DEFAULT_SOCKETS", "DEFAULT_SERVERS",
           "OBJECT"]
