"""Without tamper protection there is nothing enrolled to check a server against, and
root can imitate Bastion's command line: such an impostor gets through the client's
name check.  What it gets is still useless (issue 13 item 11): the token never
travels, and the proof it captures is bound to its own pid and the real server's
nonce, so relayed to the real agent it is refused (and alerted)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BASTION, REPO, start_agent  # type: ignore[import-not-found]

IMPOSTOR = str(REPO / "tests" / "support" / "impostor.py")


def test_a_relaying_impostor_learns_nothing_and_opens_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    token = b"correct horse battery staple 42"
    good = tmp_path / "good.token"
    good.write_bytes(token + b"\n")
    good.chmod(0o600)
    agent = start_agent(tmp_path, "--quiet", "--maintenance-token-file", str(good))
    fake_sock, capture = tmp_path / "fake.sock", tmp_path / "captured"
    capture.touch()
    fake = subprocess.Popen([sys.executable, IMPOSTOR, str(fake_sock), str(capture),
                             f"relay={agent.socket}", "bastion.cli.main", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "listening"
        r = subprocess.run([BASTION, "stop", "--token-file", str(good), "--socket", str(fake_sock),
                            "--guardian-socket", str(tmp_path / "no-guardian.sock")],
                           env={**os.environ, "BASTION_PIN_ROOT": str(tmp_path / "no-pins")},
                           capture_output=True, text=True, timeout=60)
        wire = capture.read_bytes()
        assert r.returncode == 1 and "maintenance token refused: wrong token" in r.stderr, \
            (r.stdout, r.stderr)
        assert agent.proc.poll() is None                 # the relayed proof opened nothing
        assert b"auth.challenge" in wire and b'"sig"' in wire   # it did relay a proof
        for form in (token, base64.b64encode(token), token.hex().encode()):
            assert form not in wire
        deadline = time.monotonic() + 10
        rows: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline and not rows:
            out = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json",
                            "--rule", "bastion.tamper.bad-token").stdout
            rows = [json.loads(l) for l in out.splitlines() if l.strip()]
            time.sleep(0.2)
        assert rows and rows[0]["severity"] == "critical", rows
    finally:
        fake.kill()
        fake.wait(10)
        agent.stop()
