"""Executable memory: the shellcode loader (ABI 2.1 records, :class:`MmapEvent`).

A loader writes code it received or decoded into memory and runs it: anonymous
memory mapped writable and executable, a W->X flip of a region it wrote (mprotect),
or a memfd / staged temp file mapped executable.  The sensors report only such
mappings (filtered in the kernel, ``bpf/lib/xmem.h``: ld.so loading installed
libraries never crosses the ring), once per process and kind within the dedup window.

Who does it legitimately: JIT runtimes (node, java, dotnet, pypy, luajit, browsers),
trusted by executable inode (:mod:`.trust`), never by name; libffi's closures in any
interpreter using ctypes/cffi callbacks (anonymous RWX memory, or a memfd mapped
executable: measured, python's ctypes callback maps RWX).  So:

* a process of **untrusted provenance** (:mod:`.provenance`: a downloaded binary or
  script, a fileless program, a decoded payload) mapping executable memory of any
  kind is stopped (high);
* a program whose only marks are that it runs from a temp dir (``tmp-binary``,
  ``tmp-script``: build products, scripts put there by hand) or is (under) a network
  service (``network-service``: services use libffi and PCRE's JIT) is alerted
  (medium) for anonymous executable memory, and not at all when it is an installed
  interpreter (libffi) or maps a file (its own libraries);
* an ordinary process that maps **anonymous** executable memory (RWX, or a W->X flip)
  and has itself connected over TCP/IP (before or after the mapping, whichever comes
  second fires) is alerted (medium): code fetched over the network and run from memory.
  Not when the process is an installed interpreter (python, perl, ruby, ... as the
  trusted file of its own name: libffi), nor for a memfd or temp-file mapping alone;
  under untrusted provenance all of these are stopped.

Limits (said): an installed python running a loader script of ordinary provenance
(written locally, not downloaded, not in a temp dir, not under a service) after a
connect is not alerted: its RWX memory looks like libffi's.  The sensor does not see reads, so "after a network read" is "a process
that connected"; a loader that maps its memory in one process and connects from
another (a parent) is judged by its provenance only.
"""

from __future__ import annotations

from typing import Any

from bastion.detect.behavior.base import BehaviorRule, Hit, base, is_interpreter
from bastion.detect.behavior.provenance import LOCAL_REASONS, block
from bastion.detect.behavior.state import BoundedState, ProcKey, proc_key
from bastion.detect.engine import RuleContext
from bastion.events import Event, MmapEvent, NetEvent

# JIT runtimes: anonymous executable memory and W->X flips are how they work (by
# executable inode under root-only system directories, :mod:`.trust`).
JIT_RUNTIMES = frozenset({"node", "nodejs", "java", "dotnet", "pypy", "pypy3", "luajit",
                          "chromium", "chrome", "firefox", "firefox-esr", "electron", "code",
                          "julia", "mono", "php", "php-fpm", "qemu-x86_64", "valgrind",
                          "gdb", "lldb"})
ANON_KINDS = frozenset({"anon", "write-exec", "w2x"})
# Provenance that alone does not stop a process for executable memory (alerted at most).
WEAK_REASONS = LOCAL_REASONS | {"network-service"}


def _mapping(ev: MmapEvent) -> dict[str, Any]:
    return {"op": ev.op, "why": list(ev.why), "prot": ev.prot, "path": ev.path or "anonymous",
            "addr": ev.addr, "length": ev.length}


def _what(ev: MmapEvent) -> str:
    if "w2x" in ev.why:
        return "flipped writable memory to executable (W->X)"
    if "write-exec" in ev.why:
        return "mapped writable+executable memory" + (f" of {ev.path}" if ev.path else "")
    if "anon" in ev.why:
        return "made anonymous memory executable"
    if "no-link" in ev.why:
        return f"mapped an in-memory file executable ({ev.path})"
    return f"mapped a file from a shared temp directory executable ({ev.path})"


class ExecMemory(BehaviorRule):
    name = "behavior.exec_memory"
    event_types = frozenset({"mmap", "mprotect", "connect"})
    attack = ("T1620", "T1055")
    severity = "medium"
    action = "alert"
    prevents = "code run from memory (a shellcode loader)"
    description = ("executable memory (RWX, W->X, memfd, staged temp file) in a process of "
                   "untrusted provenance, or anonymous executable memory in a networked process")

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # the first anonymous exec mapping of a process not yet networked; who fired (once each)
        self._mapped: BoundedState[ProcKey, dict[str, Any]] = self.state()
        self._fired: BoundedState[ProcKey, bool] = self.state()

    def _jit(self, ev: Event, ctx: RuleContext) -> bool:
        return self.trusted(ev, ctx, JIT_RUNTIMES, depth=0)

    def _interpreter(self, ev: Event, ctx: RuleContext) -> bool:
        """An installed interpreter (the trusted file of its own name): libffi closures."""
        name = base(ev.proc.exe)
        return is_interpreter(ev.proc.exe) and self.trusted(ev, ctx, (name,), depth=0)

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        key = proc_key(ev)
        now = ev.time_ns
        if self._fired.get(key, now) is not None:
            return []
        if isinstance(ev, NetEvent):
            return self._on_connect(ev, ctx, key, now)
        if not isinstance(ev, MmapEvent) or not ev.why:
            return []
        if ev.path and ev.path == ev.proc.exe:
            return []    # the kernel mapping a program's own image at exec
        if self._jit(ev, ctx):
            return []
        reasons, origin = self.untrusted(ev, ctx)
        anon = bool(set(ev.why) & ANON_KINDS) and not ev.path
        if reasons and set(reasons) <= WEAK_REASONS:
            # only "it runs from a temp dir" (a build product, a script put there) or "it
            # is (under) a network service" (services use libffi and PCRE's JIT): an
            # interpreter's RWX is libffi's, a file mapping its own library
            if not anon or self._interpreter(ev, ctx):
                return []
            self._fired.put(key, now, True)
            where = ("a network service" if "network-service" in reasons
                     else "a program run from a temporary directory")
            return [Hit(f"Executable memory in {where}: {ev.proc.exe or ev.proc.comm} {_what(ev)}",
                        {"mapping": _mapping(ev), "provenance": dict(reasons)})]
        if reasons:
            self._fired.put(key, now, True)
            hit = Hit(f"Executable memory in a process of untrusted provenance: "
                      f"{ev.proc.exe or ev.proc.comm} {_what(ev)}", {"mapping": _mapping(ev)})
            hit = block(hit, reasons, origin, ev, self.prevents)
            hit.severity = "high"
            return [hit]
        if not anon:
            return []    # a memfd (libffi) or temp file alone: judged by provenance only
        if self._interpreter(ev, ctx):
            return []    # libffi's closures: RWX memory in any ctypes/cffi callback user
        peer = self.prov.netted(key, now) if self.prov is not None else None
        if peer is None:
            if self._mapped.get(key, now) is None:
                self._mapped.put(key, now, _mapping(ev))
            return []
        self._fired.put(key, now, True)
        return [Hit(f"Shellcode loader pattern: {ev.proc.exe or ev.proc.comm} connected to {peer} "
                    f"and {_what(ev)}", {"mapping": _mapping(ev), "peer": peer})]

    def _on_connect(self, ev: NetEvent, ctx: RuleContext, key: ProcKey, now: int) -> list[Hit]:
        if ev.op != "connect" or ev.family not in ("inet", "inet6") or \
                ev.protocol not in ("tcp", ""):
            return []
        mapping = self._mapped.get(key, now)
        if mapping is None or self._jit(ev, ctx) or self._interpreter(ev, ctx):
            return []
        self._fired.put(key, now, True)
        peer = f"{ev.daddr}:{ev.dport}"
        return [Hit(f"Shellcode loader pattern: {ev.proc.exe or ev.proc.comm} made anonymous "
                    f"memory executable, then connected to {peer}",
                    {"mapping": mapping, "peer": peer})]


__all__ = ["ExecMemory", "JIT_RUNTIMES"]
