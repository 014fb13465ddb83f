"""Kernel memory through BPF: ``bpf_probe_read_kernel`` driven by test_run.

The host kind has no ``/proc/kcore``; the one way to see kernel text as the
CPU runs it is a BPF program.  :class:`KernelReader` loads
``integrity_guard.bpf.o`` once and copies up to :data:`CHUNK` bytes per
``BPF_PROG_TEST_RUN`` into an array map, then reads the map value.

It also runs the object's ``iter/task`` program (:meth:`tasks`).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bastion.errors import KernelError, Location
from bastion.integrity.bpfinfo import iter_create, prog_id_of_fd
from bastion.kernel.libbpf import BpfObject, Map, Program
from bastion.paths import bpf_object

CHUNK = 1 << 20  # keep in step with IG_CHUNK in bpf/integrity_guard.bpf.c
OBJECT_NAME = "integrity_guard.bpf.o"
_ARGS = struct.Struct("<QQ")


@dataclass(frozen=True)
class IterTask:
    """One line of the ``iter/task`` program."""

    pid: int       # thread id (global pid namespace)
    tgid: int
    start_ns: int  # start_boottime
    comm: str      # blanks and control bytes shown as '?'


def parse_task_lines(text: str) -> list[IterTask]:
    """Parse ``ig_tasks`` output; malformed lines are skipped (there are none normally)."""
    out: list[IterTask] = []
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) != 4:
            continue
        try:
            out.append(IterTask(int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
        except ValueError:
            continue
    return out


class KernelReader:
    """Loaded ``integrity_guard`` object: :meth:`read` kernel memory, list :meth:`tasks`."""

    def __init__(self, obj_dir: Path | None = None) -> None:
        path = (obj_dir / OBJECT_NAME) if obj_dir is not None else bpf_object(OBJECT_NAME)
        if not path.is_file():
            raise KernelError(
                "BPF object missing (run `make bpf`)", errno=errno.ENOENT, location=Location(str(path))
            )
        self._obj = BpfObject.open(path)
        try:
            self._obj.load()
            self._prog: Program = self._obj.program("ig_kread")
            self._tasks: Program = self._obj.program("ig_tasks")
            self._buf: Map = self._obj.map("ig_buf")
        except BaseException:
            self._obj.close()
            raise
        self.path = path

    def close(self) -> None:
        self._obj.close()

    def __enter__(self) -> KernelReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def read_chunk(self, addr: int, size: int) -> bytes:
        """Up to CHUNK bytes at ``addr``; raises KernelError with the helper's errno."""
        if not 0 < size <= CHUNK:
            raise KernelError(f"read of {size} bytes (1..{CHUNK})", errno=errno.EINVAL,
                              location=Location(f"kernel {addr:#x}"))
        rc = self._prog.test_run(ctx_in=_ARGS.pack(addr, size), repeat=0)
        if rc != 0:
            err = -(rc - (1 << 32)) if rc >= 1 << 31 else rc
            raise KernelError(
                f"bpf_probe_read_kernel of {size} bytes failed (errno {err})",
                errno=err, location=Location(f"kernel {addr:#x}"),
            )
        value = self._buf.lookup(b"\0\0\0\0")
        assert value is not None
        return value[:size]

    def read(self, addr: int, size: int) -> bytes:
        """``size`` bytes of kernel memory at ``addr`` (chunked)."""
        parts: list[bytes] = []
        off = 0
        while off < size:
            n = min(CHUNK, size - off)
            parts.append(self.read_chunk(addr + off, n))
            off += n
        return b"".join(parts)

    def read_u64s(self, addr: int, count: int) -> tuple[int, ...]:
        return struct.unpack(f"<{count}Q", self.read(addr, 8 * count))

    def prog_ids(self) -> set[int]:
        """Kernel ids of this reader's own programs (the inventory leaves them out)."""
        return {prog_id_of_fd(self._prog.fd), prog_id_of_fd(self._tasks.fd)}

    def tasks(self) -> list[IterTask]:
        """Every task as the kernel's task iterator sees it."""
        link = self._tasks.attach()
        try:
            fd = iter_create(link.fd)
            try:
                chunks: list[bytes] = []
                while True:
                    b = os.read(fd, 1 << 16)
                    if not b:
                        break
                    chunks.append(b)
            finally:
                os.close(fd)
        finally:
            link.destroy()
        return parse_task_lines(b"".join(chunks).decode("utf-8", "replace"))
