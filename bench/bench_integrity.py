"""Cost of the kernel integrity guard: the kernel text hash and a full scan.

* ``kernel_text_hash`` — read _stext.._etext through BPF, mask the patch
  sites, hash it page by page (what the kernel_text check does per scan),
  in a warm view (kallsyms parsed, BPF reader loaded: as in the agent).
  Target: <= 1 s on this machine.
* ``integrity_scan`` — a full scan (all checks) against a fresh baseline,
  cold: new view per run (kallsyms parse + BPF object load included), as
  `bastion integrity scan` does.
* ``integrity_first_baseline`` — what the agent does on its first start on a
  kernel release: ``baseline.ensure`` into an empty data dir (cold view, all
  checks, the 0600 file written and fsynced) in a worker process
  (``ensure_in_worker``: interpreter start and imports included), off the
  event loop.  The in-process ``ensure`` alone is logged to stderr.
Medians of several runs (2 vCPUs, noisy); wall and CPU time both printed.
Needs root.  Final stdout lines: ``bench kernel_text_hash <s> s``,
``bench integrity_scan <s> s``, then ``bench integrity_first_baseline <s> s``.
"""

from __future__ import annotations

import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bastion.integrity import baseline as baseline_mod
from bastion.integrity.base import KernelView
from bastion.integrity.checks import default_checks
from bastion.integrity.scanner import run_scan, take_baseline
from bastion.integrity.text import mask_text, page_digests
from bastion.integrity.worker import ensure_in_worker

RUNS = int(os.environ.get("BASTION_BENCH_RUNS", "7"))
TEXT_TARGET_S = 1.0
STRICT = os.environ.get("BASTION_BENCH_STRICT") == "1"


def main() -> int:
    if os.geteuid() != 0:
        print("bench_integrity: needs root", file=sys.stderr)
        return 1
    hash_wall: list[float] = []
    hash_cpu: list[float] = []
    size = 0
    with KernelView() as v:
        v.kallsyms_reason()
        v.reader_reason()
        for _ in range(RUNS):
            v.forget_text()
            w, c = time.perf_counter(), time.process_time()
            m = mask_text(v)
            page_digests(m.masked)
            hashlib.blake2b(m.masked).hexdigest()
            hash_wall.append(time.perf_counter() - w)
            hash_cpu.append(time.process_time() - c)
            size = len(m.masked)
        base = take_baseline(default_checks(v))
    scan_wall: list[float] = []
    scan_cpu: list[float] = []
    for _ in range(RUNS):
        w, c = time.perf_counter(), time.process_time()
        with KernelView() as v:
            report = run_scan(default_checks(v), base)
        scan_wall.append(time.perf_counter() - w)
        scan_cpu.append(time.process_time() - c)
    per_check = {r.name: r.status for r in report.results}

    def make_checks() -> Any:
        view = KernelView()
        return default_checks(view), view.close

    first_wall: list[float] = []
    first_cpu: list[float] = []
    size_kb = 0.0
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="bastion-bench-") as d:
            w, c = time.perf_counter(), time.process_time()
            out = baseline_mod.ensure(Path(d), make_checks)
            first_wall.append(time.perf_counter() - w)
            first_cpu.append(time.process_time() - c)
            assert out.kind == "first-start", out.kind
            size_kb = out.path.stat().st_size / 1024
    worker_wall: list[float] = []
    worker_cpu: list[float] = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="bastion-bench-") as d:
            ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            w = time.perf_counter()
            outcome, _ = ensure_in_worker(Path(d), trusted_pids=(os.getpid(),))
            worker_wall.append(time.perf_counter() - w)
            ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            worker_cpu.append(ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime)
            assert outcome["kind"] == "first-start", outcome
    th, ts = statistics.median(hash_wall), statistics.median(scan_wall)
    print(f"kernel text: {size / 2**20:.1f} MiB; hash wall median {th:.3f} s "
          f"(min {min(hash_wall):.3f}), cpu median {statistics.median(hash_cpu):.3f} s", file=sys.stderr)
    print(f"full scan: wall median {ts:.3f} s (min {min(scan_wall):.3f}), "
          f"cpu median {statistics.median(scan_cpu):.3f} s; checks {per_check}", file=sys.stderr)
    print(f"first-start baseline in process (ensure into an empty data dir): wall median "
          f"{statistics.median(first_wall):.3f} s (min {min(first_wall):.3f}, max {max(first_wall):.3f}), "
          f"cpu median {statistics.median(first_cpu):.3f} s; file {size_kb:.0f} KiB", file=sys.stderr)
    tf = statistics.median(worker_wall)
    print(f"first-start baseline as the agent takes it (worker process): wall median {tf:.3f} s "
          f"(min {min(worker_wall):.3f}, max {max(worker_wall):.3f}), worker cpu median "
          f"{statistics.median(worker_cpu):.3f} s", file=sys.stderr)
    ok = th <= TEXT_TARGET_S
    print(f"target kernel_text_hash <= {TEXT_TARGET_S} s: {'met' if ok else 'MISSED'}", file=sys.stderr)
    print(f"bench kernel_text_hash {th:.4f} s")
    print(f"bench integrity_scan {ts:.4f} s")
    print(f"bench integrity_first_baseline {tf:.4f} s")
    return 0 if ok or not STRICT else 1


if __name__ == "__main__":
    sys.exit(main())
