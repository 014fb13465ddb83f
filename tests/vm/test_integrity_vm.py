"""The kernel integrity guard on Debian's stock kernel (the test VM).

Runs only inside the VM (`bash vm/run.sh -k integrity`, BASTION_IN_VM=1).
The host's adversary tests run here unchanged (imported below) — in the VM
lockdown is off, so the bpf_probe_write_user rootkit loads and must be
caught — plus what only this kernel exposes: sys_call_table in kallsyms,
/proc/kcore, readable tracefs/debugfs, kprobes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh -k integrity` (make test-vm)"
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel.test_integrity_host import (  # noqa: E402,F401  (collected here too)
    test_full_scan_against_fresh_baseline,
    test_ordinary_tracepoint_attach_changes_text_but_yields_no_finding,
    test_platform_differences_live_in_the_baseline,
    test_probe_write_user_rootkit_hides_task_and_is_flagged,
    test_rogue_program_on_syscall_tracepoint_is_reported_and_loader_killed,
    test_syscall_table_located_and_clean,
    test_task_hidden_from_proc_listing_is_found,
    view,
)

from bastion.integrity.base import KernelView  # noqa: E402
from bastion.integrity.kstate import KernelStateCheck  # noqa: E402
from bastion.integrity.syscalls import SyscallCheck  # noqa: E402
from bastion.integrity.text import TextCheck  # noqa: E402

TRACING = Path("/sys/kernel/tracing")


def _append(path: Path, line: str) -> None:
    """O_APPEND write without a seek: Python's open(..., "a") seeks, which tracefs refuses (EINVAL)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def test_vm_kernel_sources_differ_from_the_host() -> None:
    assert Path("/proc/kcore").exists()
    with KernelView() as v:
        assert v.ksyms.addr("sys_call_table")
        base = SyscallCheck(v).baseline()
        assert base["table"]["located_by"] == "kallsyms"
        st = KernelStateCheck(v).state()
        assert st["lockdown"] == "none"
        assert "bpf" in (st["lsm"] or [])


def test_kprobe_is_reported_as_kprobe_and_entry_hook_not_as_text_change() -> None:
    events = TRACING / "kprobe_events"
    if not events.exists():
        pytest.skip("tracefs not mounted in this guest")
    with KernelView() as v:
        text, state = TextCheck(v), KernelStateCheck(v)
        tb, sb = text.baseline(), state.baseline()
        if sb["kprobes"] is None:
            pytest.skip("debugfs kprobes/list not readable")
        enable = TRACING / "events/kprobes/bastion_test_kp/enable"
        try:
            _append(events, "p:bastion_test_kp vfs_read\n")
            enable.write_text("1")
            v.forget_text()
            tf = text.scan(tb)
            sf = state.scan(sb)
        finally:
            if enable.exists():
                enable.write_text("0")
                _append(events, "-:bastion_test_kp\n")
    assert [f for f in tf if f.code == "text.modified"] == [], tf
    hooks = [f for f in tf if f.code == "text.entry_hook" and f.evidence["function"] == "vfs_read"]
    assert hooks, tf
    kp = [f for f in sf if f.code == "kstate.kprobes"]
    assert kp and any("vfs_read" in a for a in kp[0].evidence["added"]), sf
