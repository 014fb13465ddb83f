"""lsm tier: small scoped LSM objects that deny in the kernel.

Both load an object with a scope (one cgroup, or every cgroup), the agent's
tgid (exempt) and a dead-man deadline written into ``.rodata`` before load:
past the deadline the hooks allow everything, so enforcement a test forgot
can never outlive its purpose.  Deny decisions come back as ``lsm_deny``
events.

- :class:`ScopedDeny` (``lsm_scoped.bpf.o``): refuse opening or executing
  chosen inodes.
- :class:`BpfLoadGuard` (``lsm_bpfguard.bpf.c``): refuse BPF program loads
  except from allowlisted executables (the integrity guard's response).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from bastion import abi
from bastion.errors import DecodeError, KernelError, Location
from bastion.events import Event, decode
from bastion.kernel.libbpf import BpfObject, Link
from bastion.kernel.ringbuf import RingBuffer
from bastion.paths import bpf_object
from bastion.sensors.bpf import boot_to_wall_ns

log = logging.getLogger("bastion.enforce.lsm")


def kernel_dev(st_dev: int) -> int:
    """User-space dev_t -> the kernel's internal encoding (major << 20 | minor)."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def inode_key(path: Path) -> bytes:
    st = os.stat(path)
    return bytes(abi.InodeKey(ino=st.st_ino, dev=kernel_dev(st.st_dev)))


class _ScopedLsmObject:
    """Load, attach (all or nothing), drain, close one scoped LSM object."""

    name = "lsm"
    OBJECT = ""

    def __init__(self, *, cgroup_id: int, deadline_s: float | None, self_tgid: int = 0) -> None:
        self.cgroup_id = cgroup_id
        self.deadline_ns = (
            time.clock_gettime_ns(time.CLOCK_BOOTTIME) + int(deadline_s * 1e9) if deadline_s else 0
        )
        self.self_tgid = self_tgid
        self._obj: BpfObject | None = None
        self._links: list[Link] = []
        self._ring: RingBuffer | None = None
        self.events = 0
        self.decode_errors = 0

    def open(self) -> None:
        path = bpf_object(self.OBJECT)
        obj = BpfObject.open(path, rodata={
            "cfg_cgroup_id": self.cgroup_id,
            "cfg_deadline_ns": self.deadline_ns,
            "cfg_self_tgid": self.self_tgid,
        })
        try:
            abi.check_abi_version(int.from_bytes(obj.read_rodata("bastion_abi_version"), "little"), str(path))
            obj.map("events").set_max_entries(abi.SMALL_RINGBUF_BYTES)
            obj.load()
            for prog in obj.programs():
                self._links.append(prog.attach())
            self._ring = RingBuffer(obj.map("events"))
        except BaseException:
            for link in self._links:
                link.destroy()
            self._links.clear()
            obj.close()
            raise
        self._obj = obj

    def _update(self, map_name: str, key: bytes, value: bytes, what: str) -> None:
        if self._obj is None:
            raise KernelError(f"{type(self).__name__} used before open()", location=Location(what))
        self._obj.map(map_name).update(key, value)

    def poll(self, timeout_s: float = 0.0) -> list[Event] | None:
        if self._ring is None:
            raise KernelError(f"{type(self).__name__} polled before open()", location=Location(self.OBJECT))
        if timeout_s and not self._ring.pending_bytes():
            time.sleep(timeout_s)
        off = boot_to_wall_ns()
        out: list[Event] = []
        for rec in self._ring.drain():
            try:
                out.append(decode(rec, off))
            except DecodeError as exc:
                self.decode_errors += 1
                log.warning("undecodable lsm record dropped: %s", exc)
        self.events += len(out)
        return out

    def stats(self) -> dict[str, int]:
        return {"events": self.events, "drops": 0, "decode_errors": self.decode_errors}

    def close(self) -> None:
        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None


class ScopedDeny(_ScopedLsmObject):
    OBJECT = "lsm_scoped.bpf.o"

    def deny_inode(self, path: Path, rule_id: int) -> None:
        self._update("deny_inodes", inode_key(path),
                     bytes(abi.InodeRule(rule_id=rule_id, action=1)), str(path))


class BpfLoadGuard(_ScopedLsmObject):
    """Only allowlisted executables may load BPF programs (lsm tier)."""

    name = "bpfguard"
    OBJECT = "lsm_bpfguard.bpf.o"

    def allow(self, exe: Path) -> None:
        """Allow BPF_PROG_LOAD from this executable (symlinks resolved)."""
        self._update("bpf_loaders", inode_key(exe), (1).to_bytes(4, "little"), str(exe))


__all__ = ["BpfLoadGuard", "ScopedDeny", "inode_key", "kernel_dev"]
