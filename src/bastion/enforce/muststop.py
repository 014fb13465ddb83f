"""The must-stop objects of issue 15: one list for both tiers.

The compat tier's fanotify gate (:mod:`bastion.enforce.provgate`) marks the
``persistence``, ``credential``, ``profile-dir`` and ``log`` objects that exist (a
log: only an open for writing without ``O_APPEND``, or with ``O_TRUNC``, is
refused; fanotify sees no truncate, unlink or rename), again on the agent's
maintenance tick (objects made since); the lsm
tier's in-hook gate (:mod:`bastion.enforce.provgate_lsm`) enters the same
objects in its kernel maps, and also:

* the *names* of the file objects in their directories, so a file that does not
  exist yet (a first ``/etc/ld.so.preload``, ``/etc/rc.local``, a profile in a
  home directory) cannot be created, linked or renamed into place;
* the ``log`` objects (``/var/log``, shell histories): wiping them (truncate,
  unlink, rename away, an overwriting open) is refused;
* the security tools (:data:`DEFAULT_SECURITY_TOOLS`, by executable name, plus
  the agent and its guardian): a harmful signal to them is refused.

The ``security-config`` kind (s23: :data:`DEFAULT_SECURITY_CONFIG`, firewall and
logging configs) is treated as ``persistence`` on both tiers (writes refused, reads
allowed); on the lsm tier the firewall itself is a class too (a netfilter change,
no object: ``bpf/lsm_provgate.bpf.c``).

All of it only for an actor whose tree has untrusted provenance (the ``prov``
map); everyone else is not looked at.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import glob
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from bastion.errors import ConfigError, Location
from bastion.policy.compile import kernel_dev

Kind = Literal["persistence", "credential", "profile-dir", "log", "security-config"]
KINDS: Final = ("persistence", "credential", "profile-dir", "log", "security-config")
# the fanotify gate's kinds: a log is marked too (s16-gate: an overwriting open refused)
COMPAT_KINDS: Final = ("persistence", "credential", "profile-dir", "log", "security-config")

# "profile-dir": a home directory, marked itself only (no subdirectories): a write open of
# one of these names in it is a persistence write (a profile created where none was)
PROFILE_NAMES: Final = frozenset({
    ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".shrc", ".kshrc",
    ".zshrc", ".zprofile", ".zlogin", ".zlogout", ".zshenv", ".cshrc", ".tcshrc", ".login",
    ".logout", ".inputrc", ".xinitrc", ".xprofile", ".xsession",
    # a terminal multiplexer's config runs commands when the next server starts or a
    # session is created (tmux: run-shell, default-command, hooks; screen: exec, screen)
    ".tmux.conf", ".screenrc"})
# shell histories in a home directory (lsm tier: log objects by name)
HISTORY_NAMES: Final = frozenset({
    ".bash_history", ".zsh_history", ".sh_history", ".ash_history", ".history",
    ".python_history", ".mysql_history", ".psql_history", ".lesshst", ".viminfo"})


@dataclass(frozen=True)
class GateObject:
    path: str
    kind: Kind


# The must-stop objects of issue 15 (globs; a path that does not exist is not marked by
# the fanotify gate: fanotify marks inodes, so a file created later in an unmarked
# directory, such as a first /etc/ld.so.preload, is not seen on that tier; the lsm tier
# enters the name in its directory, see names_of).
DEFAULT_PERSISTENCE: Final = (
    "/etc/crontab", "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly",
    "/etc/cron.monthly", "/var/spool/cron", "/var/spool/at", "/var/spool/atjobs", "/etc/anacrontab",
    "/etc/systemd/system", "/etc/systemd/user", "/usr/lib/systemd/system", "/lib/systemd/system",
    "/etc/profile", "/etc/profile.d", "/etc/bash.bashrc", "/etc/bash.bash_logout",
    "/etc/environment", "/etc/zsh", "/root/.bashrc", "/root/.bash_profile", "/root/.profile",
    "/root/.bash_login", "/root/.bash_logout", "/root/.zshrc", "/root/.zprofile",
    "/home/*/.bashrc", "/home/*/.bash_profile", "/home/*/.profile", "/home/*/.bash_login",
    "/home/*/.bash_logout", "/home/*/.zshrc",
    "/etc/tmux.conf", "/etc/screenrc", "/root/.tmux.conf", "/root/.screenrc",
    "/home/*/.tmux.conf", "/home/*/.screenrc", "/root/.config/tmux", "/home/*/.config/tmux",
    "/etc/sudoers", "/etc/sudoers.d", "/etc/pam.d", "/etc/security/pam_env.conf",
    "/etc/ld.so.preload", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/rc.local", "/etc/init.d", "/etc/rc0.d", "/etc/rc1.d", "/etc/rc2.d", "/etc/rc3.d",
    "/etc/rc4.d", "/etc/rc5.d", "/etc/rc6.d", "/etc/rcS.d",
    "/etc/udev/rules.d", "/etc/modules-load.d", "/etc/modules", "/etc/modprobe.d",
    "/etc/xdg/autostart",
)
DEFAULT_PROFILE_DIRS: Final = ("/root", "/home/*")
DEFAULT_CREDENTIAL: Final = (
    "/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/security/opasswd",
    "/root/.ssh", "/home/*/.ssh", "/etc/ssh/ssh_host_*_key",
    "/root/.aws", "/home/*/.aws", "/root/.kube", "/home/*/.kube", "/etc/kubernetes/admin.conf",
    "/root/.config/gcloud", "/home/*/.config/gcloud", "/root/.azure", "/home/*/.azure",
    "/root/.docker/config.json", "/home/*/.docker/config.json",
)
DEFAULT_LOG: Final = (
    "/var/log", "/root/.bash_history", "/root/.zsh_history", "/home/*/.bash_history",
    "/home/*/.zsh_history",
    # s23: the mail spools are logs too (`echo 0> /var/spool/mail/root`, T1070.002): an
    # overwriting open, a truncate, an unlink is wiping; delivery appends
    "/var/spool/mail", "/var/mail",
)
# s23: security configuration (T1562.004, T1562.006): the firewall's and the logging's
# configs, refused as persistence is (a write open, a truncate, a chmod, every name
# change in them, a rename over one); reading stays allowed.  Bastion's own config is
# tamper-protected already (enforce/protect).
DEFAULT_SECURITY_CONFIG: Final = (
    "/etc/default/ufw", "/etc/ufw", "/etc/nftables.conf", "/etc/iptables", "/etc/firewalld",
    "/etc/rsyslog.conf", "/etc/rsyslog.d", "/etc/syslog-ng", "/etc/systemd/journald.conf",
    "/etc/systemd/journald.conf.d", "/etc/audit", "/etc/audisp",
)
# Security tools a tainted tree may not stop (executable basenames; lsm tier).
DEFAULT_SECURITY_TOOLS: Final = frozenset({
    "auditd", "audispd", "rsyslogd", "syslog-ng", "systemd-journald", "syslogd", "klogd"})

_DEFAULTS: Final[tuple[tuple[Kind, tuple[str, ...]], ...]] = (
    ("persistence", DEFAULT_PERSISTENCE), ("credential", DEFAULT_CREDENTIAL),
    ("profile-dir", DEFAULT_PROFILE_DIRS), ("log", DEFAULT_LOG),
    ("security-config", DEFAULT_SECURITY_CONFIG))


def default_objects(root: str = "", kinds: tuple[str, ...] = COMPAT_KINDS) -> list[GateObject]:
    """The default must-stop objects of ``kinds`` that exist under ``root`` (a prefix
    such as ``/proc/PID/root`` to mark another mount namespace's view; "" = this one)."""
    out: list[GateObject] = []
    for kind, pats in _DEFAULTS:
        if kind not in kinds:
            continue
        for pat in pats:
            out.extend(GateObject(p, kind) for p in sorted(glob.glob(root + pat)))
    return out


def default_names(root: str = "") -> list[tuple[str, str, Kind]]:
    """(directory, name, kind) of every default file object whose directory exists, the
    file itself or not (the lsm tier refuses creating it), and of the profile and
    history names in every profile directory."""
    out: list[tuple[str, str, Kind]] = []
    for kind, pats in _DEFAULTS:
        for pat in pats:
            if kind == "profile-dir":
                for d in sorted(glob.glob(root + pat)):
                    out.extend((d, n, "persistence") for n in sorted(PROFILE_NAMES))
                    out.extend((d, n, "log") for n in sorted(HISTORY_NAMES))
                continue
            parent, name = os.path.split(pat)
            if glob.has_magic(name):
                continue
            out.extend((d, name, kind) for d in sorted(glob.glob(root + parent)))
    return out


# When one inode is reached as two objects (a hard link, or a path through a link),
# the strictest kind is kept: credential (any open) > persistence (writes) > log.
STRICTNESS: Final[dict[str, int]] = {"log": 1, "persistence": 2, "security-config": 2,
                                     "credential": 3, "profile-dir": 0}


def redirected(path: str) -> str | None:
    """Why ``path`` cannot be trusted to name its object: a symbolic link on the way
    that a user other than root owns or placed (``ln -s ~/.bashrc ~/.zsh_history``
    would make a profile a log object, ``ln -s /etc/cron.d ~/.bash_history`` a
    persistence directory a log one); None when every link on it is root's own, in
    a directory root owns (``/lib`` -> ``usr/lib``)."""
    cur = "/"
    rest = [c for c in os.path.normpath(path).split("/") if c]
    hops = 0
    while rest:
        cur = os.path.join(cur, rest.pop(0))
        try:
            st = os.lstat(cur)
        except OSError:
            return None          # absent: the caller's stat says so
        if not stat.S_ISLNK(st.st_mode):
            continue
        hops += 1
        parent = os.path.dirname(cur)
        try:
            pst = os.lstat(parent)
        except OSError:
            return f"{cur}: its directory is gone"
        if st.st_uid != 0 or pst.st_uid != 0 or hops > 40:
            return f"{cur} is a symbolic link a user controls"
        target = os.readlink(cur)
        base = parent if not target.startswith("/") else "/"
        cur = "/"
        rest = [c for c in os.path.normpath(os.path.join(base, target)).split("/") if c] + rest
    return None


def open_object(path: str, root: str = "") -> int:
    """An ``O_PATH`` fd on the object ``path`` names, resolved one component at a time
    from ``/`` without following a link a user controls (s16-fixgate: a path checked
    and then opened again can be swapped for a link between the two; everything after
    is read through this one fd).  A link root owns in a directory root owns is
    followed (``/lib`` -> ``usr/lib``).  Raises :class:`OSError` (``ELOOP`` for a
    user's link on the way).

    ``root`` (s18-gate): resolve inside that directory as ``/`` (another mount
    namespace's view, ``/proc/PID/root/...``): an absolute link target and ``..``
    stay inside it.  Without it a ``/proc/PID/root`` prefix is itself a link whose
    text is ``/``: the walk went back to this namespace's root."""
    return open_object_at(path, root)[0]


def open_object_at(path: str, root: str = "") -> tuple[int, str]:
    """:func:`open_object` and the path it resolved to (links followed, relative to
    ``root``: no link on it as walked)."""
    top = os.open(root or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    tst = os.fstat(top)
    top_key = (tst.st_dev, tst.st_ino)
    fd = -1
    try:
        fd = os.dup(top)
        rest = [c for c in os.path.normpath(path).split("/") if c]
        hops, cur = 0, "/"
        while rest:
            name = rest.pop(0)
            if name == ".":
                continue
            if name == "..":
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == top_key:
                    continue               # ".." of the root is the root
                cur = os.path.dirname(cur)
                nxt = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
                continue
            nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            st = os.fstat(nxt)
            if stat.S_ISLNK(st.st_mode):
                os.close(nxt)
                hops += 1
                pst = os.fstat(fd)
                if st.st_uid != 0 or pst.st_uid != 0 or hops > 40:
                    raise OSError(errno.ELOOP, f"{os.path.join(cur, name)} is a symbolic "
                                  "link a user controls", path)
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    cur = "/"
                    os.close(fd)
                    fd = os.dup(top)
                rest = [c for c in target.split("/") if c and c != "."] + rest
                continue
            cur = os.path.join(cur, name)
            os.close(fd)
            fd = nxt
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    finally:
        os.close(top)
    return fd, cur


def _walk(top: str, fd: int, top_st: os.stat_result, max_dirs: int
          ) -> list[tuple[str, tuple[int, int]]]:
    """``top`` (open as ``fd``) and its subdirectories on its filesystem, breadth
    first, every directory opened from its parent's fd without following a link (a
    directory swapped for a link during the walk is not entered: the walk never
    leaves the tree).  At most ``max_dirs + 1`` (the caller keeps ``max_dirs``)."""
    out = [(top, (kernel_dev(top_st.st_dev), top_st.st_ino))]
    queue: collections.deque[tuple[str, int]] = collections.deque(
        [(top, os.dup(fd))])
    try:
        while queue:
            root, dfd = queue.popleft()
            try:
                rfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dfd)
            except OSError:
                os.close(dfd)
                continue
            try:
                with os.scandir(rfd) as it:
                    names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
                for d in names:
                    if len(out) > max_dirs:
                        break
                    try:
                        cfd = os.open(d, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY
                                      | os.O_CLOEXEC, dir_fd=rfd)
                    except OSError:
                        continue       # gone, or a link now: not entered
                    st = os.fstat(cfd)
                    if st.st_dev != top_st.st_dev or not stat.S_ISDIR(st.st_mode):
                        os.close(cfd)
                        continue
                    out.append((os.path.join(root, d), (kernel_dev(st.st_dev), st.st_ino)))
                    if len(out) > max_dirs:
                        os.close(cfd)
                        break
                    queue.append((os.path.join(root, d), cfd))
            finally:
                os.close(rfd)
                os.close(dfd)
            if len(out) > max_dirs:
                break
    finally:
        for _p, qfd in queue:
            os.close(qfd)
    return out


# Filesystems a pass does not walk (s16-fixgate): a walk of a network or FUSE tree can
# stall on its server (and a FUSE server is a user's program answering the agent).
REMOTE_FS: Final[dict[int, str]] = {
    0x6969: "nfs", 0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x517B: "smb", 0x65735546: "fuse",
    0x0187: "autofs", 0x564C: "ncp", 0x6B414653: "afs", 0x5346414F: "afs", 0x00C36400: "ceph",
    0x47504653: "gpfs", 0x0BD00BD0: "lustre", 0x01021997: "9p"}


def fs_magic(fd: int) -> int:
    """``fstatfs(fd).f_type``; -1 when unknown."""
    buf = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    if int(libc.fstatfs(fd, buf)) < 0:
        return -1
    return int.from_bytes(buf.raw[:ctypes.sizeof(ctypes.c_long)], "little", signed=True) \
        & 0xFFFFFFFF


@dataclass(frozen=True)
class Entry:
    """One inode a gate enters: a file object, or a directory of a directory object
    (``is_dir``: its children are objects), or a profile directory itself."""
    kind: Kind
    path: str
    key: tuple[int, int]       # (kernel dev, ino)
    is_dir: bool


def expand(objects: Sequence[GateObject], *, max_dirs: int, per_object_dirs: int,
           root: str = "") -> tuple[list[Entry], list[str], list[str]]:
    """The inodes of ``objects``: (entries, problems, over budget).

    Root's objects are walked first; one directory object gets at most
    ``per_object_dirs`` of the ``max_dirs`` budget, breadth first (the levels
    nearest its top).  A tree over its share is entered in part and named in the
    third list, never refused whole: an unprivileged user who fills ``~/.ssh`` with
    directories must not turn a gate off for the host.  A path through a link a
    user controls is not entered (a problem).  An inode reached twice keeps its
    strictest kind (:data:`STRICTNESS`).

    ``root``: the objects' paths are inside that directory (:func:`open_object`); the
    entries' paths are ``root`` and the path the walk resolved (no link on it)."""
    problems: list[str] = []
    found: list[tuple[GateObject, os.stat_result, int]] = []
    for o in objects:
        if o.kind not in KINDS:
            raise ConfigError(f"provenance object kind {o.kind!r} is not one of "
                              f"{', '.join(KINDS)}", location=Location(o.path))
        try:     # one open, no user's link followed; all else through the fd
            fd, resolved = open_object_at(o.path, root)
            if root:
                o = GateObject(root + resolved, o.kind)
        except OSError as exc:
            problems.append(f"{o.path}: {exc.strerror}: not entered")
            continue
        remote = REMOTE_FS.get(fs_magic(fd))
        if remote is not None:
            os.close(fd)
            problems.append(f"{o.path}: on a {remote} filesystem: not entered (a network or "
                            "FUSE tree is not walked)")
            continue
        found.append((o, os.fstat(fd), fd))
    found.sort(key=lambda f: f[1].st_uid != 0)
    try:
        return _expand(found, problems, max_dirs=max_dirs, per_object_dirs=per_object_dirs)
    finally:
        for _o, _st, fd in found:
            os.close(fd)


def _expand(found: list[tuple[GateObject, os.stat_result, int]], problems: list[str], *,
            max_dirs: int, per_object_dirs: int) -> tuple[list[Entry], list[str], list[str]]:
    over: list[str] = []
    chosen: dict[tuple[int, int], Entry] = {}

    def put(e: Entry) -> None:
        prev = chosen.get(e.key)
        if prev is None or STRICTNESS[e.kind] > STRICTNESS[prev.kind]:
            chosen[e.key] = e
    ndirs = 0
    for o, st, fd in found:
        key = (kernel_dev(st.st_dev), st.st_ino)
        if o.kind == "profile-dir":
            if not stat.S_ISDIR(st.st_mode):
                raise ConfigError("a profile-dir object must be a directory",
                                  location=Location(o.path))
            put(Entry(o.kind, o.path, key, True))
            continue
        if not stat.S_ISDIR(st.st_mode):
            put(Entry(o.kind, o.path, key, False))
            continue
        share = max(1, min(per_object_dirs, max_dirs - ndirs))
        tree = _walk(o.path, fd, st, share)
        if len(tree) > share:
            tree = tree[:share]
            over.append(f"{o.path}: more than {share} directories: the {share} nearest its "
                        f"top are entered, files deeper are not refused (alerted after the act)")
        for dpath, dkey in tree:
            ndirs += 1
            put(Entry(o.kind, dpath, dkey, True))
    return list(chosen.values()), problems, over


__all__ = ["COMPAT_KINDS", "Entry", "STRICTNESS", "expand", "open_object", "open_object_at", "redirected", "DEFAULT_CREDENTIAL", "DEFAULT_LOG", "DEFAULT_PERSISTENCE",
           "DEFAULT_PROFILE_DIRS", "DEFAULT_SECURITY_CONFIG", "DEFAULT_SECURITY_TOOLS", "GateObject", "HISTORY_NAMES",
           "KINDS", "Kind", "PROFILE_NAMES", "default_names", "default_objects"]
