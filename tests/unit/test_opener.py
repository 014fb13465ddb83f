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

from bastion.kernel.fanotify import FastLoop
from bastion.kernel.opener import Scope, fd_path, own_open, stat_ppid_start


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


# ---- whose open is it (s27 review: io_uring and core dumps open with other registers) ----

def _stack(*names: str) -> bytes:
    return "".join(f"[<0>] {n}+0x10/0x20\n" for n in names).encode()


_TOP = ("fanotify_handle_event", "fsnotify", "__fsnotify_parent", "do_dentry_open", "vfs_open",
        "path_openat")
# as /proc/TID/stack showed them on this host (6.18) for a blocked opener
_OPENAT = _stack(*_TOP, "do_filp_open", "do_sys_openat2", "__x64_sys_openat", "do_syscall_64",
                 "entry_SYSCALL_64_after_hwframe")
_BY_HANDLE = _stack(*_TOP, "do_file_open_root", "file_open_root", "do_handle_open", "do_syscall_64",
                    "entry_SYSCALL_64_after_hwframe")
_IO_TASK_WORK = _stack(*_TOP, "do_filp_open", "io_openat2", "__io_issue_sqe", "io_issue_sqe",
                       "io_req_task_submit", "io_handle_tw_list", "tctx_task_work_run",
                       "tctx_task_work", "task_work_run", "get_signal", "arch_do_signal_or_restart",
                       "exit_to_user_mode_loop", "do_syscall_64", "entry_SYSCALL_64_after_hwframe")
_IO_WORKER = _stack(*_TOP, "do_filp_open", "io_openat2", "__io_issue_sqe", "io_issue_sqe",
                    "io_wq_submit_work", "io_worker_handle_work", "io_wq_worker", "ret_from_fork",
                    "ret_from_fork_asm")
_CORE_DUMP = _stack(*_TOP, "do_filp_open", "file_open_name", "filp_open", "vfs_coredump",
                    "get_signal", "arch_do_signal_or_restart", "exit_to_user_mode_loop",
                    "do_syscall_64", "entry_SYSCALL_64_after_hwframe")
_EXEC = _stack(*_TOP, "do_filp_open", "do_open_execat", "alloc_bprm", "do_execveat_common",
               "__x64_sys_execve", "do_syscall_64", "entry_SYSCALL_64_after_hwframe")


@pytest.mark.parametrize(("text", "exec_", "own"), [
    (_OPENAT, False, True), (_BY_HANDLE, False, True), (_EXEC, True, True),
    (_IO_TASK_WORK, False, False), (_IO_WORKER, False, False), (_CORE_DUMP, False, False),
    (_OPENAT, True, False),                  # no execve frame: not execve's own open
    (_EXEC, False, False),                   # execve's open is no open(2)
    (_IO_TASK_WORK, True, False),
    (b"", False, False),                     # unreadable: unknown
    (b"[<0>] 0xffffffff81234567\n" * 12, False, False),   # no symbols (no kallsyms)
    (_stack(*_TOP, "do_filp_open"), False, False),          # cut short: no caller
    (_stack(*_TOP, "do_file_open_root", "file_open_root"), False, False),
    (_stack(*_TOP, "do_filp_open", "do_sys_openat2_not"), False, False),   # a name, not a prefix
    (_stack("x_task_work_run_y", *_TOP[1:], "do_filp_open", "do_sys_openat2"), False, True),
    # a stacked filesystem's own open of its lower file inside the caller's (eCryptfs)
    (_stack(*_TOP, "do_filp_open", "dentry_open", "ecryptfs_privileged_open", "ecryptfs_open",
            "do_dentry_open", "vfs_open", "path_openat", "do_filp_open", "do_sys_openat2",
            "__x64_sys_openat"), False, False),
    (_stack(*_TOP[:3], "do_dentry_open", "kernel_file_open", "x", *_TOP[3:], "do_filp_open",
            "do_sys_openat2"), False, False),
    # an overlay's real file, opened inside the caller's open with the caller's flags
    (_stack(*_TOP[:3], "do_dentry_open", "vfs_open", "backing_file_open", "ovl_open_realfile",
            "ovl_open", *_TOP[3:], "do_filp_open", "do_sys_openat2"), False, True),
])
def test_own_open_tells_the_syscalls_own_open_from_one_made_on_its_behalf(
        text: bytes, exec_: bool, own: bool) -> None:
    """The registers /proc/TID/syscall shows describe the open being decided only when
    it is that syscall's own; io_uring's task work (run on the way back from a blocked
    ``openat``, whose registers stay), an io_uring worker (a copy of the submitter's)
    and a core dump open files with the flags of something else."""
    assert own_open(text, exec_) is own
    if not exec_:   # the compiled loop judges open(2)'s stacks the same way (its own parser)
        fast = FastLoop()
        try:
            assert fast.stack_own_open(text) is own
        finally:
            fast.free()
