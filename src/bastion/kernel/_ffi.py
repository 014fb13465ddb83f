"""The ctypes prototypes of the system libbpf (``libbpf.so.1``) and libc.

Private to :mod:`bastion.kernel`: :mod:`.libbpf`, :mod:`.btf` and
:mod:`.bpffs` import from here; this is the only module that loads libbpf.
(Other ctypes users: :mod:`bastion.abi` for the record layouts, and the few
libc calls Python lacks — fanotify, ``mount``, ``prctl`` — next to their use.)

libbpf 1.x conventions, relied on throughout:
  * int-returning calls return ``-errno`` on failure (and set errno);
  * pointer-returning calls return NULL and set errno — read it with
    :func:`ctypes.get_errno`, which works because both libraries are loaded
    with ``use_errno=True``.
Error codes above 4000 are libbpf's own (``LIBBPF_ERRNO__*``);
:func:`strerror` decodes both kinds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import functools
import os
import stat
import sysconfig
from pathlib import Path
from typing import Any, Sequence

from bastion.errors import KernelError, Location

LIBBPF_SONAME = "libbpf.so.1"

#: Where the system libbpf is looked for, in order (the distribution's library
#: directories; never LD_LIBRARY_PATH, never the working directory).
LIBBPF_DIRS: tuple[Path, ...] = tuple(dict.fromkeys(
    Path(d) for d in (*(f"{base}/{sysconfig.get_config_var('MULTIARCH')}"
                        for base in ("/usr/lib", "/lib") if sysconfig.get_config_var("MULTIARCH")),
                      "/usr/lib64", "/lib64", "/usr/lib", "/lib")))

c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_u32 = ctypes.c_uint32
c_u64 = ctypes.c_uint64
c_bool = ctypes.c_bool
c_size_t = ctypes.c_size_t
c_ssize_t = ctypes.c_ssize_t
c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p


# ---- kernel UAPI constants (linux/bpf.h, linux/btf.h) ----------------------

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE = 21
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_MAP_TYPES = frozenset(
    {
        BPF_MAP_TYPE_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_ARRAY,
        BPF_MAP_TYPE_LRU_PERCPU_HASH,
        BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE,
    }
)

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_OBJ_NAME_LEN = 16

BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_FWD = 7
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_RESTRICT = 11
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_TYPE_TAG = 18
BTF_KIND_ENUM64 = 19


# ---- structures --------------------------------------------------------------


class BtfType(ctypes.Structure):
    """``struct btf_type`` (linux/btf.h); ``size_or_type`` is the union."""

    _fields_ = [("name_off", c_u32), ("info", c_u32), ("size_or_type", c_u32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", c_u32), ("type", c_u32), ("offset", c_u32)]


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_u32), ("offset", c_u32), ("size", c_u32)]


class BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", c_u32), ("val", ctypes.c_int32)]


class BtfEnum64(ctypes.Structure):
    _fields_ = [("name_off", c_u32), ("val_lo32", c_u32), ("val_hi32", c_u32)]


class BpfTestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` (bpf/bpf.h, libbpf 1.1)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_u32),
        ("data_size_out", c_u32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_u32),
        ("ctx_size_out", c_u32),
        ("retval", c_u32),
        ("repeat", c_int),
        ("duration", c_u32),
        ("flags", c_u32),
        ("cpu", c_u32),
        ("batch_size", c_u32),
    ]


class BpfObjGetOpts(ctypes.Structure):
    """``struct bpf_obj_get_opts`` (bpf/bpf.h, libbpf 1.1: ``sz``, ``file_flags``, padded)."""

    _fields_ = [("sz", c_size_t), ("file_flags", c_u32), ("_pad", c_u32)]


class BpfMapInfo(ctypes.Structure):
    """``struct bpf_map_info`` (linux/bpf.h); the kernel fills what it knows."""

    _fields_ = [
        ("type", c_u32),
        ("id", c_u32),
        ("key_size", c_u32),
        ("value_size", c_u32),
        ("max_entries", c_u32),
        ("map_flags", c_u32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", c_u32),
        ("btf_vmlinux_value_type_id", c_u32),
        ("netns_dev", c_u64),
        ("netns_ino", c_u64),
        ("btf_id", c_u32),
        ("btf_key_type_id", c_u32),
        ("btf_value_type_id", c_u32),
        ("_pad", c_u32),
        ("map_extra", c_u64),
    ]


# ---- prototypes ----------------------------------------------------------------

# name -> (restype, argtypes)
_LIBBPF_PROTOS: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [c_void_p]),
    "libbpf_strerror": (c_int, [c_int, c_char_p, c_size_t]),
    "libbpf_num_possible_cpus": (c_int, []),
    # objects
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    # programs
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__type": (c_int, [c_void_p]),
    "bpf_program__autoload": (c_bool, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, c_bool]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    # links
    "bpf_link__open": (c_void_p, [c_char_p]),
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_link__pin": (c_int, [c_void_p, c_char_p]),
    "bpf_link__unpin": (c_int, [c_void_p]),
    "bpf_link__pin_path": (c_char_p, [c_void_p]),
    "bpf_link__detach": (c_int, [c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    # maps (libbpf view, valid before load)
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_u32, [c_void_p]),
    "bpf_map__value_size": (c_u32, [c_void_p]),
    "bpf_map__max_entries": (c_u32, [c_void_p]),
    "bpf_map__map_flags": (c_u32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_u32]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__is_internal": (c_bool, [c_void_p]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
    # low-level syscall wrappers (by fd)
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_u64]),
    "bpf_map_freeze": (c_int, [c_int]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_opts": (c_int, [c_char_p, ctypes.POINTER(BpfObjGetOpts)]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_u32)]),
    "bpf_prog_test_run_opts": (c_int, [c_int, ctypes.POINTER(BpfTestRunOpts)]),
    "bpf_link_detach": (c_int, [c_int]),
    # BTF
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__free": (None, [c_void_p]),
    "btf__type_cnt": (c_u32, [c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int32, [c_void_p, c_char_p, c_u32]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_u32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_u32]),
    "btf__resolve_size": (c_ssize_t, [c_void_p, c_u32]),
    "btf__resolve_type": (c_int, [c_void_p, c_u32]),
}


def trusted_file(path: Path) -> Path:
    """``path`` with every symlink resolved, when root alone can change it.

    The file and every directory above it must be owned by root and writable
    by neither group nor others (a sticky world-writable directory such as
    /tmp is refused too).  Raises :class:`KernelError` naming the first
    component that fails.
    """
    try:
        real = path.resolve(strict=True)
    except OSError as exc:
        raise KernelError(f"cannot resolve {path}: {exc.strerror}", errno=exc.errno or 0,
                          location=Location(str(path))) from exc
    for part in (real, *real.parents):
        st = os.stat(part)
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KernelError(
                f"refusing to load {path}: {part} is "
                + (f"owned by uid {st.st_uid}" if st.st_uid != 0
                   else f"writable by {'others' if st.st_mode & stat.S_IWOTH else 'group'} "
                        f"(mode {stat.S_IMODE(st.st_mode):04o})")
                + ": a library the agent loads must be changeable by root alone",
                errno=errno_mod.EPERM, location=Location(str(part)))
    if not stat.S_ISREG(os.stat(real).st_mode):
        raise KernelError(f"refusing to load {path}: {real} is not a regular file",
                          errno=errno_mod.EPERM, location=Location(str(real)))
    return real


def find_libbpf(dirs: Sequence[Path] | None = None) -> Path:
    """The absolute, resolved path of the system ``libbpf.so.1``, checked by
    :func:`trusted_file`.  Only ``dirs`` (default :data:`LIBBPF_DIRS`) are
    searched: ``LD_LIBRARY_PATH`` and the loader's other search rules never
    choose the library the agent runs."""
    for d in LIBBPF_DIRS if dirs is None else dirs:
        cand = d / LIBBPF_SONAME
        if os.path.lexists(cand):
            return trusted_file(cand)
    from bastion.errors import FeatureUnavailableError

    searched = ", ".join(str(d) for d in (LIBBPF_DIRS if dirs is None else dirs))
    raise FeatureUnavailableError(f"{LIBBPF_SONAME} not found in {searched} (install libbpf1)",
                                  errno=errno_mod.ENOENT, location=Location(LIBBPF_SONAME))


@functools.cache
def libbpf_path() -> Path:
    """The libbpf this process loads (resolved once; tamper protection covers it)."""
    return find_libbpf()


def _load_libbpf() -> Any:
    path = libbpf_path()
    try:
        lib = ctypes.CDLL(str(path), use_errno=True)
    except OSError as exc:
        from bastion.errors import FeatureUnavailableError

        raise FeatureUnavailableError(
            f"cannot load {path} (install libbpf1 / libbpf-dev): {exc}",
            errno=errno_mod.ENOENT,
            location=Location(str(path)),
        ) from exc
    for name, (restype, argtypes) in _LIBBPF_PROTOS.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _load_libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.vsnprintf.restype = c_int
    # va_list is passed as an opaque pointer: on x86-64 (and arm64) the callee
    # receives a pointer to the caller's va_list object.
    libc.vsnprintf.argtypes = [c_void_p, c_size_t, c_void_p, c_void_p]
    libc.mount.restype = c_int
    libc.mount.argtypes = [c_char_p, c_char_p, c_char_p, ctypes.c_ulong, c_void_p]
    return libc


#: The loaded libraries.  Immutable after import: only prototypes are set here.
LIB: Any = _load_libbpf()
LIBC: Any = _load_libc()


def strerror(err: int) -> str:
    """Text for a positive errno or libbpf error code (>= 4000)."""
    err = abs(err)
    buf = ctypes.create_string_buffer(256)
    LIB.libbpf_strerror(err, buf, len(buf))
    text = buf.value.decode("utf-8", "replace")
    return text or f"error {err}"


def last_errno(default: int = errno_mod.EINVAL) -> int:
    """errno left by the last libbpf/libc call on this thread (``default`` if 0)."""
    return ctypes.get_errno() or default


def check(rc: int, what: str, *, location: Location | None = None) -> int:
    """Raise :class:`KernelError` for a negative libbpf return; pass others through."""
    if rc < 0:
        raise KernelError(f"{what}: {strerror(-rc)} (errno {-rc})", errno=-rc, location=location)
    return rc


def check_ptr(ptr: int | None, what: str, *, location: Location | None = None) -> int:
    """Raise :class:`KernelError` for a NULL libbpf pointer, decoding errno."""
    if not ptr:
        err = last_errno()
        raise KernelError(f"{what}: {strerror(err)} (errno {err})", errno=err, location=location)
    return ptr


def cstr(value: bytes | None) -> str:
    """Decode a C string from libbpf ('' for NULL)."""
    return "" if value is None else value.decode("utf-8", "replace")
