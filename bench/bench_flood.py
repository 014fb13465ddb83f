"""The agent under an event flood beyond its capacity (issue 14.1).

``bastion run --quiet`` (default policy) while ``chmod_flood`` chmods one file in a
tight loop for ``FLOOD_S`` seconds, pinned to one CPU.  Meanwhile the bench asks the
control socket for ``status`` every 0.2 s (the raw request, no CLI start-up) and
samples the agent's RSS from /proc.  After the flood it waits for the agent to
catch up and reads the store.

Figures (``bench <name> <figure> <unit>``):
- ``flood_events``: events the agent processed per second of the flood (status
  events_total delta over the flood's wall time);
- ``flood_drops``: records the kernel could not put on the full ring;
- ``flood_rss``: the agent's peak RSS during the flood (MB);
- ``flood_status_latency``: the slowest ``status`` answer during the flood (ms);
  target <= 1000 ms;
- ``flood_loop_age``: the oldest event-loop heartbeat a ``status`` answer showed
  (how long one round of the loop took at worst, as the guardian sees it);
- ``flood_alerts``: alerts raised over the run (drop alerts: once per interval,
  not per batch), and ``flood_alerts_stored``: alerts the store holds;
- ``flood_exec_seen <n> of <m>`` (s23-prioring): a second process execs
  ``/bin/true bastion-bench-exec-<i>`` every ``EXEC_EVERY_S`` during the flood (the
  payload behind the flood); how many of those execs the store holds afterwards.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from typing import Any

from _common import (
    AgentProcess, check_target, chmod_flood_under_status, emit, finish, log, median, require_root,
)

from bastion.control import request
from bastion.store.db import Store

FLOOD_S = float(os.environ.get("BASTION_BENCH_FLOOD_S", "6"))
STATUS_TARGET_MS = 1000.0
EXEC_EVERY_S = 0.1
EXEC_MARK = "bastion-bench-exec-"


def _exec_during(flood_s: float, done: threading.Event, ran: list[int]) -> None:
    """The payload behind the flood: an exec every EXEC_EVERY_S from 0.5 s into it."""
    if done.wait(0.5):
        return
    end = time.monotonic() + flood_s - 1.0
    i = 0
    while time.monotonic() < end and not done.is_set():
        subprocess.run(["/bin/true", f"{EXEC_MARK}{i}"], check=True)
        ran.append(i)
        i += 1
        done.wait(EXEC_EVERY_S)


def main() -> None:
    require_root()
    fd, path = tempfile.mkstemp(prefix="bastion-bench-flood-")
    os.close(fd)
    try:
        with AgentProcess() as agent:
            time.sleep(1.0)
            rss0 = agent.rss_mb()
            done, ran = threading.Event(), []
            payload = threading.Thread(target=_exec_during, args=(FLOOD_S, done, ran), daemon=True)
            payload.start()
            try:
                run = chmod_flood_under_status(agent, path, FLOOD_S)
            finally:
                done.set()
                payload.join()
            s0, s1 = run.status_before, run.status_after
            latencies, rss, ages, failures = run.latencies_ms, run.rss_mb, run.loop_ages_s, run.failures
            secs, calls = run.flood_seconds, run.flood_calls
            # the backlog, then one more health interval for the drop alerts
            deadline = time.monotonic() + 60
            last: dict[str, Any] = s1
            while time.monotonic() < deadline:
                time.sleep(1.5)
                st = request(agent.socket, "status", timeout=30)
                if float(st["ring_fill"]) < 0.01 and st["drops"] == last["drops"] \
                        and st["alerts_total"] == last["alerts_total"]:
                    break
                last = st
            time.sleep(11)   # a drop alert interval after the last drop
            st = request(agent.socket, "status", timeout=30)
            with Store.open(agent.dir / "data", readonly=True) as store:
                stored = store.count_alerts()
                drop_alerts = len(store.alerts(rule="bastion.sensor.drops"))
                seen = {a for rec in store.events(types=["exec"])
                        for a in rec.data.get("argv", ()) if str(a).startswith(EXEC_MARK)}
                by_rule: dict[str, int] = {}
                for rec in store.alerts():
                    by_rule[str(rec.data["rule"])] = by_rule.get(str(rec.data["rule"]), 0) + 1
            summary = agent.stop()
    finally:
        os.unlink(path)
    assert summary is not None, "no stop summary from the agent"
    events = int(s1["events_total"]) - int(s0["events_total"])
    drops = int(st["drops"]) - int(s0["drops"])
    alerts = int(st["alerts_total"]) - int(s0["alerts_total"])
    rate = events / run.seconds
    log(f"chmod_flood: {calls} calls in {secs:.2f}s ({calls / secs / 1e3:.0f} k/s)")
    log(f"agent: {events} events in {run.seconds:.2f}s ({rate:.0f}/s), {drops} drops, "
        f"{alerts} alerts ({drop_alerts} bastion.sensor.drops), {stored} alerts stored")
    log(f"alerts stored by rule: {by_rule}")
    log(f"status during the flood: {len(latencies)} answers, median {median(latencies):.0f} ms, "
        f"max {max(latencies):.0f} ms; {len(failures)} failed" if latencies else
        f"status during the flood: no answer; {len(failures)} failed: {failures[:3]}")
    log(f"event loop: last round at most {max(ages, default=0.0) * 1e3:.0f} ms before a status "
        f"answer (median {median(ages) * 1e3 if ages else 0:.0f} ms)")
    log(f"RSS: {rss0:.1f} MB before, peak {max(rss, default=0.0):.1f} MB during the flood")
    if "drops_by_class" in st:
        log(f"drops by class: {st['drops_by_class']}, by ring: {st.get('drops_by_ring')}")
    log(f"execs behind the flood: {len(seen)} of {len(ran)} stored")
    log(f"stop summary: {summary.line}")
    emit("flood_events", rate, "events/s", ".0f")
    emit("flood_drops", drops, "events", ".0f")
    emit("flood_rss", max(rss, default=0.0), "MB", ".1f")
    worst = max(latencies, default=float("inf")) if not failures else float("inf")
    emit("flood_status_latency", worst, "ms", ".0f")
    emit("flood_loop_age", max(ages, default=0.0) * 1e3, "ms", ".0f")
    emit("flood_alerts", alerts, "alerts", ".0f")
    emit("flood_alerts_stored", stored, "alerts", ".0f")
    emit("flood_exec_seen", len(seen), f"of {len(ran)}", ".0f")
    check_target("flood_status_latency", worst, STATUS_TARGET_MS)
    finish()


if __name__ == "__main__":
    main()
