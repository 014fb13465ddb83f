"""Cost of the provenance gate (issue 15) for a clean process: open+close of a
must-stop file the gate marks (the opener has no provenance entry: one
/proc/<tid>/status read for its tgid and one map lookup, then allowed) vs an
unmarked file, interleaved.  The refusal path (a tainted opener) is the kernel
test's, not timed here.

Safety: only one temp file is marked (as a persistence object); a dead-man
deadline of 300 s and the watchdog are on; the gate and sensor close in ``finally``.

Final lines: ``bench provgate_decision_median <us> us`` (listener read -> answer),
``bench provgate_open_added <us> us`` (marked minus unmarked median per open+close)
and ``bench provgate_open_overhead <ratio> x``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _common import c_program, calibrate, emit, finish, log, median, require_fanotify, run_loop

from bastion.enforce.provgate import GateObject, ProvenanceGate
from bastion.sensors.bpf import BpfSensor

ROUNDS = 7
LOOP_S = 0.5


def main() -> None:
    require_fanotify("fanotify permission events, the BPF sensor")
    exe = c_program("open_loop")
    with tempfile.TemporaryDirectory(prefix="bastion-bench-prov-") as d:
        marked, plain = Path(d) / "profile", Path(d) / "plain"
        for p in (marked, plain):
            p.write_text("x\n")
        n_plain = max(calibrate(lambda k: run_loop([exe, "read", k, plain]), LOOP_S, 20_000)
                      for _ in range(2))
        sensor = BpfSensor(classes=("exec",), ring_bytes=1 << 20, cgroup_id=1 << 62)  # no cgroup: no events
        sensor.open()
        gate = ProvenanceGate(sensor.provenance(), deadline_s=300.0, decision_timeout_s=1.0,
                              self_tgid=os.getpid())
        try:
            gate.start()
            gate.apply([GateObject(str(marked), "persistence")])
            n_marked = max(calibrate(lambda k: run_loop([exe, "read", k, marked]), LOOP_S, 500)
                           for _ in range(2))
            run_loop([exe, "read", n_marked, marked])
            run_loop([exe, "read", n_plain, plain])
            on: list[float] = []
            off: list[float] = []
            for i in range(ROUNDS):
                for which in (("marked", "plain") if i % 2 == 0 else ("plain", "marked")):
                    if which == "marked":
                        on.append(run_loop([exe, "read", n_marked, marked]).seconds / n_marked * 1e9)
                    else:
                        off.append(run_loop([exe, "read", n_plain, plain]).seconds / n_plain * 1e9)
            s = gate.stats()
        finally:
            gate.close()
            sensor.close()
    ratio = median(on) / median(off)
    log(f"marked file (clean opener): {median(on):.0f} ns/open+close, unmarked {median(off):.0f} "
        f"-> {ratio:.1f}x, +{(median(on) - median(off)) / 1000:.1f} us per open; "
        f"{s['perm_events']} events, denies {s['denies']}, watchdog_allows {s['watchdog_allows']}")
    emit("provgate_decision_median", float(s["decision_us_median"]), "us", ".1f")
    emit("provgate_open_added", (median(on) - median(off)) / 1000, "us", ".1f")
    emit("provgate_open_overhead", ratio, "x", ".2f")
    finish()


if __name__ == "__main__":
    main()
