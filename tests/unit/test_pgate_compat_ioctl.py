"""s25 review: a 32-bit ioctl (an i386 binary, or int 0x80 from a 64-bit one) calls
``security_file_ioctl_compat`` where the kernel has it (6.8 and the stable kernels it
went back to): the in-hook gate judged only ``file_ioctl``, so a 32-bit SIOCADDRT or
FS_IOC32_SETFLAGS passed it.  The object has the compat program; a kernel without the
hook skips it (and sends 32-bit ioctls to file_ioctl, as before)."""

from __future__ import annotations

import pytest

from bastion.enforce.provgate_lsm import COMPAT_HOOKS, OBJECT
from bastion.kernel.btf import VMLINUX_BTF, lsm_hooks_absent
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object

pytestmark = pytest.mark.unit


def test_the_object_judges_both_ioctl_hooks() -> None:
    with BpfObject.open(bpf_object(OBJECT)) as o:
        progs = {p.name: p.section_name for p in o.programs()}
    assert progs["pgate_file_ioctl"] == "lsm/file_ioctl"
    assert progs["pgate_file_ioctl_compat"] == "lsm/file_ioctl_compat"
    assert {f"pgate_{h}" for h in COMPAT_HOOKS} <= set(progs)


@pytest.mark.skipif(not VMLINUX_BTF.exists(), reason="no kernel BTF")
def test_absent_hooks_are_named_and_present_ones_not() -> None:
    assert lsm_hooks_absent(frozenset({"file_ioctl", "no_such_hook_s25"})) == {"no_such_hook_s25"}
