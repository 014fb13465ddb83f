"""``/proc/PID/stat``: the fields Bastion reads (state, ppid, start time).

The start time is in clock ticks (USER_HZ) since boot: on CLOCK_BOOTTIME,
at tick resolution.  ``comm`` is in parentheses and may hold spaces and
parentheses itself, so fields are counted from the last ``)``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
TICK_NS: Final = 1_000_000_000 // CLK_TCK
PROC: Final = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int

    @property
    def start_ns(self) -> int:
        """Start time on CLOCK_BOOTTIME, ns (tick resolution)."""
        return self.start_ticks * TICK_NS


def parse_stat(pid: int, raw: bytes) -> ProcStat:
    """Parse the text of ``/proc/PID/stat``; ValueError when it is not one."""
    lparen, rparen = raw.find(b"("), raw.rfind(b")")
    fields = raw[rparen + 2:].split()
    if lparen < 0 or rparen < lparen or len(fields) < 20:
        raise ValueError(f"/proc/{pid}/stat: malformed ({len(fields)} fields after comm)")
    return ProcStat(pid=pid, comm=raw[lparen + 1:rparen].decode(errors="replace"),
                    state=fields[0].decode(errors="replace"), ppid=int(fields[1]),
                    start_ticks=int(fields[19]))


def read_stat(pid: int, proc: Path = PROC) -> ProcStat:
    """``/proc/PID/stat`` of a live process; OSError when it is gone or unreadable."""
    with open(proc / str(pid) / "stat", "rb") as f:
        return parse_stat(pid, f.read())


def start_ns_of(pid: int, proc: Path = PROC) -> int:
    """Boot-time start of ``pid`` (ns, tick resolution); 0 when it is gone."""
    try:
        return read_stat(pid, proc).start_ns
    except (OSError, ValueError):
        return 0


# pidfd_open(2) errors that mean "no process by that id now": ESRCH (none), ENOENT (a
# thread's id, not a thread-group leader's: Linux 6.9+; seen on 6.18), EINVAL (the same
# before 6.9)
_NO_PROCESS: Final = frozenset({errno.ESRCH, errno.ENOENT, errno.EINVAL})


def pidfd_of(pid: int) -> int | None:
    """A pidfd of process ``pid``, or None when no process has that id now (gone, or the
    id is a thread of another process: a pid reused by a thread).  Any other error (out of
    descriptors, ...) is raised.  The caller checks the start time after the pidfd pins
    the process and closes the descriptor.  (s22: only ProcessLookupError was caught; a
    kill-tree member whose pid a thread had taken raised FileNotFoundError out of the
    dispatcher and ended the agent's event loop.)"""
    try:
        return os.pidfd_open(pid)
    except OSError as e:
        if e.errno in _NO_PROCESS:
            return None
        raise


__all__ = ["CLK_TCK", "PROC", "TICK_NS", "ProcStat", "parse_stat", "pidfd_of", "read_stat",
           "start_ns_of"]
