"""Struct layouts, enums and data sections from BTF — no root, no kernel.

Reads the ``.BTF`` section of a compiled BPF object (``btf__parse``) and walks
``struct btf_type`` records directly.  This is what lets ``abi.py``'s ctypes
mirrors be checked against ``bastion.h`` as the compiler laid it out.

:class:`Btf` also wraps a *borrowed* ``struct btf *`` (``bpf_object__btf``),
which :mod:`.libbpf` uses to find ``.rodata`` variables: libbpf fixes up
DATASEC offsets at open time (clang leaves them 0 in the file), so variable
offsets must come from the object's BTF, not the raw file's.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bastion.closing import Closing
from bastion.errors import BpfObjectError, KernelError, Location
from bastion.kernel import _ffi
from bastion.kernel._ffi import LIB

_S = TypeVar("_S", bound=ctypes.Structure)

_MODIFIERS = frozenset(
    {
        _ffi.BTF_KIND_TYPEDEF,
        _ffi.BTF_KIND_VOLATILE,
        _ffi.BTF_KIND_CONST,
        _ffi.BTF_KIND_RESTRICT,
        _ffi.BTF_KIND_TYPE_TAG,
    }
)


@dataclass(frozen=True)
class MemberInfo:
    """One struct/union member.  ``bit_size`` is 0 unless it is a bitfield."""

    offset_bytes: int
    size_bytes: int
    bit_offset: int = 0
    bit_size: int = 0


@dataclass(frozen=True)
class StructLayout:
    """Size and members of a struct or union, by member name.

    Members of anonymous nested structs/unions are flattened in (offsets
    relative to the outer struct), as C lets you name them.
    """

    name: str
    size: int
    members: dict[str, MemberInfo]


@dataclass(frozen=True)
class VarInfo:
    """A variable in a DATASEC (``.rodata``, ``.bss`` …)."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class _Type:
    id: int
    kind: int
    name: str
    vlen: int
    kind_flag: bool
    size_or_type: int
    addr: int  # address of the btf_type record, valid while the Btf lives


class Btf(Closing):
    """A BTF blob: owned (parsed from a file) or borrowed (from a bpf_object)."""

    def __init__(self, ptr: int, *, owned: bool, source: str) -> None:
        self._ptr: int | None = ptr
        self._owned = owned
        self.source = source

    @classmethod
    def parse(cls, path: Path) -> Btf:
        """Parse the BTF of an ELF object (or a raw BTF file)."""
        ptr = LIB.btf__parse(str(path).encode(), None)
        if not ptr:
            err = _ffi.last_errno()
            raise BpfObjectError(
                f"cannot read BTF: {_ffi.strerror(err)} (errno {err})",
                errno=err,
                location=Location(str(path)),
            )
        return cls(int(ptr), owned=True, source=str(path))

    def close(self) -> None:
        if self._ptr is not None and self._owned:
            LIB.btf__free(self._ptr)
        self._ptr = None


    # ---- low level -------------------------------------------------------------

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise BpfObjectError("BTF already closed", errno=errno.EBADF, location=self._loc())
        return self._ptr

    def _loc(self) -> Location:
        return Location(self.source)

    def _name(self, off: int) -> str:
        return _ffi.cstr(LIB.btf__name_by_offset(self.ptr, off))

    def get_type(self, type_id: int) -> _Type:
        addr = LIB.btf__type_by_id(self.ptr, type_id)
        if not addr:
            raise BpfObjectError(
                f"BTF type id {type_id} does not exist", errno=errno.ENOENT, location=self._loc()
            )
        t = _ffi.BtfType.from_address(addr)
        info = int(t.info)
        return _Type(
            id=type_id,
            kind=(info >> 24) & 0x1F,
            name=self._name(int(t.name_off)),
            vlen=info & 0xFFFF,
            kind_flag=bool(info >> 31),
            size_or_type=int(t.size_or_type),
            addr=int(addr),
        )

    def find(self, name: str, kind: int) -> int | None:
        """Type id of ``name`` of BTF ``kind``, or None."""
        tid = int(LIB.btf__find_by_name_kind(self.ptr, name.encode(), kind))
        return tid if tid > 0 else None

    def resolve_size(self, type_id: int) -> int:
        size = int(LIB.btf__resolve_size(self.ptr, type_id))
        if size < 0:
            raise BpfObjectError(
                f"cannot size BTF type id {type_id}: {_ffi.strerror(-size)}",
                errno=-size,
                location=self._loc(),
            )
        return size

    def skip_modifiers(self, type_id: int) -> _Type:
        """Follow typedef/const/volatile/restrict/type_tag to the real type."""
        t = self.get_type(type_id)
        while t.kind in _MODIFIERS:
            t = self.get_type(t.size_or_type)
        return t

    def _trailing(self, t: _Type, struct: type[_S]) -> Iterator[_S]:
        base = t.addr + ctypes.sizeof(_ffi.BtfType)
        step = ctypes.sizeof(struct)
        for i in range(t.vlen):
            yield struct.from_address(base + i * step)

    # ---- high level ------------------------------------------------------------

    def struct_layout(self, name: str) -> StructLayout:
        """Layout of ``struct name`` (or ``union name``)."""
        tid = self.find(name, _ffi.BTF_KIND_STRUCT) or self.find(name, _ffi.BTF_KIND_UNION)
        if tid is None:
            raise BpfObjectError(
                f"no struct or union {name!r} in the BTF", errno=errno.ENOENT, location=self._loc()
            )
        t = self.get_type(tid)
        members: dict[str, MemberInfo] = {}
        self._collect_members(t, 0, members)
        return StructLayout(name=name, size=t.size_or_type, members=members)

    def _collect_members(self, t: _Type, base_bits: int, out: dict[str, MemberInfo]) -> None:
        for m in self._trailing(t, _ffi.BtfMember):
            raw_off = int(m.offset)
            if t.kind_flag:
                bit_size, bit_off = raw_off >> 24, raw_off & 0xFFFFFF
            else:
                bit_size, bit_off = 0, raw_off
            bit_off += base_bits
            name = self._name(int(m.name_off))
            mtype = int(m.type)
            if not name:
                inner = self.skip_modifiers(mtype)
                if inner.kind in (_ffi.BTF_KIND_STRUCT, _ffi.BTF_KIND_UNION):
                    self._collect_members(inner, bit_off, out)
                continue
            if bit_size:
                size = (bit_size + 7) // 8
            else:
                size = self.resolve_size(mtype)
            out[name] = MemberInfo(
                offset_bytes=bit_off // 8,
                size_bytes=size,
                bit_offset=bit_off,
                bit_size=bit_size,
            )

    def enum_values(self, name: str) -> dict[str, int]:
        """Enumerators of ``enum name`` (ENUM or ENUM64), with signedness from BTF."""
        tid = self.find(name, _ffi.BTF_KIND_ENUM) or self.find(name, _ffi.BTF_KIND_ENUM64)
        if tid is None:
            raise BpfObjectError(
                f"no enum {name!r} in the BTF", errno=errno.ENOENT, location=self._loc()
            )
        t = self.get_type(tid)
        signed = t.kind_flag
        out: dict[str, int] = {}
        if t.kind == _ffi.BTF_KIND_ENUM:
            for e in self._trailing(t, _ffi.BtfEnum):
                val = int(e.val)
                out[self._name(int(e.name_off))] = val if signed else val & 0xFFFFFFFF
        else:
            for e64 in self._trailing(t, _ffi.BtfEnum64):
                val = (int(e64.val_hi32) << 32) | int(e64.val_lo32)
                if signed and val >= 1 << 63:
                    val -= 1 << 64
                out[self._name(int(e64.name_off))] = val
        return out

    def datasec_vars(self, section: str) -> dict[str, VarInfo]:
        """Variables of DATASEC ``section`` with their in-section offset and size."""
        tid = self.find(section, _ffi.BTF_KIND_DATASEC)
        if tid is None:
            return {}
        out: dict[str, VarInfo] = {}
        for s in self._trailing(self.get_type(tid), _ffi.BtfVarSecinfo):
            var = self.get_type(int(s.type))
            if var.kind != _ffi.BTF_KIND_VAR:
                continue
            out[var.name] = VarInfo(name=var.name, offset=int(s.offset), size=int(s.size))
        return out


def struct_layout(obj_path: Path, name: str) -> StructLayout:
    """Layout of ``struct name`` as compiled into the BPF object at ``obj_path``."""
    with Btf.parse(obj_path) as btf:
        return btf.struct_layout(name)


def enum_values(obj_path: Path, enum_name: str) -> dict[str, int]:
    """Enumerators of ``enum enum_name`` in the object's BTF."""
    with Btf.parse(obj_path) as btf:
        return btf.enum_values(enum_name)


VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")


def setattr_has_idmap(btf_path: Path = VMLINUX_BTF) -> bool:
    """Does the running kernel's ``inode_setattr`` LSM hook take a leading mnt_idmap (6.3+)?

    ``cfg_setattr_idmap`` of the objects that hook it: the argument list
    changed, and a BPF program must read the arguments where they are.
    """
    with Btf.parse(btf_path) as btf:
        fid = btf.find("bpf_lsm_inode_setattr", _ffi.BTF_KIND_FUNC)
        if fid is None:
            raise KernelError("kernel BTF has no bpf_lsm_inode_setattr (no BPF LSM?)",
                              errno=errno.ENOENT, location=Location(str(btf_path)))
        proto = btf.get_type(btf.get_type(fid).size_or_type)
        if proto.vlen not in (2, 3):
            raise KernelError(f"inode_setattr hook has {proto.vlen} arguments (known: 2, 3)",
                              errno=errno.EINVAL, location=Location(str(btf_path)))
        return int(proto.vlen) == 3


def lsm_hooks_absent(hooks: frozenset[str], btf_path: Path = VMLINUX_BTF) -> frozenset[str]:
    """The LSM hooks of ``hooks`` the running kernel lacks (no ``bpf_lsm_<hook>`` in its
    BTF): a program attached there cannot load, so it is skipped (``ObjectSpec.skip``)."""
    with Btf.parse(btf_path) as btf:
        return frozenset(h for h in hooks if btf.find(f"bpf_lsm_{h}", _ffi.BTF_KIND_FUNC) is None)


def map_birth_hooks(btf_path: Path = VMLINUX_BTF) -> tuple[str, str]:
    """The LSM hooks that see a BPF map made and freed on the running kernel:
    ``("bpf_map_create", "bpf_map_free")`` (6.9+) or ``("bpf_map_alloc_security",
    "bpf_map_free_security")`` (before).  KernelError when it has neither pair: the
    tamper object cannot protect maps from their creation there (fail closed)."""
    with Btf.parse(btf_path) as btf:
        for pair in (("bpf_map_create", "bpf_map_free"),
                     ("bpf_map_alloc_security", "bpf_map_free_security")):
            if all(btf.find(f"bpf_lsm_{h}", _ffi.BTF_KIND_FUNC) is not None for h in pair):
                return pair
    raise KernelError("kernel BTF has no BPF map alloc/free LSM hooks (bpf_lsm_bpf_map_create "
                      "or bpf_lsm_bpf_map_alloc_security)", errno=errno.ENOENT,
                      location=Location(str(btf_path)))


def btf_loads(btf_path: Path = VMLINUX_BTF) -> bool:
    """Can a tracepoint program read kernel objects with plain loads here?

    The tracepoint sensor's open programs (``bpf/tp_events.bpf.c``, s16-open) take the
    caller's flags from its saved registers (``bpf_task_pt_regs`` of
    ``bpf_get_current_task_btf``, 5.15+) and the opened file through the
    ``bpf_rdonly_cast`` kfunc (6.2+); without them the probe-read programs load.
    """
    with Btf.parse(btf_path) as btf:
        if btf.find("bpf_rdonly_cast", _ffi.BTF_KIND_FUNC) is None:
            return False
        helpers = btf.enum_values("bpf_func_id")
    return {"BPF_FUNC_task_pt_regs", "BPF_FUNC_get_current_task_btf"} <= set(helpers)


# The kernel types the compat sensor's io_uring programs read (bpf/tp_events.bpf.c, s22-uring):
# without one of them (io_uring compiled out) the programs cannot load.
IOURING_TYPES = ("io_kiocb", "io_open", "io_rename", "io_unlink", "io_link", "io_connect")
IOURING_TRACEPOINTS = ("io_uring_submit_req", "io_uring_submit_sqe", "io_uring_complete")


def iouring_tracepoints(btf_path: Path = VMLINUX_BTF) -> tuple[frozenset[str], str]:
    """The io_uring tracepoints of :data:`IOURING_TRACEPOINTS` the running kernel has
    (``btf_trace_<name>`` in its BTF: a ``tp_btf`` program attaches there), and why none
    is usable when the request types are absent ("" otherwise)."""
    with Btf.parse(btf_path) as btf:
        absent = [t for t in IOURING_TYPES if btf.find(t, _ffi.BTF_KIND_STRUCT) is None]
        if absent:
            return frozenset(), f"no io_uring in the kernel's BTF (struct {', '.join(absent)})"
        return frozenset(t for t in IOURING_TRACEPOINTS
                         if btf.find(f"btf_trace_{t}", _ffi.BTF_KIND_TYPEDEF) is not None), ""


def iouring_in_kernel(btf_path: Path = VMLINUX_BTF) -> tuple[bool, frozenset[str]]:
    """(is io_uring compiled in, its tracepoints as :func:`iouring_tracepoints` gives
    them), from one parse of the kernel's BTF.  Compiled in is decided on the request
    type alone (``io_kiocb``), not on every type the sensor's programs read: a kernel
    without one of those (``io_connect`` needs ``CONFIG_NET``) still runs io_uring's
    task work (the open context, :mod:`bastion.kernel.openctx`, needs its submission
    program there)."""
    with Btf.parse(btf_path) as btf:
        if btf.find("io_kiocb", _ffi.BTF_KIND_STRUCT) is None:
            return False, frozenset()
        if any(btf.find(t, _ffi.BTF_KIND_STRUCT) is None for t in IOURING_TYPES):
            return True, frozenset()
        return True, frozenset(t for t in IOURING_TRACEPOINTS
                               if btf.find(f"btf_trace_{t}", _ffi.BTF_KIND_TYPEDEF) is not None)
