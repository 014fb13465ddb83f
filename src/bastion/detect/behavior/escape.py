"""Container escape and abuse behaviours (issue 17 item 2).

Each rule looks at facts, never at a command line: the actor's container
(``ev.proc.container``, from :mod:`bastion.containers`), the file an event
names, and — live only, through :class:`ContainerProbes` — the kernel's own
view of the actor's mounts (``/proc/<pid>/mountinfo``) and mount namespace
(``/proc/<pid>/ns/mnt``).  Replay has no probes: the rules that need them stay
silent there rather than guess.

| rule | fact | ATT&CK |
|---|---|---|
| ``behavior.container_release_agent`` | a container process opens a cgroup ``release_agent`` or ``/proc/sys/kernel/core_pattern`` for writing | T1611 |
| ``behavior.container_host_write`` | a container process writes a file that its mount table maps to a host path outside the container's own root (a bind of ``/`` or of a system directory) | T1611 |
| ``behavior.container_host_namespace`` | a process in a container's cgroup runs in the host's mount namespace, or executes the host's own file at the host's path for it (``nsenter``/``setns``/``chroot`` into the host) | T1611 |
| ``behavior.container_block_mount`` | a container's mount table holds the root of a block-device filesystem (``mount /dev/vda /mnt``) | T1611, T1006 |
| ``behavior.container_runtime_socket`` | a container process connects a unix socket while its mount table exposes a runtime socket (docker, containerd, podman, cri-o) | T1610, T1611 |
| ``behavior.container_privileged`` | the first process seen in a container has CAP_SYS_ADMIN in the initial user namespace | T1610, T1611 |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Final

from bastion.detect.behavior.base import Hit, SingleEvent, RuleSettings
from bastion.detect.behavior.state import Limits
from bastion.detect.engine import OpenInterest, RuleContext
from bastion.events import Event, ExecEvent, FileEvent, HipsEvent, NetEvent
from bastion.hostns import kthreadd_mnt_ns

O_ACCMODE: Final = 0o3
O_CREAT: Final = 0o100
O_TRUNC: Final = 0o1000
RUNTIME_SOCKETS: Final = frozenset({"docker.sock", "containerd.sock", "podman.sock", "crio.sock",
                                    "dockershim.sock", "cri-dockerd.sock"})
RUNTIME_HELPERS: Final = ("runc", "crun", "conmon", "containerd-shim-runc-v2", "runsc")
# host directories whose files are the host's code, configuration or credentials
HOST_SYSTEM: Final = ("/etc", "/root", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot",
                      "/var/spool/cron", "/var/lib/kubelet", "/var/lib/docker", "/var/lib/containers",
                      "/run/containerd", "/home")
BLOCK_FS: Final = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "f2fs",
                             "jfs", "reiserfs", "ntfs", "ntfs3", "iso9660", "squashfs"})


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo: ``root`` is the path inside its filesystem that is
    mounted at ``point``; ``dev`` is ``major:minor``."""

    point: str
    root: str
    dev: str
    fstype: str
    source: str


def parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines()[:4096]:
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 5 or len(r) < 2:
            continue
        out.append(Mount(point=_unescape(f[4]), root=_unescape(f[3]), dev=f[2], fstype=r[0],
                         source=_unescape(r[1])))
    return out


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount a path is on (the last mounted at the longest matching point)."""
    best: Mount | None = None
    for m in mounts:
        p = m.point.rstrip("/")
        if (path == m.point or path.startswith(p + "/") or m.point == "/") and \
                (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


@dataclass(frozen=True)
class ContainerProbes:
    """Live look-ups (None in replay).  ``mounts(pid, cgroup)``: the mount table of
    the pid, or — the pid already gone (``touch``, ``logger`` are over before the
    event is read) — of a live process of the same container cgroup (they share
    the container's mount namespace); ``mnt_ns(pid)``; ``privileged(pid, cgroup)``:
    CAP_SYS_ADMIN effective in the initial user namespace (the same fallback); the
    host's mounts and mount namespace."""

    mounts: Callable[[int, str], list[Mount] | None]
    mnt_ns: Callable[[int], int | None]
    host_mounts: list[Mount]
    host_mnt_ns: int
    privileged: Callable[[int, str], bool | None] = lambda pid, cg: None
    # (kernel dev, ino) of a path as the host (the agent) sees it; None: no such file
    host_ident: Callable[[str], tuple[int, int] | None] = lambda path: None


def _read(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _ns(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _caps_admin(pid: int) -> bool | None:
    status, uid_map = _read(f"/proc/{pid}/status", 16384), _read(f"/proc/{pid}/uid_map", 4096)
    if status is None or uid_map is None:
        return None
    if uid_map.split()[:3] != ["0", "0", "4294967295"]:
        return False       # a user namespace: its capabilities are not the host's
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 21 & 1)
    return None


def live_container_probes(cgroup2: str = "/sys/fs/cgroup/unified") -> ContainerProbes:
    """The host is what pid 1 sees, or (pid 1 unreadable, as on some platforms)
    what kthreadd sees (:mod:`bastion.hostns`), or what the agent sees."""
    kthread = kthreadd_mnt_ns()       # pid 1 refused: kthreadd is in the initial one
    host = _ns(1) or kthread or _ns("self") or 0
    mi = (_read("/proc/1/mountinfo") or (_read("/proc/2/mountinfo") if kthread else None)
          or _read("/proc/self/mountinfo") or "")

    def members(cg: str) -> list[int]:
        if not cg.startswith("/") or ".." in cg.split("/"):
            return []
        procs = _read(f"{cgroup2}{cg}/cgroup.procs", 65536) or ""
        return [int(x) for x in procs.split()[:16] if x.isdigit()]

    def mounts(pid: int, cg: str) -> list[Mount] | None:
        for p in (pid, *members(cg)):
            t = _read(f"/proc/{p}/mountinfo")
            if t is not None:
                return parse_mountinfo(t)
        return None

    def privileged(pid: int, cg: str) -> bool | None:
        for p in (pid, *members(cg)):
            v = _caps_admin(p)
            if v is not None:
                return v
        return None

    def host_ident(path: str) -> tuple[int, int] | None:
        from bastion.abi import kernel_dev

        try:
            st = os.stat(path)
        except OSError:
            return None
        return kernel_dev(st.st_dev), st.st_ino

    return ContainerProbes(mounts=mounts, mnt_ns=_ns, host_mounts=parse_mountinfo(mi),
                           host_mnt_ns=host, privileged=privileged, host_ident=host_ident)


def host_path(m: Mount, path: str, host: list[Mount]) -> str | None:
    """Where the file at ``path`` (on container mount ``m``) is on the host: through a
    host mount of the same filesystem (same dev) whose root contains ``m.root``."""
    rel = path[len(m.point.rstrip("/")):] if m.point != "/" else path
    inside = (m.root.rstrip("/") + rel) or "/"
    for h in sorted(host, key=lambda x: len(x.root), reverse=True):
        if h.dev != m.dev:
            continue
        hr = h.root.rstrip("/")
        if inside == h.root or inside.startswith(hr + "/") or h.root == "/":
            tail = inside[len(hr):] if h.root != "/" else inside
            return (h.point.rstrip("/") + tail) or "/"
    return None


def _write_intent(ev: Event) -> str | None:
    if isinstance(ev, FileEvent):
        if ev.op == "open":
            return ev.path if ev.flags & (O_ACCMODE | O_CREAT | O_TRUNC) else None
        if ev.op in ("rename", "link"):
            return ev.path2
        if ev.op in ("chmod", "chown", "unlink"):
            return ev.path
    if isinstance(ev, HipsEvent) and ev.op in ("open-write", "create", "rename", "unlink"):
        return ev.path
    return None


class _ContainerRule(SingleEvent):
    needs_probes = False

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 cprobes: ContainerProbes | None = None) -> None:
        super().__init__(settings, limits)
        self.cprobes = cprobes

    def evidence(self, ev: Event) -> dict[str, object]:
        c = ev.proc.container
        return {"container": c.to_json() if c else None, "exe": ev.proc.exe}


class ReleaseAgentWrite(_ContainerRule):
    name = "behavior.container_release_agent"
    event_types = frozenset({"open", "hips"})
    read_opens = False   # a read-only open has no written path: nothing to match
    # match()'s two names: a release_agent anywhere, core_pattern under /proc/
    write_interest = OpenInterest(prefixes=("/proc/",), globs=("release_agent", "*/release_agent"))
    attack = ("T1611",)
    severity = "critical"
    description = ("A container process opened a cgroup release_agent or the kernel's "
                   "core_pattern for writing: both make the host kernel run a program as root "
                   "outside the container.")

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        c = ev.proc.container
        path = _write_intent(ev)
        if c is None or not path:
            return None
        base = os.path.basename(path)
        if base == "release_agent":
            what = "a cgroup release_agent"
        elif path.endswith("/sys/kernel/core_pattern") and path.startswith("/proc/"):
            what = "the kernel core_pattern"
        else:
            return None
        return Hit(f"Container {c.runtime}:{c.id[:12]} process {ev.proc.exe or ev.proc.comm} "
                   f"opened {what} for writing: {path}", {**self.evidence(ev), "path": path})


class HostPathWrite(_ContainerRule):
    name = "behavior.container_host_write"
    event_types = frozenset({"open", "rename", "link", "chmod", "chown", "unlink", "hips"})
    read_opens = False   # a read-only open has no written path: nothing to match
    attack = ("T1611",)
    severity = "high"
    description = ("A container process wrote a host file through a mount: the host's root "
                   "filesystem, or a host system directory, bound into the container.")

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        c = ev.proc.container
        path = _write_intent(ev)
        if c is None or not path or self.cprobes is None or not path.startswith("/"):
            return None
        mounts = self.cprobes.mounts(ev.proc.pid, c.cgroup)
        if not mounts:
            return None
        m = mount_of(mounts, path)
        if m is None or m.point == "/":
            return None     # the container's own root filesystem
        hp = host_path(m, path, self.cprobes.host_mounts)
        if hp is None:
            return None     # not a filesystem the host has mounted (a volume, tmpfs, ...)
        whole_root = m.root == "/" and any(h.point == "/" and h.dev == m.dev
                                           for h in self.cprobes.host_mounts)
        if not (whole_root or under(hp, HOST_SYSTEM)):
            return None
        why = "the host's root filesystem" if whole_root else f"host directory {m.root}"
        return Hit(f"Container {c.runtime}:{c.id[:12]} wrote host file {hp} through {why} "
                   f"mounted at {m.point}",
                   {**self.evidence(ev), "path": path, "host_path": hp, "mount": m.point,
                    "mount_root": m.root})


class HostNamespace(_ContainerRule):
    name = "behavior.container_host_namespace"
    event_types = frozenset({"exec"})
    attack = ("T1611",)
    severity = "critical"
    description = ("A process in a container's cgroup runs in the host's mount namespace: "
                   "it entered the host (nsenter/setns from a privileged container).")

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        c = ev.proc.container
        if c is None or self.cprobes is None or not isinstance(ev, ExecEvent):
            return None
        # the runtime's own helpers (runc/crun init, conmon) start in the host namespace
        # before they join the container's: trusted by inode of the installed file only
        if self.trust.is_tool((ev.exe_dev, ev.exe_ino), RUNTIME_HELPERS):
            return None
        ns = self.cprobes.mnt_ns(ev.proc.pid)
        if ns is not None and self.cprobes.host_mnt_ns and ns == self.cprobes.host_mnt_ns:
            return Hit(f"Process {ev.proc.exe or ev.proc.comm} in container {c.runtime}:{c.id[:12]} "
                       f"runs in the host's mount namespace", {**self.evidence(ev), "mnt_ns": ns})
        # gone already (a short `nsenter ... /bin/true`), or chroot into a host bind: the
        # record itself says it executed the host's own file at the host's path for it
        exe = ev.proc.exe or ev.filename
        if ev.exe_ino and exe.startswith("/") and \
                self.cprobes.host_ident(exe) == (ev.exe_dev, ev.exe_ino):
            return Hit(f"Process in container {c.runtime}:{c.id[:12]} executed the host's {exe} "
                       "at the host's path: it sees the host's root filesystem (nsenter/setns or "
                       "chroot into the host)", {**self.evidence(ev), "host_file": exe})
        return None


class BlockDeviceMount(_ContainerRule):
    name = "behavior.container_block_mount"
    event_types = frozenset({"exec", "open", "connect"})
    attack = ("T1611", "T1006")
    severity = "critical"
    description = ("A container's mount table holds the root of a block-device filesystem "
                   "(a disk mounted from inside the container, or the host's root bound in).")

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 cprobes: ContainerProbes | None = None) -> None:
        super().__init__(settings, limits, cprobes)
        self._said = self.state()

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        c = ev.proc.container
        if c is None or self.cprobes is None:
            return None
        mounts = self.cprobes.mounts(ev.proc.pid, c.cgroup)
        for m in mounts or ():
            if m.point == "/" or m.root != "/" or m.fstype not in BLOCK_FS or m.dev.startswith("0:"):
                continue
            key = (c.id, m.point, m.dev)
            if self._said.get(key, ev.time_ns) is not None:
                continue
            self._said.put(key, ev.time_ns, True)
            return Hit(f"Container {c.runtime}:{c.id[:12]} has block device {m.source} ({m.dev}, "
                       f"{m.fstype}) mounted at {m.point}",
                       {**self.evidence(ev), "source": m.source, "dev": m.dev, "mount": m.point,
                        "fstype": m.fstype})
        return None


class RuntimeSocket(_ContainerRule):
    name = "behavior.container_runtime_socket"
    event_types = frozenset({"connect"})
    attack = ("T1610", "T1611")
    severity = "high"
    description = ("A container process connected a unix socket while a container runtime's "
                   "API socket is mounted into it: whoever holds that socket starts "
                   "containers as root on the host.")

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        c = ev.proc.container
        if c is None or self.cprobes is None or not isinstance(ev, NetEvent) or ev.family != "unix":
            return None
        for m in self.cprobes.mounts(ev.proc.pid, c.cgroup) or ():
            if os.path.basename(m.root) in RUNTIME_SOCKETS:
                return Hit(f"Container {c.runtime}:{c.id[:12]} process {ev.proc.exe or ev.proc.comm} "
                           f"connected a unix socket with runtime socket {m.root} mounted at {m.point}",
                           {**self.evidence(ev), "socket": m.root, "mount": m.point})
        return None


class PrivilegedStart(_ContainerRule):
    name = "behavior.container_privileged"
    event_types = frozenset({"exec"})
    attack = ("T1610", "T1611")
    severity = "high"
    description = ("A container started privileged (CAP_SYS_ADMIN in the host's user "
                   "namespace): nothing separates it from the host.")

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 cprobes: ContainerProbes | None = None) -> None:
        super().__init__(settings, limits, cprobes)
        self._said = self.state()

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        c = ev.proc.container
        if c is None or not isinstance(ev, ExecEvent) or self._said.get(c.id, ev.time_ns) is not None:
            return None
        if self.trust.is_tool((ev.exe_dev, ev.exe_ino), RUNTIME_HELPERS):
            return None   # runc/crun init holds every capability before it drops them
        live = self.cprobes.privileged(ev.proc.pid, c.cgroup) if self.cprobes else None
        if not (live or c.privileged):
            return None
        self._said.put(c.id, ev.time_ns, True)
        why = "CAP_SYS_ADMIN in the host's user namespace" if live else "the runtime's state says so"
        return Hit(f"Privileged container started: {c.runtime}:{c.id[:12]}"
                   f"{' (' + c.name + ')' if c.name else ''} ({why})", self.evidence(ev))


ESCAPE_RULES: Final = (ReleaseAgentWrite, HostPathWrite, HostNamespace, BlockDeviceMount,
                       RuntimeSocket, PrivilegedStart)

__all__ = ["ESCAPE_RULES", "ContainerProbes", "Mount", "parse_mountinfo", "live_container_probes",
           "host_path", "mount_of"]
