"""The agent as a process, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
BASTION = str(REPO / ".venv" / "bin" / "bastion")
sys.path.insert(0, str(REPO / "tests"))


@dataclass
class AgentProc:
    proc: subprocess.Popen[str]
    data_dir: Path
    socket: Path
    stderr: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"bastion {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def _pump(stream: object, sink: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)


def start_agent(tmp: Path, *extra: str, env: dict[str, str] | None = None,
                wait: bool = True) -> AgentProc:
    """``bastion run`` in ``tmp``; without ``--policy`` it runs the embedded default with the
    ransomware shield on ``tmp/shielded`` (tests mark only their own inodes)."""
    from support.policies import default_policy

    data, sock = tmp / "data", tmp / "ctl.sock"
    if "--policy" not in extra and "--replay" not in extra:
        extra = ("--policy", str(default_policy(tmp / "default-policy.yaml", tmp / "shielded")),
                 *extra)
    proc = subprocess.Popen(
        [BASTION, "run", "--data-dir", str(data), "--socket", str(sock), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    agent = AgentProc(proc, data, sock)
    threading.Thread(target=_pump, args=(proc.stderr, agent.stderr), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stdout, agent.stdout), daemon=True).start()
    if wait:
        deadline = time.monotonic() + 30
        while not any("bastion: running" in l for l in agent.stderr):
            if proc.poll() is not None or time.monotonic() > deadline:
                agent.stop()
                raise AssertionError("agent did not start: " + "".join(agent.stderr))
            time.sleep(0.05)
    return agent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProc]:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    a = start_agent(tmp_path, "--quiet")
    try:
        yield a
    finally:
        a.stop()
