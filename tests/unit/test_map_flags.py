"""Maps that our BPF programs only read are created ``BPF_F_RDONLY_PROG``: no BPF
program, ours or one root loads, can write them through helpers (the verifier
refuses it); user space still fills them with bpf() commands.  Checked in the
compiled objects (libbpf open, no load, no root); the refusal itself is tested
in the VM (tests/vm/test_tamper_lsm.py::test_14b_rdonly_prog_maps_refuse_program_writes)."""

from __future__ import annotations

import pytest

from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object

BPF_F_RDONLY_PROG = 1 << 7
HIPS = ("hips_state", "hips_gens", "hips_subjects", "hips_rules", "hips_net")
TAMPER = ("tamper_idents", "tamper_objs", "tamper_sbs", "tamper_map_ids", "tamper_link_ids")
READ_ONLY = {
    "lsm_hips.bpf.o": HIPS,
    "hips_compat.bpf.o": HIPS,
    "lsm_tamper.bpf.o": TAMPER,
    "tamper_compat.bpf.o": TAMPER,
    "lsm_scoped.bpf.o": ("deny_inodes",),
    "lsm_bpfguard.bpf.o": ("bpf_loaders",),
}
# written by the programs themselves: must stay writable
WRITTEN = {
    "hips_compat.bpf.o": ("task_subjects", "exec_pre", "pending_kill", "hips_stats"),
    "quarantine.bpf.o": ("quarantined",),
    "lsm_tamper.bpf.o": ("drops", "path_scratch", "tamper_born_maps"),
    "tamper_compat.bpf.o": ("tamper_born_ids", "tamper_creating"),
}

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("obj", sorted(READ_ONLY))
def test_policy_identity_and_config_maps_are_rdonly_prog(obj: str) -> None:
    with BpfObject.open(bpf_object(obj)) as o:
        flags = {m.name: m.map_flags for m in o.maps()}
    for name in READ_ONLY[obj]:
        assert name in flags, f"{obj}: no map {name}"
        assert flags[name] & BPF_F_RDONLY_PROG, f"{obj}: {name} is writable by programs"


@pytest.mark.parametrize("obj", sorted(WRITTEN))
def test_maps_the_programs_write_stay_writable(obj: str) -> None:
    with BpfObject.open(bpf_object(obj)) as o:
        flags = {m.name: m.map_flags for m in o.maps()}
    for name in WRITTEN[obj]:
        assert name in flags, f"{obj}: no map {name}"
        assert not flags[name] & BPF_F_RDONLY_PROG, f"{obj}: {name} is written by its programs"
