"""Stop before the harm on the lsm tier (issue 15): the provenance decision in the hook.

``lsm_provgate.bpf.o`` refuses, in the LSM hooks, the must-stop acts of a process
whose tree has untrusted provenance (the event sensor's ``prov`` map, shared with
this object at load: one map, kept by the sensor's exec/fork/exit programs):

* ``persistence`` (cron, systemd units, profiles, sudoers, PAM, ld.so.preload, rc
  scripts, udev/module configs): a write open, a truncate, a chmod/chown, and every
  name change: creating a file in a must-stop directory or at a must-stop name that
  does not exist yet (a first ``/etc/ld.so.preload``), a hard link into one, a rename
  into, out of or over one, an unlink;
* ``credential`` (shadow, keys, cloud and kube credentials): any open, a hard link
  to one (``ln /etc/shadow /tmp/x``), and every name change as above;
* ``log`` (``/var/log``, shell histories): log wiping: an overwriting write open
  (without ``O_APPEND``), a truncate, an unlink, a rename away or over, a chmod;
* ``security-tool`` (auditd, syslog, journald, the agent and its guardian, by
  tgid and start time): a harmful signal.
* ``security-config`` (s23: firewall and logging configs, :data:`muststop.DEFAULT_SECURITY_CONFIG`):
  as persistence;
* ``firewall`` (s23, no object): a netfilter change -- a ``NETLINK_NETFILTER`` batch
  (``netlink_send``: nft, iptables-nft, ufw, firewalld; a listing passes) or a legacy
  table replace (``socket_setsockopt`` ``*_SO_SET_REPLACE``/``ADD_COUNTERS``, ebtables').

An object opened in an allowed way is not rewritten through its open file either
(s15): ``fcntl(F_SETFL)`` clearing ``O_APPEND`` on a log, ``pwritev2(RWF_NOAPPEND)``,
an io_uring or aio write and ``fallocate`` on a log, a shared writable mapping
(``mmap``, ``mprotect``) and ``chattr`` (``FS_IOC_SETFLAGS``, ``FS_IOC_FSSETXATTR``)
of any object.  The directories above the objects (``pgate_anc``) are not renamed
(``mv /etc/systemd /etc/s.old`` and a new tree) nor mounted on or unmounted; a
directory made in a tree since the objects were entered is covered through its
parent, and the agent re-enters the objects on its maintenance tick
(:meth:`AgentLsmGate.refresh`), so a ``~/.ssh`` or a new home made later is
entered within a minute.

The objects are the fanotify gate's list (:mod:`bastion.enforce.muststop`); the
trust rules are its rules (:mod:`bastion.enforce.provgate`): an untainted process
is allowed unseen; an administrator's interactive session with only local
reasons is allowed and reported (``audit``); every other tainted tree is refused,
trusted administrator tools run by it included.  A class in dry run is decided and
reported (would-deny) and allowed: the kernel reads the flag from ``pgate_cfg``.

Every refusal is a ``hips`` record (mechanism ``lsm-prov``, rule id = the class,
subject = the actor's reasons) turned into the ``bastion.provenance.gate`` finding.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Callable, Final, Iterable, Protocol, Sequence

from bastion import abi
from bastion.detect.engine import Finding
from bastion.enforce.muststop import (
    DEFAULT_SECURITY_TOOLS, KINDS, STRICTNESS, GateObject, Kind, default_names,
    default_objects, expand, open_object_at, redirected,
)
from bastion.enforce.provgate import GATE_RULE
from bastion.errors import BastionError, ConfigError, KernelError, Location
from bastion.events import HipsEvent, decode
from bastion.hostns import host_mnt_ns
from bastion.kernel.btf import lsm_hooks_absent, setattr_has_idmap
from bastion.kernel.clock import deadline_ns
from bastion.kernel.fanotify import DEFAULT_MAX_DIRS
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object
from bastion.policy.compile import kernel_dev
from bastion.procstat import read_stat
from bastion.sensors.provenance import ProvenanceMap, reason_names

log = logging.getLogger(__name__)

OBJECT: Final = "lsm_provgate.bpf.o"
MECHANISM: Final = "lsm-prov"
_CLASS_OF: Final[dict[str, abi.PgateClass]] = {
    "persistence": abi.PgateClass.PERSISTENCE, "credential": abi.PgateClass.CREDENTIAL,
    "log": abi.PgateClass.LOG, "security-tool": abi.PgateClass.SECURITY_TOOL,
    "security-config": abi.PgateClass.SECURITY_CONFIG, "firewall": abi.PgateClass.FIREWALL}
PGATE_MAX_NAMES: Final = 4096   # pgate_names' max_entries (bpf/lsm_provgate.bpf.c)
PGATE_MAX_ANCESTORS: Final = 4096   # pgate_anc's max_entries
HOW_NAMES: Final[dict[int, str]] = {
    abi.PgateHow.FCNTL: "fcntl clearing O_APPEND", abi.PgateHow.MMAP: "shared writable mapping",
    abi.PgateHow.IOCTL: "chattr (file attribute ioctl)", abi.PgateHow.FALLOCATE: "fallocate",
    abi.PgateHow.NOAPPEND: "write ignoring O_APPEND (pwritev2 RWF_NOAPPEND, io_uring, aio)",
    abi.PgateHow.ANCESTOR: "rename of a directory above it",
    abi.PgateHow.MOUNT: "mount or unmount on it or above it",
    abi.PgateHow.NFT_BATCH: "nftables ruleset change (netfilter netlink batch)",
    abi.PgateHow.SOCKOPT: "legacy table replace (setsockopt *_SO_SET_*)",
    abi.PgateHow.NFNL_WRITE: "ipset change (netfilter netlink)",
    abi.PgateHow.ROUTE: "route, policy rule or nexthop change (rtnetlink)",
    abi.PgateHow.ROUTE_IOCTL: "legacy route ioctl (SIOCADDRT/SIOCDELRT)",
    abi.PgateHow.NETDEV: "network configuration change (rtnetlink: a link set down, deleted "
                         "or made, an address, a neighbour entry, traffic control, a namespace "
                         "id; or an IPsec policy or state, xfrm)",
    abi.PgateHow.NETDEV_IOCTL: "legacy interface ioctl (SIOCSIFFLAGS, SIOCSIFADDR, "
                               "SIOCDIFADDR, SIOCSARP, SIOCETHTOOL...: ifconfig, arp, brctl, "
                               "vconfig, ethtool)"}
_STRICT_CLS: Final[dict[int, int]] = {int(c): STRICTNESS.get(k, 0) for k, c in _CLASS_OF.items()}
CLASS_NAMES: Final = {c: n for n, c in _CLASS_OF.items()}
#: hooks only some kernels have; the program attached there is skipped elsewhere
COMPAT_HOOKS: Final = frozenset({"file_ioctl_compat"})
_U32: Final = struct.Struct("<I")
_PREVENTED: Final = {
    abi.PgateClass.PERSISTENCE: "persistence write", abi.PgateClass.CREDENTIAL:
    "credential-store access", abi.PgateClass.LOG: "log wiping",
    abi.PgateClass.SECURITY_TOOL: "security-tool shutdown",
    abi.PgateClass.SECURITY_CONFIG: "security-configuration change",
    abi.PgateClass.FIREWALL: "security-tool shutdown (firewall)"}


def find_tools(names: Iterable[str] = DEFAULT_SECURITY_TOOLS) -> list[int]:
    """The live processes whose executable's name is one of ``names``."""
    want = frozenset(names)
    out: list[int] = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{d}/exe")
        except OSError:
            continue
        if os.path.basename(exe.removesuffix(" (deleted)")) in want:
            out.append(int(d))
    return sorted(out)


def shared_prov_maps(prov: ProvenanceMap, who: str, location: Location) -> dict[str, int]:
    """The event sensor's provenance maps a gate object shares at load
    (``ObjectSpec.reuse_maps``): ``prov`` and its failure maps, so a process the kernel
    could not give an entry is refused as untracked there too."""
    out: dict[str, int] = {}
    for name, m in (("prov", prov.prov), ("prov_lost", prov.lost),
                    ("prov_errors", prov.errors_map)):
        if not isinstance(m, Map):
            raise KernelError(f"the event sensor has no kernel map {name}: {who} would "
                              f"trust what it cannot see", location=location)
        out[name] = m.fd
    return out



def _host_netns() -> int:
    """The host's network namespace inode (pid 1's): a firewall change is refused only
    there (s23 review 5).  0 when it cannot be read: every namespace is then judged as
    the host's (fail closed), and said."""
    try:
        return os.stat("/proc/1/ns/net").st_ino
    except OSError as e:
        log.warning("the in-hook gate: /proc/1/ns/net: %s: firewall changes refused in "
                    "every network namespace", e.strerror)
        return 0

class GateUser(LoaderUser):
    """A gate object's decisions, drained from its ring and counted: refused (``denies``,
    the kernel acted), would-be refusals of a dry run (``dry_runs``), blocks the kernel
    tried and could not take (``failed``: a kill whose signal failed, ``ret`` != 0 -- not
    a dry run, s20 review 6) and audited acts."""

    #: The record action that means the gate stopped the act (a kill on the compat
    #: socket gate, a refusal in the hook elsewhere).
    blocking_action: str = "deny"
    #: The gate as errors name it, and its object (the errors' location).
    label: str = "the gate"
    object_name: str = ""
    denies: int = 0
    dry_runs: int = 0
    failed: int = 0
    audits: int = 0

    def close(self) -> None:
        if self._lo is not None:
            self._lo.close()

    @property
    def is_open(self) -> bool:
        return self._lo is not None and not self._lo.closed

    def _map(self, name: str) -> Map:
        if self._lo is None or self._lo.closed:
            raise KernelError(f"{self.label} is not open", errno=errno.ENOENT,
                              location=Location(self.object_name))
        return self._lo.map(name)

    def poll(self, timeout_s: float = 0.0) -> list[HipsEvent]:
        lo = self._lo
        if lo is None or lo.closed:
            return []
        lo.wait(timeout_s)
        out = [ev for ev in lo.drain(decode) if isinstance(ev, HipsEvent)]
        for ev in out:
            if ev.action == self.blocking_action and ev.enforced:
                self.denies += 1
            elif ev.action == self.blocking_action and ev.ret != 0:
                self.failed += 1
            elif ev.action == self.blocking_action:
                self.dry_runs += 1
            else:
                self.audits += 1
        return out


class LsmProvenanceGate(GateUser):
    """The in-hook gate: load (sharing ``prov``), fill the objects, drain the refusals.

    Typical use::

        gate = LsmProvenanceGate(sensor.provenance(), cgroup_id=cgid, deadline_s=60)
        gate.open()
        gate.apply(default_objects(kinds=KINDS), default_names())
        gate.set_tools(find_tools() + [agent_pid])
        for ev in gate.poll(0.5): gate.finding(ev)
        gate.close()
    """

    label = "the in-hook gate"
    object_name = OBJECT

    name: Final = "lsmgate"
    mechanism: Final = MECHANISM

    def __init__(self, prov: ProvenanceMap, *, cgroup_id: int = 0,
                 deadline_s: float | None = None, self_tgid: int = 0,
                 dry_run: bool | Iterable[str] = False,
                 max_dirs: int = DEFAULT_MAX_DIRS, per_object_dirs: int = 1_000,
                 max_names: int = PGATE_MAX_NAMES) -> None:
        """``dry_run``: True (every class) or the class names whose refusals are only
        reported (would-deny), the act allowed."""
        if not isinstance(prov.prov, Map):
            raise KernelError("the in-hook gate needs the sensor's kernel map `prov`",
                              errno=errno.EINVAL, location=Location(OBJECT))
        self.prov = prov
        self.cgroup_id = cgroup_id
        self.deadline_ns = deadline_ns(deadline_s)
        self.self_tgid = self_tgid
        self.max_dirs = max_dirs
        self.per_object_dirs = min(per_object_dirs, max_dirs)
        self.max_names = max_names
        self.over_budget: list[str] = []   # objects whose tree was entered only in part
        self.dry_classes = self._classes(dry_run)
        self._lo: LoadedObject | None = None
        self._objs: dict[bytes, bytes] = {}
        self._names: dict[bytes, bytes] = {}
        self._anc: dict[bytes, bytes] = {}
        self._tools: dict[bytes, bytes] = {}
        self.denies = self.dry_runs = self.failed = self.audits = 0

    @staticmethod
    def _classes(dry_run: bool | Iterable[str]) -> frozenset[abi.PgateClass]:
        if dry_run is True:
            return frozenset(abi.PgateClass)
        if dry_run is False:
            return frozenset()
        out = set()
        for n in dry_run:
            if n not in _CLASS_OF:
                raise ConfigError(f"provenance gate class {n!r} is not one of "
                                  f"{', '.join(_CLASS_OF)}", location=Location("dry_run"))
            out.add(_CLASS_OF[n])
        return frozenset(out)

    # ---- lifecycle -------------------------------------------------------------------

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=bpf_object(OBJECT),
            rodata={"cfg_cgroup_id": self.cgroup_id, "cfg_deadline_ns": self.deadline_ns,
                    "cfg_self_tgid": self.self_tgid,
                    "cfg_setattr_idmap": int(setattr_has_idmap()),
                    "cfg_host_netns": _host_netns()},
            max_entries={"events": abi.SMALL_RINGBUF_BYTES},
            reuse_maps=shared_prov_maps(self.prov, "the in-hook gate", Location(OBJECT)),
            # s25: 32-bit ioctls are judged at file_ioctl_compat where the kernel has it
            # (6.8 and the stable kernels it was taken back to); without it they reach
            # file_ioctl as before
            skip=frozenset(f"pgate_{h}" for h in lsm_hooks_absent(COMPAT_HOOKS)))

    def open(self) -> None:
        if self._lo is not None and not self._lo.closed:
            raise KernelError("the in-hook gate is already open", errno=errno.EALREADY,
                              location=Location(OBJECT))
        self._lo = lo = LoadedObject.load(self.spec())
        try:
            self.set_dry_run(self.dry_classes)
        except BaseException:
            lo.close()
            raise
        log.info("in-hook provenance gate: %d programs attached (scope cgroup %d)",
                 len(lo.links), self.cgroup_id)


    # ---- configuration ----------------------------------------------------------------

    def set_dry_run(self, classes: bool | Iterable[str] | frozenset[abi.PgateClass]) -> None:
        """The classes whose refusals are reported, not enforced (the kernel's flag)."""
        if isinstance(classes, frozenset) and all(isinstance(c, abi.PgateClass) for c in classes):
            cls: frozenset[abi.PgateClass] = classes
        else:
            cls = self._classes(classes)  # type: ignore[arg-type]
        self.dry_classes = cls
        mask = 0
        for c in cls:
            mask |= 1 << int(c)
        self._map("pgate_cfg").update(_U32.pack(0), bytes(abi.PgateCfg(
            dry_run=mask, host_mnt_ns=host_mnt_ns(OBJECT))))

    def apply(self, objects: Sequence[GateObject],
              names: Sequence[tuple[str, str, Kind]] = (), *, root: str = "") -> list[str]:
        """Enter the objects (files; directories with every subdirectory, their children
        objects) and the must-stop names, and the directories above them (not to be
        renamed or mounted on), replacing the previous set; returns what was not
        entered (paths that do not exist, names too long).

        ``root`` (s24, as :meth:`ProvenanceGate.apply`): the objects' and the names'
        directories' paths are as seen inside that directory (another mount namespace's
        view, ``/proc/PID/root/...``: ``/etc/cron.d``), walked inside it (an absolute link
        stays in it); the directories above them stop at it.

        Incremental: only what changed is written, new entries before the old ones go;
        an update that fails part way raises with every entry of the previous set still
        in (the ones written meanwhile too): nothing is dropped on a failure."""
        entries, problems, over = expand(objects, max_dirs=self.max_dirs,
                                         per_object_dirs=self.per_object_dirs, root=root)
        self.over_budget = over
        problems.extend(over)
        objs: dict[bytes, bytes] = {}
        for e in entries:
            if e.kind == "profile-dir":
                continue   # by name (default_names): the profiles in it
            objs[bytes(abi.InodeKey(ino=e.key[1], dev=e.key[0]))] = bytes(abi.PgateObj(
                cls=_CLASS_OF[e.kind], flags=abi.PGATE_F_DIR if e.is_dir else 0))
        nkeys: dict[bytes, bytes] = {}
        anc_of: dict[str, str] = {}      # directory above an object -> strictest kind below
        for e in entries:
            _above(anc_of, e.path, "persistence" if e.kind == "profile-dir" else e.kind,
                   include_self=e.kind == "profile-dir", root=root)
        for d, n, kind in names:
            if kind not in _CLASS_OF:
                raise ConfigError(f"provenance name kind {kind!r} is not one of "
                                  f"{', '.join(_CLASS_OF)}", location=Location(os.path.join(d, n)))
            raw = n.encode()
            if not raw or b"/" in raw or len(raw) >= abi.PGATE_NAME_LEN:
                problems.append(f"{os.path.join(d, n)}: name not entered (empty, a path, or "
                                f"{abi.PGATE_NAME_LEN} bytes or longer)")
                continue
            if root:
                try:   # walked inside root, no user's link followed
                    fd, resolved = open_object_at(d, root)
                except OSError as exc:
                    problems.append(f"{d}: {exc.strerror}: {n} not entered")
                    continue
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                d = root + resolved
            else:
                why = redirected(d)
                if why is not None:
                    problems.append(f"{os.path.join(d, n)}: {why}: not entered")
                    continue
                try:
                    st = os.stat(d)
                except OSError as exc:
                    problems.append(f"{d}: {exc.strerror}: {n} not entered")
                    continue
            nk = bytes(abi.PgateName(ino=st.st_ino, dev=kernel_dev(st.st_dev), name=raw))
            prev = nkeys.get(nk)
            if prev is not None and _STRICT_CLS[abi.PgateObj.from_buffer_copy(prev).cls] >= \
                    _STRICT_CLS[_CLASS_OF[kind]]:
                continue   # one name reached twice: the strictest class stays
            if nk not in nkeys and len(nkeys) >= self.max_names:
                problems.append(f"{os.path.join(d, n)}: more than {self.max_names} names: "
                                f"not entered")
                continue
            nkeys[nk] = bytes(abi.PgateObj(cls=_CLASS_OF[kind], flags=0))
            _above(anc_of, d, kind, include_self=True, root=root)
        anc = self._ancestors(anc_of, objs, problems)
        _sync(self._map("pgate_objs"), self._objs, objs)
        _sync(self._map("pgate_names"), self._names, nkeys)
        _sync(self._map("pgate_anc"), self._anc, anc)
        for p in problems:
            log.info("in-hook provenance gate: %s", p)
        return problems

    def _ancestors(self, anc_of: dict[str, str], objs: dict[bytes, bytes],
                   problems: list[str]) -> dict[bytes, bytes]:
        """The ``pgate_anc`` entries: each directory above an object by its own inode and
        each root link on its path (``/lib`` of ``/lib/systemd/system``) by the link's,
        less the objects themselves (their own rules refuse the rename); the nearest the
        objects first when there are more than the map takes."""
        out: dict[bytes, bytes] = {}
        for path in sorted(anc_of, key=lambda p: (-p.count("/"), p)):
            kind = anc_of[path]
            try:
                st = os.lstat(path)
            except OSError:
                continue   # gone meanwhile: the next pass sees it
            k = _key(st)
            if k in objs:
                continue
            prev = out.get(k)
            if prev is not None and _STRICT_CLS[abi.PgateObj.from_buffer_copy(prev).cls] >= \
                    _STRICT_CLS[_CLASS_OF[kind]]:
                continue
            if prev is None and len(out) >= PGATE_MAX_ANCESTORS:
                problems.append(f"{path}: more than {PGATE_MAX_ANCESTORS} directories above "
                                f"objects: not entered (its rename is not refused)")
                continue
            out[k] = bytes(abi.PgateObj(cls=_CLASS_OF[kind], flags=abi.PGATE_F_DIR))
        return out

    def set_tools(self, tgids: Iterable[int]) -> list[int]:
        """The security-tool processes (replacing the set); returns the tgids entered
        (a process gone meanwhile is skipped)."""
        vals: dict[bytes, bytes] = {}
        done: list[int] = []
        for t in tgids:
            try:
                ticks = read_stat(t).start_ticks
            except (OSError, ValueError):
                continue
            vals[_U32.pack(t)] = bytes(abi.PgateTool(start_ticks=ticks,
                                                     cls=abi.PgateClass.SECURITY_TOOL))
            done.append(t)
        _sync(self._map("pgate_tools"), self._tools, vals)
        return done

    # ---- decisions ----------------------------------------------------------------------

    def finding(self, ev: HipsEvent) -> Finding | None:
        """A refusal (or an admin session's allowed act) as the gate's finding."""
        if ev.mechanism != MECHANISM:
            return None
        try:
            cls = abi.PgateClass(ev.rule_id)
        except ValueError:
            return None
        reasons = reason_names(ev.subject)
        dry = ev.action == "deny" and not ev.enforced
        verb = ("would be refused (dry run: allowed)" if dry else "refused" if ev.action == "deny"
                else "allowed (administrator's interactive session)")
        op_name = ev.op
        if cls == abi.PgateClass.SECURITY_TOOL:
            obj = f"pid {ev.target_pid}"
            attack: tuple[str, ...] = ("T1562.001",)
        elif cls == abi.PgateClass.FIREWALL:
            # the record's op is open-write (the op set is the ABI's); the how names it
            obj, op_name = "the host firewall", "firewall-change"
            attack = ("T1562.004",)
        elif cls == abi.PgateClass.SECURITY_CONFIG:
            obj = ev.path
            attack = ("T1562.004", "T1562.006", "T1562.012")
        else:
            obj = ev.path
            attack = {abi.PgateClass.CREDENTIAL: ("T1003.008",),
                      abi.PgateClass.LOG: ("T1070.002", "T1070.003")}.get(
                          cls, ("T1546", "T1053", "T1543", "T1574.006"))
        how = HOW_NAMES.get(ev.detail)
        op = f"{op_name}: {how}" if how else op_name
        prevented = f"{_PREVENTED[cls]} ({op}) {obj}"
        return Finding(
            rule=GATE_RULE, severity="critical" if ev.action == "deny" else "high", dry_run=dry,
            attack=attack, action="would-deny" if dry else ev.action, event=ev, pid=ev.proc.pid,
            title=f"{_PREVENTED[cls].capitalize()} {verb}: {op} {obj} "
                  f"[untrusted provenance: {', '.join(reasons)}]",
            evidence={"prevented": prevented, "provenance": reasons, "operation": op_name,
                      "how": how or "",
                      "object": obj, "class": CLASS_NAMES[cls], "target_pid": ev.target_pid},
            enforced_by=MECHANISM)

    def entered(self) -> dict[str, int]:
        """How many objects, names and directories above them the kernel maps hold."""
        return {"objects": len(self._objs), "names": len(self._names),
                "ancestors": len(self._anc)}

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update(denies=self.denies, dry_runs=self.dry_runs, failed=self.failed,
                   audits=self.audits, objects=len(self._objs), names=len(self._names), ancestors=len(self._anc),
                   tools=len(self._tools),
                   prov_errors=self.prov.errors(),
                   prov_gate_null=self.prov.gate_null_refusals())
        return out


def _key(st: os.stat_result) -> bytes:
    return bytes(abi.InodeKey(ino=st.st_ino, dev=kernel_dev(st.st_dev)))


class _Writer(Protocol):
    """What :func:`_sync` needs of a map (a kernel :class:`Map`, a fake in unit tests)."""

    def update(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


def _sync(m: Map | _Writer, cur: dict[bytes, bytes], new: dict[bytes, bytes]) -> None:
    """Make the map (whose entries ``cur`` mirrors) hold ``new``: only the changed
    entries are written, every new one before any old one is deleted, and ``cur`` is
    kept equal to the map at each step (a failure part way leaves it true: the next
    sync deletes what the failed one wrote and no longer belongs)."""
    for k, v in new.items():
        if cur.get(k) != v:
            m.update(k, v)
            cur[k] = v
    for k in [k for k in cur if k not in new]:
        m.delete(k)
        del cur[k]


def _above(out: dict[str, str], path: str, kind: str, *, include_self: bool,
           root: str = "") -> None:
    """Record the directories above ``path`` (and ``path`` itself if ``include_self``)
    in ``out``, as written and resolved (a root link on the way: both sides), each with
    the strictest kind below it.  ``root``: ``path`` is inside it, resolved already (no
    link on it), and the walk stops at it (that namespace's ``/``)."""
    top = os.path.normpath(root) if root else "/"
    starts = {os.path.normpath(path)} if root else {os.path.normpath(path),
                                                   os.path.realpath(path)}
    for start in starts:
        p = start if include_self else os.path.dirname(start)
        while True:
            prev = out.get(p)
            if prev is not None and STRICTNESS[prev] >= STRICTNESS[kind]:
                break    # it and every directory above it are there already, as strict
            out[p] = kind
            if p == top or p == "/":
                break
            p = os.path.dirname(p)


class _Gate(Protocol):
    def poll(self, timeout_s: float = 0.0) -> list[HipsEvent]: ...
    def finding(self, ev: HipsEvent) -> Finding | None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class AgentGatePart:
    """What every gate that is a part of the agent does with its gate object (the
    in-hook, socket and pipe gates): drain it without waiting, turn its records into
    findings, report its counters, close it; nothing when it is not open."""

    gate: _Gate | None = None

    def poll(self, timeout_s: float) -> list[HipsEvent]:
        return self.gate.poll(0.0) if self.gate is not None else []

    def finding(self, ev: HipsEvent) -> Finding | None:
        return self.gate.finding(ev) if self.gate is not None else None

    def stats(self) -> dict[str, int]:
        return self.gate.stats() if self.gate is not None else {}

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()


class AgentLsmGate(AgentGatePart):
    """The in-hook gate as a part of the agent (:mod:`bastion.assembly`, lsm tier): opened
    once the event sensor is; the default objects, names and security tools entered (the
    agent and its guardian among them); its records are an enforcement source.  When it
    cannot load the agent says so (status, doctor) and falls back to the fanotify gate."""

    name: Final = "lsmgate"

    def __init__(self, maps: Callable[[], ProvenanceMap], *, self_tgid: int,
                 deadline_s: float | None, scope_cgroup_id: int = 0, dry_run: bool = False,
                 guardian_tgid: Callable[[], int | None] | None = None) -> None:
        self._maps = maps
        self._kw = dict(cgroup_id=scope_cgroup_id, deadline_s=deadline_s, self_tgid=self_tgid)
        self.dry_run = dry_run
        self._guardian = guardian_tgid
        self.gate: LsmProvenanceGate | None = None
        self.unentered: list[str] = []
        self.tools: list[int] = []

    def open(self) -> None:
        gate = LsmProvenanceGate(self._maps(), cgroup_id=int(self._kw["cgroup_id"] or 0),
                                 deadline_s=self._kw["deadline_s"],
                                 self_tgid=int(self._kw["self_tgid"] or 0), dry_run=self.dry_run)
        gate.open()
        try:
            self.unentered = gate.apply(default_objects(kinds=KINDS), default_names())
            self.refresh_tools(gate)
        except BaseException:
            gate.close()
            raise
        self.gate = gate

    def refresh(self) -> Finding | None:
        """Re-enter the objects (the maintenance tick): a ``~/.ssh``, a home directory or a
        ``foo.service.d/`` made since the last pass is entered, one gone is dropped; only
        the changes are written.  A pass that fails keeps the entries in (nothing is
        dropped first) and is returned as a high finding to alert."""
        gate = self.gate
        if gate is None:
            return None
        try:
            self.unentered = gate.apply(default_objects(kinds=KINDS), default_names())
        except (BastionError, OSError) as exc:
            log.warning("in-hook provenance gate: objects not re-entered: %s", exc)
            n = gate.entered()
            return Finding(
                rule=GATE_RULE + ".refresh", severity="high", attack=("T1562.001",),
                action="alert", event=None, pid=os.getpid(),
                title=f"Provenance gate objects not re-entered ({exc}); the previous "
                      f"{n['objects']} objects, {n['names']} names and {n['ancestors']} "
                      f"directories above them stay entered, objects made since are not",
                evidence={"error": str(exc), **n})
        return None

    def refresh_tools(self, gate: LsmProvenanceGate | None = None) -> None:
        """Re-enter the security tools' processes (a restarted rsyslogd has a new pid)."""
        gate = gate or self.gate
        if gate is None:
            return
        tgids = find_tools() + [os.getpid()]
        g = self._guardian() if self._guardian is not None else None
        if g:
            tgids.append(g)
        self.tools = gate.set_tools(sorted(set(tgids)))

    def close(self) -> None:
        super().close()
        self.gate = None


__all__ = ["AgentGatePart", "AgentLsmGate", "CLASS_NAMES", "LsmProvenanceGate", "MECHANISM", "OBJECT", "find_tools"]
