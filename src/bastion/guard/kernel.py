"""The tamper BPF objects: load or adopt, fill, pin, drain, remove.

``TamperKernel("lsm")`` loads ``lsm_tamper.bpf.o`` (refuse in the LSM hook);
``TamperKernel("compat")`` loads ``tamper_compat.bpf.o`` (kill the sender
from tracepoints).  Scope and the dead-man deadline go into ``.rodata``
before load.  Maps are pinned at ``<pin_dir>/maps/<name>`` and links at
``<pin_dir>/links/<program>``: the programs keep enforcing when the process
that loaded them dies, and :meth:`TamperKernel.open` adopts existing pins
without detaching anything (no gap).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bastion import abi
from bastion.errors import KernelError, Location
from bastion.guard.identity import Identity
from bastion.guard.protect import ProtectedSet
from bastion.kernel import bpffs
from bastion.kernel.btf import Btf
from bastion.kernel.libbpf import BpfObject, Link, Map, obj_get
from bastion.kernel.ringbuf import RingBuffer
from bastion.paths import bpf_object

log = logging.getLogger("bastion.guard.kernel")

OBJECTS: Final = {"lsm": "lsm_tamper.bpf.o", "compat": "tamper_compat.bpf.o"}
PINNED_MAPS: Final = ("tamper_idents", "tamper_objs", "tamper_sbs", "tamper_map_ids",
                      "tamper_link_ids", "events", "drops")
_BTF_KIND_FUNC: Final = 12
_VMLINUX_BTF: Final = Path("/sys/kernel/btf/vmlinux")


def setattr_has_idmap(btf_path: Path = _VMLINUX_BTF) -> bool:
    """Does this kernel's ``inode_setattr`` LSM hook take a leading mnt_idmap (6.3+)?"""
    with Btf.parse(btf_path) as btf:
        fid = btf.find("bpf_lsm_inode_setattr", _BTF_KIND_FUNC)
        if fid is None:
            raise KernelError("kernel BTF has no bpf_lsm_inode_setattr (no BPF LSM?)",
                              errno=errno.ENOENT, location=Location(str(btf_path)))
        proto = btf.get_type(btf.get_type(fid).size_or_type)
        return int(proto.vlen) == 3


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
        raise KernelError("not a tamper record", errno=errno.EINVAL, location=Location("tamper ring"))
    e = abi.TamperEvent.from_buffer_copy(rec.ljust(ctypes_size(), b"\0")[:ctypes_size()])
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


def ctypes_size() -> int:
    import ctypes

    return ctypes.sizeof(abi.TamperEvent)


def _boot_to_wall_ns() -> int:
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class TamperKernel:
    """Tamper protection in the kernel for one tier, pinned under ``pin_dir``."""

    def __init__(self, tier: str, *, pin_dir: Path, cgroup_id: int = 0,
                 deadline_s: float | None = None) -> None:
        if tier not in OBJECTS:
            raise KernelError(f"unknown tamper tier {tier!r}", errno=errno.EINVAL,
                              location=Location("tamper"))
        self.tier = tier
        self.pin_dir = pin_dir
        self.cgroup_id = cgroup_id
        self.deadline_ns = (time.clock_gettime_ns(time.CLOCK_BOOTTIME) + int(deadline_s * 1e9)
                            if deadline_s else 0)
        self.adopted = False
        self._obj: BpfObject | None = None
        self._links: dict[str, Link] = {}
        self._maps: dict[str, Map] = {}
        self._ring: RingBuffer | None = None
        self.decode_errors = 0

    # ---- lifecycle ------------------------------------------------------------------

    def _complete_pins(self) -> bool:
        links = self.pin_dir / "links"
        return (all((self.pin_dir / "maps" / m).exists() for m in PINNED_MAPS)
                and links.is_dir() and any(links.iterdir()))

    def open(self) -> bool:
        """Adopt the pins when complete (True), else load, attach and pin (False)."""
        bpffs.ensure_bpffs()
        if self._complete_pins():
            self._adopt()
            self.adopted = True
            return True
        if self.pin_dir.exists():
            bpffs.remove_pins(self.pin_dir)     # a half-made set from a crash mid-load
        self._load()
        return False

    def _adopt(self) -> None:
        try:
            for name in PINNED_MAPS:
                self._maps[name] = Map.open_pinned(self.pin_dir / "maps" / name)
            for p in sorted((self.pin_dir / "links").iterdir()):
                self._links[p.name] = Link.open_pinned(p)
            self._ring = RingBuffer(self._maps["events"])
        except BaseException:
            self.close()
            raise
        log.info("tamper: adopted %d links and %d maps from %s", len(self._links),
                 len(self._maps), self.pin_dir)

    def _load(self) -> None:
        path = bpf_object(OBJECTS[self.tier])
        rodata: dict[str, int | bytes] = {"cfg_cgroup_id": self.cgroup_id,
                                          "cfg_deadline_ns": self.deadline_ns}
        if self.tier == "lsm":
            rodata["cfg_setattr_idmap"] = int(setattr_has_idmap())
        obj = BpfObject.open(path, rodata=rodata)
        try:
            abi.check_abi_version(int.from_bytes(obj.read_rodata("bastion_abi_version"), "little"),
                                  str(path))
            obj.load()
            bpffs.pin_dir(self.pin_dir / "maps")
            bpffs.pin_dir(self.pin_dir / "links")
            for name in PINNED_MAPS:
                m = obj.map(name)
                m.pin(self.pin_dir / "maps" / name)
                self._maps[name] = Map.from_fd(m.fd)
            for prog in obj.programs():
                link = prog.attach()
                self._links[prog.name] = link
                link.pin(self.pin_dir / "links" / prog.name)
            self._ring = RingBuffer(self._maps["events"])
            # every map of the object (rodata, scratch too) is ours
            ids = [fd_object_id(m.fd) for m in obj.maps()]
            self._own_map_ids = {i[1] for i in ids if i is not None}
        except BaseException:
            for link in self._links.values():
                link.destroy()
            self._links.clear()
            self.close()
            obj.close()
            if self.pin_dir.exists():
                bpffs.remove_pins(self.pin_dir)
            raise
        self._obj = obj

    def close(self) -> None:
        """Release this process's handles; pins (and so enforcement) stay."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        for link in self._links.values():
            link.destroy()       # pinned: stays attached
        self._links.clear()
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def remove(self) -> list[Path]:
        """Break-glass: detach every link and remove the pins (needs our identity)."""
        for link in self._links.values():
            try:
                link.detach()
            except KernelError as exc:
                log.warning("tamper: detach %s: %s", link.description, exc)
        self.close()
        return bpffs.remove_pins(self.pin_dir) if self.pin_dir.exists() else []

    # ---- configuration ----------------------------------------------------------------

    def _map(self, name: str) -> Map:
        m = self._maps.get(name)
        if m is None:
            raise KernelError("tamper protection is not open", errno=errno.EBADF,
                              location=Location(str(self.pin_dir)))
        return m

    def register(self, ident: Identity) -> None:
        self._map("tamper_idents").update(ident.key(), ident.value())

    def unregister(self, tgid: int) -> bool:
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
            devs.add(_kdev(os.stat(self.pin_dir).st_dev))
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
        ids["map"] |= getattr(self, "_own_map_ids", set())
        for kind, name in (("map", "tamper_map_ids"), ("link", "tamper_link_ids")):
            m = self._map(name)
            for i in ids[kind]:
                m.update(i.to_bytes(4, "little"), (1).to_bytes(4, "little"))
        return {k: len(v) for k, v in ids.items()}

    # ---- events -------------------------------------------------------------------------

    def poll(self) -> list[TamperRecord]:
        if self._ring is None:
            return []
        off = _boot_to_wall_ns()
        out = []
        for rec in self._ring.drain():
            try:
                out.append(decode(rec, off))
            except KernelError:
                self.decode_errors += 1
        return out

    def drops(self) -> int:
        m = self._maps.get("drops")
        if m is None:
            return 0
        return sum(int.from_bytes(v[:8], "little") for v in m.lookup_percpu((0).to_bytes(4, "little")))


def _kdev(st_dev: int) -> int:
    return (os.major(st_dev) << 20) | os.minor(st_dev)


__all__ = ["OBJECTS", "TamperKernel", "TamperRecord", "decode", "fd_object_id", "pinned_ids",
           "setattr_has_idmap"]
