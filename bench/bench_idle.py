"""The agent at rest: startup time, idle CPU and RSS.

* startup: wall time from starting ``bastion run --quiet`` (a fresh Python
  process) to its ``bastion: running`` line; median of STARTS starts.  Target
  <= 2 s (enforcing: every program attached, the control socket up).
* idle CPU: after the last start settles (SETTLE_S), utime + stime from
  /proc/PID/stat over MEASURE_S, as % of one CPU.  "Idle" means no workload
  of ours; what else the host does still reaches the agent as events, so the
  host's own activity is logged (events over the window) with the figure.
* RSS: VmRSS from /proc/PID/status at the end of the window.

Prints ``bench idle_rss``, ``bench startup`` and, last, ``bench idle_cpu``.
"""

from __future__ import annotations

import time

from _common import AgentProcess, check_target, emit, finish, log, median, require_root

STARTUP_TARGET = 2.0
STARTS = 3
SETTLE_S = 3.0
MEASURE_S = 10.0


def main() -> None:
    require_root()
    startups: list[float] = []
    for i in range(STARTS - 1):
        with AgentProcess() as agent:
            startups.append(agent.startup_s)
            log(f"start {i + 1}: running after {agent.startup_s:.2f}s")
    with AgentProcess() as agent:
        startups.append(agent.startup_s)
        log(f"start {STARTS}: running after {agent.startup_s:.2f}s "
            f"({agent.stderr_lines[-1] if agent.stderr_lines else ''})")
        time.sleep(SETTLE_S)
        s0 = agent.status()
        c0, t0 = agent.cpu_s(), time.monotonic()
        time.sleep(MEASURE_S)
        c1, t1 = agent.cpu_s(), time.monotonic()
        rss = agent.rss_mb()
        s1 = agent.status()
    cpu_pct = (c1 - c0) / (t1 - t0) * 100
    events = int(s1["events_total"]) - int(s0["events_total"])
    startup = median(startups)
    log(f"idle: {cpu_pct:.2f}% of one CPU over {t1 - t0:.1f}s ({c1 - c0:.2f}s CPU), "
        f"{events} host events in the window (incl. one `bastion status`); "
        f"RSS {rss:.1f} MB")
    log(f"startup: median {startup:.2f}s of {', '.join(f'{s:.2f}' for s in startups)}")
    check_target("startup", startup, STARTUP_TARGET)
    emit("idle_rss", rss, "MB", ".1f")
    emit("startup", startup, "s", ".2f")
    emit("idle_cpu", cpu_pct, "%", ".2f")
    finish()


if __name__ == "__main__":
    main()
