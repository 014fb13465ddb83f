"""The map-creation-window attack (s20-mapbirth), and the protected side's map maker.

Run as a script, it is the attacker: a root process polling ``BPF_MAP_GET_NEXT_ID``
for ``SECONDS`` seconds; every map whose name starts with ``PREFIX`` (read through a
read-only fd, as any root may) it asks a write-mode fd of by id
(``BPF_MAP_GET_FD_BY_ID``, open_flags 0) and, with ``write`` given, writes it
(``BPF_MAP_UPDATE_ELEM``).  First it makes and writes a map of its own named
``PREFIX + "own"`` (a map no protected task made: must stay writable).  One JSON
line per outcome on stdout, flushed: ``{"own": "wrote"}``, ``{"ready": true}``,
``{"fd": name}`` (write fd granted), ``{"refused": name, "errno": n}``,
``{"refused_id": id, "errno": n}`` (no read-only fd either, lsm since s21: the name
unknown, a write-mode fd refused too),
``{"wrote": name}``, ``{"done": n_seen}``.

Imported, :func:`create_map` is the protected side's bare ``BPF_MAP_CREATE``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BPF_MAP_CREATE = 0
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_GET_NEXT_ID = 12
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_F_RDONLY = 1 << 3
NR_BPF = 321   # x86-64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    rc = int(_libc.syscall(NR_BPF, cmd, attr, len(attr)))
    if rc < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return rc


def _attr(*fields: tuple[int, int], size: int = 128) -> ctypes.Array[ctypes.c_char]:
    a = ctypes.create_string_buffer(size)
    for off, val in fields:
        ctypes.memmove(ctypes.addressof(a) + off, val.to_bytes(4, "little"), 4)
    return a


def create_map(name: str) -> int:
    """A 4-byte-key hash map named ``name`` (<= 15 chars); its fd."""
    a = _attr((0, 1), (4, 4), (8, 4), (12, 8))
    ctypes.memmove(ctypes.addressof(a) + 28, name.encode()[:15], len(name.encode()[:15]))
    return _bpf(BPF_MAP_CREATE, a)


def _update(fd: int) -> None:
    key = ctypes.c_uint32(7)
    val = ctypes.c_uint32(0xbad)
    a = ctypes.create_string_buffer(32)
    ctypes.memmove(a, fd.to_bytes(4, "little"), 4)
    ctypes.memmove(ctypes.addressof(a) + 8, ctypes.addressof(key).to_bytes(8, "little"), 8)
    ctypes.memmove(ctypes.addressof(a) + 16, ctypes.addressof(val).to_bytes(8, "little"), 8)
    _bpf(BPF_MAP_UPDATE_ELEM, a)


def _info(fd: int) -> bytes:
    info = ctypes.create_string_buffer(96)
    a = ctypes.create_string_buffer(16)
    ctypes.memmove(a, fd.to_bytes(4, "little") + (96).to_bytes(4, "little")
                   + ctypes.addressof(info).to_bytes(8, "little"), 16)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, a)
    return info.raw


def _name(fd: int) -> str:
    return _info(fd)[24:40].split(b"\0")[0].decode()


def _say(**kw: object) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def main(prefix: str, seconds: float, write: bool) -> None:
    own = create_map(prefix + "own")
    _update(own)
    _say(own="wrote")
    # map ids grow: every map made after ours has a higher id; older ones (the guardian's,
    # the agent's) are not this attack's (lsm since s21: each would be one more refusal)
    floor = int.from_bytes(_info(own)[4:8], "little")
    seen: set[int] = set()
    _say(ready=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        cur = 0
        while True:
            a = _attr((0, cur))
            try:
                _bpf(BPF_MAP_GET_NEXT_ID, a)
            except OSError:
                break
            cur = int.from_bytes(a.raw[4:8], "little")
            if cur in seen or cur <= floor:
                continue
            try:
                ro = _bpf(BPF_MAP_GET_FD_BY_ID, _attr((0, cur), (8, BPF_F_RDONLY)))
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    continue        # gone
                # no read-only fd either (lsm: a protected map programs can write, s21):
                # its name is unknown; an attacker asks a write-mode fd all the same
                seen.add(cur)
                try:
                    fd = _bpf(BPF_MAP_GET_FD_BY_ID, _attr((0, cur)))
                except OSError as exc2:
                    _say(refused_id=cur, errno=exc2.errno)
                    continue
                _say(fd=cur)
                continue
            try:
                name = _name(ro)
            finally:
                os.close(ro)
            seen.add(cur)
            if not name.startswith(prefix) or name == prefix + "own":
                continue
            try:
                fd = _bpf(BPF_MAP_GET_FD_BY_ID, _attr((0, cur)))
            except OSError as exc:
                _say(refused=name, errno=exc.errno)
                continue
            _say(fd=name)
            if write:
                try:
                    _update(fd)
                    _say(wrote=name)
                except OSError as exc:
                    _say(write_refused=name, errno=exc.errno)
            # the fd is kept, as an attacker would
        time.sleep(0.002)
    _say(done=len(seen))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "write")


def start(cg: Path, prefix: str, seconds: float, write: bool) -> subprocess.Popen[str]:
    """The attacker in cgroup ``cg``, once it said it is ready (its own map written)."""
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    p = subprocess.Popen(["/bin/sh", "-c", shell, "sh", sys.executable, __file__, prefix,
                          str(seconds), *(["write"] if write else [])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    assert p.stdout is not None
    first = [p.stdout.readline() for _ in range(2)]
    if [x.strip() for x in first] != ['{"own": "wrote"}', '{"ready": true}']:
        p.kill()
        raise AssertionError(f"attacker did not start (its own map not written?): {first} "
                             f"{p.communicate()[1]}")
    return p


def outcome(p: subprocess.Popen[str]) -> tuple[int, list[dict[str, object]]]:
    """(return code, JSON lines after "ready") of a finished attacker."""
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    return p.returncode, lines
