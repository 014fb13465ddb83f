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
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

from bastion import abi
from bastion.tier import Tier
from bastion.errors import DecodeError, KernelError, Location
from bastion.guard.identity import Identity
from bastion.guard.protect import F_SUBTREE, ProtectedSet
from bastion.integrity import bpfinfo
from bastion.kernel import bpffs
from bastion.kernel.btf import map_birth_hooks, setattr_has_idmap
from bastion.kernel.clock import deadline_ns
from bastion.kernel.libbpf import Map, obj_get
from bastion.kernel.loader import (LoadedObject, LoaderUser, ObjectSpec, live_objects,
                                  program_names)
from bastion.paths import bpf_object

log = logging.getLogger("bastion.guard.kernel")

OBJECTS: Final = {"lsm": "lsm_tamper.bpf.o", "compat": "tamper_compat.bpf.o"}
#: The lsm object's map-birth programs not loaded, by "the kernel has the 6.9+ hooks":
#: the pair named for the other kernels (bpf/lsm_tamper.bpf.c, tamper_born_maps).
MAP_BIRTH_PROGRAMS: Final = {True: frozenset({"tamper_map_alloc", "tamper_map_free_sec"}),
                             False: frozenset({"tamper_map_create", "tamper_map_free"})}
#: The programs (= pinned link names) that protect our maps from their creation, per
#: tier: one complete group must be attached or adopted (:meth:`TamperKernel.map_birth_gap`).
MAP_BIRTH_LINKS: Final = {"lsm": (("tamper_map_create", "tamper_map_free"),
                                  ("tamper_map_alloc", "tamper_map_free_sec")),
                          "compat": (("tamper_bpf_ret",),)}
#: The program that guards the executable identity (``prctl(PR_SET_MM, EXE_FILE|MAP)``,
#: bpf/lib/tamper.h), per tier (:meth:`TamperKernel.exe_identity_gap`).
EXE_IDENTITY_LINKS: Final = {"lsm": (("tamper_prctl",),),
                             "compat": (("tamper_prctl", "tamper_prctl_ret"),)}
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


def fd_ids(fd: int) -> dict[str, int]:
    """Every kernel id /proc/self/fdinfo names for a BPF fd: a map's ``map``; a program's
    ``prog``; a link's ``link`` and the ``prog`` it runs."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in ("map_id", "link_id", "prog_id"):
            out.setdefault(k[:-3], int(v))
    return out


def our_pin_names(tier: str | None = None,
                  tamper_links: Collection[str] | None = None) -> frozenset[Path]:
    """The paths (relative to the pin root) our objects may pin: the tamper objects' under
    ``tamper/``, the HIPS matcher's under ``hips/``, as their specs declare them
    (:meth:`bastion.kernel.loader.ObjectSpec.pin_names`): both tiers' objects, or with
    ``tier`` that tier's only (s21 review F6: on compat, ``tamper/links/tamper_task_kill``
    of the lsm object is a name nothing of ours pins, free for root's own link); with
    ``tamper_links`` (the armed object's attached programs) exactly those under
    ``tamper/links/``.  An object file that cannot be opened adds its maps only (its links
    are registered by the process that loads it)."""
    from bastion.enforce import hips_kernel

    out: set[Path] = set()
    for sub, objects, maps in (("tamper", OBJECTS, PINNED_MAPS),
                               ("hips", hips_kernel.OBJECTS, hips_kernel.MAPS)):
        if sub == "tamper" and tamper_links is not None:
            out |= {Path(sub) / "maps" / m for m in maps}
            out |= {Path(sub) / "links" / n for n in tamper_links}
            continue
        for t, f in objects.items():
            if tier is not None and t != tier:
                continue
            spec = ObjectSpec(path=bpf_object(f), pin_dir=Path(sub), pin_maps=maps)
            try:
                out |= spec.pin_names()
            except KernelError as exc:
                log.warning("tamper: %s: program names unknown, its pinned links are not "
                            "walked: %s", f, exc)
                out |= {Path(sub) / "maps" / m for m in maps}
    return frozenset(out)


#: How many entries one walk reads from each directory listing under the pin root (d_type
#: only, never opened): root may put a million names there; ours are looked up by name.
#: A budget per directory (only ours are listed: a handful), so a flood in one (the pin
#: root's top) cannot starve the listings of the others (tamper/, hips/).
PIN_WALK_LISTED: Final = 1024


def _mnt_id(fd: int) -> int:
    """The id of the mount ``fd`` is on (-1 when unknown): :func:`bpffs.mount_id`."""
    return bpffs.mount_id(fd)


def pin_root_mount(root: Path) -> int:
    """The id of the mount the pin root ``root`` itself is on (opened ``O_PATH|O_NOFOLLOW``:
    a mount over ``root`` gives that mount's id); -1 when it cannot be opened.  The
    guardian records it when it arms and compares every pass (:func:`pinned_ids` ``mount``)."""
    try:
        fd = os.open(root, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return -1
    try:
        return _mnt_id(fd)
    finally:
        os.close(fd)


def _fs_type(mnt: int) -> str:
    """The filesystem type of mount ``mnt`` ("" when unknown), from mountinfo (a FUSE
    mount's line is printed without asking its server)."""
    try:
        with open("/proc/thread-self/mountinfo", "rb") as fh:
            for ln in fh.read().decode(errors="replace").splitlines():
                f = ln.split()
                if f and int(f[0]) == mnt and " - " in ln:
                    return ln.split(" - ", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        pass
    return ""


#: The pin root must be a directory of this filesystem (tests of the walk's logic on a
#: plain directory widen it).
PIN_FS: frozenset[str] = frozenset({"bpf"})


def pinned_ids(root: Path, names: Collection[Path] | None = None,
               foreign: list[Path] | None = None,
               cut: list[Path] | None = None,
               mount: int | None = None,
               tier: str | None = None) -> dict[str, set[int]]:
    """Kernel ids of the maps/links pinned under ``root`` at ``names`` (relative paths;
    default :func:`our_pin_names` of ``tier``) and nothing else: a ``maps/`` name gives a map id, a
    ``links/`` name a link id and the program behind it.  So root can add at most
    ``len(names)`` ids through the pin root, whatever it pins there.

    The walk cannot follow a symlink or leave the pin root's bpffs mount, and cannot
    block: ``root`` is opened ``O_PATH|O_NOFOLLOW`` and must be a directory on a bpffs
    mount (:data:`PIN_FS`, read from /proc, not from the filesystem); each of our names
    is opened one component at a time, ``O_PATH|O_NOFOLLOW`` relative to its parent's
    fd, and taken only when it is on that same mount (a mount over it is not entered)
    and, by fstat of that fd, a real directory or a regular file (a pin); the pin is
    opened through that fd's /proc magic link, so ``BPF_OBJ_GET``'s path walk reaches
    the very inode checked (a symlink swapped in after the check is not followed).
    Every other entry (a pin, directory or symlink someone else made, or one of our
    names of the wrong kind) is appended to ``foreign``, from the directory listing's
    d_type, and never opened; at most :data:`PIN_WALK_LISTED` entries are read from each
    directory's listing, a directory whose listing was cut short is appended to ``cut``.
    With ``mount`` (the pin root's mount id when the guardian armed), a pin root now on
    another mount (a bpffs mounted over it) is not walked: nothing there is ours."""
    want = our_pin_names(tier) if names is None else frozenset(Path(n) for n in names)
    kids: dict[Path, dict[str, bool]] = {}      # dir -> {child name: is a directory}
    for n in want:
        parts = Path(n).parts
        for i, part in enumerate(parts):
            kids.setdefault(Path(*parts[:i]), {})[part] = i < len(parts) - 1
    out: dict[str, set[int]] = {"map": set(), "link": set(), "prog": set()}

    def strange(p: Path) -> None:
        if foreign is not None:
            foreign.append(root / p)

    def child(dfd: int, rel: Path, mnt: int) -> tuple[int, os.stat_result] | None:
        try:
            fd = os.open(rel.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return None
        if _mnt_id(fd) != mnt:                  # a mount over our name: never stat it
            os.close(fd)
            strange(rel)
            return None
        return fd, os.fstat(fd)

    def walk(dfd: int, rel: Path, mnt: int) -> None:
        ours = kids.get(rel, {})
        listed = 0
        try:
            lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            lfd = -1
        if lfd >= 0:
            try:
                with os.scandir(lfd) as it:
                    for e in it:
                        if listed >= PIN_WALK_LISTED:
                            if cut is not None:
                                cut.append(root / rel)
                            break
                        listed += 1
                        try:
                            isdir = e.is_dir(follow_symlinks=False)
                            isreg = e.is_file(follow_symlinks=False)
                        except OSError:
                            continue                # gone since the listing
                        expect_dir = ours.get(e.name)
                        if expect_dir is None or not (isdir if expect_dir else isreg):
                            strange(rel / e.name)
            except OSError:
                pass
            finally:
                os.close(lfd)
        for name, isdir in sorted(ours.items()):
            p = rel / name
            got = child(dfd, p, mnt)
            if got is None:
                continue
            fd, st = got
            try:
                if isdir:
                    if stat.S_ISDIR(st.st_mode):
                        walk(fd, p, mnt)
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue                        # the listing names it foreign
                kind = "link" if p.parent.name == "links" else "map"
                try:
                    ofd = obj_get(f"/proc/self/fd/{fd}")
                except KernelError:
                    continue
                try:
                    ids = fd_ids(ofd)
                finally:
                    os.close(ofd)
                if kind not in ids:
                    strange(p)                  # a map pinned under a link's name, or back
                    continue
                for k, kid in ids.items():
                    if k == kind or (kind == "link" and k == "prog"):
                        out[k].add(kid)
            finally:
                os.close(fd)

    try:
        rfd = os.open(root, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return out
    try:
        mnt = _mnt_id(rfd)
        if mount is not None and mnt != mount:
            log.warning("tamper: the pin root %s is on another mount (%d, armed on %d): not "
                        "walked", root, mnt, mount)
            return out
        fs = _fs_type(mnt)
        if fs not in PIN_FS:
            log.warning("tamper: the pin root %s is not on bpffs (%r): not walked", root,
                        fs or "unknown")
            return out
        walk(rfd, Path(), mnt)
    finally:
        os.close(rfd)
    return out


def program_map_ids(prog_ids: Iterable[int],
                    cache: dict[int, tuple[int, ...]] | None = None) -> set[int]:
    """The ids of every map the programs ``prog_ids`` use (their ``.rodata``, ``.bss``,
    scratch and task-storage maps too: prog info ``map_ids``); a program gone since is
    skipped.  A program's maps never change, so ``cache`` (prog id -> map ids) is safe."""
    out: set[int] = set()
    for pid in prog_ids:
        got = cache.get(pid) if cache is not None else None
        if got is None:
            ids = bpfinfo.prog_map_ids(pid)
            if ids is None:
                continue
            got = tuple(ids)
            if cache is not None:
                cache[pid] = got
        out.update(got)
    return out


def object_ids(lo: LoadedObject,
               cache: dict[int, tuple[int, ...]] | None = None) -> dict[str, set[int]]:
    """The kernel ids of one loaded (or adopted) object: every map of it and every map its
    programs use, its links, its programs."""
    out: dict[str, set[int]] = {"map": set(), "link": set(), "prog": set()}
    fds: list[int] = [m.fd for m in lo.maps()] + [link.fd for link in lo.links.values()]
    if lo.obj is not None:
        for p in lo.obj.programs():
            try:
                fds.append(p.fd)
            except KernelError:
                continue        # not loaded (autoload off)
    for fd in fds:
        for kind, kid in fd_ids(fd).items():
            out[kind].add(kid)
    out["map"] |= program_map_ids(out["prog"], cache)
    return out


def add_ids(m: Map, ids: Iterable[int], exists: Callable[[int], bool]) -> int:
    """Put ``ids`` into the id set ``m`` (u32 -> 1); how many were new.  When the set is
    full, ids whose object is gone (``exists`` says no) are taken out first."""
    have = {int.from_bytes(k, "little") for k in m.keys()}
    new = sorted(set(ids) - have)
    one = (1).to_bytes(4, "little")
    for i, kid in enumerate(new):
        try:
            m.update(kid.to_bytes(4, "little"), one)
        except KernelError as exc:
            if exc.errno != errno.E2BIG:
                raise
            gone = [k for k in have if not exists(k)]
            if not gone:
                raise KernelError(f"{m.name}: full ({len(have)} ids, none gone): id {kid} and "
                                  f"{len(new) - i - 1} more are not protected", errno=errno.E2BIG,
                                  location=Location(m.name)) from exc
            for k in gone:
                m.delete(k.to_bytes(4, "little"))
            have -= set(gone)
            m.update(kid.to_bytes(4, "little"), one)
        have.add(kid)
    return len(new)


def add_protected(maps: Mapping[str, Map], ids: Mapping[str, set[int]]) -> dict[str, int]:
    """Add map and link ids to ``tamper_map_ids`` / ``tamper_link_ids`` (``maps`` by name);
    how many were new of each."""
    return {"map": add_ids(maps["tamper_map_ids"], ids["map"], bpfinfo.map_exists),
            "link": add_ids(maps["tamper_link_ids"], ids["link"], bpfinfo.link_exists)}


class ObjectGuard:
    """The agent's side of protecting its BPF objects by id, under tamper protection
    pinned at ``tamper_dir``: as a loader hook (:data:`bastion.kernel.loader.LOAD_HOOKS`)
    it puts every map and link of each object the agent loads or adopts, and every map
    its programs use, into the pinned id sets at once (the agent is enrolled: it may
    write them).  :meth:`refresh` does it again for every live object when the pinned
    sets were made anew (protection re-armed after a maintenance window).

    A registration that fails (a set full of live objects' ids: E2BIG) leaves ids
    unprotected: the object's name and the error are kept in :attr:`unprotected` (the
    agent's status reports protection degraded while it is not empty) and queued for
    :meth:`take_failures` (the agent raises a high alert for each)."""

    def __init__(self, tamper_dir: Path) -> None:
        self.maps_dir = tamper_dir / "maps"
        self._cache: dict[int, tuple[int, ...]] = {}
        self._pin_ino = self._ino()
        self.unprotected: dict[str, str] = {}       # object name -> why its ids are not in
        self._failures: list[tuple[str, str]] = []  # not alerted yet

    def _failed(self, what: str, exc: BaseException) -> None:
        if self.unprotected.get(what) != str(exc):      # a retry failing alike: once
            self._failures.append((what, str(exc)))
        self.unprotected[what] = str(exc)

    def take_failures(self) -> list[tuple[str, str]]:
        """The (object, error) registrations that failed since the last call."""
        out, self._failures = self._failures, []
        return out

    def _ino(self) -> int:
        try:
            return os.stat(self.maps_dir / "tamper_map_ids").st_ino
        except OSError:
            return 0

    def __call__(self, lo: LoadedObject) -> None:
        name = lo.spec.path.name
        try:
            self.protect([lo])
        except (KernelError, OSError) as exc:
            self._failed(name, exc)
            raise                               # the loader logs it too
        self.unprotected.pop(name, None)

    def protect(self, objects: Iterable[LoadedObject]) -> dict[str, int]:
        """Add the ids of ``objects``; how many ids, and how many were new, of each kind."""
        ids: dict[str, set[int]] = {"map": set(), "link": set(), "prog": set()}
        names = []
        for lo in objects:
            if lo.closed:
                continue
            names.append(lo.spec.path.name)
            for kind, got in object_ids(lo, self._cache).items():
                ids[kind] |= got
        if not names:
            return {"map": 0, "link": 0, "new_map": 0, "new_link": 0}
        opened: dict[str, Map] = {}
        try:
            for name in ("tamper_map_ids", "tamper_link_ids"):
                opened[name] = Map.open_pinned(self.maps_dir / name)
            new = add_protected(opened, ids)
        finally:
            for m in opened.values():
                m.close()
        log.info("tamper: %s: %d map ids and %d link ids protected (%d, %d new)",
                 ", ".join(names), len(ids["map"]), len(ids["link"]), new["map"], new["link"])
        return {"map": len(ids["map"]), "link": len(ids["link"]), "new_map": new["map"],
                "new_link": new["link"]}

    def refresh(self) -> bool:
        """When the pinned id sets are not the ones filled last (re-armed), fill the new
        ones with every live object (one stat otherwise).  True when it did."""
        ino = self._ino()
        if ino == self._pin_ino or ino == 0:
            return False
        live = live_objects()
        try:
            self.protect(live)
        except (KernelError, OSError) as exc:
            self._failed("every live object (re-armed sets)", exc)
            raise
        self.unprotected.clear()
        self._pin_ino = ino
        return True


def loaded_object_guard(tamper_dir: Path) -> ObjectGuard | None:
    """An :class:`ObjectGuard` under the tamper protection pinned at ``tamper_dir``; None
    without the pins (no protection: nothing to register with)."""
    if not (tamper_dir / "maps" / "tamper_map_ids").exists():
        return None
    return ObjectGuard(tamper_dir)


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
    m = Map.open_pinned(pin_dir / "maps" / "tamper_idents", read_only=True)
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
    m = Map.open_pinned(pin_dir / "maps" / "tamper_objs", read_only=True)
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
        self._prog_maps: dict[int, tuple[int, ...]] = {}   # prog id -> the map ids it uses
        self._own_ids: dict[str, set[int]] | None = None
        # mounts someone put under the pin directory that removing our pins met and left
        # (``bpffs.remove_pins(crossed=)``: never entered): the guardian alerts them
        self.crossed: list[Path] = []

    # ---- lifecycle ------------------------------------------------------------------

    def _pinned(self) -> ObjectSpec:
        """The pinned set of this tier (enough to adopt it; no object file needed)."""
        return ObjectSpec(path=Path(OBJECTS[self.tier]), pin_dir=self.pin_dir,
                          pin_maps=PINNED_MAPS)

    def spec(self) -> ObjectSpec:
        """The object of this tier to load, with its scope in ``.rodata``."""
        rodata: dict[str, int | bytes] = {"cfg_cgroup_id": self.cgroup_id,
                                          "cfg_deadline_ns": self.deadline_ns}
        skip: frozenset[str] = frozenset()
        if self.tier == Tier.LSM:
            rodata["cfg_setattr_idmap"] = int(setattr_has_idmap())
            skip = MAP_BIRTH_PROGRAMS[map_birth_hooks()[0] == "bpf_map_create"]
        return replace(self._pinned(), path=bpf_object(OBJECTS[self.tier]), rodata=rodata,
                       skip=skip)

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
            # a half-made set from a crash mid-load
            bpffs.remove_pins(self.pin_dir, crossed=self.crossed)
        self._lo = LoadedObject.load(self.spec())
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
        return bpffs.remove_pins(self.pin_dir, crossed=self.crossed) \
            if self.pin_dir.exists() else []

    def map_birth_gap(self) -> str:
        """"" when the armed object protects the maps ours create from their creation
        (its map-birth programs attached, or adopted from pins), else why not: pins of
        an older version adopted, or nothing open.  The guardian's status says it and
        raises ``bastion.tamper.map-birth-off``."""
        return self._links_gap(MAP_BIRTH_LINKS[self.tier])

    def exe_identity_gap(self) -> str:
        """"" when the armed object guards the executable identity of every process
        (``tamper_prctl`` attached or adopted), else why not: pins of an older version
        adopted, or nothing open.  The guardian's status says it and raises
        ``bastion.tamper.exe-identity-off``."""
        return self._links_gap(EXE_IDENTITY_LINKS[self.tier])

    def _links_gap(self, groups: tuple[tuple[str, ...], ...]) -> str:
        """"" when one of ``groups`` (program names) is attached or adopted whole."""
        if self._lo is None or self._lo.closed:
            return "tamper protection is not open"
        have = set(self._lo.attached)
        if any(set(g) <= have for g in groups):
            return ""
        want = " or ".join("+".join(g) for g in groups)
        return (f"{'the adopted ' if self._lo.adopted else ''}{OBJECTS[self.tier]} has no "
                f"{want} program{' (pinned by an older version)' if self._lo.adopted else ''}")

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

    def pin_names(self) -> frozenset[Path]:
        """What the pin-root walk takes as ours: this tier's objects' names only, and under
        ``tamper/links/`` exactly the programs the armed object attached or adopted (the
        other tier's, and the map-birth pair this kernel skips, are free names root could
        pin its own links under)."""
        links: list[str] | None = None
        if self._lo is not None:
            # adopted links are every name under tamper/links/ (a restarted guardian):
            # only the programs of this tier's ELF, so a link root pinned there at a
            # name of its own is no name of ours
            try:
                elf: frozenset[str] | None = program_names(bpf_object(OBJECTS[self.tier]))
            except KernelError:
                elf = None
            links = [n for n in self._lo.attached if elf is None or n in elf]
        return our_pin_names(self.tier, tamper_links=links)

    def protect_bpf(self, root: Path | None = None, *, prog_ids: Iterable[int] = (),
                    foreign: list[Path] | None = None,
                    cut: list[Path] | None = None,
                    mount: int | None = None) -> dict[str, int]:
        """Protect our BPF objects by kernel id: this object's maps and links, the maps and
        links our objects pin under the pin root ``root`` (:func:`pinned_ids`: only the
        names our specs pin, never a symlink, never blocking; anything else there goes to
        ``foreign``, a directory whose listing was cut short to ``cut``; not walked when
        the pin root is no longer on ``mount``),
        and every map a program of ours uses even when that map is not pinned
        (``.bss``/``.data``, scratch, task storage such as the HIPS verdict cache): this
        object's own programs (their ids kept from the first pass, at arm) and
        ``prog_ids``; a program found behind a pinned link is expanded only when it is one
        of those (s21 review F6: root's link under a free name of ours put its program's 64
        maps in the set; the agent registers its own objects' maps, :class:`ObjectGuard`).  Run
        again whenever objects may have been (re)loaded: only ids not in the sets yet are
        written.  Counts of each kind, and ``new_map``/``new_link``; KernelError (E2BIG)
        when a set is full of live objects' ids."""
        ids: dict[str, set[int]] = {"map": set(), "link": set(), "prog": set()}
        parts = [pinned_ids(root, self.pin_names(), foreign=foreign, cut=cut, mount=mount)
                 ] if root is not None else []
        if self._lo is not None and not self._lo.closed:
            if self._own_ids is None:           # this object's ids never change
                self._own_ids = object_ids(self._lo, self._prog_maps)
            parts.append(self._own_ids)
        for part in parts:
            for kind, s in part.items():
                ids[kind] |= s
        loaded = set(prog_ids) | (self._own_ids["prog"] if self._own_ids is not None else set())
        ids["prog"] |= set(prog_ids)
        ids["map"] |= program_map_ids(ids["prog"] & loaded, self._prog_maps)
        new = add_protected({n: self._map(n) for n in ("tamper_map_ids", "tamper_link_ids")}, ids)
        return {**{k: len(v) for k, v in ids.items()}, "new_map": new["map"],
                "new_link": new["link"]}

    # ---- events -------------------------------------------------------------------------

    def poll(self) -> list[TamperRecord]:
        """Tamper records since the last call; undecodable ones are counted, not raised."""
        if self._lo is None or self._lo.closed:
            return []
        return self._lo.drain(decode)


__all__ = ["OBJECTS", "MAP_BIRTH_LINKS", "MAP_BIRTH_PROGRAMS", "TamperKernel", "add_ids",
           "add_protected", "enrolled_identities", "fd_ids",
           "ObjectGuard", "loaded_object_guard", "object_ids", "our_pin_names", "PIN_WALK_LISTED",
           "pin_root_mount",
           "program_map_ids", "protected_subtree",
           "TamperRecord", "decode", "fd_object_id", "pinned_ids", "setattr_has_idmap"]
