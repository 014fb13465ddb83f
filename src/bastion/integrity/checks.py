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
                   only: Sequence[str] = (), trust_self: bool = False) -> list[Check]:
    """Every check; ``trust_self`` (the agent) leaves the BPF programs this process holds unjudged."""
    checks: list[Check] = [TextCheck(view), SyscallCheck(view),
                           BpfInventoryCheck(view, bpf_allowlist, trust_self=trust_self),
                           HiddenTaskCheck(view), KernelStateCheck(view)]
    return [c for c in checks if not only or c.name in only]
