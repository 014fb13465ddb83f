"""The compat tier's tmux/screen gate (``svcgate_compat.bpf.o``, s19-compatconnect) on
Debian's stock 6.1 kernel: its verifier takes the object (three classic tracepoint
programs sharing the hook sensor's ``prov``), and a /tmp script's tmux client is killed
at its connect to a clean server, the pane running nothing.  A compat host with an older
kernel (bpf not in lsm=, Ubuntu's list) runs exactly this object with this sensor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.enforce.svcgate_compat import CompatSocketGate  # noqa: E402
from bastion.enforce.svcgate_lsm import DEFAULT_SERVERS  # noqa: E402
from bastion.events import HipsEvent  # noqa: E402
from bastion.sensors.bpf import HookSensor  # noqa: E402
from bastion.sensors.provenance import default_interpreters  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)


def test_a_tmp_scripts_tmux_client_is_killed_at_its_connect_on_6_1() -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (make deps installs it)")
    root = Path(tempfile.mkdtemp(prefix="bsvcc-"))
    sock = root / "s"
    tenv = {"PATH": "/usr/bin:/bin", "TERM": "xterm", "HOME": str(root), "SHELL": "/bin/sh"}
    try:
        (root / "drop").mkdir()
        subprocess.run(["tmux", "-S", str(sock), "-f", "/dev/null", "new-session", "-d", "-s",
                        "adm", "/bin/sh"], env=tenv, check=True, timeout=30)
        with scoped_cgroup() as (cg, cgid):
            sensor = HookSensor(cgroup_id=cgid, classes=("exec",), ring_bytes=1 << 20)
            sensor.open()
            try:
                prov = sensor.provenance()
                prov.set_dirs([str(root / "drop")])
                assert prov.set_interpreters(default_interpreters()) >= 1
                gate = CompatSocketGate(prov, cgroup_id=cgid, deadline_s=120,
                                        self_tgid=os.getpid())
                gate.open()
                try:
                    assert gate.stats()["programs"] == 3
                    assert gate.apply_servers(DEFAULT_SERVERS) in ([], ["screen: no installed "
                                                                        "file: not entered"])
                    script = root / "drop" / "mux.sh"
                    script.write_text(f"#!/bin/sh\ntmux -S {sock} send-keys -t adm "
                                      f"'touch {root}/ran' Enter\necho rc=$?\n")
                    r = run_in(cg, ["/bin/sh", str(script)], timeout=60)
                    assert "rc=137" in r.stdout, r.stdout + r.stderr
                    recs: list[HipsEvent] = []
                    end = time.monotonic() + 5
                    while not recs and time.monotonic() < end:
                        recs += gate.poll(0.2)
                    assert [(e.action, e.enforced, e.mechanism, e.path) for e in recs] == [
                        ("kill", True, "connect-kill", str(sock))], recs
                    clean = run_in(cg, ["/bin/sh", "-c", f"tmux -S {sock} send-keys -t adm "
                                        f"'touch {root}/clean' Enter; echo rc=$?"], timeout=60)
                    assert "rc=0" in clean.stdout, clean.stdout + clean.stderr
                    end = time.monotonic() + 10
                    while not (root / "clean").exists() and time.monotonic() < end:
                        time.sleep(0.1)
                    assert (root / "clean").exists() and not (root / "ran").exists()
                finally:
                    gate.close()
            finally:
                sensor.close()
    finally:
        subprocess.run(["tmux", "-S", str(sock), "kill-server"], env=tenv, timeout=30)
        shutil.rmtree(root)
