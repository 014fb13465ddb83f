"""The live sensor: Bastion's tracepoint programs and their ring buffer.

Declares ``tp_events.bpf.o`` to the one loader (:mod:`bastion.kernel.loader`)
with its configuration for ``.rodata`` (own tgid to ignore, optional cgroup
scope, enabled event types) and its ring size; the loader checks the ABI,
attaches every program all or nothing (``on_fchmodat2`` may be absent) and
drains the ring, counting undecodable records.  The sensor polls in timed
batches and keeps the counters the agent reports.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Final, Iterable, Sequence

from bastion import abi
from bastion.abi import EVENT_CLASSES
from bastion.errors import KernelError, Location
from bastion.events import Event, decode
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object
from bastion.sensors.sensitive import DEFAULT_SENSITIVE, SensEntry, entry_bytes, resolve

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
    ) -> None:
        """``sensitive``: the patterns of the sensitive read set (empty: no read-open
        is reported outside learn mode); resolved to inodes at open and again every
        ``sensitive_refresh_s`` (a replaced /etc/shadow has a new inode)."""
        self.classes = tuple(classes)
        self.mask = event_mask(self.classes)
        self.self_tgid = self_tgid
        self.cgroup_id = cgroup_id
        self.obj_path = obj_path
        self.open_reads = open_reads
        self.ring_bytes = ring_bytes
        self._lo: LoadedObject | None = None
        self.opened_at = 0.0
        self.sensitive = tuple(sensitive)
        self.sensitive_refresh_s = sensitive_refresh_s
        self._resolve = resolve_sensitive
        self._sens: dict[bytes, SensEntry] = {}
        self._sens_at = 0.0

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=self.obj_path or bpf_object("tp_events.bpf.o"),
            rodata={
                "cfg_self_tgid": self.self_tgid,
                "cfg_cgroup_id": self.cgroup_id,
                "cfg_event_mask": self.mask,
                "cfg_open_reads": int(self.open_reads),
                "cfg_sensitive": int(bool(self.sensitive)),
            },
            max_entries={"events": self.ring_bytes},
            optional=OPTIONAL_PROGRAMS,
        )

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
        for k in [k for k in self._sens if k not in fresh]:
            m.delete(k)
            del self._sens[k]
        for k, (v, e) in fresh.items():
            old = self._sens.get(k)
            if old is None or entry_bytes(old)[1] != v:
                m.update(k, v)
            self._sens[k] = e
        self._sens_at = time.monotonic()
        return len(self._sens)

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
        if self.sensitive and time.monotonic() - self._sens_at >= self.sensitive_refresh_s:
            self.refresh_sensitive()
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


__all__ = ["BpfSensor", "EVENT_CLASSES", "OPTIONAL_PROGRAMS", "event_mask"]
