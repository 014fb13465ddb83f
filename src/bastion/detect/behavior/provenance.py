"""Per-process provenance: where a process's code came from, tracked from events.

The behaviour rules ask one question before they block a sensitive act
(persistence write, credential-store read, security-tool shutdown, log wipe):
*does the actor have an untrusted provenance?*  The same act by a trusted
administrator tool (by executable inode, :mod:`.trust`) is not alerted at all;
by a process of ordinary provenance (an administrator's shell) it is alerted;
by a process of untrusted provenance it is stopped.  Provenance, not the file
alone, decides.

Reasons (each carried by the process that gained it and by its descendants,
through fork events and, when forks were missed, through the ancestry walk):

* ``network-binary`` / ``network-script``: the executable (or the script an
  interpreter runs) was written by a process that had connected over TCP/IP
  (curl, wget, a script fetching a URL) and that is not a package installer;
* ``tmp-binary`` / ``tmp-script``: the executable or script lives in /tmp,
  /var/tmp, /dev/shm or /run/shm (world-writable, where droppers stage);
* ``fileless``: the executable is a memfd or an unlinked file;
* ``network-service``: the process (or an ancestor) listens or accepts on
  TCP/IP and is not a session root (systemd, sshd, ...): a web shell or an
  exploited service acts as its tree;
* ``decoded-payload``: a shell that reads its commands from a pipe fed by a
  decoder (``base64 -d``, ``xxd -r``, ...), set by the decoded-payload rule.

Hooks for the sensor's coming fields (loader environment, the script file of
interpreted execs, stdin pipes): :meth:`Provenance.taint` lets any rule add a
reason; the exec handling reads ``ev.argv`` for the script today.

State is bounded (:class:`BoundedState`: LRU caps and idle TTL), keyed by
``(pid, start_ns)`` so a reused pid inherits nothing.  Loopback peers count as
network for downloads (a tunnel's local end is how a dropper reaches back);
said in the threat model.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import Callable
from bastion.detect.behavior.base import (
    PACKAGE_MANAGERS, SHELLS, BehaviorRule, Hit, RuleSettings, base, is_interpreter, is_shell,
    norm_interp, package_installer, trusted_as, under,
)
from bastion.detect.behavior.state import BoundedState, Limits, ProcKey, proc_key
from bastion.detect.engine import RuleContext
from bastion.events import Event, ExecEvent, FileEvent, ForkEvent, NetEvent

TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/shm")
# Reasons an administrator's own interactive session may carry (running a script
# or a build product from /tmp by hand): alerted, not stopped.  Network,
# fileless, service and decoded-payload reasons are stopped in any session.
LOCAL_REASONS = frozenset({"tmp-script", "tmp-binary"})
# how many ancestors :meth:`Provenance.reasons` inherits reasons from (besides the actor)
REASON_DEPTH = 16
LOGIN_LINEAGE = frozenset({"sshd", "sshd-session", "login", "su", "sudo", "gdm-session-worker",
                           "lightdm", "tmux", "screen"})
O_ACCMODE, O_CREAT, O_TRUNC = 0o3, 0o100, 0o1000

# Processes that listen or accept by design and whose trees are sessions, not
# services an attacker exploits into a shell: trusted by inode, never by name.
SERVICE_EXEMPT = frozenset({"systemd", "init", "sshd", "sshd-session", "systemd-resolved",
                            "systemd-networkd", "systemd-logind", "containerd", "dockerd",
                            "tmux", "screen", "login", "agetty", "cron", "crond", "atd",
                            *PACKAGE_MANAGERS})
# Writers whose files are builds, not downloads (they may fetch dependencies).
BUILD_TOOLS = frozenset({"cc", "gcc", "g++", "clang", "ld", "ld.bfd", "ld.gold", "ld.lld",
                         "collect2", "as", "rustc", "cargo", "go", "make", "cmake", "ninja",
                         "javac", "git", "tar", "cp", "install", "strip", "objcopy"})


@dataclass
class Taint:
    reasons: dict[str, str]          # reason -> detail (path, peer, ...)
    origin: ProcKey                  # the process that gained the first reason


class Provenance(BehaviorRule):
    """Tracks provenance from the event stream; raises nothing itself.

    Placed first in the pack (:func:`bastion.detect.behavior.behavior_rules`),
    so every later rule sees the state this event produced."""

    name = "behavior.provenance"
    event_types = frozenset({"exec", "fork", "connect", "listen", "accept", "open", "rename"})
    attack = ("T1105",)
    severity = "info"
    action = "alert"
    description = "provenance tracking (no findings)"
    read_opens = False   # _track_write keeps nothing of a read-only open

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 stdio: Callable[[int], tuple[str, ...] | None] | None = None) -> None:
        super().__init__(settings, limits)
        self.stdio = stdio     # live only: the actor's fds 0-2 (is it on a terminal?)
        self._netted: BoundedState[ProcKey, str] = self.state()       # proc -> first peer
        self._service: BoundedState[ProcKey, str] = self.state()      # proc -> listen addr
        self._dropped: BoundedState[str, str] = self.state()          # path -> "writer peer"
        self._taint: BoundedState[ProcKey, Taint] = self.state()
        # live only: mirrors each reason (and "admin-tty", an administrator's interactive
        # shell) into the kernel's provenance map, where the decision paths read it
        # (bastion.sensors.provenance.publisher); the kernel sets the tmp/fileless ones itself
        self.publish: Callable[[ProcKey, str], None] | None = None

    # -- public questions

    def taint(self, key: ProcKey, now_ns: int, reason: str, detail: str) -> None:
        """Add ``reason`` to the process ``key`` (a hook for rules and new sensor fields)."""
        t = self._taint.get(key, now_ns)
        if t is None:
            t = Taint({}, key)
        fresh = reason not in t.reasons
        t.reasons.setdefault(reason, detail)
        self._taint.put(key, now_ns, t)
        if fresh and self.publish is not None:
            self.publish(key, reason)

    def reasons(self, ev: Event, ctx: RuleContext, depth: int = REASON_DEPTH) -> tuple[dict[str, str], ProcKey | None]:
        """The untrusted-provenance reasons of ``ev``'s actor (own and inherited), and the
        process that gained them first (the tree to stop); ({}, None) when it has none."""
        now = ev.time_ns
        out: dict[str, str] = {}
        origin: ProcKey | None = None
        keys = [proc_key(ev)]
        for anc in ctx.procs.ancestry(ev.proc.pid, depth + 1)[1:]:
            keys.append((anc.pid, anc.start_ns))
        for i, k in enumerate(keys):
            t = self._taint.get(k, now)
            if t is not None:
                for r, d in t.reasons.items():
                    out.setdefault(r, d)
                origin = t.origin if origin is None else origin
            svc = self._service.get(k, now)
            if svc is not None:
                out.setdefault("network-service", svc)
                if origin is None:
                    # stop the tree the service spawned, not the service (unless it acts itself)
                    origin = keys[i - 1] if i > 0 else k
        return out, origin

    def interactive_admin(self, ev: Event, ctx: RuleContext) -> str | None:
        """The login program of an administrator's interactive session ``ev``'s actor is
        in: stdin on a terminal and a login lineage (sshd, login, su, sudo, by inode);
        None otherwise, and always None under replay (no terminal to look at)."""
        if self.stdio is None:
            return None
        fds = self.stdio(ev.proc.pid)
        if not fds or not (fds[0].startswith("/dev/pts/") or fds[0].startswith("/dev/tty")):
            return None
        for anc in ctx.procs.ancestry(ev.proc.pid, 16)[1:]:
            name = trusted_as(anc, LOGIN_LINEAGE, self.trust)
            if name is not None:
                return name
        return None

    def from_network(self, path: str, now_ns: int) -> str | None:
        """Who wrote ``path`` after connecting out ("writer peer"), if a downloader did."""
        return self._dropped.get(path, now_ns)

    def reasons_of(self, key: ProcKey, now_ns: int) -> dict[str, str]:
        """The reasons recorded for the process ``key`` itself (no ancestry walk)."""
        t = self._taint.get(key, now_ns)
        out = dict(t.reasons) if t is not None else {}
        svc = self._service.get(key, now_ns)
        if svc is not None:
            out.setdefault("network-service", svc)
        return out

    def netted(self, key: ProcKey, now_ns: int) -> str | None:
        return self._netted.get(key, now_ns)

    # -- tracking

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        now = ev.time_ns
        key = proc_key(ev)
        if isinstance(ev, NetEvent):
            if ev.family not in ("inet", "inet6"):
                return []
            if ev.op == "connect" and ev.protocol in ("tcp", ""):
                if self._netted.get(key, now) is None:
                    self._netted.put(key, now, f"{ev.daddr}:{ev.dport}")
            elif ev.op in ("listen", "accept") and ev.proc.pid > 1 \
                    and self._service.get(key, now) is None and not self.trusted(
                        ev, ctx, SERVICE_EXEMPT, depth=0):
                self._service.put(key, now, f"{base(ev.proc.exe) or ev.proc.comm} {ev.op} "
                                            f"{ev.saddr}:{ev.sport}")
                if self.publish is not None:
                    self.publish(key, "network-service")
            return []
        if isinstance(ev, ForkEvent):
            t = self._taint.get(key, now)
            if t is not None and ev.child_pid:
                ckey = (ev.child_pid, ev.child_start_ns)
                # the child's own reasons (its exec delivered before this fork: s23's
                # priority ring) are kept; the parent's are added to them
                own = self._taint.get(ckey, now)
                self._taint.put(ckey, now, Taint({**t.reasons, **own.reasons}, t.origin)
                                if own is not None else Taint(dict(t.reasons), t.origin))
            svc = self._service.get(key, now)
            if svc is not None and ev.child_pid \
                    and self._service.get((ev.child_pid, ev.child_start_ns), now) is None:
                # a forked worker of the service is the service too; its exec'd children are its tree
                self._service.put((ev.child_pid, ev.child_start_ns), now, svc)
                # (the kernel copied the parent's map entry to the child at fork)
            return []
        if isinstance(ev, FileEvent) and ev.op in ("open", "rename"):
            self._track_write(ev, ctx, key, now)
            return []
        if isinstance(ev, ExecEvent):
            self._track_exec(ev, key, now)
            if self.publish is not None and is_shell(ev.proc.exe) \
                    and self.interactive_admin(ev, ctx) is not None:
                self.publish(key, "admin-tty")
        return []

    def _track_write(self, ev: FileEvent, ctx: RuleContext, key: ProcKey, now: int) -> None:
        if ev.op == "rename":
            got = self._dropped.pop(ev.path)
            if got is not None:
                self._dropped.put(ev.path2, now, got)
            return
        if not ev.flags & (O_ACCMODE | O_CREAT | O_TRUNC) or under(ev.path, ("/proc", "/sys", "/dev")):
            return
        peer = self._netted.get(key, now)
        if peer is None:
            return
        if package_installer(ev, ctx, self.trust) is not None or self.trusted(ev, ctx, BUILD_TOOLS, 0):
            return
        self._dropped.put(ev.path, now, f"{base(ev.proc.exe) or ev.proc.comm} {peer}")

    def _track_exec(self, ev: ExecEvent, key: ProcKey, now: int) -> None:
        exe = ev.proc.exe or ev.filename
        got = self.from_network(exe, now) if exe else None
        if got is not None:
            self.taint(key, now, "network-binary", f"{exe} (written by {got})")
        if exe and under(exe, TMP_DIRS):
            self.taint(key, now, "tmp-binary", exe)
        if exe.startswith("/memfd:") or (ev.exe_nlink == 0 and ev.exe_ino):
            self.taint(key, now, "fileless", exe or ev.filename)
        script = script_of(ev)
        if script:
            if under(script, TMP_DIRS):
                self.taint(key, now, "tmp-script", script)
            got = self.from_network(script, now)
            if got is not None:
                self.taint(key, now, "network-script", f"{script} (written by {got})")


def script_of(ev: ExecEvent) -> str | None:
    """The script file a shell or interpreter runs (its first non-option argument), as
    an absolute path (relative ones resolved against the exec's cwd); None for ``-c``
    code, stdin, or a process that is no interpreter.  A function of the executable,
    argv and cwd, kept for the last few thousand (four rules ask per exec; s24)."""
    argv = ev.argv
    return _script_of(ev.proc.exe, argv if type(argv) is tuple else tuple(argv), ev.cwd)


@functools.lru_cache(maxsize=4096)
def _script_of(exe: str, argv: tuple[str, ...], cwd: str) -> str | None:
    if not (is_shell(exe) or is_interpreter(exe)):
        return None
    args = list(argv[1:])
    if base(exe) == "busybox":
        # one binary, many applets: the applet is argv[0]'s name (a link such as sh),
        # or argv[1] when called as busybox; only its shells run a script file
        applet = base(argv[0]) if argv else "busybox"
        if applet == "busybox":
            applet, args = (args[0], args[1:]) if args else ("busybox", [])
        if applet not in SHELLS or applet == "busybox":
            return None
    # the short options that mean "code follows, no script file" (bundled too: sh -ec)
    fam = norm_interp(base(exe))
    letters = "cs" if is_shell(exe) else {"python": "cm", "python2": "cm", "python3": "cm",
                                                  "perl": "eE", "ruby": "e", "node": "ep",
                                                  "php": "r"}.get(fam, "ce")
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("-", "--command", "--eval") or (
                a.startswith("-") and not a.startswith("--") and any(c in letters for c in a[1:])):
            return None
        if a.startswith("-") and len(a) > 1:
            if a in ("-W", "-X", "-O", "-o", "--rcfile", "--init-file"):
                i += 1
            i += 1
            continue
        if a.startswith("/"):
            return a
        return (cwd or "/").rstrip("/") + "/" + a
    return None


def block(hit: Hit, reasons: dict[str, str], origin: ProcKey | None, ev: Event,
          prevented: str) -> Hit:
    """Turn ``hit`` into a block: critical, the untrusted tree stopped, the reasons and
    what was prevented in the evidence."""
    hit.severity = "critical"
    hit.evidence["provenance"] = dict(reasons)
    hit.evidence["prevented"] = prevented
    if origin is not None and origin[0] != ev.proc.pid:
        hit.pid, hit.roots = origin[0], (origin,)
        hit.action = "kill-tree"
        hit.evidence["origin_pid"] = origin[0]
    else:
        hit.action = "kill"
    hit.title = f"{hit.title} [untrusted provenance: {', '.join(sorted(reasons))}; stopped]"
    return hit


__all__ = ["Provenance", "Taint", "TMP_DIRS", "script_of", "block", "SERVICE_EXEMPT",
           "BUILD_TOOLS"]

