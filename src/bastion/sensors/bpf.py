"""The live sensors: Bastion's event programs and their ring buffer.

Two objects emit the same records (``bpf/include/bastion.h``), chosen by the
assembly from the tier report (:mod:`bastion.enforce.tiers`):

* :class:`BpfSensor` — ``tp_events.bpf.o``, syscall and sched tracepoints
  (the compat tier: kernels whose BPF trampolines are locked);
* :class:`HookSensor` — ``lsm_events.bpf.o``, fentry on the ``security_*``
  functions that call the LSM hooks, ``fexit/inet_csk_accept`` and tp_btf
  (kernels with trampolines, with or without BPF LSM): no syscall
  tracepoint, io_uring covered, paths from kernel objects, read-opens
  filtered and repeat opens deduplicated in the kernel.

Declares ``tp_events.bpf.o`` to the one loader (:mod:`bastion.kernel.loader`)
with its configuration for ``.rodata`` (own tgid to ignore, optional cgroup
scope, enabled event types) and its ring size; the loader checks the ABI,
attaches every program all or nothing (``on_fchmodat2`` may be absent) and
drains the ring, counting undecodable records.  The sensor polls in timed
batches and keeps the counters the agent reports.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path
from typing import Final, Iterable

from bastion import abi
from bastion.abi import EVENT_CLASSES
from bastion.errors import KernelError, Location
from bastion.events import Event, decode
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object

log = logging.getLogger("bastion.sensors.bpf")

# Event classes a user can enable; each is one record type.

# Programs whose hook may be absent on an older kernel (fchmodat2 is 6.6+).
OPTIONAL_PROGRAMS: Final = frozenset({"on_fchmodat2"})


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


class BpfSensor(LoaderUser):
    """The tracepoint sensor: owns ``tp_events.bpf.o`` (through the loader) and its counters."""

    name = "bpf"
    source = "tracepoints"   # what status and doctor say the events come from

    def __init__(
        self,
        *,
        classes: Iterable[str] = tuple(EVENT_CLASSES),
        self_tgid: int = 0,
        cgroup_id: int = 0,
        obj_path: Path | None = None,
        open_reads: bool = False,
        ring_bytes: int = abi.RINGBUF_BYTES,
    ) -> None:
        self.classes = tuple(classes)
        self.mask = event_mask(self.classes)
        self.self_tgid = self_tgid
        self.cgroup_id = cgroup_id
        self.obj_path = obj_path
        self.open_reads = open_reads
        self.ring_bytes = ring_bytes
        self._lo: LoadedObject | None = None
        self.opened_at = 0.0

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=self.obj_path or bpf_object("tp_events.bpf.o"),
            rodata={
                "cfg_self_tgid": self.self_tgid,
                "cfg_cgroup_id": self.cgroup_id,
                "cfg_event_mask": self.mask,
                "cfg_open_reads": int(self.open_reads),
            },
            max_entries={"events": self.ring_bytes},
            optional=OPTIONAL_PROGRAMS,
        )

    def open(self) -> None:
        spec = self.spec()
        self._lo = LoadedObject.load(spec)
        self.opened_at = time.monotonic()
        log.info("bpf sensor: %d programs attached from %s", len(self.attached), spec.path)

    @property
    def attached(self) -> list[str]:
        return self._lo.attached if self._lo is not None else []

    @property
    def missing(self) -> list[str]:
        return self._lo.missing if self._lo is not None else []

    def poll(self, timeout_s: float) -> list[Event] | None:
        lo = self._lo
        if lo is None:
            raise KernelError("bpf sensor polled before open()", location=Location("tp_events.bpf.o"))
        lo.wait(timeout_s)
        return lo.drain(decode)

    def ring_fill(self) -> float:
        if self._lo is None:
            return 0.0
        return self._lo.pending_bytes() / self.ring_bytes

    def close(self) -> None:
        """Detach and release; the counters stay readable."""
        if self._lo is not None:
            self._lo.close()


# Hooks of lsm_events.bpf.o a kernel may lack (CONFIG_SECURITY_PATH off, older kernels).
HOOK_OPTIONAL_PROGRAMS: Final = frozenset({
    "on_path_unlink", "on_path_rmdir", "on_path_rename", "on_path_chmod", "on_path_chown",
    "on_fix_setgid", "on_accept", "on_capset",
})

# Repeat opens of one inode by one process within this window cross the ring once.
DEFAULT_OPEN_DEDUP_S: Final = 1.0

_INODE_KEY = struct.Struct("<QII")
_U32 = struct.Struct("<I")


class HookSensor(BpfSensor):
    """The kernel-first sensor: ``lsm_events.bpf.o`` (see the module docstring).

    ``quiet_tgids``: processes whose events are dropped in the kernel (the agent
    itself is always one; the guardian is added by the assembly).
    ``open_dedup_s``: the per-(process, inode, access) open dedup window (0 = off).
    ``sensitive``: ``(dev, ino, flags)`` of files (``TOBJ_SELF``) or directories
    (``TOBJ_SUBTREE``: the files directly in them) whose read-opens are reported;
    ``sensitive_reads`` turns the lookup on for a set filled later
    (:meth:`mark_sensitive`); without either, read-opens cost no map lookup.
    """

    name = "lsm-hooks"
    source = "kernel hooks (fentry on security_*, tp_btf)"

    def __init__(
        self,
        *,
        classes: Iterable[str] = tuple(EVENT_CLASSES),
        self_tgid: int = 0,
        cgroup_id: int = 0,
        obj_path: Path | None = None,
        open_reads: bool = False,
        ring_bytes: int = abi.RINGBUF_BYTES,
        quiet_tgids: Iterable[int] = (),
        open_dedup_s: float = DEFAULT_OPEN_DEDUP_S,
        sensitive: Iterable[tuple[int, int, int]] = (),
        sensitive_reads: bool = False,
    ) -> None:
        super().__init__(classes=classes, self_tgid=self_tgid, cgroup_id=cgroup_id,
                         obj_path=obj_path, open_reads=open_reads, ring_bytes=ring_bytes)
        if open_dedup_s < 0:
            raise KernelError(f"open_dedup_s must be >= 0, got {open_dedup_s}",
                              location=Location("lsm_events.bpf.o"))
        self.quiet_tgids = tuple(dict.fromkeys(t for t in quiet_tgids if t > 0))
        self.open_dedup_ns = int(open_dedup_s * 1e9)
        self.sensitive = tuple(sensitive)
        # read-opens looked up in sensitive_inodes at all (off: dropped before any lookup)
        self.sensitive_reads = sensitive_reads or bool(self.sensitive)

    def spec(self) -> ObjectSpec:
        base = super().spec()
        return ObjectSpec(
            path=self.obj_path or bpf_object("lsm_events.bpf.o"),
            rodata={**base.rodata, "cfg_open_dedup_ns": self.open_dedup_ns,
                    "cfg_sensitive_reads": int(self.sensitive_reads)},
            max_entries=base.max_entries,
            optional=HOOK_OPTIONAL_PROGRAMS,
        )

    def open(self) -> None:
        super().open()
        try:
            for tgid in self.quiet_tgids:
                self.quiet(tgid)
            for dev, ino, flags in self.sensitive:
                self.mark_sensitive(dev, ino, flags)
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

    def mark_sensitive(self, dev: int, ino: int, flags: int = abi.TOBJ_SELF) -> None:
        """Report read-opens of this inode (``TOBJ_SELF``) or of the files in this
        directory (``TOBJ_SUBTREE``); ``dev`` is the kernel's dev_t."""
        self._map("sensitive_inodes").update(_INODE_KEY.pack(ino, dev, 0), _U32.pack(flags))

    def deduplicated(self) -> int:
        """Opens the kernel did not report because one like it was within the window."""
        return self._lo.sum_percpu_u64("open_deduped") if self._lo is not None else 0

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "open_deduplicated": self.deduplicated()}


__all__ = ["BpfSensor", "EVENT_CLASSES", "HOOK_OPTIONAL_PROGRAMS", "HookSensor",
           "OPTIONAL_PROGRAMS", "event_mask"]
