"""The sensitive read set (issue 15.1): which inodes' read-opens the kernel reports.

Read-opens are most of all opens, so the tracepoint sensor reports one only when
the opened inode, or one of its ancestor directories (up to ``abi.SENS_DEPTH``
levels), is a key of the ``sens_inodes`` map (``bpf/lib/sensitive.h``): the
filtering is in the kernel, the cost of every other open is a few hash lookups.
The key is (device, inode), so a hard link to ``/etc/shadow`` read under another
name is still ``credentials``.  Other processes' ``/proc/<pid>/mem`` and
``environ`` are recognised in the kernel by name (class ``proc-mem``).

:func:`resolve` turns patterns into map entries.  It is pure over its look-ups
(``homes``, ``glob``, ``stat``), so tests give it a fake file system; ``~/`` is
each user home (root's and every home of a login user that exists).  The set is
resolved again every ``refresh_s`` by the sensor: ``passwd`` replaces
``/etc/shadow`` by rename (a new inode), a user creates ``~/.aws`` later.

Left out on purpose: ``/root`` as a whole (the Python Bastion runs on may live
there; every import would be an event), only its secrets are in the set.
"""

from __future__ import annotations

import glob as _glob
import os
import pwd
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from bastion import abi
from bastion.errors import ConfigError, Location

C = abi.SensClass

#: (pattern, class): ``~/`` = every user home; a directory covers its subtree.
DEFAULT_SENSITIVE: tuple[tuple[str, abi.SensClass], ...] = (
    ("/etc/shadow", C.CREDENTIALS), ("/etc/shadow-", C.CREDENTIALS),
    ("/etc/gshadow", C.CREDENTIALS), ("/etc/gshadow-", C.CREDENTIALS),
    ("/etc/security/opasswd", C.CREDENTIALS), ("/etc/krb5.keytab", C.CREDENTIALS),
    ("/var/lib/sss/db", C.CREDENTIALS), ("/etc/libvirt/secrets", C.CREDENTIALS),
    ("/etc/sudoers", C.AUTH_CONFIG), ("/etc/sudoers.d", C.AUTH_CONFIG),
    ("/etc/ssh/ssh_host_*_key", C.HOST_KEY),
    ("~/.ssh", C.USER_KEYS), ("~/.gnupg", C.USER_KEYS),
    ("~/.aws", C.CLOUD), ("~/.config/gcloud", C.CLOUD), ("~/.kube", C.CLOUD),
    ("~/.docker/config.json", C.CLOUD), ("~/.azure", C.CLOUD),
    ("/etc/kubernetes/admin.conf", C.CLOUD),
    ("~/.mozilla/firefox/*/logins.json", C.BROWSER), ("~/.mozilla/firefox/*/key4.db", C.BROWSER),
    ("~/.mozilla/firefox/*/cookies.sqlite", C.BROWSER),
    ("~/.config/google-chrome/*/Login Data", C.BROWSER),
    ("~/.config/google-chrome/*/Cookies", C.BROWSER),
    ("~/.config/chromium/*/Login Data", C.BROWSER), ("~/.config/chromium/*/Cookies", C.BROWSER),
    ("~/.local/share/keyrings", C.BROWSER),
    ("~/.bash_history", C.HISTORY), ("~/.zsh_history", C.HISTORY), ("~/.netrc", C.HISTORY),
    ("~/.pgpass", C.HISTORY), ("~/.git-credentials", C.HISTORY), ("~/.my.cnf", C.HISTORY),
)


@dataclass(frozen=True)
class SensEntry:
    """One key of ``sens_inodes``: the file (or directory) ``path`` resolved to (dev, ino)."""

    sens_id: int          # 1-based, in pattern order
    path: str
    pattern: str
    sens_class: abi.SensClass
    dev: int              # kernel encoding (abi.kernel_dev)
    ino: int


def login_homes() -> list[str]:
    """Root's home and the homes of login users (uid >= 1000) that exist."""
    out = ["/root"]
    for pw in pwd.getpwall():
        if (pw.pw_uid == 0 or pw.pw_uid >= 1000) and pw.pw_dir.startswith("/") \
                and pw.pw_dir not in ("/", "/nonexistent") and os.path.isdir(pw.pw_dir):
            out.append(pw.pw_dir)
    return list(dict.fromkeys(out))


def _stat_ident(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return abi.kernel_dev(st.st_dev), st.st_ino


def check_patterns(patterns: Sequence[str], source: str = "policy") -> None:
    """A pattern must be absolute or start with ``~/``; ConfigError names the bad one."""
    for i, p in enumerate(patterns):
        if not isinstance(p, str) or not (p.startswith("/") or p.startswith("~/")) or "\0" in p:
            raise ConfigError(f"sensitive path #{i + 1} {p!r} must be absolute or start with ~/",
                              location=Location(source))


def patterns_for(defaults: bool, extra: Sequence[str],
                 source: str = "policy") -> tuple[tuple[str, abi.SensClass], ...]:
    """The policy's set: the shipped default (``events.sensitive_defaults``) plus
    ``events.sensitive`` paths as class ``custom``."""
    check_patterns(extra, source)
    return (*(DEFAULT_SENSITIVE if defaults else ()), *((p, C.CUSTOM) for p in extra))


def resolve(patterns: Iterable[tuple[str, abi.SensClass]], *,
            homes: Callable[[], Sequence[str]] = login_homes,
            glob: Callable[[str], Sequence[str]] = _glob.glob,
            stat: Callable[[str], tuple[int, int] | None] = _stat_ident,
            limit: int = abi.SENS_MAX) -> list[SensEntry]:
    """The map entries of ``patterns``: each file or directory that exists, once per
    (dev, ino) (the first pattern naming it wins), at most ``limit``."""
    out: list[SensEntry] = []
    seen: set[tuple[int, int]] = set()
    home_list: Sequence[str] | None = None
    for pattern, cls in patterns:
        if pattern.startswith("~/"):
            if home_list is None:
                home_list = homes()
            paths = [h.rstrip("/") + pattern[1:] for h in home_list]
        else:
            paths = [pattern]
        for p in paths:
            for hit in sorted(glob(p)) if any(c in p for c in "*?[") else [p]:
                ident = stat(hit)
                if ident is None or ident in seen or ident[1] == 0:
                    continue
                if len(out) >= limit:
                    return out
                seen.add(ident)
                out.append(SensEntry(len(out) + 1, hit, pattern, cls, ident[0], ident[1]))
    return out


def entry_bytes(e: SensEntry) -> tuple[bytes, bytes]:
    """(key, value) of ``sens_inodes`` for ``e``."""
    return (bytes(abi.InodeKey(ino=e.ino, dev=e.dev)),
            bytes(abi.SensVal(sens_class=int(e.sens_class), sens_id=e.sens_id)))


__all__ = ["DEFAULT_SENSITIVE", "SensEntry", "resolve", "patterns_for", "login_homes", "entry_bytes",
           "check_patterns"]
