"""s16-gate item 3 on the lsm tier (Debian's stock 6.1 in the test VM): the kernel-first
sensor (lsm_events.bpf.o) reports ``mount_setattr`` and ``fspick`` at the exit of the
x86-64 syscall functions (fexit: no LSM hook on 6.1 sees either), and the log-clearing
rule raises a high alert when the target is a mount holding logs or must-stop objects.

s16-fixlog (review 3): only a call that succeeded, in the host's mount namespace, is
reported.  The guest's /var/log is bind-mounted onto itself; that bind mount is made
read-only and picked (reported: high, medium), then unmounted.  As nobody,
``mount_setattr("/var/log", RDONLY)`` and ``fspick("/")`` fail with EPERM: no record, no
finding (before: each was a high finding).  The sensor is scoped to the test cgroup.
Not run by s16-fixlog (no VM runs in that round)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.detect.behavior import behavior_rules  # noqa: E402
from bastion.detect.engine import Engine, Finding, RuleContext  # noqa: E402
from bastion.proctable import ProcessTable  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)

HEAD = ("import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)   # attr_set = MOUNT_ATTR_RDONLY\n"
        "def ms(path):\n"
        "    return libc.syscall(442, -100, path, 0, ctypes.byref(attr), 32)\n"
        "def fp(path):\n"
        "    return libc.syscall(433, -100, path, 0)\n")
NOBODY = HEAD + ("os.setgid(65534); os.setuid(65534)\n"
                 "assert ms(b'/var/log') == -1 and ctypes.get_errno() == 1\n"
                 "assert fp(b'/') == -1 and ctypes.get_errno() == 1\n")
ROOT = HEAD + ("assert ms(b'/var/log') == 0, ctypes.get_errno()\n"
               "fd = fp(b'/var/log'); assert fd >= 0, ctypes.get_errno(); os.close(fd)\n")


def test_the_hook_sensor_alerts_a_log_mount_made_read_only_or_picked(tmp_path: Path) -> None:
    import subprocess
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid)
        sensor.open()
        try:
            assert sensor._lo is not None
            assert not {"on_mount_setattr", "on_fspick"} & set(sensor._lo.missing)
            procs, engine = ProcessTable(), Engine(behavior_rules())
            ctx = RuleContext(procs)
            r = run_in(cg, [sys.executable, "-c", NOBODY], timeout=30)
            assert r.returncode == 0, r.stderr
            subprocess.run(["mount", "--bind", "/var/log", "/var/log"], check=True)
            try:
                r = run_in(cg, [sys.executable, "-c", ROOT], timeout=30)
            finally:
                subprocess.run(["umount", "/var/log"], check=True)
            assert r.returncode == 0, r.stderr
            found: list[Finding] = []
            seen: list[tuple[str, str]] = []
            end = time.monotonic() + 5
            while time.monotonic() < end:
                for ev in sensor.poll(0.05) or []:
                    procs.update(ev)
                    ev = procs.enrich(ev)
                    if ev.type in ("mount_setattr", "fspick"):
                        seen.append((ev.type, getattr(ev, "path", "")))
                    found += [f for f in engine.evaluate(ev, ctx)
                              if f.rule == "behavior.log_clearing"]
            assert seen == [("mount_setattr", "/var/log"), ("fspick", "/var/log")], seen
            assert [(f.severity, f.action, f.evidence["op"], f.evidence["path"])
                    for f in found] == [("high", "alert", "mount_setattr", "/var/log"),
                                        ("medium", "alert", "fspick", "/var/log")]
            assert not engine.errors
        finally:
            sensor.close()
