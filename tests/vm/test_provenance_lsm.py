"""Issue 15 on Debian's stock kernel (test VM): the hook sensor (lsm_events.bpf.o)
keeps the same kernel provenance map as the compat sensor, and the fanotify
provenance gate refuses a /tmp script's profile append there too (the lsm tier's
in-hook file_open decision on the map is not built: docs/threat-model.md)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.enforce.provgate import GateObject, ProvenanceGate  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from bastion.sensors.provenance import default_interpreters  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)


def test_hook_sensor_provenance_and_the_gate() -> None:
    root = Path(tempfile.mkdtemp(prefix="bprov-"))
    try:
        drop, home = root / "drop", root / "home"
        drop.mkdir()
        home.mkdir()
        profile = home / ".bashrc"
        profile.write_text("# profile\n")
        script = drop / "payload.sh"
        script.write_text(f"echo $$ > {root}/pid; echo evil >> {profile}\n")
        with scoped_cgroup() as (cg, cgid):
            sensor = HookSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
            sensor.open()
            try:
                prov = sensor.provenance()
                prov.set_dirs([str(drop)])
                prov.set_interpreters(default_interpreters())
                with ProvenanceGate(prov, scope_cgroup_id=cgid, deadline_s=60,
                                    decision_timeout_s=0.5, self_tgid=os.getpid()) as gate:
                    gate.start()
                    assert gate.apply([GateObject(str(profile), "persistence")]) == []
                    r = run_in(cg, ["/bin/sh", str(script)], timeout=20)
                    assert r.returncode != 0 and "Operation not permitted" in r.stderr
                    assert profile.read_text() == "# profile\n"
                    (d,) = gate.decisions(timeout_s=3)
                    assert d.action == "deny" and d.reasons == ("tmp-script",)
                    assert prov.get(int((root / "pid").read_text())) is None   # gone at exit
                    assert prov.errors() == 0
            finally:
                sensor.close()
    finally:
        shutil.rmtree(root)
