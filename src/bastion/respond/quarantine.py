"""Quarantine: mark a process (and its future descendants) in a kernel map.

Two objects share one map layout (``struct bastion_quarantine_val``):

* ``quarantine.bpf.o`` (compat tier): SIGKILL at the process's next exec,
  write-intent open or connect (tracepoints + ``bpf_send_signal``);
* ``lsm_quarantine.bpf.o`` (lsm tier): -EPERM from ``bprm_check_security``,
  ``file_open`` (write) and ``socket_connect``.

Fork copies the mark to children in the kernel (no race with user space);
exit removes it.  Every enforcement is a ``hips`` record (``rule_id`` = the
incident) on the object's own ring, drained by :meth:`poll` (a record that
does not decode is counted in ``decode_errors``, never raised into the
agent's loop) and turned into findings by :meth:`finding`.  Loading, the
ABI check, attaching and draining are the one loader's
(:mod:`bastion.kernel.loader`).

Scope for tests: ``cgroup_id`` (only tasks of that cgroup are enforced on)
and ``deadline_s`` (dead-man: past it nothing is enforced, even if the test
dies without cleaning up).  The agent uses neither, but passes ``self_tgid``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from bastion import abi
from bastion.tier import Tier
from bastion.detect.engine import Finding
from bastion.errors import KernelError, Location
from bastion.events import Event, HipsEvent, decode
from bastion.kernel.clock import deadline_ns
from bastion.kernel.libbpf import Map
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object

log = logging.getLogger("bastion.respond.quarantine")

OBJECTS = {Tier.COMPAT: "quarantine.bpf.o", Tier.LSM: "lsm_quarantine.bpf.o"}


class Quarantine(LoaderUser):
    """Load with :meth:`open`, mark with :meth:`add`, drain with :meth:`poll`."""

    def __init__(self, *, tier: Tier = Tier.COMPAT, cgroup_id: int = 0, deadline_s: float = 0.0,
                 self_tgid: int = 0, obj_path: Path | None = None) -> None:
        if tier not in OBJECTS:
            raise ValueError(f"unknown tier {tier!r} (compat or lsm)")
        self.tier = tier
        self.cgroup_id = cgroup_id
        self.deadline_s = deadline_s
        self.self_tgid = self_tgid
        self.obj_path = obj_path or bpf_object(OBJECTS[tier])
        self._lo: LoadedObject | None = None
        self.deadline_ns = 0
        self.marked = 0

    def spec(self, deadline: int) -> ObjectSpec:
        return ObjectSpec(
            path=self.obj_path,
            rodata={"cfg_cgroup_id": self.cgroup_id, "cfg_deadline_ns": deadline,
                    "cfg_self_tgid": self.self_tgid},
            max_entries={"events": abi.SMALL_RINGBUF_BYTES},  # rare records
        )

    def open(self) -> None:
        deadline = deadline_ns(self.deadline_s)
        self._lo = LoadedObject.load(self.spec(deadline))
        self.deadline_ns = deadline

    def close(self) -> None:
        if self._lo is not None:
            self._lo.close()

    def __enter__(self) -> Quarantine:
        self.open()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _need_map(self) -> Map:
        if self._lo is None or self._lo.closed:
            raise KernelError("quarantine is not loaded", location=Location(str(self.obj_path)))
        return self._lo.map("quarantined")

    def add(self, pid: int, start_ns: int, incident: int) -> None:
        """Quarantine process ``pid`` (its boot-time start, 0 = any) for ``incident``."""
        val = abi.QuarantineVal(start_ns=start_ns, incident=incident, flags=0)
        self._need_map().update(pid.to_bytes(4, "little"), bytes(val))
        self.marked += 1

    def remove(self, pid: int) -> bool:
        return self._need_map().delete(pid.to_bytes(4, "little"))

    def members(self) -> dict[int, tuple[int, int]]:
        """tgid -> (start_ns, incident) of every marked process."""
        m = self._need_map()
        out: dict[int, tuple[int, int]] = {}
        for k in m.keys():
            raw = m.lookup(k)
            if raw is not None:
                v = abi.QuarantineVal.from_buffer_copy(raw)
                out[int.from_bytes(k, "little")] = (v.start_ns, v.incident)
        return out

    def poll(self) -> list[Event]:
        """Enforcement records since the last call; undecodable ones are counted, not raised."""
        if self._lo is None or self._lo.closed:
            return []
        return self._lo.drain(decode)

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "marked": self.marked}

    @staticmethod
    def finding(ev: HipsEvent) -> Finding:
        verb = "refused" if ev.action == "deny" else "killed at"
        return Finding(
            rule="bastion.quarantine.enforced",
            title=f"Quarantined process {verb} {ev.op}{' of ' + ev.path if ev.path else ''}",
            severity="high", attack=(), action=ev.action, event=ev, pid=ev.proc.pid,
            evidence={"incident": ev.rule_id, "op": ev.op, "path": ev.path},
            enforced_by="lsm/quarantine" if ev.mechanism == "lsm" else "tracepoint/quarantine")


__all__ = ["Quarantine", "OBJECTS"]
