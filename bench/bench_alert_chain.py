"""Cost of the tamper-evident alert log (issue 14.7).

* ``alert_chain_add`` — ``Store.add_alert`` per alert (one transaction: insert,
  the row read back and MAC'd over every column, the anchor file rewritten
  in place), median over runs of 500 alerts into a fresh store.
* ``alert_chain_verify`` — ``Store.verify_chain`` per alert over 5000 alerts
  (every row MAC'd again, the anchor file checked).
Alerts are rare (a busy host raises a few per minute), so the budget is loose:
target <= 2 ms per add and <= 100 us per verified alert on this 2-vCPU machine.
No root needed.  Final stdout lines: ``bench alert_chain_add <us> us`` and
``bench alert_chain_verify <us> us``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bastion.store.db import Store

RUNS = int(os.environ.get("BASTION_BENCH_RUNS", "5"))
ADD_N, VERIFY_N = 500, 5000
ADD_TARGET_US, VERIFY_TARGET_US = 2000.0, 100.0


def _alert(i: int) -> dict[str, object]:
    return {"time": "2026-11-26T05:00:00.000000Z", "id": f"a{i}", "rule": "behavior.x",
            "title": f"alert {i}", "severity": "high", "attack": ["T1059"], "action": "alert",
            "process": {"pid": 1000 + i, "ppid": 1, "exe": "/usr/bin/x", "cmdline": "x -y", "uid": 0},
            "evidence": {"path": f"/tmp/f{i}"}}


def main() -> int:
    adds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bastion-bench-chain-") as tmp:
        for run in range(RUNS):
            d = Path(tmp) / f"add{run}"
            with Store.open(d) as s:
                t0 = time.perf_counter()
                for i in range(ADD_N):
                    s.add_alert(_alert(i))
                adds.append((time.perf_counter() - t0) / ADD_N * 1e6)
        d = Path(tmp) / "verify"
        with Store.open(d) as s:
            for i in range(VERIFY_N):
                s.add_alert(_alert(i))
        verifies: list[float] = []
        with Store.open(d, readonly=True) as s:
            for _ in range(RUNS):
                t0 = time.perf_counter()
                report = s.verify_chain()
                verifies.append((time.perf_counter() - t0) / VERIFY_N * 1e6)
                if report.problems:
                    print(f"bench: the chain does not verify: {report.problems[:3]}", file=sys.stderr)
                    return 1
    add, ver = statistics.median(adds), statistics.median(verifies)
    ok = add <= ADD_TARGET_US and ver <= VERIFY_TARGET_US
    print(f"alert_chain_add {add:.0f} us (target <= {ADD_TARGET_US:.0f}); alert_chain_verify "
          f"{ver:.1f} us (target <= {VERIFY_TARGET_US:.0f}): {'ok' if ok else 'MISSED'}", file=sys.stderr)
    print(f"bench alert_chain_add {add:.0f} us", flush=True)
    print(f"bench alert_chain_verify {ver:.1f} us", flush=True)
    return 0 if ok or os.environ.get("BASTION_BENCH_STRICT") != "1" else 1


if __name__ == "__main__":
    sys.exit(main())
