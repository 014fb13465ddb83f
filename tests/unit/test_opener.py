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


def test_a_blocked_opener_caught_running_is_waited_for_then_given_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``/proc/TID/syscall`` says ``running`` while the opener is on its way to fanotify's
    wait: it is read again until the kernel shows the syscall; one that never settles is
    given up within the bound (the caller then fails closed), and a zombie's ``-1`` is not
    waited for (an opener SIGKILLed and left unreaped cannot make the listener wait)."""
    from bastion.kernel import opener

    answers = [b"running\n"] * 3 + [b"257 0xffffff9c 0x7ffd 0x0 0x0 0x0 0x0 0x7ffd 0x7f\n"]
    reads: list[int] = []

    def fake(path: str) -> bytes:
        reads.append(1)
        return answers[min(len(reads) - 1, len(answers) - 1)]

    monkeypatch.setattr(opener, "read_proc", fake)
    assert opener._blocked_syscall(1).startswith(b"257 ")
    assert len(reads) == 4
    monkeypatch.setattr(opener, "read_proc", lambda path: b"running\n")
    t0 = time.monotonic()
    assert opener._blocked_syscall(1, settle_s=0.02) == b"running\n"
    assert time.monotonic() - t0 < 1.0          # given up, not stuck
    reads.clear()
    monkeypatch.setattr(opener, "read_proc", lambda path: (reads.append(1), b"-1 0x0 0x0\n")[1])
    assert opener._blocked_syscall(1) == b"-1 0x0 0x0\n" and len(reads) == 1
