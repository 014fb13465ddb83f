"""Anti-forensic secure deletion (T1070.004, issue 15, s17-wipe).

``shred -u F``, ``shred -zun 7 F``, ``shred --remove=wipesync F``, ``wipe -rf D``,
``srm F``, ``scrub -r F``, ``sfill D``, a renamed copy of shred, ``dd
if=/dev/urandom of=F conv=notrunc && rm F``, a Python loop overwriting a file then
unlinking it: a file's bytes destroyed before its name goes, so nothing can be
recovered.  Matched on two things, never on an atomic's command line:

(a) **the deletion tools by identity**: the executable is the installed file of
    ``shred``/``wipe``/``srm``/``scrub``/``sfill`` (by (device, inode) in the root-only
    system directories, :class:`.trust.ExeTrust`) or carries a name of their family;
    its command line is read by the tool's option table (:func:`.staging.parse`:
    combined short flags ``-zun3``, ``--remove[=HOW]`` and its getopt_long prefixes):
    shred only with a removing option, wipe unless ``-k`` (keep), srm always, scrub
    with ``-r``/``--remove`` (or ``-X``: a free-space fill), sfill always (free space).
    Medium, the operands (resolved against the exec's cwd) named.

(b) **the kernel-visible shape, whatever the tool**: a process write-opens a file in
    place (``O_WRONLY`` or ``O_RDWR`` without ``O_TRUNC``/``O_APPEND``) that held bytes
    at the open and whose content it did not make itself (its own = this open created
    the inode or found it empty, as the kernel says: ``FileEvent.created``/``empty``,
    ABI 2.10; or the same process, running the same program, created or emptied it
    earlier), then that same process unlinks it (no window: the
    state's TTL bounds it), or a process it ran, or its parent or a sibling's tree when
    the parent runs a non-interactive script (a script operand or ``-c``; never a login
    or interactive shell) within :attr:`SecureDeletion.window_ns` of the writer's last
    event (its exit included) or of the last rename of the chain (shred's
    rename-to-zeros series is followed name by name).  Medium.  The flags never exempt
    an open the kernel described: ``O_CREAT|O_NOFOLLOW`` or a ``*.lock`` name on a file
    that held bytes is an overwrite.  A record that does not say (an object before ABI
    2.10, an older agent's replay) falls back to the flags: ``O_CREAT|O_EXCL`` or
    ``O_TRUNC`` make the content the opener's (``O_EXCL`` without ``O_CREAT`` does not:
    the kernel ignores it), lock and pid files (``*.lock``/``*.pid``) and
    ``O_CREAT|O_NOFOLLOW`` opens (sqlite's files, the JVM's hsperfdata) are taken for
    new, and ``dd of=new conv=notrunc; rm new`` in a script is reported.

High instead of medium when the wiped file is a log or a shell history, or a program
or script the same tree executed (a self-deleting payload).  ``behavior.log_clearing``
keeps what it already catches (shred/wipe/srm of a log or history by argv, the unlink of
a log or history name): this rule names only the other operands of such a command line,
so one act raises one alert.  busybox/toybox (by executable inode) are read by their
applet (argv[0]'s name, or argv[1]).

Silent (look-alikes): files a process created or emptied itself (editors' swap files,
temp files), sqlite's ``-journal``/``-wal``/``-shm`` next to a database the same
process opened ``O_RDWR``, a browser's cache entries (by executable identity, under its
cache dirs), truncating rewrites (editors, ``cp``), appends (logs), ``touch``/``truncate``
(no byte written), ``rm`` of a file nobody overwrote, ``mv``, a child's rewrite removed
by a parent that is no script (a test runner, a session), and, as the actor only,
linkers/strip/objcopy, mkswap/mkfs, logrotate, systemd-tmpfiles, package managers (also
one parent level up: maintainer scripts).  Never tools that run commands they are given
(git, make, rsync, ccache, compilers' drivers), not even as the actor's ancestors.

State: every map is a :class:`.state.BoundedState` (LRU cap and idle TTL of the pack's
:class:`.state.Limits`); a writer keeps at most :attr:`SecureDeletion.max_per_writer`
overwritten files waiting, and one more raises "secure deletion state exhausted by pid
N" (medium) instead of evicting the victim's record.

Left open (said, not hidden): an overwrite through a shared writable mapping or a
descriptor opened long before; unlinks matched by path (a symlinked directory or a hard
link under another name escapes: keying by (dev, ino) is the next step); many processes
each under the cap flooding the global LRU; a wipe that never unlinks; siblings under
a shell reading its script from stdin (``curl | sh``: taken for interactive); a renamed
copy of wipe/srm/scrub is seen only by shape (b).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Final
from bastion.detect.behavior.base import (
    PACKAGE_MANAGERS, SHELLS, BehaviorRule, Hit, RuleSettings, base, glob_any,
)
from bastion.detect.behavior.rules import HISTORY, LOGS, LOGS_HISTORY, MAIL_SPOOLS
from bastion.detect.behavior.staging import Opts, Parsed, parse
from bastion.detect.behavior.state import BoundedState, Limits, ProcKey, proc_key
from bastion.detect.behavior.trust import Ident
from bastion.detect.behavior.svcctl import _Refused
from bastion.detect.engine import RuleContext
from bastion.events import Event, ExecEvent, FileEvent

NS = 1_000_000_000
O_ACCMODE, O_WRONLY, O_RDWR = 0o3, 0o1, 0o2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_NOFOLLOW = 0o400000

# the secure-deletion tools: installed name -> family (the option table's key)
WIPE_NAMES: dict[str, str] = {"shred": "shred", "gshred": "shred", "wipe": "wipe",
                              "srm": "srm", "scrub": "scrub", "sfill": "sfill"}

# each family's options (getopt: which short options take a value, which long ones do,
# the long options taking none; ``--remove[=HOW]``'s value is optional: only ``=HOW``)
WIPE_OPTS: dict[str, Opts] = {
    "shred": Opts(short="ns", long=frozenset({"--iterations", "--random-source", "--size"}),
                  flags=frozenset({"--exact", "--force", "--remove", "--verbose", "--zero",
                                   "--help", "--version"})),
    # wipe 0.2x (Debian): -Q/-S/-M/-l/-o/-b/-x take a value; -R (its random device) is read
    # as a flag: in wipe 2.x -R is recursion, so ``wipe -R dir`` must keep ``dir`` an operand
    # (0.2x's ``-R /dev/urandom`` then names the device too: more, never fewer, operands)
    "wipe": Opts(short="QSMlobx"),
    "srm": Opts(),
    "scrub": Opts(short="pbsD", long=frozenset({"--pattern", "--blocksize", "--device-size",
                                                "--dirent"}),
                  flags=frozenset({"--remove", "--force", "--freespace", "--no-signature",
                                   "--no-link", "--no-hwrand", "--no-threads", "--test-sig",
                                   "--help", "--version"})),
    "sfill": Opts(),
}

# who may overwrite and then delete files for a living (by executable inode), as the actor
# itself only: tools that rewrite files in place as their job and run no command they are
# given (not git, make, cmake, ninja, go, cargo, rsync, ccache, gcc, install: each runs
# arbitrary commands, ``git -c alias.x='!shred -u f' x``); package managers also one parent
# level up (their maintainer scripts)
WIPE_TRUSTED = frozenset({
    "ld", "ld.bfd", "ld.gold", "ld.lld", "mold", "collect2", "as", "strip", "objcopy",
    "patchelf", "chrpath", "upx", "rustc", "dh_strip", "debugedit", "prelink", "ldconfig",
    "logrotate", "systemd-tmpfiles", "systemd", "mkswap", "mke2fs", "mkfs", "mkfs.ext2",
    "mkfs.ext3", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "mkfs.vfat", "mkfs.fat", "mkdosfs",
    *PACKAGE_MANAGERS})
# multi-call binaries (by executable inode): the applet is argv[0]'s name, or argv[1]
MULTI_CALL = frozenset({"busybox", "toybox"})
# WIPE_NAMES' names in its order, immutable (ExeTrust.is_tool answers a tuple of located
# names with one look-up; asked on every exec of no wiping tool's name: s24)
_WIPE_ORDER: Final = tuple(WIPE_NAMES)
# browsers (by executable inode, or installed under a root-owned program directory) and
# their cache directories: entries rewritten, renamed into a doomed dir, deleted
BROWSERS = frozenset({"firefox", "firefox-esr", "firefox-bin", "chrome", "chromium",
                      "chromium-browser", "google-chrome", "brave", "msedge"})
BROWSER_DIRS = ("/usr/lib/firefox/", "/usr/lib/firefox-esr/", "/usr/lib/chromium/",
                "/usr/lib/chromium-browser/", "/opt/google/chrome/", "/opt/brave.com/",
                "/opt/microsoft/msedge/", "/snap/firefox/", "/snap/chromium/")
BROWSER_CACHES = ("/.cache/", "/.mozilla/", "/.config/chromium/", "/.config/google-chrome/")
# sqlite's side files, judged next to the database the same process opened
_SQLITE_SIDE = re.compile(r"^(?P<db>.+)-(journal|wal|shm)$")
# lock and pid files (opened O_CREAT without truncation, then removed by their owner)
_LOCKISH = re.compile(r"(\.lock|\.lck|\.pid|/LOCK)$")
# shells whose non-interactive runs (a script operand or -c) make a script: its steps
# (siblings) may be one act
_INTERACTIVE = frozenset({"-i", "-l", "--login", "--interactive", "-s"})
NOT_FILES = ("/proc", "/sys", "/dev")
# tools that write-open an existing file without writing a byte into it (by executable
# inode): ``touch`` (times), ``truncate`` (the length, through ftruncate)
NO_BYTES_WRITTEN = frozenset({"touch", "truncate"})
_ROTATED = re.compile(r"\.(\d+|gz|xz|old|bz2)$")
# log_clearing's own shred/wipe/srm-by-argv check (LogClearing._match: the tool's base name)
_LOG_CLEARING_TOOLS = frozenset({"shred", "truncate", "wipe", "srm"})


def _norm(path: str, cwd: str = "") -> str:
    """``path`` made absolute against ``cwd`` (when both allow), lexically normalised."""
    if not path.startswith("/") and cwd.startswith("/"):
        path = cwd + "/" + path
    if not path.startswith("/"):
        return path
    return "/" + os.path.normpath(path).lstrip("/")


def log_or_history(path: str) -> bool:
    return glob_any(path, LOGS_HISTORY) is not None


def log_clearing_unlink(path: str) -> bool:
    """Does ``behavior.log_clearing`` already judge an unlink of ``path``?"""
    return (glob_any(path, LOGS) is not None and not _ROTATED.search(path)) \
        or glob_any(path, HISTORY) is not None or glob_any(path, MAIL_SPOOLS) is not None


@dataclass(frozen=True)
class WipeCommand:
    """What a deletion tool's command line destroys."""

    tool: str                   # family
    files: tuple[str, ...]      # operands, absolute where the cwd allows
    how: str                    # "overwrite and remove", "free space", ...


def wipe_command(family: str, argv: tuple[str, ...] | list[str], cwd: str) -> WipeCommand | None:
    """The files ``argv`` of a ``family`` tool wipes and removes (None: it removes
    nothing, or the tool itself refuses the command line)."""
    try:
        p: Parsed = parse(argv, WIPE_OPTS[family])
    except _Refused:
        return None          # an ambiguous long-option prefix: the tool refuses, nothing done
    names = {o for o, _ in p.opts}
    files = tuple(_norm(a, cwd) for a in p.operands if a != "-")
    if not files:
        return None
    if family == "shred":
        if not names & {"-u", "--remove"}:
            return None      # overwrite without removal: not this technique
        how = next((f"overwrite and remove ({v})" for o, v in p.opts if o == "--remove" and v),
                   "overwrite and remove")
        return WipeCommand(family, files, how)
    if family == "wipe":
        return None if "-k" in names else WipeCommand(family, files, "overwrite and remove")
    if family == "srm":
        return WipeCommand(family, files, "overwrite and remove")
    if family == "scrub":
        if names & {"-r", "--remove"}:
            return WipeCommand(family, files, "overwrite and remove")
        if names & {"-X", "--freespace"}:
            return WipeCommand(family, files, "free space filled")
        return None
    return WipeCommand(family, files, "free space wiped")     # sfill


@dataclass
class _Over:
    """A file overwritten in place, waiting for its unlink."""

    key: ProcKey                 # the overwriter
    parent: ProcKey | None       # its parent, kept only when it runs a non-interactive
                                 # script (whose next step may unlink)
    t0: int                      # the open, then each rename of the chain
    orig: str                    # the name it had when overwritten
    flags: int
    writer: str
    renames: list[str] = field(default_factory=list)
    nrenames: int = 0


class SecureDeletion(BehaviorRule):
    """Secure deletion: a deletion tool by identity, or a file overwritten in place
    then unlinked (see the module doc)."""

    name = "behavior.secure_deletion"
    event_types = frozenset({"exec", "open", "rename", "unlink", "exit"})
    attack = ("T1070.004",)
    severity = "medium"
    action = "alert"
    description = "File overwritten then deleted (secure deletion)"
    window_ns = 30 * NS
    max_per_writer = 256         # overwritten files waiting per process (then: a finding)

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        super().__init__(settings, limits)
        # (dev, ino) -> (its creator, the creator's program, its path); path -> (dev, ino)
        # of a created entry
        self._created: BoundedState[Ident, tuple[ProcKey, str, str]] = self.state()
        self._cpath: BoundedState[str, Ident] = self.state()
        self._over: BoundedState[str, _Over] = self.state()        # overwritten, by path
        self._reported: BoundedState[ProcKey, int] = self.state()  # -> time of its finding
        # an executed program or script -> (the process, its parent)
        self._ran: BoundedState[str, tuple[ProcKey, ProcKey | None]] = self.state()
        # a writer -> the paths of its waiting records; its last event (exit included)
        self._by_writer: BoundedState[ProcKey, set[str]] = self.state()
        self._last: BoundedState[ProcKey, int] = self.state()
        self._exhausted: BoundedState[ProcKey, int] = self.state()
        self._rw: BoundedState[tuple[ProcKey, str], int] = self.state()   # O_RDWR opens
        # (a process, its program) -> (trusted as a writer, its script parent): judged once
        self._writer: BoundedState[tuple[ProcKey, str], tuple[bool, ProcKey | None]] = \
            self.state()

    # -- helpers

    @staticmethod
    def _parent_key(ev: Event, ctx: RuleContext) -> ProcKey | None:
        e = ctx.procs.get(ev.proc.ppid)
        if e is None or e.pid <= 1:
            return None
        return (e.pid, e.start_ns)

    @staticmethod
    def _chain(ev: Event, ctx: RuleContext) -> list[ProcKey]:
        """The actor, then its known ancestors (up to 3), as process keys."""
        out = [proc_key(ev)]
        for e in ctx.procs.ancestry(ev.proc.pid, 4)[1:]:
            if e.pid <= 1:
                break
            out.append((e.pid, e.start_ns))
        return out

    @staticmethod
    def _in(key: ProcKey | None, chain: list[ProcKey]) -> bool:
        if key is None:
            return False
        tick = 20_000_000    # /proc-seeded start times have clock-tick resolution
        return any(k[0] == key[0] and (not k[1] or not key[1] or abs(k[1] - key[1]) < tick)
                   for k in chain)

    def _trusted(self, ev: Event, ctx: RuleContext) -> bool:
        return self.trusted(ev, ctx, WIPE_TRUSTED, depth=0) or \
            self.trusted(ev, ctx, PACKAGE_MANAGERS, depth=1)

    @staticmethod
    def _script_parent(ev: Event, ctx: RuleContext) -> ProcKey | None:
        """The actor's parent when it is a shell running a non-interactive script (a
        script operand or ``-c``; not a login or interactive shell, not systemd --user,
        tmux or sshd), else None."""
        e = ctx.procs.get(ev.proc.ppid)
        if e is None or e.pid <= 1 or base(e.exe) not in SHELLS or not e.cmdline:
            return None
        argv = e.cmdline
        if argv[0].startswith("-"):
            return None                  # a login shell
        for a in argv[1:]:
            if a in _INTERACTIVE or (a.startswith("-") and not a.startswith("--")
                                     and ("i" in a or "l" in a or "s" in a)):
                return None
            if a == "-c" or (a.startswith("-") and not a.startswith("--") and "c" in a) \
                    or not a.startswith("-"):
                return (e.pid, e.start_ns)
        return None

    def _was_reported(self, keys: list[ProcKey], now: int) -> bool:
        return any(self._reported.get(k, now) is not None for k in keys)

    def _executed_here(self, path: str, chain: list[ProcKey], now: int) -> bool:
        got = self._ran.get(path, now)
        if got is None:
            return False
        ran, parent = got
        return self._in(ran, chain) or self._in(parent, chain)

    def _forget_created(self, path: str) -> None:
        ident = self._cpath.pop(path)
        if ident is not None:
            self._created.pop(ident)

    # -- events

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        k = proc_key(ev)
        if self._by_writer.get(k, ev.time_ns) is not None:
            self._last.put(k, ev.time_ns, ev.time_ns)     # a writer's last act
        if isinstance(ev, ExecEvent):
            return self._exec(ev, ctx)
        if not isinstance(ev, FileEvent):
            return []
        if ev.op == "open":
            return self._open(ev, ctx)
        if ev.op == "rename":
            self._rename(ev, ctx)
            return []
        if ev.op == "unlink":
            return self._unlink(ev, ctx)
        return []

    def _exec(self, ev: ExecEvent, ctx: RuleContext) -> list[Hit]:
        now = ev.time_ns
        key, parent = proc_key(ev), self._parent_key(ev, ctx)
        for p in (ev.proc.exe, _norm(ev.script, ev.cwd) if ev.script else ""):
            if p and p.startswith("/") and not ev.exec_fd:
                self._ran.put(p, now, (key, parent))
        name = base(ev.proc.exe) or base(ev.filename)
        argv = tuple(ev.argv)
        family = WIPE_NAMES.get(name)
        if family is None and self.trust.is_tool((ev.exe_dev, ev.exe_ino), MULTI_CALL):
            # busybox/toybox: the applet is argv[0]'s name (a symlink), or argv[1]
            applet = base(argv[0]) if argv else ""
            if applet in MULTI_CALL and len(argv) > 1:
                applet, argv = base(argv[1]), argv[1:]
            family = WIPE_NAMES.get(applet)
        elif family is None:
            by_inode = self.trust.is_tool((ev.exe_dev, ev.exe_ino), _WIPE_ORDER)
            family = WIPE_NAMES[by_inode] if by_inode is not None else None
        if family is None:
            return []
        cmd = wipe_command(family, argv, ev.cwd)
        if cmd is None:
            return []
        logs = [f for f in cmd.files if log_or_history(f)]
        if name in _LOG_CLEARING_TOOLS and logs:
            # log_clearing raises the logs (high): this rule names the other operands only
            self._reported.put(key, now, now)
            rest = tuple(f for f in cmd.files if f not in logs)
            if not rest:
                return []
            cmd, logs = WipeCommand(cmd.tool, rest, cmd.how), []
        if self._trusted(ev, ctx):
            return []
        self._reported.put(key, now, now)
        chain = self._chain(ev, ctx)
        payload = [f for f in cmd.files if self._executed_here(f, chain, now)]
        sev, why = None, ""
        if logs:
            sev, why = "high", f" (log/history: {', '.join(logs[:3])})"
        elif payload:
            sev, why = "high", f" (a program this tree ran: {', '.join(payload[:3])})"
        shown = ", ".join(cmd.files[:5]) + (f" (+{len(cmd.files) - 5})" if len(cmd.files) > 5 else "")
        return [Hit(f"Secure deletion with {cmd.tool}: {shown}{why}",
                    {"tool": cmd.tool, "exe": ev.proc.exe, "how": cmd.how,
                     "files": list(cmd.files[:20]), "argv": list(ev.argv[:20]),
                     "by": "identity"}, severity=sev)]

    def _open(self, ev: FileEvent, ctx: RuleContext) -> list[Hit]:
        flags = ev.flags
        acc = flags & O_ACCMODE
        if acc not in (O_WRONLY, O_RDWR) or not ev.ino or not ev.path.startswith("/"):
            return []   # (no write access: nothing below is kept or found; s24)
        ident = (ev.dev, ev.ino)
        now = ev.time_ns
        key = proc_key(ev)
        path = _norm(ev.path)
        if acc == O_RDWR:
            self._rw.put((key, path), now, now)
        # the kernel's answer (ABI 2.10: FMODE_CREATED, i_size at the open), else the flags:
        # O_TRUNC empties (the kernel's own semantics, on either tier); O_EXCL creates only
        # with O_CREAT (without it the kernel ignores O_EXCL and opens the existing file)
        known = ev.created is not None
        made = ev.created or ev.empty if known else \
            flags & (O_CREAT | O_EXCL) == O_CREAT | O_EXCL
        if (made or flags & O_TRUNC) and acc in (O_WRONLY, O_RDWR):
            # created or emptied by this open: its content is this process's own from here
            old = self._created.get(ident, now)
            if old is not None and old[2] != path:
                self._cpath.pop(old[2])
            self._created.put(ident, now, (key, ev.proc.exe, path))
            self._cpath.put(path, now, ident)
            return []
        if acc not in (O_WRONLY, O_RDWR) or flags & O_APPEND:
            return []
        # a write-open in place of a file that held bytes (the kernel said so), or, for a
        # record that does not say (an object before ABI 2.10, an older replay), of an inode
        # never seen emptied (O_CREAT without O_TRUNC/O_EXCL included)
        seen = self._created.get(ident, now)
        creator = seen if seen is not None and seen[2] == path else None
        if creator is not None and self._in(creator[0], [key]) and creator[1] == ev.proc.exe:
            # its own file (a journal, a swap file, a temp file); the same process after an
            # exec is another program (``bash -c 'echo > f; python3 ...'`` execs the last)
            return []
        if not known and flags & O_CREAT and (_LOCKISH.search(path) or flags & O_NOFOLLOW):
            # the fallback's guesses, only where the kernel did not say whether the open
            # created the file (any program can set O_NOFOLLOW or name a file *.lock): a
            # lock or pid file, maybe new; a careful creator's own file (sqlite's database
            # and journal, the JVM's hsperfdata: O_CREAT|O_NOFOLLOW)
            return []
        if path.startswith(NOT_FILES) and any(path == d or path.startswith(d + "/")
                                             for d in NOT_FILES):
            return []
        m = _SQLITE_SIDE.match(path)
        if m is not None and self._rw.get((key, m.group("db")), now) is not None:
            return []                    # sqlite's journal/WAL next to its database
        if any(c in path for c in BROWSER_CACHES) and self._browser(ev, ctx):
            return []                    # a browser's cache entry
        wk = (key, ev.proc.exe)
        judged = self._writer.get(wk, now)
        if judged is None:
            e = ctx.procs.get(ev.proc.pid)
            # touch/truncate: a stamp touched, a length set, nothing overwritten; a linker,
            # mkswap, a package manager: rewriting in place is their job
            exempt = (e is not None and e.same_process(ev.proc.start_ns) and
                      self.trust.is_tool((e.exe_dev, e.exe_ino), NO_BYTES_WRITTEN) is not None) \
                or self._trusted(ev, ctx)
            judged = (exempt, self._script_parent(ev, ctx))
            self._writer.put(wk, now, judged)
        if judged[0]:
            return []
        mine = self._by_writer.get(key, now) or set()
        if path not in mine and len(mine) >= self.max_per_writer:
            mine = {p for p in mine if (o := self._over.get(p, now)) is not None
                    and o.key == key}
            if len(mine) >= self.max_per_writer:
                self._by_writer.put(key, now, mine)
                if self._exhausted.get(key, now) is not None:
                    return []
                self._exhausted.put(key, now, now)
                return [Hit(f"Secure deletion state exhausted by pid {ev.proc.pid}",
                            {"pid": ev.proc.pid, "exe": ev.proc.exe, "records": len(mine),
                             "cap": self.max_per_writer, "path": path, "by": "exhausted"})]
        mine.add(path)
        self._by_writer.put(key, now, mine)
        self._last.put(key, now, now)
        self._over.put(path, now, _Over(key, judged[1], now, path, flags,
                                        ev.proc.exe or ev.proc.comm))
        return []

    def _browser(self, ev: Event, ctx: RuleContext) -> bool:
        exe = ev.proc.exe
        if exe.startswith(BROWSER_DIRS):
            return True                  # installed under a root-owned program directory
        e = ctx.procs.get(ev.proc.pid)
        return e is not None and e.same_process(ev.proc.start_ns) and \
            self.trust.is_tool((e.exe_dev, e.exe_ino), BROWSERS) is not None

    def _same(self, o: _Over, chain: list[ProcKey]) -> bool:
        return self._in(o.key, chain[:1])

    def _in_window(self, o: _Over, chain: list[ProcKey], now: int) -> bool:
        """The same process: no window (the state's TTL bounds it); another: within
        ``window_ns`` of the writer's last event (its exit included) or the last rename."""
        if self._same(o, chain):
            return True
        last = max(o.t0, self._last.get(o.key, now) or 0)
        return now - last <= self.window_ns

    def _related(self, o: _Over, chain: list[ProcKey]) -> bool:
        """The writer itself or its descendants (a process it ran), or its parent / a
        sibling's tree when that parent runs a non-interactive script."""
        return self._in(o.key, chain) or self._in(o.parent, chain)

    def _rename(self, ev: FileEvent, ctx: RuleContext) -> None:
        src = _norm(ev.path)
        dst = _norm(ev.path2)
        now = ev.time_ns
        ident = self._cpath.pop(src)
        if ident is not None:
            got = self._created.get(ident, now)
            if got is not None:
                self._created.put(ident, now, (got[0], got[1], dst))
                self._cpath.put(dst, now, ident)
        o = self._over.pop(src)
        if o is None:
            return
        chain = self._chain(ev, ctx)
        if not self._related(o, chain) or not self._in_window(o, chain, now):
            return
        o.t0 = now                       # the clock restarts at each rename
        o.nrenames += 1
        if len(o.renames) < 8:
            o.renames.append(dst)
        self._over.put(dst, now, o)

    def _unlink(self, ev: FileEvent, ctx: RuleContext) -> list[Hit]:
        path = _norm(ev.path)
        now = ev.time_ns
        self._forget_created(path)
        o = self._over.pop(path)
        if o is None:
            return []
        chain = self._chain(ev, ctx)
        if not self._related(o, chain) or not self._in_window(o, chain, now):
            return []
        if self._was_reported([o.key, chain[0]], now):
            return []                    # the tool's identity already said it (or we did)
        if log_clearing_unlink(path):
            return []                    # log_clearing judges this unlink
        if self._trusted(ev, ctx):
            return []                    # (the writer's trust is judged at its open)
        self._reported.put(o.key, now, now)
        self._reported.put(chain[0], now, now)
        sev, why = None, ""
        if log_or_history(o.orig):
            sev, why = "high", " (a log/history)"
        elif self._executed_here(o.orig, chain, now) or self._executed_here(
                o.orig, [o.key] + ([o.parent] if o.parent else []), now):
            sev, why = "high", " (a program this tree ran: self-deleting payload)"
        deleter = ev.proc.exe or ev.proc.comm
        by = base(o.writer) if o.key == chain[0] else f"{base(o.writer)} then {base(deleter)}"
        return [Hit(f"File overwritten in place then deleted by {by}: {o.orig}{why}",
                    {"path": o.orig, "unlinked": path, "renames": o.nrenames,
                     "renamed_to": list(o.renames), "flags": oct(o.flags),
                     "writer": o.writer, "deleter": deleter,
                     "window_s": round((now - o.t0) / NS, 3), "by": "shape"},
                    severity=sev)]


WIPE_RULES: tuple[type[BehaviorRule], ...] = (SecureDeletion,)

__all__ = ["SecureDeletion", "WIPE_RULES", "WIPE_NAMES", "WIPE_OPTS", "WipeCommand",
           "wipe_command", "log_clearing_unlink"]
