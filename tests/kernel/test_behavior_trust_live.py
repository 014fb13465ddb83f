"""Trust by inode holds on live exec events (issue 13 item 8): the (device, inode) the
kernel sensor reports for an executable is the one ExeTrust resolves from the
installed file, so the genuine /usr/bin/dpkg is the tool ``dpkg`` and a copy of it
in /tmp, or python renamed ``dpkg`` with prctl(PR_SET_NAME), is not.  The sensor
is scoped to a test cgroup; nothing is enforced."""

from __future__ import annotations

import shutil
import struct
import sys
import time
from pathlib import Path

from bastion.detect.behavior.base import trusted
from bastion.detect.behavior.trust import ExeTrust
from bastion.detect.engine import RuleContext
from bastion.events import Event, ExecEvent, FileEvent
from bastion.proctable import ProcessTable
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup

RENAME_AND_WRITE = r"""
import ctypes, sys
ctypes.CDLL(None).prctl(15, b"dpkg", 0, 0, 0)        # PR_SET_NAME
open(sys.argv[1], "w").write("x")
"""


def test_live_exec_identity_is_trusted_only_for_the_installed_file(tmp_path: Path) -> None:
    fake = tmp_path / "dpkg"
    shutil.copy2("/usr/bin/dpkg", fake)
    out = tmp_path / "written"
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            for argv in (["/usr/bin/dpkg", "--version"], [str(fake), "--version"],
                         [sys.executable, "-c", RENAME_AND_WRITE, str(out)]):
                r = run_in(cg, argv, timeout=30)
                assert r.returncode == 0, r.stderr
            procs = ProcessTable()
            evs: list[Event] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                    isinstance(e, FileEvent) and e.path == str(out) for e in evs):
                for ev in sensor.poll(0.05) or []:
                    procs.update(ev)
                    evs.append(procs.enrich(ev))
        finally:
            sensor.close()
    execs = {e.proc.exe: e for e in evs if isinstance(e, ExecEvent)}
    trust = ExeTrust()
    ctx = RuleContext(procs)
    real = execs["/usr/bin/dpkg"]
    assert (real.exe_dev, real.exe_ino) != (0, 0)
    assert trust.is_tool((real.exe_dev, real.exe_ino), {"dpkg"}) == "dpkg"
    assert trusted(real, ctx, {"dpkg"}, depth=0, trust=trust)
    copy = execs[str(fake)]
    assert trust.is_tool((copy.exe_dev, copy.exe_ino), {"dpkg"}) is None
    assert not trusted(copy, ctx, {"dpkg"}, depth=0, trust=trust)
    write = next(e for e in evs if isinstance(e, FileEvent) and e.path == str(out))
    assert write.proc.comm == "dpkg"                     # the name says dpkg...
    assert not trusted(write, ctx, {"dpkg"}, depth=3, trust=trust)   # ...the inode does not


# s31: a root of one's own in the agent's mount namespace: a descriptor of the genuine
# (static) busybox opened first, then chroot into one's tree and fexecve it as
# ``sh <the trusted script's path>``, which the shell resolves in the chroot
CHROOT_EXEC = r"""
import os, sys
fd = os.open("/bin/busybox", os.O_RDONLY)
os.chroot(sys.argv[1])
os.chdir("/")
os.execve(fd, ["sh", sys.argv[2], "install"], {})
"""
# s31 review: a process whose root another process can change after its exec (its
# fs_struct shared by clone(CLONE_FS): a sibling's chroot before the interpreter opens
# argv[1])
CLONE_FS_EXEC = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall(56, 0x200 | 17, 0, 0, 0, 0)    # clone(CLONE_FS | SIGCHLD), no new stack
if pid == 0:
    os.execv(sys.argv[1], ["sh", sys.argv[2], "install"])
assert pid > 0, ctypes.get_errno()
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
# s31 reviews 2 and 3: a seccomp filter a user installed answers the interpreter's calls
# (a supervisor hands it a descriptor of the user's script for its openat of argv[1]; an
# errno-0 rule makes that openat "return" fd 0, the user's stdin).  Here a filter of
# no consequence (notifying, with a listener when argv[3] says so, a syscall nobody
# makes): any filter installed under no_new_privs flags the exec
SECCOMP_NOTIF_EXEC = r"""
import ctypes, os, struct, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
prog = b"".join(struct.pack("<HBBI", *i) for i in (
    (0x20, 0, 0, 0),                  # ld [nr]
    (0x15, 0, 1, 999),                # jeq #999 (no such syscall)
    (0x06, 0, 0, 0x7fc00000),         # ret USER_NOTIF
    (0x06, 0, 0, 0x7fff0000)))        # ret ALLOW
buf = ctypes.create_string_buffer(prog)
fprog = struct.pack("<HxxxxxxQ", 4, ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0                                 # NO_NEW_PRIVS
fd = libc.syscall(317, 1, int(sys.argv[3]), ctypes.c_char_p(fprog))  # SET_MODE_FILTER, flags
assert fd >= 0, ctypes.get_errno()
if os.fork() == 0:                    # the supervisor: holds the listener
    time.sleep(5)
    os._exit(0)
os.execv(sys.argv[1], ["sh", sys.argv[2], "install"])
"""


def _static_elf(path: str) -> bool:
    """Is ``path`` a 64-bit ELF without a program interpreter (PT_INTERP)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:5] != b"\x7fELF\x02":
                return False
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def test_a_script_bind_mounted_over_in_another_mount_namespace_is_not_the_tool(
        tmp_path: Path) -> None:
    """s31: the attack as a user runs it (``unshare -Urm``; here root's ``unshare -m``,
    the same private mount namespace): their script bind-mounted over a trusted script's
    path, then ``sh <that path>``.  The agent resolved the path in its own namespace, found
    the genuine file and trusted the user's script as that tool.  And its chroot form
    (``unshare -Ur`` gives a user CAP_SYS_CHROOT in the agent's mount namespace): the
    genuine interpreter through a descriptor opened before the chroot, a sibling sharing
    the root (``clone(CLONE_FS)``) that chroots after the exec, or a seccomp supervisor
    answering the interpreter's openat with its own descriptor.  The exec record
    now says which namespace the process exec'd in and whether its root is the agent's,
    and a script path counts only in the agent's namespace under the agent's root."""
    import os
    import tempfile

    import pytest

    if not _static_elf("/bin/busybox"):
        pytest.skip("needs a static /bin/busybox (make deps installs busybox-static)")
    root = Path(tempfile.mkdtemp(prefix="bastion-trust-", dir="/run"))  # root-only, as /usr/sbin
    try:
        os.chmod(root, 0o755)
        tool = root / "dkms"
        tool.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(tool, 0o755)
        evil = tmp_path / "evil.sh"
        ran = tmp_path / "ran"
        evil.write_text(f"#!/bin/sh\necho evil > {ran}\n")
        jail = tmp_path / "jail"                         # the user's tree: their dkms there
        (jail / str(root).lstrip("/")).mkdir(parents=True)
        (jail / str(root).lstrip("/") / "dkms").write_text("echo jailed > /ran\n")
        sh = os.path.realpath("/bin/sh")
        swap = f"mount --bind {evil} {tool} && exec {sh} {tool} install"
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid)
            sensor.open()
            try:
                for argv in ([sh, str(tool), "install"], ["unshare", "-m", sh, "-c", swap],
                             [sys.executable, "-c", CHROOT_EXEC, str(jail), str(tool)],
                             [sys.executable, "-c", CLONE_FS_EXEC, sh, str(tool)],
                             [sys.executable, "-c", SECCOMP_NOTIF_EXEC, sh, str(tool), "8"],
                             [sys.executable, "-c", SECCOMP_NOTIF_EXEC, sh, str(tool), "0"],
                             ["env", "BASH_FUNC_cat%%=() { :; }", sh, str(tool), "install"]):
                    # a clean environment: the runner's own PYTHONPATH or exported
                    # functions would void the genuine exec's trust
                    r = run_in(cg, argv, timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
                    assert r.returncode == 0, (argv, r.stderr)
                procs = ProcessTable()
                execs: list[ExecEvent] = []
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and len(execs) < 7:
                    for ev in sensor.poll(0.05) or []:
                        procs.update(ev)
                        if isinstance(ev, ExecEvent) and ev.argv[1:2] == (str(tool),):
                            execs.append(ev)
            finally:
                sensor.close()
        assert ran.read_text() == "evil\n"                # the user's scripts are what ran
        assert (jail / "ran").read_text() == "jailed\n"
        assert len(execs) == 7, execs
        genuine, swapped, jailed, shared, supervised, filtered, exported = execs
        here = os.stat("/proc/self/ns/mnt").st_ino
        assert genuine.mnt_ns == here and not genuine.rooted, genuine
        assert swapped.mnt_ns not in (0, here) and swapped.rooted, swapped   # a copied mount
        assert jailed.mnt_ns == here and jailed.rooted, jailed
        assert shared.mnt_ns == here and shared.rooted, shared
        assert supervised.mnt_ns == here and supervised.rooted, supervised
        assert filtered.mnt_ns == here and filtered.rooted, filtered
        # an exported bash function is in the record's environment (and voids script trust)
        assert not exported.rooted and exported.env == ("BASH_FUNC_cat%%=() { :; }",), exported
        trust = ExeTrust((str(root), os.path.dirname(sh), "/bin", "/usr/bin"))
        ctx = RuleContext(procs)
        assert trusted(genuine, ctx, {"dkms"}, depth=0, trust=trust)
        assert not trusted(swapped, ctx, {"dkms"}, depth=0, trust=trust)
        assert not trusted(jailed, ctx, {"dkms"}, depth=0, trust=trust)
        assert not trusted(shared, ctx, {"dkms"}, depth=0, trust=trust)
        for ev in (supervised, filtered, exported):
            assert not trusted(ev, ctx, {"dkms"}, depth=0, trust=trust), ev
    finally:
        shutil.rmtree(root)


def test_a_process_seen_first_through_proc_keeps_script_trust_only_as_it_was_made() -> None:
    """s31 review 4: a root daemon that is a script and was running before the agent
    (fail2ban's server) lost its trust at every agent start, as every process first seen
    through /proc did.  Seeding now trusts a script path for a process that is root's in
    every uid, has no no_new_privs and no seccomp filter, shares the agent's namespace and
    root, and has none of the watched variables in its environment; a process first seen
    later through an event still gets none."""
    import subprocess

    from bastion.proctable import _own_root, _read_proc

    own = _own_root()
    assert own is not None
    clean = {"PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(["sleep", "30"], env=env) for env in (
        clean, {**clean, "BASH_FUNC_ls%%": "() { id; }"}, {**clean, "PYTHONPATH": "/tmp/x"})]
    nnp = subprocess.Popen(["/usr/bin/setpriv", "--no-new-privs", "sleep", "30"], env=clean)
    jailed = subprocess.Popen(["/usr/sbin/chroot", "/usr", "/bin/busybox", "sleep", "30"], env=clean)
    try:
        time.sleep(0.3)
        got = [_read_proc(Path("/proc"), p.pid, own) for p in (*procs, nnp, jailed)]
        assert all(e is not None for e in got), got
        assert [e.paths_ns for e in got if e is not None] == [own[0], 0, 0, 0, 0], got
        later = _read_proc(Path("/proc"), procs[0].pid)       # not seeding
        assert later is not None and later.paths_ns == 0
    finally:
        for p in (*procs, nnp, jailed):
            p.kill()
            p.wait()
