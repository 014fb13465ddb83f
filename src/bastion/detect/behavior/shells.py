"""Which executables are shells: by inode and ELF identity, not by name (s16-sig).

The rules that read a shell's command line (:mod:`.shellargs`: relayed_shell,
piped_payload, pty_socket_shell) asked ``base(exe) in SHELLS``: ``rbash``, ``bash5``
got the default option table and a renamed copy of bash (``/tmp/x/notashell``) was no
shell at all, an evasion.  A shell is now found, in this order:

1. by the (device, inode) of its executable, against the installed shells: every
   name of a shell family (``bash``, ``rbash``, ``bash5``, ``ksh93``, ``mksh-static``...)
   in the trusted system directories (:data:`.trust.TRUST_DIRS`) and every entry of
   ``/etc/shells`` of a known family, each resolved by :func:`.trust.secure_file` (a
   root-only file below root-only directories: no path an attacker controls is
   followed); a hard link or a symlink of an installed shell is that shell;
2. by its name's family (``rbash`` -> bash, ``bash5`` -> bash, ``ksh93`` -> ksh): a
   ``/tmp/sh`` is read as a shell, as before;
3. by its ELF build id (the ``NT_GNU_BUILD_ID`` note the linker writes: a copy, a
   copy with bytes appended, has the original's): read from ``/proc/PID/exe`` (the
   file the process runs, not a path), checked against the event's (device, inode),
   cached per (device, inode, size, mtime, ctime) so a file rewritten in place is
   read again.  Cost: one open + fstat per exec asked about whose executable is
   neither an installed shell nor named like one, and one read of the ELF headers and
   notes (a few KB) per new file.

Limits (said, not hidden): a copy whose build-id note was edited or stripped, or a
different build of a shell (a static bash downloaded), is found by name only; a
process gone before the look-up is found by name only.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections import OrderedDict
from typing import Callable, Iterable

from bastion.abi import kernel_dev

Ident = tuple[int, int]   # (kernel dev, ino)

# the families with an option table (shellargs) and the rules' SHELLS
FAMILIES = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "ash", "csh", "tcsh",
                      "busybox"})
_ALIASES = {"rbash": "bash", "rksh": "ksh", "rzsh": "zsh", "pdksh": "ksh", "oksh": "ksh",
            "lksh": "mksh", "ksh93": "ksh", "rksh93": "ksh"}
_VERSIONED = re.compile(r"^([a-z]+?)[-._]?(?:\d[\d.]*|static)$")

NT_GNU_BUILD_ID = 3
PT_NOTE = 4
_NOTE_MAX = 1 << 16
_CACHE_MAX = 4096


def shell_family(name: str) -> str | None:
    """The shell family of an executable's base name: ``bash``, ``rbash`` and
    ``bash5`` are bash; ``mksh-static`` is mksh; None: not a shell's name."""
    if name in FAMILIES:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    m = _VERSIONED.match(name)
    if m is not None:
        stem = m.group(1)
        return stem if stem in FAMILIES else _ALIASES.get(stem)
    return None


def elf_build_id(fd: int) -> bytes | None:
    """The GNU build id of the ELF file open at ``fd`` (64-bit little-endian, the
    program headers' PT_NOTE segments); None when it has none or is not such a file."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    if phentsize < 56 or not 0 < phnum <= 64:
        return None
    table = os.pread(fd, phentsize * phnum, phoff)
    for i in range(min(phnum, len(table) // phentsize)):
        p_type, = struct.unpack_from("<I", table, i * phentsize)
        if p_type != PT_NOTE:
            continue
        off, = struct.unpack_from("<Q", table, i * phentsize + 8)
        size, = struct.unpack_from("<Q", table, i * phentsize + 32)
        notes = os.pread(fd, min(size, _NOTE_MAX), off)
        at = 0
        while at + 12 <= len(notes):
            namesz, descsz, ntype = struct.unpack_from("<III", notes, at)
            name_at = at + 12
            desc_at = name_at + ((namesz + 3) & ~3)
            end = desc_at + ((descsz + 3) & ~3)
            if end > len(notes):
                break
            if ntype == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == b"GNU\0" \
                    and descsz:
                return bytes(notes[desc_at:desc_at + descsz])
            at = end
    return None


def _path_build_id(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return elf_build_id(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


FileKey = tuple[int, int, int, int, int]   # dev, ino, size, mtime_ns, ctime_ns


def proc_exe(pid: int, ident: Ident) -> tuple[FileKey, int] | None:
    """The executable process ``pid`` runs, when it is still the file ``ident``: its key
    (identity and change times) and a descriptor of it (the caller closes it); None
    when the process is gone or runs another file now."""
    try:
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if (kernel_dev(st.st_dev), st.st_ino) != ident:
        os.close(fd)
        return None
    return (ident[0], ident[1], st.st_size, st.st_mtime_ns, st.st_ctime_ns), fd


def installed_shell_paths(dirs: Iterable[str], etc_shells: str = "/etc/shells") -> list[str]:
    """Every name of a shell family in ``dirs`` and every absolute entry of
    ``etc_shells`` (the file itself must be root-only, :func:`.trust.secure_file`)."""
    from bastion.detect.behavior.trust import secure_file   # trust.py imports this module

    out: list[str] = []
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        out += [os.path.join(d, n) for n in sorted(names) if shell_family(n) is not None]
    if secure_file(etc_shells) is not None:
        try:
            with open(etc_shells, encoding="utf-8", errors="replace") as f:
                for line in f:
                    p = line.split("#", 1)[0].strip()
                    if p.startswith("/"):
                        out.append(p)
        except OSError:
            pass
    return out


class ShellIdents:
    """The installed shells by (device, inode) and by build id, refreshed every
    ``refresh_s`` (an upgrade replaces the inodes)."""

    def __init__(self, paths: Callable[[], Iterable[str]], locate: Callable[[str], Ident | None],
                 *, build_id_at: Callable[[str], bytes | None] = _path_build_id,
                 open_exe: Callable[[int, Ident], tuple[FileKey, int] | None] = proc_exe,
                 refresh_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``paths()``: candidate paths of installed shells; ``locate(path)``: the
        identity of the root-only file there (None: absent, not root-only)."""
        self._paths, self._locate = paths, locate
        self._build_id_at, self._open_exe = build_id_at, open_exe
        self.refresh_s, self._clock = refresh_s, clock
        self._stamp = -refresh_s - 1.0
        self._by_ident: dict[Ident, str] = {}
        self._by_build_id: dict[bytes, str] = {}
        self._seen: OrderedDict[FileKey, str | None] = OrderedDict()

    def _fresh(self) -> None:
        now = self._clock()
        if now - self._stamp < self.refresh_s:
            return
        self._stamp = now
        by_ident: dict[Ident, str] = {}
        by_bid: dict[bytes, str] = {}
        for p in self._paths():
            ident = self._locate(p)
            if ident is None:
                continue
            try:
                real = os.path.realpath(p)
            except (OSError, ValueError):
                real = p
            fam = shell_family(os.path.basename(real)) or shell_family(os.path.basename(p))
            if fam is None:
                continue              # /etc/shells lists tmux, git-shell: no shell family
            by_ident.setdefault(ident, fam)
            bid = self._build_id_at(real)
            if bid:
                by_bid.setdefault(bid, fam)
        self._by_ident, self._by_build_id = by_ident, by_bid
        self._seen.clear()

    def installed(self) -> dict[Ident, str]:
        self._fresh()
        return dict(self._by_ident)

    def kind(self, exe: str, ident: Ident, pid: int) -> str | None:
        """The shell family of process ``pid`` running ``exe`` (the file ``ident``), or
        None when it is no shell."""
        self._fresh()
        fam = self._by_ident.get(ident)
        if fam is not None:
            return fam
        fam = shell_family(os.path.basename(exe))
        if fam is not None or ident == (0, 0) or pid <= 0 or not self._by_build_id:
            return fam
        got = self._open_exe(pid, ident)
        if got is None:
            return None
        key, fd = got
        try:
            if key in self._seen:
                self._seen.move_to_end(key)
                return self._seen[key]
            try:
                bid = elf_build_id(fd)
            except OSError:
                return None          # unreadable now: not cached, asked again next time
        finally:
            os.close(fd)
        fam = self._by_build_id.get(bid) if bid else None
        self._seen[key] = fam
        if len(self._seen) > _CACHE_MAX:
            self._seen.popitem(last=False)
        return fam


__all__ = ["ShellIdents", "shell_family", "elf_build_id", "proc_exe",
           "installed_shell_paths", "FAMILIES"]
