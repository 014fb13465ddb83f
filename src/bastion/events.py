"""Typed events: pure decode of ring-buffer records and one stable JSON form.

``decode(record, boot_to_wall_ns)`` turns the bytes of one record (layout in
:mod:`bastion.abi`) into a frozen dataclass.  ``to_json`` / ``from_json`` give
the one JSON form every event has — the replay format, the store's format and
the CLI's ``--json`` output: ``type``, ``time`` (RFC 3339, UTC, µs), the
process fields (``pid`` is the process id, ``tid`` the thread) including
``exe``, then the type's own fields.  No kernel is needed for any of this.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import ipaddress
import operator
import os
import signal
import struct as _struct
from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Union, assert_never

from bastion import abi
from bastion.containers import Container
from bastion.errors import BastionError, DecodeError
from bastion.timefmt import format_time, parse_time


@dataclass(frozen=True, slots=True)
class Proc:
    """The process an event is about (the actor)."""

    pid: int
    tid: int
    ppid: int
    uid: int
    euid: int
    gid: int
    cgroup_id: int
    comm: str
    start_ns: int = 0
    exe: str = ""
    container: Container | None = None   # filled by containers.ContainerResolver (None: host)


@dataclass(frozen=True, slots=True)
class _Base:
    time_ns: int
    proc: Proc
    truncated: bool = False

    TYPE: ClassVar[str] = ""

    @property
    def type(self) -> str:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class ExecEvent(_Base):
    TYPE: ClassVar[str] = "exec"
    filename: str = ""
    cwd: str = ""
    argv: tuple[str, ...] = ()
    exe_dev: int = 0
    exe_ino: int = 0
    exe_nlink: int = 1
    # ABI 1.4 (issue 15.2/15.3), read in the kernel at exec:
    script: str = ""        # an interpreted file (#!): the script the kernel ran, absolute
    script_dev: int = 0     # run through a descriptor: the script's inode
    script_ino: int = 0
    exec_fd: bool = False   # executed through a descriptor (execveat AT_EMPTY_PATH, fexecve)
    env: tuple[str, ...] = ()  # NAME=value of the watched variables (WATCHED_ENV) it started with
    stdin: str = ""         # fd 0 as /proc shows it: pipe:[ino], socket:[ino], tty, file, ...; "" closed
    stdout: str = ""        # fd 1, the same way
    # ABI 3.5 (s31): the mount namespace the process execs in (its inode; 0: not recorded),
    # and whether its root directory is another than the agent's (a chroot)
    mnt_ns: int = 0
    rooted: bool = False
    # the environment's scan stopped before its end (F_TRUNC_ENV: more entries than the
    # kernel reads, or more watched variables than the record holds): a loader variable
    # past it is unseen (s31)
    env_cut: bool = False

    def paths_ns(self) -> int:
        """The mount namespace the process's absolute paths name files in, as the agent
        sees them: ``mnt_ns``, 0 when unknown or under another root (a chroot)."""
        return 0 if self.rooted else self.mnt_ns


@dataclass(frozen=True, slots=True)
class ForkEvent(_Base):
    TYPE: ClassVar[str] = "fork"
    child_pid: int = 0
    child_start_ns: int = 0


@dataclass(frozen=True, slots=True)
class ExitEvent(_Base):
    TYPE: ClassVar[str] = "exit"
    exit_code: int = 0     # the code passed to exit(), 0 when killed
    signal: int = 0        # the signal that killed it, 0 when it exited
    status: int = 0        # raw wait(2) status


# open(2) flags that make an open a write (O_WRONLY/O_RDWR in O_ACCMODE, O_CREAT, O_TRUNC):
# the rules' ``write_intent``; an open with none of them is a read-only open
OPEN_WRITE_FLAGS = 0o3 | 0o100 | 0o1000


@dataclass(frozen=True, slots=True)
class FileEvent(_Base):
    op: str = "open"       # open, unlink, rename, chmod, chown, link
    path: str = ""         # absolute where the kernel could resolve it
    path2: str = ""        # rename, link: the new name
    flags: int = 0         # open(2) flags
    mode: int = 0          # open create mode / chmod mode
    owner_uid: int = -1    # chown
    owner_gid: int = -1
    dev: int = 0
    ino: int = 0
    # ABI 1.4 (issue 15.1): the inode is in the sensitive read set (by inode, so a
    # hard link to /etc/shadow is "credentials" too); "" when it is not.
    sensitive: str = ""     # credentials, auth-config, host-key, user-keys, cloud, browser, ...
    sensitive_id: int = 0   # the entry of the set that matched (sensors.sensitive), 0 = by name
    # ABI 2.10 (s18-created), open only: the kernel's answer, read from the opened file
    # (BASTION_F_FSTATE); None when the record does not say (an object before 2.10, a
    # replayed event of an older agent, a source that cannot look)
    created: bool | None = None   # this open created the inode (FMODE_CREATED)
    empty: bool | None = None     # the inode held no byte at the open (i_size 0)
    # ABI 3.0 (s21), open only: the inode's ctime at the open (BASTION_F_CTIME; ns), so a
    # file unchanged since the open is told by comparing ctimes, never with the wall
    # clock; None when the record does not say
    ctime_ns: int | None = None
    # ABI 3.2 (s23), utimes only: the modification time being set (ns since the epoch);
    # mode holds abi.UTIMES_* (which of atime/mtime were chosen rather than "now")
    mtime_set_ns: int | None = None

    @property
    def type(self) -> str:
        return self.op


@dataclass(frozen=True, slots=True)
class NetEvent(_Base):
    op: str = "connect"    # connect, bind, listen, accept
    family: str = ""       # inet, inet6, unix, or the number
    protocol: str = ""     # tcp, udp, ... or "" when unknown
    saddr: str = ""
    sport: int = 0
    daddr: str = ""
    dport: int = 0
    backlog: int = 0
    fd: int = -1           # accept: the new descriptor

    @property
    def type(self) -> str:
        return self.op


@dataclass(frozen=True, slots=True)
class PtraceEvent(_Base):
    TYPE: ClassVar[str] = "ptrace"
    request: int = 0
    request_name: str = ""
    target_pid: int = 0
    addr: int = 0


@dataclass(frozen=True, slots=True)
class KillEvent(_Base):
    TYPE: ClassVar[str] = "kill"
    target_pid: int = 0
    target_tgid: int = 0
    signal: int = 0
    signal_name: str = ""
    syscall: str = "kill"
    code: int = 0               # si_code (ABI 2.7): 0 SI_USER, -1 SI_QUEUE, -6 SI_TKILL
    ia32: bool = False          # sent by an ia32 syscall (int $0x80)


@dataclass(frozen=True, slots=True)
class BpfEvent(_Base):
    TYPE: ClassVar[str] = "bpf"
    cmd: str = ""
    prog_type: int = 0
    map_type: int = 0
    attach_type: int = 0
    name: str = ""


@dataclass(frozen=True, slots=True)
class MemfdEvent(_Base):
    TYPE: ClassVar[str] = "memfd_create"
    name: str = ""
    flags: int = 0


@dataclass(frozen=True, slots=True)
class MmapEvent(_Base):
    """Executable memory (ABI 2.1): an mmap/mprotect with PROT_EXEC of anonymous memory,
    of memory writable at the same time or until now (W->X), or of a file in a shared
    temp directory or without a link (memfd, deleted).  ``why`` names which."""

    op: str = "mmap"        # mmap, mprotect
    why: tuple[str, ...] = ()   # anon, write-exec, w2x, tmp-file, no-link (abi.XM_*)
    prot: int = 0           # PROT_* asked for
    flags: int = 0          # mmap: MAP_*; mprotect: the region's vm_flags (hook sensor)
    addr: int = 0
    length: int = 0
    path: str = ""          # the mapped file; "" for anonymous memory
    dev: int = 0
    ino: int = 0

    @property
    def type(self) -> str:
        return self.op


@dataclass(frozen=True, slots=True)
class CredEvent(_Base):
    op: str = "setuid"     # setuid, setgid, setreuid, setregid, setresuid, setresgid, capset
    args: tuple[int, ...] = ()
    cap_effective: int = 0
    cap_permitted: int = 0

    @property
    def type(self) -> str:
        return self.op


@dataclass(frozen=True, slots=True)
class LsmDenyEvent(_Base):
    TYPE: ClassVar[str] = "lsm_deny"
    hook: str = ""
    path: str = ""
    dev: int = 0
    ino: int = 0
    rule_id: int = 0
    ret: int = 0


@dataclass(frozen=True, slots=True)
class HipsEvent(_Base):
    """A HIPS decision taken in the kernel (or by the fanotify listener)."""

    TYPE: ClassVar[str] = "hips"
    op: str = ""            # exec, open-read, open-write, create, ... (policy names)
    action: str = ""        # allow, audit, deny, kill
    rule_id: int = 0        # 1-based index in the applied plan; 0 = default action
    subject: int = 0
    mechanism: str = ""     # lsm, exec-kill, cgroup-sock, fanotify
    enforced: bool = False  # refused/killed (False: audit only)
    ret: int = 0
    gen: int = 0
    path: str = ""
    dev: int = 0
    ino: int = 0
    daddr: str = ""
    dport: int = 0
    target_pid: int = 0
    detail: int = 0         # lsm-prov: abi.PgateHow, how the act was tried (0 = the op itself)

    @property
    def type(self) -> str:
        return "hips"


Event = Union[
    ExecEvent, ForkEvent, ExitEvent, FileEvent, NetEvent, PtraceEvent,
    KillEvent, BpfEvent, MemfdEvent, CredEvent, LsmDenyEvent, HipsEvent, MmapEvent,
]

# JSON "type" -> class
TYPES: Final[dict[str, type[Any]]] = {
    "exec": ExecEvent, "fork": ForkEvent, "exit": ExitEvent,
    **{op.name.lower(): FileEvent for op in abi.FileOp},
    **{op.name.lower(): NetEvent for op in abi.NetOp},
    "ptrace": PtraceEvent, "kill": KillEvent, "bpf": BpfEvent,
    "memfd_create": MemfdEvent,
    **{op.name.lower(): CredEvent for op in abi.CredOp},
    "lsm_deny": LsmDenyEvent,
    "hips": HipsEvent,
    **{op.name.lower(): MmapEvent for op in abi.MmapOp},
}

OP_NAMES: Final = {op: op.name.lower().replace("_", "-") for op in abi.HipsOp}
ACTION_NAMES: Final = {a: a.name.lower() for a in abi.HipsAction}
MECHANISM_NAMES: Final = {m: m.name.lower().replace("_", "-") for m in abi.Mechanism}

_PTRACE: Final = {
    0: "TRACEME", 1: "PEEKTEXT", 2: "PEEKDATA", 3: "PEEKUSR", 4: "POKETEXT",
    5: "POKEDATA", 6: "POKEUSR", 7: "CONT", 8: "KILL", 9: "SINGLESTEP",
    12: "GETREGS", 13: "SETREGS", 16: "ATTACH", 17: "DETACH", 24: "SYSCALL",
    0x4200: "SETOPTIONS", 0x4201: "GETEVENTMSG", 0x4202: "GETSIGINFO",
    0x4203: "SETSIGINFO", 0x4204: "GETREGSET", 0x4205: "SETREGSET",
    0x4206: "SEIZE", 0x4207: "INTERRUPT", 0x4208: "LISTEN",
    # ABI 3.2: no ptrace(2) request, another process's memory by process_vm_readv/writev
    abi.PTRACE_VM_READV: "VM_READV", abi.PTRACE_VM_WRITEV: "VM_WRITEV",
}
_BPF_CMDS: Final = (
    "MAP_CREATE MAP_LOOKUP_ELEM MAP_UPDATE_ELEM MAP_DELETE_ELEM MAP_GET_NEXT_KEY "
    "PROG_LOAD OBJ_PIN OBJ_GET PROG_ATTACH PROG_DETACH PROG_TEST_RUN PROG_GET_NEXT_ID "
    "MAP_GET_NEXT_ID PROG_GET_FD_BY_ID MAP_GET_FD_BY_ID OBJ_GET_INFO_BY_FD PROG_QUERY "
    "RAW_TRACEPOINT_OPEN BTF_LOAD BTF_GET_FD_BY_ID TASK_FD_QUERY "
    "MAP_LOOKUP_AND_DELETE_ELEM MAP_FREEZE BTF_GET_NEXT_ID MAP_LOOKUP_BATCH "
    "MAP_LOOKUP_AND_DELETE_BATCH MAP_UPDATE_BATCH MAP_DELETE_BATCH LINK_CREATE "
    "LINK_UPDATE LINK_GET_FD_BY_ID LINK_GET_NEXT_ID ENABLE_STATS ITER_CREATE "
    "LINK_DETACH PROG_BIND_MAP"
).split()
# The loader and interpreter variables the kernel reports at exec (it pre-filters on
# their first 8 bytes, bpf/lib/exectx.h; the exact name is checked here).
WATCHED_ENV: Final = frozenset({
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
    "PERL5LIB", "PERL5OPT", "PERLLIB", "RUBYOPT", "RUBYLIB", "NODE_OPTIONS", "NODE_PATH",
    "BASH_ENV", "GCONV_PATH",
    # s31 review 3: code a trusted interpreter runs from the environment
    "SHELLOPTS", "BASHOPTS", "PYTHONUSERBASE", "ZDOTDIR", "PERL5DB",
})
SENS_NAMES: Final = {c: c.name.lower().replace("_", "-") for c in abi.SensClass}
# S_IFMT >> 12 of a descriptor -> how fds 0/1 are shown (pipe and socket with the inode,
# as /proc/PID/fd shows them, so a writer's stdout and a reader's stdin can be paired).
_FD_KINDS: Final = {1: "pipe", 2: "tty", 4: "dir", 6: "block", 8: "file", 10: "symlink", 12: "socket"}
_FAMILIES: Final = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink", 17: "packet"}
_PROTOCOLS: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}


def _str(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _addr(family: int, raw: Any) -> str:
    data = bytes(raw)
    if family == 2:
        return str(ipaddress.IPv4Address(data[:4]))
    if family == 10:
        return str(ipaddress.IPv6Address(data))
    return ""


def _join(flags: int, bit: int, directory: bytes, path: bytes, dcut: int = 0, pcut: int = 0) -> str:
    p = _cut(path, pcut)
    if flags & bit and directory:
        return _canon(os.path.normpath(os.path.join(_cut(directory, dcut), p)))
    if p.startswith("/") and ("//" in p or "/." in p):
        # a name as the caller typed it (compat: the syscall's string): `//etc/cron.d/x`,
        # `/usr/./bin/x` must meet the rules' prefixes like `/etc/cron.d/x` (s23 review 7)
        return _canon(os.path.normpath(p))
    return p


def _canon(p: str) -> str:
    """normpath keeps exactly two leading slashes (POSIX): one is the same root."""
    return "/" + p.lstrip("/") if p.startswith("//") else p


CUT_MARK: Final = "\u2026"   # where a file record's string was cut ("…")


def _cut(raw: bytes, cut: int) -> str:
    """A string of a file record, marked where the kernel cut it: a path that lost its
    beginning (walked up from the file: its last components) is shown as ``…/c/d``, never
    as the absolute path ``/c/d`` it is not; one that lost its end as ``/a/b…``."""
    s = _str(raw)
    if not cut:
        return s
    return CUT_MARK + s if cut & abi.FILE_CUT_START else s + CUT_MARK


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"SIG{sig}"


def _proc(h: abi.EventHdr) -> Proc:
    return Proc(
        pid=h.tgid, tid=h.pid, ppid=h.ppid, uid=h.uid, euid=h.euid, gid=h.gid,
        cgroup_id=h.cgroup_id, comm=_str(h.comm), start_ns=h.start_ns,
    )


# A decoder gets the record (its abi struct, copied), the wall-clock time, the actor and
# whether a path or argv was cut; it returns the typed event.
_Decoder = Callable[[Any, int, Proc, bool], Event]


def _fd_kind(kind: int, ino: int) -> str:
    if kind == 0:
        return ""
    name = _FD_KINDS.get(kind, str(kind))
    return f"{name}:[{ino}]" if kind in (1, 12) else name


def watched_env(name: bytes) -> bool:
    """Is the environment variable ``name`` one the kernel reports at exec: a
    :data:`WATCHED_ENV` name, or bash's exported functions, ``BASH_FUNC_<name>%%``
    (s31 review 3)?"""
    return name.startswith(b"BASH_FUNC_") or _str(name) in WATCHED_ENV


def _env(raw: bytes) -> tuple[str, ...]:
    out = []
    for entry in raw.split(b"\0"):
        name, eq, _ = entry.partition(b"=")
        if eq and watched_env(name):
            out.append(_str(entry))
    return tuple(out)


def _exec(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    raw_argv = bytes(r.argv)[: r.argv_len]
    argv = tuple(_str(a) for a in raw_argv.rstrip(b"\0").split(b"\0")) if raw_argv else ()
    flags = r.hdr.flags
    cwd = _str(r.cwd)
    script = _str(r.script) if flags & abi.F_SCRIPT else ""
    if script and not r.script_ino and not script.startswith("/") and cwd.startswith("/"):
        # the filename as passed (relative to cwd); a descriptor's file (script_ino) is
        # the kernel's own name for it (memfd:NAME, a pseudo file) and stays as it is
        script = os.path.normpath(os.path.join(cwd, script))
    return ExecEvent(
        t, proc_with_exe(p, _str(r.exe)), trunc or bool(flags & abi.F_TRUNC_ENV),
        filename=_str(r.filename), cwd=cwd, argv=argv, exe_dev=r.exe_dev, exe_ino=r.exe_ino,
        exe_nlink=r.exe_nlink, script=script, script_dev=r.script_dev, script_ino=r.script_ino,
        exec_fd=bool(flags & abi.F_EXEC_FD),
        env=_env(bytes(r.env)[: min(r.env_len, abi.ENV_LEN)]),
        stdin=_fd_kind(r.stdin_type, r.stdin_ino), stdout=_fd_kind(r.stdout_type, r.stdout_ino),
        mnt_ns=r.mnt_ns, rooted=bool(flags & abi.F_ROOTED), env_cut=bool(flags & abi.F_TRUNC_ENV),
    )


_FILE_OPS: Final = {int(o): o.name.lower() for o in abi.FileOp}
_NET_OPS: Final = {int(o): o.name.lower() for o in abi.NetOp}


def _fork(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    return ForkEvent(t, p, trunc, child_pid=r.child_tgid, child_start_ns=r.child_start_ns)


def _exit(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    st = r.exit_code
    return ExitEvent(t, p, trunc, exit_code=(st >> 8) & 0xFF, signal=st & 0x7F, status=st)


def _file(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    op = _FILE_OPS.get(r.op)
    if op is None:
        raise DecodeError(f"unknown file op {r.op}")
    flags = r.hdr.flags
    (path, dir_, path2, dir2), (pc, dc, p2c, d2c) = r.strings
    return FileEvent(
        t, p, trunc, op=op,
        path=_join(flags, abi.F_RELATIVE, dir_, path, dc, pc),
        path2=_join(flags, abi.F_RELATIVE2, dir2, path2, d2c, p2c),
        flags=r.open_flags, mode=r.mode,
        owner_uid=-1 if r.owner_uid == 0xFFFFFFFF else r.owner_uid,
        owner_gid=-1 if r.owner_gid == 0xFFFFFFFF else r.owner_gid,
        dev=r.dev, ino=r.ino,
        sensitive=SENS_NAMES.get(r.sens_class, str(r.sens_class))
        if flags & abi.F_SENSITIVE and r.sens_class else "",
        sensitive_id=r.sens_id if flags & abi.F_SENSITIVE else 0,
        created=bool(flags & abi.F_CREATED) if flags & abi.F_FSTATE else None,
        empty=bool(flags & abi.F_EMPTY) if flags & abi.F_FSTATE else None,
        ctime_ns=r.ctime_ns if flags & abi.F_CTIME else None,
        mtime_set_ns=r.ctime_ns if r.op == abi.FileOp.UTIMES else None,
    )


def _net(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    op = _NET_OPS.get(r.op)
    if op is None:
        raise DecodeError(f"unknown net op {r.op}")
    return NetEvent(
        t, p, trunc, op=op, family=_FAMILIES.get(r.family, str(r.family)),
        protocol=_PROTOCOLS.get(r.protocol, "" if r.protocol == 0 else str(r.protocol)),
        saddr=_addr(r.family, r.saddr), sport=r.sport,
        daddr=_addr(r.family, r.daddr), dport=r.dport, backlog=r.backlog,
        fd=r.ret if op == "accept" else -1,
    )


def _ptrace(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    return PtraceEvent(
        t, p, trunc, request=r.request, request_name=_PTRACE.get(r.request, str(r.request)),
        target_pid=r.target_pid, addr=r.addr,
    )


def _kill(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    return KillEvent(
        t, p, trunc, target_pid=r.target_pid, target_tgid=r.target_tgid, signal=r.sig,
        signal_name=_signame(r.sig),
        syscall=abi.KillSyscall(r.syscall).name.lower()
        if r.syscall in set(abi.KillSyscall) else str(r.syscall),
        code=r.code, ia32=bool(r.flags & abi.KILL_F_IA32),
    )


def _bpf(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    cmd = _BPF_CMDS[r.cmd] if 0 <= r.cmd < len(_BPF_CMDS) else str(r.cmd)
    return BpfEvent(
        t, p, trunc, cmd=cmd, prog_type=r.prog_type, map_type=r.map_type,
        attach_type=r.attach_type, name=_str(r.name),
    )


def _memfd(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    return MemfdEvent(t, p, trunc, name=_str(r.name), flags=r.flags)


_CRED_NARGS: Final = {
    abi.CredOp.SETUID: 1, abi.CredOp.SETGID: 1, abi.CredOp.SETREUID: 2,
    abi.CredOp.SETREGID: 2, abi.CredOp.CAPSET: 2,
}


def _cred(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    try:
        op = abi.CredOp(r.op)
    except ValueError:
        raise DecodeError(f"unknown cred op {r.op}") from None
    args = tuple(ctypes.c_int32(v).value for v in (r.a0, r.a1, r.a2)[: _CRED_NARGS.get(op, 3)])
    return CredEvent(
        t, p, trunc, op=op.name.lower(), args=args,
        cap_effective=r.cap_effective, cap_permitted=r.cap_permitted,
    )


def _lsm_deny(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    try:
        hook = abi.LsmHook(r.hook).name.lower()
    except ValueError:
        hook = str(r.hook)
    return LsmDenyEvent(
        t, p, trunc, hook=hook, path=_str(r.path), dev=r.dev, ino=r.ino,
        rule_id=r.rule_id, ret=r.ret,
    )


def _hips(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    return HipsEvent(
        t, p, trunc, op=OP_NAMES.get(r.op, str(r.op)),
        action=ACTION_NAMES.get(r.action, str(r.action)), rule_id=r.rule_id,
        subject=r.subject, mechanism=MECHANISM_NAMES.get(r.mechanism, str(r.mechanism)),
        enforced=bool(r.enforced), ret=r.ret, gen=r.gen, path=_str(r.path), dev=r.dev,
        ino=r.ino, daddr=_addr(r.family, r.addr) if r.family else "", dport=r.port,
        target_pid=r.target_pid, detail=r.detail,
    )


# abi.XM_* bits -> the names MmapEvent.why carries, in bit order
XM_NAMES: Final = ((abi.XM_ANON, "anon"), (abi.XM_WRITE, "write-exec"), (abi.XM_W2X, "w2x"),
                   (abi.XM_TMPFILE, "tmp-file"), (abi.XM_NOLINK, "no-link"))
_MMAP_OPS: Final = {op.value: op.name.lower() for op in abi.MmapOp}


def _mmap(r: Any, t: int, p: Proc, trunc: bool) -> Event:
    op = _MMAP_OPS.get(r.op)
    if op is None:
        raise DecodeError(f"mmap record with unknown op {r.op}")
    return MmapEvent(
        t, p, trunc, op=op, why=tuple(n for bit, n in XM_NAMES if r.why & bit), prot=r.prot,
        flags=r.flags, addr=r.addr, length=r.len, path=_str(r.path), dev=r.dev, ino=r.ino,
    )


# Record type -> decoder (the struct is abi.RECORDS[type]).  Every abi.EventType has
# one; tests/unit/test_events.py decodes a synthetic record of each.
DECODERS: Final[Mapping[abi.EventType, _Decoder]] = {
    abi.EventType.EXEC: _exec,
    abi.EventType.FORK: _fork,
    abi.EventType.EXIT: _exit,
    abi.EventType.FILE: _file,
    abi.EventType.NET: _net,
    abi.EventType.PTRACE: _ptrace,
    abi.EventType.KILL: _kill,
    abi.EventType.BPF: _bpf,
    abi.EventType.MEMFD: _memfd,
    abi.EventType.CRED: _cred,
    abi.EventType.LSM_DENY: _lsm_deny,
    abi.EventType.HIPS: _hips,
    abi.EventType.MMAP: _mmap,
}


def decode_reference(record: bytes | bytearray | memoryview, boot_to_wall_ns: int) -> Event:
    """Decode one record through its ctypes mirror (:mod:`bastion.abi`): the reference
    the fast :func:`decode` and :class:`Decoder` are tested against (the same event
    for every record, the same :class:`DecodeError` for every bad one)."""
    size = len(record)
    if size < ctypes.sizeof(abi.EventHdr):
        raise DecodeError(f"record of {size} bytes is shorter than the event header")
    hdr = abi.EventHdr.from_buffer_copy(record[: ctypes.sizeof(abi.EventHdr)])
    try:
        etype = abi.EventType(hdr.type)
    except ValueError:
        raise DecodeError(f"unknown event type {hdr.type}") from None
    decoder, struct_ = DECODERS.get(etype), abi.RECORDS.get(etype)
    if decoder is None or struct_ is None:
        raise DecodeError(f"no decoder for event type {hdr.type} ({etype.name.lower()})")
    need = ctypes.sizeof(struct_)
    if size < need:
        raise DecodeError(f"{etype.name.lower()} record of {size} bytes, expected {need}")
    trunc = bool(hdr.flags & (abi.F_TRUNC_PATH | abi.F_TRUNC_ARGV))
    r: Any = struct_.from_buffer_copy(record[:need])
    if etype is abi.EventType.FILE:   # variable-size: its strings follow the fixed part
        r = _WithStrings(r, abi.file_strings(bytes(record)))
    return decoder(r, hdr.ts_ns + boot_to_wall_ns, _proc(hdr), trunc)


class _WithStrings:
    """A ctypes record with the strings that follow its fixed part (``strings``)."""

    def __init__(self, rec: ctypes.Structure, strings: Any) -> None:
        self._rec = rec
        self.strings = strings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rec, name)


# ---- the fast decode: one struct.unpack_from per record, no ctypes objects -------------
#
# Each record layout (abi.RECORDS) is compiled once into a ``_Layout``: one little-endian
# struct for every scalar field (explicit padding from the ctypes offsets), and the
# offsets of its char arrays (cut at the first NUL, as ctypes does) and byte arrays.  The
# decoders above get a namedtuple with the same attribute names as the ctypes record.

_SCALAR_CODES: Final = {
    ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_uint16: "H", ctypes.c_int16: "h",
    ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q", ctypes.c_int64: "q",
}
_HDR_SIZE: Final = ctypes.sizeof(abi.EventHdr)
_HDR_FIXED: Final = _struct.Struct("<HHIQ")      # type, flags, size, ts_ns
# the actor's part of the header (pid .. comm): equal bytes, equal Proc
_PROC_AT: Final = abi.EventHdr.pid.offset
_PROC_STRUCT: Final = _struct.Struct("<IIIIIIQQ")


def _code(t: Any) -> str:
    for ct, code in _SCALAR_CODES.items():
        if t is ct or (ctypes.sizeof(t) == ctypes.sizeof(ct)
                       and getattr(t, "_type_", None) == getattr(ct, "_type_", "")):
            return code
    raise TypeError(f"no struct code for {t!r}")


class _Layout:
    """How to read one record type without ctypes (built from its ctypes mirror)."""

    def __init__(self, cls: type[ctypes.Structure], *, header: bool = True) -> None:
        scalars: list[tuple[str, int, str]] = []
        self.strings: list[tuple[int, int]] = []
        self.raws: list[tuple[int, int]] = []
        names_s: list[str] = []
        names_r: list[str] = []
        for name, typ in cls._fields_:          # type: ignore[misc]
            off = getattr(cls, name).offset
            if name == "hdr" and header:
                continue
            if issubclass(typ, ctypes.Array):
                if ctypes.sizeof(typ) == 0:
                    continue        # the start of a variable part (abi.file_strings)
                if getattr(typ, "_type_", None) is ctypes.c_char:
                    self.strings.append((off, ctypes.sizeof(typ)))
                    names_s.append(name)
                else:
                    self.raws.append((off, ctypes.sizeof(typ)))
                    names_r.append(name)
            else:
                scalars.append((name, off, _code(typ)))
        fmt, pos = "<", 0
        for _name, off, code in scalars:
            if off < pos:
                raise TypeError(f"{cls.__name__}: overlapping field at {off}")
            fmt += "x" * (off - pos) + code
            pos = off + _struct.calcsize("<" + code)
        self.struct = _struct.Struct(fmt)
        self.size = ctypes.sizeof(cls)
        # a file record's strings follow its fixed part (ABI 2.0): abi.file_strings
        self.var = cls is abi.FileEvent
        fields = (["hdr"] if header else []) + [n for n, _o, _c in scalars] + names_s + names_r \
            + (["strings"] if self.var else [])
        self.tuple = collections.namedtuple(f"_{cls.__name__}", fields, rename=True)  # type: ignore[misc]


# what the decoders read of the header besides the actor (Proc) and the time: the flags
_Hdr = collections.namedtuple("_Hdr", ["flags"])
_LAYOUTS: Final[dict[int, tuple[abi.EventType, _Layout]]] = {
    int(t): (t, _Layout(abi.RECORDS[t])) for t in abi.EventType if t in abi.RECORDS
}


def _cstr(rec: bytes, off: int, n: int) -> bytes:
    end = rec.find(b"\0", off, off + n)
    return rec[off:end if end >= 0 else off + n]


class Decoder:
    """Decodes ring records fast, keeping a bounded cache of the actors it saw.

    Equal header bytes (pid .. comm) give the same :class:`Proc` object, so a
    flood from one process builds its ``Proc`` once.  Same events and same
    :class:`DecodeError` as :func:`decode_reference` (``tests/unit/test_pipeline_equivalence.py``)."""

    def __init__(self, proc_cache: int = 4096) -> None:
        self._procs: dict[bytes, Proc] = {}
        self.proc_cache = proc_cache

    def _proc(self, rec: bytes) -> Proc:
        key = rec[_PROC_AT:_HDR_SIZE]
        p = self._procs.get(key)
        if p is None:
            tid, tgid, ppid, uid, euid, gid, cg, start = _PROC_STRUCT.unpack_from(rec, _PROC_AT)
            p = Proc(pid=tgid, tid=tid, ppid=ppid, uid=uid, euid=euid, gid=gid, cgroup_id=cg,
                     comm=_str(_cstr(rec, abi.EventHdr.comm.offset, abi.COMM_LEN)),
                     start_ns=start)
            if self.proc_cache > 0:
                if len(self._procs) >= self.proc_cache:
                    self._procs.clear()
                self._procs[key] = p
        return p

    def __call__(self, record: bytes | bytearray | memoryview, boot_to_wall_ns: int) -> Event:
        return self.decode(record, boot_to_wall_ns)

    def decode(self, record: bytes | bytearray | memoryview, boot_to_wall_ns: int) -> Event:
        rec = record if isinstance(record, bytes) else bytes(record)
        size = len(rec)
        if size < _HDR_SIZE:
            raise DecodeError(f"record of {size} bytes is shorter than the event header")
        etype_n, flags, _size, ts = _HDR_FIXED.unpack_from(rec, 0)
        entry = _LAYOUTS.get(etype_n)
        decoder = DECODERS.get(entry[0]) if entry is not None else None
        if entry is None or decoder is None:
            try:
                etype = abi.EventType(etype_n)
            except ValueError:
                raise DecodeError(f"unknown event type {etype_n}") from None
            raise DecodeError(f"no decoder for event type {etype_n} ({etype.name.lower()})")
        etype, lay = entry
        if size < lay.size:
            raise DecodeError(f"{etype.name.lower()} record of {size} bytes, expected {lay.size}")
        r = lay.tuple(_Hdr(flags), *lay.struct.unpack_from(rec, 0),
                      *[_cstr(rec, o, n) for o, n in lay.strings],
                      *[rec[o:o + n] for o, n in lay.raws],
                      *((abi.file_strings(rec),) if lay.var else ()))
        return decoder(r, ts + boot_to_wall_ns, self._proc(rec),
                       bool(flags & _TRUNC_FLAGS))


_TRUNC_FLAGS: Final = abi.F_TRUNC_PATH | abi.F_TRUNC_ARGV


_TS_AT: Final = abi.EventHdr.ts_ns.offset
_TS: Final = _struct.Struct("<Q")


class RepeatDecoder:
    """A :class:`Decoder` in front of which a record equal to one decoded recently (every
    byte but the timestamp) is not decoded again: the event is rebuilt from the values
    kept for it, with this record's time (issue 16.3: a flood repeats one record).

    The key is the record's bytes, so any difference (a mode, a path, another actor,
    stale bytes after a string's NUL in a fixed-size record) is a miss and decodes as
    before; bounded (``cache`` records, emptied when full).  When fewer than 1 in 8 of
    the last ``window`` records hit, keying is skipped for the next ``8 * window``
    (a mix with no repeats pays for no key).  Same events as the decoder
    (``tests/unit/test_pipeline_equivalence.py``)."""

    def __init__(self, decoder: Decoder | None = None, cache: int = 1024,
                 window: int = 4096) -> None:
        self.decoder = decoder if decoder is not None else Decoder()
        self.cache = cache
        self.window = window
        self._seen: dict[bytes, tuple[Callable[..., Event], tuple[Any, ...]]] = {}
        self.hits = 0
        self._tried = 0          # records keyed in this window
        self._hits_at = 0        # hits when the window began
        self._skip = 0           # records left to decode without a key

    def decode_batch(self, records: Sequence[bytes | bytearray | memoryview], boot_to_wall_ns: int,
                     on_error: Callable[[DecodeError], object]) -> list[Event]:
        """Decode a drained batch in one pass: the same events, in order, as calling this
        decoder on each record (``tests/unit/test_pipeline_equivalence.py``); a record
        that does not decode is handed to ``on_error`` (its :class:`DecodeError`, naming
        the offset where the decoder names one) and left out.

        A repeat (every byte but the time equal to a record decoded recently) costs a
        key, a dict lookup and the event built straight into its slots (:func:`_maker`,
        no frozen-dataclass ``__init__``): about half of :meth:`__call__`'s cost."""
        out: list[Event] = []
        append = out.append
        seen, cache, window = self._seen, self.cache, self.window
        decode = self.decoder.decode
        ts_of, ts_at, hdr_size = _TS.unpack_from, _TS_AT, _HDR_SIZE
        makers, fields_of = _MAKERS, _ALL_FIELDS
        for record in records:
            rec = record if isinstance(record, bytes) else bytes(record)
            if self._skip:
                self._skip -= 1
                try:
                    append(decode(rec, boot_to_wall_ns))
                except DecodeError as exc:
                    on_error(exc)
                continue
            self._tried += 1
            if self._tried >= window:
                if (self.hits - self._hits_at) * 8 < self._tried:
                    self._skip = 8 * window
                self._tried, self._hits_at = 0, self.hits
            key = rec[:ts_at] + rec[ts_at + 8:]
            hit = seen.get(key)
            if hit is not None and len(rec) >= hdr_size:
                self.hits += 1
                append(hit[0](ts_of(rec, ts_at)[0] + boot_to_wall_ns, *hit[1]))
                continue
            try:
                ev = decode(rec, boot_to_wall_ns)
            except DecodeError as exc:
                on_error(exc)
                continue
            append(ev)
            cls = type(ev)
            get = fields_of.get(cls)
            if get is not None and cache > 0:
                if len(seen) >= cache:
                    seen.clear()
                seen[key] = (makers[cls], get(ev)[1:])
        return out

    def __call__(self, record: bytes | bytearray | memoryview, boot_to_wall_ns: int) -> Event:
        rec = record if isinstance(record, bytes) else bytes(record)
        if self._skip:
            self._skip -= 1
            return self.decoder.decode(rec, boot_to_wall_ns)
        self._tried += 1
        if self._tried >= self.window:
            if (self.hits - self._hits_at) * 8 < self._tried:
                self._skip = 8 * self.window
            self._tried, self._hits_at = 0, self.hits
        key = rec[:_TS_AT] + rec[_TS_AT + 8:]
        hit = self._seen.get(key)
        if hit is not None and len(rec) >= _HDR_SIZE:
            self.hits += 1
            return hit[0](_TS.unpack_from(rec, _TS_AT)[0] + boot_to_wall_ns, *hit[1])
        ev = self.decoder.decode(rec, boot_to_wall_ns)
        get = _ALL_FIELDS.get(type(ev))
        if get is not None and self.cache > 0:
            if len(self._seen) >= self.cache:
                self._seen.clear()
            self._seen[key] = (_MAKERS[type(ev)], get(ev)[1:])
        return ev


def decode(record: bytes | bytearray | memoryview, boot_to_wall_ns: int) -> Event:
    """Decode one ring-buffer record.  ``boot_to_wall_ns`` is added to the
    kernel's CLOCK_BOOTTIME stamp to give wall-clock ns.  A record too short,
    of a type without a decoder, or with an unknown op raises DecodeError.
    (A :class:`Decoder` does the same and keeps its actors cached: the sensors use one.)"""
    return Decoder(proc_cache=0).decode(record, boot_to_wall_ns)


_PROC_KEYS: Final = ("pid", "tid", "ppid", "uid", "euid", "gid", "cgroup_id", "comm", "start_ns", "exe")
_PROC_REQUIRED: Final = ("pid", "tid", "ppid", "uid", "euid", "gid", "cgroup_id", "comm")
_SKIP: Final = {"time_ns", "proc", "truncated"}


def _json_fields(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.name not in _SKIP and (f.name != "op" or cls is HipsEvent))


# event class -> its own fields in the JSON form (file, net and cred events: the op is the type)
_JSON_FIELDS: Final[dict[type[Any], tuple[str, ...]]] = {
    cls: _json_fields(cls) for cls in set(TYPES.values())}


_ALL_FIELDS: Final[dict[type[Any], Callable[[Any], tuple[Any, ...]]]] = {
    cls: operator.attrgetter(*(f.name for f in dataclasses.fields(cls)))
    for cls in set(TYPES.values())}


def _maker(cls: type[Any]) -> Callable[..., Any]:
    """``cls(*values)`` for a value of every field, in declaration order, without the
    frozen dataclass ``__init__`` (one ``object.__setattr__`` per field, ~1.5 µs for a
    file event): a new object whose slots are set directly through their descriptors.
    Equal, field for field, to what ``cls`` builds (the event classes have no
    ``__post_init__``; ``tests/unit/test_pipeline_equivalence.py``)."""
    if "__post_init__" in vars(cls) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__}: no direct construction for this class")
    names = [f.name for f in dataclasses.fields(cls)]
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, n in enumerate(names):
        env[f"_s{i}"] = getattr(cls, n).__set__     # the slot's member descriptor
    args = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    _s{i}(o, v{i})\n" for i in range(len(names)))
    exec(f"def make({args}):\n    o = _new(_cls)\n{body}    return o\n", env)  # noqa: S102 - generated from the dataclass fields, as dataclasses does
    make: Callable[..., Any] = env["make"]
    return make


# event class -> its direct constructor (RepeatDecoder.decode_batch's repeats)
_MAKERS: Final[dict[type[Any], Callable[..., Any]]] = {
    cls: _maker(cls) for cls in set(TYPES.values())}


def all_fields(ev: Event) -> tuple[Any, ...]:
    """Every field of ``ev`` in declaration order (``time_ns``, ``proc``, ``truncated``, then
    the type's own): one C call for the known classes."""
    get = _ALL_FIELDS.get(type(ev))
    if get is None:
        return tuple(getattr(ev, f.name) for f in dataclasses.fields(ev))
    return get(ev)


def proc_with_exe(p: Proc, exe: str) -> Proc:
    """``dataclasses.replace(p, exe=exe)`` without its per-call field introspection (every
    exec record; tests/unit/test_pipeline_equivalence.py checks it against replace)."""
    return Proc(p.pid, p.tid, p.ppid, p.uid, p.euid, p.gid, p.cgroup_id, p.comm, p.start_ns,
                exe, p.container)


def with_proc(ev: Event, proc: Proc) -> Event:
    """``ev`` with another actor: ``dataclasses.replace(ev, proc=proc)``, without its
    per-call field introspection (the agent enriches every event)."""
    get = _ALL_FIELDS.get(type(ev))
    if get is None:
        return dataclasses.replace(ev, proc=proc)
    vals = get(ev)
    new: Event = type(ev)(vals[0], proc, *vals[2:])
    return new


def to_json(ev: Event) -> dict[str, Any]:
    """The stable JSON form of an event (a plain dict, JSON-ready)."""
    p = ev.proc
    out: dict[str, Any] = {"type": ev.type, "time": format_time(ev.time_ns),
                           "pid": p.pid, "tid": p.tid, "ppid": p.ppid, "uid": p.uid,
                           "euid": p.euid, "gid": p.gid, "cgroup_id": p.cgroup_id,
                           "comm": p.comm, "start_ns": p.start_ns, "exe": p.exe}
    if p.container is not None:
        out["container"] = p.container.to_json()
    names = _JSON_FIELDS.get(type(ev))
    for name in names if names is not None else _json_fields(type(ev)):
        v = getattr(ev, name)
        out[name] = list(v) if isinstance(v, tuple) else v
    if ev.truncated:
        out["truncated"] = True
    return out


def from_json(obj: Mapping[str, Any]) -> Event:
    """Rebuild an event from its JSON form; DecodeError says what is wrong."""
    if not isinstance(obj, Mapping):
        raise DecodeError(f"an event must be a JSON object, not {type(obj).__name__}")
    etype = obj.get("type")
    cls = TYPES.get(etype) if isinstance(etype, str) else None
    if cls is None:
        raise DecodeError(f"unknown event type {etype!r}")
    for k in ("time", *_PROC_REQUIRED):
        if k not in obj:
            raise DecodeError(f"{etype} event lacks field {k!r}")
    for k in _PROC_KEYS:
        if k in obj and not isinstance(obj[k], str if k in ("comm", "exe") else int):
            raise DecodeError(f"{etype} event: field {k!r} has the wrong type")
    try:
        tsec = parse_time(str(obj["time"]))
        proc = Proc(**{k: obj[k] for k in _PROC_KEYS if k in obj},
                    container=Container.from_json(obj["container"]) if "container" in obj else None)
    except KeyError as exc:
        raise DecodeError(f"{etype} event lacks field {exc.args[0]!r}") from None
    except (TypeError, ValueError, BastionError) as exc:
        raise DecodeError(f"{etype} event: {exc}") from exc
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in obj.items():
        if k in ("type", "time", "container") or k in _PROC_KEYS:
            continue
        if k in _ROW_KEYS:     # a stored row's repeats (bastion events --json): see repeats()
            continue
        if k == "truncated":
            kwargs["truncated"] = bool(v)
            continue
        if k not in names:
            raise DecodeError(f"{etype} event has unknown field {k!r}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    if "op" in names and cls is not HipsEvent:
        kwargs["op"] = etype
    try:
        ev: Event = cls(time_ns=round(tsec * 1_000_000) * 1000, proc=proc, **kwargs)
    except TypeError as exc:
        raise DecodeError(f"{etype} event: {exc}") from exc
    return ev


# keys a stored event row adds to the JSON form when it stands for exact repeats the
# store coalesced (store/eventproc.py): how many, and the last one's time
_ROW_KEYS: Final = frozenset({"count", "last_time"})


def repeats(obj: Mapping[str, Any]) -> tuple[int, int | None]:
    """(how many events a stored row stands for, the last one's time as epoch ns or None)
    from its ``count`` and ``last_time`` (1, None for a plain event); DecodeError when
    they are malformed."""
    n = obj.get("count", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise DecodeError(f"a stored row's count must be a positive integer, not {n!r}")
    if n == 1:
        return 1, None
    try:
        last = parse_time(str(obj["last_time"]))
    except (KeyError, BastionError) as exc:
        raise DecodeError(f"a stored row of {n} repeats needs a valid last_time ({exc})") from exc
    return n, round(last * 1_000_000) * 1000


def summary(ev: Event) -> str:
    """One short human line of the type's own fields."""
    if isinstance(ev, ExecEvent):
        return " ".join(ev.argv) or ev.proc.exe
    if isinstance(ev, ExitEvent):
        return f"signal {ev.signal}" if ev.signal else f"code {ev.exit_code}"
    if isinstance(ev, FileEvent):
        return f"{ev.path} -> {ev.path2}" if ev.op in ("rename", "link") else ev.path
    if isinstance(ev, NetEvent):
        return f"{ev.daddr}:{ev.dport}" if ev.op == "connect" else f"{ev.saddr}:{ev.sport}"
    if isinstance(ev, KillEvent):
        return f"{ev.signal_name} -> {ev.target_pid}"
    if isinstance(ev, PtraceEvent):
        return f"{ev.request_name} {ev.target_pid}"
    if isinstance(ev, ForkEvent):
        return f"child {ev.child_pid}"
    if isinstance(ev, BpfEvent):
        return f"{ev.cmd} {ev.name}".strip()
    if isinstance(ev, MemfdEvent):
        return ev.name
    if isinstance(ev, CredEvent):
        return f"{ev.op}{ev.args}"
    if isinstance(ev, HipsEvent):
        obj = ev.path or (f"{ev.daddr}:{ev.dport}" if ev.daddr else str(ev.target_pid or ""))
        return f"{ev.action} {ev.op} {obj} ({ev.mechanism})"
    if isinstance(ev, LsmDenyEvent):
        return f"{ev.hook} {ev.path}"
    if isinstance(ev, MmapEvent):
        return f"{','.join(ev.why)} {ev.path or 'anonymous'}"
    assert_never(ev)


__all__ = [
    "Proc", "Event", "ExecEvent", "ForkEvent", "ExitEvent", "FileEvent", "NetEvent",
    "PtraceEvent", "KillEvent", "BpfEvent", "MemfdEvent", "CredEvent", "LsmDenyEvent", "HipsEvent",
    "MmapEvent", "XM_NAMES", "TYPES", "DECODERS", "Decoder", "RepeatDecoder", "all_fields", "decode", "decode_reference", "with_proc", "to_json", "from_json", "repeats", "summary", "WATCHED_ENV", "watched_env", "SENS_NAMES",
]
