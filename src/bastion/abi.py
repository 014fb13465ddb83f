"""ctypes mirror of ``bpf/include/bastion.h`` — the one kernel/user contract.

Nothing else in Python knows a byte offset of a kernel record.  The unit
test ``tests/unit/test_abi.py`` checks every structure here against the BTF
of the compiled objects (size and each member's offset), so a change to the
header that is not mirrored here fails the build, and
:func:`check_abi_version` refuses an object of another ABI major at load.
"""

from __future__ import annotations

import ctypes
import enum
import os
from typing import Final

from bastion.errors import AbiMismatchError, Location

ABI_MAJOR: Final = 1
ABI_MINOR: Final = 3
ABI_VERSION: Final = (ABI_MAJOR << 16) | ABI_MINOR

COMM_LEN: Final = 16
PATH_LEN: Final = 256
ARGV_LEN: Final = 512
NAME_LEN: Final = 64
RINGBUF_BYTES: Final = 16 * 1024 * 1024         # as compiled; the sensor sets its own size
SMALL_RINGBUF_BYTES: Final = 1024 * 1024        # objects whose records are rare (decisions)


class EventType(enum.IntEnum):
    EXEC = 1
    FORK = 2
    EXIT = 3
    FILE = 4
    NET = 5
    PTRACE = 6
    KILL = 7
    BPF = 8
    MEMFD = 9
    CRED = 10
    LSM_DENY = 11
    HIPS = 12


class FileOp(enum.IntEnum):
    OPEN = 1
    UNLINK = 2
    RENAME = 3
    CHMOD = 4
    CHOWN = 5


class NetOp(enum.IntEnum):
    CONNECT = 1
    BIND = 2
    LISTEN = 3
    ACCEPT = 4


class CredOp(enum.IntEnum):
    SETUID = 1
    SETGID = 2
    SETREUID = 3
    SETREGID = 4
    SETRESUID = 5
    SETRESGID = 6
    CAPSET = 7


class KillSyscall(enum.IntEnum):
    KILL = 1
    TKILL = 2
    TGKILL = 3
    PIDFD = 4


class LsmHook(enum.IntEnum):
    FILE_OPEN = 1
    BPRM_CHECK = 2
    BPF_PROG_LOAD = 3


class HipsOp(enum.IntEnum):
    EXEC = 1
    OPEN_READ = 2
    OPEN_WRITE = 3
    CREATE = 4
    UNLINK = 5
    RENAME = 6
    CHMOD = 7
    CONNECT = 8
    BIND = 9
    PTRACE = 10
    SIGNAL = 11


class HipsAction(enum.IntEnum):
    ALLOW = 1
    AUDIT = 2
    DENY = 3
    KILL = 4


class HipsMode(enum.IntEnum):
    AUDIT = 1
    ENFORCE = 2


class SubjectKind(enum.IntEnum):
    EXE = 1
    PARENT_EXE = 2
    UID = 3
    CGROUP = 4


class Mechanism(enum.IntEnum):
    LSM = 1
    EXEC_KILL = 2
    CGROUP_SOCK = 3
    FANOTIFY = 4


HIPS_F_DIR_OBJECTS: Final = 1 << 0

F_TRUNC_PATH: Final = 1 << 0
F_TRUNC_ARGV: Final = 1 << 1
F_EXE_MEMFD: Final = 1 << 2
F_RELATIVE: Final = 1 << 3
F_RELATIVE2: Final = 1 << 4

c_u8 = ctypes.c_uint8
c_u16 = ctypes.c_uint16
c_u32 = ctypes.c_uint32
c_s32 = ctypes.c_int32
c_u64 = ctypes.c_uint64
c_s64 = ctypes.c_int64


class EventHdr(ctypes.Structure):
    _fields_ = [
        ("type", c_u16),
        ("flags", c_u16),
        ("size", c_u32),
        ("ts_ns", c_u64),
        ("pid", c_u32),
        ("tgid", c_u32),
        ("ppid", c_u32),
        ("uid", c_u32),
        ("euid", c_u32),
        ("gid", c_u32),
        ("cgroup_id", c_u64),
        ("start_ns", c_u64),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


class ExecEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("exe_ino", c_u64),
        ("exe_dev", c_u32),
        ("argc", c_u32),
        ("argv_len", c_u32),
        ("exe_nlink", c_u32),
        ("exe", ctypes.c_char * PATH_LEN),
        ("filename", ctypes.c_char * PATH_LEN),
        ("cwd", ctypes.c_char * PATH_LEN),
        ("argv", c_u8 * ARGV_LEN),
    ]


class ForkEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("child_pid", c_u32),
        ("child_tgid", c_u32),
        ("child_start_ns", c_u64),
    ]


class ExitEvent(ctypes.Structure):
    _fields_ = [("hdr", EventHdr), ("exit_code", c_s32), ("_pad", c_u32)]


class FileEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("open_flags", c_s32),
        ("mode", c_u32),
        ("owner_uid", c_u32),
        ("owner_gid", c_u32),
        ("dev", c_u32),
        ("ino", c_u64),
        ("path", ctypes.c_char * PATH_LEN),
        ("dir", ctypes.c_char * PATH_LEN),
        ("path2", ctypes.c_char * PATH_LEN),
        ("dir2", ctypes.c_char * PATH_LEN),
    ]


class NetEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("ret", c_s32),
        ("family", c_u16),
        ("protocol", c_u16),
        ("sport", c_u16),
        ("dport", c_u16),
        ("saddr", c_u8 * 16),
        ("daddr", c_u8 * 16),
        ("backlog", c_u32),
        ("_pad", c_u32),
    ]


class PtraceEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("request", c_s64),
        ("target_pid", c_s32),
        ("_pad", c_u32),
        ("addr", c_u64),
    ]


class KillEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("target_pid", c_s32),
        ("target_tgid", c_s32),
        ("sig", c_s32),
        ("syscall", c_u32),
    ]


class BpfEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("cmd", c_s32),
        ("prog_type", c_u32),
        ("map_type", c_u32),
        ("attach_type", c_u32),
        ("name", ctypes.c_char * 16),
    ]


class MemfdEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("flags", c_u32),
        ("_pad", c_u32),
        ("name", ctypes.c_char * NAME_LEN),
    ]


class CredEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("a0", c_u32),
        ("a1", c_u32),
        ("a2", c_u32),
        ("cap_effective", c_u64),
        ("cap_permitted", c_u64),
    ]


class LsmDenyEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("hook", c_u32),
        ("ret", c_s32),
        ("ino", c_u64),
        ("dev", c_u32),
        ("rule_id", c_u32),
        ("path", ctypes.c_char * PATH_LEN),
    ]


class InodeKey(ctypes.Structure):
    _fields_ = [("ino", c_u64), ("dev", c_u32), ("_pad", c_u32)]


def kernel_dev(st_dev: int) -> int:
    """User-space dev_t -> the kernel's internal encoding (major << 20 | minor), as BPF reads ``s_dev``."""
    return (os.major(st_dev) << 20) | os.minor(st_dev)


class InodeRule(ctypes.Structure):
    _fields_ = [("rule_id", c_u32), ("action", c_u32)]


class HipsState(ctypes.Structure):
    _fields_ = [("active_gen", c_u32), ("_pad", c_u32)]


class HipsGen(ctypes.Structure):
    _fields_ = [("mode", c_u32), ("default_action", c_u32), ("flags", c_u32), ("_pad", c_u32)]


class SubjectKey(ctypes.Structure):
    _fields_ = [("gen", c_u32), ("kind", c_u32), ("a", c_u64), ("b", c_u64)]


class RuleKey(ctypes.Structure):
    _fields_ = [("gen", c_u32), ("subject", c_u32), ("op", c_u32), ("dev", c_u32), ("ino", c_u64)]


class RuleVal(ctypes.Structure):
    _fields_ = [("action", c_u32), ("rule_id", c_u32)]


class NetKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", c_u32),
        ("gen", c_u32),
        ("subject", c_u32),
        ("op", c_u32),
        ("port", c_u32),
        ("addr", c_u8 * 16),
    ]


class TaskSubject(ctypes.Structure):
    _fields_ = [
        ("exe_ino", c_u64),
        ("parent_exe_ino", c_u64),
        ("exe_dev", c_u32),
        ("parent_exe_dev", c_u32),
        ("start_ns", c_u64),
    ]


class HipsEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("action", c_u32),
        ("rule_id", c_u32),
        ("subject", c_u32),
        ("mechanism", c_u32),
        ("ret", c_s32),
        ("gen", c_u32),
        ("enforced", c_u32),
        ("ino", c_u64),
        ("dev", c_u32),
        ("family", c_u16),
        ("port", c_u16),
        ("addr", c_u8 * 16),
        ("target_pid", c_s32),
        ("_pad", c_u32),
        ("path", ctypes.c_char * PATH_LEN),
    ]


class QuarantineVal(ctypes.Structure):
    _fields_ = [("start_ns", c_u64), ("incident", c_u32), ("flags", c_u32)]


# ---- tamper protection (bastion.h, tamper section; src/bastion/guard/) ----------------


class TamperRecord(enum.IntEnum):
    EV_TAMPER = 64


class TamperOp(enum.IntEnum):
    SIGNAL = 1
    PTRACE = 2
    OPEN_WRITE = 3
    TRUNCATE = 4
    CREATE = 5
    UNLINK = 6
    RENAME = 7
    LINK = 8
    SETATTR = 9
    SETXATTR = 10
    MOUNT = 11
    UMOUNT = 12
    BPF_MAP = 13
    BPF_LINK = 14
    PROC_MEM = 15
    VM_WRITE = 16


class TamperVerdict(enum.IntEnum):
    DENIED = 1
    KILLED = 2


class TamperRole(enum.IntEnum):
    AGENT = 1
    GUARDIAN = 2


TOBJ_SELF: Final = 1 << 0
TOBJ_SUBTREE: Final = 1 << 1
TOBJ_ANCESTOR: Final = 1 << 2


class TamperIdent(ctypes.Structure):
    _fields_ = [("start_ticks", c_u64), ("exe_ino", c_u64), ("exe_dev", c_u32), ("role", c_u32)]


class TamperObj(ctypes.Structure):
    _fields_ = [("flags", c_u32), ("id", c_u32)]


class TamperEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("verdict", c_u32),
        ("ret", c_s32),
        ("target_pid", c_s32),
        ("arg", c_s64),
        ("ino", c_u64),
        ("dev", c_u32),
        ("obj_id", c_u32),
        ("exe", ctypes.c_char * PATH_LEN),
        ("path", ctypes.c_char * PATH_LEN),
    ]


# Enums of the tamper section, by C name (prefixes BASTION_EV_ / BASTION_TAMPER_ /
# BASTION_TV_ / BASTION_ROLE_); not in ENUMS until tests/unit/test_abi.py knows them.
TAMPER_ENUMS: Final[dict[str, type[enum.IntEnum]]] = {
    "bastion_tamper_record": TamperRecord,
    "bastion_tamper_op": TamperOp,
    "bastion_tamper_verdict": TamperVerdict,
    "bastion_tamper_role": TamperRole,
}


# C struct name in bastion.h -> mirror; the ABI test walks this table.
STRUCTS: Final[dict[str, type[ctypes.Structure]]] = {
    "bastion_event_hdr": EventHdr,
    "bastion_exec_event": ExecEvent,
    "bastion_fork_event": ForkEvent,
    "bastion_exit_event": ExitEvent,
    "bastion_file_event": FileEvent,
    "bastion_net_event": NetEvent,
    "bastion_ptrace_event": PtraceEvent,
    "bastion_kill_event": KillEvent,
    "bastion_bpf_event": BpfEvent,
    "bastion_memfd_event": MemfdEvent,
    "bastion_cred_event": CredEvent,
    "bastion_lsm_deny_event": LsmDenyEvent,
    "bastion_inode_key": InodeKey,
    "bastion_inode_rule": InodeRule,
    "bastion_hips_state": HipsState,
    "bastion_hips_gen": HipsGen,
    "bastion_subject_key": SubjectKey,
    "bastion_rule_key": RuleKey,
    "bastion_rule_val": RuleVal,
    "bastion_net_key": NetKey,
    "bastion_task_subject": TaskSubject,
    "bastion_hips_event": HipsEvent,
    "bastion_quarantine_val": QuarantineVal,
    "bastion_tamper_ident": TamperIdent,
    "bastion_tamper_obj": TamperObj,
    "bastion_tamper_event": TamperEvent,
}

# Record type -> its struct.
RECORDS: Final[dict[EventType, type[ctypes.Structure]]] = {
    EventType.EXEC: ExecEvent,
    EventType.FORK: ForkEvent,
    EventType.EXIT: ExitEvent,
    EventType.FILE: FileEvent,
    EventType.NET: NetEvent,
    EventType.PTRACE: PtraceEvent,
    EventType.KILL: KillEvent,
    EventType.BPF: BpfEvent,
    EventType.MEMFD: MemfdEvent,
    EventType.CRED: CredEvent,
    EventType.LSM_DENY: LsmDenyEvent,
    EventType.HIPS: HipsEvent,
}

# C enum name -> mirror, for the same test.
ENUMS: Final[dict[str, type[enum.IntEnum]]] = {
    "bastion_event_type": EventType,
    "bastion_file_op": FileOp,
    "bastion_net_op": NetOp,
    "bastion_cred_op": CredOp,
    "bastion_kill_syscall": KillSyscall,
    "bastion_lsm_hook": LsmHook,
    "bastion_hips_op": HipsOp,
    "bastion_hips_action": HipsAction,
    "bastion_hips_mode": HipsMode,
    "bastion_subject_kind": SubjectKind,
    "bastion_mechanism": Mechanism,
}


def check_abi_version(found: int, obj: str) -> None:
    """Refuse an object compiled against another ABI major."""
    if found >> 16 != ABI_MAJOR:
        raise AbiMismatchError(
            f"BPF object speaks ABI {found >> 16}.{found & 0xFFFF}, this Bastion speaks "
            f"{ABI_MAJOR}.{ABI_MINOR}: rebuild the objects (make bpf)",
            location=Location(obj),
        )
