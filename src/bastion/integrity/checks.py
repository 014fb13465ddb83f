"""The set of checks, built over one shared :class:`KernelView`."""

from __future__ import annotations

from typing import Sequence

from bastion.integrity.base import Check, KernelView
from bastion.integrity.bpfprogs import BpfInventoryCheck
from bastion.integrity.kstate import KernelStateCheck
from bastion.integrity.syscalls import SyscallCheck
from bastion.integrity.tasks import HiddenTaskCheck
from bastion.integrity.text import TextCheck

CHECK_NAMES = ("kernel_text", "syscall_dispatch", "bpf_inventory", "hidden_tasks", "kernel_state")


def default_checks(view: KernelView, *, bpf_allowlist: Sequence[str] = (),
                   only: Sequence[str] = (), trusted_pids: Sequence[int] = ()) -> list[Check]:
    """Every check; BPF programs held only by ``trusted_pids`` (the agent) are not judged."""
    checks: list[Check] = [TextCheck(view), SyscallCheck(view),
                           BpfInventoryCheck(view, bpf_allowlist, trusted_pids=trusted_pids),
                           HiddenTaskCheck(view), KernelStateCheck(view)]
    return [c for c in checks if not only or c.name in only]
