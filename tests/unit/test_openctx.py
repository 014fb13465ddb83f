"""The open context's user-space side (bastion.kernel.openctx, s29): the scan of the
threads already there when the programs attached, and which io_uring program loads.
No kernel: a stand-in procfs tree."""

from __future__ import annotations

import os
from pathlib import Path

from bastion.kernel import openctx


def _stat(tid: int, comm: str, flags: int) -> str:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags ...
    return f"{tid} ({comm}) S 1 {tid} {tid} 0 -1 {flags} 0 0 0 0 1 2 0 0 20 0 1 0 100\n"


def _proc(root: Path, pid: int, threads: dict[int, tuple[str, int]],
          fds: dict[int, str]) -> None:
    for tid, (comm, flags) in threads.items():
        d = root / str(pid) / "task" / str(tid)
        d.mkdir(parents=True)
        (d / "stat").write_text(_stat(tid, comm, flags))
    (root / str(pid) / "fd").mkdir(parents=True, exist_ok=True)
    for fd, target in fds.items():
        os.symlink(target, root / str(pid) / "fd" / str(fd))


def test_the_scan_marks_every_thread_already_there(tmp_path: Path) -> None:
    """A context begun before the programs were attached left no mark, and procfs cannot
    show one (a registered ring fd closed, rings not mapped): every thread there is
    marked, whatever its flags, name or descriptors; only pid directories count."""
    _proc(tmp_path, 10, {10: ("plain", 0x400000), 11: ("iou-wrk-10", 0x400000)},
          {0: "/dev/null", 1: "pipe:[5]"})
    _proc(tmp_path, 20, {20: ("db", 0x400000), 21: ("w", 0x400010 | 0x4000)}, {})
    _proc(tmp_path, 30, {30: ("a) b) c", 0x400000), 31: ("t", 0x400000)},
          {3: "socket:[9]", 4: "anon_inode:[io_uring]"})
    (tmp_path / "self").mkdir()            # not a pid
    (tmp_path / "40" / "task" / "x").mkdir(parents=True)   # not a tid
    assert openctx.present_threads(str(tmp_path)) == {10, 11, 20, 21, 30, 31}


def test_a_process_gone_during_the_scan_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "50").mkdir()              # no task/: exited meanwhile
    _proc(tmp_path, 60, {60: ("x", 0x10)}, {})
    assert openctx.present_threads(str(tmp_path)) == {60}


def test_one_io_uring_program_loads_for_the_kernels_tracepoint() -> None:
    """6.4+ has io_uring_submit_req, older kernels io_uring_submit_sqe; without io_uring
    neither program loads (the other name would only warn at attach)."""
    new = openctx.OpenContext.spec(frozenset({"io_uring_submit_req", "io_uring_complete"}))
    old = openctx.OpenContext.spec(frozenset({"io_uring_submit_sqe"}))
    none = openctx.OpenContext.spec(frozenset())
    assert new.skip == {"oc_uring_submit_sqe"}
    assert old.skip == {"oc_uring_submit"}
    assert none.skip == {"oc_uring_submit", "oc_uring_submit_sqe"}
    assert new.ring is None and new.drops is None
