"""`bastion stop` needs the maintenance token: a wrong one is refused and
alerted, the right one stops the agent; the alert chain stays intact."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BASTION, start_agent  # type: ignore[import-not-found]


def test_stop_needs_the_token(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    good, bad = tmp_path / "good.token", tmp_path / "bad.token"
    good.write_text("correct horse battery staple\n")
    bad.write_text("a wrong guess of sixteen+ bytes\n")
    good.chmod(0o600)
    bad.chmod(0o600)
    agent = start_agent(tmp_path, "--quiet", "--maintenance-token-file", str(good))
    try:
        assert not list(agent.data_dir.glob("*token*plain*"))
        stored = b"".join(p.read_bytes() for p in agent.data_dir.iterdir() if p.is_file())
        assert b"correct horse" not in stored  # only a salted hash is kept
        gsock = str(tmp_path / "no-guardian.sock")
        r = subprocess.run([BASTION, "stop", "--token-file", str(bad), "--socket", str(agent.socket),
                            "--guardian-socket", gsock], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "maintenance token refused" in r.stderr
        assert agent.proc.poll() is None
        deadline = time.monotonic() + 10
        rows: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline and not rows:
            out = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json",
                            "--rule", "bastion.tamper.bad-token").stdout
            rows = [json.loads(l) for l in out.splitlines() if l.strip()]
            time.sleep(0.2)
        assert rows and rows[0]["severity"] == "critical"
        r = subprocess.run([BASTION, "stop", "--token-file", str(good), "--socket", str(agent.socket),
                            "--guardian-socket", gsock], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert agent.proc.wait(timeout=30) == 0
    finally:
        agent.stop()
    v = subprocess.run([BASTION, "log", "verify", "--data-dir", str(agent.data_dir)],
                       capture_output=True, text=True, timeout=60)
    assert v.returncode == 0 and "chain intact" in v.stdout
