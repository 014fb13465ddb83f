"""Test leftovers named after their owner, and the sweep of those whose owner is dead.

A test session that is SIGKILLed (a CI timeout, an operator's ^C twice) runs no
teardown: its empty ``bastion-test-*`` cgroups, its ``/run/bastion-native-*`` copy of
the compiled helpers and its ``/sys/fs/bpf/bastion-test-*`` pins outlive it.  Sessions
run in parallel on this host, so a sweep may remove only what a *dead* process owned:
each name carries its owner, ``o<pid>_<start time in clock ticks>`` (the start time
defeats pid reuse), made by :func:`owned_name`.  Names without an owner (older
checkouts, other tools) are never touched; an owner-free name of the form
``bastion-test-<pid>`` or ``bastion-test-ident-<pid>`` (pins named by pid) is removed
only when no process has that pid.  A stale cgroup is removed only when empty (no
process in it or in a child); stale pins are unlinked (a program a live process holds
stays loaded by that process: unlinking drops only the pin's reference).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUN = Path("/run")
BPFFS = Path("/sys/fs/bpf")

_OWNER = re.compile(r"-o(\d+)_(\d+)-")   # no dot: bpffs refuses dots in names
_PID_ONLY = re.compile(r"^bastion-test-(?:ident-)?(\d{1,7})$")


def start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


def owner_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    start = start_ticks(pid)
    if start is None:
        raise ValueError(f"owner_tag: no process {pid}")
    return f"o{pid}_{start}"


def owned_name(prefix: str) -> str:
    """``<prefix>o<pid>_<start>-<random>`` for the calling process."""
    return f"{prefix}{owner_tag()}-{secrets.token_hex(5)}"


def owner_state(name: str) -> str:
    """``alive``, ``dead`` or ``unknown`` (no owner in the name)."""
    m = _OWNER.search(name)
    if m is not None:
        pid, start = int(m.group(1)), int(m.group(2))
        return "alive" if start_ticks(pid) == start else "dead"
    m = _PID_ONLY.match(name)
    if m is not None:
        return "alive" if start_ticks(int(m.group(1))) is not None else "dead"
    return "unknown"


@dataclass
class Swept:
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # dead owner, but busy: why

    def lines(self) -> list[str]:
        out = [f"stale test leftovers removed: {p}" for p in self.removed]
        return out + [f"stale test leftovers kept: {p}" for p in self.kept]


def _cgroup_busy(path: Path) -> str:
    """Why the cgroup tree at ``path`` cannot go ('' when every level is empty)."""
    for d in [path, *sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True)]:
        try:
            procs = (d / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            continue
        if procs:
            return f"{len(procs)} processes in {d}"
    return ""


def _remove_cgroup_tree(path: Path) -> None:
    # deepest first; rmdir of a cgroup removes its control files with it
    for d in sorted((p for p in path.rglob("*") if p.is_dir()),
                    key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    path.rmdir()


def sweep(cgroup_root: Path = CGROUP_ROOT, run: Path = RUN, bpffs: Path = BPFFS) -> Swept:
    """Remove the leftovers of dead owners (see the module docstring)."""
    out = Swept()
    for path in sorted(cgroup_root.glob("bastion-test-*")) if cgroup_root.is_dir() else []:
        if not path.is_dir() or owner_state(path.name) != "dead":
            continue
        busy = _cgroup_busy(path)
        if busy:
            out.kept.append(f"{path} ({busy})")
            continue
        try:
            _remove_cgroup_tree(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue   # another session swept it first
            out.kept.append(f"{path} ({exc.strerror})")
            continue
        out.removed.append(str(path))
    for pattern, base in (("bastion-native-*", run), ("bastion-test-*", bpffs)):
        for path in sorted(base.glob(pattern)) if base.is_dir() else []:
            if not path.is_dir() or owner_state(path.name) != "dead":
                continue
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                out.kept.append(f"{path} ({exc.strerror})")
                continue
            out.removed.append(str(path))
    return out
