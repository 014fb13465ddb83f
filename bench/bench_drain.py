"""Ring-buffer drain rate, two phases.

1. Synthetic (the figure): build/bpf/selftest.bpf.o with ``st_ring`` grown to
   16 MiB (the agent's ring size) before load.  A producer thread floods it
   with ``st_flood`` through BPF_PROG_TEST_RUN (ctypes drops the GIL for the
   call) while the main thread drains with ``RingBuffer.drain`` and decodes
   each record's kind, as fast as it can, for a few seconds.  Figure = records
   drained per second of wall time (median of rounds), printed as
   ``drain_sustained``; it is producer-bound when nothing is dropped.  The
   final figure ``drain_rate`` is the consumer's capacity: a flooded (full)
   ring drained and decoded, median of 3; target >= 1 M/s.
   Drops are counted twice and must agree: requested - emitted (test_run's
   return value) and the per-CPU ``st_counters`` slot.
2. The real agent: ``bastion run --quiet`` while a C program chmods one file in
   a tight loop for 3 s (pinned to one CPU).  ``bastion status --json`` gives
   events_per_s (during the flood), events_total and drops; the drops it shows
   must equal the agent's own count in its stop summary, and calls = events +
   drops must add up (within the background noise of other processes).
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import threading
import time
from typing import Any

from _common import (
    PIN_CPU, ROOT, AgentProcess, c_program, check_target, emit, finish, log, median,
    require_root,
)

from bastion.kernel import bpffs
from bastion.kernel.libbpf import BpfObject, Map
from bastion.kernel.ringbuf import RingBuffer

TARGET = 1_000_000
SELFTEST = ROOT / "build" / "bpf" / "selftest.bpf.o"
RING_BYTES = 16 << 20
REC_SLOT = 64 + 8            # struct st_record + ring header
KIND = struct.Struct("<I")   # st_record.kind at offset 16
KIND_OFF = 16
CNT_DROPPED, CNT_EMITTED = 0, 1
CHUNK = 8192                 # records per test_run in the concurrent phase
ROUNDS = 5
ROUND_S = 1.0
FLOOD_S = 3.0


def counter(m: Map, slot: int) -> int:
    return sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", slot)))


def flood(obj: BpfObject, count: int) -> int:
    return obj.program("st_flood").test_run(ctx_in=struct.pack("<IIQ", count, 0, 0))


def drain_decode(rb: RingBuffer, kinds: dict[int, int]) -> int:
    """Drain what is committed and decode each record's kind (as the agent
    dispatches on the header type)."""
    recs = rb.drain()
    unpack = KIND.unpack_from
    for r in recs:
        k = unpack(r, KIND_OFF)[0]
        kinds[k] = kinds.get(k, 0) + 1
    return len(recs)


def synthetic() -> tuple[float, float]:
    """(drain capacity: one full ring drained + decoded, sustained rate with a
    concurrent producer).  The sustained figure is bounded by the producer
    (one test_run thread in the same process) whenever nothing is dropped;
    the capacity is what the consumer can take from a flooded ring."""
    with BpfObject.open(SELFTEST) as obj:
        obj.map("st_ring").set_max_entries(RING_BYTES)
        obj.load()
        counters = obj.map("st_counters")
        with RingBuffer(obj.map("st_ring")) as rb:
            cap = RING_BYTES // REC_SLOT
            # batch: fill the ring, time one drain (+ decode) of it
            batch_rates = []
            for _ in range(3):
                emitted = flood(obj, cap - 1)
                t0 = time.perf_counter()
                n = drain_decode(rb, {})
                batch_rates.append(n / (time.perf_counter() - t0))
                assert n == emitted, (n, emitted)
            log(f"batch: drain+decode of a full ring ({cap - 1} records): "
                f"median {median(batch_rates) / 1e6:.2f} M records/s")

            rates = []
            for rnd in range(ROUNDS):
                d0, e0 = counter(counters, CNT_DROPPED), counter(counters, CNT_EMITTED)
                stop = threading.Event()
                asked = [0]
                emitted_total = [0]

                def producer() -> None:
                    while not stop.is_set():
                        emitted_total[0] += flood(obj, CHUNK)
                        asked[0] += CHUNK

                kinds: dict[int, int] = {}
                th = threading.Thread(target=producer)
                t0 = time.perf_counter()
                th.start()
                drained = 0
                while time.perf_counter() - t0 < ROUND_S:
                    drained += drain_decode(rb, kinds)
                elapsed = time.perf_counter() - t0
                stop.set()
                th.join()
                tail = drain_decode(rb, kinds)  # what the producer's last call left
                dropped_asked = asked[0] - emitted_total[0]
                dropped_cnt = counter(counters, CNT_DROPPED) - d0
                emitted_cnt = counter(counters, CNT_EMITTED) - e0
                assert dropped_asked == dropped_cnt, (dropped_asked, dropped_cnt)
                assert emitted_cnt == emitted_total[0] == drained + tail, (
                    emitted_cnt, emitted_total[0], drained, tail)
                assert set(kinds) == {1}, kinds
                rate = drained / elapsed
                rates.append(rate)
                log(f"round {rnd + 1}: drained {drained} in {elapsed:.2f}s = "
                    f"{rate / 1e6:.2f} M/s; producer asked {asked[0]} "
                    f"({asked[0] / elapsed / 1e6:.2f} M/s), emitted {emitted_total[0]}, "
                    f"dropped {dropped_asked} (per-CPU counter agrees: {dropped_cnt})")
    return median(batch_rates), median(rates)


def status_int(st: dict[str, Any], key: str) -> int:
    return int(st[key])


def real_agent() -> None:
    exe = c_program("chmod_flood")
    fd, path = tempfile.mkstemp(prefix="bastion-bench-chmod-")
    os.close(fd)
    pin = ["taskset", "-c", str(PIN_CPU)] if PIN_CPU is not None else []
    try:
        with AgentProcess() as agent:
            time.sleep(0.5)
            s0 = agent.status()
            cpu0 = agent.cpu_s()
            t0 = time.monotonic()
            fl = subprocess.Popen(pin + [str(exe), str(FLOOD_S), path], stdout=subprocess.PIPE,
                                  text=True)
            try:
                rates = []
                for at in (1.0, 2.0, 2.8):
                    time.sleep(max(0.0, t0 + at - time.monotonic()))
                    st = agent.status()
                    rates.append(float(st["events_per_s"]))
                    log(f"  t={at:.1f}s: events_per_s {st['events_per_s']}, events_total "
                        f"{st['events_total']}, drops {st['drops']}, ring_fill {st['ring_fill']}")
                out, _ = fl.communicate(timeout=60)
            finally:
                if fl.poll() is None:
                    fl.kill()
                    fl.wait()
            if fl.returncode:
                raise RuntimeError(f"chmod_flood failed ({fl.returncode})")
            secs, calls = float(out.split()[0]), int(out.split()[1])
            # Let the agent empty the ring and its 1 s health check publish the
            # drops.  (events_total never settles: every `bastion status` is a
            # Python start, i.e. hundreds of events, and so is anything else
            # running on the host.)
            time.sleep(1.2)
            last = agent.status()
            deadline = time.monotonic() + 30
            while True:
                time.sleep(0.5)
                st = agent.status()
                if (float(st["ring_fill"]) < 0.01 and float(last["ring_fill"]) < 0.01
                        and st["drops"] == last["drops"]) or time.monotonic() > deadline:
                    break
                last = st
            caught_up = time.monotonic() - t0
            cpu = agent.cpu_s() - cpu0
            summary = agent.stop()
    finally:
        os.unlink(path)
    assert summary is not None, "no stop summary from the agent"
    ev = status_int(st, "events_total") - status_int(s0, "events_total")
    dr = status_int(st, "drops") - status_int(s0, "drops")
    log(f"real agent: chmod_flood made {calls} calls in {secs:.2f}s "
        f"({calls / secs / 1e3:.0f} k/s); the agent")
    log(f"  events_per_s during the flood: {', '.join(f'{r:.0f}' for r in rates)} "
        f"(median {median(rates):.0f}/s)")
    log(f"  events_total {st['events_total']} (+{ev} over the run), drops {st['drops']} "
        f"(+{dr}), alerts_total {st['alerts_total']}; caught up {caught_up:.1f}s after the "
        f"flood started; {cpu:.2f}s agent CPU ({cpu / ev * 1e6 if ev else 0:.1f} us/event)")
    log(f"  accounting: events + drops = {ev + dr} for {calls} chmod calls "
        f"({ev + dr - calls:+d}: other processes' events)")
    log(f"  stop summary: {summary.line}")
    assert status_int(st, "drops") == summary.drops, (
        f"status shows {st['drops']} drops, the agent counted {summary.drops}")
    if summary.drops:
        log(f"  status shows the agent's drops: {st['drops']} == {summary.drops} (stop summary)")
        assert status_int(st, "alerts_total") > 0, "drops but no bastion.sensor.drops alert"
    else:
        log("  no drops: the agent kept up with the flood (status and summary agree: 0)")
    assert ev + dr >= calls, f"{calls} calls but only {ev} events + {dr} drops accounted"


def main() -> None:
    require_root()
    if not SELFTEST.exists():
        log(f"{SELFTEST} missing: run `make bpf`")
        raise SystemExit(2)
    bpffs.ensure_bpffs()
    capacity, sustained = synthetic()
    real_agent()
    emit("drain_sustained", sustained, "events/s", ".0f")
    check_target("drain_rate", capacity, TARGET, at_most=False)
    emit("drain_rate", capacity, "events/s", ".0f")
    finish()


if __name__ == "__main__":
    main()
