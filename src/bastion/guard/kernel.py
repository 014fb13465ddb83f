"""The tamper BPF objects: load or adopt, fill, pin, drain, remove.

``TamperKernel("lsm")`` loads ``lsm_tamper.bpf.o`` (refuse in the LSM hook);
``TamperKernel("compat")`` loads ``tamper_compat.bpf.o`` (kill the sender
from tracepoints).  Scope and the dead-man deadline go into ``.rodata``
before load.  Maps are pinned at ``<pin_dir>/maps/<name>`` and links at
``<pin_dir>/links/<program>``: the programs keep enforcing when the process
that loaded them dies, and :meth:`TamperKernel.open` adopts existing pins
without detaching anything (no gap).  Loading, attaching, pinning, adopting
and draining are the one loader's (:mod:`bastion.kernel.loader`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from bastion import abi
from bastion.tier import Tier
from bastion.errors import DecodeError, KernelError, Location
from bastion.guard.identity import Identity
from bastion.guard.protect import F_SUBTREE, ProtectedSet
from bastion.kernel import bpffs
from bastion.kernel.btf import setattr_has_idmap
from bastion.kernel.clock import deadline_ns
from bastion.kernel.libbpf import Map, obj_get
from bastion.kernel.loader import LoadedObject, LoaderUser, ObjectSpec
from bastion.paths import bpf_object

log = logging.getLogger("bastion.guard.kernel")

OBJECTS: Final = {"lsm": "lsm_tamper.bpf.o", "compat": "tamper_compat.bpf.o"}
PINNED_MAPS: Final = ("tamper_idents", "tamper_tids", "tamper_objs", "tamper_sbs",
                      "tamper_map_ids", "tamper_link_ids", "events", "drops")


def fd_object_id(fd: int) -> tuple[str, int] | None:
    """("map"|"link"|"prog", kernel id) of a BPF fd, from /proc/self/fdinfo."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("map_id", "link_id", "prog_id"):
            return k[:-3], int(v)
    return None


def pinned_ids(root: Path) -> dict[str, set[int]]:
    """Kernel ids of every map/link/prog pinned under ``root`` (recursively)."""
    out: dict[str, set[int]] = {"map": set(), "link": set(), "prog": set()}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                fd = obj_get(Path(dirpath) / f)
            except KernelError:
                continue
            try:
                kid = fd_object_id(fd)
            finally:
                os.close(fd)
            if kid is not None:
                out[kid[0]].add(kid[1])
    return out


@dataclass(frozen=True)
class TamperRecord:
    """One decoded bastion_tamper_event."""

    time_ns: int
    pid: int
    tid: int
    ppid: int
    uid: int
    euid: int
    cgroup_id: int
    comm: str
    exe: str
    op: str
    verdict: str
    ret: int
    target_pid: int
    arg: int
    ino: int
    dev: int
    obj_id: int
    path: str

    def to_json(self) -> dict[str, int | str]:
        return dict(self.__dict__)


def decode(rec: bytes, boot_to_wall_ns: int) -> TamperRecord:
    if len(rec) < 8 or int.from_bytes(rec[0:2], "little") != abi.TamperRecord.EV_TAMPER:
        raise DecodeError("not a tamper record", location=Location("tamper ring"))
    size = ctypes.sizeof(abi.TamperEvent)
    e = abi.TamperEvent.from_buffer_copy(rec.ljust(size, b"\0")[:size])
    h = e.hdr
    try:
        op = abi.TamperOp(e.op).name.lower().replace("_", "-")
    except ValueError:
        op = f"op-{e.op}"
    return TamperRecord(
        time_ns=int(h.ts_ns) + boot_to_wall_ns, pid=int(h.tgid), tid=int(h.pid), ppid=int(h.ppid),
        uid=int(h.uid), euid=int(h.euid), cgroup_id=int(h.cgroup_id),
        comm=bytes(h.comm).split(b"\0")[0].decode(errors="replace"),
        exe=bytes(e.exe).split(b"\0")[0].decode(errors="replace"), op=op,
        verdict="denied" if e.verdict == abi.TamperVerdict.DENIED else "killed",
        ret=int(e.ret), target_pid=int(e.target_pid), arg=int(e.arg), ino=int(e.ino),
        dev=int(e.dev), obj_id=int(e.obj_id),
        path=bytes(e.path).split(b"\0")[0].decode(errors="replace"))


def enrolled_identities(pin_dir: Path) -> list[Identity]:
    """The identities (guardian, agent) enrolled in the pinned ``tamper_idents`` under
    ``pin_dir`` (``<pin root>/tamper``), read without loading anything: what a control
    client checks a server against (only an enrolled process can write that map)."""
    m = Map.open_pinned(pin_dir / "maps" / "tamper_idents")
    try:
        out = []
        for k in list(m.keys()):
            v = m.lookup(k)
            if v is not None:
                out.append(Identity.from_map(k, v))
        return out
    finally:
        m.close()


def protected_subtree(pin_dir: Path, path: Path) -> bool:
    """Is directory ``path`` protected as a whole (``F_SUBTREE``) by the tamper protection
    pinned under ``pin_dir``?  Its inode is looked up in the pinned ``tamper_objs``, which
    only an enrolled guardian fills: a directory made by someone else is not there.
    OSError when ``path`` cannot be read."""
    st = os.stat(path)
    key = bytes(abi.InodeKey(ino=st.st_ino, dev=abi.kernel_dev(st.st_dev)))
    m = Map.open_pinned(pin_dir / "maps" / "tamper_objs")
    try:
        raw = m.lookup(key)
    finally:
        m.close()
    return raw is not None and bool(abi.TamperObj.from_buffer_copy(raw).flags & F_SUBTREE)


class TamperKernel(LoaderUser):
    """Tamper protection in the kernel for one tier, pinned under ``pin_dir``."""

    def __init__(self, tier: Tier, *, pin_dir: Path, cgroup_id: int = 0,
                 deadline_s: float | None = None) -> None:
        if tier not in OBJECTS:
            raise KernelError(f"unknown tamper tier {tier!r}", errno=errno.EINVAL,
                              location=Location("tamper"))
        self.tier = tier
        self.pin_dir = pin_dir
        self.cgroup_id = cgroup_id
        self.deadline_ns = deadline_ns(deadline_s)
        self._lo: LoadedObject | None = None
        self._own_map_ids: set[int] = set()

    # ---- lifecycle ------------------------------------------------------------------

    def _pinned(self) -> ObjectSpec:
        """The pinned set of this tier (enough to adopt it; no object file needed)."""
        return ObjectSpec(path=Path(OBJECTS[self.tier]), pin_dir=self.pin_dir,
                          pin_maps=PINNED_MAPS)

    def spec(self) -> ObjectSpec:
        """The object of this tier to load, with its scope in ``.rodata``."""
        rodata: dict[str, int | bytes] = {"cfg_cgroup_id": self.cgroup_id,
                                          "cfg_deadline_ns": self.deadline_ns}
        if self.tier == Tier.LSM:
            rodata["cfg_setattr_idmap"] = int(setattr_has_idmap())
        return replace(self._pinned(), path=bpf_object(OBJECTS[self.tier]), rodata=rodata)

    def pins_complete(self) -> bool:
        """Is a complete pinned set of this tier there (so :meth:`open` adopts it)?"""
        return self._pinned().pins_complete()

    def open(self) -> bool:
        """Adopt the pins when complete (True), else load, attach and pin (False)."""
        bpffs.ensure_bpffs()
        pinned = self._pinned()
        if pinned.pins_complete():
            self._lo = LoadedObject.adopt(pinned)
            return True
        if self.pin_dir.exists():
            bpffs.remove_pins(self.pin_dir)     # a half-made set from a crash mid-load
        self._lo = LoadedObject.load(self.spec())
        # every map of the object (rodata, scratch too) is ours
        ids = [fd_object_id(m.fd) for m in self._lo.maps()]
        self._own_map_ids = {i[1] for i in ids if i is not None}
        return False

    def close(self) -> None:
        """Release this process's handles; pins (and so enforcement) stay."""
        if self._lo is not None:
            self._lo.close()

    def remove(self) -> list[Path]:
        """Break-glass: detach every link and remove the pins (needs our identity)."""
        for link in self._lo.links.values() if self._lo is not None else ():
            try:
                link.detach()
            except KernelError as exc:
                # tracepoint links have no LINK_DETACH (EOPNOTSUPP): unpinning and closing
                # below detaches them; anything else is worth a warning
                (log.debug if exc.errno == errno.EOPNOTSUPP else log.warning)(
                    "tamper: detach %s: %s", link.description, exc)
        self.close()
        return bpffs.remove_pins(self.pin_dir) if self.pin_dir.exists() else []

    # ---- configuration ----------------------------------------------------------------

    def _map(self, name: str) -> Map:
        if self._lo is None or self._lo.closed:
            raise KernelError("tamper protection is not open", errno=errno.EBADF,
                              location=Location(str(self.pin_dir)))
        return self._lo.map(name)

    def register(self, ident: Identity) -> None:
        """Enrol ``ident`` and the threads it has now (the kernel adds the ones it makes)."""
        self._map("tamper_idents").update(ident.key(), ident.value())
        self.seed_threads(ident.tgid)

    def seed_threads(self, tgid: int) -> int:
        """Put the non-leader thread ids of ``tgid`` into ``tamper_tids``; how many."""
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{tgid}/task") if t.isdigit()]
        except OSError:
            return 0
        m = self._map("tamper_tids")
        n = 0
        for tid in tids:
            if tid != tgid:
                m.update(tid.to_bytes(4, "little"), tgid.to_bytes(4, "little"))
                n += 1
        return n

    def unregister(self, tgid: int) -> bool:
        tids = self._map("tamper_tids")
        mine = tgid.to_bytes(4, "little")
        for k in list(tids.keys()):
            if tids.lookup(k) == mine:
                tids.delete(k)
        return self._map("tamper_idents").delete(tgid.to_bytes(4, "little"))

    def identities(self) -> list[Identity]:
        m = self._map("tamper_idents")
        out = []
        for k in list(m.keys()):
            v = m.lookup(k)
            if v is not None:
                out.append(Identity.from_map(k, v))
        return out

    def protect(self, ps: ProtectedSet) -> None:
        """Make ``ps`` the protected set (adds, then removes what left it)."""
        objs = self._map("tamper_objs")
        want = {bytes(abi.InodeKey(ino=o.ino, dev=o.dev)): bytes(abi.TamperObj(o.flags, o.oid))
                for o in ps.objects}
        for k, v in want.items():
            objs.update(k, v)
        for k in list(objs.keys()):
            if k not in want:
                objs.delete(k)
        sbs = self._map("tamper_sbs")
        devs = set(ps.devs)
        try:
            devs.add(abi.kernel_dev(os.stat(self.pin_dir).st_dev))
        except OSError:
            pass
        for d in devs:
            sbs.update(d.to_bytes(4, "little"), (1).to_bytes(4, "little"))

    def protect_bpf(self, *roots: Path) -> dict[str, int]:
        """Protect our own maps/links and everything pinned under ``roots`` by kernel id."""
        ids = pinned_ids(self.pin_dir)
        for r in roots:
            for kind, s in pinned_ids(r).items():
                ids[kind] |= s
        ids["map"] |= self._own_map_ids
        for kind, name in (("map", "tamper_map_ids"), ("link", "tamper_link_ids")):
            m = self._map(name)
            for i in ids[kind]:
                m.update(i.to_bytes(4, "little"), (1).to_bytes(4, "little"))
        return {k: len(v) for k, v in ids.items()}

    # ---- events -------------------------------------------------------------------------

    def poll(self) -> list[TamperRecord]:
        """Tamper records since the last call; undecodable ones are counted, not raised."""
        if self._lo is None or self._lo.closed:
            return []
        return self._lo.drain(decode)


__all__ = ["OBJECTS", "TamperKernel", "enrolled_identities", "protected_subtree", "TamperRecord", "decode", "fd_object_id", "pinned_ids",
           "setattr_has_idmap"]
