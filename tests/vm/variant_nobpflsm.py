"""A kernel with BPF trampolines but without `bpf` in lsm= (Ubuntu's default).

Run in the VM booted with that list (the rest of tests/vm needs BPF LSM):

    VM_LSM=lockdown,capability,landlock,yama,apparmor,tomoyo bash vm/run.sh tests/vm/variant_nobpflsm.py

Not named test_*.py: the default VM run (BPF LSM on, where it would only skip, and
CI=true fails skips) does not collect it; name it on the command line.  Skipped when
`bpf` is an active LSM.  The tier is compat (no in-hook deny) but the
events come from the kernel-hook sensor (fentry), and doctor says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bastion.enforce.tiers import probe  # noqa: E402
from bastion.events import FileEvent  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402
from test_hook_sensor_lsm import IO_URING_OPEN, _collect, _exited  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"


def _lsms() -> list[str]:
    try:
        return Path("/sys/kernel/security/lsm").read_text().strip().split(",")
    except OSError:
        return []


pytestmark = pytest.mark.skipif(
    not IN_VM or "bpf" in _lsms(),
    reason="runs in the test VM booted without bpf in lsm= (VM_LSM=..., see the docstring)",
)
REPO = Path(__file__).resolve().parents[2]


def test_tier_compat_events_from_hooks() -> None:
    report = probe()
    assert report.tier == "compat"
    assert report.event_source == "hooks"
    ev = report.capability("events")
    assert ev.available and ev.mechanism.startswith("kernel hooks") and "fentry" in ev.detail


def test_doctor_names_the_fentry_variant() -> None:
    r = subprocess.run([str(REPO / ".venv/bin/bastion"), "doctor"], capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "tier     compat" in r.stdout
    assert "events   hooks (BPF LSM off: events from fentry" in r.stdout, r.stdout


def test_io_uring_open_seen_without_bpf_lsm(tmp_path: Path) -> None:
    target = tmp_path / "ring-created"
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, [sys.executable, "-c", IO_URING_OPEN, str(target)], timeout=60)
            assert r.returncode == 5, r.stderr
            events = _collect(sensor, _exited(5))
        finally:
            sensor.close()
    assert any(isinstance(e, FileEvent) and e.op == "open" and e.path == str(target)
               for e in events), events
