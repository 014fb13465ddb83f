"""The compiled listener loop (src/native/fanloop.c) against a fake group.

The group is a socketpair speaking the fanotify wire format (as in
test_fanotify_listener.py); event fds are real descriptors of this process, so
the loop's statx gives their inode.  What is pinned: the loop answers the
published inodes and hands every other event to ``decide``; a publish replaces
the table (nothing answered from the old one afterwards); a batch the loop holds
past ``decision_timeout_s`` is answered by the watchdog with the fallback, once.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.kernel.fanotify import (
    FAN_ALLOW, FAN_DENY, FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM, PermEvent, PermissionListener, Verdict,
)
from bastion.policy.compile import kernel_dev

META = struct.Struct("<IBBHQii")
RESPONSE = struct.Struct("<iI")


class Group:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        self.kernel = theirs
        self.group_fd = ours.detach()

    def event(self, path: Path, tid: int, mask: int = FAN_OPEN_PERM) -> int:
        efd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.kernel.sendall(META.pack(META.size, 3, 0, META.size, mask, efd, tid))
        return efd

    def answers(self, n: int, timeout_s: float = 3.0) -> list[tuple[int, int]]:
        buf = b""
        end = time.monotonic() + timeout_s
        while len(buf) < n * RESPONSE.size:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.kernel], [], [], left)[0]:
                break
            buf += self.kernel.recv(n * RESPONSE.size - len(buf))
        return [RESPONSE.unpack_from(buf, i) for i in range(0, len(buf), RESPONSE.size)]


def key(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return kernel_dev(st.st_dev), st.st_ino


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    hot, other = tmp_path / "hot", tmp_path / "other"
    hot.write_text("h")
    other.write_text("o")
    return hot, other


@pytest.fixture
def group() -> Iterator[Group]:
    g = Group()
    yield g
    g.kernel.close()


def _listener(group: Group, decided: list[int], verdict: Verdict = Verdict.allow(),
              timeout_s: float = 0.2, fallback: int | None = None) -> PermissionListener:
    def decide(ev: PermEvent) -> Verdict:
        decided.append(ev.tid)
        return verdict

    lis = PermissionListener(decide, deadline_s=30.0, decision_timeout_s=timeout_s,
                             fallback=None if fallback is None else (lambda ev: fallback))
    lis.open(group_fd=group.group_fd)
    if not lis.compiled_loop:
        lis.close()
        pytest.fail(f"compiled loop not loaded: {lis.compiled_why} (make native)")
    lis.start()
    return lis


def test_published_inodes_are_answered_without_decide(group: Group, files: tuple[Path, Path]) -> None:
    hot, other = files
    decided: list[int] = []
    lis = _listener(group, decided, Verdict.deny())
    try:
        lis.set_fast_allow(frozenset({key(hot)}), frozenset())
        fds = [group.event(hot, 10), group.event(hot, 11, FAN_OPEN_EXEC_PERM), group.event(other, 12)]
        got = dict(group.answers(3))
        # open of hot: the loop; exec of hot (not in the exec set) and other: decide (deny)
        assert got == {fds[0]: FAN_ALLOW, fds[1]: FAN_DENY, fds[2]: FAN_DENY}
        assert sorted(decided) == [11, 12]
        lis.set_fast_allow(frozenset(), frozenset())
        fd = group.event(hot, 13)
        assert group.answers(1) == [(fd, FAN_DENY)] and decided[-1] == 13
        s = lis.stats()
        assert s["fast_allows"] == 1 and s["perm_events"] == 4 and s["compiled_loop"] == 1, s
    finally:
        lis.close()


def test_a_stalled_batch_is_answered_once_by_the_watchdog(group: Group,
                                                           files: tuple[Path, Path]) -> None:
    hot, other = files
    decided: list[int] = []
    lis = _listener(group, decided, fallback=FAN_DENY)
    fast = lis._fast
    assert fast is not None
    try:
        lis.set_fast_allow(frozenset({key(hot)}), frozenset())
        fast.set_stall(1.0)
        fds = [group.event(hot, 20), group.event(other, 21)]
        t0 = time.monotonic()
        got = group.answers(2)
        assert time.monotonic() - t0 < 0.8
        assert sorted(got) == sorted((fd, FAN_DENY) for fd in fds)   # the fallback, both
        fast.set_stall(0)
        end = time.monotonic() + 3
        while fast.busy_s() is not None and time.monotonic() < end:
            time.sleep(0.01)
        assert group.answers(1, timeout_s=0.3) == []   # the loop answered nothing after them
        assert decided == []
        s = lis.stats()
        assert s["watchdog_denies"] == 2 and s["fast_allows"] == 0 and s["errors"] == 0, s
        fd = group.event(hot, 22)
        assert group.answers(1) == [(fd, FAN_ALLOW)]
    finally:
        lis.close()
