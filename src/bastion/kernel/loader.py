"""The one BPF object loader: every Bastion object goes through it.

An :class:`ObjectSpec` declares what one object needs; the loader owns the
lifecycle, written once for the sensor, the HIPS matcher, the quarantine, the
tamper objects and the scoped LSM objects:

1. open the ELF with its ``.rodata`` configuration (``const volatile``
   globals: scope, dead-man deadline, the agent's tgid …);
2. refuse an object compiled against another ABI (``bastion_abi_version``);
3. size the maps that are sized at run time (the ring's byte size …) and share the
   maps named in ``reuse_maps`` with the object that owns them (``bpf_map__reuse_fd``);
4. load (verifier errors name the program);
5. attach every program, all or nothing: when one fails, everything already
   attached is detached before the error propagates.  Programs listed in
   ``optional`` (a hook an older kernel lacks) may be missing; ``cgroup/*``
   programs attach to ``cgroup`` (the cgroup v2 root by default);
6. map the ring buffer (and the priority ring of an object with two: ``prio_ring``);
7. with ``pin_dir``, pin ``pin_maps`` at ``pin_dir/maps/<name>`` and every
   link at ``pin_dir/links/<program>``, so enforcement outlives the process;
   :meth:`LoadedObject.adopt` reopens such a set later without a gap.

:meth:`LoadedObject.drain` decodes the ring's records with the caller's
decoder and a periodically refreshed wall-clock offset (an object with a priority
ring: every priority record first, merged in time order with the bulk records of
the batch, :meth:`LoadedObject.drain_raw`); a record that does
not decode is counted in ``decode_errors`` and logged, never raised into the
caller's event loop.  :meth:`LoadedObject.close` releases everything; pinned
links stay attached unless ``unpin``.  It detaches tracepoint links concurrently
(:func:`destroy_links`: a tracepoint detach waits for RCU grace periods).
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from bastion import abi
from bastion.errors import DecodeError, KernelError, Location
from bastion.kernel import bpffs
from bastion.kernel.clock import WallOffset, boot_ns
from bastion.kernel.libbpf import BpfObject, Link, Map
from bastion.kernel.ringbuf import RingBuffer

log = logging.getLogger("bastion.kernel.loader")

T = TypeVar("T")

#: A priority record waits in user space at most this long (kernel boot time) for the
#: older bulk records of a backlog, so that a payload's exec does not come before the
#: fork or the write-open that preceded it; past it, it goes out ahead of them.  500 ms
#: (s23 review 3: 1 s delayed every priority finding and kill-after by 1 s behind any
#: unprivileged chmod loop); a fork that comes after its child's exec no longer gives the
#: child the parent's image (ProcessTable.update) or takes its own taint (Provenance).
PRIO_HOLD_NS = 500_000_000

_TS = struct.Struct("<Q")
_TS_AT = 8      # bastion_event_hdr.ts_ns


def _ts(rec: bytes) -> int:
    return _TS.unpack_from(rec, _TS_AT)[0] if len(rec) >= _TS_AT + 8 else 0


@dataclass(frozen=True)
class ObjectSpec:
    """What one BPF object needs; :func:`LoadedObject.load` does the rest."""

    path: Path
    rodata: Mapping[str, int | bytes] = field(default_factory=dict)
    ring: str | None = "events"          # the ring buffer map drained by LoadedObject.drain
    max_entries: Mapping[str, int] = field(default_factory=dict)  # set before load (a ring's bytes)
    optional: frozenset[str] = frozenset()  # programs whose hook may be absent on this kernel
    skip: frozenset[str] = frozenset()      # programs not loaded (others do their work on this kernel)
    cgroup: Path | None = None           # where cgroup/* programs attach (None: cgroup v2 root)
    pin_dir: Path | None = None          # pin maps and links below it (None: nothing is pinned)
    pin_maps: tuple[str, ...] = ()       # the maps pinned, and reopened by adopt()
    drops: str | None = "drops"          # the per-CPU u64 counter of failed ring reserves
    reuse_maps: Mapping[str, int] = field(default_factory=dict)  # map name -> another object's map fd (shared)
    prio_ring: str | None = None         # a second ring drained first (the sensors': events_prio)
    prio_drops: str | None = None        # its failed reserves (same slots as ``drops``)

    @property
    def maps_dir(self) -> Path:
        return self._pins() / "maps"

    @property
    def links_dir(self) -> Path:
        return self._pins() / "links"

    def _pins(self) -> Path:
        if self.pin_dir is None:
            raise KernelError("this object is not pinned (no pin_dir)", errno=errno.EINVAL,
                              location=Location(str(self.path)))
        return self.pin_dir

    def pinned_links(self) -> list[str]:
        """Names of the links pinned under ``pin_dir`` (sorted; [] when none)."""
        return pinned_links(self._pins())

    def pin_names(self) -> frozenset[Path]:
        """Every path this object may pin (under ``pin_dir``): ``maps/<name>`` for each of
        ``pin_maps`` and ``links/<program>`` for each program of its ELF, whether or not it
        is attached.  What a walk of a pin root may take as ours (nothing else there is)."""
        d = self._pins()
        return frozenset([*(d / "maps" / m for m in self.pin_maps),
                          *(d / "links" / p for p in program_names(self.path))])

    def pins_complete(self) -> bool:
        """Is a whole set pinned: every ``pin_maps`` map and at least one link?"""
        return (all((self.maps_dir / m).exists() for m in self.pin_maps)
                and bool(self.pinned_links()))


_PROGRAM_NAMES: dict[Path, frozenset[str]] = {}


def program_names(path: Path) -> frozenset[str]:
    """The names of the programs in the ELF at ``path`` (opened, not loaded; cached: an
    object file does not change under a running process)."""
    got = _PROGRAM_NAMES.get(path)
    if got is None:
        obj = BpfObject.open(path)
        try:
            got = frozenset(p.name for p in obj.programs())
        finally:
            obj.close()
        _PROGRAM_NAMES[path] = got
    return got


def pinned_links(pin_dir: Path) -> list[str]:
    """Names of the links pinned at ``pin_dir/links`` (sorted; [] when none)."""
    d = pin_dir / "links"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


#: Called, by name, with every object once it is loaded (attached, pinned) or adopted.
#: The assembly sets ``tamper`` under tamper protection so that each object's maps and
#: links (and every map its programs use) are protected by id as soon as they exist
#: (:func:`bastion.guard.kernel.loaded_object_guard`).  A failing hook is logged as an
#: error; the object stays loaded (the tamper hook also keeps the failure: a high alert
#: and degraded protection in the agent's status).
LOAD_HOOKS: dict[str, Callable[[LoadedObject], None]] = {}


#: Every object loaded or adopted in this process and not closed yet.
_LIVE: weakref.WeakSet[LoadedObject] = weakref.WeakSet()


def live_objects() -> list[LoadedObject]:
    """The objects this process has loaded or adopted and not closed."""
    return [lo for lo in list(_LIVE) if not lo.closed]


def _run_load_hooks(lo: LoadedObject) -> None:
    _LIVE.add(lo)
    for name, hook in list(LOAD_HOOKS.items()):
        try:
            hook(lo)
        except (KernelError, OSError) as exc:
            log.error("%s: load hook %s failed: %s", lo.spec.path.name, name, exc)


_CLOSE_THREADS = 16

# Attachments through perf events: detaching one waits for RCU grace periods
# (perf_trace_event_unreg -> tracepoint_synchronize_unregister).
_PERF_SECTIONS = ("tracepoint/", "tp/", "raw_tp/", "raw_tracepoint/", "kprobe/",
                  "kretprobe/", "uprobe", "uretprobe")


def _detaches_concurrently(link: object) -> bool:
    section = getattr(link, "section", "")
    return isinstance(section, str) and section.startswith(_PERF_SECTIONS)


def destroy_links(links: list[Link]) -> None:
    """Destroy ``links`` (detaching those not pinned); perf-event attachments on up to
    16 threads at once, every other link (LSM, fentry/fexit, tp_btf: trampolines; a link
    opened from a pin) one after the other on the caller's thread.

    Detaching a tracepoint link waits for RCU grace periods in the kernel: one after the
    other, the compat sensor's 56 links took 3.6 s to close on a 2-CPU host; concurrent
    detaches share the grace periods (1.9 s).  Trampoline links stay sequential (they were
    the first suspect of the VM suite's soft lockup; s21 found that to be qemu's
    multi-threaded TCG re-running a stale int3 after any kernel text patch, with no BPF
    object loaded at all: docs/testing-vm.md).  Each detach is atomic on its own and a closing object's links all go, so
    the order never mattered; every link is destroyed before this returns (a thread
    that cannot start leaves its share to the caller's thread), also when one destroy
    or the wait raises (s21 review F10: a signal handler's exception during ``join``
    returned with detaches in flight on other threads, and the links after a failing
    one were never destroyed): every link is still destroyed, every thread joined, and
    then the first exception is raised (the others logged)."""
    errors: list[BaseException] = []

    def one(link: Link) -> None:
        try:
            link.destroy()
        except BaseException as exc:    # noqa: BLE001 -- raised below once all are done
            errors.append(exc)

    perf = [link for link in links if _detaches_concurrently(link)]
    rest = [link for link in links if not _detaches_concurrently(link)]
    try:
        for link in rest:
            one(link)
        if len(perf) <= 1:
            for link in perf:
                one(link)
            return
        n = min(len(perf), _CLOSE_THREADS)
        # s24 review: every link is *claimed* (dict.setdefault: atomic) by the one thread
        # that destroys it, and has its own done event.  A thread whose start() a
        # signal's exception interrupted may still run later, or never: it can only
        # take links nobody claimed, and the caller claims every link left and then
        # waits for every link's event (s24 lead: a thread with an ident that did not
        # count as alive was not waited for; review: one without an ident yet had its
        # share run on the caller *and* on itself, not waited for either, and the
        # caller returned with that share's detaches in flight)
        claims: dict[int, object] = {}
        finished = [threading.Event() for _ in perf]

        def run(token: object, first: int) -> None:
            # its share first (perf[first::n], the detaches spread over the threads),
            # then whatever no one has claimed
            for k in [*range(first, len(perf), n), *range(len(perf))]:
                if claims.setdefault(k, token) is token and not finished[k].is_set():
                    try:
                        one(perf[k])
                    finally:
                        finished[k].set()

        for j in range(1, n):
            t = threading.Thread(target=run, args=(object(), j), name="bastion-link-close",
                                 daemon=True)
            try:
                t.start()
            except RuntimeError:            # no thread to be had (interpreter shutdown ...)
                continue
            except BaseException as exc:    # noqa: BLE001 -- a signal's: it may run or not
                errors.append(exc)
        mine = object()
        while True:
            try:
                # a claim of ours a signal interrupted is run again (destroy is idempotent)
                run(mine, 0)
                for done in finished:
                    done.wait()
                break
            except BaseException as exc:    # noqa: BLE001 -- wait for it all the same
                errors.append(exc)
    finally:
        if errors:
            for other in errors[1:]:
                log.error("destroy links: also %r", other)
            raise errors[0]


class _Ring(Protocol):
    def pending_bytes(self) -> int: ...
    def drain(self, limit: int | None = None) -> list[bytes]: ...
    def close(self) -> None: ...


class _Pinned(Protocol):
    @property
    def pin_path(self) -> Path | None: ...
    def unpin(self) -> None: ...


def _open_cgroup(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise KernelError(f"cannot open cgroup: {exc.strerror}", errno=exc.errno or errno.EIO,
                          location=Location(str(path))) from exc


class LoadedObject:
    """One loaded (or adopted) BPF object: its links, maps, ring and counters."""

    def __init__(self, spec: ObjectSpec, obj: BpfObject | None = None) -> None:
        self.spec = spec
        self.obj = obj
        self.links: dict[str, Link] = {}
        self.attached: list[str] = []        # programs attached (or adopted), kept after close
        self.missing: list[str] = []         # optional programs whose hook is absent
        self.closed = False
        self.ring: _Ring | None = None
        self.prio_ring: _Ring | None = None
        self._held: list[bytes] = []         # priority records waiting for older bulk ones
        self.adopted = False
        self.decoded = 0
        self.decode_errors = 0
        self._drops_at_close = 0
        self._prio_drops_at_close = 0
        self._slots_at_close: dict[str, int] = {}
        self._slots_cache: tuple[int, dict[str, int]] = (0, {})
        self.wall_offset = WallOffset()
        self._maps: dict[str, Map] = {}      # pinned (borrowed from obj) or opened from pins
        self._owned: list[Map] = []          # fds this object closes

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def load(cls, spec: ObjectSpec) -> LoadedObject:
        """Open, check, size, load, attach all or nothing, map the ring, pin."""
        if spec.pin_dir is not None and any(spec.pin_dir.glob("*/*")):
            raise KernelError("pins of a previous load are present: adopt them or remove them",
                              errno=errno.EEXIST, location=Location(str(spec.pin_dir)))
        obj = BpfObject.open(spec.path, rodata=spec.rodata)
        self = cls(spec, obj)
        try:
            version = int.from_bytes(obj.read_rodata("bastion_abi_version"), "little")
            abi.check_abi_version(version, str(spec.path))
            for name, n in spec.max_entries.items():
                obj.map(name).set_max_entries(n)
            for name, fd in spec.reuse_maps.items():
                obj.map(name).reuse_fd(fd)
            for name in sorted(spec.skip):
                obj.set_autoload(name, False)
            obj.load()
            self._attach_all(obj)
            for name in spec.pin_maps:
                self._maps[name] = obj.map(name)
            if spec.ring is not None:
                self.ring = RingBuffer(obj.map(spec.ring))
            if spec.prio_ring is not None:
                self.prio_ring = RingBuffer(obj.map(spec.prio_ring))
            if spec.pin_dir is not None:
                self._pin()
        except BaseException:
            self.close(unpin=True)
            raise
        log.info("%s: %d programs attached%s", spec.path.name, len(self.links),
                 f", pinned at {spec.pin_dir}" if spec.pin_dir is not None else "")
        _run_load_hooks(self)
        return self

    def _attach_all(self, obj: BpfObject) -> None:
        cg_fd = -1
        try:
            for prog in obj.programs():
                if prog.name in self.spec.skip:
                    continue
                try:
                    if prog.section_name.startswith("cgroup/"):
                        if cg_fd < 0:
                            cg_fd = _open_cgroup(self.spec.cgroup or bpffs.cgroup2_root())
                        link = prog.attach_cgroup(cg_fd)
                    else:
                        link = prog.attach()
                except KernelError as exc:
                    if prog.name not in self.spec.optional:
                        raise
                    log.info("hook of %s absent on this kernel: %s", prog.name, exc.message)
                    self.missing.append(prog.name)
                    continue
                self.links[prog.name] = link
                self.attached.append(prog.name)
        finally:
            if cg_fd >= 0:
                os.close(cg_fd)

    def _pin(self) -> None:
        maps = bpffs.pin_dir(self.spec.maps_dir)
        links = bpffs.pin_dir(self.spec.links_dir)
        for name, m in self._maps.items():
            m.pin(maps / name)
        for name, link in self.links.items():
            link.pin(links / name)

    @classmethod
    def adopt(cls, spec: ObjectSpec) -> LoadedObject:
        """Reopen the maps and links a previous process pinned under ``spec.pin_dir``."""
        self = cls(spec)
        try:
            for name in spec.pin_maps:
                m = Map.open_pinned(spec.maps_dir / name)
                self._owned.append(m)
                self._maps[name] = m
            for name in spec.pinned_links():
                self.links[name] = Link.open_pinned(spec.links_dir / name)
                self.attached.append(name)
            if spec.ring is not None:
                self.ring = RingBuffer(self.map(spec.ring))
            if spec.prio_ring is not None:
                self.prio_ring = RingBuffer(self.map(spec.prio_ring))
        except BaseException:
            self.close()
            raise
        self.adopted = True
        log.info("%s: adopted %d links and %d maps from %s", spec.path.name, len(self.links),
                 len(self._maps), spec.pin_dir)
        _run_load_hooks(self)
        return self

    def close(self, *, unpin: bool = False) -> None:
        """Release everything (idempotent).  Pinned links stay attached unless ``unpin``,
        which also removes the pins and the pin directories this object used."""
        if self.ring is not None and self.spec.drops is not None and (
                self.obj is not None or self.spec.drops in self._maps):
            self._drops_at_close = self.sum_percpu_u64(self.spec.drops)  # still readable after
            self._slots_at_close = self._read_drop_slots()
            if self.spec.prio_drops is not None and self.prio_ring is not None:
                self._prio_drops_at_close = self.sum_percpu_u64(self.spec.prio_drops)
        if unpin:
            pins: list[_Pinned] = [*self.links.values(), *self._maps.values()]
            for pinned in pins:
                if pinned.pin_path is not None:
                    try:
                        pinned.unpin()
                    except KernelError as exc:
                        log.warning("cannot unpin %s: %s", pinned.pin_path, exc)
        links = list(self.links.values())
        self.links.clear()
        destroy_links(links)  # detaches unless pinned
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.prio_ring is not None:
            self.prio_ring.close()
            self.prio_ring = None
        self._held.clear()
        for m in self._owned:
            m.close()
        self._owned.clear()
        self._maps.clear()
        if self.obj is not None:
            self.obj.close()
            self.obj = None
        self.closed = True
        _LIVE.discard(self)
        if unpin and self.spec.pin_dir is not None:
            for d in (self.spec.links_dir, self.spec.maps_dir, self.spec.pin_dir):
                try:
                    d.rmdir()
                except OSError:
                    pass  # absent, or holds what is not ours

    # ---- maps --------------------------------------------------------------------------

    def map(self, name: str) -> Map:
        """A map by name: pinned/adopted ones, else the loaded object's."""
        m = self._maps.get(name)
        if m is not None:
            return m
        if self.obj is None:
            raise KernelError(f"no map {name!r}: the object is closed or was adopted without it",
                              errno=errno.ENOENT, location=Location(str(self.spec.path)))
        return self.obj.map(name)

    def maps(self) -> Iterable[Map]:
        """Every map of the loaded object (scratch and .rodata too), or the adopted ones."""
        return self.obj.maps() if self.obj is not None else list(self._maps.values())

    def sum_percpu_u64(self, name: str, key: int = 0) -> int:
        """A per-CPU u64 counter summed over CPUs."""
        vals = self.map(name).lookup_percpu(struct.pack("<I", key))
        return sum(struct.unpack_from("<Q", v)[0] for v in vals)

    def drops(self) -> int:
        """Records lost to a full ring, both rings of an object with two (0 without a drop
        counter; once closed, the count then)."""
        return sum(self.drops_by_ring().values())

    def drops_by_ring(self) -> dict[str, int]:
        """Records lost per ring: ``bulk`` (the one ring of an object with one) and, with a
        priority ring, ``priority``."""
        if self.spec.drops is None:
            return {"bulk": 0}
        if self.closed:
            out = {"bulk": self._drops_at_close}
            if self.spec.prio_drops is not None:
                out["priority"] = self._prio_drops_at_close
            return out
        out = {"bulk": self.sum_percpu_u64(self.spec.drops)}
        if self.spec.prio_drops is not None:
            out["priority"] = self.sum_percpu_u64(self.spec.prio_drops)
        return out

    def drops_by_class(self) -> dict[str, int]:
        """Records lost to a full ring per record type (``exec``, ``file``, ``hips``,
        ``tamper``, ...), the types that lost any; read again only when the total moved."""
        if self.spec.drops is None or self.closed:
            return dict(self._slots_at_close)
        total = self.drops()
        if total == 0:
            return {}
        if total != self._slots_cache[0]:
            self._slots_cache = (total, self._read_drop_slots())
        return dict(self._slots_cache[1])

    def _read_drop_slots(self) -> dict[str, int]:
        """Losses per record type, both rings summed (a file record of the sensitive set
        is lost on the priority ring, the others on the bulk ring: one class ``file``)."""
        assert self.spec.drops is not None
        out: dict[str, int] = {}
        for counter in (self.spec.drops, self.spec.prio_drops):
            if counter is None:
                continue
            m = self.map(counter)
            if m.max_entries < abi.DROP_SLOTS:   # an object built before issue 14.1: no slots
                continue
            for slot in range(1, abi.DROP_SLOTS):
                n = self.sum_percpu_u64(counter, slot)
                if n:
                    name = ("tamper" if slot == abi.DROP_SLOT_TAMPER else
                            abi.EventType(slot).name.lower()
                            if slot in abi.EventType._value2member_map_ else f"slot{slot}")
                    out[name] = out.get(name, 0) + n
        return out

    # ---- the ring ----------------------------------------------------------------------

    def _need_ring(self) -> _Ring:
        if self.ring is None:
            raise KernelError("ring polled before load or after close", errno=errno.EBADF,
                              location=Location(str(self.spec.path)))
        return self.ring

    def pending_bytes(self) -> int:
        """Bytes waiting in the (bulk) ring."""
        return self.ring.pending_bytes() if self.ring is not None else 0

    def prio_pending_bytes(self) -> int:
        """Bytes waiting in the priority ring (0 without one)."""
        return self.prio_ring.pending_bytes() if self.prio_ring is not None else 0

    def wait(self, timeout_s: float) -> None:
        """Sleep ``timeout_s`` unless records are already waiting (batched drain)."""
        if (timeout_s > 0 and not self._need_ring().pending_bytes()
                and not self.prio_pending_bytes() and not self._held):
            time.sleep(timeout_s)

    def drain_raw(self, limit: int | None = None) -> list[bytes]:
        """The records to decode now.  One ring: at most ``limit`` of them.  With a
        priority ring (s23-prioring): ALL of its records (a flood of bulk records never
        keeps one waiting in the kernel, where the next ones would be lost), then at most
        ``limit`` bulk records, merged by time.  While a bulk backlog remains, a priority
        record newer than the last bulk record of the batch stays here (in user space,
        where nothing is lost) until the bulk records before it are drained, at most
        :data:`PRIO_HOLD_NS`: order is kept for the rules (a fork before its exec, a
        write-open before the exec of the file) unless the backlog is older than that."""
        bulk = self._need_ring().drain(limit)
        if self.prio_ring is None:
            return bulk
        prio = self._held + self.prio_ring.drain(None)
        self._held = []
        if not prio:
            return bulk
        if self._need_ring().pending_bytes():          # a backlog: hold the newer ones
            upto = max(_ts(bulk[-1]) if bulk else 0, boot_ns() - PRIO_HOLD_NS)
            out = [r for r in prio if _ts(r) <= upto]
            self._held = [r for r in prio if _ts(r) > upto]
            prio = out
        if not bulk:
            return prio
        return list(heapq.merge(bulk, prio, key=_ts))

    def drain(self, decode: Callable[[bytes, int], T], limit: int | None = None) -> list[T]:
        """Decode the records waiting in the ring (at most ``limit``, None: all of them);
        count and skip the undecodable."""
        offset = self.wall_offset()
        out: list[T] = []
        for rec in self.drain_raw(limit):
            try:
                out.append(decode(rec, offset))
            except DecodeError as exc:
                self.decode_errors += 1
                log.warning("undecodable record from %s dropped: %s", self.spec.path.name, exc)
        self.decoded += len(out)
        return out

    def drain_batch(self, decode_batch: Callable[[list[bytes], int, Callable[[DecodeError], object]], list[T]],
                    limit: int | None = None) -> list[T]:
        """:meth:`drain` with the records decoded in one call (a
        :meth:`bastion.events.RepeatDecoder.decode_batch`): the same events, the
        undecodable counted and logged the same way."""
        def bad(exc: DecodeError) -> None:
            self.decode_errors += 1
            log.warning("undecodable record from %s dropped: %s", self.spec.path.name, exc)

        offset = self.wall_offset()
        out = decode_batch(self.drain_raw(limit), offset, bad)
        self.decoded += len(out)
        return out


class LoaderUser:
    """What every user of the loader reports about its object (held in ``_lo``)."""

    _lo: LoadedObject | None = None

    @property
    def adopted(self) -> bool:
        return self._lo is not None and self._lo.adopted

    @property
    def events(self) -> int:
        """Records decoded from the ring so far."""
        return self._lo.decoded if self._lo is not None else 0

    @property
    def decode_errors(self) -> int:
        """Records dropped because they did not decode."""
        return self._lo.decode_errors if self._lo is not None else 0

    def drops(self) -> int:
        """Records the kernel could not reserve on a full ring."""
        return self._lo.drops() if self._lo is not None else 0

    def stats(self) -> dict[str, int]:
        """Counters; ``drops.<class>`` the losses per record type, ``drops_ring.<ring>``
        per ring (``bulk``, and ``priority`` for an object with two)."""
        by_class = self._lo.drops_by_class() if self._lo is not None else {}
        by_ring = self._lo.drops_by_ring() if self._lo is not None else {}
        return {"events": self.events, "drops": self.drops(), "decode_errors": self.decode_errors,
                **{f"drops.{c}": n for c, n in by_class.items()},
                **({f"drops_ring.{r}": n for r, n in by_ring.items()}
                   if "priority" in by_ring else {}),
                "programs": len(self._lo.attached) if self._lo is not None else 0}


__all__ = ["LOAD_HOOKS", "LoadedObject", "LoaderUser", "ObjectSpec", "live_objects", "pinned_links",
           "program_names"]
