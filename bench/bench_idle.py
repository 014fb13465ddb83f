"""The agent at rest, with every default protection on: startup time, idle CPU and RSS.

The embedded default policy as shipped (behaviour rules, integrity guard with
its first-start baseline, ransomware shield), the SigmaHQ corpus installed in
the data dir (what `bastion sigma update` does), and the shield over a tree
the shape of a home (SHIELD_DIRS directories of SHIELD_FILES files) instead
of the host's /home, /root and /srv (a benchmark marks only its own inodes).

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

from pathlib import Path

from _common import AgentProcess, check_target, emit, finish, log, median, require_root


def _agent() -> AgentProcess:
    return AgentProcess(sigma_from=SIGMA if SIGMA.is_dir() else None,
                        shield_tree=(SHIELD_DIRS, SHIELD_FILES))

STARTUP_TARGET = 2.0
IDLE_CPU_TARGET = 1.0      # % of one CPU
RSS_TARGET = 100.0         # MB
SIGMA = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "sigma"
SHIELD_DIRS, SHIELD_FILES = 1000, 5
STARTS = 3
SETTLE_S = 3.0
MEASURE_S = 10.0


def main() -> None:
    require_root()
    startups: list[float] = []
    if not SIGMA.is_dir():
        log(f"no Sigma corpus at {SIGMA}: measured without Sigma rules")
    for i in range(STARTS - 1):
        with _agent() as agent:
            startups.append(agent.startup_s)
            log(f"start {i + 1}: running after {agent.startup_s:.2f}s")
    with _agent() as agent:
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
    prot = s1.get("protections", {})
    log("protections: " + "; ".join(f"{k} {'on' if v.get('on') else 'OFF'} ({v.get('detail')})"
                                   for k, v in prot.items()))
    check_target("startup", startup, STARTUP_TARGET)
    check_target("idle_cpu", cpu_pct, IDLE_CPU_TARGET)
    check_target("idle_rss", rss, RSS_TARGET)
    emit("idle_rss", rss, "MB", ".1f")
    emit("startup", startup, "s", ".2f")
    emit("idle_cpu", cpu_pct, "%", ".2f")
    finish()


if __name__ == "__main__":
    main()
