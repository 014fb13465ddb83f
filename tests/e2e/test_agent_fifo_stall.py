"""The real agent's event loop survives a FIFO among ransomed files (issue 13 item 5).

The attack as reported on the issue: under a data directory (here a fresh
/srv/bastion-test-* directory, one of the ransomware rule's data dirs), a
process rewrites 40 files with random bytes, renames them ``*.locked`` and
renames FIFOs among them.  Before the fix the agent's loop waited forever in
the entropy probe's ``open()`` of a FIFO while ``status`` still answered; now
the ransomware finding is raised, a later event is still stored, and ``ping``
reports a fresh loop heartbeat.  The ransomware rule runs dry (its kill-tree
is recorded as would-kill-tree), the shield is on the test's own directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from bastion.control import request
from bastion.store.db import Store
from support.policies import default_policy, default_text

from conftest import start_agent

ATTACK = r"""
import os, sys
root = sys.argv[1]
for i in range(40):
    p = os.path.join(root, f"doc{i}.txt")
    with open(p, "r+b") as fh:
        fh.write(os.urandom(4096))
    os.rename(p, p + ".locked")
    if i % 4 == 3:
        f = os.path.join(root, f"pipe{i}")
        os.mkfifo(f)
        os.rename(f, f + ".locked")
"""

PREPARE = r"""
import os, sys
for i in range(40):
    with open(os.path.join(sys.argv[1], f"doc{i}.txt"), "wb") as fh:
        fh.write(b"hello world\n" * 400)
"""


def _run_py(code: str, data: Path) -> subprocess.CompletedProcess[str]:
    # sh stays the parent (no exec): the python tree is rooted at itself, not at this test
    return subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", code,
                           str(data)], capture_output=True, text=True, timeout=60)


def test_fifo_among_ransomed_files_does_not_stop_the_agent(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    text = default_text().replace("behavior:\n  dry_run: false\n",
                                  "behavior:\n  dry_run: false\n  rules:\n"
                                  "    behavior.ransomware: {dry_run: true}\n")
    assert "behavior.ransomware: {dry_run: true}" in text
    policy = default_policy(tmp_path / "policy.yaml", tmp_path / "shielded", text)
    data = Path("/srv") / f"bastion-test-{uuid.uuid4().hex[:10]}"
    data.mkdir(parents=True)
    agent = start_agent(tmp_path / "agent", "--quiet", "--policy", str(policy))
    try:
        # through sh: the victim's and the attacker's process trees are their own, never
        # this test's (a mass write is judged per tree: this test must never be its root)
        r = _run_py(PREPARE, data)
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
        r = _run_py(ATTACK, data)
        assert r.returncode == 0, r.stderr
        marker = data / "after-the-attack"
        r = subprocess.run(["/bin/sh", "-c", f"echo done > {marker}"], timeout=30)
        assert r.returncode == 0
        deadline = time.monotonic() + 20
        found: list[dict[str, object]] = []
        seen = False
        while time.monotonic() < deadline and not (found and seen):
            with Store.open(agent.data_dir, readonly=True) as st:
                found = [a.data for a in st.alerts(rule="behavior.ransomware", limit=1000)
                         if "timed out" not in str(a.data.get("title"))]
                seen = any(e.data.get("path") == str(marker)
                           for e in st.events(types=["open"], limit=20000, newest=True))
            time.sleep(0.5)
        assert seen, "the loop stopped: an event after the attack never reached the store"
        assert found, "no ransomware alert"
        assert found[0]["severity"] == "critical", found[0]
        ping = request(agent.socket, "ping")
        age = ping["loop_heartbeat_age_s"]
        assert isinstance(age, float) and age < 5.0, ping
        st_ = request(agent.socket, "status")
        assert st_["loop_heartbeat_age_s"] < 5.0
    finally:
        for f in data.glob("pipe*.locked"):   # unfixed code: free a loop waiting in open()
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass   # no reader on this one
        agent.stop()
        shutil.rmtree(data)
