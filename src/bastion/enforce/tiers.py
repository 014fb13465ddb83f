"""What this kernel lets Bastion enforce, and through which mechanism.

The one place that decides the tier.  ``probe()`` loads tiny probe programs
(never attaching anything that denies) and reports, per capability, whether
it is available, the mechanism, and what an administrator can do about what
is missing.  ``bastion doctor`` and ``bastion status`` print this report.

- **lsm** tier: a trivial ``lsm/file_open`` program loads and attaches, and
  ``bpf`` is in the active LSM list: every deny happens in the LSM hook.
- **compat** tier: no BPF LSM; exec deny by kill-at-exec / fanotify, file
  deny by fanotify permission events, network deny by cgroup socket
  programs; signals and ptrace cannot be refused in the kernel.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Iterator

from bastion.errors import BastionError, KernelError
from bastion.kernel import bpffs, fanotify
from bastion.kernel.btf import map_birth_hooks
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object
from bastion.tier import Tier

LSM_FILE: Final = Path("/sys/kernel/security/lsm")
BTF_FILE: Final = Path("/sys/kernel/btf/vmlinux")


@dataclass(frozen=True)
class Capability:
    name: str
    available: bool
    mechanism: str
    detail: str = ""
    remedy: str = ""


@dataclass(frozen=True)
class TierReport:
    tier: Tier
    kernel: str
    lsm_list: list[str]
    can_run: bool                   # can the agent run at all (events)?
    capabilities: list[Capability] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # where events come from: "hooks" (lsm_events.bpf.o: fentry on the security_*
    # hook callers, tp_btf; needs BPF trampolines, not BPF LSM) or "tracepoints"
    event_source: str = "tracepoints"

    def capability(self, name: str) -> Capability:
        for c in self.capabilities:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _lsm_list() -> list[str]:
    try:
        bpffs.ensure_securityfs()
        return [x for x in LSM_FILE.read_text().strip().split(",") if x]
    except (OSError, BastionError):
        return []


def _try_load(name: str, skip: frozenset[str] = frozenset()) -> tuple[bool, str]:
    """Load (not attach) an object, but its ``skip`` programs; (ok, why-not)."""
    try:
        with BpfObject.open(bpf_object(name)) as obj:
            for prog in sorted(skip):
                obj.set_autoload(prog, False)
            obj.load()
        return True, ""
    except BastionError as exc:
        return False, str(exc)


def _events_skipped() -> frozenset[str]:
    """The programs of tp_events.bpf.o the sensor does not load on this kernel (the
    open programs of the other set: bastion.sensors.bpf.open_programs_skipped)."""
    from bastion.kernel.btf import btf_loads, iouring_tracepoints
    from bastion.sensors.bpf import iouring_programs_skipped, open_programs_skipped

    return open_programs_skipped(btf_loads()) | iouring_programs_skipped(
        iouring_tracepoints()[0])[0]


def _iouring_seen() -> str:
    """"" when the tracepoint sensor sees io_uring requests here, else why not
    (doctor says so: the compat tier's io_uring coverage is per kernel, s22-uring)."""
    from bastion.kernel.btf import iouring_tracepoints
    from bastion.sensors.bpf import IOURING_PROGRAMS, iouring_programs_skipped

    present, why = iouring_tracepoints()
    missing = iouring_programs_skipped(present)[1]
    if not missing:
        return ""
    return "io_uring requests unseen: " + (why or "no tracepoint " + ", ".join(
        IOURING_PROGRAMS[p] for p in missing))


@contextlib.contextmanager
def quiet_libbpf() -> Iterator[None]:
    """A probe that is expected to fail must not print libbpf's warnings."""
    lg = logging.getLogger("bastion.libbpf")
    old = lg.level
    lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        lg.setLevel(old)


def _probe_lsm() -> tuple[bool, str]:
    """Load and attach the allow-all lsm/file_open probe, then detach it."""
    with quiet_libbpf():
        return _probe_lsm_loud()


def _probe_lsm_loud() -> tuple[bool, str]:
    try:
        with BpfObject.open(bpf_object("lsm_probe.bpf.o")) as obj:
            obj.load()
            link = obj.program("probe_file_open").attach()
            link.destroy()
        return True, ""
    except KernelError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            return False, "the kernel refuses BPF LSM programs (EPERM: BPF trampolines are locked on this platform)"
        if exc.errno == errno.EINVAL:
            return False, "the kernel lacks BPF LSM support (CONFIG_BPF_LSM)"
        return False, str(exc)
    except BastionError as exc:
        return False, str(exc)


HOOK_SENSOR: Final = "lsm_events.bpf.o"


def _quiet_try_load(name: str) -> tuple[bool, str]:
    """:func:`_try_load` for a probe expected to fail on some kernels (no libbpf noise)."""
    with quiet_libbpf():
        ok, why = _try_load(name)
    if not ok and ("EPERM" in why or "Operation not permitted" in why):
        why = "the kernel refuses fentry programs (EPERM: BPF trampolines are locked)"
    return ok, why


def _fanotify_ok() -> tuple[bool, str]:
    why = fanotify.group_available()
    return why is None, why or ""


def probe() -> TierReport:
    kernel = platform.release()
    problems: list[str] = []
    lsms = _lsm_list()
    btf = BTF_FILE.exists()
    if not btf:
        problems.append(f"{BTF_FILE} is missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y")
    try:
        bpffs.ensure_bpffs()
    except BastionError as exc:
        problems.append(f"bpffs unavailable: {exc}")
    # Kernel hooks first: an fentry object loads only where BPF trampolines work
    # (loading alone proves it: the locked-trampoline kernel refuses the load).
    hooks_ok, hooks_why = (_quiet_try_load(HOOK_SENSOR) if btf else (False, "no BTF"))
    events_ok, events_why = (True, "") if hooks_ok else (
        _try_load("tp_events.bpf.o", _events_skipped()) if btf else (False, "no BTF"))
    if not events_ok:
        problems.append(f"the event sensor does not load: {events_why}")
    lsm_ok, lsm_why = _probe_lsm() if btf else (False, "no BTF")
    if lsm_ok and "bpf" not in lsms:
        lsm_ok, lsm_why = False, "bpf is not in the active LSM list"
    compat_ok, compat_why = _try_load("probe_compat.bpf.o") if btf else (False, "no BTF")
    fan_ok, fan_why = _fanotify_ok()
    try:
        cg_root: Path | None = bpffs.cgroup2_root()
    except BastionError:
        cg_root = None

    current = ",".join(lsms) or "<unknown>"
    lsm_remedy = (
        f"enable BPF LSM: add 'lsm={current},bpf' to the kernel command line "
        "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot); "
        "the kernel needs CONFIG_BPF_LSM=y"
        if "bpf" not in lsms else
        "this kernel lists bpf as an LSM but refuses BPF LSM programs: "
        "use a kernel that allows BPF trampolines (stock distribution kernels do)"
    )
    if hooks_ok:
        events_cap = Capability(
            "events", True, "kernel hooks: fentry on the security_* LSM hook callers, "
            "fexit/inet_csk_accept, tp_btf sched + ring buffer (no syscall tracepoints)",
            "" if lsm_ok else "BPF LSM is off but trampolines work: events from fentry")
    else:
        iou_why = _iouring_seen() if events_ok else ""
        events_cap = Capability(
            "events", events_ok, "tracepoints (syscalls, sched" + ("" if iou_why else ", io_uring")
            + ") + ring buffer",
            events_why if not events_ok else f"kernel-hook sensor unavailable: {hooks_why}"
            + (f"; {iou_why}" if iou_why else ""),
            "" if events_ok else "a kernel with BTF and BPF tracepoints")
    caps: list[Capability] = [events_cap]
    if lsm_ok:
        try:
            birth, birth_why = "lsm/" + "|".join(map_birth_hooks()), ""
        except KernelError as exc:
            birth, birth_why = "no map alloc/free hooks", exc.message
        caps += [
            Capability("exec_deny", True, "lsm/bprm_check_security"),
            Capability("file_deny", True, "lsm/file_open, inode_* hooks"),
            Capability("signal_ptrace_protection", True, "lsm/task_kill, lsm/ptrace_access_check"),
            Capability("network_deny", True, "lsm/socket_connect, lsm/socket_bind"),
            Capability("tamper_protection", not birth_why,
                       "full: lsm/task_kill, ptrace_access_check, file_open, path_truncate, inode_*, "
                       f"sb_mount, move_mount, sb_umount, bpf, bpf_map, {birth} + guardian",
                       f"BPF maps cannot be protected from their creation ({birth_why}): the lsm "
                       "tamper object does not load" if birth_why else ""),
            Capability("provenance_gate", True,
                       "in the hook: lsm/file_open, path_truncate, inode_create|link|rename|unlink|"
                       "setattr, task_kill on the sensor's prov map (lsm_provgate.bpf.o)",
                       "if it cannot load, `bastion status` says so and the agent raises "
                       "bastion.respond.lsmgate_unavailable: the fanotify gate then refuses "
                       "opens of existing objects only"),
        ]
    else:
        exec_mech = []
        if compat_ok:
            exec_mech.append("bpf_send_signal(SIGKILL) at sched_process_exec")
        if fan_ok:
            exec_mech.append("fanotify FAN_OPEN_EXEC_PERM")
        caps += [
            Capability("exec_deny", bool(exec_mech), " or ".join(exec_mech) or "none",
                       "" if exec_mech else f"{compat_why}; {fan_why}", lsm_remedy),
            Capability("file_deny", fan_ok, "fanotify FAN_OPEN_PERM on targeted marks" if fan_ok else "none",
                       fan_why, lsm_remedy),
            Capability("signal_ptrace_protection", False, "none",
                       f"no in-kernel deny of signals or ptrace without BPF LSM ({lsm_why})",
                       lsm_remedy),
            Capability("network_deny", compat_ok and cg_root is not None,
                       f"cgroup/connect4|6, bind, sendmsg on {cg_root}" if cg_root else "none",
                       "" if compat_ok and cg_root else (compat_why or "no cgroup v2 mount"),
                       "mount cgroup2 (e.g. /sys/fs/cgroup/unified)" if cg_root is None else lsm_remedy),
            Capability("tamper_protection", fan_ok,
                       "partial: kill-the-sender (tp_btf/signal_generate, sys_enter_ptrace/"
                       "process_vm_writev/open*/bpf/prctl, sys_exit_bpf/prctl) + fanotify write-open deny + guardian restart",
                       "signals, ptrace and bpf() on Bastion's objects cannot be refused without BPF "
                       "LSM: the sender is SIGKILLed, the agent restarted or resumed; unlink, rename, "
                       "truncate(2), chmod, mounts and pin removal are not refused", lsm_remedy),
            Capability("provenance_gate", fan_ok,
                       "fanotify FAN_OPEN_PERM on the must-stop objects" if fan_ok else "none",
                       "opens of existing objects only: a new must-stop name (/etc/ld.so.preload), "
                       "renames, unlinks, truncate(2), log wiping, security-tool kills and "
                       "firewall changes (netlink, setsockopt) of an "
                       "untrusted tree are killed after the act, not refused", lsm_remedy),
        ]
    return TierReport(
        tier=Tier.LSM if lsm_ok else Tier.COMPAT, kernel=kernel, lsm_list=lsms,
        can_run=btf and events_ok, capabilities=caps, problems=problems,
        event_source="hooks" if hooks_ok else "tracepoints",
    )
