"""The host's mount namespace, read once for every part that needs it.

The host is what pid 1 sees.  Where pid 1's ``ns/mnt`` is not ours to read (a
sandboxed root without ptrace rights over pid 1, as on this project's CI hosts)
kthreadd's is: pid 2 of the initial pid namespace is a kernel thread that never
leaves ``init_nsproxy``, checked by name, ``PF_KTHREAD`` and an unchanged start
time.  Where neither is readable (a pid namespace of the agent's own) the agent's
own namespace is the only answer, and it is said in the log.
"""

from __future__ import annotations

import logging
import os

from bastion.errors import KernelError, Location

log = logging.getLogger(__name__)

_PF_KTHREAD = 0x00200000


def kthreadd_mnt_ns() -> int | None:
    """The initial mount namespace through kthreadd; None where pid 2 is not that
    kernel thread (a pid namespace of our own) or cannot be read."""
    try:
        with open("/proc/2/stat", "rb") as fh:
            stat = fh.read()
        ino = os.stat("/proc/2/ns/mnt").st_ino
        with open("/proc/2/stat", "rb") as fh:
            again = fh.read()
    except OSError:
        return None
    head, sep, rest = stat.rpartition(b") ")
    fields = rest.split()
    if not sep or not head.endswith(b"(kthreadd") or len(fields) < 20 or \
            again.split(b") ")[-1].split()[19:20] != fields[19:20]:
        return None                                # not kthreadd, or pid 2 was reused
    return ino if int(fields[6]) & _PF_KTHREAD else None


def host_mnt_ns(where: str) -> int:
    """The host's mount namespace inode: pid 1's, else kthreadd's, else the agent's
    own (logged).  ``where`` names the caller in errors and the log.  KernelError when
    even the agent's own cannot be read, or pid 1's fails for another reason than
    permission (procfs missing: nothing here can be trusted)."""
    try:
        return os.stat("/proc/1/ns/mnt").st_ino
    except PermissionError:
        pass
    except OSError as e:
        raise KernelError(f"/proc/1/ns/mnt: {e.strerror}", errno=e.errno or 0,
                          location=Location(where)) from e
    kthread = kthreadd_mnt_ns()
    if kthread is not None:
        return kthread
    try:
        ino = os.stat("/proc/self/ns/mnt").st_ino
    except OSError as e:
        raise KernelError(f"/proc/self/ns/mnt: {e.strerror}", errno=e.errno or 0,
                          location=Location(where)) from e
    log.warning("%s: /proc/1/ns/mnt not readable: mount changes judged in the agent's "
                "own mount namespace (%d)", where, ino)
    return ino


Ident3 = tuple[int, int, int]     # (st_dev, st_ino, mount id) of a root directory


def root_ident(fd: int) -> Ident3:
    """(st_dev, st_ino, mnt_id) of the directory open at ``fd`` (the mount id as
    ``/proc/self/fdinfo`` gives it: the mount the directory *is*, not one stacked on it
    later).  OSError, ValueError when it cannot be read."""
    st = os.fstat(fd)
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            key, _, value = line.partition(b":")
            if key == b"mnt_id":
                return st.st_dev, st.st_ino, int(value)
    raise ValueError("fdinfo without mnt_id")


__all__ = ["host_mnt_ns", "kthreadd_mnt_ns", "root_ident", "Ident3"]


def in_init_pid_ns(proc: str = "/proc") -> bool:
    """Is this process in the initial pid namespace (its ``NSpid`` has one number)?
    False when its status cannot be read.  A kernel without ``NSpid`` (before 4.1) has
    one pid namespace that counts."""
    try:
        with open(f"{proc}/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        return False
    return True
