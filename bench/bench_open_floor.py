"""The floor of the read-open loop on the compat tier (issue 16.5, s16-open): what
the syscall-tracepoint slow path costs an open+close with no Bastion program
doing anything, so ``hips1000_open_overhead`` / ``open_overhead`` can be split
into "the slow path" and "the agent's programs".

No agent runs.  ``build/bpf/bench_floor.bpf.o`` holds no-op programs (each only
returns); each configuration attaches a subset of them and runs ``open_lat``
(read-only open+close, every pair timed) on a temp file, in rotated order over ``ROUNDS`` rounds; figures are the
median ratio against no program at all:

* ``floor_open_any``: a program on ``sys_enter_getppid`` only (not on the loop's
  path): the slow path every syscall of the host pays once any syscall tracepoint
  is on (openat and close each enter and leave through it);
* ``floor_open_enter``: ``any`` + one program on ``sys_enter_openat``;
* ``floor_open_enter_exit``: ``any`` + one on ``sys_enter_openat`` and one on
  ``sys_exit_openat`` (the shape of the agent after s16-open);
* ``floor_open_enter2_exit``: two on ``sys_enter_openat`` and one on the exit (the
  agent before s16-open: sensor and quarantine at entry);
* ``floor_open_exit``: ``any`` + one on ``sys_exit_openat`` only;
* ``floor_open_close``: ``enter_exit`` + one on ``sys_enter_close``;
* ``floor_open_agent``: no floor program, the agent running (default policy): its
  pair median against ``enter_exit`` + its programs' BPF time tells whether the
  rest of its wall-clock overhead is on the open path or beside it (its own CPU
  time, wake-ups on the loop's CPU).

``floor_open_<cfg>_pair``: from each session's median open+close pair (``open_lat``
times every pair: a time slice lost to another process moves few pairs, not the
median), the figure least moved by a shared host; ``floor_open_<cfg>_cpu``: the same from the loop's own CPU time (user + system,
``RUSAGE_CHILDREN``), which time the loop waited for a CPU does not move.  Also
``floor_open_base_ns``: the median pair (ns) with no program.  Kernel safety:
the programs return 0 and touch nothing; every link is destroyed in ``finally``.
Run under the heavy lock on a shared host (the figures are wall clock).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    PIN_CPU, ROOT, AgentProcess, LoopResult, c_program, calibrate, emit, finish, log, median, require_root,
)

sys.path.insert(0, str(ROOT / "src"))

from bastion.kernel.libbpf import BpfObject, Link  # noqa: E402

ROUNDS = 11
LOOP_S = 0.4
OBJ = ROOT / "build" / "bpf" / "bench_floor.bpf.o"
CONFIGS: dict[str, tuple[str, ...]] = {
    "none": (),
    "any": ("floor_getppid",),
    "enter": ("floor_getppid", "floor_enter_openat"),
    "exit": ("floor_getppid", "floor_exit_openat"),
    "enter_exit": ("floor_getppid", "floor_enter_openat", "floor_exit_openat"),
    "enter2_exit": ("floor_getppid", "floor_enter_openat", "floor_enter_openat2",
                    "floor_exit_openat"),
    "close": ("floor_getppid", "floor_enter_openat", "floor_exit_openat", "floor_enter_close"),
    "agent": (),   # the agent itself (default policy), no floor program
}


def run_lat(exe: Path, n: int, path: str) -> tuple[LoopResult, float]:
    """One ``open_lat`` session: its wall time and its median open+close (ns)."""
    pin = ["taskset", "-c", str(PIN_CPU)] if PIN_CPU is not None else []
    cp = subprocess.run(pin + [str(exe), str(n), path], check=True, capture_output=True,
                        text=True, timeout=120)
    lines = cp.stdout.split("\n")
    p50 = float(lines[0].split()[1])
    secs, iters = lines[1].split()
    return LoopResult(float(secs), int(iters)), p50


def main() -> None:
    require_root()
    if not OBJ.exists():
        raise SystemExit(f"bench_open_floor: {OBJ} missing (make bpf)")
    exe = c_program("open_lat")
    fd, path = tempfile.mkstemp(prefix="bastion-bench-floor-")
    os.close(fd)
    obj = BpfObject.open(OBJ)
    secs: dict[str, list[float]] = {k: [] for k in CONFIGS}
    cpus: dict[str, list[float]] = {k: [] for k in CONFIGS}
    p50s: dict[str, list[float]] = {k: [] for k in CONFIGS}
    try:
        obj.load()
        n = calibrate(lambda k: run_lat(exe, k, path)[0], LOOP_S, 20_000)
        log(f"{n} read opens per session, {ROUNDS} rounds of {len(CONFIGS)} configurations")
        names = list(CONFIGS)
        for r in range(ROUNDS + 1):                    # round 0: warm-up, not kept
            order = names[r % len(names):] + names[:r % len(names)]
            if r % 2:
                order.reverse()
            for cfg in order:
                links: list[Link] = []
                try:
                    for prog in CONFIGS[cfg]:
                        links.append(obj.program(prog).attach())
                    with contextlib.ExitStack() as stack:
                        if cfg == "agent":
                            stack.enter_context(AgentProcess())
                            time.sleep(0.5)
                        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        res, p50 = run_lat(exe, n, path)
                        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                finally:
                    for link in links:
                        link.destroy()
                if r:
                    secs[cfg].append(res.seconds)
                    p50s[cfg].append(p50)
                    cpus[cfg].append(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
    finally:
        obj.close()
        Path(path).unlink()
    base = median(secs["none"])
    cbase = median(cpus["none"])
    pbase = median(p50s["none"])
    for cfg in names[1:]:
        ratios = sorted(s / b for s, b in zip(secs[cfg], secs["none"]))
        med = median(secs[cfg])
        cmed = median(cpus[cfg])
        log(f"{cfg}: wall {med / n * 1e9:.0f} ns/open+close (+{(med - base) / n * 1e9:.0f} ns), "
            f"ratio {med / base:.3f} (per round {ratios[0]:.3f}-{ratios[-1]:.3f}); loop CPU "
            f"+{(cmed - cbase) / n * 1e9:.0f} ns, ratio {cmed / cbase:.3f}; median pair "
            f"{median(p50s[cfg]):.0f} ns (+{median(p50s[cfg]) - pbase:.0f}), min over sessions "
            f"{min(p50s[cfg]):.0f} (none {min(p50s['none']):.0f})")
        emit(f"floor_open_{cfg}_pair", median(p50s[cfg]) / pbase, "x")
        emit(f"floor_open_{cfg}", med / base, "x")
        emit(f"floor_open_{cfg}_cpu", cmed / cbase, "x")
    emit("floor_open_base_ns", pbase, "ns", ".0f")
    finish()


if __name__ == "__main__":
    main()
