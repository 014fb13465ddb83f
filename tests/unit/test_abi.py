"""The ctypes mirror in bastion.abi against the BTF of the compiled objects.

Needs only the objects (make bpf), not root: sizes, member offsets and
member sizes of every shared struct, enum values, and the ABI version
constant baked into .rodata.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from bastion import abi
from bastion.errors import AbiMismatchError
from bastion.kernel import btf

BPF_DIR = Path(__file__).resolve().parents[2] / "build" / "bpf"
EVENTS_OBJ = BPF_DIR / "tp_events.bpf.o"
LSM_OBJ = BPF_DIR / "lsm_scoped.bpf.o"


def _obj_for(struct: str) -> Path:
    return LSM_OBJ if struct in ("bastion_lsm_deny_event", "bastion_inode_key",
                                 "bastion_inode_rule") else EVENTS_OBJ


@pytest.mark.parametrize("cname", sorted(abi.STRUCTS))
def test_struct_matches_btf(cname: str) -> None:
    mirror = abi.STRUCTS[cname]
    layout = btf.struct_layout(_obj_for(cname), cname)
    assert ctypes.sizeof(mirror) == layout.size, f"{cname}: size"
    names = [f[0] for f in mirror._fields_]
    assert sorted(names) == sorted(layout.members), f"{cname}: member names"
    for name in names:
        field = getattr(mirror, name)
        member = layout.members[name]
        assert field.offset == member.offset_bytes, f"{cname}.{name}: offset"
        assert field.size == member.size_bytes, f"{cname}.{name}: size"


@pytest.mark.parametrize("cname", sorted(abi.ENUMS))
def test_enum_matches_btf(cname: str) -> None:
    obj = LSM_OBJ if cname == "bastion_lsm_hook" else EVENTS_OBJ
    values = btf.enum_values(obj, cname)
    mirror = abi.ENUMS[cname]
    prefix = {
        "bastion_event_type": "BASTION_EV_", "bastion_file_op": "BASTION_FILE_",
        "bastion_net_op": "BASTION_NET_", "bastion_cred_op": "BASTION_CRED_",
        "bastion_kill_syscall": "BASTION_KILL_", "bastion_lsm_hook": "BASTION_HOOK_",
        "bastion_hips_op": "BASTION_OP_", "bastion_hips_action": "BASTION_ACT_",
        "bastion_hips_mode": "BASTION_MODE_", "bastion_subject_kind": "BASTION_SUBJ_",
        "bastion_mechanism": "BASTION_MECH_",
    }[cname]
    from_btf = {k.removeprefix(prefix): v for k, v in values.items()
                if k not in ("BASTION_EV_MAX", "BASTION_OP_MAX")}
    assert from_btf == {m.name: m.value for m in mirror}


def test_every_record_type_has_a_struct() -> None:
    assert set(abi.RECORDS) == set(abi.EventType)


def test_abi_version_in_rodata_matches() -> None:
    with btf.Btf.parse(EVENTS_OBJ) as b:
        var = b.datasec_vars(".rodata")["bastion_abi_version"]
    assert var.size == 4
    # the value itself is read at load time by the sensor; the constant must agree
    header = (Path(__file__).resolve().parents[2] / "bpf/include/bastion.h").read_text()
    assert f"#define BASTION_ABI_MAJOR {abi.ABI_MAJOR}" in header
    assert f"#define BASTION_ABI_MINOR {abi.ABI_MINOR}" in header


def test_other_major_refused() -> None:
    abi.check_abi_version(abi.ABI_VERSION, "x.o")
    abi.check_abi_version(abi.ABI_VERSION + 7, "x.o")  # newer minor decodes the prefix
    with pytest.raises(AbiMismatchError, match="x.o: BPF object speaks ABI 2.0"):
        abi.check_abi_version(2 << 16, "x.o")
