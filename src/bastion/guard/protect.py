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
"""

from __future__ import annotations

import os
import stat
import sys
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

SERVICE_UNITS: Final = (Path("/etc/systemd/system/bastion.service"),
                        Path("/lib/systemd/system/bastion.service"),
                        Path("/usr/lib/systemd/system/bastion.service"))


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


def default_paths(*, data_dir: Path, config_paths: Sequence[Path] = (),
                  pin_root: Path | None = None, install_tree: bool = True,
                  extra: Sequence[Path] = (), run_dir: Path | None = RUN_DIR) -> list[Path]:
    """What the agent needs intact: its install tree and virtualenv, BPF objects,
    config and policy files, data dir, service unit, pins, and the run directory of
    the control sockets (nobody else may replace a socket there: issue 13 item 11)."""
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
    out += list(config_paths)
    out.append(data_dir)
    out += [u for u in SERVICE_UNITS if u.exists()]
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
        except OSError:
            missing.append(str(p))
            continue
        for f in forbidden:
            if real == f or real.is_relative_to(f) or f.is_relative_to(real):
                raise ConfigError(f"refusing to protect {real}: overlaps {f}",
                                  location=Location(str(raw)))
        is_dir = stat.S_ISDIR(st.st_mode)
        order.append((real, F_SUBTREE | F_SELF if is_dir else F_SELF, is_dir))
        for a in _ancestors(real):
            order.append((a, F_ANCESTOR, True))
    for path, flags, is_dir in order:
        try:
            st = os.stat(path)
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


__all__ = ["RUN_DIR", "ensure_run_dir", "F_ANCESTOR", "F_SELF", "F_SUBTREE", "ProtectedObject", "ProtectedSet",
           "default_paths", "kernel_dev", "resolve"]
