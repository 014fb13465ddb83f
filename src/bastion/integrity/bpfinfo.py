"""Read-only BPF object inventory: programs, links, maps and who holds them.

Its own ctypes handle on the system libbpf (prototypes for the by-id calls
that :mod:`bastion.kernel._ffi` does not declare), so nothing shared is
mutated.  bpftool stops at the first EPERM (DESIGN); this walks every id
and records an object it cannot open instead of stopping.

Helper calls are read from the *translated* instructions: after the
verifier's fixups a helper call's ``imm`` is ``helper - __bpf_call_base``,
so a helper is named by looking the address up in kallsyms — the same
thing bpftool does, and independent of helper-id numbering.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bastion.errors import FeatureUnavailableError, KernelError, Location

c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64
c_int = ctypes.c_int

BPF_TAG_SIZE = 8
BPF_OBJ_NAME_LEN = 16

# enum bpf_task_fd_type (linux/bpf.h)
FD_TYPES = {0: "raw_tracepoint", 1: "tracepoint", 2: "kprobe", 3: "kretprobe", 4: "uprobe", 5: "uretprobe"}
# enum bpf_prog_type (linux/bpf.h), the ones worth naming
PROG_TYPES = {
    0: "unspec", 1: "socket_filter", 2: "kprobe", 3: "sched_cls", 4: "sched_act", 5: "tracepoint",
    6: "xdp", 7: "perf_event", 8: "cgroup_skb", 9: "cgroup_sock", 10: "lwt_in", 11: "lwt_out",
    12: "lwt_xmit", 13: "sock_ops", 14: "sk_skb", 15: "cgroup_device", 16: "sk_msg",
    17: "raw_tracepoint", 18: "cgroup_sock_addr", 19: "lwt_seg6local", 20: "lirc_mode2",
    21: "sk_reuseport", 22: "flow_dissector", 23: "cgroup_sysctl", 24: "raw_tracepoint_writable",
    25: "cgroup_sockopt", 26: "tracing", 27: "struct_ops", 28: "ext", 29: "lsm", 30: "sk_lookup",
    31: "syscall", 32: "netfilter",
}
LINK_TYPES = {
    0: "unspec", 1: "raw_tracepoint", 2: "tracing", 3: "cgroup", 4: "iter", 5: "netns", 6: "xdp",
    7: "perf_event", 8: "kprobe_multi", 9: "struct_ops", 10: "netfilter", 11: "tcx",
    12: "uprobe_multi", 13: "netkit", 14: "sockmap",
}
MAP_TYPES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash", 10: "lru_percpu_hash",
    11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps", 14: "devmap", 15: "sockmap",
    16: "cpumap", 17: "xskmap", 18: "sockhash", 19: "cgroup_storage", 20: "reuseport_sockarray",
    21: "percpu_cgroup_storage", 22: "queue", 23: "stack", 24: "sk_storage", 25: "devmap_hash",
    26: "struct_ops", 27: "ringbuf", 28: "inode_storage", 29: "task_storage", 30: "bloom_filter",
    31: "user_ringbuf", 32: "cgrp_storage", 33: "arena",
}


class BpfProgInfo(ctypes.Structure):
    """``struct bpf_prog_info`` (linux/bpf.h); a prefix is fine, the kernel fills what fits."""

    _fields_ = [
        ("type", c_u32), ("id", c_u32), ("tag", ctypes.c_uint8 * BPF_TAG_SIZE),
        ("jited_prog_len", c_u32), ("xlated_prog_len", c_u32),
        ("jited_prog_insns", c_u64), ("xlated_prog_insns", c_u64),
        ("load_time", c_u64), ("created_by_uid", c_u32), ("nr_map_ids", c_u32),
        ("map_ids", c_u64), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("ifindex", c_u32),
        ("gpl_compatible", c_u32), ("netns_dev", c_u64), ("netns_ino", c_u64),
        ("nr_jited_ksyms", c_u32), ("nr_jited_func_lens", c_u32),
        ("jited_ksyms", c_u64), ("jited_func_lens", c_u64), ("btf_id", c_u32),
        ("func_info_rec_size", c_u32), ("func_info", c_u64), ("nr_func_info", c_u32),
        ("nr_line_info", c_u32), ("line_info", c_u64), ("jited_line_info", c_u64),
        ("nr_jited_line_info", c_u32), ("line_info_rec_size", c_u32),
        ("jited_line_info_rec_size", c_u32), ("nr_prog_tags", c_u32), ("prog_tags", c_u64),
        ("run_time_ns", c_u64), ("run_cnt", c_u64), ("recursion_misses", c_u64),
        ("verified_insns", c_u32), ("attach_btf_obj_id", c_u32), ("attach_btf_id", c_u32),
        ("_pad", c_u32),
    ]


class BpfLinkInfo(ctypes.Structure):
    """``struct bpf_link_info``: the header and the type-specific union as raw bytes."""

    _fields_ = [("type", c_u32), ("id", c_u32), ("prog_id", c_u32), ("_pad", c_u32),
                ("u", ctypes.c_uint8 * 64)]


class BpfMapInfoMini(ctypes.Structure):
    _fields_ = [("type", c_u32), ("id", c_u32), ("key_size", c_u32), ("value_size", c_u32),
                ("max_entries", c_u32), ("map_flags", c_u32), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN)]


class GetFdByIdOpts(ctypes.Structure):
    """libbpf's ``struct bpf_get_fd_by_id_opts`` (1.1)."""

    _fields_ = [("sz", ctypes.c_size_t), ("open_flags", c_u32)]


BPF_F_RDONLY: Final = 1 << 3


_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "bpf_prog_get_next_id": (c_int, [c_u32, ctypes.POINTER(c_u32)]),
    "bpf_link_get_next_id": (c_int, [c_u32, ctypes.POINTER(c_u32)]),
    "bpf_map_get_next_id": (c_int, [c_u32, ctypes.POINTER(c_u32)]),
    "bpf_prog_get_fd_by_id": (c_int, [c_u32]),
    "bpf_link_get_fd_by_id": (c_int, [c_u32]),
    "bpf_map_get_fd_by_id_opts": (c_int, [c_u32, ctypes.c_void_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, ctypes.c_void_p, ctypes.POINTER(c_u32)]),
    "bpf_task_fd_query": (c_int, [c_int, c_int, c_u32, ctypes.c_char_p, ctypes.POINTER(c_u32),
                                  ctypes.POINTER(c_u32), ctypes.POINTER(c_u32),
                                  ctypes.POINTER(c_u64), ctypes.POINTER(c_u64)]),
    "bpf_iter_create": (c_int, [c_int]),
}


def _load() -> Any:
    from bastion.kernel._ffi import libbpf_path  # the one checked, absolute path

    path = libbpf_path()
    try:
        lib = ctypes.CDLL(str(path), use_errno=True)  # a private handle: own prototypes
    except OSError as exc:
        raise FeatureUnavailableError(f"cannot load {path}: {exc}", errno=errno.ENOENT,
                                      location=Location(str(path))) from exc
    for name, (res, args) in _PROTOS.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib


#: Immutable after import (only prototypes are set).
_LIB: Any = _load()


def iter_create(link_fd: int) -> int:
    """``bpf_iter_create``: a readable fd for an iterator link (caller closes)."""
    fd = int(_LIB.bpf_iter_create(link_fd))
    if fd < 0:
        raise KernelError(f"bpf_iter_create: {os.strerror(-fd)}", errno=-fd, location=Location("bpf iter"))
    return fd


def prog_id_of_fd(fd: int) -> int:
    info = BpfProgInfo()
    _info(fd, info)
    return int(info.id)


def link_prog_id(fd: int) -> int:
    """The id of the program behind the link ``fd``."""
    info = BpfLinkInfo()
    _info(fd, info)
    return int(info.prog_id)


def prog_map_ids_of_fd(fd: int) -> list[int]:
    """The ids of every map the program behind ``fd`` uses (``.rodata``/``.bss`` too)."""
    info = BpfProgInfo()
    _info(fd, info)
    n = int(info.nr_map_ids)
    if n == 0:
        return []
    buf = (c_u32 * n)()
    info2 = BpfProgInfo()
    info2.nr_map_ids = n
    info2.map_ids = ctypes.addressof(buf)
    _info(fd, info2)
    return [int(buf[i]) for i in range(min(n, int(info2.nr_map_ids)))]


def prog_map_ids(prog_id: int) -> list[int] | None:
    """:func:`prog_map_ids_of_fd` of a program by id; None when it is gone."""
    fd = int(_LIB.bpf_prog_get_fd_by_id(prog_id))
    if fd < 0:
        if -fd == errno.ENOENT:
            return None
        raise KernelError(f"bpf_prog_get_fd_by_id({prog_id}): {os.strerror(-fd)}", errno=-fd,
                          location=Location(f"bpf prog {prog_id}"))
    try:
        return prog_map_ids_of_fd(fd)
    finally:
        os.close(fd)


def link_exists(link_id: int) -> bool:
    """Is there a link with this id?  Only ENOENT says no."""
    fd = int(_LIB.bpf_link_get_fd_by_id(link_id))
    if fd >= 0:
        os.close(fd)
        return True
    return -fd != errno.ENOENT


def map_exists(map_id: int) -> bool:
    """Is there a map with this id?  Asked with a read-only fd; only ENOENT says no."""
    opts = GetFdByIdOpts(sz=ctypes.sizeof(GetFdByIdOpts), open_flags=BPF_F_RDONLY)
    fd = int(_LIB.bpf_map_get_fd_by_id_opts(map_id, ctypes.byref(opts)))
    if fd >= 0:
        os.close(fd)
        return True
    return -fd != errno.ENOENT


def prog_run_stats(fd: int) -> tuple[int, int]:
    """``(run_time_ns, run_cnt)`` of the program behind ``fd``: the kernel's BPF
    run-time statistics (counted only while ``BPF_ENABLE_STATS`` or
    ``kernel.bpf_stats_enabled`` is on)."""
    info = BpfProgInfo()
    _info(fd, info)
    return int(info.run_time_ns), int(info.run_cnt)


def _ids(fn: Any) -> list[int]:
    out: list[int] = []
    cur = c_u32(0)
    nxt = c_u32(0)
    while True:
        rc = int(fn(cur.value, ctypes.byref(nxt)))
        if rc < 0:
            if -rc == errno.ENOENT:
                return out
            raise KernelError(f"get_next_id: {os.strerror(-rc)}", errno=-rc, location=Location("bpf ids"))
        out.append(nxt.value)
        cur.value = nxt.value


def _info(fd: int, info: ctypes.Structure) -> None:
    size = c_u32(ctypes.sizeof(info))
    rc = int(_LIB.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    if rc < 0:
        raise KernelError(f"bpf_obj_get_info_by_fd: {os.strerror(-rc)}", errno=-rc,
                          location=Location(f"bpf fd {fd}"))


@dataclass
class ProgRecord:
    id: int
    type: str
    name: str
    tag: str
    load_time_ns: int
    uid: int
    map_ids: list[int]
    helper_addrs: list[int]          # resolved later against kallsyms
    kfunc_calls: int
    helpers: list[str] = field(default_factory=list)
    attach: list[str] = field(default_factory=list)
    holders: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


@dataclass
class LinkRecord:
    id: int
    type: str
    prog_id: int
    target: str


@dataclass
class MapRecord:
    id: int
    type: str
    name: str
    key_size: int
    value_size: int
    max_entries: int


_INSN = struct.Struct("<BBhi")


def parse_helper_calls(xlated: bytes, call_base: int) -> tuple[list[int], int]:
    """(absolute helper addresses, number of kfunc calls) in translated instructions.

    ``call_base`` is ``__bpf_call_base``; 0 when addresses are hidden (then
    the list is empty).  Wide ``ld_imm64`` takes two slots and is skipped.
    """
    addrs: list[int] = []
    kfuncs = 0
    i = 0
    n = len(xlated) // 8
    while i < n:
        code, regs, _off, imm = _INSN.unpack_from(xlated, i * 8)
        if code == 0x18:  # BPF_LD | BPF_IMM | BPF_DW: two slots
            i += 2
            continue
        if code == 0x85:  # BPF_JMP | BPF_CALL
            src = regs >> 4
            if src == 0 and imm != 0 and call_base:
                addrs.append(call_base + imm)
            elif src == 2:
                kfuncs += 1
        i += 1
    return sorted(set(addrs)), kfuncs


def read_prog(prog_id: int, call_base: int) -> ProgRecord:
    fd = int(_LIB.bpf_prog_get_fd_by_id(prog_id))
    if fd < 0:
        return ProgRecord(prog_id, "?", "?", "", 0, 0, [], [], 0, error=os.strerror(-fd))
    try:
        info = BpfProgInfo()
        _info(fd, info)
        n_insn = info.xlated_prog_len
        n_maps = info.nr_map_ids
        xbuf = ctypes.create_string_buffer(max(n_insn, 8))
        mbuf = (c_u32 * max(n_maps, 1))()
        info2 = BpfProgInfo()
        info2.xlated_prog_len = n_insn
        info2.xlated_prog_insns = ctypes.addressof(xbuf)
        info2.nr_map_ids = n_maps
        info2.map_ids = ctypes.addressof(mbuf)
        _info(fd, info2)
        xlated = xbuf.raw[: info2.xlated_prog_len]
        addrs, kfuncs = parse_helper_calls(xlated, call_base)
        return ProgRecord(
            id=prog_id, type=PROG_TYPES.get(info.type, str(info.type)),
            name=info.name.decode("utf-8", "replace"), tag=bytes(info.tag).hex(),
            load_time_ns=info.load_time, uid=info.created_by_uid,
            map_ids=[mbuf[i] for i in range(min(n_maps, info2.nr_map_ids))],
            helper_addrs=addrs, kfunc_calls=kfuncs,
        )
    finally:
        os.close(fd)


def read_link(link_id: int) -> LinkRecord | None:
    fd = int(_LIB.bpf_link_get_fd_by_id(link_id))
    if fd < 0:
        return None
    try:
        name_buf = ctypes.create_string_buffer(256)
        info = BpfLinkInfo()
        _info(fd, info)
        ltype = LINK_TYPES.get(info.type, str(info.type))
        target = ""
        if info.type in (1, 7):  # raw_tracepoint; perf_event (6.6+): the name into our buffer
            kind = "raw_tracepoint" if info.type == 1 else "perf_event"
            info2 = BpfLinkInfo()
            struct.pack_into("<QI", info2.u, 0 if info.type == 1 else 8,
                             ctypes.addressof(name_buf), 256)
            _info(fd, info2)
            name = name_buf.value.decode("utf-8", "replace")
            target = f"{kind}/{name}" if name else ""
        elif info.type == 2:  # tracing: attach_type, target_obj_id, target_btf_id
            at, obj, btf_id = struct.unpack_from("<III", bytes(info.u))
            target = f"btf_obj={obj} btf_id={btf_id} attach_type={at}"
        elif info.type == 4:
            info = BpfLinkInfo()
            struct.pack_into("<QI", info.u, 0, ctypes.addressof(name_buf), 256)
            _info(fd, info)
            target = "iter/" + name_buf.value.decode("utf-8", "replace")
        elif info.type == 3:
            cg, at = struct.unpack_from("<QI", bytes(info.u))
            target = f"cgroup_id={cg} attach_type={at}"
        return LinkRecord(link_id, ltype, info.prog_id, target)
    finally:
        os.close(fd)


def read_map(map_id: int) -> MapRecord | None:
    # a read-only fd: enough for its info; the lsm tamper object grants one on a
    # protected map to anyone but our enrolled identities only when the map is
    # BPF_F_RDONLY_PROG (None otherwise)
    opts = GetFdByIdOpts(sz=ctypes.sizeof(GetFdByIdOpts), open_flags=BPF_F_RDONLY)
    fd = int(_LIB.bpf_map_get_fd_by_id_opts(map_id, ctypes.byref(opts)))
    if fd < 0:
        return None
    try:
        info = BpfMapInfoMini()
        _info(fd, info)
        return MapRecord(map_id, MAP_TYPES.get(info.type, str(info.type)),
                         info.name.decode("utf-8", "replace"), info.key_size, info.value_size,
                         info.max_entries)
    finally:
        os.close(fd)


def _task_fd_query(pid: int, fd: int) -> tuple[int, str, str] | None:
    """(prog_id, fd type, target name) for a perf-event or raw_tp link fd of ``pid``."""
    buf = ctypes.create_string_buffer(256)
    blen = c_u32(256)
    prog_id = c_u32(0)
    fd_type = c_u32(0)
    off = c_u64(0)
    addr = c_u64(0)
    rc = int(_LIB.bpf_task_fd_query(pid, fd, 0, buf, ctypes.byref(blen), ctypes.byref(prog_id),
                                    ctypes.byref(fd_type), ctypes.byref(off), ctypes.byref(addr)))
    if rc < 0:
        return None
    kind = FD_TYPES.get(fd_type.value, str(fd_type.value))
    name = buf.value.decode("utf-8", "replace")
    if kind in ("kprobe", "kretprobe") and not name and addr.value:
        name = f"{addr.value:#x}"
    if kind in ("uprobe", "uretprobe"):
        name = f"{name}+{off.value:#x}"
    return prog_id.value, kind, f"{kind}/{name}"


@dataclass
class FdHolder:
    pid: int
    comm: str
    start_ticks: int


def _proc_comm_start(pid: int, proc: Path) -> tuple[str, int]:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return "", 0
    rp = stat.rfind(")")
    comm = stat[stat.find("(") + 1 : rp]
    fields = stat[rp + 2 :].split()
    return comm, int(fields[19]) if len(fields) > 19 else 0


def scan_holders(proc: Path = Path("/proc")) -> tuple[dict[int, list[FdHolder]], dict[int, set[str]]]:
    """Which processes hold each program (by fd on a prog, link or perf event), and
    where the programs held through perf events / raw_tp links are attached."""
    holders: dict[int, dict[int, FdHolder]] = {}
    attach: dict[int, set[str]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fddir = Path(entry.path) / "fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            continue
        who: FdHolder | None = None
        for fds_name in fds:
            try:
                target = os.readlink(fddir / fds_name)
            except OSError:
                continue
            if not target.startswith("anon_inode:"):
                continue
            prog_ids: list[int] = []
            if target in ("anon_inode:bpf-prog", "anon_inode:bpf_link"):
                try:
                    info = (Path(entry.path) / "fdinfo" / fds_name).read_text()
                except OSError:
                    continue
                for line in info.splitlines():
                    if line.startswith("prog_id:"):
                        prog_ids.append(int(line.split()[1]))
                if target == "anon_inode:bpf_link" and "raw_tracepoint" in info:
                    q = _task_fd_query(pid, int(fds_name))
                    if q is not None:
                        attach.setdefault(q[0], set()).add(q[2])
            elif target == "anon_inode:[perf_event]":
                q = _task_fd_query(pid, int(fds_name))
                if q is None:
                    continue
                prog_ids.append(q[0])
                attach.setdefault(q[0], set()).add(q[2])
            if not prog_ids:
                continue
            if who is None:
                comm, start = _proc_comm_start(pid, proc)
                who = FdHolder(pid, comm, start)
            for pid_ in prog_ids:
                holders.setdefault(pid_, {})[pid] = who
    return {k: list(v.values()) for k, v in holders.items()}, attach


@dataclass
class Inventory:
    progs: list[ProgRecord]
    links: list[LinkRecord]
    maps: list[int]         # ids only (see :func:`inventory`)


def inventory(call_base: int, proc: Path = Path("/proc"), *, skip: frozenset[int] = frozenset()) -> Inventory:
    """Every loaded program (but the ``skip`` ids), link and map, with holders and attach points."""
    progs = [read_prog(i, call_base) for i in _ids(_LIB.bpf_prog_get_next_id) if i not in skip]
    links = [x for x in (read_link(i) for i in _ids(_LIB.bpf_link_get_next_id)) if x is not None]
    # maps by id only, no fd: the lsm tamper object refuses any fd (read-only too) of our
    # maps that programs can write (s21 review F8) to the unenrolled scan worker, and each
    # refusal is a critical tamper alert; the baseline only counts them
    maps = list(_ids(_LIB.bpf_map_get_next_id))
    holders, attach = scan_holders(proc)
    by_id = {p.id: p for p in progs}
    for link in links:
        p = by_id.get(link.prog_id)
        if p is not None and link.target:
            attach.setdefault(p.id, set()).add(link.target)
    for p in progs:
        p.attach = sorted(attach.get(p.id, set()))
        p.holders = [{"pid": h.pid, "comm": h.comm, "start_ticks": h.start_ticks}
                     for h in holders.get(p.id, [])]
    return Inventory(progs, links, maps)
