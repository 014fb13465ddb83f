"""Trust by inode holds on live exec events (issue 13 item 8): the (device, inode) the
kernel sensor reports for an executable is the one ExeTrust resolves from the
installed file, so the genuine /usr/bin/dpkg is the tool ``dpkg`` and a copy of it
in /tmp, or python renamed ``dpkg`` with prctl(PR_SET_NAME), is not.  The sensor
is scoped to a test cgroup; nothing is enforced."""

from __future__ import annotations

import shutil
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
