"""A BPF_MAP_TYPE_RINGBUF consumer that reads the ring through mmap directly.

Layout (kernel/bpf/ringbuf.c), for a ring of ``size`` bytes (a power of two):
  * offset 0, one page, read-write: ``consumer_pos`` (u64 at byte 0);
  * offset ``page``, read-only: one page with ``producer_pos`` (u64 at byte
    0), then the data area mapped TWICE back to back (``2 * size`` bytes), so a
    record that wraps past the end is contiguous in our mapping.
  * each record: 8-byte header ``u32 len`` (bit 31 BUSY: still being written,
    bit 30 DISCARD: skip it) + ``u32 pg_off``, then ``len`` bytes; records are
    8-byte aligned.

Ordering: ``producer_pos`` is read once per batch; a record is consumed only
when its header has BUSY clear (the kernel clears it with release semantics
after writing the payload; x86-64 loads are not reordered with each other).
``consumer_pos`` is written once at the end of the batch with one aligned
8-byte store (a native-format memoryview item), which releases the space to
the producers.  Positions are 64-bit counters that only grow; ``pos & (size -
1)`` is the offset in the data area.
"""

from __future__ import annotations

import errno
import mmap
import select
from collections.abc import Callable

from bastion.closing import Closing
from bastion.errors import KernelError, Location
from bastion.kernel import _ffi
from bastion.kernel.libbpf import Map

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LEN_MASK = DISCARD_BIT - 1
HDR_SIZE = 8


class RingBuffer(Closing):
    """Consume a ring buffer map.  One consumer per ring; not thread-safe."""

    def __init__(self, ring_map: Map) -> None:
        if ring_map.type != _ffi.BPF_MAP_TYPE_RINGBUF:
            raise KernelError(
                f"map {ring_map.name!r} is not a ring buffer (type {ring_map.type})",
                errno=errno.EINVAL,
                location=Location(f"map {ring_map.name}"),
            )
        size = ring_map.max_entries
        if size <= 0 or size & (size - 1):
            raise KernelError(
                f"ring size {size} is not a power of two",
                errno=errno.EINVAL,
                location=Location(f"map {ring_map.name}"),
            )
        self.name = ring_map.name
        self.size = size
        self._mask = size - 1
        page = mmap.PAGESIZE
        self._page = page
        fd = ring_map.fd
        try:
            self._cons_mm = mmap.mmap(
                fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
            self._data_mm = mmap.mmap(
                fd, page + 2 * size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=page
            )
        except OSError as exc:
            raise KernelError(
                f"cannot mmap ring buffer: {exc.strerror}",
                errno=exc.errno or errno.EIO,
                location=Location(f"map {ring_map.name}"),
            ) from exc
        self._cons = memoryview(self._cons_mm).cast("Q")
        prod_view = memoryview(self._data_mm)
        self._prod = prod_view[:8].cast("Q")
        prod_view.release()
        # u32 view of the data area (starting at byte `page` of _data_mm): the
        # header of the record at data offset `off` is item (page + off) // 4.
        self._words = memoryview(self._data_mm).cast("I")
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self._closed = False

    # ---- state ------------------------------------------------------------------

    @property
    def consumer_pos(self) -> int:
        return int(self._cons[0])

    @property
    def producer_pos(self) -> int:
        return int(self._prod[0])

    def pending_bytes(self) -> int:
        """Bytes between consumer and producer (committed, busy or discarded)."""
        return int(self._prod[0]) - int(self._cons[0])

    # ---- consuming -----------------------------------------------------------------

    def drain(self, limit: int | None = None) -> list[bytes]:
        """Copy out up to ``limit`` committed records (all available when None).

        Reads ``producer_pos`` once; stops at the first record still BUSY.
        """
        out: list[bytes] = []
        append = out.append
        words = self._words
        mm = self._data_mm
        mask = self._mask
        # Payload of the record at position p starts at mm offset p & mask + base.
        base = self._page + HDR_SIZE
        busy, discard, len_mask = BUSY_BIT, DISCARD_BIT, LEN_MASK
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        left = -1 if limit is None else limit
        while cons < prod and left != 0:
            start = base + (cons & mask)
            hdr = words[(start >> 2) - 2]
            if hdr & busy:
                break
            ln = hdr & len_mask
            if not hdr & discard:
                append(mm[start : start + ln])
                left -= 1
            cons += (ln + 15) & ~7  # 8-byte header + payload, 8-aligned
        self._cons[0] = cons
        return out

    def consume(self, callback: Callable[[memoryview], object], limit: int | None = None) -> int:
        """Hand each committed record to ``callback`` as a zero-copy memoryview.

        The view is only valid during the call (copy with ``bytes(view)`` to
        keep it).  Records up to and including one whose callback raises are
        consumed; the exception propagates.  Returns the number handed over.
        """
        words = self._words
        view = memoryview(self._data_mm)
        mask = self._mask
        base = self._page + HDR_SIZE
        busy, discard, len_mask = BUSY_BIT, DISCARD_BIT, LEN_MASK
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        left = -1 if limit is None else limit
        n = 0
        try:
            while cons < prod and left != 0:
                start = base + (cons & mask)
                hdr = words[(start >> 2) - 2]
                if hdr & busy:
                    break
                ln = hdr & len_mask
                cons += (ln + 15) & ~7
                if not hdr & discard:
                    left -= 1
                    n += 1
                    callback(view[start : start + ln])
        finally:
            self._cons[0] = cons
            view.release()
        return n

    def wait(self, timeout_ms: int) -> bool:
        """Block until data is available or ``timeout_ms`` passes (-1: forever).

        True if records may be pending.  Checks the positions first: the
        kernel only wakes a consumer that has caught up, so a reader that
        stopped early must not sleep on data it already has.
        """
        if int(self._cons[0]) != int(self._prod[0]):
            return True
        timeout = -1.0 if timeout_ms < 0 else timeout_ms / 1000.0
        try:
            events = self._epoll.poll(timeout, 1)
        except InterruptedError:
            events = []
        return bool(events) or int(self._cons[0]) != int(self._prod[0])

    def fileno(self) -> int:
        """An epoll fd readable when the ring has data (for an outer event loop)."""
        return self._epoll.fileno()

    # ---- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Unmap and release; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._epoll.close()
        self._cons.release()
        self._prod.release()
        self._words.release()
        self._cons_mm.close()
        self._data_mm.close()

