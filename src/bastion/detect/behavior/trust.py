"""Which executables the behaviour rules trust: by inode, never by name.

A rule that exempts package managers, debuggers or log writers asks
:meth:`ExeTrust.is_tool`: is this process's executable (device, inode) the file
installed as one of these tools?  A tool ``dpkg`` is the file ``<dir>/dpkg``
for each system directory ``<dir>`` (:data:`TRUST_DIRS`), and only when that
file is a regular file owned by root, not writable by group or others, and every
directory above it is owned by root and not writable by group or others: only
root can have put that inode there.  ``/tmp/dpkg`` or a process that renamed
itself ``dkms`` with ``prctl(PR_SET_NAME)`` is never trusted, whatever its name.

Scripts (``dkms``, ``update-initramfs``, ``pam-auth-update``...) run as an
interpreter whose ``argv[1]`` is the script: the interpreter a shell or script
interpreter (:func:`runs_scripts`) whose inode is the trusted system file of its name,
and ``argv[1]`` an absolute path whose (device, inode) is a
trusted tool (the file sits in a root-only directory; looked up once per path and
refresh, like the tools' own identities: only root can change what a root-only path
holds, and re-resolving it per event let any script's children make the agent walk
and stat the script's path for every event of theirs a rule asked about).  The path
is resolved here, in the agent's mount namespace, so it names the process's file only
for a process that exec'd in that namespace (the exec record's ``mnt_ns``, s31): in a
mount namespace of its own a user (``unshare -Urm``) bind-mounts their script over
``/usr/sbin/dkms``, and ``sh /usr/sbin/dkms`` ran it trusted as dkms.  Elsewhere, under
another root or a seccomp supervisor (the record's ``rooted``), where the record has no
namespace (a recording from before ABI 3.5) or the process was first seen through
``/proc``, no script is trusted.  The path itself is walked by :func:`secure_file`, a
component at a time, through root-only local directories only.

Identities are resolved lazily per tool name and re-resolved every
``refresh_s`` (an upgrade replaces the inode).  Device numbers are the kernel's
encoding (``major << 20 | minor``), as exec events carry them.

Limit (said, not hidden): a genuine tool started with an attacker's environment
(``LD_PRELOAD``, ``BASH_ENV``, ``PERL5OPT``) runs attacker code under a trusted
inode; the exec record carries the watched variables (``ExecEvent.env``), the trust does
not look at them yet.
"""

from __future__ import annotations

import functools
import os
import stat
import time
from typing import TYPE_CHECKING, Callable, Iterable

from bastion.abi import kernel_dev
from bastion.enforce.muststop import REMOTE_FS, fs_magic
from bastion.detect.behavior.shells import ShellIdents, installed_shell_paths

if TYPE_CHECKING:
    from bastion.events import ExecEvent

def _interpreter_dir() -> tuple[str, ...]:
    """The directory of the Python Bastion itself runs on (e.g. a pyenv build under
    /root): its ``python3``/``pip`` are this host's genuine ones when the directory is
    root-only (the same :func:`secure_file` test as every other directory)."""
    import sys

    try:
        return (os.path.dirname(os.path.realpath(sys.executable, strict=True)),)
    except (OSError, ValueError):
        return ()


TRUST_DIRS: tuple[str, ...] = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin",
                               "/usr/local/sbin", "/usr/lib/apt", "/usr/lib/systemd",
                               "/usr/libexec", *_interpreter_dir())

# The programs that run the script named as their first argument (``sh /path``,
# ``python3 /path``): only these make an installed script's path a tool (s31 review: any
# installed program did, so ``tee /usr/bin/dpkg ~/.bashrc`` wrote as dpkg and
# ``find /usr/sbin/dkms -exec ...`` ran its children as dkms).
SCRIPT_SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"})
SCRIPT_INTERPRETERS = frozenset({"python", "python2", "python3", "perl", "ruby", "php", "node",
                                 "lua", "tclsh"})


@functools.lru_cache(maxsize=1024)
def norm_interp(name: str) -> str:
    """python3.11 -> python3; perl5.36 -> perl."""
    for pfx in ("python3", "python2", "python", "perl", "ruby", "php", "node", "lua"):
        if name.startswith(pfx) and (name == pfx or name[len(pfx):].replace(".", "").isdigit()):
            return pfx
    return name


def runs_scripts(name: str) -> bool:
    """Does the program installed as ``name`` run a script named as its first argument?"""
    return name in SCRIPT_SHELLS or norm_interp(name) in SCRIPT_INTERPRETERS


Ident = tuple[int, int]   # (kernel dev, ino)
AT_PATH_MAX = 4096        # paths whose identity ExeTrust keeps for a refresh period


PROC_SUPER_MAGIC = 0x9FA0
MAX_HOPS = 40             # symbolic links followed in one path, as the kernel's limit


def _bad_dir(d: str, st: os.stat_result, system: frozenset[int]) -> bool:
    """Is the directory ``d`` (``st``: its ``lstat``) no place only root can change:
    not root's, group/other-writable, on procfs, or off the system's own devices
    (``system``: ``st_dev`` of ``/`` and ``/usr``) on a network filesystem, FUSE or an
    automount (:data:`REMOTE_FS`)?  procfs (s31 review): its directories are root's and
    its magic links name what the *agent's* process has (``/proc/self/cwd/usr/bin/gcore``
    is the genuine gcore to the agent, whose cwd is ``/``, and ``./usr/bin/gcore`` to a
    user's interpreter; ``/dev/fd/N/...`` likewise); the others: a look-up below them can
    wait on a server for as long as it likes (a root file system on NFS, 9p or virtiofs
    is the system's, and passes: review 3).  Opened ``O_PATH`` without ``O_DIRECTORY``,
    which would trigger an automount point (review 3), and compared with the ``lstat``."""
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    try:
        fd = os.open(d, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        got = os.fstat(fd)
        magic = fs_magic(fd)
    except OSError:
        return True
    finally:
        os.close(fd)
    if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino) or magic in (-1, PROC_SUPER_MAGIC):
        return True
    return magic in REMOTE_FS and st.st_dev not in system


def secure_file(path: str) -> os.stat_result | None:
    """``lstat`` of the regular file ``path`` names when only root can have put it there,
    else None: the file owned by root and not group/other-writable, and every directory
    looked up in on the way to it, from ``/`` and through every symbolic link's target
    (:data:`MAX_HOPS` at most), owned by root, not group/other-writable and on no procfs,
    network, FUSE or automount filesystem (:func:`_bad_dir`).  The walk is this
    function's own, a component at a time from the top, and stops at the first directory
    that fails: a link a user can repoint anywhere on the way (s30 review: in a directory
    of theirs; s31 review: a root-owned link into a tree of theirs, ``/opt/app ->
    /srv/app/current``) or a directory whose look-ups a server answers is never entered.
    ``path``: absolute, in its normal form (no ``.``, ``..``, doubled slashes; s30: a
    leading ``//`` hung the walk of the first form)."""
    if not path.startswith("/") or path.startswith("//") or os.path.normpath(path) != path:
        return None
    todo = [c for c in reversed(path.split("/")) if c]
    cur, hops = "/", 0
    try:
        system = frozenset(os.stat(d).st_dev for d in ("/", "/usr"))
        if _bad_dir(cur, os.lstat(cur), system):
            return None
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                cur = os.path.dirname(cur)     # cur is real: a checked chain of directories
                continue
            nxt = os.path.join(cur, name)
            st = os.lstat(nxt)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_HOPS:
                    return None
                target = os.readlink(nxt)
                if target.startswith("/"):
                    cur = "/"
                todo.extend(c for c in reversed(target.split("/")) if c)
                continue
            if not todo:                       # the file itself
                if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or \
                        st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    return None
                return st
            if _bad_dir(nxt, st, system):
                return None
            cur = nxt
    except (OSError, ValueError):
        return None
    return None                                # the path named a directory


def _locate_here(path: str) -> Ident | None:
    st = secure_file(path)
    return (kernel_dev(st.st_dev), st.st_ino) if st is not None else None


def _mnt_ns_here() -> int | None:
    """The inode of the agent's own mount namespace (where :func:`secure_file` resolves
    paths); None when it cannot be read (then no script path is trusted)."""
    try:
        return os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return None


def _system_devs_here() -> frozenset[int]:
    """The kernel devices of this host's root file system and /usr (a separate /usr
    mount included): where root-installed toolchains live.  A udisks loop mount of an
    image (``/media/u/X``) or any other mount is another device."""
    out: set[int] = set()
    for d in ("/", "/usr"):
        try:
            out.add(kernel_dev(os.stat(d).st_dev))
        except OSError:
            continue
    return frozenset(out)


class _Located(dict[str, frozenset[Ident]]):
    """Tool name -> the identities located for it this period (``ExeTrust._by_name``),
    with its inverse (``has``: identity -> the located names that have it) and the name
    sets every name of which is located (``whole``: id -> the set and its names in
    iteration order).  :meth:`ExeTrust.is_tool` answers such a set with one look-up
    instead of one per name (up to 60: MASS_WRITERS; s24), the same first name.
    Emptying the map (a new period, a replay's newly learnt file) empties both."""

    def __init__(self) -> None:
        super().__init__()
        self.has: dict[Ident, set[str]] = {}
        self.whole: dict[int, tuple[frozenset[str] | tuple[str, ...], tuple[str, ...]]] = {}

    def clear(self) -> None:
        super().clear()
        self.has.clear()
        self.whole.clear()


class ExeTrust:
    """Tool name -> the identities of the root-installed files of that name."""

    def __init__(self, dirs: Iterable[str] = TRUST_DIRS, *, refresh_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic,
                 locate: Callable[[str], Ident | None] | None = None,
                 system_devs: Callable[[], frozenset[int]] | None = None,
                 mnt_ns: int | None = None) -> None:
        """``locate(path)``: the identity of the trusted file at the absolute ``path``
        (None: absent or not root-only); default :func:`secure_file` on this host.
        ``system_devs()``: the devices :meth:`installed` accepts files on (default: the
        root file system's and /usr's on this host).  A replay of another host's
        recording passes that host's table and devices.  ``mnt_ns``: the mount namespace
        ``locate`` resolves paths in (default: the agent's own); a script path is trusted
        only for a process that exec'd there."""
        self.dirs = tuple(dirs)
        self.refresh_s = refresh_s
        self._clock = clock
        self._locate = locate or _locate_here
        self._system_devs = system_devs or _system_devs_here
        self.mnt_ns = mnt_ns if mnt_ns is not None else _mnt_ns_here()
        self._devs: frozenset[int] | None = None          # installed(): cached per refresh
        self._by_name = _Located()
        self._at_path: dict[str, Ident | None] = {}   # installed(): path -> its identity
        self._stamp = clock()
        # the installed shells by inode and build id (s16-sig, :mod:`.shells`)
        self.shells = ShellIdents(lambda: installed_shell_paths(self.dirs), self._locate,
                                  refresh_s=refresh_s, clock=clock)
        # the last exec event asked about and its answer (exec_shell): the rules of the
        # pack share this trust, and several ask about the same exec (issue 16.3)
        self._exec_shell: tuple[object, str | None] | None = None

    def _fresh(self) -> None:
        now = self._clock()
        if now - self._stamp >= self.refresh_s:
            self._by_name.clear()
            self._at_path.clear()
            self._devs = None
            self._stamp = now

    def idents(self, name: str) -> frozenset[Ident]:
        """Identities of the trusted files installed as ``name``."""
        self._fresh()
        got = self._by_name.get(name)
        if got is None:
            out: set[Ident] = set()
            if name and "/" not in name and name not in (".", ".."):
                for d in self.dirs:
                    ident = self._locate(os.path.join(d, name))
                    if ident is not None:
                        out.add(ident)
            got = self._by_name[name] = frozenset(out)
            for ident in got:
                self._by_name.has.setdefault(ident, set()).add(name)
        return got

    def is_tool(self, ident: Ident, names: Iterable[str]) -> str | None:
        """The name among ``names`` whose trusted file is ``ident`` (None: none): the
        first in ``names``' order, each name located when first asked (a tool installed
        later in a trust period is not trusted before the period's end).  A frozenset or
        tuple (immutable: its order is fixed) whose names are all located this period is
        answered from the inverse map: the same first name, no look-up per name."""
        if ident == (0, 0):
            return None
        if isinstance(names, (frozenset, tuple)):
            self._fresh()
            located = self._by_name
            whole = located.whole.get(id(names))
            if whole is not None and whole[0] is names:
                has = located.has.get(ident)
                if not has:
                    return None
                for n in whole[1]:
                    if n in has:
                        return n
                return None
            for n in names:
                if ident in self.idents(n):
                    return str(n)
            if self._by_name is located and all(n in located for n in names):
                located.whole[id(names)] = (names, tuple(names))   # every name located
            return None
        for n in names:
            if ident in self.idents(n):
                return n
        return None

    def installed(self, path: str, ident: Ident) -> bool:
        """Is ``ident`` the root-only file at the absolute ``path``, wherever it lies (a
        toolchain's ``/usr/lib/gcc/.../collect2``, a root-installed rustup's cargo)?  The
        same test as the trust directories' files (:func:`secure_file`): only root can
        have put that inode there.  Looked up once per path and refresh (s17-compile)."""
        if ident == (0, 0) or not path.startswith("/"):
            return False
        self._fresh()
        if self._devs is None:
            self._devs = self._system_devs()
        if ident[0] not in self._devs:
            return False    # a loop-mounted image's uid-0 files, a user mount (s17 item 8)
        return self._ident_at(path) == ident

    def _ident_at(self, path: str) -> Ident | None:
        """``_locate(path)``, looked up once per path and refresh period (bounded: the
        map is emptied at ``AT_PATH_MAX`` paths)."""
        self._fresh()
        at = self._at_path
        if path in at:
            return at[path]
        if len(at) >= AT_PATH_MAX:
            at.clear()
        got = at[path] = self._locate(path)
        return got

    def root_only(self, path: str, mnt_ns: int) -> bool:
        """Is the file at the absolute ``path`` root-only (:func:`secure_file`) on a
        system device (as :meth:`installed`), for a process that exec'd in the mount
        namespace ``mnt_ns`` (the path names that file only in :attr:`mnt_ns`)?"""
        if not path.startswith("/") or not mnt_ns or mnt_ns != self.mnt_ns:
            return False
        ident = self._ident_at(path)
        return ident is not None and self.installed(path, ident)

    def shell(self, exe: str, ident: Ident, pid: int) -> str | None:
        """The shell family (an option table of :mod:`.shellargs`) of process ``pid``
        running ``exe`` (the file ``ident``): by inode, name, then ELF build id
        (:class:`.shells.ShellIdents`); None: no shell."""
        return self.shells.kind(exe, ident, pid)

    def exec_shell(self, ev: ExecEvent) -> str | None:
        """:meth:`shell` of the process of the exec event ``ev``, asked once per event: the
        rules that ask about the same event share the answer (a non-shell's look-up opens
        ``/proc/PID/exe``; issue 16.3: ~2 such rules per exec), and agree on it.  The event
        is held with its answer, so its identity is not reused while the entry lives."""
        last = self._exec_shell
        if last is not None and last[0] is ev:
            return last[1]
        kind = self.shell(ev.proc.exe, (ev.exe_dev, ev.exe_ino), ev.proc.pid)
        self._exec_shell = (ev, kind)
        return kind

    def script_tool(self, exe: str, exe_ident: Ident, argv: tuple[str, ...],
                    names: Iterable[str], mnt_ns: int) -> str | None:
        """An interpreter (a shell or script interpreter by name, :func:`runs_scripts`, and
        by inode the trusted system file of that name) running ``argv[1]``, an absolute
        path to the trusted file of one of ``names``, in a
        process that exec'd in the mount namespace ``mnt_ns``: the path names that file
        only where the namespace is the one it is resolved in (:attr:`mnt_ns`)."""
        if len(argv) < 2 or not argv[1].startswith("/") or not mnt_ns or mnt_ns != self.mnt_ns:
            return None
        name = os.path.basename(exe)
        if not runs_scripts(name) or self.is_tool(exe_ident, [name]) is None:
            return None
        if name == "busybox" and os.path.basename(argv[0]) not in ("sh", "ash"):
            return None     # argv[1] names an applet (busybox /usr/bin/dpkg: s31 review 3)
        ident = self._ident_at(argv[1])
        return self.is_tool(ident, names) if ident is not None else None


__all__ = ["ExeTrust", "TRUST_DIRS", "secure_file", "Ident"]
