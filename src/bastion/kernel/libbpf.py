"""The ctypes binding over the system libbpf — Bastion's only libbpf user.

Objects (:class:`BpfObject`) are opened from compiled ``build/bpf/*.bpf.o``
files, configured through ``const volatile`` globals in ``.rodata`` before
load, loaded, and their programs attached (:class:`Program`, :class:`Link`).
Maps (:class:`Map`) are driven through the fd-level calls
(``bpf_map_lookup_elem`` …) so a map reached by a pin works the same as one
from an object.

libbpf's messages (verifier logs included) go to the ``bastion.libbpf``
logger: WARN -> WARNING, INFO -> INFO, DEBUG -> DEBUG.  The hook is installed
on import.

Every failure raises :class:`~bastion.errors.KernelError` or
:class:`~bastion.errors.BpfObjectError` with ``errno`` set.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

from bastion.closing import Closing
from bastion.errors import BpfObjectError, KernelError, Location
from bastion.kernel import _ffi
from bastion.kernel._ffi import LIB, LIBC
from bastion.kernel.btf import Btf, VarInfo

__all__ = [
    "BpfObject",
    "Link",
    "Map",
    "Program",
    "ProgramLoadError",
    "install_print_hook",
    "num_possible_cpus",
    "obj_get",
    "obj_pin",
]

LOGGER_NAME = "bastion.libbpf"
_log = logging.getLogger(LOGGER_NAME)


# ---- logging hook ----------------------------------------------------------------

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
# Size of va_list as an object, so it can be copied (va_copy is a plain
# struct copy on these ABIs).  Elsewhere we format once into a fixed buffer.
_VA_LIST_SIZE = {"x86_64": 24, "amd64": 24, "aarch64": 32, "arm64": 32}.get(
    platform.machine().lower(), 0
)
_FALLBACK_BUF = 64 * 1024


def _vformat(fmt: int, ap: int) -> str:
    """printf-format libbpf's (fmt, va_list) with libc vsnprintf, in C land."""
    if _VA_LIST_SIZE:
        ap_copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
        ctypes.memmove(ap_copy, ap, _VA_LIST_SIZE)
        need = int(LIBC.vsnprintf(None, 0, fmt, ctypes.addressof(ap_copy)))
        if need < 0:
            return "<unformattable libbpf message>"
        buf = ctypes.create_string_buffer(need + 1)
    else:
        buf = ctypes.create_string_buffer(_FALLBACK_BUF)
    LIBC.vsnprintf(buf, len(buf), fmt, ap)
    return buf.value.decode("utf-8", "replace")


def _on_libbpf_print(level: int, fmt: int | None, ap: int | None) -> int:
    py_level = _LEVELS.get(level, logging.DEBUG)
    if not fmt or not ap or not _log.isEnabledFor(py_level):
        return 0
    msg = _vformat(fmt, ap).rstrip("\n")
    if msg.startswith("libbpf: "):
        msg = msg[len("libbpf: ") :]
    _log.log(py_level, "%s", msg)
    return 0


class _PrintHook:
    """Holds the ctypes callback given to ``libbpf_set_print``.

    This is the module's one piece of mutable global state, on purpose: libbpf
    keeps a raw C pointer to the callback, so the CFUNCTYPE object must live as
    long as the process — if it were garbage-collected, libbpf would call
    freed memory.
    """

    callback: ClassVar[Any] = None


def install_print_hook() -> None:
    """Route libbpf's print output into the ``bastion.libbpf`` logger (idempotent)."""
    if _PrintHook.callback is None:
        _PrintHook.callback = _PRINT_FN(_on_libbpf_print)
    LIB.libbpf_set_print(ctypes.cast(_PrintHook.callback, ctypes.c_void_p))


install_print_hook()


class _WarningCollector(logging.Handler):
    """Collects this thread's libbpf warnings during one call (load/attach)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


# ---- module functions ----------------------------------------------------------


def num_possible_cpus() -> int:
    """Number of possible CPUs (the per-CPU map value multiplier)."""
    n = int(LIB.libbpf_num_possible_cpus())
    _ffi.check(n, "libbpf_num_possible_cpus")
    return n


BPF_F_RDONLY: Final = 1 << 3  # linux/bpf.h: a read-only fd (BPF_OBJ_GET file_flags)


def obj_get(path: Path | str, *, read_only: bool = False) -> int:
    """Open a pinned BPF object (map, program, link) and return a new fd (caller closes).

    ``read_only``: ask the kernel for a read-only fd (``BPF_F_RDONLY``).  A reader must:
    the lsm tamper hook refuses a write-capable fd of a protected map to anyone not
    enrolled (an administrator's CLI included), and allows a read-only one of a map no
    program can write."""
    if not read_only:
        fd = int(LIB.bpf_obj_get(os.fsencode(path)))
        return _ffi.check(fd, "bpf_obj_get", location=Location(str(path)))
    opts = _ffi.BpfObjGetOpts(sz=ctypes.sizeof(_ffi.BpfObjGetOpts), file_flags=BPF_F_RDONLY)
    fd = int(LIB.bpf_obj_get_opts(os.fsencode(path), ctypes.byref(opts)))
    return _ffi.check(fd, "bpf_obj_get (read-only)", location=Location(str(path)))


def obj_pin(fd: int, path: Path | str) -> None:
    """Pin the BPF object behind ``fd`` at ``path`` (on bpffs)."""
    _ffi.check(int(LIB.bpf_obj_pin(fd, os.fsencode(path))), "bpf_obj_pin", location=Location(str(path)))


def _percpu_value_size(value_size: int) -> int:
    return (value_size + 7) & ~7


# ---- errors ---------------------------------------------------------------------


class ProgramLoadError(BpfObjectError):
    """``bpf_object__load`` failed; names the program and keeps the verifier log."""

    def __init__(
        self,
        message: str,
        *,
        errno: int,
        location: Location | None,
        program: str | None,
        verifier_log: str,
    ) -> None:
        super().__init__(message, errno=errno, location=location)
        self.program = program
        self.verifier_log = verifier_log


_RE_FAILED_PROG = re.compile(r"prog '([^']+)': (?:BPF program load failed|failed to load)")
_RE_LOG = re.compile(
    r"prog '[^']+': -- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", re.DOTALL
)


def _last_verifier_error(log: str) -> str:
    """The verifier's reason: the last line that is not a statistics line."""
    for line in reversed(log.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("processed ", "verification time")):
            return line
    return ""


# ---- objects ----------------------------------------------------------------------


def _encode_rodata(obj: Path, var: VarInfo, value: int | bytes) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, bytes, bytearray)):
        raise BpfObjectError(
            f".rodata variable {var.name!r}: value must be int or bytes, got {type(value).__name__}",
            errno=errno.EINVAL,
            location=Location(str(obj)),
        )
    if isinstance(value, int):
        lo, hi = -(1 << (8 * var.size - 1)), (1 << (8 * var.size)) - 1
        if not lo <= value <= hi:
            raise BpfObjectError(
                f".rodata variable {var.name!r}: {value} does not fit in {var.size} bytes",
                errno=errno.ERANGE,
                location=Location(str(obj)),
            )
        return (value % (1 << (8 * var.size))).to_bytes(var.size, "little")
    if len(value) > var.size:
        raise BpfObjectError(
            f".rodata variable {var.name!r}: {len(value)} bytes given, it holds {var.size}",
            errno=errno.E2BIG,
            location=Location(str(obj)),
        )
    return bytes(value).ljust(var.size, b"\0")


class BpfObject(Closing):
    """A BPF ELF object: open -> (configure) -> load -> attach programs / use maps.

    Programs and maps are owned by the object and invalid after :meth:`close`;
    :class:`Link` objects are independent and outlive it.
    """

    def __init__(self, ptr: int, path: Path) -> None:
        self._ptr: int | None = ptr
        self.path = path
        self._loaded = False
        self._programs: dict[str, Program] = {}
        self._maps: dict[str, Map] = {}

    # -- lifecycle

    @classmethod
    def open(cls, path: Path, *, rodata: Mapping[str, int | bytes] | None = None) -> BpfObject:
        """Open the ELF at ``path`` and set ``const volatile`` globals before load."""
        path = Path(path)
        ptr = LIB.bpf_object__open_file(os.fsencode(path), None)
        if not ptr:
            err = _ffi.last_errno()
            raise BpfObjectError(
                f"cannot open BPF object: {_ffi.strerror(err)} (errno {err})",
                errno=err,
                location=Location(str(path)),
            )
        obj = cls(int(ptr), path)
        try:
            if rodata:
                obj.set_rodata(rodata)
        except BaseException:
            obj.close()
            raise
        return obj

    def close(self) -> None:
        """Free the object (unloads programs not held by links or pins). Idempotent."""
        if self._ptr is not None:
            LIB.bpf_object__close(self._ptr)
            self._ptr = None
        self._programs.clear()
        self._maps.clear()


    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else ("loaded" if self._loaded else "open")
        return f"<BpfObject {self.path} {state}>"

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise BpfObjectError("BPF object is closed", errno=errno.EBADF, location=self._loc())
        return self._ptr

    @property
    def loaded(self) -> bool:
        return self._loaded and self._ptr is not None

    @property
    def name(self) -> str:
        return _ffi.cstr(LIB.bpf_object__name(self.ptr))

    def _loc(self) -> Location:
        return Location(str(self.path))

    def load(self) -> None:
        """Create maps and load every autoload program into the kernel.

        On failure raises :class:`ProgramLoadError` naming the program libbpf
        blamed (if any), with -errno decoded and the verifier log attached.
        """
        if self._loaded:
            raise BpfObjectError("BPF object already loaded", errno=errno.EALREADY, location=self._loc())
        collector = _WarningCollector()
        _log.addHandler(collector)
        try:
            rc = int(LIB.bpf_object__load(self.ptr))
        finally:
            _log.removeHandler(collector)
        if rc < 0:
            text = "\n".join(collector.messages)
            m = _RE_FAILED_PROG.search(text)
            program = m.group(1) if m else None
            logm = _RE_LOG.search(text)
            vlog = logm.group(1) if logm else ""
            msg = f"loading failed: {_ffi.strerror(-rc)} (errno {-rc})"
            if program:
                msg += f"; program {program!r}"
            reason = _last_verifier_error(vlog)
            if reason:
                msg += f": verifier: {reason}"
            raise ProgramLoadError(
                msg, errno=-rc, location=self._loc(), program=program, verifier_log=vlog
            )
        self._loaded = True

    # -- .rodata

    def _rodata_map_ptr(self) -> int | None:
        for m in self._iter_map_ptrs():
            if LIB.bpf_map__is_internal(m) and _ffi.cstr(LIB.bpf_map__name(m)).endswith(".rodata"):
                return m
        return None

    def rodata_layout(self) -> dict[str, VarInfo]:
        """``.rodata`` variables with offsets, from the object's (fixed-up) BTF."""
        btf_ptr = LIB.bpf_object__btf(self.ptr)
        if not btf_ptr:
            return {}
        return Btf(int(btf_ptr), owned=False, source=str(self.path)).datasec_vars(".rodata")

    def _rodata_var(self, name: str, layout: Mapping[str, VarInfo]) -> VarInfo:
        var = layout.get(name)
        if var is None:
            known = ", ".join(sorted(layout)) or "none"
            raise BpfObjectError(
                f"no .rodata variable {name!r} (const volatile globals: {known})",
                errno=errno.ENOENT,
                location=self._loc(),
            )
        return var

    def _rodata_bytes(self) -> tuple[int, bytearray]:
        mptr = self._rodata_map_ptr()
        if mptr is None:
            raise BpfObjectError("object has no .rodata map", errno=errno.ENOENT, location=self._loc())
        size = _ffi.c_size_t(0)
        data = LIB.bpf_map__initial_value(mptr, ctypes.byref(size))
        if not data:
            raise BpfObjectError(
                ".rodata has no initial value", errno=_ffi.last_errno(errno.ENOENT), location=self._loc()
            )
        return mptr, bytearray(ctypes.string_at(data, size.value))

    def set_rodata(self, values: Mapping[str, int | bytes]) -> None:
        """Set ``const volatile`` globals (before :meth:`load`).

        ints are stored little-endian in the variable's size (signed or
        unsigned range); bytes may be shorter than the variable (NUL-padded).
        """
        layout = self.rodata_layout()
        patches = [(self._rodata_var(k, layout), v) for k, v in values.items()]
        if not patches:
            return
        if self._loaded:
            raise BpfObjectError(
                ".rodata is frozen after load", errno=errno.EBUSY, location=self._loc()
            )
        mptr, buf = self._rodata_bytes()
        for var, value in patches:
            if var.offset + var.size > len(buf):
                raise BpfObjectError(
                    f".rodata variable {var.name!r} lies outside the section",
                    errno=errno.EINVAL,
                    location=self._loc(),
                )
            buf[var.offset : var.offset + var.size] = _encode_rodata(self.path, var, value)
        cbuf = (ctypes.c_char * len(buf)).from_buffer(buf)
        rc = int(LIB.bpf_map__set_initial_value(mptr, cbuf, len(buf)))
        if rc < 0:
            raise BpfObjectError(
                f"cannot set .rodata: {_ffi.strerror(-rc)} (errno {-rc})",
                errno=-rc,
                location=self._loc(),
            )

    def read_rodata(self, name: str) -> bytes:
        """Current (initial) bytes of ``.rodata`` variable ``name``; before or after load."""
        var = self._rodata_var(name, self.rodata_layout())
        _, buf = self._rodata_bytes()
        return bytes(buf[var.offset : var.offset + var.size])

    # -- programs

    def _iter_prog_ptrs(self) -> Iterator[int]:
        p = LIB.bpf_object__next_program(self.ptr, None)
        while p:
            yield int(p)
            p = LIB.bpf_object__next_program(self.ptr, p)

    def _program_for(self, ptr: int) -> Program:
        name = _ffi.cstr(LIB.bpf_program__name(ptr))
        prog = self._programs.get(name)
        if prog is None:
            prog = self._programs[name] = Program(self, ptr)
        return prog

    def programs(self) -> list[Program]:
        return [self._program_for(p) for p in self._iter_prog_ptrs()]

    def program(self, name: str) -> Program:
        ptr = LIB.bpf_object__find_program_by_name(self.ptr, name.encode())
        if not ptr:
            raise BpfObjectError(f"no program {name!r}", errno=errno.ENOENT, location=self._loc())
        return self._program_for(int(ptr))

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        """Choose whether ``load()`` loads this program (before load)."""
        self.program(prog_name).set_autoload(autoload)

    # -- maps

    def _iter_map_ptrs(self) -> Iterator[int]:
        m = LIB.bpf_object__next_map(self.ptr, None)
        while m:
            yield int(m)
            m = LIB.bpf_object__next_map(self.ptr, m)

    def _map_for(self, ptr: int) -> Map:
        name = _ffi.cstr(LIB.bpf_map__name(ptr))
        m = self._maps.get(name)
        if m is None:
            m = self._maps[name] = Map._from_object(self, ptr)
        return m

    def maps(self) -> list[Map]:
        return [self._map_for(m) for m in self._iter_map_ptrs()]

    def map(self, name: str) -> Map:
        ptr = LIB.bpf_object__find_map_by_name(self.ptr, name.encode())
        if not ptr:
            raise BpfObjectError(f"no map {name!r}", errno=errno.ENOENT, location=self._loc())
        return self._map_for(int(ptr))


# ---- programs ---------------------------------------------------------------------


class Program:
    """A program of a :class:`BpfObject` (valid while the object is open)."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name = _ffi.cstr(LIB.bpf_program__name(ptr))
        self.section_name = _ffi.cstr(LIB.bpf_program__section_name(ptr))

    def __repr__(self) -> str:
        return f"<Program {self.name} sec={self.section_name}>"

    @property
    def ptr(self) -> int:
        self._obj.ptr  # noqa: B018 -- raises if the object was closed
        return self._ptr

    def _loc(self) -> Location:
        return Location(f"{self._obj.path} program {self.name}")

    @property
    def fd(self) -> int:
        fd = int(LIB.bpf_program__fd(self.ptr))
        if fd < 0:
            raise KernelError(
                f"program {self.name!r} is not loaded",
                errno=errno.ENOENT,
                location=self._loc(),
            )
        return fd

    @property
    def prog_type(self) -> int:
        """``enum bpf_prog_type`` (from the section name, before or after load)."""
        return int(LIB.bpf_program__type(self.ptr))

    @property
    def autoload(self) -> bool:
        return bool(LIB.bpf_program__autoload(self.ptr))

    def set_autoload(self, autoload: bool) -> None:
        rc = int(LIB.bpf_program__set_autoload(self.ptr, autoload))
        _ffi.check(rc, f"set_autoload({self.name})", location=self._loc())

    def _attach_result(self, ptr: int | None, what: str) -> Link:
        if not ptr:
            err = _ffi.last_errno()
            raise KernelError(
                f"{what} of program {self.name!r} (SEC {self.section_name!r}) failed: "
                f"{_ffi.strerror(err)} (errno {err})",
                errno=err,
                location=self._loc(),
            )
        return Link(int(ptr), description=f"{self.name} ({self.section_name})",
                    section=self.section_name)

    def attach(self) -> Link:
        """Attach by section name (tracepoint/, tp_btf/, raw_tp/, lsm/, iter/ …)."""
        self.fd  # noqa: B018 -- raises unless loaded
        return self._attach_result(LIB.bpf_program__attach(self.ptr), "attach")

    def attach_cgroup(self, cgroup_fd: int) -> Link:
        """Attach a cgroup program to the cgroup open as ``cgroup_fd`` (a BPF link)."""
        self.fd  # noqa: B018 -- raises unless loaded
        return self._attach_result(
            LIB.bpf_program__attach_cgroup(self.ptr, cgroup_fd), "cgroup attach"
        )

    def test_run(
        self,
        ctx_in: bytes | None = None,
        data_in: bytes | None = None,
        repeat: int = 0,
    ) -> int:
        """Run the program once (or ``repeat`` times) via BPF_PROG_TEST_RUN; return retval.

        raw_tp and syscall programs need ``repeat=0``.  Inputs are copied into
        private buffers: the kernel writes the context back for some types.
        """
        opts = _ffi.BpfTestRunOpts()
        opts.sz = ctypes.sizeof(opts)
        keep: list[ctypes.Array[ctypes.c_char]] = []
        if ctx_in is not None:
            cbuf = ctypes.create_string_buffer(bytes(ctx_in), len(ctx_in))
            keep.append(cbuf)
            opts.ctx_in = ctypes.addressof(cbuf)
            opts.ctx_size_in = len(ctx_in)
        if data_in is not None:
            dbuf = ctypes.create_string_buffer(bytes(data_in), len(data_in))
            keep.append(dbuf)
            opts.data_in = ctypes.addressof(dbuf)
            opts.data_size_in = len(data_in)
        opts.repeat = repeat
        rc = int(LIB.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts)))
        _ffi.check(rc, f"test_run({self.name})", location=self._loc())
        return int(opts.retval)


# ---- links ------------------------------------------------------------------------


class Link(Closing):
    """An attachment (``struct bpf_link``).  Lives independently of its object.

    :meth:`destroy` releases it (detaching unless it is pinned: a pin keeps
    the kernel link alive); :meth:`detach` forcibly detaches even a pinned link.
    """

    def __init__(self, ptr: int, *, description: str = "", section: str = "") -> None:
        self._ptr: int | None = ptr
        self.description = description
        self.section = section          # the program's SEC(), "" when opened from a pin

    def __repr__(self) -> str:
        state = "destroyed" if self._ptr is None else f"fd={self.fd}"
        return f"<Link {self.description} {state}>"

    @classmethod
    def open_pinned(cls, path: Path | str) -> Link:
        ptr = LIB.bpf_link__open(os.fsencode(path))
        _ffi.check_ptr(ptr, "bpf_link__open", location=Location(str(path)))
        return cls(int(ptr), description=str(path))

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise KernelError(
                "link already destroyed",
                errno=errno.EBADF,
                location=Location(self.description),
            )
        return self._ptr

    @property
    def fd(self) -> int:
        return int(LIB.bpf_link__fd(self.ptr))

    @property
    def pin_path(self) -> Path | None:
        p = LIB.bpf_link__pin_path(self.ptr)
        return Path(os.fsdecode(p)) if p else None

    def pin(self, path: Path | str) -> None:
        rc = int(LIB.bpf_link__pin(self.ptr, os.fsencode(path)))
        _ffi.check(rc, f"pin link {self.description}", location=Location(str(path)))

    def unpin(self) -> None:
        rc = int(LIB.bpf_link__unpin(self.ptr))
        _ffi.check(rc, f"unpin link {self.description}", location=Location(self.description))

    def detach(self) -> None:
        """Force-detach (BPF_LINK_DETACH), even if pinned elsewhere."""
        rc = int(LIB.bpf_link__detach(self.ptr))
        _ffi.check(rc, f"detach link {self.description}", location=Location(self.description))

    def close(self) -> None:
        """``with link:`` ends in :meth:`destroy`."""
        self.destroy()

    def destroy(self) -> None:
        """Detach (unless pinned) and free.  Idempotent: the pointer is taken before the
        call, so an exception between the call and the bookkeeping (a signal handler's)
        can never make a second call free it again."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None:
            LIB.bpf_link__destroy(ptr)



# ---- maps --------------------------------------------------------------------------


def _map_info(fd: int, where: Location) -> _ffi.BpfMapInfo:
    info = _ffi.BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    rc = int(LIB.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)))
    _ffi.check(rc, "bpf_obj_get_info_by_fd", location=where)
    return info


class Map(Closing):
    """A BPF map: from an object (:meth:`BpfObject.map`) or by fd/pin.

    A map from an object borrows the object's fd; one made by
    :meth:`from_fd` / :meth:`open_pinned` owns its fd (:meth:`close` it).
    Operations work on raw bytes of exactly ``key_size`` / ``value_size``.
    """

    def __init__(
        self,
        *,
        obj: BpfObject | None,
        ptr: int | None,
        fd: int | None,
        info: _ffi.BpfMapInfo | None,
        pin_path: Path | None = None,
    ) -> None:
        self._obj = obj
        self._ptr = ptr
        self._own_fd = fd
        self._info = info
        self._pin_path = pin_path

    @classmethod
    def _from_object(cls, obj: BpfObject, ptr: int) -> Map:
        return cls(obj=obj, ptr=ptr, fd=None, info=None)

    @classmethod
    def from_fd(cls, fd: int) -> Map:
        """Wrap a map fd (duplicated: the caller keeps and closes its own)."""
        own = os.dup(fd)
        try:
            info = _map_info(own, Location(f"map fd {fd}"))
        except BaseException:
            os.close(own)
            raise
        return cls(obj=None, ptr=None, fd=own, info=info)

    @classmethod
    def open_pinned(cls, path: Path | str, *, read_only: bool = False) -> Map:
        """Open the map pinned at ``path`` (bpf_obj_get); ``read_only``: see :func:`obj_get`
        (updates and deletes through it then fail with EPERM)."""
        fd = obj_get(path, read_only=read_only)
        try:
            info = _map_info(fd, Location(str(path)))
        except BaseException:
            os.close(fd)
            raise
        if info.key_size == 0 and info.value_size == 0 and info.max_entries == 0:
            os.close(fd)
            raise KernelError(
                "pinned object is not a map",
                errno=errno.EINVAL,
                location=Location(str(path)),
            )
        return cls(obj=None, ptr=None, fd=fd, info=info, pin_path=Path(path))

    def close(self) -> None:
        """Close an owned fd (no-op for an object's map).  Idempotent."""
        if self._own_fd is not None:
            os.close(self._own_fd)
            self._own_fd = None
            self._info = None


    def __repr__(self) -> str:
        return (
            f"<Map {self.name} type={self.type} key={self.key_size}"
            f" value={self.value_size} max={self.max_entries}>"
        )

    # -- metadata

    def _libbpf_ptr(self) -> int | None:
        if self._obj is not None:
            self._obj.ptr  # noqa: B018 -- raises if the object was closed
        return self._ptr

    def _get_info(self) -> _ffi.BpfMapInfo:
        if self._info is None:
            raise KernelError("map fd is closed", errno=errno.EBADF, location=Location("map"))
        return self._info

    def _loc(self) -> Location:
        return Location(f"map {self.name}")

    @property
    def name(self) -> str:
        ptr = self._libbpf_ptr()
        if ptr is not None:
            return _ffi.cstr(LIB.bpf_map__name(ptr))
        return _ffi.cstr(self._get_info().name)

    @property
    def type(self) -> int:
        """``enum bpf_map_type``."""
        ptr = self._libbpf_ptr()
        return int(LIB.bpf_map__type(ptr)) if ptr is not None else int(self._get_info().type)

    @property
    def key_size(self) -> int:
        ptr = self._libbpf_ptr()
        return int(LIB.bpf_map__key_size(ptr)) if ptr is not None else int(self._get_info().key_size)

    @property
    def value_size(self) -> int:
        ptr = self._libbpf_ptr()
        return int(LIB.bpf_map__value_size(ptr)) if ptr is not None else int(self._get_info().value_size)

    @property
    def max_entries(self) -> int:
        ptr = self._libbpf_ptr()
        return int(LIB.bpf_map__max_entries(ptr)) if ptr is not None else int(self._get_info().max_entries)

    @property
    def map_flags(self) -> int:
        """``BPF_F_*`` creation flags (e.g. ``BPF_F_RDONLY_PROG``: programs only read it)."""
        ptr = self._libbpf_ptr()
        return int(LIB.bpf_map__map_flags(ptr)) if ptr is not None else int(self._get_info().map_flags)

    def set_max_entries(self, n: int) -> None:
        """Resize before load (e.g. a ring buffer's byte size). Object maps only."""
        ptr = self._libbpf_ptr()
        if ptr is None:
            raise KernelError(
                "only an object's map can be resized, before load",
                errno=errno.EINVAL,
                location=self._loc(),
            )
        _ffi.check(int(LIB.bpf_map__set_max_entries(ptr, n)), "set_max_entries", location=self._loc())

    def reuse_fd(self, fd: int) -> None:
        """Before load: this object's map is the existing map ``fd`` (another object's,
        shared: libbpf checks the definitions match).  Object maps only."""
        ptr = self._libbpf_ptr()
        if ptr is None:
            raise KernelError("only an object's map can reuse another map, before load",
                              errno=errno.EINVAL, location=self._loc())
        _ffi.check(int(LIB.bpf_map__reuse_fd(ptr, fd)), "reuse_fd", location=self._loc())

    @property
    def fd(self) -> int:
        ptr = self._libbpf_ptr()
        if ptr is not None:
            fd = int(LIB.bpf_map__fd(ptr))
            if fd < 0:
                raise KernelError(
                    "map is not created yet (object not loaded)",
                    errno=errno.ENOENT,
                    location=self._loc(),
                )
            return fd
        if self._own_fd is None:
            raise KernelError("map fd is closed", errno=errno.EBADF, location=self._loc())
        return self._own_fd

    @property
    def is_percpu(self) -> bool:
        return self.type in _ffi.PERCPU_MAP_TYPES

    # -- element ops

    def _check_len(self, what: str, data: bytes, size: int) -> None:
        if len(data) != size:
            raise KernelError(
                f"{what} is {len(data)} bytes, map {self.name!r} wants {size}",
                errno=errno.EINVAL,
                location=self._loc(),
            )

    def _lookup_raw(self, key: bytes, size: int) -> bytes | None:
        self._check_len("key", key, self.key_size)
        buf = ctypes.create_string_buffer(size)
        rc = int(LIB.bpf_map_lookup_elem(self.fd, key, buf))
        if rc == -errno.ENOENT:
            return None
        _ffi.check(rc, "lookup", location=self._loc())
        return buf.raw

    def lookup(self, key: bytes) -> bytes | None:
        """Value for ``key``, or None if absent.  Per-CPU maps: :meth:`lookup_percpu`."""
        if self.is_percpu:
            raise KernelError(
                "per-CPU map: use lookup_percpu()",
                errno=errno.EINVAL,
                location=self._loc(),
            )
        return self._lookup_raw(key, self.value_size)

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        """One value per possible CPU (each ``value_size`` bytes); ``[]`` if absent.

        The kernel hands back each CPU's value rounded up to 8 bytes, times
        ``num_possible_cpus()``; the padding is cut off here.
        """
        stride = _percpu_value_size(self.value_size)
        ncpu = num_possible_cpus()
        raw = self._lookup_raw(key, stride * ncpu)
        if raw is None:
            return []
        vs = self.value_size
        return [raw[i * stride : i * stride + vs] for i in range(ncpu)]

    def update(self, key: bytes, value: bytes, flags: int = _ffi.BPF_ANY) -> None:
        """Insert or replace (``flags``: 0 any, 1 BPF_NOEXIST, 2 BPF_EXIST)."""
        if self.is_percpu:
            raise KernelError(
                "per-CPU map: use update_percpu()",
                errno=errno.EINVAL,
                location=self._loc(),
            )
        self._check_len("key", key, self.key_size)
        self._check_len("value", value, self.value_size)
        rc = int(LIB.bpf_map_update_elem(self.fd, key, value, flags))
        _ffi.check(rc, "update", location=self._loc())

    def freeze(self) -> None:
        """Make the map read-only to user space for good (``BPF_MAP_FREEZE``: no update
        or delete through any fd, no writable mmap); its programs still write it.
        EBUSY while a writable mapping of it exists."""
        rc = int(LIB.bpf_map_freeze(self.fd))
        _ffi.check(rc, "freeze", location=self._loc())

    def update_percpu(self, key: bytes, values: Sequence[bytes], flags: int = _ffi.BPF_ANY) -> None:
        """Set every CPU's value (``num_possible_cpus()`` values of ``value_size``)."""
        ncpu = num_possible_cpus()
        if len(values) != ncpu:
            raise KernelError(
                f"{len(values)} values for {ncpu} CPUs",
                errno=errno.EINVAL,
                location=self._loc(),
            )
        self._check_len("key", key, self.key_size)
        stride = _percpu_value_size(self.value_size)
        for v in values:
            self._check_len("value", v, self.value_size)
        blob = b"".join(v.ljust(stride, b"\0") for v in values)
        rc = int(LIB.bpf_map_update_elem(self.fd, key, blob, flags))
        _ffi.check(rc, "update", location=self._loc())

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if it was absent."""
        self._check_len("key", key, self.key_size)
        rc = int(LIB.bpf_map_delete_elem(self.fd, key))
        if rc == -errno.ENOENT:
            return False
        _ffi.check(rc, "delete", location=self._loc())
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate keys (BPF_MAP_GET_NEXT_KEY).

        Lazy: if the current key is deleted meanwhile, a hash map restarts
        from its first key, so keys may repeat — ``list()`` it before deleting.
        """
        ks = self.key_size
        fd = self.fd
        cur = ctypes.create_string_buffer(ks)
        nxt = ctypes.create_string_buffer(ks)
        rc = int(LIB.bpf_map_get_next_key(fd, None, nxt))
        while rc == 0:
            yield nxt.raw
            ctypes.memmove(cur, nxt, ks)
            rc = int(LIB.bpf_map_get_next_key(fd, cur, nxt))
        if rc != -errno.ENOENT:
            _ffi.check(rc, "get_next_key", location=self._loc())

    # -- pins

    @property
    def pin_path(self) -> Path | None:
        return self._pin_path

    def pin(self, path: Path | str) -> None:
        """Pin at ``path`` (directory must exist on bpffs)."""
        obj_pin(self.fd, path)
        self._pin_path = Path(path)

    def unpin(self) -> None:
        """Remove the pin made by :meth:`pin` (or the one opened by :meth:`open_pinned`)."""
        if self._pin_path is None:
            raise KernelError("map is not pinned", errno=errno.ENOENT, location=self._loc())
        try:
            os.unlink(self._pin_path)
        except OSError as exc:
            raise KernelError(
                f"cannot unpin: {exc.strerror}",
                errno=exc.errno or errno.EIO,
                location=Location(str(self._pin_path)),
            ) from exc
        self._pin_path = None
