"""Exec overhead: a C loop fork+execs /bin/true N times, with and without the
agent (interleaved), figure = median(on) / median(off).  Target <= 1.03.

Each iteration is three events for the agent (fork, exec with path, argv and
cwd, exit), so this is the agent's heaviest common path per syscall.
"""

from __future__ import annotations

from _common import (
    LoopResult, c_program, calibrate, check_target, emit, finish, interleaved, log,
    median, require_root, run_loop,
)

TARGET = 1.03
ROUNDS = 7
LOOP_S = 1.5


def main() -> None:
    require_root()
    exe = c_program("exec_loop")
    n = calibrate(lambda k: run_loop([exe, k]), LOOP_S, 200)
    log(f"{n} fork+exec+wait of /bin/true per loop, {ROUNDS} off/on pairs after a warm-up")
    comp = interleaved(lambda: {"exec": run_loop([exe, n])}, ROUNDS)
    comp.report("exec", lambda s: f"{s / n * 1e6:.1f} us/exec")
    ev = median(comp.agent_events)
    log(f"agent: median {ev:.0f} events per on-session ({ev / n:.2f} per exec), "
        f"{median(comp.agent_cpu_s):.2f}s CPU for the session (loop, backlog, stop) "
        f"({median(comp.agent_cpu_s) / ev * 1e6 if ev > 0 else 0:.1f} us/event), "
        f"drops {comp.agent_drops}")
    ratio = comp.ratio("exec")
    check_target("exec_overhead", ratio, TARGET)
    emit("exec_overhead", ratio, "x")
    finish()


if __name__ == "__main__":
    main()
