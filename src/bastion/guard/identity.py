"""The identity of the agent and its guardian: tgid + start time + executable inode.

A pid alone is not an identity: after the agent dies its pid can be reused
by any process.  The BPF side matches a task only when all three agree:
the tgid, the group leader's start time in USER_HZ ticks (``/proc/PID/stat``
field 22, which the kernel derives from ``start_boottime``) and the inode
of its executable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from bastion.abi import TamperIdent as IdentValue
from bastion.abi import kernel_dev
from bastion.errors import KernelError, Location
from bastion.procstat import read_stat

ROLE_AGENT: Final = 1
ROLE_GUARDIAN: Final = 2
# the agent's event writer process (bastion.store.eventproc): a direct child of the agent,
# enrolled by the agent so that it may write the protected store (issue 16.3)
ROLE_WRITER: Final = 3
ROLE_NAMES: Final = {ROLE_AGENT: "agent", ROLE_GUARDIAN: "guardian", ROLE_WRITER: "writer"}


@dataclass(frozen=True)
class Identity:
    tgid: int
    start_ticks: int
    exe_ino: int
    exe_dev: int       # kernel dev_t
    role: int

    @classmethod
    def of(cls, pid: int, role: int) -> Identity:
        """The identity of a live process (KernelError if it is gone)."""
        try:
            ps = read_stat(pid)
            st = os.stat(f"/proc/{pid}/exe")
        except OSError as exc:
            raise KernelError(f"cannot read the identity of pid {pid}: {exc.strerror}",
                              errno=exc.errno or 0, location=Location(f"/proc/{pid}")) from exc
        except ValueError as exc:
            raise KernelError(f"cannot read the identity of pid {pid}: {exc}",
                              location=Location(f"/proc/{pid}/stat")) from exc
        return cls(pid, ps.start_ticks, st.st_ino, kernel_dev(st.st_dev), role)

    def alive(self) -> bool:
        """Is this exact process still running (not a pid reuse)?"""
        try:
            return Identity.of(self.tgid, self.role) == self
        except KernelError:
            return False

    def key(self) -> bytes:
        return self.tgid.to_bytes(4, "little")

    def value(self) -> bytes:
        return bytes(IdentValue(self.start_ticks, self.exe_ino, self.exe_dev, self.role))

    @classmethod
    def from_map(cls, key: bytes, value: bytes) -> Identity:
        v = IdentValue.from_buffer_copy(value)
        return cls(int.from_bytes(key, "little"), int(v.start_ticks), int(v.exe_ino),
                   int(v.exe_dev), int(v.role))

    def to_json(self) -> dict[str, int | str]:
        return {"pid": self.tgid, "start_ticks": self.start_ticks, "exe_ino": self.exe_ino,
                "exe_dev": self.exe_dev, "role": ROLE_NAMES.get(self.role, str(self.role))}


__all__ = ["Identity", "IdentValue", "ROLE_AGENT", "ROLE_GUARDIAN", "ROLE_NAMES", "ROLE_WRITER"]
