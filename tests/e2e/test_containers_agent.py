"""Issue 17.1 end to end: `bastion run` on this host, a real podman container, and the
stored events of the container's processes carry its runtime, id and name (the
agent's assembly wires the container resolver); a host process's events carry none."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import start_agent

PODMAN = shutil.which("podman")
BUSYBOX = shutil.which("busybox")
BASE = ["--cgroup-manager=cgroupfs"]


@pytest.mark.skipif(PODMAN is None or BUSYBOX is None,
                    reason="podman and busybox-static (scripts/install-deps.sh)")
def test_agent_stores_container_context(tmp_path: Path) -> None:
    import os
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    root = tmp_path / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir(parents=True)
    shutil.copy2(str(BUSYBOX), root / "bin" / "busybox")
    for a in ("sh", "sleep"):
        (root / "bin" / a).symlink_to("busybox")
    name = f"bastion-test-{uuid.uuid4().hex[:8]}"
    agent = start_agent(tmp_path, "--quiet")
    try:
        cid = subprocess.run(
            [str(PODMAN), *BASE, "run", "-d", "--network=none", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024", "--name", name, "--rootfs", str(root),
             "/bin/sh", "-c", "exec /bin/sleep 30"],
            check=True, capture_output=True, text=True, timeout=120).stdout.strip()
        pid = int(subprocess.run([str(PODMAN), *BASE, "inspect", "-f", "{{.State.Pid}}", cid],
                                 check=True, capture_output=True, text=True, timeout=60).stdout)
        deadline = time.monotonic() + 20
        rows: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            r = agent.cli("events", "--data-dir", str(agent.data_dir), "--json", "--pid", str(pid))
            rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
            if any(e["type"] == "exec" and e.get("argv", [])[-1:] == ["30"] for e in rows):
                break
            time.sleep(0.5)
        execs = [e for e in rows if e["type"] == "exec"]
        assert execs, f"no exec of pid {pid} stored: {rows}"
        c = execs[-1].get("container")
        assert c is not None, execs[-1]
        assert (c["runtime"], c["id"], c["name"], c["verified"]) == ("podman", cid, name, True)
        st = json.loads(agent.cli("status", "--socket", str(agent.socket), "--json").stdout)
        assert st["containers"]["misses"] >= 1 and st["containers"]["cached"] >= 1, st["containers"]
        host = agent.cli("events", "--data-dir", str(agent.data_dir), "--json", "--pid",
                         str(agent.proc.pid))
        assert all("container" not in json.loads(line) for line in host.stdout.splitlines()
                   if line.strip())
    finally:
        subprocess.run([str(PODMAN), *BASE, "rm", "-f", "-t", "0", name], capture_output=True,
                       timeout=120)
        assert agent.stop() == 0
