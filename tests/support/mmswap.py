"""The executable-identity attack (tests/support/mmswap.c) built for a test: the
program and its library, in a directory of the caller's."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SRC = Path(__file__).with_name("mmswap.c")

#: prctls the identity guard must let through: PR_SET_NAME + PR_GET_NAME,
#: PR_SET_MM_MAP_SIZE (a query: the kernel writes sizeof(struct prctl_mm_map), 104) and
#: PR_GET_DUMPABLE.  Prints "ok b'renamed' 104 1".
PRCTL_OK = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
def call(*a):
    r = libc.prctl(*a)
    if r < 0:
        raise SystemExit(f"prctl{a[:2]}: errno {ctypes.get_errno()}")
    return r
call(15, ctypes.cast(ctypes.c_char_p(b"renamed"), ctypes.c_void_p).value, 0, 0, 0)
name = ctypes.create_string_buffer(16)
call(16, ctypes.addressof(name), 0, 0, 0)
size = ctypes.c_uint(0)
call(35, 15, ctypes.addressof(size), 0, 0)
print("ok", name.value, size.value, call(3, 0, 0, 0, 0))
"""


def build(into: Path) -> Path:
    """``into/mmswap`` (with ``into/libmmswap.so`` beside it), world-readable and
    executable so an unprivileged attacker can run it.  RuntimeError when no C compiler
    is installed (scripts/install-deps.sh installs gcc): a missing compiler is a broken
    machine, never a skip."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc): run scripts/install-deps.sh")
    into.mkdir(parents=True, exist_ok=True)
    lib, prog = into / "libmmswap.so", into / "mmswap"
    # bound now: a lazy binding after the image is gone would read its .dynamic
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-pthread", "-Wl,-z,now", "-o", str(lib), str(SRC)],
                   check=True, timeout=120)
    subprocess.run([cc, "-O1", "-DMMSWAP_MAIN", "-Wl,-z,now", "-o", str(prog), str(SRC),
                    f"-L{into}", "-lmmswap", "-Wl,-rpath,$ORIGIN", "-pthread"], check=True, timeout=120)
    for p in (into, lib, prog):
        p.chmod(0o755)
    return prog


@contextmanager
def built() -> Iterator[Path]:
    """:func:`build` into a fresh directory under /tmp (where nobody can run it), removed
    at the end."""
    d = Path(tempfile.mkdtemp(prefix="bastion-test-mmswap-"))
    try:
        yield build(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
