"""The typed HIPS policy model (what the YAML says, validated, not yet resolved)."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from bastion.containers import Selector
from bastion.errors import Location


class Op(enum.Enum):
    EXEC = "exec"
    OPEN_READ = "open-read"
    OPEN_WRITE = "open-write"
    CREATE = "create"
    UNLINK = "unlink"
    RENAME = "rename"
    CHMOD = "chmod"
    CONNECT = "connect"
    BIND = "bind"
    PTRACE = "ptrace"
    SIGNAL = "signal"

    @property
    def is_network(self) -> bool:
        return self in (Op.CONNECT, Op.BIND)

    @property
    def targets_process(self) -> bool:
        return self in (Op.PTRACE, Op.SIGNAL)


class Action(enum.Enum):
    ALLOW = "allow"
    AUDIT = "audit"
    DENY = "deny"
    KILL = "kill"


class Mode(enum.Enum):
    LEARN = "learn"      # nothing enforced in the kernel; events recorded for `bastion learn`
    AUDIT = "audit"      # decisions reported, never enforced
    ENFORCE = "enforce"


class SubjectKind(enum.Enum):
    EXE = "exe"
    PARENT = "parent"
    USER = "user"
    CGROUP = "cgroup"
    CONTAINER = "container"   # container: {...} / host: true -> cgroup ids when applied
    EVERYONE = "everyone"


@dataclass(frozen=True)
class Subject:
    kind: SubjectKind
    values: tuple[str, ...] = ()      # exe/parent: paths or globs; user: names or uids; cgroup: paths
    inodes: tuple[tuple[int, int], ...] = ()  # exe_inode selectors: (dev, ino), kernel dev encoding
    container: Selector | None = None         # container / host selector

    def describe(self) -> str:
        if self.kind is SubjectKind.EVERYONE:
            return "everyone"
        if self.container is not None:
            return self.container.describe()
        vals = list(self.values) + [f"inode {d}:{i}" for d, i in self.inodes]
        return f"{self.kind.value} {', '.join(vals)}"


@dataclass(frozen=True)
class FileObject:
    pattern: str          # absolute path, glob, or directory (trailing "/" = the whole subtree)

    @property
    def is_dir(self) -> bool:
        return self.pattern.endswith("/")


@dataclass(frozen=True)
class NetObject:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None  # None = any address
    port: int = 0                                                  # 0 = any port

    def describe(self) -> str:
        net = str(self.network) if self.network else "any"
        return f"{net}:{self.port}" if self.port else net


@dataclass(frozen=True)
class AnyObject:
    pass


Object = FileObject | NetObject | AnyObject


@dataclass(frozen=True)
class Rule:
    name: str
    subject: Subject
    ops: tuple[Op, ...]
    objects: tuple[Object, ...]
    action: Action
    location: Location


@dataclass(frozen=True)
class HipsPolicy:
    mode: Mode = Mode.AUDIT
    default: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    location: Location = field(default_factory=lambda: Location("<policy>"))

    @property
    def empty(self) -> bool:
        return not self.rules and self.default is Action.ALLOW
