"""The protected set: which files, directories and pins tamper protection covers.

Built from configuration (:func:`default_paths`) and resolved to inode keys
(:func:`resolve`) with the flags of the tamper section of ``bastion.h``:

* ``SELF``     — this inode (a file, or a directory's own entry);
* ``SUBTREE``  — a directory and everything under it (the BPF side walks
  ancestors on the same filesystem; the compat tier marks every
  subdirectory with fanotify);
* ``ANCESTOR`` — a directory above a protected path: it cannot be renamed,
  removed or mounted over (that would hide or replace the protected tree).
  ``/`` itself is never marked.

What the agent runs is protected with it (``install_tree``): the real
interpreter binary (the venv's ``python`` is a symlink to it), the standard
library and the site directories, the shared objects the interpreter has
mapped (libc, the loader, libpython, libffi, sqlite ...: refusing writes to
them is harmless; a package upgrade of one needs the maintenance window), the
libbpf :mod:`bastion.kernel._ffi` loads by absolute path, and the Python
startup hooks of the host (``/etc/python3*``: Debian's ``sitecustomize``).
The service unit, its drop-in directories and the ``multi-user.target.wants``
link are protected when present (a symlink is protected as itself and its
target).  ``/etc/ld.so.preload`` is protected when present; its creation
cannot be refused without protecting all of ``/etc`` (the tamper objects are
inode keys), so :class:`PathWatch` reports every path of :data:`WATCHED`
that appears, disappears or changes, and the guardian raises a critical alert.
"""

from __future__ import annotations

import glob
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Iterable, Sequence

from bastion.abi import kernel_dev  # re-exported: the guard's inode keys
from bastion.errors import ConfigError, Location
from bastion.paths import DEFAULT_SOCKET, bpf_object_dir

F_SELF: Final = 1 << 0
F_SUBTREE: Final = 1 << 1
F_ANCESTOR: Final = 1 << 2

RUN_DIR: Final = DEFAULT_SOCKET.parent     # /run/bastion: the control sockets

UNIT_NAME: Final = "bastion.service"
#: systemd's unit directories, highest precedence first (/run shadows /lib).
SYSTEMD_DIRS: Final = (Path("/etc/systemd/system"), Path("/run/systemd/system"),
                       Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
SERVICE_UNITS: Final = tuple(d / UNIT_NAME for d in SYSTEMD_DIRS)
#: ``bastion.service.d/*.conf`` override ExecStart, Environment, ... of the unit.
DROPIN_DIRS: Final = tuple(d / f"{UNIT_NAME}.d" for d in SYSTEMD_DIRS)
#: ``systemctl enable``'s link: without it the agent does not start at boot.
WANTS_LINKS: Final = tuple(d / "multi-user.target.wants" / UNIT_NAME for d in SYSTEMD_DIRS[:2])
#: Every program started afterwards loads the libraries named here first.
LD_SO_PRELOAD: Final = Path("/etc/ld.so.preload")
#: Paths whose appearance, removal or change the guardian reports (see
#: :class:`PathWatch`): a new drop-in directory or a new ``/etc/ld.so.preload``
#: changes what the agent runs at its next start, and cannot be refused.
WATCHED: Final = (LD_SO_PRELOAD, *SERVICE_UNITS, *DROPIN_DIRS, *WANTS_LINKS)


@dataclass(frozen=True)
class ProtectedObject:
    path: str
    dev: int          # kernel dev_t
    ino: int
    flags: int        # F_*
    oid: int          # 1-based index in the set (reported as obj_id)
    is_dir: bool


@dataclass(frozen=True)
class ProtectedSet:
    objects: tuple[ProtectedObject, ...]
    devs: frozenset[int]          # filesystems that hold protected objects (no umount)
    missing: tuple[str, ...]      # configured paths that do not exist (not protected)

    def roots(self) -> list[ProtectedObject]:
        """The configured objects (not the ancestors)."""
        return [o for o in self.objects if o.flags & (F_SELF | F_SUBTREE)]

    def by_id(self, oid: int) -> ProtectedObject | None:
        for o in self.objects:
            if o.oid == oid:
                return o
        return None


def mapped_libraries(maps: str) -> list[Path]:
    """The shared objects named in a ``/proc/PID/maps`` text, in order, once each
    (file mappings whose name holds ``.so``; deleted files and memfds left out)."""
    out: dict[Path, None] = {}
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        name = parts[5]
        if not name.startswith("/") or name.endswith(" (deleted)") or name.startswith("/memfd:"):
            continue
        if ".so" in os.path.basename(name):
            out[Path(name)] = None
    return list(out)


def interpreter_paths() -> list[Path]:
    """The code the agent's interpreter runs before and besides Bastion: the real
    binary (symlinks resolved), the standard library, the site directories,
    the shared objects mapped into this process, the libbpf that
    :mod:`bastion.kernel._ffi` loads, and the host's Python startup hooks
    (``/etc/python3*``: Debian's ``sitecustomize.py`` lives there)."""
    from bastion.kernel._ffi import libbpf_path

    out: list[Path] = [Path(os.path.realpath(sys.executable))]
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        out.append(Path(paths[key]))
    zipped = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}{sys.version_info[1]}.zip"
    if zipped.exists():
        out.append(zipped)
    # sitecustomize/usercustomize and .pth additions live on sys.path; not its first
    # entry unless isolated (-I/-P): the script's directory (/usr/bin for the console
    # script) or the working directory, which the agent (started with -I) never searches
    for entry in sys.path if sys.flags.safe_path else sys.path[1:]:
        if entry and os.path.isabs(entry) and os.path.exists(entry):
            out.append(Path(entry))
    out += sorted(Path(p) for p in glob.glob("/etc/python3*"))
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        out += mapped_libraries(f.read())
    out.append(libbpf_path())
    return list(dict.fromkeys(out))


def default_paths(*, data_dir: Path, config_paths: Sequence[Path] = (),
                  pin_root: Path | None = None, install_tree: bool = True,
                  extra: Sequence[Path] = (), run_dir: Path | None = RUN_DIR) -> list[Path]:
    """What the agent needs intact: its install tree and virtualenv, BPF objects,
    the interpreter and libraries it runs (:func:`interpreter_paths`), config and
    policy files, data dir, service unit with its drop-ins and wants link,
    ``/etc/ld.so.preload`` when present, pins, and the run directory of the control
    sockets (nobody else may replace a socket there: issue 13 item 11)."""
    out: list[Path] = []
    if run_dir is not None:
        ensure_run_dir(run_dir)
        out.append(run_dir)
    if install_tree:
        import bastion

        out.append(Path(sys.prefix))
        pkg = Path(bastion.__file__).resolve().parent
        if not pkg.is_relative_to(Path(sys.prefix).resolve()):
            out.append(pkg)        # an editable install: the source package
        out.append(bpf_object_dir())
        out += interpreter_paths()
    out += list(config_paths)
    out.append(data_dir)
    out += [u for u in (*SERVICE_UNITS, *DROPIN_DIRS, *WANTS_LINKS, LD_SO_PRELOAD)
            if os.path.lexists(u)]
    if pin_root is not None:
        out.append(pin_root)
    out += list(extra)
    return out


def ensure_run_dir(run_dir: Path) -> None:
    """``run_dir`` as a real directory, 0700, owned by root (us); ConfigError otherwise."""
    try:
        try:
            run_dir.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass           # checked below, without following a symlink
        st = os.lstat(run_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(f"the run directory is not ours (a symlink, or owned by uid "
                              f"{st.st_uid}): refusing to protect or use it",
                              location=Location(str(run_dir)))
        os.chmod(run_dir, 0o700)
    except OSError as exc:
        raise ConfigError(f"cannot prepare the run directory: {exc.strerror}",
                          location=Location(str(run_dir))) from exc


def system_libraries(ps: ProtectedSet) -> list[ProtectedObject]:
    """The protected shared objects outside the interpreter's and the venv's prefixes
    (libc, the loader, libbpf, libz ...).  Every process on the host opens some of
    them: the compat tier's fanotify permission mark would put the guardian in the
    path of every exec (measured: ~240 µs per open of a marked file vs ~30 µs), so
    there they are left to the lsm tier and reported as unenforced."""
    own = [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    out = []
    for o in ps.roots():
        p = Path(o.path)
        if not o.is_dir and ".so" in p.name and not any(p.is_relative_to(d) for d in own):
            out.append(o)
    return out


def without(ps: ProtectedSet, drop: Iterable[ProtectedObject]) -> ProtectedSet:
    """``ps`` less the objects ``drop`` (their ancestors stay)."""
    gone = {(o.dev, o.ino) for o in drop}
    kept = tuple(o for o in ps.objects if (o.dev, o.ino) not in gone)
    return ProtectedSet(kept, frozenset(o.dev for o in kept if o.flags & (F_SELF | F_SUBTREE)),
                        ps.missing)


def _ancestors(p: Path) -> Iterable[Path]:
    for a in p.parents:
        if a == Path(a.anchor):
            return
        yield a


def resolve(paths: Iterable[Path], *, forbid: Sequence[Path] = ()) -> ProtectedSet:
    """Resolve ``paths`` (files or directories) to inode keys.

    ``forbid``: paths that must not be protected (nor anything under them);
    tests pass the real install tree and pin root so a test can never
    protect them.
    """
    objs: dict[tuple[int, int], ProtectedObject] = {}
    devs: set[int] = set()
    missing: list[str] = []
    order: list[tuple[Path, int, bool]] = []
    forbidden = [f.resolve() for f in forbid]
    for raw in paths:
        p = Path(os.path.abspath(raw))
        try:
            real = p.resolve(strict=True)
            st = os.stat(real)
            # a symlink (e.g. the wants link) is protected as itself too: removing
            # or replacing it changes what runs without touching its target
            link = p.parent.resolve(strict=True) / p.name if p.is_symlink() else None
        except OSError:
            missing.append(str(p))
            continue
        for f in forbidden:
            for cand in (real, link):
                if cand is not None and (cand == f or cand.is_relative_to(f)
                                         or f.is_relative_to(cand)):
                    raise ConfigError(f"refusing to protect {cand}: overlaps {f}",
                                      location=Location(str(raw)))
        if link is not None:
            order.append((link, F_SELF, False))
            for a in _ancestors(link):
                order.append((a, F_ANCESTOR, True))
        is_dir = stat.S_ISDIR(st.st_mode)
        order.append((real, F_SUBTREE | F_SELF if is_dir else F_SELF, is_dir))
        for a in _ancestors(real):
            order.append((a, F_ANCESTOR, True))
    for path, flags, is_dir in order:
        try:
            st = os.lstat(path)   # every path in order is resolved except a link's own name
        except OSError:
            continue
        key = (kernel_dev(st.st_dev), st.st_ino)
        prev = objs.get(key)
        if prev is not None:
            objs[key] = ProtectedObject(prev.path, key[0], key[1], prev.flags | flags, prev.oid,
                                        prev.is_dir)
            continue
        objs[key] = ProtectedObject(str(path), key[0], key[1], flags, len(objs) + 1, is_dir)
        if flags & (F_SELF | F_SUBTREE):
            devs.add(key[0])
    return ProtectedSet(tuple(objs.values()), frozenset(devs), tuple(missing))


@dataclass(frozen=True)
class PathChange:
    path: str
    before: str      # "absent" or "dev:ino size mtime_ns" (a symlink also gives its target)
    after: str

    @property
    def kind(self) -> str:
        return ("appeared" if self.before == "absent" else
                "removed" if self.after == "absent" else "changed")


def _fingerprint(p: Path) -> str:
    try:
        st = os.lstat(p)
    except OSError:
        return "absent"
    fp = f"{st.st_dev}:{st.st_ino} {st.st_size} {st.st_mtime_ns}"
    if stat.S_ISLNK(st.st_mode):
        try:
            fp += f" -> {os.readlink(p)}"
        except OSError:
            pass
    return fp


class PathWatch:
    """Reports paths of ``paths`` that appeared, disappeared or changed since
    the last :meth:`changes` (the first snapshot is taken at construction)."""

    def __init__(self, paths: Sequence[Path] = WATCHED) -> None:
        self.paths = tuple(paths)
        self._seen = {p: _fingerprint(p) for p in self.paths}

    def present(self) -> list[str]:
        return [str(p) for p, fp in self._seen.items() if fp != "absent"]

    def changes(self) -> list[PathChange]:
        out: list[PathChange] = []
        for p in self.paths:
            now = _fingerprint(p)
            if now != self._seen[p]:
                out.append(PathChange(str(p), self._seen[p], now))
                self._seen[p] = now
        return out


__all__ = ["DROPIN_DIRS", "F_ANCESTOR", "F_SELF", "F_SUBTREE", "LD_SO_PRELOAD", "PathChange",
           "PathWatch", "ProtectedObject", "ProtectedSet", "SERVICE_UNITS", "WANTS_LINKS",
           "WATCHED", "default_paths", "interpreter_paths", "kernel_dev", "mapped_libraries",
           "resolve", "system_libraries", "without", "RUN_DIR", "ensure_run_dir"]
