"""A clean stop says what stays (issue 11, item 7).

An unprotected ``bastion run`` that pinned HIPS enforcement removes it at a
clean stop unless ``--keep-pins``; the stop line says which.  With pins
kept, ``bastion status`` (no agent) reports the enforcement still active.

Scoped: the subject is a private copy of dash (its own inode), pins live
under a test pin root removed in teardown, enforcement has a dead-man
deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from conftest import BASTION, AgentProc, start_agent  # type: ignore[import-not-found]


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = Path("/sys/fs/bpf") / f"bastion-test-{uuid.uuid4().hex[:8]}"
    yield root
    if root.exists():
        subprocess.run([BASTION, "reset", "--emergency", "--pin-root", str(root)], timeout=60)
    assert not root.exists()


def _policy(tmp: Path) -> tuple[Path, Path]:
    demo = tmp / "demo_sh"
    shutil.copy("/bin/dash", demo)
    pol = tmp / "p.yaml"
    pol.write_text(f"version: 1\nmode: enforce\nrules:\n"
                   f"  - {{name: demo-no-id, subject: {{exe: {demo}}}, operations: [exec],\n"
                   f"     objects: [/usr/bin/id], action: deny}}\n")
    return demo, pol


def _runs_id(demo: Path) -> bool:
    r = subprocess.run([str(demo), "-c", "/usr/bin/id"], capture_output=True, text=True, timeout=30)
    return "uid=" in r.stdout


def _start(tmp: Path, pin_root: Path, pol: Path, *extra: str) -> AgentProc:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return start_agent(tmp, "--quiet", "--policy", str(pol), "--pin-root", str(pin_root),
                       "--test-deadline", "120", *extra)


def _stop(agent: AgentProc) -> str:
    agent.proc.send_signal(signal.SIGINT)
    assert agent.proc.wait(timeout=30) == 0
    time.sleep(0.2)
    return "".join(agent.stderr)


def test_clean_stop_removes_the_hips_enforcement_it_pinned(tmp_path: Path, pin_root: Path) -> None:
    demo, pol = _policy(tmp_path)
    agent = _start(tmp_path, pin_root, pol)
    try:
        assert any((pin_root / "hips" / "links").iterdir())
        assert not _runs_id(demo)            # enforced while the agent runs
    finally:
        out = _stop(agent)
    assert "HIPS enforcement removed" in out, out
    assert not (pin_root / "hips").exists()
    assert _runs_id(demo)                    # nothing enforces with no agent


def test_keep_pins_leaves_enforcement_and_status_reports_it(tmp_path: Path, pin_root: Path) -> None:
    demo, pol = _policy(tmp_path)
    agent = _start(tmp_path, pin_root, pol, "--keep-pins")
    out = _stop(agent)
    assert "HIPS enforcement stays pinned" in out and "bastion reset --emergency" in out, out
    assert not _runs_id(demo)                # still denied: nobody records it
    st = subprocess.run([BASTION, "status", "--socket", str(tmp_path / "gone.sock"),
                         "--pin-root", str(pin_root)], capture_output=True, text=True, timeout=30)
    assert st.returncode == 1
    assert "not running" in st.stdout and "still active" in st.stdout and "hips" in st.stdout, st.stdout
    r = subprocess.run([BASTION, "reset", "--emergency", "--pin-root", str(pin_root)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert _runs_id(demo)
    st = subprocess.run([BASTION, "status", "--socket", str(tmp_path / "gone.sock"),
                         "--pin-root", str(pin_root)], capture_output=True, text=True, timeout=30)
    assert st.returncode == 1 and "nothing" in st.stdout
