"""HIPS end to end: learn a small program, enforce the profile, see it still
work, and see a deviation blocked and alerted.

Scoped: the subject is a private copy of dash in tmp_path (its own inode), the
agent's pins live under a test pin root removed in teardown, and enforcement
carries a dead-man deadline (--test-deadline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from conftest import BASTION, start_agent  # type: ignore[import-not-found]

SCRIPT = """\
/usr/bin/cat /etc/hostname > /dev/null
echo ok > "$1/out.txt"
"""


def _bastion(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pin_root() -> object:
    root = Path("/sys/fs/bpf") / f"bastion-test-{uuid.uuid4().hex[:8]}"
    yield root
    if root.exists():
        subprocess.run([BASTION, "reset", "--emergency", "--pin-root", str(root)], timeout=60)
    assert not root.exists()


def test_learn_enforce_deviation_blocked(tmp_path: Path, pin_root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    demo = tmp_path / "demo_sh"
    shutil.copy("/bin/dash", demo)
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    work = tmp_path / "work"
    work.mkdir()
    # a crowded /tmp, as on a busy host (a CI run once failed here): the learned profile
    # allows writes under /tmp/, and the compat tier must not try to mark that tree
    crowd = tmp_path / "crowd"
    crowd.mkdir()
    for i in range(10_050):
        os.mkdir(crowd / str(i))
    profile = tmp_path / "profile.yaml"

    learn = subprocess.Popen([BASTION, "learn", "--for", f"exe={demo}", "--duration", "5s",
                              "-o", str(profile)], stderr=subprocess.PIPE, text=True)
    assert learn.stderr is not None
    assert "bastion: learning" in learn.stderr.readline()
    for _ in range(2):
        assert subprocess.run([str(demo), str(script), str(work)]).returncode == 0
    _, err = learn.communicate(timeout=60)
    assert learn.returncode == 0, err
    text = profile.read_text()
    assert "/usr/bin/cat" in text and "mode: audit" in text

    check = _bastion("policy", "check", str(profile))
    assert check.returncode == 0, check.stderr

    agent = start_agent(tmp_path, "--quiet", "--pin-root", str(pin_root), "--test-deadline", "120")
    try:
        sock = str(agent.socket)
        refused = _bastion("policy", "apply", str(profile), "--mode", "enforce", "--socket", sock)
        if agent.cli("status", "--socket", sock, "--json").stdout and \
                json.loads(agent.cli("status", "--socket", sock, "--json").stdout)["tier"] == "compat":
            # compat: the profile's unlink/rename/... denials cannot be refused here
            assert refused.returncode == 1 and "--allow-degraded" in refused.stderr
            assert "the running policy is unchanged" in refused.stderr
            applied = _bastion("policy", "apply", str(profile), "--mode", "enforce",
                               "--allow-degraded", "--socket", sock)
        else:
            applied = refused
        assert applied.returncode == 0, applied.stderr
        status = json.loads(agent.cli("status", "--socket", sock, "--json").stdout)
        assert status["policy_mode"] == "enforce" and status["policy_generation"] >= 1

        # the learned program still works
        assert subprocess.run([str(demo), str(script), str(work)]).returncode == 0
        assert (work / "out.txt").read_text() == "ok\n"
        # a deviation: it never ran /usr/bin/id while learning
        dev = subprocess.run([str(demo), "-c", "/usr/bin/id; echo after"], capture_output=True,
                             text=True, timeout=30)
        assert "uid=" not in dev.stdout
        # everyone else is untouched
        assert "uid=" in subprocess.run(["/usr/bin/id"], capture_output=True, text=True).stdout

        deadline = time.monotonic() + 10
        alerts: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline:
            r = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json", "--rule", "hips:*")
            alerts = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
            if any(a["hips"]["object"] == "/usr/bin/id" for a in alerts):
                break
            time.sleep(0.3)
        hit = [a for a in alerts if a["hips"]["object"] == "/usr/bin/id"]
        assert hit, alerts
        a = hit[0]
        assert a["rule"] == f"hips:learned-deny-other"
        assert a["action"] in ("deny", "kill") and a["hips"]["operation"] == "exec"
        assert a["enforced_by"] in ("lsm", "exec-kill")
        assert a["severity"] == "high"
    finally:
        assert agent.stop() == 0
