"""The live sensors: Bastion's event programs and their ring buffer.

Two objects emit the same records (``bpf/include/bastion.h``), chosen by the
assembly from the tier report (:mod:`bastion.enforce.tiers`):

* :class:`BpfSensor` — ``tp_events.bpf.o``, syscall and sched tracepoints, and
  io_uring's own tracepoints for the requests no syscall carries (s22-uring; the
  compat tier: kernels whose BPF trampolines are locked);
* :class:`HookSensor` — ``lsm_events.bpf.o``, fentry on the ``security_*``
  functions that call the LSM hooks, ``fexit/inet_csk_accept`` and tp_btf
  (kernels with trampolines, with or without BPF LSM): no syscall
  tracepoint, io_uring covered, paths from kernel objects, read-opens
  filtered and repeat opens deduplicated in the kernel.

Declares ``tp_events.bpf.o`` to the one loader (:mod:`bastion.kernel.loader`)
with its configuration for ``.rodata`` (own tgid to ignore, optional cgroup
scope, enabled event types) and its two rings' sizes; the loader checks the ABI,
attaches every program all or nothing (``on_fchmodat2`` may be absent) and
drains the rings, counting undecodable records.

Two rings (s23-prioring, ``bpf/lib/common.h``): ``events_prio`` carries what an
attacker's payload must do (exec, network, ptrace, signals, bpf, memfd, credentials,
executable memory, the sensitive set's opens, remounts: ``abi.PRIO_TYPES``),
``events`` the bulk (fork, exit, every other file record).  Each poll drains the
priority ring completely and the bulk ring up to :data:`DRAIN_BATCH`, so a flood of
cheap file events that overruns the bulk ring loses bulk records only
(``drops_ring.bulk``), never the payload's exec or connect behind it.  The sensor polls in timed
batches and keeps the counters the agent reports.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from pathlib import Path
from typing import Callable, Final, Iterable, Sequence

from bastion import abi
from bastion.abi import EVENT_CLASSES
from bastion.errors import KernelError, Location
from bastion.events import Event, RepeatDecoder
from bastion.hostns import host_mnt_ns, root_ident
from bastion.kernel.btf import btf_loads as kernel_btf_loads
from bastion.kernel.btf import iouring_tracepoints as kernel_iouring_tracepoints
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object
from bastion.sensors.provenance import ProvenanceMap
from bastion.sensors.sensitive import DEFAULT_SENSITIVE, SensEntry, entry_bytes, resolve

log = logging.getLogger("bastion.sensors.bpf")

# Event classes a user can enable; each is one record type.

# Repeat opens of one inode (repeat connects to one address and port) by one process
# within this window cross the ring once (the agent's setting for both sensors).
DEFAULT_OPEN_DEDUP_S: Final = 1.0
DEFAULT_NET_DEDUP_S: Final = 1.0
# Executable-memory records (ABI 2.1): one per (process, op, reasons, file) in this
# window; JIT runtimes flip pages W->X all the time and the rules need the first.
DEFAULT_MMAP_DEDUP_S: Final = 10.0
# Log-rewrite records (ABI 2.9, s17-fixlogacts): one per (process, file, act) in this
# window, always on (an untrusted process's hole-punching loop on its own file would
# flood the ring); the rule needs the first.
DEFAULT_REWRITE_DEDUP_S: Final = 10.0
# ptrace records (bpf/lib/dedup.h, s30): one per (process image, request, target) a second,
# on by default in both sensors: a process_vm_readv loop on one's own child blinded the agent
DEFAULT_PTRACE_DEDUP_S: Final = 1.0
# signal records (bpf/lib/dedup.h, s30): one per (process image, signal, target) a second, on
# by default in both sensors: a kill(2) loop on one's own child blinded the agent the same way
DEFAULT_KILL_DEDUP_S: Final = 1.0

# Records decoded per poll at most: the ring holds ~82 k typical file records since they
# are variable-size (ABI 2.0; ~14.7 k before), and a poll that took them all held them
# all as events at once (twice the RSS, 2 s loop rounds under a flood); the rest waits
# for the next poll, which does not sleep while records are pending.
DRAIN_BATCH: Final = 8192

# Programs whose hook may be absent on an older kernel (fchmodat2 is 6.6+).
# mount_setattr: Linux 5.12+, fspick: 5.2+ (s16-gate)
OPTIONAL_PROGRAMS: Final = frozenset({"on_fchmodat2", "on_mount_setattr", "on_fspick",
                                      "on_mount_setattr_ret", "on_fspick_ret"})

# The open programs of tp_events.bpf.o come in two sets (s16-open): exit programs with
# BTF-typed loads (flags from the caller's saved registers, the file through
# bpf_rdonly_cast: no sys_enter program) where the kernel has what they call, else
# the probe-read entry/exit pairs.  One set is loaded, chosen by open_programs_skipped.
BTF_OPEN_PROGRAMS: Final = frozenset({"on_openat_ret", "on_open_ret", "on_creat_ret"})
PROBE_OPEN_PROGRAMS: Final = frozenset({"on_openat_p", "on_openat_ret_p", "on_open_p",
                                        "on_open_ret_p", "on_creat_p", "on_creat_ret_p"})
# openat2 (on_openat2, on_openat2_ret) is an entry/exit pair in both: its flags are in
# the caller's memory, which another thread may rewrite while the call is in the kernel.


def open_programs_skipped(btf_loads: bool) -> frozenset[str]:
    """The open programs of ``tp_events.bpf.o`` not to load: the probe-read set where
    the kernel has BTF-typed loads for tracepoint programs, else the BTF set."""
    return PROBE_OPEN_PROGRAMS if btf_loads else BTF_OPEN_PROGRAMS


# The io_uring programs (s22-uring, issue 15.3): each on its tracepoint, loaded where the
# kernel has it (bastion.kernel.btf.iouring_tracepoints).  The submission point is
# io_uring_submit_req from 6.4, io_uring_submit_sqe before: one of the two loads.
IOURING_PROGRAMS: Final[dict[str, str]] = {
    "on_iou_submit_req": "io_uring_submit_req",   # files
    "on_iou_connect_req": "io_uring_submit_req",  # CONNECT (its own stack)
    "on_iou_submit_sqe": "io_uring_submit_sqe",
    "on_iou_connect_sqe": "io_uring_submit_sqe",
    "on_iou_complete": "io_uring_complete",
}
_SUBMIT_REQ: Final = frozenset({"on_iou_submit_req", "on_iou_connect_req"})
_SUBMIT_SQE: Final = frozenset({"on_iou_submit_sqe", "on_iou_connect_sqe"})


def iouring_programs_skipped(present: frozenset[str]) -> tuple[frozenset[str], list[str]]:
    """Which io_uring programs not to load given the tracepoints ``present``, and the
    ones that are missing for real (what ``status`` lists: io_uring opens, or renames,
    unlinks and connects, unseen on this kernel).  The other kernel's name of the
    submission point is skipped, not missing."""
    skip = {p for p, tp in IOURING_PROGRAMS.items() if tp not in present}
    missing = []
    if "io_uring_submit_req" in present:
        skip |= _SUBMIT_SQE
    elif "io_uring_submit_sqe" not in present:
        missing += sorted(_SUBMIT_REQ)
    if "io_uring_complete" not in present:
        missing.append("on_iou_complete")
    return frozenset(skip), missing


def event_mask(classes: Iterable[str]) -> int:
    mask = 0
    for c in classes:
        try:
            mask |= 1 << EVENT_CLASSES[c]
        except KeyError:
            raise KernelError(
                f"unknown event class {c!r} (known: {', '.join(EVENT_CLASSES)})"
            ) from None
    return mask


def _agent_root() -> dict[str, int]:
    """``cfg_root_mnt_id``: the id of the mount the agent's root directory is (the
    ``mnt_id`` of a descriptor of ``/``, as ``/proc/self/fdinfo`` gives it: the mount the
    root *is*, not one stacked on ``/`` later, which moves no process's root).  An exec
    whose root is another directory or mount is flagged ``F_ROOTED`` (s31).
    KernelError when it cannot be read (then every script trust would silently end)."""
    try:
        fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return {"cfg_root_mnt_id": root_ident(fd)[2]}
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:
        raise KernelError(f"/proc/self/fdinfo: the root directory's mount id: {e}",
                          location=Location("sensors.bpf")) from e


class BpfSensor(LoaderUser):
    """The tracepoint sensor: owns ``tp_events.bpf.o`` (through the loader) and its counters."""

    name = "bpf"
    source = "tracepoints"   # what status and doctor say the events come from
    object_name = "tp_events.bpf.o"

    def __init__(
        self,
        *,
        classes: Iterable[str] = tuple(EVENT_CLASSES),
        self_tgid: int = 0,
        cgroup_id: int = 0,
        obj_path: Path | None = None,
        open_reads: bool = False,
        ring_bytes: int = abi.RINGBUF_BYTES,
        sensitive: Sequence[tuple[str, abi.SensClass]] = DEFAULT_SENSITIVE,
        sensitive_refresh_s: float = 30.0,
        resolve_sensitive: Callable[[Sequence[tuple[str, abi.SensClass]]], list[SensEntry]]
        = resolve,
        prio_ring_bytes: int = abi.PRIO_RINGBUF_BYTES,
        open_dedup_s: float = 0.0,
        net_dedup_s: float = 0.0,
        mmap_dedup_s: float = 0.0,
        rewrite_dedup_s: float = DEFAULT_REWRITE_DEDUP_S,
        ptrace_dedup_s: float = DEFAULT_PTRACE_DEDUP_S,
        kill_dedup_s: float = DEFAULT_KILL_DEDUP_S,
        btf_loads: bool | None = None,
        prio_exec_budget: int | None = None,
        prio_window_s: float | None = None,
    ) -> None:
        """``sensitive``: the patterns of the sensitive read set (empty: no read-open
        is reported outside learn mode); resolved to inodes at open and again every
        ``sensitive_refresh_s`` (a replaced /etc/shadow has a new inode).
        ``open_dedup_s`` / ``net_dedup_s``: the in-kernel dedup windows
        (``bpf/lib/dedup.h``) of repeat opens (same process, inode, access) and of
        repeat connects/accepts (same process, address, port); 0 = off.
        ``mmap_dedup_s``: the window of repeat executable-memory records (same process,
        op, reasons, file; ``bpf/lib/xmem.h``); 0 = off.
        ``rewrite_dedup_s``: the window of repeat log-rewrite records (same process,
        file, act; ``bpf/lib/dedup.h``), on by default; 0 = off.
        ``ptrace_dedup_s``: the window of repeat ptrace records (same process image,
        request, target; ``bpf/lib/dedup.h``), on by default; 0 = off.
        ``kill_dedup_s``: the window of repeat signal records (same process image,
        signal, target thread and its process's start), on by default; 0 = off.
        ``btf_loads``: which open programs load (:func:`open_programs_skipped`); None:
        as the running kernel allows (:func:`bastion.kernel.btf.btf_loads`).
        ``prio_exec_budget``: execs of one image per 100 ms window that stay on the
        priority ring (``bpf/lib/common.h`` ``prio_spend``); None: the object's 256.
        ``prio_window_s``: the priority budgets' window; None: the object's 100 ms."""
        if prio_exec_budget is not None and not 1 <= prio_exec_budget < 2**32:
            raise KernelError(f"prio_exec_budget must be 1 .. 2**32-1, got {prio_exec_budget}",
                              location=Location(self.object_name))
        if prio_window_s is not None and not 0.001 <= prio_window_s <= 3600:
            raise KernelError(f"prio_window_s must be 0.001 .. 3600, got {prio_window_s}",
                              location=Location(self.object_name))
        self.prio_exec_budget = prio_exec_budget
        self.prio_window_ns = None if prio_window_s is None else int(prio_window_s * 1e9)
        for what, v in (("open_dedup_s", open_dedup_s), ("net_dedup_s", net_dedup_s),
                        ("mmap_dedup_s", mmap_dedup_s), ("rewrite_dedup_s", rewrite_dedup_s),
                        ("ptrace_dedup_s", ptrace_dedup_s), ("kill_dedup_s", kill_dedup_s)):
            if v < 0:
                raise KernelError(f"{what} must be >= 0, got {v}",
                                  location=Location(self.object_name))
        self.open_dedup_ns = int(open_dedup_s * 1e9)
        self.net_dedup_ns = int(net_dedup_s * 1e9)
        self.mmap_dedup_ns = int(mmap_dedup_s * 1e9)
        self.rewrite_dedup_ns = int(rewrite_dedup_s * 1e9)
        self.ptrace_dedup_ns = int(ptrace_dedup_s * 1e9)
        self.kill_dedup_ns = int(kill_dedup_s * 1e9)
        self.classes = tuple(classes)
        self.mask = event_mask(self.classes)
        self.self_tgid = self_tgid
        self.cgroup_id = cgroup_id
        self.obj_path = obj_path
        self.host_mnt_ns = 0     # mount_setattr/fspick reported in it; 0: /proc/1/ns/mnt's
        self.open_reads = open_reads
        self.ring_bytes = ring_bytes
        self.prio_ring_bytes = prio_ring_bytes
        self.btf_loads = btf_loads
        self._lo: LoadedObject | None = None
        self.opened_at = 0.0
        self.sensitive = tuple(sensitive)
        self.sensitive_refresh_s = sensitive_refresh_s
        self._resolve = resolve_sensitive
        self._sens: dict[bytes, SensEntry] = {}
        self._sens_at = 0.0
        # keeps the actors of a flood decoded once, and a record repeated by a flood
        self._decoder = RepeatDecoder()
        self._dedup_final = (0, 0, 0, 0, 0, 0, 0)   # the dedup counters as they were at close()
        # the io_uring tracepoints of this kernel (None: read from its BTF at load),
        # why there are none, and the programs missing for lack of them
        self.iou_present: frozenset[str] | None = None
        self.iou_why = ""
        self.iou_missing: list[str] = []

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=self.obj_path or bpf_object(self.object_name),
            rodata={
                "cfg_self_tgid": self.self_tgid,
                "cfg_cgroup_id": self.cgroup_id,
                "cfg_event_mask": self.mask,
                "cfg_open_reads": int(self.open_reads),
                "cfg_sensitive": int(bool(self.sensitive)),
                "cfg_open_dedup_ns": self.open_dedup_ns,
                "cfg_net_dedup_ns": self.net_dedup_ns,
                "cfg_mmap_dedup_ns": self.mmap_dedup_ns,
                "cfg_rewrite_dedup_ns": self.rewrite_dedup_ns,
                "cfg_ptrace_dedup_ns": self.ptrace_dedup_ns,
                "cfg_kill_dedup_ns": self.kill_dedup_ns,
                "cfg_host_mnt_ns": self.host_mnt_ns or host_mnt_ns(self.object_name),
                **_agent_root(),
                **({} if self.prio_exec_budget is None
                   else {"cfg_prio_exec_budget": self.prio_exec_budget}),
                **({} if self.prio_window_ns is None
                   else {"cfg_prio_window_ns": self.prio_window_ns}),
            },
            max_entries={"events": self.ring_bytes, "events_prio": self.prio_ring_bytes},
            prio_ring="events_prio",
            prio_drops="prio_drops",
            optional=OPTIONAL_PROGRAMS,
            skip=self.skipped_programs(),
        )

    def skipped_programs(self) -> frozenset[str]:
        """The programs of the object not loaded on this kernel (the open programs
        of the other set; the io_uring programs whose tracepoint it lacks, which
        :attr:`missing` lists when io_uring is then unseen)."""
        if self.btf_loads is None:
            self.btf_loads = kernel_btf_loads()
        if self.iou_present is None:
            self.iou_present, self.iou_why = kernel_iouring_tracepoints()
        iou_skip, self.iou_missing = iouring_programs_skipped(self.iou_present)
        if self.iou_missing:
            log.warning("io_uring requests are unseen by the tracepoint sensor here: %s",
                        self.iou_why or "no " + ", ".join(IOURING_PROGRAMS[p]
                                                          for p in self.iou_missing))
        return open_programs_skipped(self.btf_loads) | iou_skip

    def open(self) -> None:
        spec = self.spec()
        self._lo = LoadedObject.load(spec)
        self.opened_at = time.monotonic()
        try:
            self.refresh_sensitive()
        except BaseException:
            self._lo.close()
            self._lo = None
            raise
        log.info("bpf sensor: %d programs attached from %s", len(self.attached), spec.path)

    @property
    def sensitive_entries(self) -> list[SensEntry]:
        """The entries of the sensitive set now in the kernel map."""
        return list(self._sens.values())

    def sensitive_entry(self, sens_id: int) -> SensEntry | None:
        return next((e for e in self._sens.values() if e.sens_id == sens_id), None)

    def refresh_sensitive(self) -> int:
        """Resolve the sensitive patterns again and bring ``sens_inodes`` up to date
        (new inodes added, gone ones removed); returns the number of entries."""
        lo = self._lo
        if lo is None or not self.sensitive:
            return 0
        m = lo.map("sens_inodes")
        fresh: dict[bytes, tuple[bytes, SensEntry]] = {}
        for e in self._resolve(self.sensitive):
            k, v = entry_bytes(e)
            fresh[k] = (v, e)
        changed = False
        for k in [k for k in self._sens if k not in fresh]:
            m.delete(k)
            del self._sens[k]
            changed = True
        for k, (v, e) in fresh.items():
            old = self._sens.get(k)
            if old is None or entry_bytes(old)[1] != v:
                m.update(k, v)
                changed = True
            self._sens[k] = e
        if changed:   # after the set changed: the kernel's cached verdicts are void
            self._bump_sens_epoch(lo)
        self._sens_at = time.monotonic()
        return len(self._sens)

    @staticmethod
    def _bump_sens_epoch(lo: LoadedObject) -> None:
        """Move ``sens_epoch`` on (``bpf/lib/sensitive.h``: the read-open verdict cache)."""
        m = lo.map("sens_epoch")
        key = _U32.pack(0)
        raw = m.lookup(key)
        if raw is None:
            raise KernelError("sens_epoch has no slot 0", location=Location("sensitive.h"))
        (cur,) = _U64.unpack(raw)
        m.update(key, _U64.pack(cur + 1))

    def provenance(self) -> ProvenanceMap:
        """The kernel provenance maps this object keeps (``bpf/lib/prov.h``)."""
        lo = self._lo
        if lo is None:
            raise KernelError("provenance: the sensor is not open",
                              location=Location(self.object_name))
        return ProvenanceMap(lo.map("prov"), lo.map("prov_dirs"), lo.map("prov_interp"),
                             lo.map("prov_errors"), lo.map("prov_dir_inodes"),
                             lo.map("prov_lost"), pidfd_keys=True)

    @property
    def attached(self) -> list[str]:
        return self._lo.attached if self._lo is not None else []

    @property
    def missing(self) -> list[str]:
        """Programs whose hook this kernel lacks (the io_uring ones not even loaded)."""
        return (self._lo.missing + self.iou_missing) if self._lo is not None else []

    def poll(self, timeout_s: float) -> list[Event] | None:
        lo = self._lo
        if lo is None:
            raise KernelError("bpf sensor polled before open()", location=Location("tp_events.bpf.o"))
        if self.sensitive and time.monotonic() - self._sens_at >= self.sensitive_refresh_s:
            self.refresh_sensitive()
        lo.wait(timeout_s)
        return lo.drain_batch(self._decoder.decode_batch, DRAIN_BATCH)

    def ring_fill(self) -> float:
        """The fuller of the two rings (0..1)."""
        if self._lo is None:
            return 0.0
        return max(self._lo.pending_bytes() / self.ring_bytes,
                   self._lo.prio_pending_bytes() / self.prio_ring_bytes)

    def close(self) -> None:
        """Detach and release; the counters stay readable."""
        if self._lo is not None:
            if not self._lo.closed:
                self._dedup_final = (self.deduplicated(), self.net_deduplicated(),
                                     self.mmap_deduplicated(), self.rewrite_deduplicated(),
                                     self.prio_demoted(), self.ptrace_deduplicated(),
                                     self.kill_deduplicated())
            self._lo.close()

    def _dedup(self, name: str, final: int) -> int:
        lo = self._lo
        if lo is None:
            return 0
        return final if lo.closed else lo.sum_percpu_u64(name)

    def deduplicated(self) -> int:
        """Opens the kernel did not report because one like it was within the window."""
        return self._dedup("open_deduped", self._dedup_final[0])

    def net_deduplicated(self) -> int:
        """Connects/accepts the kernel did not report: one like it was within the window."""
        return self._dedup("net_deduped", self._dedup_final[1])

    def mmap_deduplicated(self) -> int:
        """Executable-memory records the kernel did not send: one like it was within the window."""
        return self._dedup("mmap_deduped", self._dedup_final[2])

    def rewrite_deduplicated(self) -> int:
        """Log-rewrite records the kernel did not send: one like it was within the window."""
        return self._dedup("rewrite_deduped", self._dedup_final[3])

    def ptrace_deduplicated(self) -> int:
        """ptrace records the kernel did not send: one like it was within the window."""
        return self._dedup("ptrace_deduped", self._dedup_final[5])

    def kill_deduplicated(self) -> int:
        """Signal records the kernel did not send: one like it was within the window."""
        return self._dedup("kill_deduped", self._dedup_final[6])

    def prio_demoted(self) -> int:
        """Priority records the kernel put on the bulk ring: their thread group (an exec:
        its image) spent its priority budget (bpf/lib/common.h prio_spend, s23 review 1)."""
        return self._dedup("prio_demoted", self._dedup_final[4])

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "prio_demoted": self.prio_demoted(),
                "open_deduplicated": self.deduplicated(),
                "net_deduplicated": self.net_deduplicated(),
                "mmap_deduplicated": self.mmap_deduplicated(),
                "rewrite_deduplicated": self.rewrite_deduplicated(),
                "ptrace_deduplicated": self.ptrace_deduplicated(),
                "kill_deduplicated": self.kill_deduplicated()}


# Hooks of lsm_events.bpf.o a kernel may lack (CONFIG_SECURITY_PATH off, older kernels).
HOOK_OPTIONAL_PROGRAMS: Final = frozenset({
    "on_path_unlink", "on_path_rmdir", "on_path_rename", "on_path_chmod", "on_path_chown",
    "on_path_link", "on_fix_setgid", "on_accept", "on_capset",
    "on_memfd_create",   # fexit on the x86-64 syscall function: absent where BTF lacks it
    "on_mount_setattr", "on_fspick",   # fexit on the syscall functions (s16-gate)
    "on_vfs_utimes",   # fentry on a plain function: absent if a kernel inlines it (s23)
})


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class HookSensor(BpfSensor):
    """The kernel-first sensor: ``lsm_events.bpf.o`` (see the module docstring).

    ``quiet_tgids``: processes whose events are dropped in the kernel (the agent
    itself is always one; the guardian is added by the assembly).
    ``open_dedup_s``: the per-(process, inode, access) open dedup window (0 = off).
    ``sensitive``: the sensitive read set, as for :class:`BpfSensor`: the same
    patterns resolved into the same ``sens_inodes`` map (``bpf/lib/sensitive.h``),
    checked in ``security_file_open`` through the same verdict cache as the
    tracepoint sensor (``sens_cache``: one lookup per read-open; on a miss the file,
    then up to ``BASTION_SENS_DEPTH`` ancestors; voided at the exit of every
    ``vfs_rename`` and by :meth:`refresh_sensitive`); empty: read-opens cost no map
    lookup.
    """

    name = "lsm-hooks"
    source = "kernel hooks (fentry on security_*, tp_btf)"
    object_name = "lsm_events.bpf.o"

    def __init__(
        self,
        *,
        classes: Iterable[str] = tuple(EVENT_CLASSES),
        self_tgid: int = 0,
        cgroup_id: int = 0,
        obj_path: Path | None = None,
        open_reads: bool = False,
        ring_bytes: int = abi.RINGBUF_BYTES,
        prio_ring_bytes: int = abi.PRIO_RINGBUF_BYTES,
        quiet_tgids: Iterable[int] = (),
        open_dedup_s: float = DEFAULT_OPEN_DEDUP_S,
        net_dedup_s: float = 0.0,
        mmap_dedup_s: float = 0.0,
        sensitive: Sequence[tuple[str, abi.SensClass]] = DEFAULT_SENSITIVE,
        sensitive_refresh_s: float = 30.0,
        resolve_sensitive: Callable[[Sequence[tuple[str, abi.SensClass]]], list[SensEntry]]
        = resolve,
        prio_exec_budget: int | None = None,
        prio_window_s: float | None = None,
    ) -> None:
        super().__init__(classes=classes, self_tgid=self_tgid, cgroup_id=cgroup_id,
                         obj_path=obj_path, open_reads=open_reads, ring_bytes=ring_bytes,
                         prio_ring_bytes=prio_ring_bytes, prio_exec_budget=prio_exec_budget, prio_window_s=prio_window_s,
                         sensitive=sensitive, sensitive_refresh_s=sensitive_refresh_s,
                         resolve_sensitive=resolve_sensitive, open_dedup_s=open_dedup_s,
                         net_dedup_s=net_dedup_s, mmap_dedup_s=mmap_dedup_s)
        self.quiet_tgids = tuple(dict.fromkeys(t for t in quiet_tgids if t > 0))

    def skipped_programs(self) -> frozenset[str]:
        return frozenset()   # lsm_events.bpf.o has no such sets

    def spec(self) -> ObjectSpec:
        base = super().spec()
        return ObjectSpec(
            path=base.path,
            rodata=base.rodata,
            max_entries=base.max_entries,
            prio_ring=base.prio_ring,
            prio_drops=base.prio_drops,
            optional=HOOK_OPTIONAL_PROGRAMS,
        )

    def open(self) -> None:
        super().open()
        try:
            for tgid in self.quiet_tgids:
                self.quiet(tgid)
        except BaseException:
            self.close()
            raise

    def _map(self, name: str) -> Map:
        if self._lo is None:
            raise KernelError(f"{name}: the hook sensor is not open",
                              location=Location("lsm_events.bpf.o"))
        return self._lo.map(name)

    def quiet(self, tgid: int) -> None:
        """Drop every event of process ``tgid`` in the kernel."""
        self._map("quiet_tgids").update(_U32.pack(tgid), _U32.pack(1))



__all__ = ["BTF_OPEN_PROGRAMS", "BpfSensor", "IOURING_PROGRAMS", "iouring_programs_skipped", "PROBE_OPEN_PROGRAMS", "open_programs_skipped", "DEFAULT_MMAP_DEDUP_S", "DEFAULT_REWRITE_DEDUP_S", "DEFAULT_PTRACE_DEDUP_S", "DEFAULT_KILL_DEDUP_S", "DEFAULT_NET_DEDUP_S", "DEFAULT_OPEN_DEDUP_S", "EVENT_CLASSES",
           "HOOK_OPTIONAL_PROGRAMS", "HookSensor", "OPTIONAL_PROGRAMS", "event_mask"]
