"""The agent's half of mutual supervision: keep the guardian running.

The guardian restarts the agent and resumes it when it is stopped; nothing
resumed a stopped guardian.  A SIGSTOPped guardian (its sender killed on the
compat tier, the signal delivered all the same) restarts nothing, drains no
tamper record and answers no control request.  :func:`watch_guardian` runs
in the agent: a daemon thread that reads the guardian's state from procfs
(never a blocking call on an attacker's object) and sends SIGCONT the moment
it sees it stopped.  The guardian, once running again, raises the critical
``bastion.tamper.guardian-stopped`` alert from the tamper record of the stop.

The guardian passes who it is in the agent's environment
(:data:`ENV_PID`, :data:`ENV_START`: tgid and start time in ticks), so a
reused pid is never resumed nor trusted.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Callable, Final

from bastion.procstat import read_stat

log = logging.getLogger("bastion.guard.mutual")

ENV_PID: Final = "BASTION_GUARDIAN_PID"
ENV_START: Final = "BASTION_GUARDIAN_START"
STOPPED: Final = ("T", "t")


def guardian_env(pid: int) -> dict[str, str]:
    """What the guardian puts in the agent's environment about itself."""
    return {ENV_PID: str(pid), ENV_START: str(read_stat(pid).start_ticks)}


def _state(pid: int, start_ticks: int) -> str:
    """The guardian's procfs state, or "gone" (dead or its pid reused)."""
    try:
        st = read_stat(pid)
    except (OSError, ValueError):
        return "gone"
    return st.state if st.start_ticks == start_ticks else "gone"


def watch_guardian(pid: int, start_ticks: int, *, interval_s: float = 0.1,
                   on_resume: Callable[[int], None] | None = None) -> threading.Thread:
    """Start a daemon thread that resumes guardian ``pid`` whenever it is stopped.

    Ends when the guardian is gone (the agent's own supervisor decides what then).
    """
    def loop() -> None:
        while True:
            st = _state(pid, start_ticks)
            if st == "gone":
                log.error("guardian pid %d is gone: nobody restarts the agent now", pid)
                return
            if st in STOPPED:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    return
                log.critical("guardian pid %d was stopped: resumed", pid)
                if on_resume is not None:
                    on_resume(pid)
            time.sleep(interval_s)

    t = threading.Thread(target=loop, name="bastion-guardian-watch", daemon=True)
    t.start()
    return t


def watch_guardian_from_env(environ: dict[str, str] | None = None) -> threading.Thread | None:
    """:func:`watch_guardian` for the guardian named in the environment, if any."""
    env = os.environ if environ is None else environ
    try:
        pid, start = int(env[ENV_PID]), int(env[ENV_START])
    except (KeyError, ValueError):
        return None
    return watch_guardian(pid, start)


__all__ = ["ENV_PID", "ENV_START", "guardian_env", "watch_guardian", "watch_guardian_from_env"]
