"""Connect overhead: a C loop of loopback TCP connects (a forked listener
accepts and closes; the client waits for EOF and closes), with and without
the agent (interleaved), figure = median(on) / median(off).  Target <= 1.03.

Each iteration is two events for the agent: connect (client) and accept
(listener).
"""

from __future__ import annotations

from _common import (
    c_program, calibrate, check_target, emit, finish, interleaved, log, median,
    require_root, run_loop,
)

TARGET = 1.03
ROUNDS = 7
LOOP_S = 1.5


def main() -> None:
    require_root()
    exe = c_program("connect_loop")
    n = calibrate(lambda k: run_loop([exe, k]), LOOP_S, 2000)
    log(f"{n} loopback connects per loop, {ROUNDS} off/on pairs after a warm-up")
    comp = interleaved(lambda: {"connect": run_loop([exe, n])}, ROUNDS)
    comp.report("connect", lambda s: f"{s / n * 1e6:.1f} us/connect")
    ev = median(comp.agent_events)
    log(f"agent: median {ev:.0f} events per on-session ({ev / n:.2f} per connect), "
        f"{median(comp.agent_cpu_s):.2f}s CPU for the session (loop, backlog, stop) "
        f"({median(comp.agent_cpu_s) / ev * 1e6 if ev > 0 else 0:.1f} us/event), "
        f"drops {comp.agent_drops}")
    ratio = comp.ratio("connect")
    check_target("connect_overhead", ratio, TARGET)
    emit("connect_overhead", ratio, "x")
    finish()


if __name__ == "__main__":
    main()
