"""The open context's user-space side (bastion.kernel.openctx, s29): which io_uring
program loads, and the pid namespace it is for.  No kernel."""

from __future__ import annotations

from pathlib import Path

from bastion import hostns
from bastion.kernel import openctx


def test_only_the_initial_pid_namespace_counts(tmp_path: Path) -> None:
    """fanotify reports thread ids as the agent sees them, the programs as the kernel
    numbers them: the marks are for an agent in the initial pid namespace only."""
    (tmp_path / "self").mkdir()
    status = tmp_path / "self" / "status"
    status.write_text("Name:\tx\nNSpid:\t4242\n")
    assert hostns.in_init_pid_ns(str(tmp_path))
    status.write_text("Name:\tx\nNSpid:\t4242\t7\n")
    assert not hostns.in_init_pid_ns(str(tmp_path))
    status.unlink()
    assert not hostns.in_init_pid_ns(str(tmp_path))


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
