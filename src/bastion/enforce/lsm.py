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
from pathlib import Path

from bastion import abi
from bastion.errors import KernelError, Location
from bastion.events import Event, decode
from bastion.kernel.clock import deadline_ns
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object

log = logging.getLogger("bastion.enforce.lsm")

def inode_key(path: Path) -> bytes:
    st = os.stat(path)
    return bytes(abi.InodeKey(ino=st.st_ino, dev=abi.kernel_dev(st.st_dev)))


class _ScopedLsmObject(LoaderUser):
    """One scoped LSM object through the loader: attach all, drain, close."""

    name = "lsm"
    OBJECT = ""

    def __init__(self, *, cgroup_id: int, deadline_s: float | None, self_tgid: int = 0) -> None:
        self.cgroup_id = cgroup_id
        self.deadline_ns = deadline_ns(deadline_s)
        self.self_tgid = self_tgid
        self._lo: LoadedObject | None = None

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=bpf_object(self.OBJECT),
            rodata={"cfg_cgroup_id": self.cgroup_id, "cfg_deadline_ns": self.deadline_ns,
                    "cfg_self_tgid": self.self_tgid},
            max_entries={"events": abi.SMALL_RINGBUF_BYTES},
        )

    def open(self) -> None:
        self._lo = LoadedObject.load(self.spec())

    def _need(self, what: str) -> LoadedObject:
        if self._lo is None or self._lo.closed:
            raise KernelError(f"{type(self).__name__} used before open()", location=Location(what))
        return self._lo

    def _update(self, map_name: str, key: bytes, value: bytes, what: str) -> None:
        self._need(what).map(map_name).update(key, value)

    def poll(self, timeout_s: float = 0.0) -> list[Event] | None:
        lo = self._need(self.OBJECT)
        lo.wait(timeout_s)
        return lo.drain(decode)

    def close(self) -> None:
        if self._lo is not None:
            self._lo.close()


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


__all__ = ["BpfLoadGuard", "ScopedDeny", "inode_key"]
