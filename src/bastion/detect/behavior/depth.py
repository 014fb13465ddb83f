"""Issue 15 detection depth (s14-det): behaviours our own variants found unseen.

Each rule matches structure — the pipes and sockets a shell's stdio is wired to, the
class of the file an operation names, a tool's documented options — never an
attack's command line:

* :class:`RelayedShell`: a shell reading its commands from a pipe or a socket that a
  process holding an outbound connection feeds (node/python ``spawn('/bin/sh')``
  relays, ``sh -i < fifo | openssl s_client`` loops).
* :class:`CredentialLink`: a hard link made to a credential store (a second name
  for /etc/shadow that path rules and watchers do not know).
* :class:`Timestomp`: ``touch`` setting a chosen time on a system file.
* :class:`TimestompCall`: any program setting one (the kernel's utimes record, s23).
* :class:`ExfilUpload`: a downloader uploading a credential, key or system file.
"""

from __future__ import annotations

import time
from os import O_CREAT, O_TRUNC
from typing import Any

from bastion.detect.behavior.base import (
    NS, PACKAGE_MANAGERS, SYSTEM_DIRS, BehaviorRule, Hit, RuleSettings, SingleEvent, base,
    glob_any, trusted_as, under,
)
from bastion.detect.behavior.provenance import TMP_DIRS
from bastion.detect.behavior.rules import (
    CRED_STORES, PTY_HOSTS, _shell_kind, _shell_reads_stdin, stop_if_untrusted,
)
from bastion.detect.behavior.shellargs import parse_shell_argv
from bastion.detect.behavior.trust import ExeTrust
from bastion.detect.behavior.state import BoundedState, Limits, ProcKey, proc_key
from bastion.detect.engine import ExecInterest, RuleContext
from bastion.abi import UTIMES_ATIME, UTIMES_MTIME
from bastion.events import Event, ExecEvent, FileEvent, NetEvent


# ---- reverse shell relayed through pipes ----------------------------------------------------

def _stream(fd: str) -> bool:
    """A descriptor a remote peer can write through, as the kernel reports fd 0/1 at
    exec (ABI 1.4: the inode's type): a pipe or FIFO (``pipe:[ino]``) or a socket; not a
    terminal or other character device (``tty``), not a regular file, not closed."""
    return fd.startswith(("pipe:", "socket:"))


def _command_shell(ev: ExecEvent, trust: ExeTrust) -> bool:
    """A shell taking its commands from stdin: no script, no -c (``sh``, ``sh -i``, ``sh -s``);
    the shell found by its executable (s16-sig: a renamed copy of bash is bash)."""
    return _shell_reads_stdin(ev, trust)


class RelayedShell(BehaviorRule):
    """A shell whose commands come from the network through a relay process.

    The socket is never the shell's stdio, so neither the dup2 reverse shell rule nor
    the pty rule sees it:

    * the shell's stdin is a pipe (or socket) and its parent connected out: node's
      ``net.connect`` + ``child_process.spawn('/bin/sh')`` with the streams piped,
      python's ``Popen(['/bin/sh'], stdin=PIPE)`` fed from ``recv``;
    * the shell's stdout is a pipe whose reader connected out: ``sh -i < fifo 2>&1 |
      openssl s_client -connect ... > fifo`` (any TLS or plain client in the loop);
      the kernel's fd 0/1 pipe inodes of both execs pair them, in either order, and
      the reader's connect may come after both execs.

    A shell started by a terminal or remote-login program (sshd, tmux, ...) is not
    relayed; shells with a script or ``-c`` run a program, not a session."""

    name = "behavior.relayed_shell"
    event_types = frozenset({"exec", "connect"})
    attack = ("T1059.004", "T1071.001")
    severity = "critical"
    action = "kill"
    prevents = "the shell session relayed over the network connection"
    window_ns = 120 * NS

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        super().__init__(settings, limits)
        # a command shell's stdout pipe -> the shell; a reader's process -> its stdin pipe
        self._shell_out: BoundedState[str, tuple[int, str, tuple[str, ...], str]] = self.state()
        self._reader_of: BoundedState[str, ProcKey] = self.state()
        self._stdin_of: BoundedState[ProcKey, str] = self.state()

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        if self.prov is None:
            return []
        now = ev.time_ns
        if isinstance(ev, NetEvent):
            if ev.op != "connect" or ev.family not in ("inet", "inet6") \
                    or ev.protocol not in ("tcp", ""):
                return []
            pipe = self._stdin_of.get(proc_key(ev), now)
            shell = self._shell_out.pop(pipe) if pipe else None
            if shell is None:
                return []
            return [self._hit(shell, f"{ev.daddr}:{ev.dport}", base(ev.proc.exe), ev.proc.pid,
                              pipe or "")]
        if not isinstance(ev, ExecEvent) or not _stream(ev.stdin):
            return []   # both branches below want a pipe (or, for a shell, a socket) on fd 0
        key = proc_key(ev)
        if not _command_shell(ev, self.trust):
            if ev.stdin.startswith("pipe:"):
                self._stdin_of.put(key, now, ev.stdin)
                self._reader_of.put(ev.stdin, now, key)
                shell = self._shell_out.get(ev.stdin, now)
                peer = self.prov.netted(key, now)
                if shell is not None and peer is not None:
                    self._shell_out.pop(ev.stdin)
                    return [self._hit(shell, peer, base(ev.proc.exe), ev.proc.pid, ev.stdin)]
            return []
        shell = (ev.proc.pid, ev.proc.exe, tuple(ev.argv), _shell_kind(ev, self.trust) or "")
        parent = ctx.procs.get(ev.proc.ppid)
        if parent is not None and parent.pid > 1:
            peer = self.prov.netted((parent.pid, parent.start_ns), now)
            if peer is not None and trusted_as(parent, PTY_HOSTS, self.trust) is None:
                return [self._hit(shell, peer, base(parent.exe) or parent.comm, parent.pid,
                                  ev.stdin, feeds="stdin")]
        if ev.stdout.startswith("pipe:"):
            rkey = self._reader_of.get(ev.stdout, now)
            peer = self.prov.netted(rkey, now) if rkey is not None else None
            if rkey is not None and peer is not None:
                reader = ctx.procs.get(rkey[0])
                return [self._hit(shell, peer, base(reader.exe) if reader else "", rkey[0],
                                  ev.stdout)]
            self._shell_out.put(ev.stdout, now, shell)
        return []

    def _hit(self, shell: tuple[int, str, tuple[str, ...], str], peer: str, relay: str,
             relay_pid: int, pipe: str, feeds: str = "stdout") -> Hit:
        pid, exe, argv, kind = shell
        how = "reads its commands from" if feeds == "stdin" else "writes its output to"
        hit = Hit(f"Shell {base(exe)} {how} {relay} ({relay_pid}), connected to {peer}",
                  {"argv": list(argv), "relay": relay, "relay_pid": relay_pid, "peer": peer,
                   "pipe": pipe, "prevented": self.prevents}, pid=pid)
        if feeds == "stdout" and not _interactive(kind or base(exe), argv):
            # `sh -s < gen | psql -h db`, `bash <<EOF | mysql`: an administrator's pipeline
            # has this shape too; only the interactive shell (`sh -i < fifo | openssl
            # ...`) is killed, the rest alerted (s14 review: a kill of benign pipelines)
            hit.severity, hit.action = "high", "alert"
            hit.evidence.pop("prevented")
        return hit


def _interactive(kind: str, argv: tuple[str, ...]) -> bool:
    """``-i`` (alone or in a cluster, before the first operand) or ``--interactive``,
    read by the option table of the shell family ``kind`` (``bash -o posix -i`` is
    interactive)."""
    return parse_shell_argv(kind, argv).interactive


# ---- a second name for a credential store ---------------------------------------------------

_CRED_CLASSES = frozenset({"credentials", "host-key", "user-keys", "cloud", "browser"})


class CredentialLink(SingleEvent):
    """A hard link to a credential store: the same inode under a name no path rule,
    watcher or file permission review knows (``ln /etc/shadow /tmp/x``), read later
    at leisure.  Made into a temp or home directory: high; elsewhere (a backup's
    ``cp -al`` tree): medium."""

    name = "behavior.credential_link"
    event_types = frozenset({"link"})
    attack = ("T1003.008", "T1552.001")
    severity = "high"
    action = "alert"

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        if not isinstance(ev, FileEvent) or ev.op != "link":
            return None
        cls = ev.sensitive if ev.sensitive in _CRED_CLASSES else ""
        if not cls and glob_any(ev.path, CRED_STORES) is None:
            return None
        if self.trusted(ev, ctx, PACKAGE_MANAGERS, depth=3):
            return None
        exposed = under(ev.path2, (*TMP_DIRS, "/home", "/root")) or \
            ev.path2.startswith(("/tmp", "/var/tmp", "/dev/shm"))
        hit = Hit(f"Hard link to credential store {ev.path}: {ev.path2} "
                  f"(by {base(ev.proc.exe) or ev.proc.comm})",
                  {"path": ev.path, "link": ev.path2, "class": cls or "credentials"},
                  severity=None if exposed else "medium")
        return stop_if_untrusted(self, ev, ctx, hit, f"the second name {ev.path2} of {ev.path}")


# ---- timestomping ------------------------------------------------------------------------------

# the options that set a chosen time (``--time=WORD`` only picks atime or mtime)
_TOUCH_TIME = frozenset({"-d", "-t", "-r", "--date", "--reference"})
_TOUCH_VALUED = _TOUCH_TIME
STOMP_DIRS = (*SYSTEM_DIRS, "/etc/", "/boot/", "/var/spool/cron/", "/root/.ssh/")


class Timestomp(SingleEvent):
    """``touch`` giving a system file a chosen time (``-d``, ``-t``, ``-r REF``): a
    dropped or changed binary made to look as old as its neighbours.  Matched on
    touch's documented options and the class of its operands (executables and
    configuration under the system directories), not on a command line."""

    name = "behavior.timestomp"
    event_types = frozenset({"exec"})
    exec_interest = ExecInterest(names=frozenset({"touch"}))   # match()'s one tool (s24)
    attack = ("T1070.006",)
    severity = "medium"
    action = "alert"

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        if not isinstance(ev, ExecEvent) or base(ev.proc.exe) != "touch":
            return None
        args = list(ev.argv[1:])
        chosen = False
        operands: list[str] = []
        skip = False
        for a in args:
            if skip:
                skip = False
                continue
            opt = a.split("=", 1)[0]
            if opt in _TOUCH_TIME or (a.startswith("-") and not a.startswith("--")
                                      and any(c in "dtr" for c in a[1:])):
                chosen = True
                # "-d X" / "-r X" / bundled "-md X": the value is the next word
                skip = "=" not in a and (opt in _TOUCH_VALUED or a[-1] in "dtr")
                continue
            if a.startswith("-") and a != "-":
                continue
            operands.append(a)
        if not chosen:
            return None
        cwd = ev.cwd or "/"
        paths = [o if o.startswith("/") else f"{cwd.rstrip('/')}/{o}" for o in operands]
        hit = [p for p in paths if p.startswith(STOMP_DIRS)]
        if not hit or self.trusted(ev, ctx, PACKAGE_MANAGERS, depth=3):
            return None
        return Hit(f"Timestamp of {hit[0]} set by touch: {' '.join(ev.argv)[:120]}",
                   {"argv": list(ev.argv), "paths": hit})


# installed tools that copy or unpack files with their times (trusted by inode)
COPY_TOOLS = frozenset({"cp", "install", "ginstall", "tar", "bsdtar", "rsync", "cpio", "unzip",
                        "7z", "7za", "pax", "ar", "mv", "ln", "patch"})


class TimestompCall(SingleEvent):
    """A chosen modification time set on a system file by any program (s23): the
    kernel's ``utimes`` record (utimensat, futimens, utimes, utime with explicit times;
    "now" never crosses), so python ``os.utime``, perl ``utime``, a C program or a
    renamed touch are seen, not only touch's command line (:class:`Timestomp`).

    An installed copy or unpack tool (:data:`COPY_TOOLS`, by inode: ``cp -p``,
    ``install -p``, ``tar x``, ``rsync -t``) that wrote the file itself a moment before
    and then gives it a time is copying it: that process's own opens under the system
    directories that created or truncated the file are remembered (by path and by inode,
    per process, for :attr:`window_ns`) and its times on them are not a stomp; an open for
    write that leaves the content as it was excuses nothing, and any other program that
    writes a system binary and ages it (a dropper) is judged.  Package managers are
    trusted by inode."""

    name = "behavior.timestomp_call"
    event_types = frozenset({"open", "utimes"})
    read_opens = False   # only write-opens are remembered
    attack = ("T1070.006",)
    severity = "medium"
    action = "alert"
    window_ns = 300 * NS

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        super().__init__(settings, limits)
        # a process -> what it write-opened under STOMP_DIRS: paths and (dev, ino)
        self._wrote: BoundedState[ProcKey, set[object]] = self.state()

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        if not isinstance(ev, FileEvent):
            return None
        if ev.op == "open":
            # only a write that made the content new: created, or truncated (an open for
            # write of a binary it leaves as it was must not excuse the times it then sets)
            fresh = ev.created is True or bool(ev.flags & O_TRUNC) \
                or (ev.created is None and bool(ev.flags & O_CREAT))
            if fresh and ev.path.startswith(STOMP_DIRS):
                seen = self._wrote.setdefault(proc_key(ev), ev.time_ns, set)
                if len(seen) < 4096:
                    seen.add(ev.path)
                    if ev.ino:
                        seen.add((ev.dev, ev.ino))
            return None
        if ev.op != "utimes" or not ev.mode & UTIMES_MTIME or not ev.path.startswith(STOMP_DIRS):
            return None
        wrote = self._wrote.get(proc_key(ev), ev.time_ns)
        if wrote is not None and (ev.path in wrote or (ev.ino and (ev.dev, ev.ino) in wrote)) \
                and self.trusted(ev, ctx, COPY_TOOLS, depth=0):
            # an installed copy/unpack tool giving a file it just wrote its source's time;
            # any other program doing the same is a dropper aging its binary (s23 review 8)
            return None
        if self.trusted(ev, ctx, PACKAGE_MANAGERS, depth=3):
            return None
        when = ""
        if ev.mtime_set_ns is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ev.mtime_set_ns // NS)) + " UTC"
        return Hit(f"Modification time of {ev.path} set to {when or 'a chosen time'} by "
                   f"{base(ev.proc.exe) or ev.proc.comm}",
                   {"path": ev.path, "mtime_set": when, "atime_too": bool(ev.mode & UTIMES_ATIME),
                    "exe": ev.proc.exe})


# ---- exfiltration by upload ----------------------------------------------------------------------

UPLOAD_SOURCES = ("/etc/*", "/root/*", "/home/*/.ssh/*", "/home/*/.aws/*", "/home/*/.kube/*",
                  "/home/*/.gnupg/*", "/home/*/.config/gcloud/*", "/var/log/*", "/proc/*",
                  "/var/lib/*", "/home/*/.*history", "/home/*/.docker/*", "/home/*/.mozilla/*",
                  "/home/*/.config/google-chrome/*")


def _curl_uploads(args: list[str]) -> list[str]:
    out: list[str] = []
    for i, a in enumerate(args):
        nxt = args[i + 1] if i + 1 < len(args) else ""
        opt, _, joined = a.partition("=") if a.startswith("--") else (a[:2], "", a[2:])
        val = joined or nxt
        if opt in ("-T", "--upload-file"):
            out.append(val)
        elif opt in ("-d", "--data", "--data-binary", "--data-ascii", "--json") \
                and val.startswith("@"):
            out.append(val[1:])          # curl reads a file only for a leading @
        elif opt == "--data-urlencode" and "@" in val and "=" not in val.split("@", 1)[0]:
            out.append(val.split("@", 1)[1])   # "@file" or "name@file" ("a=b@c" is content)
        elif opt in ("-F", "--form") and ("=@" in val or "=<" in val):
            out.append(val.split("=", 1)[1][1:].split(";", 1)[0])
    return [p for p in out if p and p != "-"]


def _wget_uploads(args: list[str]) -> list[str]:
    out: list[str] = []
    for i, a in enumerate(args):
        for opt in ("--post-file", "--body-file"):
            if a.startswith(opt + "="):
                out.append(a.split("=", 1)[1])
            elif a == opt and i + 1 < len(args):
                out.append(args[i + 1])
    return out


class ExfilUpload(SingleEvent):
    """A downloader sending a local file out (curl ``-T``, ``-d @file``, ``-F f=@file``;
    wget ``--post-file``) when that file is a credential store (high) or a system,
    log or home-secret file (medium).  Uploads of the user's own work files (CI
    artefacts, reports) are not reported: the class of the file decides."""

    name = "behavior.exfil_upload"
    event_types = frozenset({"exec"})
    exec_interest = ExecInterest(names=frozenset({"curl", "wget", "wget2"}))   # match()'s (s24)
    attack = ("T1048", "T1567")
    severity = "medium"
    action = "alert"

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        if not isinstance(ev, ExecEvent):
            return None
        tool = base(ev.proc.exe)
        args = list(ev.argv[1:])
        files = _curl_uploads(args) if tool == "curl" else \
            _wget_uploads(args) if tool in ("wget", "wget2") else []
        if not files:
            return None
        cwd = ev.cwd or "/"
        paths = [f if f.startswith("/") else f"{cwd.rstrip('/')}/{f}" for f in files]
        cred = [p for p in paths if glob_any(p, CRED_STORES)]
        system = [p for p in paths if glob_any(p, UPLOAD_SOURCES)]
        if not cred and not system:
            return None
        what = (cred or system)[0]
        ev_: dict[str, Any] = {"argv": list(ev.argv), "files": cred or system}
        hit = Hit(f"{tool} uploads {what}: {' '.join(ev.argv)[:120]}", ev_,
                  severity="high" if cred else None)
        return stop_if_untrusted(self, ev, ctx, hit, f"the upload of {what}")


DEPTH_RULES: tuple[type[BehaviorRule], ...] = (RelayedShell, CredentialLink, Timestomp, TimestompCall,
                                               ExfilUpload)

__all__ = ["DEPTH_RULES", "RelayedShell", "CredentialLink", "Timestomp", "TimestompCall",
           "ExfilUpload"]
