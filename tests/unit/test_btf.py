"""BTF reading from a compiled object — no root, no kernel (bastion.kernel.btf)."""

from __future__ import annotations

import ctypes
import errno
from pathlib import Path

import pytest

from bastion.errors import BpfObjectError
from bastion.kernel.btf import Btf, MemberInfo, enum_values, struct_layout

ROOT = Path(__file__).resolve().parents[2]
SELFTEST = ROOT / "build" / "bpf" / "selftest.bpf.o"


@pytest.fixture(scope="module")
def obj() -> Path:
    if not SELFTEST.exists():
        pytest.fail(f"{SELFTEST} missing: run `make bpf`")
    return SELFTEST


class StRecord(ctypes.Structure):
    """What test code expects struct st_record (bpf/selftest.bpf.c) to be."""

    _fields_ = [
        ("magic", ctypes.c_uint64),
        ("seq", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("payload", ctypes.c_uint64 * 4),
    ]


def test_struct_layout_matches_ctypes_mirror(obj: Path) -> None:
    layout = struct_layout(obj, "st_record")
    assert layout.size == ctypes.sizeof(StRecord) == 64
    assert list(layout.members) == [f[0] for f in StRecord._fields_]
    for name, _ in StRecord._fields_:
        field = getattr(StRecord, name)
        assert layout.members[name].offset_bytes == field.offset, name
        assert layout.members[name].size_bytes == field.size, name


def test_member_sizes_resolve_typedefs_enums_and_arrays(obj: Path) -> None:
    layout = struct_layout(obj, "st_record")
    assert layout.members["seq"] == MemberInfo(offset_bytes=8, size_bytes=8, bit_offset=64)
    assert layout.members["kind"].size_bytes == 4  # enum st_kind
    assert layout.members["payload"].size_bytes == 32  # __u64[4]
    args = struct_layout(obj, "st_flood_args")
    assert args.size == 16
    assert {k: (m.offset_bytes, m.size_bytes) for k, m in args.members.items()} == {
        "count": (0, 4),
        "discard_every": (4, 4),
        "seq_base": (8, 8),
    }


def test_anonymous_union_members_are_flattened(obj: Path) -> None:
    # struct bpf_sock_addr ends with `union { struct bpf_sock *sk; }` (vmlinux.h).
    layout = struct_layout(obj, "bpf_sock_addr")
    assert layout.size == 72
    assert layout.members["sk"].offset_bytes == 64
    assert layout.members["sk"].size_bytes == 8
    assert layout.members["user_ip6"].size_bytes == 16


def test_enum_values(obj: Path) -> None:
    assert enum_values(obj, "st_kind") == {"ST_KIND_FLOOD": 1, "ST_KIND_GETPPID": 2}


def test_missing_struct_and_enum_are_named(obj: Path) -> None:
    with pytest.raises(BpfObjectError) as exc:
        struct_layout(obj, "no_such_struct")
    assert "no_such_struct" in str(exc.value)
    assert str(obj) in str(exc.value)
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(BpfObjectError, match="no_such_enum"):
        enum_values(obj, "no_such_enum")


def test_missing_and_non_bpf_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.bpf.o"
    with pytest.raises(BpfObjectError) as exc:
        struct_layout(missing, "st_record")
    assert str(missing) in str(exc.value)
    assert exc.value.errno == errno.ENOENT
    junk = tmp_path / "junk.o"
    junk.write_text("not an ELF file\n")
    with pytest.raises(BpfObjectError) as exc2:
        struct_layout(junk, "st_record")
    assert str(junk) in str(exc2.value)
    assert exc2.value.errno != 0


def test_datasec_lists_rodata_variables(obj: Path) -> None:
    # Names and sizes come from the file; offsets are only final after
    # bpf_object__open (clang 14 leaves them 0), which the kernel tests cover.
    with Btf.parse(obj) as btf:
        sec = btf.datasec_vars(".rodata")
        assert {k: v.size for k, v in sec.items()} == {"cfg_value": 4, "cfg_tgid": 8}
        assert btf.datasec_vars(".no_such_section") == {}
    with pytest.raises(BpfObjectError, match="closed"):
        btf.datasec_vars(".rodata")


def test_rodata_offsets_and_values_without_root(obj: Path) -> None:
    # bpf_object__open makes no bpf() syscall: .rodata can be read (and set)
    # by an unprivileged user, with the offsets libbpf fixed up.
    from bastion.kernel.libbpf import BpfObject

    with BpfObject.open(obj, rodata={"cfg_tgid": 0x1122334455667788}) as o:
        layout = o.rodata_layout()
        assert (layout["cfg_value"].offset, layout["cfg_tgid"].offset) == (0, 8)
        assert o.read_rodata("cfg_value") == (7).to_bytes(4, "little")
        assert o.read_rodata("cfg_tgid") == (0x1122334455667788).to_bytes(8, "little")
