"""A BPF program root loads cannot write our policy, identity and config maps through
helpers: they are BPF_F_RDONLY_PROG and the verifier refuses the load (EACCES).  The
lsm ``bpf`` hook sees only bpf() commands, never a helper call, so this flag is what
stops it, on both tiers.  Each refusal has a positive control: the same program, built
for the same key/value sizes, loads against a map made without the flag.  Host kernel
(socket filter programs; nothing is attached)."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Iterator

import pytest

from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

TAMPER = ("tamper_idents", "tamper_objs", "tamper_sbs", "tamper_map_ids", "tamper_link_ids")
HIPS = ("hips_state", "hips_gens", "hips_subjects", "hips_rules", "hips_net")
_LIB = ctypes.CDLL("libbpf.so.1", use_errno=True)
_LIB.bpf_prog_load.restype = ctypes.c_int
_LIB.bpf_prog_load.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_size_t, ctypes.c_void_p]
_LIB.bpf_map_create.restype = ctypes.c_int
_LIB.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32,
                                ctypes.c_uint32, ctypes.c_void_p]


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def writer(map_fd: int, key_size: int, value_size: int) -> bytes:
    """Zeroed key and value on the stack, then bpf_map_update_elem(map, &key, &value, 0)."""
    k = (key_size + 7) // 8 * 8
    v = (value_size + 7) // 8 * 8
    out = [_insn(0x7a, 10, 0, -off, 0) for off in range(8, k + v + 1, 8)]   # *(u64 *)(r10-off) = 0
    out += [_insn(0xbf, 2, 10), _insn(0x07, 2, imm=-k),          # r2 = &key
            _insn(0xbf, 3, 10), _insn(0x07, 3, imm=-(k + v)),    # r3 = &value
            _insn(0xb7, 4),                                      # r4 = BPF_ANY
            _insn(0x18, 1, 1, imm=map_fd), _insn(0),             # r1 = map (BPF_PSEUDO_MAP_FD)
            _insn(0x85, imm=2),                                  # call bpf_map_update_elem
            _insn(0xb7, 0), _insn(0x95)]                         # return 0
    return b"".join(out)


def load_writer(map_fd: int, key_size: int, value_size: int) -> int:
    """0 when the writer loaded, else -errno."""
    code = writer(map_fd, key_size, value_size)
    fd = int(_LIB.bpf_prog_load(1, b"map_writer", b"GPL", code, len(code) // 8, None))  # socket filter
    if fd >= 0:
        os.close(fd)
        return 0
    return fd


@pytest.fixture(scope="module", params=["tamper_compat.bpf.o", "hips_compat.bpf.o"])
def loaded(request: pytest.FixtureRequest) -> Iterator[tuple[str, BpfObject]]:
    with BpfObject.open(bpf_object(request.param)) as o:
        o.load()          # maps created, programs verified; nothing attached
        yield request.param, o


def test_a_program_cannot_write_our_maps(loaded: tuple[str, BpfObject]) -> None:
    name, obj = loaded
    maps = {m.name: m for m in obj.maps()}
    wanted = TAMPER if name.startswith("tamper") else HIPS
    for mname in wanted:
        m = maps[mname]
        # positive control: the same writer against a plain hash map of the same sizes
        ctl = int(_LIB.bpf_map_create(1, b"ctl", m.key_size, m.value_size, 4, None))
        assert ctl >= 0, os.strerror(-ctl)
        try:
            assert load_writer(ctl, m.key_size, m.value_size) == 0, f"{mname}: control refused"
        finally:
            os.close(ctl)
        rc = load_writer(m.fd, m.key_size, m.value_size)
        assert rc == -errno.EACCES, f"{name}: a program writing {mname} loaded ({rc})"
