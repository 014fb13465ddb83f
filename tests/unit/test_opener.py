"""Facts about a blocked opener, read from procfs: who is exempt (this process,
and whoever ``is_ours`` accepts: the file guard's agent/guardian identity)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.kernel.opener import Scope, fd_path, stat_ppid_start


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def test_this_process_and_its_threads_are_exempt(child: subprocess.Popen[bytes]) -> None:
    scope = Scope()
    tids: list[int] = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    assert scope.is_self(threading.get_native_id())
    assert scope.is_self(os.getpid())
    assert not scope.is_self(child.pid)
    assert not scope.out_of_scope(child.pid)          # unscoped: everyone is in scope
    assert tids and not scope.is_self(10**7)          # no such task


def test_is_ours_exempts_another_process_by_tgid(child: subprocess.Popen[bytes]) -> None:
    asked: list[int] = []

    def is_ours(tgid: int) -> bool:
        asked.append(tgid)
        return tgid == child.pid

    scope = Scope(is_ours=is_ours)
    assert scope.is_self(child.pid) and asked == [child.pid]
    assert scope.is_self_tgid(child.pid) and not scope.is_self_tgid(1)
    assert scope.is_self(os.getpid())                 # own threads: no question asked
    assert asked == [child.pid, child.pid, 1]


def test_a_foreign_self_tgid_is_matched_through_status(child: subprocess.Popen[bytes]) -> None:
    scope = Scope(self_tgid=child.pid)                # a guardian deciding for its agent
    assert scope.is_self(child.pid)
    assert not scope.is_self(os.getpid())


def test_start_time_and_parent_from_proc_stat(child: subprocess.Popen[bytes]) -> None:
    ppid, start = stat_ppid_start(child.pid)
    assert ppid == os.getpid()
    boot_now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert 0 < start <= boot_now
    assert stat_ppid_start(10**7) == (-1, -1)


def test_fd_path_of_a_deleted_file(tmp_path: Path) -> None:
    p = os.path.join(str(tmp_path), "gone")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.unlink(p)
        assert fd_path(fd) == p
    finally:
        os.close(fd)
