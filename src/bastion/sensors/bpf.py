"""The live sensor: Bastion's tracepoint programs and their ring buffer.

Loads ``tp_events.bpf.o`` with its configuration written into ``.rodata``
before load (own tgid to ignore, optional cgroup scope, enabled event
types), checks the object's ABI version, attaches every program, and drains
the ring in timed batches.  Attaching is all or nothing: when a required
program fails, everything already attached is detached before the error
propagates, so nothing half-attached is left behind.
"""

from __future__ import annotations

import logging
import struct
import time
from pathlib import Path
from typing import Final, Iterable

from bastion import abi
from bastion.abi import EVENT_CLASSES
from bastion.errors import DecodeError, KernelError, Location
from bastion.events import Event, decode
from bastion.kernel.libbpf import BpfObject, Link, Map
from bastion.kernel.ringbuf import RingBuffer
from bastion.paths import bpf_object

log = logging.getLogger("bastion.sensors.bpf")

# Event classes a user can enable; each is one record type.

# Programs whose hook may be absent on an older kernel (fchmodat2 is 6.6+).
OPTIONAL_PROGRAMS: Final = frozenset({"on_fchmodat2"})


def boot_to_wall_ns() -> int:
    """Offset that turns CLOCK_BOOTTIME ns into wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


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


def sum_percpu_u64(m: Map, key: int = 0) -> int:
    return sum(struct.unpack_from("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", key)))


class BpfSensor:
    name = "bpf"

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
        self._obj: BpfObject | None = None
        self._links: list[Link] = []
        self._ring: RingBuffer | None = None
        self._drops: Map | None = None
        self._offset = 0
        self._offset_at = 0.0
        self.attached: list[str] = []
        self.missing: list[str] = []
        self.events = 0
        self.decode_errors = 0
        self.opened_at = 0.0

    def open(self) -> None:
        path = self.obj_path or bpf_object("tp_events.bpf.o")
        obj = BpfObject.open(path, rodata={
            "cfg_self_tgid": self.self_tgid,
            "cfg_cgroup_id": self.cgroup_id,
            "cfg_event_mask": self.mask,
            "cfg_open_reads": int(self.open_reads),
        })
        try:
            version = int.from_bytes(obj.read_rodata("bastion_abi_version"), "little")
            abi.check_abi_version(version, str(path))
            obj.map("events").set_max_entries(self.ring_bytes)
            obj.load()
            for prog in obj.programs():
                try:
                    self._links.append(prog.attach())
                    self.attached.append(prog.name)
                except KernelError as exc:
                    if prog.name in OPTIONAL_PROGRAMS:
                        log.info("hook of %s absent on this kernel: %s", prog.name, exc.message)
                        self.missing.append(prog.name)
                        continue
                    raise
            self._ring = RingBuffer(obj.map("events"))
            self._drops = obj.map("drops")
        except BaseException:
            self._teardown(obj)
            raise
        self._obj = obj
        self._offset = boot_to_wall_ns()
        self._offset_at = self.opened_at = time.monotonic()
        log.info("bpf sensor: %d programs attached from %s", len(self.attached), path)

    def _teardown(self, obj: BpfObject | None) -> None:
        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if obj is not None:
            obj.close()

    def poll(self, timeout_s: float) -> list[Event] | None:
        ring = self._ring
        if ring is None:
            raise KernelError("bpf sensor polled before open()", location=Location("tp_events.bpf.o"))
        if not ring.pending_bytes() and timeout_s > 0:
            time.sleep(timeout_s)
        now = time.monotonic()
        if now - self._offset_at > 10.0:  # follow wall-clock steps
            self._offset = boot_to_wall_ns()
            self._offset_at = now
        out: list[Event] = []
        offset = self._offset
        for rec in ring.drain():
            try:
                out.append(decode(rec, offset))
            except DecodeError as exc:
                self.decode_errors += 1
                log.warning("undecodable record dropped: %s", exc)
        self.events += len(out)
        return out

    def drops(self) -> int:
        return sum_percpu_u64(self._drops) if self._drops is not None else 0

    def ring_fill(self) -> float:
        if self._ring is None:
            return 0.0
        return self._ring.pending_bytes() / self.ring_bytes

    def stats(self) -> dict[str, int]:
        return {
            "events": self.events,
            "drops": self.drops(),
            "decode_errors": self.decode_errors,
            "programs": len(self.attached),
        }

    def close(self) -> None:
        obj, self._obj = self._obj, None
        self._teardown(obj)
        self._drops = None


__all__ = ["BpfSensor", "EVENT_CLASSES", "event_mask", "boot_to_wall_ns"]
