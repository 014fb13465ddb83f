"""ctypes mirror of ``bpf/include/bastion.h`` — the one kernel/user contract.

Nothing else in Python knows a byte offset of a kernel record.  The tables at
the end (``STRUCTS``, ``ENUMS`` with ``ENUM_PREFIXES``, ``DEFINES``) name the C
declaration each mirror stands for, and :func:`contract_problems` compares
them with the header both ways: every struct, enum and ``#define`` of the
header has a mirror here and every mirror a declaration there; struct sizes,
member names, offsets and sizes and enum values against the BTF of a compiled
object (the compiler's layout), ``#define`` values against the header's own
expressions.  ``tests/unit/test_abi.py`` runs it on the real header and every
object, so a change to the header that is not mirrored here fails the build;
:func:`check_abi_version` refuses an object of another ABI major at load.
"""

from __future__ import annotations

import ast
import ctypes
import enum
import operator
import os
import re
import struct
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from bastion.errors import AbiMismatchError, BastionError, DecodeError, Location

ABI_MAJOR: Final = 3
ABI_MINOR: Final = 5
ABI_VERSION: Final = (ABI_MAJOR << 16) | ABI_MINOR

COMM_LEN: Final = 16
PATH_LEN: Final = 256
ARGV_LEN: Final = 512
NAME_LEN: Final = 64
ENV_LEN: Final = 512
FILE_STR_MAX: Final = PATH_LEN - 1   # ABI 2.0: bytes of one string of a file record
FILE_STRS: Final = 4                 # path, dir, path2, dir2
FILE_LEN_MASK: Final = 0x0FFF        # a file record's *_len: the bytes ...
FILE_CUT_END: Final = 0x8000         # ... and where the string was cut: its end (beginning kept)
FILE_CUT_START: Final = 0x4000       # its beginning (end kept: a path walked up from the file)
SENS_DEPTH: Final = 4
SENS_MAX: Final = 4096
RINGBUF_BYTES: Final = 16 * 1024 * 1024         # as compiled; the sensor sets its own size
DROP_SLOTS: Final = 16          # the drops map: slot 0 all, slot <event type> that type's
DROP_SLOT_TAMPER: Final = 15    # the tamper records' slot
SMALL_RINGBUF_BYTES: Final = 1024 * 1024        # objects whose records are rare (decisions)
PRIO_RINGBUF_BYTES: Final = 4 * 1024 * 1024     # the sensors' priority ring (ABI 3.2), as compiled


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
    MMAP = 13      # ABI 2.1: executable memory (MmapEvent, end of this module)


# The record types a sensor puts on its priority ring (ABI 3.2, bpf/lib/common.h): what a
# payload must do; fork, exit and file records (but those of the sensitive set and
# remounts) are bulk.
PRIO_TYPES: Final = frozenset({EventType.EXEC, EventType.NET, EventType.PTRACE, EventType.KILL,
                               EventType.BPF, EventType.MEMFD, EventType.CRED,
                               EventType.LSM_DENY, EventType.HIPS, EventType.MMAP})
EV_PRIO_MASK: Final = sum(1 << t for t in PRIO_TYPES)


class FileOp(enum.IntEnum):
    OPEN = 1
    UNLINK = 2
    RENAME = 3
    CHMOD = 4
    CHOWN = 5
    LINK = 6
    TRUNCATE = 7   # compat: truncate(2), an untrusted tree's shrinking ftruncate(2)
    # succeeded, in the host's mount namespace (s16-fixlog)
    MOUNT_SETATTR = 8   # path: the mount, mode: attr_set, flags: AT_*
    FSPICK = 9          # path: the mount whose superblock is picked, flags
    # ABI 2.9 (s17-logacts): an untrusted tree's in-place rewrite past O_APPEND; mode: the
    # act (RewriteAct), flags: its argument (fcntl flags, fallocate mode, RWF_*, prot)
    REWRITE = 10
    # ABI 3.2 (s23): a chosen time set on a file; mode: UTIMES_* bits, ctime_ns: the mtime set
    UTIMES = 11


class RewriteAct(enum.IntEnum):
    SETFL = 1       # fcntl(F_SETFL) clearing O_APPEND
    FALLOCATE = 2   # fallocate of any mode but KEEP_SIZE / UNSHARE_RANGE
    NOAPPEND = 3    # pwritev2(RWF_NOAPPEND)
    MMAP = 4        # mmap(PROT_WRITE, MAP_SHARED) of a file opened for writing
    MPROTECT = 5    # mprotect adding PROT_WRITE to a shared file mapping
    MPROTECT_UNKNOWN = 6   # mprotect(PROT_WRITE) over areas not looked at (no file)


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
    RT_SIGQUEUEINFO = 5
    RT_TGSIGQUEUEINFO = 6
    OTHER = 7


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
    LSM_PROV = 5
    CONNECT_KILL = 6
    PIPE_KILL = 7   # ABI 3.2 (s23-pipegate): SIGKILL at exec, pipegate.bpf.c


HIPS_F_DIR_OBJECTS: Final = 1 << 0
# hips_stats: op 0's (no op's) row holds the lsm open-verdict cache's miss and store
# counts; a hit (an allow served from the cache) is op * 8 + HIPS_STAT_VC_HIT_ACT
HIPS_STAT_VC_HIT_ACT: Final = 7
HIPS_STAT_VC_MISS: Final = 2
HIPS_STAT_VC_STORE: Final = 3

F_TRUNC_PATH: Final = 1 << 0
F_TRUNC_ARGV: Final = 1 << 1
F_EXE_MEMFD: Final = 1 << 2
F_RELATIVE: Final = 1 << 3
F_RELATIVE2: Final = 1 << 4
F_SENSITIVE: Final = 1 << 5
F_SCRIPT: Final = 1 << 6
F_EXEC_FD: Final = 1 << 7
F_TRUNC_ENV: Final = 1 << 8
# ABI 2.10 (s18-created): FILE OPEN, read from the opened file; meaningful only with F_FSTATE
F_CREATED: Final = 1 << 9     # the open created the inode (FMODE_CREATED)
F_EMPTY: Final = 1 << 10      # the inode held no byte (i_size 0) at the open
F_FSTATE: Final = 1 << 11     # F_CREATED and F_EMPTY are the kernel's answer
# ABI 3.0 (s21): FILE OPEN, ctime_ns is the inode's ctime at the open
F_CTIME: Final = 1 << 12
# ABI 3.1 (s22-uring): a record of an io_uring request (compat sensor: io_uring tracepoints)
F_IOURING: Final = 1 << 13
F_IOURING_NOFD: Final = 1 << 14   # OPEN: no file (fixed slot, skipped CQE, fd closed by completion): name as passed
# ABI 3.5 (s31): EXEC, the process's root is not the agent's (a chroot)
F_ROOTED: Final = 1 << 15
# FileOp.UTIMES's mode bits (ABI 3.2)
UTIMES_ATIME: Final = 1 << 0
UTIMES_MTIME: Final = 1 << 1
# PtraceEvent requests that are no ptrace(2) request (ABI 3.2): process_vm_readv/writev
PTRACE_VM_READV: Final = -1
PTRACE_VM_WRITEV: Final = -2

KILL_F_IA32: Final = 1 << 0   # bastion_kill_event.flags (ABI 2.7)
KILL_F_X32: Final = 1 << 1

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
        # ABI 1.4: exec context
        ("script_ino", c_u64),
        ("script_dev", c_u32),
        ("env_len", c_u32),
        ("stdin_ino", c_u64),
        ("stdout_ino", c_u64),
        ("stdin_type", c_u16),
        ("stdout_type", c_u16),
        ("mnt_ns", c_u32),      # ABI 3.5
        ("script", ctypes.c_char * PATH_LEN),
        ("env", c_u8 * ENV_LEN),
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
    """The fixed part of a file record (ABI 2.0); its strings follow it: see
    :func:`file_strings` and :func:`pack_file_record`."""

    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("open_flags", c_s32),
        ("mode", c_u32),
        ("owner_uid", c_u32),
        ("owner_gid", c_u32),
        ("dev", c_u32),
        ("ino", c_u64),
        ("sens_class", c_u32),
        ("sens_id", c_u32),
        ("path_len", c_u16),
        ("dir_len", c_u16),
        ("path2_len", c_u16),
        ("dir2_len", c_u16),
        ("ctime_ns", c_u64),      # ABI 3.0, OPEN with F_CTIME
        ("data", ctypes.c_char * 0),
    ]


# The strings of a file record, in their order in ``data`` (each has a ``<name>_len``).
FILE_STRINGS: Final = ("path", "dir", "path2", "dir2")


_FILE_FIXED: Final = ctypes.sizeof(FileEvent)
_FILE_LENS_AT: Final = FileEvent.path_len.offset
_U16X4: Final = struct.Struct("<4H")
_U32: Final = struct.Struct("<I")
_CUT_BITS: Final = FILE_CUT_END | FILE_CUT_START
_STR_BITS: Final = FILE_STR_MAX          # as a mask: 255 = 2**8 - 1 (tests/unit/test_file_records.py)
_BAD_BITS: Final = 0xFFFF & ~(_CUT_BITS | _STR_BITS)   # a length above 255, or unknown bits
_SIZE_AT: Final = EventHdr.size.offset


def file_strings(rec: bytes) -> tuple[tuple[bytes, bytes, bytes, bytes], tuple[int, int, int, int]]:
    """The four strings of a file record (path, dir, path2, dir2) and where each was
    cut (0 or a ``FILE_CUT_*`` bit), checked against the record's own fields.

    The header's ``size``, the four ``*_len`` fields and the bytes the ring handed over
    must agree exactly, no length may pass ``FILE_STR_MAX`` or carry unknown bits, and a
    string may not hold a NUL: otherwise :class:`DecodeError` names the byte offset in
    the record of the field that lies, and nothing of the record is used."""
    n = len(rec)
    if n >= _FILE_FIXED:
        l0, l1, l2, l3 = _U16X4.unpack_from(rec, _FILE_LENS_AT)
        a, b, c, d = l0 & _STR_BITS, l1 & _STR_BITS, l2 & _STR_BITS, l3 & _STR_BITS
        p1 = _FILE_FIXED + a
        p2 = p1 + b
        p3 = p2 + c
        # the common case in one test: lengths in range, sizes equal, no NUL in the strings
        if not (l0 | l1 | l2 | l3) & _BAD_BITS and p3 + d == n \
                and _U32.unpack_from(rec, _SIZE_AT)[0] == n and rec.find(b"\0", _FILE_FIXED) < 0:
            return ((rec[_FILE_FIXED:p1], rec[p1:p2], rec[p2:p3], rec[p3:n]),
                    (l0 & _CUT_BITS, l1 & _CUT_BITS, l2 & _CUT_BITS, l3 & _CUT_BITS))
    raise DecodeError(_file_record_problem(rec))


def _file_record_problem(rec: bytes) -> str:
    """What is wrong with a file record :func:`file_strings` refused (the first lie)."""
    n = len(rec)
    if n < _FILE_FIXED:
        return f"file record of {n} bytes is shorter than its fixed part ({_FILE_FIXED})"
    at = _FILE_FIXED
    for i, raw in enumerate(_U16X4.unpack_from(rec, _FILE_LENS_AT)):
        ln = raw & FILE_LEN_MASK
        field = f"{FILE_STRINGS[i]}_len at record offset {_FILE_LENS_AT + 2 * i}"
        if raw & ~(FILE_LEN_MASK | _CUT_BITS) or ln > FILE_STR_MAX:
            return f"file record: {field} is {raw:#06x}: more than {FILE_STR_MAX} bytes or unknown bits"
        if at + ln > n:
            return (f"file record: {field} says {ln} bytes at offset {at}, past the record's "
                    f"end ({n} bytes)")
        nul = rec.find(b"\0", at, at + ln)
        if nul >= 0:
            return f"file record: {field} says {ln} bytes, but a NUL is at record offset {nul}"
        at += ln
    (size,) = _U32.unpack_from(rec, _SIZE_AT)
    return (f"file record: size at record offset {_SIZE_AT} says {size} bytes, its lengths "
            f"{at}, the ring handed over {n}")


def pack_file_record(fixed: FileEvent, path: bytes = b"", dir: bytes = b"",
                     path2: bytes = b"", dir2: bytes = b"",
                     cut: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    """A file record as the kernel writes it: ``fixed`` with its lengths and ``hdr.size``
    set from the strings (each at most ``FILE_STR_MAX`` bytes), then the strings.
    (Tests, and converting a record of the fixed ABI 1.x layout.)"""
    strs = (path, dir, path2, dir2)
    rec = FileEvent.from_buffer_copy(bytes(fixed))
    for name, s, c in zip(FILE_STRINGS, strs, cut):
        if len(s) > FILE_STR_MAX or b"\0" in s:
            raise ValueError(f"{name}: {len(s)} bytes (at most {FILE_STR_MAX}, no NUL)")
        setattr(rec, f"{name}_len", len(s) | c)
    rec.hdr.size = ctypes.sizeof(FileEvent) + sum(len(s) for s in strs)
    return bytes(rec) + b"".join(strs)


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
        ("code", c_s32),
        ("nr", c_s32),
        ("flags", c_u32),
        ("result", c_u32),
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
    # ABI 2.11 (s18-hipsopen): epoch, one more at every apply()/clear(), never reset
    _fields_ = [("active_gen", c_u32), ("_pad", c_u32), ("epoch", c_u64)]


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
        ("detail", c_u32),
        ("path", ctypes.c_char * PATH_LEN),
    ]


class SensClass(enum.IntEnum):
    CREDENTIALS = 1
    AUTH_CONFIG = 2
    HOST_KEY = 3
    USER_KEYS = 4
    CLOUD = 5
    BROWSER = 6
    HISTORY = 7
    PROC_MEM = 8
    CUSTOM = 9


class SensVal(ctypes.Structure):
    _fields_ = [("sens_class", c_u32), ("sens_id", c_u32)]


class QuarantineVal(ctypes.Structure):
    _fields_ = [("start_ns", c_u64), ("incident", c_u32), ("flags", c_u32)]


# ---- provenance (bastion.h "provenance", ABI 2.2; bpf/lib/prov.h) ---------------------

PROV_TMP_BINARY: Final = 1 << 0
PROV_TMP_SCRIPT: Final = 1 << 1
PROV_FILELESS: Final = 1 << 2
PROV_NETWORK_BINARY: Final = 1 << 3
PROV_NETWORK_SCRIPT: Final = 1 << 4
PROV_NETWORK_SERVICE: Final = 1 << 5
PROV_DECODED_PAYLOAD: Final = 1 << 6
PROV_LOCAL_MASK: Final = PROV_TMP_BINARY | PROV_TMP_SCRIPT
PROV_ADMIN_TTY: Final = 1 << 31
PROV_UNTRACKED: Final = 1 << 30   # never in the map: a process whose entry the kernel could not make
PROV_PREFIX_LEN: Final = 64
PROV_LOST_MAX: Final = 4096

# reason bit -> the name the behaviour rules use (detect/behavior/provenance.py)
PROV_REASONS: Final = MappingProxyType({
    PROV_TMP_BINARY: "tmp-binary", PROV_TMP_SCRIPT: "tmp-script", PROV_FILELESS: "fileless",
    PROV_NETWORK_BINARY: "network-binary", PROV_NETWORK_SCRIPT: "network-script",
    PROV_NETWORK_SERVICE: "network-service", PROV_DECODED_PAYLOAD: "decoded-payload",
})


class ProvVal(ctypes.Structure):
    _fields_ = [("start_ns", c_u64), ("reasons", c_u32), ("origin_tgid", c_u32)]


class ProvPrefix(ctypes.Structure):
    _fields_ = [("prefixlen", c_u32), ("path", ctypes.c_char * PROV_PREFIX_LEN)]


class ProvInterp(ctypes.Structure):
    _fields_ = [("code_letters", c_u64)]


# ---- the provenance gate in the hook (bastion.h, ABI 2.3; bpf/lsm_provgate.bpf.c) -----


class PgateClass(enum.IntEnum):
    PERSISTENCE = 1
    CREDENTIAL = 2
    LOG = 3
    SECURITY_TOOL = 4
    SECURITY_CONFIG = 5
    FIREWALL = 6


class PgateHow(enum.IntEnum):
    """How a must-stop act was tried (``bastion_hips_event.detail``, lsm-prov)."""
    FCNTL = 1
    MMAP = 2
    IOCTL = 3
    FALLOCATE = 4
    NOAPPEND = 5
    ANCESTOR = 6
    MOUNT = 7
    NFT_BATCH = 8
    SOCKOPT = 9
    NFNL_WRITE = 10
    ROUTE = 11
    ROUTE_IOCTL = 12
    NETDEV = 13
    NETDEV_IOCTL = 14


class PipegateKind(enum.IntEnum):
    """An installed program in ``pipegate_progs`` (ABI 3.2; the record's ``subject``)."""
    SHELL = 1
    BASE64 = 2     # base64, base32, basenc
    XXD = 3
    OPENSSL = 4
    UUDECODE = 5
    INTERP = 6     # python3, perl, ruby, node, php (their code letters: pipegate_letters)


class PipegateRule(enum.IntEnum):
    """Which end of a decoder -> shell pipe the pipe gate killed (the record's ``rule_id``)."""
    DECODER = 1
    SHELL = 2
    RELAY = 3


PGATE_F_DIR: Final = 1 << 0
PGATE_NAME_LEN: Final = 32


class PgateObj(ctypes.Structure):
    _fields_ = [("cls", c_u32), ("flags", c_u32)]


class PgateName(ctypes.Structure):
    _fields_ = [("ino", c_u64), ("dev", c_u32), ("_pad", c_u32),
                ("name", ctypes.c_char * PGATE_NAME_LEN)]


class PgateTool(ctypes.Structure):
    _fields_ = [("start_ticks", c_u64), ("cls", c_u32), ("_pad", c_u32)]


class PgateCfg(ctypes.Structure):
    _fields_ = [("dry_run", c_u32), ("host_mnt_ns", c_u32)]


# ---- the open context (bastion.h, "Open context", ABI 3.4; bastion.kernel.openctx) ----

OPENCTX_WORDS: Final = 65536   # u64 words of the tid bitmap (PID_MAX_LIMIT / 64)


class OpenctxCounts(ctypes.Structure):
    _fields_ = [("nested_bdis", c_u64), ("marked", c_u64)]


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
    PRLIMIT = 17
    SIGIO = 18
    PIDFD_GETFD = 19
    CGROUP_MOVE = 20
    BPF_MAP_FD = 21
    EXE_IDENTITY = 22   # ABI 3.3: prctl(PR_SET_MM, EXE_FILE or MAP); arg = the sub-option


#: a compat exe-identity record's arg: the caller was killed after its identity changed
EXE_ID_CHANGED: Final = 0x100


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
    "bastion_prov_val": ProvVal,
    "bastion_prov_prefix": ProvPrefix,
    "bastion_prov_interp": ProvInterp,
    "bastion_pgate_obj": PgateObj,
    "bastion_pgate_name": PgateName,
    "bastion_pgate_tool": PgateTool,
    "bastion_pgate_cfg": PgateCfg,
    "bastion_openctx_counts": OpenctxCounts,
    "bastion_sens_val": SensVal,
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
    "bastion_rewrite_act": RewriteAct,
    "bastion_net_op": NetOp,
    "bastion_cred_op": CredOp,
    "bastion_kill_syscall": KillSyscall,
    "bastion_lsm_hook": LsmHook,
    "bastion_hips_op": HipsOp,
    "bastion_hips_action": HipsAction,
    "bastion_hips_mode": HipsMode,
    "bastion_subject_kind": SubjectKind,
    "bastion_mechanism": Mechanism,
    "bastion_pgate_class": PgateClass,
    "bastion_pgate_how": PgateHow,
    "bastion_pipegate_kind": PipegateKind,
    "bastion_pipegate_rule": PipegateRule,
    "bastion_sens_class": SensClass,
    "bastion_tamper_record": TamperRecord,
    "bastion_tamper_op": TamperOp,
    "bastion_tamper_verdict": TamperVerdict,
    "bastion_tamper_role": TamperRole,
}

# C enum name -> the prefix its enumerators carry in C (BASTION_EV_EXEC is EventType.EXEC).
ENUM_PREFIXES: Final[dict[str, str]] = {
    "bastion_event_type": "BASTION_EV_",
    "bastion_file_op": "BASTION_FILE_",
    "bastion_rewrite_act": "BASTION_REWRITE_",
    "bastion_net_op": "BASTION_NET_",
    "bastion_cred_op": "BASTION_CRED_",
    "bastion_kill_syscall": "BASTION_KILL_",
    "bastion_lsm_hook": "BASTION_HOOK_",
    "bastion_hips_op": "BASTION_OP_",
    "bastion_hips_action": "BASTION_ACT_",
    "bastion_hips_mode": "BASTION_MODE_",
    "bastion_subject_kind": "BASTION_SUBJ_",
    "bastion_mechanism": "BASTION_MECH_",
    "bastion_pgate_class": "BASTION_PGATE_",
    "bastion_pgate_how": "BASTION_PGATE_HOW_",
    "bastion_pipegate_kind": "BASTION_PGK_",
    "bastion_pipegate_rule": "BASTION_PGR_",
    "bastion_sens_class": "BASTION_SENS_",
    "bastion_tamper_record": "BASTION_",
    "bastion_tamper_op": "BASTION_TAMPER_",
    "bastion_tamper_verdict": "BASTION_TV_",
    "bastion_tamper_role": "BASTION_ROLE_",
}

# Count sentinels (``X_MAX``): not mirrored, but each must be one past its enum's largest value.
ENUM_SENTINELS: Final = frozenset({"BASTION_EV_MAX", "BASTION_OP_MAX"})

# C #define name -> mirror value (the header's object-like integer macros, every one).
DEFINES: Final[dict[str, int]] = {
    "BASTION_ABI_MAJOR": ABI_MAJOR,
    "BASTION_ABI_MINOR": ABI_MINOR,
    "BASTION_ABI_VERSION": ABI_VERSION,
    "BASTION_COMM_LEN": COMM_LEN,
    "BASTION_PATH_LEN": PATH_LEN,
    "BASTION_ARGV_LEN": ARGV_LEN,
    "BASTION_NAME_LEN": NAME_LEN,
    "BASTION_ENV_LEN": ENV_LEN,
    "BASTION_FILE_STR_MAX": FILE_STR_MAX,
    "BASTION_FILE_STRS": FILE_STRS,
    "BASTION_FILE_LEN_MASK": FILE_LEN_MASK,
    "BASTION_FILE_CUT_END": FILE_CUT_END,
    "BASTION_FILE_CUT_START": FILE_CUT_START,
    "BASTION_PROV_TMP_BINARY": PROV_TMP_BINARY,
    "BASTION_PROV_TMP_SCRIPT": PROV_TMP_SCRIPT,
    "BASTION_PROV_FILELESS": PROV_FILELESS,
    "BASTION_PROV_NETWORK_BINARY": PROV_NETWORK_BINARY,
    "BASTION_PROV_NETWORK_SCRIPT": PROV_NETWORK_SCRIPT,
    "BASTION_PROV_NETWORK_SERVICE": PROV_NETWORK_SERVICE,
    "BASTION_PROV_DECODED_PAYLOAD": PROV_DECODED_PAYLOAD,
    "BASTION_PROV_LOCAL_MASK": PROV_LOCAL_MASK,
    "BASTION_PROV_ADMIN_TTY": PROV_ADMIN_TTY,
    "BASTION_PROV_UNTRACKED": PROV_UNTRACKED,
    "BASTION_PROV_PREFIX_LEN": PROV_PREFIX_LEN,
    "BASTION_PROV_LOST_MAX": PROV_LOST_MAX,
    "BASTION_PGATE_F_DIR": PGATE_F_DIR,
    "BASTION_PGATE_NAME_LEN": PGATE_NAME_LEN,
    "BASTION_SENS_DEPTH": SENS_DEPTH,
    "BASTION_SENS_MAX": SENS_MAX,
    "BASTION_F_SENSITIVE": F_SENSITIVE,
    "BASTION_F_SCRIPT": F_SCRIPT,
    "BASTION_F_EXEC_FD": F_EXEC_FD,
    "BASTION_F_TRUNC_ENV": F_TRUNC_ENV,
    "BASTION_F_CREATED": F_CREATED,
    "BASTION_F_EMPTY": F_EMPTY,
    "BASTION_F_FSTATE": F_FSTATE,
    "BASTION_F_CTIME": F_CTIME,
    "BASTION_F_IOURING": F_IOURING,
    "BASTION_F_IOURING_NOFD": F_IOURING_NOFD,
    "BASTION_F_ROOTED": F_ROOTED,
    "BASTION_UTIMES_ATIME": UTIMES_ATIME,
    "BASTION_UTIMES_MTIME": UTIMES_MTIME,
    "BASTION_PTRACE_VM_READV": PTRACE_VM_READV,
    "BASTION_PTRACE_VM_WRITEV": PTRACE_VM_WRITEV,
    "BASTION_RINGBUF_BYTES": RINGBUF_BYTES,
    "BASTION_PRIO_RINGBUF_BYTES": PRIO_RINGBUF_BYTES,
    "BASTION_EV_PRIO_MASK": EV_PRIO_MASK,
    "BASTION_DROP_SLOTS": DROP_SLOTS,
    "BASTION_DROP_SLOT_TAMPER": DROP_SLOT_TAMPER,
    "BASTION_F_TRUNC_PATH": F_TRUNC_PATH,
    "BASTION_F_TRUNC_ARGV": F_TRUNC_ARGV,
    "BASTION_F_EXE_MEMFD": F_EXE_MEMFD,
    "BASTION_F_RELATIVE": F_RELATIVE,
    "BASTION_F_RELATIVE2": F_RELATIVE2,
    "BASTION_KILL_F_IA32": KILL_F_IA32,
    "BASTION_KILL_F_X32": KILL_F_X32,
    "BASTION_HIPS_F_DIR_OBJECTS": HIPS_F_DIR_OBJECTS,
    "BASTION_HIPS_STAT_VC_HIT_ACT": HIPS_STAT_VC_HIT_ACT,
    "BASTION_HIPS_STAT_VC_MISS": HIPS_STAT_VC_MISS,
    "BASTION_HIPS_STAT_VC_STORE": HIPS_STAT_VC_STORE,
    "BASTION_TOBJ_SELF": TOBJ_SELF,
    "BASTION_EXE_ID_CHANGED": EXE_ID_CHANGED,
    "BASTION_OPENCTX_WORDS": OPENCTX_WORDS,
    "BASTION_TOBJ_SUBTREE": TOBJ_SUBTREE,
    "BASTION_TOBJ_ANCESTOR": TOBJ_ANCESTOR,
}

# Structs that exist only to put the others into every object's BTF (struct
# bastion_abi_types in bpf/lib/common.h, struct bastion_tamper_types in bastion.h).
ANCHORS: Final = frozenset({"bastion_abi_types", "bastion_tamper_types"})


def check_abi_version(found: int, obj: str) -> None:
    """Refuse an object compiled against another ABI major."""
    if found >> 16 != ABI_MAJOR:
        raise AbiMismatchError(
            f"BPF object speaks ABI {found >> 16}.{found & 0xFFFF}, this Bastion speaks "
            f"{ABI_MAJOR}.{ABI_MINOR}: rebuild the objects (make bpf)",
            location=Location(obj),
        )


# ---- the contract check: bastion.h <-> this module, both ways ---------------------------


@dataclass(frozen=True)
class Header:
    """What ``bastion.h`` declares, by name, with the line of each declaration."""

    source: str
    structs: dict[str, int]                 # struct (or union) name -> line
    members: dict[str, tuple[str, ...]]     # struct name -> member names (flat bodies only)
    enums: dict[str, int]                   # enum name -> line
    enumerators: dict[str, tuple[str, ...]]  # enum name -> enumerator names, in order
    defines: dict[str, tuple[int, str]]     # object-like macro -> (line, replacement text)
    macros: dict[str, int]                  # function-like macro -> line
    anonymous: tuple[int, ...] = ()         # lines of enums without a name (not checkable)


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_STRUCT = re.compile(r"\b(?:struct|union)\s+(\w+)\s*\{")
_FLAT_BODY = re.compile(r"([^{}]*)\}")
_MEMBER = re.compile(r"(\w+)\s*(?:\[[^\]]*\]\s*)*(?::\s*\w+\s*)?$")
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{([^}]*)\}")
_ANON = re.compile(r"\b(?:enum|struct|union)\s*\{")
_DEFINE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+(\w+)(\()?((?:[^\n]*\\\n)*[^\n]*)$", re.M)
_IFNDEF = re.compile(r"^[ \t]*#[ \t]*ifndef[ \t]+(\w+)", re.M)
_INT_LITERAL = re.compile(r"\b(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*\b")


def parse_header(text: str, source: str = "bastion.h") -> Header:
    """Find the structs, enums and ``#define`` constants a contract header declares.

    Comments are blanked first (line numbers kept); an include guard (``#ifndef X`` then an
    empty ``#define X``) is not a constant.
    """
    code = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)

    def line(pos: int) -> int:
        return code.count("\n", 0, pos) + 1

    guards = set(_IFNDEF.findall(code))
    structs: dict[str, int] = {}
    members: dict[str, tuple[str, ...]] = {}
    for m in _STRUCT.finditer(code):
        structs[m.group(1)] = line(m.start())
        flat = _FLAT_BODY.match(code, m.end())
        if flat:  # a struct with nested braces (anonymous members) is not listed
            decls = (_MEMBER.search(d.strip()) for d in flat.group(1).split(";") if d.strip())
            members[m.group(1)] = tuple(d.group(1) for d in decls if d)
    enums: dict[str, int] = {}
    enumerators: dict[str, tuple[str, ...]] = {}
    for m in _ENUM.finditer(code):
        enums[m.group(1)] = line(m.start())
        names = (re.match(r"\s*(\w+)", item) for item in m.group(2).split(","))
        enumerators[m.group(1)] = tuple(n.group(1) for n in names if n)
    defines: dict[str, tuple[int, str]] = {}
    macros: dict[str, int] = {}
    for m in _DEFINE.finditer(code):
        name, body = m.group(1), " ".join(m.group(3).replace("\\\n", " ").split())
        if m.group(2):
            macros[name] = line(m.start())
        elif not (body == "" and name in guards):
            defines[name] = (line(m.start()), body)
    anonymous = tuple(line(m.start()) for m in _ANON.finditer(code)  # at top level only
                      if code.count("{", 0, m.start()) == code.count("}", 0, m.start()))
    return Header(source, structs, members, enums, enumerators, defines, macros, anonymous)


_BINOPS: Final[dict[type[ast.operator], Callable[[int, int], int]]] = {
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_, ast.BitXor: operator.xor, ast.Add: operator.add,
    ast.Sub: operator.sub, ast.Mult: operator.mul,
}


def eval_define(body: str, known: Mapping[str, int]) -> int:
    """Value of a ``#define``'s integer constant expression (literals with C suffixes,
    ``<< >> | & ^ + - * ~``, parentheses, earlier constants).  ValueError otherwise."""

    def literal(m: re.Match[str]) -> str:
        digits = m.group(1)
        octal = len(digits) > 1 and digits[0] == "0" and digits[1] not in "xX"
        try:
            return str(int(digits, 8 if octal else 0))
        except ValueError:
            raise ValueError(f"{digits!r} is not an integer literal") from None

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else ~v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.LShift) and not 0 <= right < 64:
                raise ValueError(f"{ast.unparse(node)!r} shifts by {right}")
            return _BINOPS[type(node.op)](left, right)
        raise ValueError(f"{ast.unparse(node)!r} is not an integer constant expression")

    try:
        tree = ast.parse(_INT_LITERAL.sub(literal, body), mode="eval")
    except SyntaxError:
        raise ValueError(f"{body!r} is not an integer constant expression") from None
    return value(tree.body)


class MemberLike(Protocol):
    """One member's place, as :class:`bastion.kernel.btf.MemberInfo` gives it."""

    @property
    def offset_bytes(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...


class LayoutLike(Protocol):
    """A struct's layout, as :class:`bastion.kernel.btf.StructLayout` gives it."""

    @property
    def size(self) -> int: ...

    @property
    def members(self) -> Mapping[str, MemberLike]: ...


class ContractBtf(Protocol):
    """The compiled types (:class:`bastion.kernel.btf.Btf` of an object built with the
    header): each lookup raises a BastionError when the type is absent."""

    def struct_layout(self, name: str) -> LayoutLike: ...

    def enum_values(self, name: str) -> Mapping[str, int]: ...


def contract_problems(
    header: Header,
    btf: ContractBtf,
    *,
    structs: Mapping[str, type[ctypes.Structure]] = STRUCTS,
    enums: Mapping[str, type[enum.IntEnum]] = ENUMS,
    prefixes: Mapping[str, str] = ENUM_PREFIXES,
    sentinels: Set[str] = ENUM_SENTINELS,
    defines: Mapping[str, int] = DEFINES,
    anchors: Set[str] = ANCHORS,
) -> list[str]:
    """Every disagreement between the header, the compiled BTF and the Python mirror.

    Both ways: each struct, enum and ``#define`` of the header has a mirror here and
    each mirror a declaration there; struct sizes, member names, offsets and sizes and
    enum values are compared with the BTF (the compiler's layout), ``#define`` values
    with the header's own expressions.  Each problem names its place
    (``bastion.h:LINE`` or ``abi.TABLE[name]``); an empty list means they agree.
    """
    src = header.source
    out: list[str] = []
    for name, line in header.structs.items():
        if name not in anchors and name not in structs:
            out.append(f"{src}:{line}: struct {name} has no mirror in abi.STRUCTS")
    for name, mirror in structs.items():
        if name not in header.structs:
            out.append(f"abi.STRUCTS[{name!r}]: no struct {name} in {src}")
            continue
        out += _struct_problems(f"{src}:{header.structs[name]}: struct {name}", name, mirror,
                                header.members.get(name), btf)
    for name, line in header.enums.items():
        if name not in enums:
            out.append(f"{src}:{line}: enum {name} has no mirror in abi.ENUMS")
    for name, emirror in enums.items():
        if name not in header.enums:
            out.append(f"abi.ENUMS[{name!r}]: no enum {name} in {src}")
            continue
        where = f"{src}:{header.enums[name]}: enum {name}"
        if name not in prefixes:
            out.append(f"{where}: abi.ENUM_PREFIXES has no prefix for it")
            continue
        out += _enum_problems(where, name, emirror, prefixes[name], sentinels,
                              header.enumerators[name], btf)
    out += _define_problems(header, defines)
    out += [f"{src}:{line}: an anonymous enum, struct or union cannot be mirrored or checked: "
            f"name it" for line in header.anonymous]
    return out


def _struct_problems(
    where: str, name: str, mirror: type[ctypes.Structure], declared: tuple[str, ...] | None,
    btf: ContractBtf,
) -> list[str]:
    try:
        layout = btf.struct_layout(name)
    except BastionError as exc:
        return [f"{where} is not in the compiled BTF ({exc}): add it to struct "
                f"bastion_abi_types (bpf/lib/common.h) and rebuild (make bpf)"]
    if declared is not None and sorted(declared) != sorted(layout.members):
        return [f"{where}: the compiled BTF has members {sorted(layout.members)}, the header "
                f"{sorted(declared)}: rebuild the objects (make bpf)"]
    out: list[str] = []
    if ctypes.sizeof(mirror) != layout.size:
        out.append(f"{where}: {layout.size} bytes, {mirror.__name__} has {ctypes.sizeof(mirror)}")
    fields = [f[0] for f in mirror._fields_]
    for missing in sorted(set(layout.members) - set(fields)):
        out.append(f"{where}: member {missing} has no field in {mirror.__name__}")
    for extra in sorted(set(fields) - set(layout.members)):
        out.append(f"{where}: {mirror.__name__}.{extra} is not a member")
    for fname in fields:
        member = layout.members.get(fname)
        if member is None:
            continue
        field = getattr(mirror, fname)
        if (field.offset, field.size) != (member.offset_bytes, member.size_bytes):
            out.append(f"{where}: member {fname} at {member.offset_bytes} ({member.size_bytes} "
                       f"bytes), {mirror.__name__}.{fname} at {field.offset} ({field.size} bytes)")
    return out


def _enum_problems(
    where: str, name: str, mirror: type[enum.IntEnum], prefix: str, sentinels: Set[str],
    declared: tuple[str, ...], btf: ContractBtf,
) -> list[str]:
    try:
        compiled = dict(btf.enum_values(name))
    except BastionError as exc:
        return [f"{where} is not in the compiled BTF ({exc}): add it to struct "
                f"bastion_abi_types (bpf/lib/common.h) and rebuild (make bpf)"]
    if sorted(compiled) != sorted(declared):
        return [f"{where}: the compiled BTF has {sorted(compiled)}, the header "
                f"{sorted(declared)}: rebuild the objects (make bpf)"]
    out: list[str] = []
    values: dict[str, int] = {}
    for cname, v in compiled.items():
        if not cname.startswith(prefix):
            out.append(f"{where}: {cname} does not start with {prefix} (abi.ENUM_PREFIXES)")
        elif cname not in sentinels:
            values[cname.removeprefix(prefix)] = v
    for cname in sorted(sentinels & compiled.keys()):
        if values and compiled[cname] != max(values.values()) + 1:
            out.append(f"{where}: sentinel {cname} = {compiled[cname]}, not one past the "
                       f"largest value {max(values.values())}")
    mirrored = {m.name: m.value for m in mirror}
    for key in sorted(values.keys() - mirrored.keys()):
        out.append(f"{where}: {prefix}{key} = {values[key]} has no member in {mirror.__name__}")
    for key in sorted(mirrored.keys() - values.keys()):
        out.append(f"{where}: {mirror.__name__}.{key} is not an enumerator ({prefix}{key})")
    for key in sorted(values.keys() & mirrored.keys()):
        if values[key] != mirrored[key]:
            out.append(f"{where}: {prefix}{key} = {values[key]}, "
                       f"{mirror.__name__}.{key} = {mirrored[key]}")
    return out


def _define_problems(header: Header, mirror: Mapping[str, int]) -> list[str]:
    src = header.source
    out = [f"{src}:{line}: function-like macro {name} in the contract cannot be mirrored: "
           f"move it to bpf/lib/" for name, line in header.macros.items()]
    known: dict[str, int] = {}
    for name, (line, body) in header.defines.items():
        try:
            known[name] = eval_define(body, known)
        except ValueError as exc:
            out.append(f"{src}:{line}: #define {name}: {exc}")
            continue
        if name not in mirror:
            out.append(f"{src}:{line}: #define {name} has no mirror in abi.DEFINES")
        elif mirror[name] != known[name]:
            out.append(f"{src}:{line}: #define {name} is {known[name]} ({body}), "
                       f"abi.DEFINES has {mirror[name]}")
    for name in mirror:
        if name not in header.defines:
            out.append(f"abi.DEFINES[{name!r}]: no #define {name} in {src}")
    return out


# The event classes a policy may name (events.classes): each is one record type.
EVENT_CLASSES: Final[dict[str, EventType]] = {
    "exec": EventType.EXEC, "fork": EventType.FORK, "exit": EventType.EXIT,
    "file": EventType.FILE, "net": EventType.NET, "ptrace": EventType.PTRACE,
    "kill": EventType.KILL, "bpf": EventType.BPF, "memfd": EventType.MEMFD,
    "cred": EventType.CRED,
}


# ---- executable memory (bastion.h, ABI 2.1 section; record type EventType.MMAP) --------


class MmapOp(enum.IntEnum):
    MMAP = 1
    MPROTECT = 2


XM_ANON: Final = 1 << 0      # anonymous memory
XM_WRITE: Final = 1 << 1     # writable and executable at once
XM_W2X: Final = 1 << 2       # mprotect of a region that was writable (W->X flip)
XM_TMPFILE: Final = 1 << 3   # a file in a sticky world-writable directory
XM_NOLINK: Final = 1 << 4    # a file without a link (memfd, deleted)
PROT_EXEC: Final = 0x4


class MmapEvent(ctypes.Structure):
    _fields_ = [
        ("hdr", EventHdr),
        ("op", c_u32),
        ("why", c_u32),
        ("prot", c_u32),
        ("flags", c_u32),
        ("addr", c_u64),
        ("len", c_u64),
        ("ino", c_u64),
        ("dev", c_u32),
        ("_pad", c_u32),
        ("path", ctypes.c_char * PATH_LEN),
    ]


STRUCTS["bastion_mmap_event"] = MmapEvent
RECORDS[EventType.MMAP] = MmapEvent
ENUMS["bastion_mmap_op"] = MmapOp
ENUM_PREFIXES["bastion_mmap_op"] = "BASTION_MMAP_"
DEFINES.update({
    "BASTION_XM_ANON": XM_ANON, "BASTION_XM_WRITE": XM_WRITE, "BASTION_XM_W2X": XM_W2X,
    "BASTION_XM_TMPFILE": XM_TMPFILE, "BASTION_XM_NOLINK": XM_NOLINK,
    "BASTION_PROT_EXEC": PROT_EXEC,
})
EVENT_CLASSES["mmap"] = EventType.MMAP
