"""The lsm tier on Debian's stock kernel (inside the test VM).

Every enforcing program here is scoped to a test cgroup and carries a
dead-man deadline; the test process itself stays outside the cgroup.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.enforce.lsm import ScopedDeny  # noqa: E402
from bastion.enforce.tiers import probe  # noqa: E402
from bastion.events import ExecEvent, LsmDenyEvent  # noqa: E402
from bastion.sensors.bpf import BpfSensor  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)
REPO = Path(__file__).resolve().parents[2]


def test_tier_is_lsm() -> None:
    report = probe()
    assert report.tier == "lsm", report
    assert report.can_run
    for cap in ("exec_deny", "file_deny", "signal_ptrace_protection", "network_deny"):
        assert report.capability(cap).available, cap
        assert report.capability(cap).mechanism.startswith("lsm/")


def test_doctor_cli_reports_lsm() -> None:
    r = subprocess.run([str(REPO / ".venv/bin/bastion"), "doctor", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tier"] == "lsm"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    f = tmp_path / "secret.txt"
    f.write_text("classified\n")
    return f


def test_scoped_open_deny(secret: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        deny = ScopedDeny(cgroup_id=cgid, deadline_s=60)
        deny.open()
        try:
            deny.deny_inode(secret, rule_id=7)
            inside = run_in(cg, ["/bin/cat", str(secret)], timeout=30)
            assert inside.returncode != 0
            assert "Operation not permitted" in inside.stderr
            # outside the cgroup the same file opens
            assert secret.read_text() == "classified\n"
            time.sleep(0.05)
            evs = [e for e in deny.poll(0) or [] if isinstance(e, LsmDenyEvent)]
        finally:
            deny.close()
        after = run_in(cg, ["/bin/cat", str(secret)], timeout=30)
    assert after.returncode == 0 and after.stdout == "classified\n"  # detached: allowed again
    assert len(evs) == 1
    assert (evs[0].hook, evs[0].path, evs[0].rule_id, evs[0].ret) == ("file_open", str(secret), 7, -errno.EPERM)
    assert evs[0].proc.comm == "cat"


def test_scoped_exec_deny(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    shutil.copy("/bin/true", tool)
    with scoped_cgroup() as (cg, cgid):
        deny = ScopedDeny(cgroup_id=cgid, deadline_s=60)
        deny.open()
        try:
            deny.deny_inode(tool, rule_id=9)
            r = run_in(cg, [str(tool)], timeout=30)
            assert r.returncode != 0 and "Operation not permitted" in r.stderr
            assert subprocess.run([str(tool)]).returncode == 0  # outside the scope
            time.sleep(0.05)
            evs = [e for e in deny.poll(0) or [] if isinstance(e, LsmDenyEvent)]
        finally:
            deny.close()
    # the kernel opens the executable (file_open, FMODE_EXEC) before bprm_check:
    # whichever hook sees the denied inode first refuses it
    assert len(evs) == 1
    assert evs[0].hook in ("file_open", "bprm_check") and (evs[0].path, evs[0].rule_id) == (str(tool), 9)


def test_dead_man_deadline_expires(secret: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        deny = ScopedDeny(cgroup_id=cgid, deadline_s=2.0)
        deny.open()
        try:
            deny.deny_inode(secret, rule_id=1)
            assert run_in(cg, ["/bin/cat", str(secret)], timeout=30).returncode != 0
            time.sleep(2.5)
            late = run_in(cg, ["/bin/cat", str(secret)], timeout=30)
            assert late.returncode == 0, "deny outlived its deadline"
        finally:
            deny.close()


def test_tracepoint_events_flow(tmp_path: Path) -> None:
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, ["/bin/sh", "-c", f"echo x > {tmp_path}/o; exit 4"], timeout=30)
            assert r.returncode == 4
            events = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not any(e.type == "exit" and getattr(e, "exit_code", 0) == 4 for e in events):
                events += sensor.poll(0.05) or []
        finally:
            sensor.close()
    execs = [e for e in events if isinstance(e, ExecEvent)]
    assert any(e.argv[:2] == ("/bin/sh", "-c") for e in execs)
    assert any(e.type == "open" and getattr(e, "path", "") == f"{tmp_path}/o" for e in events)
    assert any(e.type == "exit" and getattr(e, "exit_code", None) == 4 for e in events)
