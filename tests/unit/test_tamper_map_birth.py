"""Which map-birth programs the lsm tamper object loads on a kernel, and what the
guardian's status says when the armed object has none (s20-mapbirth).  No root, no
load: the kernel's BTF, the compiled objects, a stand-in for the loaded object."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from bastion.guard.kernel import EXE_IDENTITY_LINKS, MAP_BIRTH_LINKS, MAP_BIRTH_PROGRAMS, TamperKernel
from bastion.kernel.btf import VMLINUX_BTF, map_birth_hooks
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object
from bastion.tier import Tier

pytestmark = pytest.mark.unit


def test_each_kernel_loads_one_pair_and_the_objects_have_every_program() -> None:
    with BpfObject.open(bpf_object("lsm_tamper.bpf.o")) as o:
        lsm = {p.name: p.section_name for p in o.programs()}
    with BpfObject.open(bpf_object("tamper_compat.bpf.o")) as o:
        compat = {p.name for p in o.programs()}
    for new_hooks, skipped in MAP_BIRTH_PROGRAMS.items():
        loaded = {g for g in MAP_BIRTH_LINKS["lsm"] if not set(g) & skipped}
        assert len(loaded) == 1, (new_hooks, loaded)          # one pair, the other skipped
        assert skipped <= set(lsm)
    assert lsm["tamper_map_alloc"] == "lsm/bpf_map_alloc_security"
    assert lsm["tamper_map_create"] == "lsm/bpf_map_create"
    assert set(MAP_BIRTH_LINKS["compat"][0]) <= compat


@pytest.mark.skipif(not VMLINUX_BTF.exists(), reason="no kernel BTF")
def test_the_running_kernel_names_its_pair() -> None:
    assert map_birth_hooks() in (("bpf_map_create", "bpf_map_free"),
                                 ("bpf_map_alloc_security", "bpf_map_free_security"))


def _tk(tier: Tier, attached: list[str], adopted: bool) -> TamperKernel:
    tk = TamperKernel(tier, pin_dir=Path("/nonexistent"))
    tk._lo = SimpleNamespace(closed=False, attached=attached, adopted=adopted)  # type: ignore[assignment]
    return tk


def test_status_says_when_the_armed_object_cannot_protect_maps_from_creation() -> None:
    assert _tk(Tier.LSM, ["tamper_bpf_map", "tamper_map_alloc", "tamper_map_free_sec"], False) \
        .map_birth_gap() == ""
    assert _tk(Tier.LSM, ["tamper_map_create", "tamper_map_free"], True).map_birth_gap() == ""
    assert _tk(Tier.COMPAT, ["tamper_bpf", "tamper_bpf_ret"], True).map_birth_gap() == ""
    why = _tk(Tier.LSM, ["tamper_bpf_map", "tamper_map_alloc"], True).map_birth_gap()
    assert "older version" in why and "tamper_map_create+tamper_map_free" in why
    assert "tamper_bpf_ret" in _tk(Tier.COMPAT, ["tamper_bpf"], False).map_birth_gap()
    assert TamperKernel(Tier.LSM, pin_dir=Path("/x")).map_birth_gap() == "tamper protection is not open"


def test_status_says_when_the_armed_object_does_not_guard_the_executable_identity() -> None:
    """s28: pins of a version before ``tamper_prctl`` adopted leave ``prctl(PR_SET_MM,
    EXE_FILE|MAP)`` unguarded; the status names the program, never "on"."""
    with BpfObject.open(bpf_object("lsm_tamper.bpf.o")) as o:
        lsm = {p.name: p.section_name for p in o.programs()}
    with BpfObject.open(bpf_object("tamper_compat.bpf.o")) as o:
        compat = {p.name: p.section_name for p in o.programs()}
    assert lsm[EXE_IDENTITY_LINKS["lsm"][0][0]] == "lsm/task_prctl"
    assert [compat[n] for n in EXE_IDENTITY_LINKS["compat"][0]] == \
        ["tracepoint/syscalls/sys_enter_prctl", "tracepoint/syscalls/sys_exit_prctl"]
    for tier in (Tier.LSM, Tier.COMPAT):
        assert _tk(tier, ["tamper_bpf", "tamper_prctl", "tamper_prctl_ret"], True) \
            .exe_identity_gap() == ""
        why = _tk(tier, ["tamper_bpf"], True).exe_identity_gap()
        assert "older version" in why and "tamper_prctl" in why, why
    assert TamperKernel(Tier.COMPAT, pin_dir=Path("/x")).exe_identity_gap() \
        == "tamper protection is not open"
