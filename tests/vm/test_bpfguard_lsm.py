"""lsm tier (inside the test VM): BPF program loads are refused except from
allowlisted executables — the integrity guard's in-kernel response.  Scoped
to a test cgroup with a dead-man deadline; the test process (outside the
cgroup) keeps loading freely."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.enforce.lsm import BpfLoadGuard  # noqa: E402
from bastion.events import LsmDenyEvent  # noqa: E402
from bastion.kernel.libbpf import BpfObject  # noqa: E402
from bastion.paths import bpf_object  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("BASTION_IN_VM") != "1",
    reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)")

LOADER = """\
import sys
from bastion.kernel.libbpf import BpfObject
from bastion.errors import BastionError
try:
    with BpfObject.open(sys.argv[1]) as o:
        o.load()
    print("loaded")
except BastionError as exc:
    print("refused:", exc)
"""


def test_only_allowlisted_loaders_may_load_bpf() -> None:
    obj = str(bpf_object("probe_compat.bpf.o"))
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    pin = Path("/sys/fs/bpf") / f"bastion-test-guard-{uuid.uuid4().hex[:8]}"
    with scoped_cgroup() as (cg, cgid):
        guard = BpfLoadGuard(cgroup_id=cgid, deadline_s=60, self_tgid=os.getpid())
        guard.open()
        try:
            guard.allow(Path(bpftool))
            py = run_in(cg, [sys.executable, "-c", LOADER, obj], timeout=60)
            assert py.stdout.startswith("refused:"), py.stdout + py.stderr
            assert "Operation not permitted" in py.stdout or "errno 1" in py.stdout
            tool = run_in(cg, [bpftool, "prog", "load", str(bpf_object("lsm_probe.bpf.o")), str(pin)],
                          timeout=60)
            assert tool.returncode == 0, tool.stderr
            with BpfObject.open(Path(obj)) as o:   # outside the cgroup: untouched
                o.load()
            time.sleep(0.1)
            evs = [e for e in guard.poll() or [] if isinstance(e, LsmDenyEvent)]
        finally:
            guard.close()
            if pin.exists():
                pin.unlink()
    assert evs and all(e.hook == "bpf_prog_load" for e in evs)
    assert Path(evs[0].path).name.startswith("python")
