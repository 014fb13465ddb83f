"""The store's event writer process alone (issue 16.3): rows per second it stores.

A writer process (:class:`bastion.store.eventproc.EventStoreProcess`, as the agent runs
it) on a fresh store in a temp dir, fed batches of 256 file events as fast as it takes
them for ``WRITER_S`` seconds (the feeder waits on the full pipe: nothing is shed), in
two mixes:

* **repeat**: one actor chmods one file (the chmod flood of ``bench_agent_pipeline``:
  every event equal but its time);
* **distinct**: one actor chmods a new name each time (nothing to coalesce).

Figures: ``store_writer`` (rows per second, distinct mix: one row per event, nothing to
coalesce: the writer's row capacity), ``store_writer_repeat`` (events per second, repeat
mix: the chmod flood's rate the store keeps up with, in a few coalesced rows), each also
per CPU-second of the child (``_per_cpu_s``: the figure that does not move with the
host's load); the rows each mix took are logged.  ``BASTION_BENCH_PROFILE=1`` prints the
child's cProfile top (in-process, frames of ``MERGE_EVENTS`` from a buffer: a backlog).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, check_target, emit, finish, log, proc_cpu_s

# BASTION_BENCH_SRC: another checkout's src (a before/after comparison on one build)
sys.path.insert(0, os.environ.get("BASTION_BENCH_SRC", str(ROOT / "src")))

from bastion.events import Event, FileEvent, Proc  # noqa: E402

WRITER_S = float(os.environ.get("BASTION_BENCH_WRITER_S", "4"))
BATCH = 256


def _events(mix: str, n: int, t0_ns: int) -> list[Event]:
    p = Proc(4242, 4242, 1, 0, 0, 0, 77, "chmod_flood", 123456789, "/usr/bin/chmod_flood")
    if mix == "repeat":
        return [FileEvent(t0_ns + i * 10_000, p, op="chmod", path="/tmp/bastion-bench-pipe-x",
                          mode=0o644, dev=2049, ino=1234) for i in range(n)]
    return [FileEvent(t0_ns + i * 10_000, p, op="chmod", path=f"/tmp/flood/f{i:07d}",
                      mode=0o644, dev=2049, ino=100_000 + i) for i in range(n)]


def run(mix: str) -> tuple[float, float, int, int]:
    """(events/s, events per child CPU-second, events confirmed, rows in the store)."""
    from bastion.store.db import Store
    from bastion.store.eventproc import EventStoreProcess

    stored = [0]

    def on_result(kind: str, n: int, detail: str) -> None:
        if kind != "stored":
            raise RuntimeError(f"writer answered {kind} {n}: {detail}")
        stored[0] += n

    def on_died(why: str, lost: int, cause: str, pid: int) -> None:
        raise RuntimeError(f"writer died: {why}")

    with tempfile.TemporaryDirectory(prefix="bastion-bench-writer-") as d:
        Store.open(Path(d)).close()
        sp = EventStoreProcess(Path(d), max_items=1 << 16, on_result=on_result,
                               on_died=on_died, nice=0)
        sp.start()
        pid = sp.pid
        assert pid is not None
        pool = _events(mix, 64 * BATCH, time.time_ns())
        batches = [pool[i:i + BATCH] for i in range(0, len(pool), BATCH)]
        # warm-up, then the run; offers wait (never shed) so the figure is the writer's
        for b in batches[:8]:
            sp.offer(b)
        sp.flush(30)
        n0, c0, t0 = stored[0], proc_cpu_s(pid), time.monotonic()
        i = 0
        shed0 = sp.shed
        while time.monotonic() - t0 < WRITER_S:
            if sp.queued >= sp.max_items // 2:
                time.sleep(0.0005)
                continue
            sp.offer(batches[i % len(batches)])
            i += 1
        if not sp.flush(120):
            raise RuntimeError("the writer did not drain within 120 s")
        t1, c1, n1 = time.monotonic(), proc_cpu_s(pid), stored[0]
        if sp.shed != shed0:
            raise RuntimeError(f"{sp.shed - shed0} events shed in a run that waits")
        sp.close()
        with Store.open(Path(d), readonly=True) as st:
            rows = st.count_events()
    ev = n1 - n0
    return ev / (t1 - t0), ev / (c1 - c0) if c1 > c0 else 0.0, ev, rows


def profile(mix: str) -> None:
    """cProfile of the child's loop on frames from a buffer (in this process)."""
    import cProfile
    import pstats

    from bastion.store.db import Store
    from bastion.store import eventproc as ep

    key = b"k" * ep.KEY_BYTES
    pool = _events(mix, 200 * BATCH, time.time_ns())
    buf = bytearray(ep._FRAME.pack(ep.KEY_BYTES, 0, 0) + key)
    step = ep.MERGE_EVENTS     # a backlog's frames, as the feeder merges them
    for s, i in enumerate(range(0, len(pool), step), start=1):
        buf += ep.frame(key, s, pool[i:i + step])
    with tempfile.TemporaryDirectory(prefix="bastion-bench-writer-") as d:
        Store.open(Path(d)).close()
        out = io.StringIO()
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.runcall(ep.child_main, Path(d), io.BufferedReader(io.BytesIO(bytes(buf))), out)
        log(f"profile {mix}: {len(pool)} events in {time.perf_counter() - t0:.2f}s under cProfile")
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(14)
        for line in s.getvalue().splitlines():
            if line.strip():
                log(line)


def main() -> None:
    log(f"load average {os.getloadavg()[0]:.2f} (2 CPUs shared: wall-clock figures move with it)")
    if os.environ.get("BASTION_BENCH_PROFILE") == "1":
        profile("repeat")
        profile("distinct")
    for mix, name, unit in (("distinct", "store_writer", "rows"),
                            ("repeat", "store_writer_repeat", "events")):
        rate, per_cpu, ev, rows = run(mix)
        log(f"{mix}: {ev} events confirmed, {rows} rows stored; {rate:.0f} events/s, "
            f"{per_cpu:.0f} per child CPU-second; load average {os.getloadavg()[0]:.2f}")
        emit(name, rate, f"{unit}/s", ".0f")
        emit(f"{name}_per_cpu_s", per_cpu, f"{unit}/cpu-s", ".0f")
        if mix == "repeat":   # the agent pipeline's flood: the store keeps up with 100 k/s
            check_target(name, rate, 100_000.0, at_most=False)
    finish()


if __name__ == "__main__":
    main()
