"""Account and credential databases staged into a file (issue 15, s16-stage).

``cat /etc/passwd > /tmp/x``, ``cp /etc/shadow ~/.s``, ``tar czf /dev/shm/a.tgz
/etc/shadow``, ``dd if=/etc/gshadow of=/var/tmp/g``, ``base64 /etc/sudoers >
/tmp/b`` and ``cat /etc/shadow | gzip > /tmp/z``: a copy of the host's account or
credential database put where it can be picked up.  Matched on structure:

* each tool's command line is read by its option table (which options take the
  next word, which operand is the script or pattern rather than a file, which is
  the destination), never by the look of the words;
* a source is one of :data:`ACCOUNT_DBS` by its resolved path (relative operands
  joined to the exec's cwd and normalised), not by substring;
* the destination is a file: the tool's output operand (``cp``'s target, ``of=``,
  ``-f`` archive, ``-o``), or its stdout *as the kernel reports fd 1 at exec*
  (a regular file; a terminal, ``/dev/null`` or a pipe is not staging), the path
  taken from the shell's write-open of the redirect when it was seen; and through
  one pipe: a reader of a database whose stdout pipe is the stdin of a filter
  (``gzip``, ``base64``, ``grep``, ``tee FILE``...) writing a file.

Whether the source exists does not matter (``/etc/master.passwd`` is absent on
Linux: the attempt is the behaviour).  Severity: passwd/group medium; shadow,
gshadow, opasswd, sudoers, master.passwd high.  ``behavior.credential_access``
already raises high on a read of the shadow files by an untrusted reader: when the
reader is seen opening such a store and that rule fires, this rule stays silent
for that process (decided at its exit); otherwise (absent file, a reader that
rule trusts such as ``rsync``) this rule raises the alert at the reader's exit.

Silent: a destination under /etc or /var/backups (the system's own backups:
``cp /etc/passwd /etc/passwd.bak``), package maintainer scripts (a dpkg/apt
tree), account tools and backup tools trusted by executable inode (vipw, pwck,
etckeeper, rsnapshot, ...), reads to a terminal or a pipe into a reader that
writes no file (``cat /etc/passwd | grep x``), ``getent`` (not a file reader)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bastion.detect.behavior.base import (
    PACKAGE_MANAGERS, BehaviorRule, Hit, RuleSettings, base, glob_any, is_shell, under,
)
from bastion.detect.behavior.rules import (
    CRED_STORES, CRED_TOOLS, SECRET_SEVERITY, SECRET_TOOLS, Probes, write_intent,
)
from bastion.detect.behavior.state import Limits, ProcKey, proc_key
from bastion.detect.behavior.svcctl import _Refused, _resolve_long
from bastion.detect.engine import OpenInterest, RuleContext
from bastion.events import Event, ExecEvent, ExitEvent, FileEvent

# path -> severity of a copy of it
ACCOUNT_DBS: dict[str, str] = {
    "/etc/passwd": "medium", "/etc/passwd-": "medium", "/etc/group": "medium",
    "/etc/group-": "medium",
    "/etc/shadow": "high", "/etc/shadow-": "high", "/etc/gshadow": "high",
    "/etc/gshadow-": "high", "/etc/master.passwd": "high", "/etc/spwd.db": "high",
    "/etc/security/opasswd": "high", "/etc/sudoers": "high",
}
ACCOUNT_DB_GLOBS: dict[str, str] = {"/etc/sudoers.d/*": "high"}

# where the system keeps its own copies of these files: not staging
SYSTEM_COPY_DIRS = ("/etc", "/var/backups")

# account tools and backup tools that copy these files for a living (by executable
# inode, as the actor or an ancestor)
STAGING_TRUSTED = frozenset({
    "vipw", "vigr", "pwck", "grpck", "pwconv", "pwunconv", "grpconv", "grpunconv",
    "useradd", "usermod", "userdel", "groupadd", "groupmod", "groupdel", "chpasswd",
    "newusers", "passwd", "chage", "gpasswd", "visudo", "etckeeper", "rsnapshot",
    "backup-manager", "borg", "restic", "duplicity", "rdiff-backup", "timeshift",
    "bacula-fd", "amandad", "systemd-sysusers", *PACKAGE_MANAGERS,
})


def db_severity(path: str) -> str | None:
    """The severity of staging ``path`` (an absolute, normalised path), or None."""
    sev = ACCOUNT_DBS.get(path)
    if sev is None:
        pat = glob_any(path, ACCOUNT_DB_GLOBS)
        sev = ACCOUNT_DB_GLOBS[pat] if pat else None
    return sev


# ---- command lines by option table ---------------------------------------------------------

@dataclass(frozen=True)
class Opts:
    """A tool's option table: short options taking the next word (or the rest of the
    cluster), long options taking the next word (unless written ``--x=v``)."""

    short: str = ""
    long: frozenset[str] = frozenset()
    numeric: bool = False      # ``head -5``: a digit cluster is a count, not options
    # the tool's long options taking no separate value; given, long options are read as
    # getopt_long does: any unambiguous prefix (``cp --target=/tmp`` is --target-directory)
    flags: frozenset[str] = frozenset()


@dataclass
class Parsed:
    opts: list[tuple[str, str | None]]     # (option, value or None), in order
    operands: list[str]


def parse(argv: tuple[str, ...] | list[str], table: Opts) -> Parsed:
    words = list(argv[1:])
    opts: list[tuple[str, str | None]] = []
    operands: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w == "--":
            operands += words[i:]
            break
        if w.startswith("--") and len(w) > 2:
            name, eq, val = w.partition("=")
            if table.flags:
                name = _resolve_long(name, table.long | table.flags, table.long)
            if eq:
                opts.append((name, val))
            elif name in table.long and i < len(words):
                opts.append((name, words[i]))
                i += 1
            else:
                opts.append((name, None))
            continue
        if len(w) > 1 and w[0] == "-":
            if table.numeric and w[1:].isdigit():
                opts.append(("-n", w[1:]))
                continue
            for k, ch in enumerate(w[1:], start=1):
                if ch in table.short:
                    if k + 1 < len(w):
                        opts.append(("-" + ch, w[k + 1:]))
                    elif i < len(words):
                        opts.append(("-" + ch, words[i]))
                        i += 1
                    else:
                        opts.append(("-" + ch, None))
                    break
                opts.append(("-" + ch, None))
            continue
        operands.append(w)
    return Parsed(opts, operands)


def _has(p: Parsed, *names: str) -> bool:
    return any(o in names for o, _ in p.opts)


def _val(p: Parsed, *names: str) -> str | None:
    for o, v in p.opts:
        if o in names and v is not None:
            return v
    return None


@dataclass(frozen=True)
class Copy:
    """What a command reads from files and where its output goes."""

    sources: tuple[str, ...]       # as written (relative or absolute)
    dest: str | None               # an output file operand; None: stdout
    stdin: bool = False            # reads its stdin (a filter in a pipeline)
    base_dir: str = ""             # tar -C: members relative to it


# Readers whose file operands go to stdout (operands are files).
_READERS: dict[str, Opts] = {
    "cat": Opts(), "tac": Opts("sr", frozenset({"--separator"})), "nl": Opts("bdfhilnsvw"),
    "head": Opts("nc", frozenset({"--lines", "--bytes"}), numeric=True),
    "tail": Opts("ncs", frozenset({"--lines", "--bytes", "--pid", "--sleep-interval"}),
                 numeric=True),
    "base64": Opts("w", frozenset({"--wrap"})), "base32": Opts("w", frozenset({"--wrap"})),
    "basenc": Opts("w", frozenset({"--wrap"})),
    "od": Opts("AjNStw", frozenset({"--address-radix", "--skip-bytes", "--read-bytes",
                                     "--strings", "--format", "--width"})),
    "hexdump": Opts("efns"), "hd": Opts("efns"),
    "strings": Opts("netTo", frozenset({"--bytes", "--encoding", "--radix", "--target"})),
    "cut": Opts("bcdf", frozenset({"--bytes", "--characters", "--delimiter", "--fields",
                                    "--output-delimiter"})),
    "uniq": Opts("fsw", frozenset({"--skip-fields", "--skip-chars", "--check-chars"})),
    "column": Opts("cstoNRHWEdlJ"), "sort": Opts("kotST", frozenset(
        {"--key", "--output", "--field-separator", "--buffer-size", "--temporary-directory",
         "--files0-from", "--parallel", "--batch-size", "--compress-program"})),
    "rev": Opts(), "fold": Opts("w", frozenset({"--width"})), "expand": Opts("t"),
    "paste": Opts("d", frozenset({"--delimiters"})), "pr": Opts("hlwWoNe"),
    "more": Opts(), "less": Opts("bhjkopPtTxyz#"), "view": Opts(),
}
# ...and those whose first operand is a program or pattern unless given by option
_SCRIPTED: dict[str, tuple[Opts, tuple[str, ...]]] = {
    "grep": (Opts("efmABCDd", frozenset({"--regexp", "--file", "--max-count", "--after-context",
                                         "--before-context", "--context", "--devices",
                                         "--directories", "--label"})), ("-e", "-f", "--regexp", "--file")),
    "egrep": (Opts("efmABCDd"), ("-e", "-f")), "fgrep": (Opts("efmABCDd"), ("-e", "-f")),
    "sed": (Opts("efl", frozenset({"--expression", "--file", "--line-length"})),
            ("-e", "-f", "--expression", "--file")),
    "awk": (Opts("fvF"), ("-f",)), "gawk": (Opts("fvFEil", frozenset({"--file", "--assign",
                                                                      "--field-separator"})),
                                            ("-f", "--file")),
    "mawk": (Opts("fvFW"), ("-f",)), "nawk": (Opts("fvF"), ("-f",)),
}
# compressors: to stdout only with -c/--stdout (without, they replace the file in place)
_COMPRESSORS: dict[str, Opts] = {
    "gzip": Opts("S", frozenset({"--suffix"})), "bzip2": Opts(), "xz": Opts("FCT"),
    "zstd": Opts("oT"), "lz4": Opts(), "pigz": Opts("bpS"),
}
# filters reading stdin that write their stdout (or ``tee``'s operands)
_FILTERS = frozenset({*_READERS, *_SCRIPTED, *_COMPRESSORS, "tee", "tr", "xxd", "dd", "openssl",
                      "gpg", "split"})


def copy_of(ev: ExecEvent) -> Copy | None:
    """What ``ev``'s tool copies (sources and destination), by its option table; None
    when it copies nothing (or refuses its command line: an ambiguous long option)."""
    try:
        return _copy_of(ev)
    except _Refused:
        return None


def _copy_of(ev: ExecEvent) -> Copy | None:
    tool = base(ev.proc.exe)
    argv = ev.argv
    if tool == "busybox" and len(argv) > 1:
        tool, argv = argv[1], tuple(argv[1:])
    if tool in _READERS:
        p = parse(argv, _READERS[tool])
        dest = _val(p, "-o", "--output") if tool == "sort" else None
        if tool == "uniq" and len(p.operands) > 1:
            return Copy(tuple(p.operands[:1]), p.operands[1], stdin=not p.operands)
        srcs = [o for o in p.operands if o != "-"]
        return Copy(tuple(srcs), dest, stdin=not p.operands or "-" in p.operands)
    if tool in _SCRIPTED:
        table, prog_opts = _SCRIPTED[tool]
        p = parse(argv, table)
        if tool.endswith("grep") and _has(p, "-q", "-c", "-l", "-L", "--quiet", "--silent",
                                          "--count", "--files-with-matches",
                                          "--files-without-match"):
            return None    # a status, a count or file names: not the file's content
        ops = p.operands if _has(p, *prog_opts) else p.operands[1:]
        return Copy(tuple(o for o in ops if o != "-"), None, stdin=not ops)
    if tool in _COMPRESSORS:
        p = parse(argv, _COMPRESSORS[tool])
        if not _has(p, "-c", "--stdout", "--to-stdout") or _has(p, "-d", "--decompress"):
            return Copy((), None, stdin=False) if p.operands else Copy((), None, stdin=True)
        return Copy(tuple(p.operands), None, stdin=not p.operands)
    if tool == "xxd":
        p = parse(argv, Opts("cgloOsnC", frozenset()))
        if _has(p, "-r"):
            return None
        ops = p.operands
        return Copy(tuple(o for o in ops[:1] if o != "-"), ops[1] if len(ops) > 1 else None,
                    stdin=not ops or ops[0] == "-")
    if tool == "dd":
        kv = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
        src = kv.get("if")
        return Copy((src,) if src else (), kv.get("of"), stdin=src is None)
    if tool == "tee":
        # --output-error[=MODE]: an optional value, only attached
        p = parse(argv, Opts("", frozenset(), flags=frozenset({
            "--append", "--ignore-interrupts", "--output-error", "--help", "--version"})))
        return Copy((), p.operands[0] if p.operands else None, stdin=True)
    if tool in ("cp", "install"):
        table = Opts("St", frozenset({"--target-directory", "--suffix", "--no-preserve",
                                      "--sparse"}), flags=_CP_FLAGS) if tool == "cp" else \
            Opts("gmoSt", frozenset({"--group", "--mode", "--owner", "--suffix",
                                     "--target-directory", "--strip-program"}),
                 flags=_INSTALL_FLAGS)
        p = parse(argv, table)
        if tool == "install" and _has(p, "-d", "--directory"):
            return None
        target = _val(p, "-t", "--target-directory")
        if target is not None:
            return Copy(tuple(p.operands), target)
        if len(p.operands) < 2:
            return None
        return Copy(tuple(p.operands[:-1]), p.operands[-1])
    if tool in ("rsync", "scp"):
        table = Opts("efBTM", frozenset({
            "--exclude", "--include", "--rsh", "--filter", "--temp-dir", "--partial-dir",
            "--compare-dest", "--copy-dest", "--link-dest", "--files-from", "--exclude-from",
            "--include-from", "--log-file", "--password-file", "--chown", "--chmod",
            "--usermap", "--groupmap", "--timeout", "--bwlimit", "--max-size", "--min-size",
            "--suffix", "--backup-dir", "--out-format", "--rsync-path", "--port", "--info",
            "--debug", "--block-size", "--address", "--iconv", "--skip-compress",
            "--checksum-choice", "--compress-level", "--max-delete", "--modify-window"})) \
            if tool == "rsync" else Opts("cDFiJlLoPSX")
        p = parse(argv, table)
        if len(p.operands) < 2:
            return None
        return Copy(tuple(p.operands[:-1]), p.operands[-1])
    if tool in ("tar", "bsdtar"):
        return _tar(argv)
    if tool == "zip":
        p = parse(argv, Opts("bntPZO"))
        if len(p.operands) < 2:
            return None
        return Copy(tuple(p.operands[1:]), p.operands[0])
    return None


# long options of GNU cp/install taking no separate value (the optional-valued ones,
# ``--backup[=C]``, ``--preserve[=L]``, ``--reflink[=W]``, ``--update[=U]``, ``--context[=C]``,
# take it attached only)
_CP_FLAGS = frozenset({
    "--archive", "--attributes-only", "--backup", "--copy-contents", "--debug",
    "--dereference", "--force", "--interactive", "--link", "--no-clobber",
    "--no-dereference", "--no-target-directory", "--one-file-system", "--parents", "--path",
    "--preserve", "--recursive", "--reflink", "--remove-destination",
    "--strip-trailing-slashes", "--symbolic-link", "--update", "--verbose", "--context",
    "--keep-directory-symlink", "--help", "--version"})
_INSTALL_FLAGS = frozenset({
    "--backup", "--compare", "--directory", "--preserve-timestamps", "--strip",
    "--no-target-directory", "--verbose", "--preserve-context", "--debug", "--context",
    "--help", "--version"})

_TAR_VALUED = "fCTXbKNLgVHI"
_TAR_LONG = frozenset({"--file", "--directory", "--files-from", "--exclude-from",
                       "--use-compress-program", "--owner", "--group", "--mode", "--transform",
                       "--label", "--newer", "--after-date", "--blocking-factor", "--format",
                       "--listed-incremental", "--exclude", "--xform"})


def _tar(argv: tuple[str, ...] | list[str]) -> Copy | None:
    """``tar c``: the members it archives (``-C`` dir applied) and the archive (``-f``)."""
    words = list(argv)
    if len(words) > 1 and words[1] and not words[1].startswith("-"):
        # old style: ``tar czf out.tgz files``: the letters' values follow in order
        letters, rest = words[1], words[2:]
        vals = []
        for ch in letters:
            if ch in _TAR_VALUED and rest:
                vals.append(("-" + ch, rest.pop(0)))
        p = parse(["tar", *rest], Opts(_TAR_VALUED, _TAR_LONG))
        p.opts = [(f"-{ch}", None) for ch in letters if ch not in _TAR_VALUED] + vals + p.opts
    else:
        p = parse(words, Opts(_TAR_VALUED, _TAR_LONG))
    if not _has(p, "-c", "--create", "-r", "--append", "-u", "--update"):
        return None
    archive = _val(p, "-f", "--file")
    base_dir = _val(p, "-C", "--directory") or ""
    return Copy(tuple(p.operands), None if archive in (None, "-") else archive, base_dir=base_dir)


def _resolve(path: str, cwd: str) -> str:
    if not path.startswith("/"):
        path = os.path.join(cwd or "/", path)
    return os.path.normpath(path)


# ---- the rule ------------------------------------------------------------------------------

@dataclass
class _Staged:
    sources: list[tuple[str, str]]      # (path, severity)
    dest: str                           # the file, or a description
    tool: str
    pid: int
    argv: list[str]
    await_exit: bool                    # a shadow-class store: decided at the reader's exit


_SEV = {"medium": 2, "high": 3}
# where an unprivileged user can plant a symlink (a source operand there is resolved)
_LINK_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/home", "/run/user", "/var/lib/php/sessions",
              "/var/www", "/srv")
# sensitive-read classes (by inode, sensors.sensitive) that are account databases
_DB_CLASSES = frozenset({"credentials", "auth-config"})


class AccountStaging(BehaviorRule):
    """An account or credential database copied into a file (see module doc)."""

    name = "behavior.account_staging"
    event_types = frozenset({"exec", "open", "exit"})
    attack = ("T1003.008", "T1074.001", "T1087.001")
    severity = "medium"
    action = "alert"
    # a read-only open matters only of a sensitive inode (_file); every write open does
    # (a shell's redirection target)
    read_interest = OpenInterest(sensitive=True)

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 probes: Probes | None = None) -> None:
        super().__init__(settings, limits)
        self.probes = probes or Probes()
        self._redirect = self.state()      # ProcKey -> the path a shell opened to write
        self._stdout_path = self.state()   # ProcKey -> the file its fd 1 is (redirect seen)
        self._pipe_src = self.state()      # "pipe:[n]" -> (sources, reader key, tool)
        self._pipe_sink = self.state()     # "pipe:[n]" -> (dest, sink tool)
        self._pending = self.state()       # ProcKey -> _Staged awaiting the exit
        self._cred_fired = self.state()    # ProcKey -> True: credential_access raised high
        # ProcKey -> _Staged with no source yet: a copy to a file whose operands name no
        # account database; the kernel's open of one (by inode: a symlink to it) decides
        self._unnamed = self.state()

    # -- helpers

    def _trusted(self, ev: Event, ctx: RuleContext) -> bool:
        return self.trusted(ev, ctx, STAGING_TRUSTED, depth=8)

    def _dest_of(self, ev: ExecEvent, cp: Copy, key: ProcKey, now: int,
                 ctx: RuleContext) -> str | None:
        """The file the output goes to, or None when it does not go to a file."""
        if cp.dest is not None:
            if cp.dest == "-":
                return None if ev.stdout != "file" else self._stdout_name(ev, key, now, ctx)
            if ":" in cp.dest.split("/", 1)[0]:
                return f"remote {cp.dest}"
            return _resolve(cp.dest, ev.cwd)
        if ev.stdout != "file":
            return None
        return self._stdout_name(ev, key, now, ctx)

    def _stdout_name(self, ev: ExecEvent, key: ProcKey, now: int, ctx: RuleContext) -> str:
        got = self._stdout_path.get(key, now)
        if got is None:
            parent = ctx.procs.get(ev.proc.ppid)
            if parent is not None:   # ``sudo cat ... > f``: sudo's child inherits its fd 1
                pkey = (parent.pid, parent.start_ns)
                got = self._stdout_path.get(pkey, now) or self._redirect.get(pkey, now)
        return str(got) if got else "a regular file (stdout)"

    def _sources(self, cp: Copy, cwd: str, pid: int = 0) -> list[tuple[str, str]]:
        out = []
        root = _resolve(cp.base_dir, cwd) if cp.base_dir else cwd
        for s in cp.sources:
            path = _resolve(s, root)
            sev = db_severity(path)
            if sev is None and pid and self.probes.resolve is not None and \
                    under(path, _LINK_DIRS):
                # a symlink where anyone may make one, to a database: as the process sees
                # it (lstat/readlink through its root; the kernel's open decides the
                # sensitive ones even when the process is gone, see _file)
                real = self.probes.resolve(pid, path)
                if real is not None and real != path:
                    sev = db_severity(real)
                    path = real
            if sev is not None:
                out.append((path, sev))
        return out

    def _hit(self, st: _Staged) -> Hit:
        sev = max((s for _, s in st.sources), key=lambda s: _SEV[s])
        names = ", ".join(p for p, _ in st.sources)
        return Hit(f"Account database staged: {names} copied to {st.dest} by {st.tool}",
                   {"sources": [p for p, _ in st.sources], "dest": st.dest, "tool": st.tool,
                    "argv": st.argv[:8]}, pid=st.pid, severity=sev)

    def _stage(self, st: _Staged, key: ProcKey, now: int) -> list[Hit]:
        if st.dest.startswith("/") and under(st.dest, SYSTEM_COPY_DIRS):
            return []
        if st.await_exit:
            self._pending.put(key, now, st)
            return []
        return [self._hit(st)]

    # -- events

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        now = ev.time_ns
        key = proc_key(ev)
        if isinstance(ev, FileEvent):
            return self._file(ev, ctx, key, now)
        if isinstance(ev, ExitEvent):
            st = self._pending.pop(key)
            fired = self._cred_fired.pop(key)
            if st is None or fired:
                return []
            return [self._hit(st)]
        if not isinstance(ev, ExecEvent):
            return []
        redirect = self._redirect.pop(key)
        if ev.stdout == "file":
            if redirect:
                self._stdout_path.put(key, now, redirect)
        else:
            self._stdout_path.pop(key)
        cp = copy_of(ev)
        if cp is None:
            return []
        tool = base(ev.proc.exe)
        srcs = self._sources(cp, ev.cwd, ev.proc.pid)
        hits: list[Hit] = []
        if srcs:
            if self._trusted(ev, ctx):
                return []
            dest = self._dest_of(ev, cp, key, now, ctx)
            await_exit = any(glob_any(p, CRED_STORES) for p, _ in srcs)
            if dest is not None:
                hits += self._stage(_Staged(srcs, dest, tool, ev.proc.pid, list(ev.argv),
                                            await_exit), key, now)
            elif ev.stdout.startswith("pipe:"):
                sink = self._pipe_sink.pop(ev.stdout)
                if sink is not None:
                    hits += self._stage(_Staged(srcs, sink[0], f"{tool} | {sink[1]}",
                                                ev.proc.pid, list(ev.argv), await_exit), key, now)
                else:
                    self._pipe_src.put(ev.stdout, now, (srcs, key, tool, await_exit))
        elif cp.sources and (dest := self._dest_of(ev, cp, key, now, ctx)) is not None:
            self._unnamed.put(key, now, _Staged([], dest, tool, ev.proc.pid, list(ev.argv),
                                                True))
        elif cp.stdin and ev.stdin.startswith("pipe:") and tool in _FILTERS:
            dest = self._dest_of(ev, cp, key, now, ctx)
            if dest is None:
                if ev.stdout.startswith("pipe:"):    # a second filter: pass the sources on
                    src = self._pipe_src.pop(ev.stdin)
                    if src is not None:
                        self._pipe_src.put(ev.stdout, now, src)
                return []
            src = self._pipe_src.pop(ev.stdin)
            if src is None:
                self._pipe_sink.put(ev.stdin, now, (dest, tool))
                return []
            srcs0, rkey, rtool, await_exit = src
            if self._trusted(ev, ctx):
                return []
            hits += self._stage(_Staged(srcs0, dest, f"{rtool} | {tool}", rkey[0],
                                        list(ev.argv), await_exit), rkey, now)
        return hits

    def _file(self, ev: FileEvent, ctx: RuleContext, key: ProcKey, now: int) -> list[Hit]:
        if ev.op != "open":
            return []
        if write_intent(ev):
            if is_shell(ev.proc.exe) and ev.path.startswith("/") and not ev.path.startswith("/dev/"):
                self._redirect.put(key, now, ev.path)
            return []
        if not ev.sensitive:
            return []
        unnamed = self._unnamed.pop(key)
        if unnamed is not None:
            # a source operand that is no account database by name (a symlink, a bind
            # mount) opened one: the kernel's path of the inode it read
            sev = db_severity(os.path.normpath(ev.path)) if ev.path.startswith("/") else None
            if sev is None and ev.sensitive in _DB_CLASSES:
                sev = "high"
            if sev is not None and not self._trusted(ev, ctx):
                unnamed.sources = [(ev.path, sev)]
                unnamed.await_exit = glob_any(ev.path, CRED_STORES) is not None or \
                    ev.sensitive == "credentials"
                hits = self._stage(unnamed, key, now)
                if hits or not unnamed.await_exit:
                    return hits
        if SECRET_SEVERITY.get(ev.sensitive) != "high":
            return []
        if self._pending.get(key, now) is None:
            return []
        # the read behavior.credential_access reports (same trust as that rule): it alerts
        # the act, so this rule does not raise a second alert for the same reader
        tools = SECRET_TOOLS.get(ev.sensitive, CRED_TOOLS)
        if not self.trusted(ev, ctx, tools, depth=1) and \
                not self.trusted(ev, ctx, PACKAGE_MANAGERS, depth=3):
            self._cred_fired.put(key, now, True)
        return []


STAGING_RULES: tuple[type[BehaviorRule], ...] = (AccountStaging,)

__all__ = ["AccountStaging", "ACCOUNT_DBS", "STAGING_RULES", "Copy", "copy_of", "db_severity",
           "parse", "Opts"]
