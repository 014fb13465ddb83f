"""s16-gate item 3 on the lsm tier (Debian's stock 6.1 in the test VM): the kernel-first
sensor (lsm_events.bpf.o) reports ``mount_setattr`` and ``fspick`` at the exit of the
x86-64 syscall functions (fexit: no LSM hook on 6.1 sees either), and the log-clearing
rule raises a high alert when the target is a mount holding logs or must-stop objects.

Nothing is changed in the guest: each call is made invalid after the entry (``usize`` 0,
unknown fspick flags: EINVAL).  The sensor is scoped to the test cgroup; it only observes.
Before: lsm_events.bpf.o had no such program: no record, no alert."""

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

CODE = ("import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)   # attr_set = MOUNT_ATTR_RDONLY\n"
        "for path in (sys.argv[1].encode(), b'/var/log'):\n"
        "    r = libc.syscall(442, -100, path, 0, ctypes.byref(attr), 0)\n"
        "    assert r == -1 and ctypes.get_errno() == 22, (r, ctypes.get_errno())\n"
        "r = libc.syscall(433, -100, b'/var/log', 0x7fff0000)\n"
        "assert r == -1 and ctypes.get_errno() == 22, (r, ctypes.get_errno())\n")


def test_the_hook_sensor_alerts_a_log_mount_made_read_only_or_picked(tmp_path: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid)
        sensor.open()
        try:
            assert sensor._lo is not None
            assert not {"on_mount_setattr", "on_fspick"} & set(sensor._lo.missing)
            procs, engine = ProcessTable(), Engine(behavior_rules())
            ctx = RuleContext(procs)
            r = run_in(cg, [sys.executable, "-c", CODE, str(tmp_path)], timeout=30)
            assert r.returncode == 0, r.stderr
            found: list[Finding] = []
            seen: list[tuple[str, str]] = []
            end = time.monotonic() + 10
            while time.monotonic() < end and len(found) < 2:
                for ev in sensor.poll(0.05) or []:
                    procs.update(ev)
                    ev = procs.enrich(ev)
                    if ev.type in ("mount_setattr", "fspick"):
                        seen.append((ev.type, getattr(ev, "path", "")))
                    found += [f for f in engine.evaluate(ev, ctx)
                              if f.rule == "behavior.log_clearing"]
            assert ("mount_setattr", str(tmp_path)) in seen, seen
            assert [(f.severity, f.action, f.evidence["op"], f.evidence["path"])
                    for f in found] == [("high", "alert", "mount_setattr", "/var/log"),
                                        ("high", "alert", "fspick", "/var/log")]
            assert not engine.errors
        finally:
            sensor.close()
