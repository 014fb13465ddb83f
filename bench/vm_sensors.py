"""Tracepoint sensor against the kernel-hook sensor, in the test VM (ratios only: TCG).

Not run by ``make bench`` (the host cannot load fentry programs).  Run it in the VM:

    make -s build/bench/exec_loop build/bench/open_loop build/bench/connect_loop 2>/dev/null; \\
    .venv/bin/python bench/vm_sensors.py --compile   # on the host: the C loops
    flock /work/_prompts/heavy.lock bash vm/run.sh tests/vm/test_vm_smoke.py bench/vm_sensors.py -s

(or in the no-BPF-LSM boot: VM_LSM=... bash vm/run.sh tests/vm/variant_nobpflsm.py bench/vm_sensors.py -s)

Each loop (exec, read-open, write-open, connect; bench/*_loop.c) runs with no
sensor, the tracepoint sensor and the hook sensor, interleaved over rounds; each
sensor watches every cgroup (as the agent does) and is drained by a thread.  Prints
``bench vm_sensor_<loop>_{tp,hooks}_ratio <x> x`` (sensor / no sensor, medians)
and ``bench vm_sensor_<loop>_hooks_vs_tp <x> x``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

try:
    import pytest

    pytestmark = pytest.mark.vm   # vm/init runs `pytest -m vm`
except ImportError:  # run as a script without pytest
    pass

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
ROUNDS = int(os.environ.get("BENCH_VM_ROUNDS", "3"))


def _loops(tmp: Path) -> dict[str, list[str | Path | int]]:
    target = tmp / "f"
    target.write_text("x\n")
    return {
        "exec": [c.c_program("exec_loop"), 300],
        "read_open": [c.c_program("open_loop"), "read", 20000, target],
        "write_open": [c.c_program("open_loop"), "write", 20000, target],
        "connect": [c.c_program("connect_loop"), 5000],
    }


def _with_sensor(make: Callable[[], object] | None, run: Callable[[], c.LoopResult]) -> float:
    if make is None:
        return run().seconds
    sensor = make()
    sensor.open()  # type: ignore[attr-defined]
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            sensor.poll(0.02)  # type: ignore[attr-defined]

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        return run().seconds
    finally:
        stop.set()
        t.join()
        sensor.close()  # type: ignore[attr-defined]


def measure() -> None:
    from bastion.sensors.bpf import (
        DEFAULT_NET_DEDUP_S, DEFAULT_OPEN_DEDUP_S, BpfSensor, HookSensor,
    )

    # both as the agent sets them (assembly.event_sensor): the sensitive set on, the
    # same dedup windows
    dedup = {"open_dedup_s": DEFAULT_OPEN_DEDUP_S, "net_dedup_s": DEFAULT_NET_DEDUP_S}
    makers: dict[str, Callable[[], object] | None] = {
        "none": None,
        "tp": lambda: BpfSensor(self_tgid=os.getpid(), **dedup),
        "hooks": lambda: HookSensor(self_tgid=os.getpid(), quiet_tgids=[os.getpid()], **dedup),
    }
    with tempfile.TemporaryDirectory(prefix="bastion-vmbench-") as d:
        loops = _loops(Path(d))
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(ROUNDS):
            order = list(makers) if r % 2 == 0 else list(reversed(makers))
            for loop, argv in loops.items():
                for mode in order:
                    t = _with_sensor(makers[mode], lambda: c.run_loop(argv, timeout=600))
                    times.setdefault((loop, mode), []).append(t)
        for loop in loops:
            base = c.median(times[(loop, "none")])
            tp = c.median(times[(loop, "tp")]) / base
            hooks = c.median(times[(loop, "hooks")]) / base
            c.emit(f"vm_sensor_{loop}_tp_ratio", tp, "x")
            c.emit(f"vm_sensor_{loop}_hooks_ratio", hooks, "x")
            c.emit(f"vm_sensor_{loop}_hooks_vs_tp", hooks / tp, "x")


def test_vm_sensor_bench() -> None:
    """Entry point under pytest in the VM (prints the bench lines; asserts nothing)."""
    import pytest

    if not IN_VM:  # pragma: no cover
        pytest.skip("runs in the test VM only")
    measure()


if __name__ == "__main__":
    if "--compile" in sys.argv:
        for name in ("exec_loop", "open_loop", "connect_loop"):
            c.c_program(name)
        sys.exit(0)
    if not IN_VM:
        c.log("runs in the test VM only (see the module docstring)")
        sys.exit(0)
    c.require_root()
    measure()
