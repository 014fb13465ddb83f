"""The kernel's provenance maps (``bpf/lib/prov.h``; bastion.h "provenance"): what the
provenance gate reads and what user space fills (the temp dirs and interpreters the
policy names, the reasons only user space knows)."""

from __future__ import annotations

import errno
import os
import stat
import struct
from contextlib import contextmanager
from typing import Callable, Final, Iterator, Mapping, Protocol, Sequence

from bastion import abi
from bastion.errors import ConfigError, KernelError, Location
from bastion.policy.compile import kernel_dev
from bastion.procstat import TICK_NS, pidfd_of, start_ns_of

_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_U64: Final = struct.Struct("<Q")
TMP_DIRS: Final = ("/tmp", "/var/tmp", "/dev/shm", "/run/shm")

# shells and interpreters whose first non-option argument is the script they run, with
# the option letters that mean "code follows, no script" (detect/behavior/provenance.py)
INTERPRETERS: Final[Mapping[str, str]] = {
    "sh": "cs", "dash": "cs", "bash": "cs", "zsh": "cs", "ksh": "cs", "mksh": "cs",
    "busybox": "cs", "python3": "cm", "python": "cm", "perl": "eE", "ruby": "e",
    "node": "ep", "php": "r",
}
INTERPRETER_DIRS: Final = ("/bin", "/usr/bin", "/usr/local/bin")


def letters_mask(letters: str) -> int:
    """``bastion_prov_interp.code_letters`` of option letters."""
    out = 0
    for c in letters:
        if "a" <= c <= "z":
            out |= 1 << (ord(c) - ord("a"))
        elif "A" <= c <= "Z":
            out |= 1 << (26 + ord(c) - ord("A"))
        else:
            raise ConfigError(f"option letter {c!r} is not a-z or A-Z",
                              location=Location("provenance interpreters"))
    return out


def reason_names(bits: int) -> list[str]:
    out = [name for bit, name in abi.PROV_REASONS.items() if bits & bit]
    return out + ["untracked"] if bits & abi.PROV_UNTRACKED else out


class MapLike(Protocol):
    def lookup(self, key: bytes) -> bytes | None: ...
    def update(self, key: bytes, value: bytes, flags: int = ...) -> None: ...
    def delete(self, key: bytes) -> bool: ...


class ProvenanceMap:
    """The kernel's provenance maps (``prov``, ``prov_dirs``, ``prov_interp``,
    ``prov_errors`` of the event sensor's object): what the gate reads and what
    user space fills.

    ``pidfd_keys``: ``prov`` is task-local storage (ABI 2.5, bpf/lib/prov_map.h), keyed
    from user space by a pidfd of the process (``os.pidfd_open``); without it (the
    unit tests' dicts) by the tgid."""

    def __init__(self, prov: MapLike, dirs: MapLike, interp: MapLike,
                 errors: MapLike | None = None, dir_inodes: MapLike | None = None,
                 lost: MapLike | None = None, *, pidfd_keys: bool = False) -> None:
        self.prov, self.dirs, self.interp, self.errors_map = prov, dirs, interp, errors
        self.dir_inodes = dir_inodes
        self.lost = lost   # prov_lost: processes whose entry the kernel could not make
        self.pidfd_keys = pidfd_keys
        self._dirs: list[bytes] = []
        self._dir_inodes: list[bytes] = []
        self._interp: list[bytes] = []

    @contextmanager
    def _key(self, tgid: int) -> Iterator[bytes | None]:
        """The ``prov`` key of process ``tgid``: a pidfd (closed after), or None when
        there is no such process (gone, or a thread id: a thread has no entry of its
        own, its process's is the leader's)."""
        if not self.pidfd_keys:
            yield _U32.pack(tgid)
            return
        try:
            fd = pidfd_of(tgid)   # None: gone, or a thread's id (ENOENT on 6.9+, EINVAL before)
        except ValueError:
            yield None
            return
        except OSError as e:
            raise KernelError(f"pidfd_open({tgid}): {e.strerror}", errno=e.errno or 0,
                              location=Location("prov")) from e
        if fd is None:
            yield None
            return
        try:
            yield _I32.pack(fd)
        finally:
            os.close(fd)

    def _lookup(self, key: bytes) -> abi.ProvVal | None:
        try:
            raw = self.prov.lookup(key)
        except KernelError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT):   # the pidfd's process exited
                return None
            raise
        if raw is None:
            return None
        val = abi.ProvVal.from_buffer_copy(raw)
        # an empty entry an LSM gate made to read the actor (prov_actor_settle in
        # bpf/lib/prov_map.h): no reason and no start, read as no entry
        return None if not val.reasons and not val.start_ns else val

    def get(self, tgid: int) -> abi.ProvVal | None:
        with self._key(tgid) as key:
            return self._lookup(key) if key is not None else None

    def add(self, tgid: int, start_ns: int, bits: int, *, tolerance_ns: int = 0) -> bool:
        """OR ``bits`` into the live process ``tgid`` started at ``start_ns`` (the
        reasons only user space knows).  Another process under the same pid is left
        alone; returns whether the bits were written.  ``tolerance_ns``: a start time
        read from /proc is in clock ticks (``TICK_NS``).

        With pidfd keys the write cannot reach another process: the pidfd is opened
        first, the start checked after (the entry's, or /proc's for a process without
        one: the pidfd's process while it lives), and the update goes to the pidfd's
        process or fails (ESRCH).  A tgid-keyed write could land on a process that
        took the pid between the check and the write."""
        with self._key(tgid) as key:
            if key is None:
                return False
            cur = self._lookup(key)
            if cur is not None:
                if abs(cur.start_ns - start_ns) > tolerance_ns:
                    return False
            elif self.pidfd_keys and abs(start_ns_of(tgid) - start_ns) > max(tolerance_ns,
                                                                             TICK_NS):
                return False                # gone, or another process under the pid
            val = abi.ProvVal(start_ns=start_ns, reasons=bits | (cur.reasons if cur else 0),
                              origin_tgid=cur.origin_tgid if cur else tgid)
            try:
                self.prov.update(key, bytes(val))
            except KernelError as e:
                # exited since the check: ESRCH while a zombie, ENOENT once reaped (the
                # pidfd's pid has no task: bpf_pid_task_storage_update_elem) -- gone,
                # nothing to publish, not an entry the map could not take
                if e.errno in (errno.ESRCH, errno.ENOENT):
                    return False
                if cur is not None or self.lost is None or self.errors_map is None:
                    raise
                self._lose(tgid, start_ns)   # no memory for the entry: fail closed
                return False
            return True

    def _lose(self, tgid: int, start_ns: int) -> None:
        """What ``prov_lose`` does in the kernel (bpf/lib/prov.h), from user space: count
        the failed update (slot 0), keep ``tgid`` in ``prov_lost`` (slot 1 if that fails)."""
        assert self.lost is not None
        self._count(0)
        try:
            self.lost.update(_U32.pack(tgid), _U64.pack(start_ns))
        except KernelError:
            self._count(1)

    def _count(self, slot: int) -> None:
        assert self.errors_map is not None
        raw = self.errors_map.lookup(_U32.pack(slot))
        cur = _U64.unpack(raw)[0] if raw is not None else 0
        self.errors_map.update(_U32.pack(slot), _U64.pack(cur + 1))

    def untracked(self, tgid: int) -> bool:
        """Whether ``tgid``, which has no entry, may be a tainted process whose entry the
        kernel could not make: in ``prov_lost``, or any process once ``prov_lost``
        overflowed too.  False at once while no entry ever failed (the normal case)."""
        if self.lost is None or not self.errors():
            return False
        if self.lost_errors():
            return True
        return self.lost.lookup(_U32.pack(tgid)) is not None

    def set_dirs(self, paths: Sequence[str]) -> None:
        """The temp dirs whose binaries and scripts are untrusted (replaces the set)."""
        keys: list[bytes] = []
        for p in paths:
            if not p.startswith("/"):
                raise ConfigError(f"provenance dir {p!r} is not absolute", location=Location(p))
            base = os.path.normpath(p).encode()
            for pfx in (base.rstrip(b"/") + b"/", base.rstrip(b"/") + b"\0"):
                if len(pfx) > abi.PROV_PREFIX_LEN:
                    raise ConfigError(f"provenance dir longer than {abi.PROV_PREFIX_LEN - 1} "
                                      f"bytes", location=Location(p))
                keys.append(bytes(abi.ProvPrefix(prefixlen=8 * len(pfx), path=pfx)))
        for k in self._dirs:
            if k not in keys:
                self.dirs.delete(k)
        for k in keys:
            self.dirs.update(k, _U32.pack(1))
        self._dirs = keys
        if self.dir_inodes is None:
            return
        inodes: list[bytes] = []
        for p in paths:
            try:
                st = os.stat(p)   # a tmpfs mounted there: its root, as the walk meets it
            except OSError:
                continue          # named by prefix only until it exists (next set_dirs)
            inodes.append(bytes(abi.InodeKey(ino=st.st_ino, dev=kernel_dev(st.st_dev))))
        for k in self._dir_inodes:
            if k not in inodes:
                self.dir_inodes.delete(k)
        for k in inodes:
            self.dir_inodes.update(k, _U32.pack(1))
        self._dir_inodes = inodes

    def set_interpreters(self, interps: Sequence[tuple[str, str]]) -> int:
        """(path, code letters) of the shells and interpreters whose script argument is
        checked at exec, by inode; paths that do not exist are skipped.  Returns how
        many inodes were set."""
        keys: dict[bytes, bytes] = {}
        for path, letters in interps:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            k = bytes(abi.InodeKey(ino=st.st_ino, dev=kernel_dev(st.st_dev)))
            keys[k] = bytes(abi.ProvInterp(code_letters=letters_mask(letters)))
        for k in self._interp:
            if k not in keys:
                self.interp.delete(k)
        for k, v in keys.items():
            self.interp.update(k, v)
        self._interp = list(keys)
        return len(keys)

    def errors(self) -> int:
        """Entries of ``prov`` the kernel could not make (no memory): processes not
        tracked."""
        return self._slot(0)

    def lost_errors(self) -> int:
        """Failed updates of ``prov_lost``: from the first, untracked processes cannot be
        told apart (every one counts as untracked until the sensor is reloaded)."""
        return self._slot(1)

    def gate_null_refusals(self) -> int:
        """Must-stop acts the LSM gates refused because the actor's entry could not be
        read even with ``F_CREATE`` (task storage busy on a preempt=full 6.1 kernel, or
        no memory): slot 2, s16-sig."""
        return self._slot(2)

    def _slot(self, slot: int) -> int:
        if self.errors_map is None:
            return 0
        raw = self.errors_map.lookup(_U32.pack(slot))
        return _U64.unpack(raw)[0] if raw is not None else 0


def default_interpreters() -> list[tuple[str, str]]:
    return [(f"{d}/{name}", letters) for name, letters in INTERPRETERS.items()
            for d in INTERPRETER_DIRS]



REASON_BITS: Final[Mapping[str, int]] = {
    **{name: bit for bit, name in abi.PROV_REASONS.items()}, "admin-tty": abi.PROV_ADMIN_TTY}


def publisher(prov: ProvenanceMap,
              descendants: Callable[[int], list[tuple[int, int]]] | None = None,
              ) -> Callable[[tuple[int, int], str], None]:
    """The Provenance rule's ``publish``: a reason of process ``(pid, start_ns)`` ORed
    into the kernel map (start_ns is the event header's, the kernel's own clock, so an
    entry of a reused pid never takes it).  An unknown reason is an error.

    ``descendants(pid)``: its live descendants, (pid, start_ns) (the process table's
    :meth:`~bastion.proctable.ProcessTable.live_descendants`): a reason user space
    learns after the process forked reaches the children it already has too (the
    kernel copies an entry only at fork).  The reason is written to the process first,
    so every fork after that inherits it in the kernel; then to the descendants found,
    and the walk is repeated until it finds none without the reason (a child forked by
    a descendant before that descendant's entry was written).  The window left: a
    descendant that left the tree (its parent exited: reparented to init or a
    subreaper) before its fork reached the loop and before the walk; ``admin-tty`` is
    the session shell's own and not spread."""

    def publish(key: tuple[int, int], reason: str) -> None:
        bit = REASON_BITS.get(reason)
        if bit is None:
            raise ConfigError(f"no kernel bit for provenance reason {reason!r}",
                              location=Location("bastion.sensors.provenance"))
        prov.add(key[0], key[1], bit)
        if descendants is None or bit == abi.PROV_ADMIN_TTY:
            return
        written: set[int] = set()
        for _ in range(4):
            fresh = [(p, s) for p, s in descendants(key[0]) if p not in written]
            if not fresh:
                return
            for pid, start_ns in fresh:
                written.add(pid)
                prov.add(pid, start_ns, bit, tolerance_ns=TICK_NS)

    return publish


__all__ = ["INTERPRETERS", "REASON_BITS", "publisher", "MapLike", "ProvenanceMap", "TMP_DIRS", "default_interpreters",
           "letters_mask", "reason_names"]
