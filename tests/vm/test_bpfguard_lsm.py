"""lsm tier (inside the test VM): BPF program loads are refused except from
allowlisted executables — the integrity guard's in-kernel response.  Scoped
to a test cgroup with a dead-man deadline; the test process (outside the
cgroup) keeps loading freely."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.enforce.lsm import BpfLoadGuard  # noqa: E402
from bastion.events import LsmDenyEvent  # noqa: E402
from bastion.kernel import bpffs  # noqa: E402
from bastion.kernel.libbpf import BpfObject  # noqa: E402
from bastion.paths import bpf_object  # noqa: E402
from bastion.store.db import Store  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402
from support.policies import default_policy  # noqa: E402

BASTION = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "bastion")

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
            # this test process stands in for the agent: a Python loader that is not its
            # direct child (here a grandchild through sh) is refused like any other
            py = run_in(cg, ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", LOADER, obj],
                        timeout=60)
            assert py.stdout.startswith("refused:"), py.stdout + py.stderr
            assert "Operation not permitted" in py.stdout or "errno 1" in py.stdout
            # the agent's own worker: a direct child running the agent's executable loads
            worker = run_in(cg, [sys.executable, "-c", LOADER, obj], timeout=60)
            assert worker.stdout.startswith("loaded"), worker.stdout + worker.stderr
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


def _wait(what: str, cond: Callable[[], object], timeout: float, agent: subprocess.Popen[bytes],
          log: Path) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert agent.poll() is None, f"the agent died ({agent.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def test_default_policy_refuses_bpftool_while_agent_and_worker_load(tmp_path: Path) -> None:
    """The shipped default policy on the lsm tier: `bpftool prog load` (a generic loader,
    not on the allowlist) and a Python loader are refused with an alert, while the agent
    and its integrity worker (a child running the agent's interpreter: exempt by
    identity, not by exe) keep loading BPF.  The agent runs inside the test cgroup;
    its guard acts only there (--test-cgroup-id) and only until --test-deadline."""
    pol = default_policy(tmp_path / "policy.yaml", tmp_path / "shielded")
    data, sock, log = tmp_path / "data", tmp_path / "agent.sock", tmp_path / "agent.log"
    pin_root = Path("/sys/fs/bpf") / f"bastion-test-{uuid.uuid4().hex[:8]}"
    pin = Path("/sys/fs/bpf") / f"bastion-test-tool-{uuid.uuid4().hex[:8]}"
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    with scoped_cgroup() as (cg, cgid), log.open("wb") as logf:
        agent = subprocess.Popen(
            ["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$@"', "sh", BASTION, "run",
             "--policy", str(pol), "--data-dir", str(data), "--socket", str(sock), "--quiet",
             "--pin-root", str(pin_root), "--test-deadline", "400", "--test-cgroup-id", str(cgid)],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            base = data / "integrity" / f"{platform.release()}.json"
            _wait("integrity baseline (the worker loads BPF)", base.exists, 300, agent, log)
            baseline = json.loads(base.read_text())
            for check in ("kernel_text", "syscall_dispatch", "hidden_tasks"):   # the BPF reader's
                assert check in baseline["checks"], (check, baseline.get("unavailable"))
            tool = run_in(cg, [bpftool, "prog", "load", str(bpf_object("lsm_probe.bpf.o")), str(pin)],
                          timeout=60)
            assert tool.returncode != 0 and not pin.exists(), f"bpftool loaded: {tool.stdout} {tool.stderr}"
            py = run_in(cg, [sys.executable, "-c", LOADER, str(bpf_object("probe_compat.bpf.o"))],
                        timeout=60)
            assert py.stdout.startswith("refused:"), py.stdout + py.stderr

            def denials() -> list[dict[str, object]]:
                with Store.open(data, readonly=True) as st:
                    return [r.data for r in st.alerts(limit=10000)
                            if r.data.get("rule") == "bastion.lsm_deny"]
            got = _wait("lsm_deny alerts for both loaders",
                        lambda: (lambda d: d if len(d) >= 2 else None)(denials()), 30, agent, log)
            paths = sorted(str(a["evidence"]["path"]) for a in got)  # type: ignore[index]
            assert any(p.endswith("/bpftool") for p in paths), paths
            assert any(Path(p).name.startswith("python") for p in paths), paths
            assert agent.poll() is None
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
            for p in (pin, ):
                if p.exists():
                    p.unlink()
            if pin_root.exists():
                bpffs.remove_pins(pin_root)
