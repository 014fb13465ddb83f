"""What a Sigma rule sees of a Bastion event: one flat string view per logsource.

Field names are the Bastion names the loader's pipeline maps Sigma's onto
(:data:`bastion.detect.sigma.loader.FIELD_MAPS`).  Every value is a string
(numbers as decimal text, ``Initiated`` as ``true``/``false``); a field Bastion
does not know is absent.  The auditd view is a list of synthesised audit
records (each a view with ``type``), as ``ausearch -i`` would print them.
"""

from __future__ import annotations

import os
import pwd
from typing import Final

from bastion.detect.engine import RuleContext
from bastion.events import (
    BpfEvent,
    CredEvent,
    Event,
    ExecEvent,
    FileEvent,
    KillEvent,
    MemfdEvent,
    NetEvent,
    PtraceEvent,
)

View = dict[str, str]

# Which event types feed each non-audit logsource.
LOGSOURCE_EVENTS: Final[dict[str, frozenset[str]]] = {
    "process_creation": frozenset({"exec"}),
    "file_event": frozenset({"open", "rename"}),
    "network_connection": frozenset({"connect", "accept"}),
}
# Which event types yield which audit record types.
AUDIT_EVENTS: Final[dict[str, frozenset[str]]] = {
    "EXECVE": frozenset({"exec"}),
    "PATH": frozenset({"exec", "open", "unlink", "rename", "chmod", "chown", "utimes"}),
    "SYSCALL": frozenset({"exec", "open", "unlink", "rename", "chmod", "chown", "utimes",
                          "memfd_create",
                          "connect", "bind", "listen", "accept", "ptrace", "kill", "bpf",
                          "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
                          "capset"}),
}
_FILE_SYSCALL: Final = {"open": "openat", "unlink": "unlinkat", "rename": "rename",
                        "chmod": "fchmodat", "chown": "fchownat", "utimes": "utimensat"}
_WRITE_INTENT: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
#: The open flags the views of a file event read (write intent; O_CREAT: the PATH
#: record's nametype): with its actor, op, path and path2 a file event's views are a
#: function of ``flags & FILE_VIEW_FLAGS`` (the Sigma like-event memo's key; s24)
FILE_VIEW_FLAGS: Final = _WRITE_INTENT


def write_intent(flags: int) -> bool:
    """An open that may create or change the file (Sysmon's FileCreate analogue)."""
    return bool(flags & _WRITE_INTENT)


class UserNames:
    """uid -> user name, cached; the number when the uid has no passwd entry."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, uid: int) -> str:
        name = self._cache.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                name = str(uid)
            if len(self._cache) < 4096:
                self._cache[uid] = name
        return name


def process_view(ev: ExecEvent, ctx: RuleContext, users: UserNames) -> View:
    p = ev.proc
    v: View = {
        "exe": p.exe or ev.filename,
        "cmdline": " ".join(ev.argv),
        "user": users(p.uid),
        "logon_id": str(p.uid),
        "pid": str(p.pid),
        "ppid": str(p.ppid),
    }
    if ev.cwd:
        v["cwd"] = ev.cwd
    parent = ctx.procs.get(p.ppid) if p.ppid else None
    if parent is not None:
        v["parent_exe"] = parent.exe
        v["parent_cmdline"] = " ".join(parent.cmdline)
    return v


def file_view(ev: FileEvent, users: UserNames) -> View | None:
    if ev.op == "open":
        if not write_intent(ev.flags):
            return None
        path = ev.path
    elif ev.op == "rename":
        path = ev.path2
    else:
        return None
    return {"path": path, "exe": ev.proc.exe, "pid": str(ev.proc.pid), "user": users(ev.proc.uid)}


def network_view(ev: NetEvent, users: UserNames) -> View | None:
    if ev.op not in ("connect", "accept"):
        return None
    v: View = {
        "initiated": "true" if ev.op == "connect" else "false",
        "exe": ev.proc.exe,
        "pid": str(ev.proc.pid),
        "user": users(ev.proc.uid),
    }
    if ev.daddr:
        v["daddr"] = ev.daddr
        v["dport"] = str(ev.dport)
    if ev.saddr:
        v["saddr"] = ev.saddr
        v["sport"] = str(ev.sport)
    if ev.protocol:
        v["protocol"] = ev.protocol
    return v


def _syscall(ev: Event, name: str) -> View:
    p = ev.proc
    return {"type": "SYSCALL", "SYSCALL": name, "success": "yes", "exe": p.exe,
            "comm": p.comm, "pid": str(p.pid), "ppid": str(p.ppid), "uid": str(p.uid),
            "euid": str(p.euid), "gid": str(p.gid)}


def audit_records(ev: Event) -> list[View]:
    """The audit records auditd would log for this event (decoded, as ``ausearch -i``)."""
    if isinstance(ev, ExecEvent):
        execve: View = {"type": "EXECVE", "argc": str(len(ev.argv))}
        for i, a in enumerate(ev.argv):
            execve[f"a{i}"] = a
        return [execve, _syscall(ev, "execve"),
                {"type": "PATH", "item": "0", "name": ev.filename or ev.proc.exe,
                 "nametype": "NORMAL"}]
    if isinstance(ev, FileEvent):
        name = _FILE_SYSCALL.get(ev.op)
        if name is None:
            return []
        out = [_syscall(ev, name)]
        if ev.op == "rename":
            out.append({"type": "PATH", "item": "0", "name": ev.path, "nametype": "DELETE"})
            out.append({"type": "PATH", "item": "1", "name": ev.path2, "nametype": "CREATE"})
        else:
            nametype = ("DELETE" if ev.op == "unlink"
                        else "CREATE" if ev.op == "open" and ev.flags & os.O_CREAT else "NORMAL")
            out.append({"type": "PATH", "item": "0", "name": ev.path, "nametype": nametype})
        return out
    if isinstance(ev, KillEvent):
        return [_syscall(ev, ev.syscall)]
    if isinstance(ev, (NetEvent, CredEvent)):
        return [_syscall(ev, ev.op)]
    if isinstance(ev, MemfdEvent):
        return [_syscall(ev, "memfd_create")]
    if isinstance(ev, PtraceEvent):
        return [_syscall(ev, {"VM_READV": "process_vm_readv", "VM_WRITEV": "process_vm_writev"}
                         .get(ev.request_name, "ptrace"))]
    if isinstance(ev, BpfEvent):
        return [_syscall(ev, "bpf")]
    return []


def audit_text(rec: View) -> str:
    """The record as one audit log line (what keyword searches run over)."""
    parts = [f"type={rec.get('type', '')}"]
    for k, v in rec.items():
        if k != "type":
            parts.append(f'{k}="{v}"' if " " in v or not v else f"{k}={v}")
    return " ".join(parts)
