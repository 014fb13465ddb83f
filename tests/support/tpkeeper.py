"""Keep the test session's tracepoint detaches off the kernel's grace periods.

Detaching a BPF program from a ``tracepoint/`` section releases its perf event; when
it was the tracepoint's last perf event the kernel waits for RCU grace periods under
``event_mutex`` (``perf_trace_event_unreg`` -> ``tracepoint_synchronize_unregister``),
so every detach waits ~35 ms one after the other: a compat sensor's close took ~2 s,
and the host layer spent 318 of its ~830 s in them (s28, measured per
``destroy_links``).  A disabled perf event held on each of those tracepoints for the
whole session keeps the count above zero, so a detach skips that wait.  The events are
disabled: they are in no tracepoint's list and record nothing; what a test observes
does not change (the perf probe of a syscall tracepoint is registered while any
Bastion program is attached there anyway).

Run as its own process (``python tpkeeper.py CATEGORY/NAME ...``, root) in a private
mount namespace (``unshare --mount``): the tracepoint ids come from a tracefs mounted
there, never in the tests' namespace (the fresh-boot tests need it unmounted).  It
prints ``ready N`` once N events are held and keeps them until its stdin closes.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import tempfile

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
ATTR_SIZE = 112                      # PERF_ATTR_SIZE_VER5
NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def _attr(config: int) -> bytes:
    # type, size, config, sample_period, sample_type, read_format, flags (bit 0: disabled)
    head = struct.pack("<IIQQQQQ", PERF_TYPE_TRACEPOINT, ATTR_SIZE, config, 0, 0, 0, 1)
    return head.ljust(ATTR_SIZE, b"\0")


def main(names: list[str]) -> int:
    nr = NR_PERF_EVENT_OPEN[os.uname().machine]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    mnt = tempfile.mkdtemp(prefix="bastion-tpkeeper-")
    if libc.mount(b"tracefs", mnt.encode(), b"tracefs", 0, None) != 0:
        print(f"tpkeeper: mount tracefs: errno {ctypes.get_errno()}", file=sys.stderr)
        os.rmdir(mnt)
        return 1
    held, missing = [], []
    for name in names:
        try:
            with open(os.path.join(mnt, "events", name, "id")) as f:
                tp_id = int(f.read())
        except OSError:
            missing.append(name)
            continue
        buf = ctypes.create_string_buffer(_attr(tp_id), ATTR_SIZE)
        fd = libc.syscall(nr, buf, -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            missing.append(f"{name} (errno {ctypes.get_errno()})")
            continue
        held.append(fd)
    libc.umount2(mnt.encode(), 0)
    os.rmdir(mnt)
    if missing:
        print(f"tpkeeper: not held: {', '.join(missing)}", file=sys.stderr)
    print(f"ready {len(held)}", flush=True)
    sys.stdin.read()                  # until the session closes our stdin (or dies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
