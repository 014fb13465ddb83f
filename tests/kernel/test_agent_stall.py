"""The guardian watches the agent's loop heartbeat, not just its pid (issue 13 item 5).

The attack's effect as reported: the agent's event loop waits forever (a FIFO
opened by the entropy probe) while its pid lives and ``status`` answers; the
guardian saw a running agent and did nothing.  Here a stand-in agent answers
``ping`` on its control socket like the real one, with a loop heartbeat that
stops advancing after 2 s: the guardian raises a critical
``bastion.tamper.agent-stalled`` alert and restarts it.  A TEST instance
(tests/support/tamper.py): compat tier, scoped to a test cgroup, dead-man
deadline, pins removed at teardown."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

MARK = "bastion-stall-test-agent"   # not T.AGENT_MARK: other instances' teardowns kill that
STALLING_AGENT = """
import os, sys, threading, time
from pathlib import Path
from bastion.control import ControlServer
t0 = time.monotonic()
def beat():
    # the loop runs for 2 s, then hangs in one call: its heartbeat stops there
    return round(time.monotonic() - min(time.monotonic(), t0 + 2.0), 3)
srv = ControlServer(Path(sys.argv[1]), {"ping": lambda req: {"pid": os.getpid(),
                                        "loop_heartbeat_age_s": beat()}})
srv.start()
threading.Event().wait(120)   # bounded: a stand-in left behind ends by itself
"""


def _kill_marked() -> None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if MARK.encode() in (p / "cmdline").read_bytes():
                    os.kill(int(p.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass   # raced with its exit


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp_path, cg, cgid, deadline_s=90)
        try:
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-30:]))
            i.teardown()
            _kill_marked()


def test_stalled_agent_loop_is_alerted_and_restarted(inst: T.Instance, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    inst.start_guardian("--agent-socket", str(sock), "--agent-stall-after", "3",
                        tier="compat", agent=[T.PY, "-c", STALLING_AGENT, str(sock), MARK])
    first = inst.wait_agent()
    time.sleep(1.0)
    assert not [a for a in inst.alerts() if a["rule"] == "bastion.tamper.agent-stalled"], \
        "a live heartbeat was judged stalled"
    a = inst.wait_alert("bastion.tamper.agent-stalled", timeout=20)
    assert a["severity"] == "critical"
    ev = a["evidence"]
    assert ev["agent_pid"] == first and ev["heartbeat_age_s"] > 3  # type: ignore[index,operator]
    second = inst.wait_agent(not_pid=first, timeout=20)
    assert second != first
    assert T.proc_state(first) == "gone"
    st = inst.status()
    assert st["agent_stalls"] >= 1  # type: ignore[operator]
