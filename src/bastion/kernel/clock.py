"""Kernel time: CLOCK_BOOTTIME stamps, their wall-clock offset, dead-man deadlines.

BPF programs stamp records with ``bpf_ktime_get_boot_ns()`` (CLOCK_BOOTTIME)
and compare it with ``cfg_deadline_ns``.  :class:`WallOffset` turns those
stamps into wall-clock time and follows wall-clock steps (NTP, ``date -s``)
by refreshing the offset periodically.  Pure ``time`` calls: importing this
module loads no library.
"""

from __future__ import annotations

import time
from typing import Final

REFRESH_S: Final = 10.0


def boot_ns() -> int:
    """Now, on CLOCK_BOOTTIME (the clock of every BPF record and deadline)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def boot_to_wall_ns() -> int:
    """Offset that turns CLOCK_BOOTTIME ns into wall-clock ns."""
    return time.time_ns() - boot_ns()


def deadline_ns(seconds: float | None) -> int:
    """``cfg_deadline_ns`` for a dead-man ``seconds`` from now; 0 (none) for None or 0."""
    return boot_ns() + int(seconds * 1e9) if seconds else 0


class WallOffset:
    """:func:`boot_to_wall_ns`, re-read at most every ``refresh_s`` seconds."""

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        self._offset = boot_to_wall_ns()
        self._at = time.monotonic()

    def __call__(self) -> int:
        now = time.monotonic()
        if now - self._at > self.refresh_s:
            self._offset = boot_to_wall_ns()
            self._at = now
        return self._offset


__all__ = ["REFRESH_S", "WallOffset", "boot_ns", "boot_to_wall_ns", "deadline_ns"]
