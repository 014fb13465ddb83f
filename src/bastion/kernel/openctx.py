"""The open context of the compat fanotify listener (ABI 3.4, s29; ``bastion.h``, "Open
context"; ``bpf/openctx.bpf.c``).

The compiled listener loop decides a read-only open of a write-protected file from the
opener's ``/proc/TID/syscall``.  Those registers describe the open being decided unless
the kernel opens on the thread's behalf in another context (io_uring task work or
workers, a core dump) or a stacked filesystem nests an open of its own (eCryptfs).
Before s29 every such read paid a ``/proc/TID/stack`` read (~16 µs: the kernel names
each frame) to rule those out.  ``openctx.bpf.o`` marks, in a bitmap by thread id, every
thread that enters one of those contexts, at the point where it begins and before it
can open anything; the loop reads the bitmap in place (an mmapped array) and reads the
stack only for a marked thread, or while an eCryptfs mount exists.

What the programs cannot see is what began before they were attached: every bit is set
once they are (:meth:`OpenContext._fill`), a new thread's is cleared as it is created,
and the maps are frozen (no bpf() write or writable mmap of them, root's included; a
BPF program of root's could still write them: the compat tier does not refuse BPF loads,
docs/threat-model.md).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Final

from bastion import abi
from bastion.errors import BastionError, KernelError, Location
from bastion.kernel.btf import iouring_in_kernel
from bastion.hostns import in_init_pid_ns
from bastion.kernel.loader import LoadedObject, ObjectSpec
from bastion.paths import bpf_object

log = logging.getLogger(__name__)

OBJECT: Final = "openctx.bpf.o"
WORDS: Final = abi.OPENCTX_WORDS
# the program on each name io_uring's submission tracepoint has had (6.4+, before)
URING_PROGRAMS: Final = {"oc_uring_submit": "io_uring_submit_req",
                         "oc_uring_submit_sqe": "io_uring_submit_sqe"}
_NR_FSOPEN: Final = 430      # x86-64 and the generic table (arm64) alike
_NR_FSCONFIG: Final = 431
_NR_FSMOUNT: Final = 432
_FSOPEN_CLOEXEC: Final = 0x1
_FSCONFIG_CMD_CREATE: Final = 6
_FSMOUNT_CLOEXEC: Final = 0x1
_MOUNT_ATTR_LOCKED_DOWN: Final = 0x1 | 0x2 | 0x4 | 0x8   # RDONLY NOSUID NODEV NOEXEC


def private_bdi_dir() -> int:
    """A descriptor of ``class/bdi`` in a sysfs mount of this process's own (fsopen +
    fsmount: detached, in no mount table), never the path ``/sys/class/bdi``: root may
    have mounted anything there -- a tmpfs, another sysfs directory bound over it -- to
    hide an eCryptfs device from the loop's scan.  The caller closes it.  Raises
    :class:`KernelError` where it cannot be made (before 5.2, no ``CAP_SYS_ADMIN``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    where = Location("sysfs (private mount)")

    def call(nr: int, *args: object) -> int:
        r = int(libc.syscall(nr, *args))
        if r < 0:
            e = ctypes.get_errno()
            raise KernelError(f"open context: a private sysfs mount failed: {os.strerror(e)}",
                              errno=e, location=where)
        return r

    fs = call(_NR_FSOPEN, b"sysfs", _FSOPEN_CLOEXEC)
    try:
        call(_NR_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0)
        mnt = call(_NR_FSMOUNT, fs, _FSMOUNT_CLOEXEC, _MOUNT_ATTR_LOCKED_DOWN)
    finally:
        os.close(fs)
    try:
        return os.open("class/bdi", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=mnt)
    except OSError as exc:
        raise KernelError(f"open context: no class/bdi in sysfs: {exc.strerror}",
                          errno=exc.errno or errno.EIO, location=where) from exc
    finally:
        os.close(mnt)   # the directory's descriptor keeps the detached mount


@dataclass(frozen=True)
class OpenContextFds:
    tids: int
    counts: int
    words: int


class OpenContext:
    """``openctx.bpf.o`` loaded and attached: observes, refuses nothing."""

    def __init__(self) -> None:
        self._lo: LoadedObject | None = None

    @staticmethod
    def spec(uring_tracepoints: frozenset[str]) -> ObjectSpec:
        """The io_uring program of the submission tracepoint the kernel has (none
        without io_uring)."""
        skip = {p for p, tp in URING_PROGRAMS.items() if tp not in uring_tracepoints}
        if "io_uring_submit_req" in uring_tracepoints:
            skip.add("oc_uring_submit_sqe")
        return ObjectSpec(path=bpf_object(OBJECT), ring=None, drops=None,
                          max_entries={"events": 4096}, skip=frozenset(skip))

    def open(self, *, freeze: bool = True) -> OpenContext:
        """Load, attach, mark every thread already there and freeze both maps (``freeze``
        False: a test that moves a count by hand).  Raises :class:`KernelError` when the
        marks would not cover this kernel: io_uring compiled in (its request types in
        the kernel's BTF) and neither of its submission tracepoints there."""
        in_kernel, present = iouring_in_kernel()
        if in_kernel and not {"io_uring_submit_req", "io_uring_submit_sqe"} & present:
            raise KernelError("open context: io_uring is in the kernel but neither of its "
                              "submission tracepoints is", errno=errno.ENOENT,
                              location=Location(OBJECT))
        lo = LoadedObject.load(self.spec(present))
        try:
            self._fill(lo)
            if freeze:
                lo.map("openctx_tids").freeze()
                lo.map("openctx_counts").freeze()
        except BaseException:
            lo.close()
            raise
        self._lo = lo
        return self

    @staticmethod
    def _fill(lo: LoadedObject) -> None:
        """Set every bit, once the programs are attached: each thread already there is
        marked (a context it began before left no trace the kernel can be asked for:
        a request armed earlier runs later as its submitter's task work, and the
        submitter need hold neither a ring descriptor nor a ring mapping).  A new
        thread's bit is cleared by ``oc_newtask``; so those already there pay the
        stack read for their whole life, as every thread did before s29, and the ones
        created afterwards (most: the agent starts early at boot) take the marks."""
        fd = lo.map("openctx_tids").fd
        size = WORDS * 8
        try:
            with mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                mm[:] = b"\xff" * size
        except OSError as exc:
            raise KernelError(f"open context: cannot fill the thread bitmap: {exc.strerror}",
                              errno=exc.errno or errno.EIO, location=Location(OBJECT)) from exc

    def fds(self) -> OpenContextFds:
        lo = self._lo
        if lo is None or lo.closed:
            raise KernelError("open context is not loaded", errno=errno.EBADF,
                              location=Location(OBJECT))
        return OpenContextFds(lo.map("openctx_tids").fd, lo.map("openctx_counts").fd, WORDS)

    def counts(self) -> tuple[int, int]:
        """(eCryptfs backing devices registered, bits set) since load."""
        lo = self._lo
        if lo is None or lo.closed:
            return 0, 0
        raw = lo.map("openctx_counts").lookup(struct.pack("<I", 0))
        if raw is None:
            return 0, 0
        c = abi.OpenctxCounts.from_buffer_copy(raw)
        return int(c.nested_bdis), int(c.marked)

    def close(self) -> None:
        if self._lo is not None:
            self._lo.close()
            self._lo = None


def load_open_context() -> tuple[OpenContext | None, str | None]:
    """(the loaded context, None), or (None, why not).  Refused when this process is not
    in the initial pid namespace: fanotify reports thread ids as this process sees them,
    the programs as the kernel numbers them."""
    if not in_init_pid_ns():
        return None, "the agent is not in the initial pid namespace (fanotify's thread ids " \
                     "and the programs' differ)"
    try:
        return OpenContext().open(), None
    except BastionError as exc:
        return None, str(exc)
