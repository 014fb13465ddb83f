"""Learn mode: what a program did -> a least-privilege HIPS profile.

``Learner.observe`` sees events (live or replayed) with the process table,
keeps what the selected subject did, and ``profile()`` writes a policy that
allows exactly that — generalised so it still holds tomorrow: per-pid /proc
paths become /proc/, temporary files their directory, versioned libraries
a glob, and a directory with many touched files the directory itself — then
denies everything else those operations could touch.  The profile starts in
audit mode; ``bastion policy apply --mode enforce`` promotes it.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final

import yaml

from bastion.errors import ConfigError, Location
from bastion.events import Event, ExecEvent, FileEvent, KillEvent, NetEvent, PtraceEvent
from bastion.proctable import ProcessTable

_TEMP_DIRS: Final = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/user/")
_VERSIONED = re.compile(r"^(?P<base>.+\.so)(\.\d+)+$")
_MANY: Final = 8  # more distinct files than this in one directory -> the directory
_SELECTORS: Final = ("exe", "cgroup", "user", "uid")


@dataclass(frozen=True)
class Selector:
    kind: str      # exe | cgroup | user | uid
    value: str

    @classmethod
    def parse(cls, text: str) -> Selector:
        kind, sep, value = text.partition("=")
        if not sep or kind not in _SELECTORS or not value:
            raise ConfigError(f"selector {text!r}: expected exe=PATH|GLOB, cgroup=PATH, user=NAME "
                              "or uid=N", location=Location("--for"))
        if kind in ("exe", "cgroup") and not value.startswith("/"):
            raise ConfigError(f"selector {text!r}: {kind} must be an absolute path",
                              location=Location("--for"))
        if kind == "uid" and not value.isdigit():
            raise ConfigError(f"selector {text!r}: uid must be a number", location=Location("--for"))
        return cls(kind, value)

    def subject_yaml(self) -> dict[str, str]:
        return {self.kind: self.value}


def _open_op(flags: int) -> str:
    acc = flags & os.O_ACCMODE
    return "open-read" if acc == os.O_RDONLY and not flags & (os.O_CREAT | os.O_TRUNC) else "open-write"


def generalise(paths: set[str]) -> list[str]:
    """Paths -> policy objects (paths, globs, 'dir/' subtrees), sorted."""
    out: set[str] = set()
    by_dir: dict[str, set[str]] = defaultdict(set)
    for p in paths:
        if not p.startswith("/"):
            continue
        if p.startswith("/proc/") and p[6:].split("/", 1)[0].isdigit() or p.startswith("/proc/self/"):
            out.add("/proc/")
            continue
        temp = next((d for d in _TEMP_DIRS if p.startswith(d)), None)
        if temp:
            out.add(temp)
            continue
        if "/__pycache__/" in p:
            out.add(p[: p.index("/__pycache__/") + len("/__pycache__/")])
            continue
        m = _VERSIONED.match(p)
        if m:
            p = m.group("base") + ".*"
        by_dir[os.path.dirname(p)].add(p)
    for d, files in by_dir.items():
        if len(files) > _MANY:
            out.add(d.rstrip("/") + "/")
        else:
            out |= files
    # drop entries inside a kept subtree
    dirs = sorted(o for o in out if o.endswith("/"))
    return sorted(o for o in out if not any(o != d and o.startswith(d) for d in dirs))


@dataclass
class Learner:
    selector: Selector
    procs: ProcessTable
    cgroup_id: int = 0          # for cgroup selectors, resolved by the caller
    uid: int = -1               # for user selectors, resolved by the caller
    seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    events: int = 0

    def _matches(self, exe: str, uid: int, cgroup_id: int) -> bool:
        k = self.selector.kind
        if k == "exe":
            return fnmatch.fnmatchcase(exe, self.selector.value)
        if k == "cgroup":
            return cgroup_id == self.cgroup_id
        return uid == (self.uid if k == "user" else int(self.selector.value))

    def observe(self, ev: Event) -> None:
        if isinstance(ev, ExecEvent):
            before = self.procs.get(ev.proc.pid)
            pre_exe = before.exe if before and before.same_process(ev.proc.start_ns) else ""
            self.procs.update(ev)
            if pre_exe and self._matches(pre_exe, ev.proc.uid, ev.proc.cgroup_id):
                self.seen["exec"].add(ev.proc.exe)
                self.events += 1
            return
        self.procs.update(ev)
        ev = self.procs.enrich(ev)
        if not self._matches(ev.proc.exe, ev.proc.uid, ev.proc.cgroup_id):
            return
        self.events += 1
        if isinstance(ev, FileEvent):
            if ev.op == "open":
                self.seen[_open_op(ev.flags)].add(ev.path)
                if ev.flags & os.O_CREAT:
                    self.seen["create"].add(os.path.dirname(ev.path) + "/")
            elif ev.op in ("unlink", "rename", "chmod", "chown"):
                op = "chmod" if ev.op == "chown" else ev.op
                self.seen[op].add(os.path.dirname(ev.path) + "/")
                if ev.op == "rename" and ev.path2:
                    self.seen["create"].add(os.path.dirname(ev.path2) + "/")
        elif isinstance(ev, NetEvent):
            if ev.op == "connect" and ev.family in ("inet", "inet6") and ev.daddr:
                addr = f"[{ev.daddr}]" if ":" in ev.daddr else ev.daddr
                self.seen["connect"].add(f"{addr}:{ev.dport}" if ev.dport else addr)
            elif ev.op == "bind" and ev.family in ("inet", "inet6") and ev.sport:
                self.seen["bind"].add(f":{ev.sport}")
        elif isinstance(ev, (PtraceEvent, KillEvent)):
            target = self.procs.get(getattr(ev, "target_tgid", 0) or ev.target_pid)
            if target is not None and target.exe:
                self.seen["ptrace" if isinstance(ev, PtraceEvent) else "signal"].add(target.exe)

    def profile(self, name: str = "learned") -> str:
        """The policy document (YAML text, mode audit)."""
        subject = self.selector.subject_yaml()
        rules: list[dict[str, object]] = []
        file_ops = ("exec", "open-read", "open-write", "create", "unlink", "rename", "chmod",
                    "ptrace", "signal")
        for op in file_ops:
            objs = generalise(self.seen.get(op, set())) if op not in ("ptrace", "signal") \
                else sorted(self.seen.get(op, set()))
            if objs:
                rules.append({"name": f"{name}-{op}", "subject": dict(subject), "operations": [op],
                              "objects": objs, "action": "allow"})
        for op in ("connect", "bind"):
            objs = sorted(self.seen.get(op, set()))
            if objs:
                rules.append({"name": f"{name}-{op}", "subject": dict(subject), "operations": [op],
                              "objects": objs, "action": "allow"})
        deny_file = ["exec", "open-write", "create", "unlink", "rename", "chmod", "ptrace", "signal"]
        rules.append({"name": f"{name}-deny-other", "subject": dict(subject), "operations": deny_file,
                      "objects": ["any"], "action": "deny"})
        rules.append({"name": f"{name}-deny-other-net", "subject": subject,
                      "operations": ["connect", "bind"], "objects": ["any"], "action": "deny"})
        doc = {"version": 1, "mode": "audit", "default": "allow", "rules": rules}
        head = (f"# Learned by `bastion learn --for {self.selector.kind}={self.selector.value}` "
                f"from {self.events} events.\n# Review it, run it in audit mode, then promote it: "
                "bastion policy apply FILE --mode enforce\n")
        return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
