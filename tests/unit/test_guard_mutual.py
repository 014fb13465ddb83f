"""The agent's half of mutual supervision (bastion.guard.mutual): no kernel, no root."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bastion.guard import mutual
from bastion.procstat import read_stat


def _state(pid: int) -> str:
    return read_stat(pid).state


def test_stopped_guardian_is_resumed() -> None:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        env = mutual.guardian_env(p.pid)
        resumed: list[int] = []
        t = mutual.watch_guardian(p.pid, int(env[mutual.ENV_START]), interval_s=0.02,
                                  on_resume=resumed.append)
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not resumed or _state(p.pid) in mutual.STOPPED:
            assert time.monotonic() < deadline, "not resumed"
            time.sleep(0.02)
        assert resumed[0] == p.pid and t.is_alive()
    finally:
        p.kill()
        p.wait()
    t.join(timeout=2)
    assert not t.is_alive()          # the guardian is gone: the watch ends


def test_reused_pid_is_not_touched() -> None:
    """A different start time: not our guardian, never signalled; the watch ends."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while _state(p.pid) not in mutual.STOPPED:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t = mutual.watch_guardian(p.pid, read_stat(p.pid).start_ticks + 1, interval_s=0.02)
        t.join(timeout=2)
        assert not t.is_alive() and _state(p.pid) in mutual.STOPPED
    finally:
        p.kill()
        p.wait()


def test_from_env_needs_both_values() -> None:
    assert mutual.watch_guardian_from_env({}) is None
    assert mutual.watch_guardian_from_env({mutual.ENV_PID: "12"}) is None
    assert mutual.watch_guardian_from_env({mutual.ENV_PID: "x", mutual.ENV_START: "1"}) is None
