"""Pseudo-filesystems BPF needs: bpffs (pins), tracefs, securityfs, cgroup v2.

On this host kind bpffs and tracefs are not mounted at boot (DESIGN "Kernel
facts that bite"): :func:`ensure_bpffs` and friends mount them with mount(2)
through ctypes — no subprocess.  :func:`remove_pins` only ever works on a
directory that is on bpffs, so a wrong path cannot delete real files.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import FeatureUnavailableError, KernelError, Location
from bastion.kernel._ffi import LIBC

log = logging.getLogger("bastion.kernel.bpffs")

BPFFS = Path("/sys/fs/bpf")
TRACEFS = Path("/sys/kernel/tracing")
SECURITYFS = Path("/sys/kernel/security")
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (the fields Bastion uses)."""

    mount_point: Path
    root: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        c = field[i]
        octal = field[i + 1 : i + 4]
        if c == "\\" and len(octal) == 3 and all(ch in "01234567" for ch in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo text (proc(5)).

    Line format: ``id parent maj:min root mount_point opts [optional...] -
    fstype source super_opts``.
    """
    entries: list[MountEntry] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 7 or "-" not in parts[6:]:
            continue
        sep = parts.index("-", 6)
        if sep + 1 >= len(parts):
            continue
        fstype = parts[sep + 1]
        source = parts[sep + 2] if sep + 2 < len(parts) else ""
        entries.append(
            MountEntry(
                mount_point=Path(_unescape(parts[4])),
                root=_unescape(parts[3]),
                fstype=fstype,
                source=_unescape(source),
            )
        )
    return entries


def mounts() -> list[MountEntry]:
    """The current mount table of this process's mount namespace."""
    return parse_mountinfo(MOUNTINFO.read_text())


def fs_type_of(path: Path, entries: list[MountEntry] | None = None) -> str | None:
    """Filesystem type of the mount that contains ``path`` (longest prefix; last wins)."""
    path = Path(os.path.abspath(path))
    best: MountEntry | None = None
    for e in mounts() if entries is None else entries:
        mp = e.mount_point
        if path == mp or mp in path.parents:
            if best is None or len(mp.parts) >= len(best.mount_point.parts):
                best = e
    return None if best is None else best.fstype


def is_mounted(path: Path, fstype: str, entries: list[MountEntry] | None = None) -> bool:
    """True if a filesystem of ``fstype`` is mounted exactly at ``path``."""
    path = Path(os.path.abspath(path))
    for e in mounts() if entries is None else entries:
        if e.mount_point == path and e.fstype == fstype:
            return True
    return False


def _mount(fstype: str, path: Path) -> None:
    if not path.is_dir():
        raise FeatureUnavailableError(
            f"mount point for {fstype} does not exist", errno=errno.ENOENT, location=Location(str(path))
        )
    rc = int(LIBC.mount(fstype.encode(), os.fsencode(path), fstype.encode(), 0, None))
    if rc != 0:
        err = ctypes.get_errno() or errno.EIO
        raise KernelError(
            f"cannot mount {fstype}: {os.strerror(err)}", errno=err, location=Location(str(path))
        )


def ensure_mounted(fstype: str, path: Path) -> bool:
    """Mount ``fstype`` at ``path`` unless it is there; True if this call mounted it."""
    if is_mounted(path, fstype):
        return False
    _mount(fstype, path)
    return True


def ensure_bpffs(path: Path | str = BPFFS) -> Path:
    """Make sure bpffs is mounted at ``path``; return the path."""
    p = Path(path)
    ensure_mounted("bpf", p)
    return p


def ensure_tracefs(path: Path | str = TRACEFS) -> Path:
    """Make sure tracefs is mounted (libbpf reads tracepoint ids from it)."""
    p = Path(path)
    ensure_mounted("tracefs", p)
    return p


def ensure_securityfs(path: Path | str = SECURITYFS) -> Path:
    """Make sure securityfs is mounted (/sys/kernel/security/lsm)."""
    p = Path(path)
    ensure_mounted("securityfs", p)
    return p


CGROUPFS = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class PseudoFs:
    """A pseudo-filesystem Bastion needs, where it goes, and what for."""

    name: str
    fstype: str
    path: Path
    needed_for: str

    def fix(self) -> str:
        return f"mount -t {self.fstype} {self.fstype} {self.path}"


PSEUDO_FILESYSTEMS: tuple[PseudoFs, ...] = (
    PseudoFs("bpffs", "bpf", BPFFS, "pinning enforcement and tamper protection"),
    PseudoFs("tracefs", "tracefs", TRACEFS, "attaching the event sensor's tracepoints"),
    PseudoFs("securityfs", "securityfs", SECURITYFS, "reading the active LSMs and the lockdown mode"),
    PseudoFs("cgroup2", "cgroup2", CGROUPFS, "cgroup ids of processes and cgroup-scoped enforcement"),
)


@dataclass(frozen=True)
class HostMounts:
    """What :func:`prepare_pseudo_filesystems` found already mounted and what it mounted."""

    present: tuple[str, ...]
    mounted: tuple[str, ...]


def _cgroup2_target(entries: list[MountEntry]) -> Path:
    """Where to mount cgroup v2 when none is mounted: /sys/fs/cgroup itself when nothing is
    mounted there, else (a v1/hybrid tmpfs) its ``unified`` subdirectory."""
    if not any(e.mount_point == CGROUPFS for e in entries):
        return CGROUPFS
    target = CGROUPFS / "unified"
    target.mkdir(mode=0o755, exist_ok=True)
    return target


def prepare_pseudo_filesystems(names: tuple[str, ...] | None = None) -> HostMounts:
    """Check, and mount where missing, the pseudo-filesystems Bastion needs.

    The one place every entry point calls at start: a freshly booted host of
    this kind has neither tracefs nor securityfs (nor bpffs) mounted.  A
    filesystem that cannot be mounted raises :class:`FeatureUnavailableError`
    naming it, what it is needed for, and the command that fixes it.
    """
    want = [fs for fs in PSEUDO_FILESYSTEMS if names is None or fs.name in names]
    unknown = set(names or ()) - {fs.name for fs in PSEUDO_FILESYSTEMS}
    if unknown:
        raise ValueError(f"unknown pseudo-filesystems: {sorted(unknown)}")
    present: list[str] = []
    mounted: list[str] = []
    for fs in want:
        entries = mounts()
        if fs.fstype == "cgroup2":
            if any(e.fstype == "cgroup2" for e in entries):
                present.append(fs.name)
                continue
        elif is_mounted(fs.path, fs.fstype, entries):
            present.append(fs.name)
            continue
        try:
            _mount(fs.fstype, _cgroup2_target(entries) if fs.fstype == "cgroup2" else fs.path)
        except (KernelError, OSError) as exc:
            why = exc.message if isinstance(exc, KernelError) else str(exc)
            raise FeatureUnavailableError(
                f"{fs.name} is not mounted and mounting it failed ({why}); Bastion needs it for "
                f"{fs.needed_for}. Fix: {fs.fix()}",
                errno=getattr(exc, "errno", 0) or errno.ENODEV, location=Location(str(fs.path)),
            ) from exc
        mounted.append(fs.name)
    return HostMounts(present=tuple(present), mounted=tuple(mounted))


def _require_bpffs(root: Path) -> None:
    kind = fs_type_of(root)
    if kind != "bpf":
        raise KernelError(
            f"not on bpffs (filesystem {kind or 'unknown'})", errno=errno.EXDEV, location=Location(str(root))
        )


def pin_dir(root: Path | str) -> Path:
    """Create (mode 0700) and return a pin directory; it must be on bpffs."""
    p = Path(root)
    _require_bpffs(p)
    try:
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelError(
            f"cannot create pin directory: {exc.strerror}",
            errno=exc.errno or errno.EIO,
            location=Location(str(p)),
        ) from exc
    return p


def mount_id(fd: int) -> int:
    """The id of the mount ``fd`` is on, from its fdinfo (-1 when unknown): /proc answers,
    not the filesystem, so a FUSE mount that never answers cannot block this."""
    try:
        with open(f"/proc/thread-self/fdinfo/{fd}", "rb") as fh:
            for ln in fh.read().decode().splitlines():
                if ln.startswith("mnt_id:"):
                    return int(ln.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


#: How deep :func:`remove_pins` holds a directory open below its root.  Our trees are 3
#: deep (``tamper/maps/<pin>``); anything below this was made by someone else (root may
#: ``mkdir -p`` a chain of any depth under the pin root on compat): it is not walked one fd
#: (and, before s21, one stack frame) a level, but lifted up a level at a time and removed.
REMOVE_DEPTH = 8


def _listing(dfd: int) -> list[tuple[str, bool]]:
    """(name, is a directory by d_type) of the directory open at ``dfd``: never stat()ed,
    never followed."""
    lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
    try:
        with os.scandir(lfd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    finally:
        os.close(lfd)


def _open_same_mount(dfd: int, name: str, q: Path, mnt: int, crossed: list[Path]) -> int | None:
    """``name`` under ``dfd`` opened ``O_PATH|O_NOFOLLOW`` (no filesystem is asked); None
    when it is gone, or on another mount (mounted over it: logged and put in ``crossed``,
    never entered or unlinked)."""
    try:
        sub = os.open(name, _PATH, dir_fd=dfd)
    except FileNotFoundError:
        return None                                 # gone since the listing
    if mount_id(sub) != mnt:
        os.close(sub)
        log.warning("bpffs: %s is another mount (mounted over our pin directory): "
                    "not entered, not removed", q)
        crossed.append(q)
        return None
    return sub


def _free_name(dfd: int, n: int) -> str:
    """A name not taken in the directory at ``dfd`` (for a directory lifted into it)."""
    while True:
        name = f".bastion-lift-{n}"
        try:
            os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return name
        n += 1


@dataclass
class _Level:
    fd: int                                         # O_PATH, owned unless the walk's top
    path: Path
    name: str                                       # in the level above ("" for the top)
    todo: list[tuple[str, bool]]
    empty: bool = True


def _remove_tree(top: int, d: Path, mnt: int, removed: list[Path], crossed: list[Path]) -> bool:
    """Unlink everything in the directory open (``O_PATH``) at ``top`` (named ``d``, on
    mount ``mnt``): by d_type and relative to the parent's fd, so a symlink someone made
    there is unlinked, never followed.  Each entry is first opened ``O_PATH|O_NOFOLLOW``
    and one on another mount is never opened, entered or unlinked: it goes to
    ``crossed``.  Iterative, at most :data:`REMOVE_DEPTH` directories open at once: a
    directory at that depth is not entered, its subdirectories are renamed up into its
    parent (one level a step, each at most once) and its files unlinked, so a chain of any
    depth is removed with bounded fds, no recursion and short paths.  True when ``d`` is
    now empty.  OSError is the caller's to wrap."""
    levels = [_Level(top, d, "", _listing(top))]
    lifted = 0
    try:
        while levels:
            lv = levels[-1]
            if not lv.todo:
                levels.pop()
                if not levels:
                    return lv.empty
                os.close(lv.fd)
                up = levels[-1]
                if lv.empty:
                    os.rmdir(lv.name, dir_fd=up.fd)
                    removed.append(lv.path)
                else:
                    up.empty = False
                continue
            name, isdir = lv.todo.pop()
            q = lv.path / name
            seen = len(crossed)
            sub = _open_same_mount(lv.fd, name, q, mnt, crossed)
            if sub is None:
                if len(crossed) > seen:             # another mount stays, so does lv
                    lv.empty = False
                continue
            if isdir and len(levels) < REMOVE_DEPTH:
                try:
                    todo = _listing(sub)
                except BaseException:
                    os.close(sub)
                    raise
                levels.append(_Level(sub, q, name, todo))
                continue
            try:
                if isdir:                           # at the depth cap: flatten, not enter
                    left = False
                    for cname, cdir in _listing(sub):
                        cq = q / cname
                        seen = len(crossed)
                        csub = _open_same_mount(sub, cname, cq, mnt, crossed)
                        if csub is None:
                            left = left or len(crossed) > seen
                            continue
                        os.close(csub)
                        if cdir:
                            new = _free_name(lv.fd, lifted)
                            lifted += 1
                            os.rename(cname, new, src_dir_fd=sub, dst_dir_fd=lv.fd)
                            lv.todo.append((new, True))
                        else:
                            os.unlink(cname, dir_fd=sub)
                            removed.append(cq)
                    if left:
                        lv.empty = False
                        continue
            finally:
                os.close(sub)
            if isdir:
                os.rmdir(name, dir_fd=lv.fd)
            else:
                os.unlink(name, dir_fd=lv.fd)
            removed.append(q)
        return True
    finally:
        for lv in levels[1:]:
            os.close(lv.fd)
        if lifted:                                  # once a walk: root chose the count
            log.warning("bpffs: %d directories deeper than any pin of ours under %s were "
                        "lifted up a level to be removed", lifted, d)


def remove_pins(root: Path | str, crossed: list[Path] | None = None) -> list[Path]:
    """Unlink every pin under ``root`` (files first, then directories, then ``root``).

    Returns what was removed, deepest first.  A missing ``root`` removes
    nothing.  Refuses a ``root`` that is not on bpffs.  A symlink under ``root``
    (root may make them on the compat tier) is unlinked, never followed: a loop,
    a directory elsewhere or a FUSE mount that never answers cannot stop it.  A
    mount someone put under ``root`` (a tmpfs, a FUSE that never answers) is never
    opened or entered: it is logged and appended to ``crossed`` (for the caller to
    alert), the rest is removed, and the directories holding it stay.
    """
    p = Path(root)
    try:
        fd = os.open(p, _PATH | os.O_DIRECTORY)      # not stat(): asks no filesystem
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KernelError(f"cannot open the pin directory: {exc.strerror}",
                          errno=exc.errno or errno.EIO, location=Location(str(p))) from exc
    try:
        _require_bpffs(p)
    except KernelError:
        os.close(fd)
        raise
    removed: list[Path] = []
    over: list[Path] = []
    try:
        try:
            empty = _remove_tree(fd, p, mount_id(fd), removed, over)
        finally:
            os.close(fd)
        if empty:
            p.rmdir()
            removed.append(p)
    except OSError as exc:
        raise KernelError(
            f"cannot remove pin: {exc.strerror}",
            errno=exc.errno or errno.EIO,
            location=Location(str(exc.filename or p)),
        ) from exc
    if crossed is not None:
        crossed.extend(over)
    return removed


def cgroup2_root(entries: list[MountEntry] | None = None) -> Path:
    """Mount point of the cgroup v2 hierarchy (its root, not a sub-cgroup bind)."""
    found = [e for e in (mounts() if entries is None else entries) if e.fstype == "cgroup2"]
    for e in found:
        if e.root == "/":
            return e.mount_point
    if found:
        return found[0].mount_point
    raise FeatureUnavailableError(
        "no cgroup v2 hierarchy is mounted", errno=errno.ENOENT, location=Location(str(MOUNTINFO))
    )
