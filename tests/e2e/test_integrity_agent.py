"""The kernel integrity guard in the agent, as a user runs it (default policy: on).

First start: the agent takes the baseline of this kernel release into
``<data dir>/integrity/<release>.json`` and says so (an info alert).  Next
start: the baseline is used, not retaken, and the first scan runs at once: a
scoped rogue BPF program loaded between the two starts (it signals only its
own loader, from a syscall tracepoint) is reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from bastion.integrity.baseline import release_path
from conftest import AgentProc, start_agent  # type: ignore[import-not-found]

_LOADER = """
import os, sys, time
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object
obj = BpfObject.open(bpf_object("test_rootkit_sig.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
obj.load()
link = obj.program("rk_getppid").attach()
print("ready", flush=True)
time.sleep(120)
"""


def _alerts(agent: AgentProc, rule: str) -> list[dict[str, Any]]:
    r = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json", "--rule", rule)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _wait_alerts(agent: AgentProc, rule: str, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = _alerts(agent, rule)
        if got or time.monotonic() > deadline or agent.proc.poll() is not None:
            return got
        time.sleep(0.3)


def test_agent_takes_the_baseline_on_first_start_and_scans_against_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root")
    default = resources.files("bastion").joinpath("data/default-policy.yaml").read_text()
    assert "\nintegrity:\n  interval: 5m\n" in default      # on by default
    first = start_agent(tmp_path, "--quiet")
    path = release_path(first.data_dir)
    try:
        taken = _wait_alerts(first, "bastion.integrity.baseline_taken")
    finally:
        assert first.stop() == 0, "".join(first.stderr)
    assert len(taken) == 1, "".join(first.stderr)
    assert taken[0]["severity"] == "info"
    assert "first start" in taken[0]["title"] and str(path) in taken[0]["title"]
    assert taken[0]["evidence"]["kind"] == "first-start"
    assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600
    base = path.read_bytes()

    loader = subprocess.Popen([sys.executable, "-c", _LOADER], stdout=subprocess.PIPE)
    try:
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == b"ready"
        second = start_agent(tmp_path, "--quiet")
        try:
            rogue = [a for a in _wait_alerts(second, "bastion.integrity.bpf.rogue_program")
                     if a["evidence"].get("name") == "rk_getppid"]
            again = _alerts(second, "bastion.integrity.baseline_taken")
        finally:
            assert second.stop() == 0, "".join(second.stderr)
    finally:
        loader.kill()
        loader.wait(timeout=10)
    assert len(rogue) == 1, "".join(second.stderr)
    assert rogue[0]["severity"] == "high" and rogue[0]["process"]["pid"] == loader.pid
    assert len(again) == 1                                  # still the first start's alone
    assert path.read_bytes() == base                        # used, not retaken
