"""Container context cost (issue 17): what the agent adds per event.

``container_lookup_cached``: µs per ``ContainerResolver.enrich`` of an event from a
podman container whose cgroup is cached (the event path); ``container_lookup_host``:
the same for a host process (v2 cgroup names no container; the per-process v1
check is cached); ``container_lookup_host_new``: the first event of a host
process (its v1 lines read once); ``container_resolve_miss``: µs of the first resolution of a new
container (open_by_handle_at, ownership walk, podman state read).  Run as root with
podman installed; the container is removed at the end.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bastion.containers import ContainerResolver
from bastion.events import ExecEvent, Proc
from bastion.kernel.bpffs import cgroup2_root

BASE = ["podman", "--cgroup-manager=cgroupfs"]


def _v2(pid: int) -> int:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return os.stat(str(cgroup2_root()) + line[3:].rstrip("/")).st_ino
    raise SystemExit("no cgroup v2 line")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bastion-bench-ctr-") as d:
        root = Path(d) / "rootfs"
        (root / "bin").mkdir(parents=True)
        for sub in ("proc", "sys", "dev", "etc", "tmp"):
            (root / sub).mkdir()
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
        (root / "bin/sleep").symlink_to("busybox")
        name = f"bastion-bench-{os.getpid()}"
        cid = subprocess.run([*BASE, "run", "-d", "--network=none", "--ulimit", "nofile=1024:1024",
                              "--ulimit", "nproc=1024:1024", "--name", name, "--rootfs", str(root),
                              "/bin/sleep", "60"], check=True, capture_output=True,
                             text=True).stdout.strip()
        try:
            pid = int(subprocess.run([*BASE, "inspect", "-f", "{{.State.Pid}}", cid], check=True,
                                     capture_output=True, text=True).stdout)
            cg = _v2(pid)
            misses = []
            for _ in range(20):
                r = ContainerResolver(cgroup2=str(cgroup2_root()))
                ev = ExecEvent(0, Proc(pid, pid, 1, 0, 0, 0, cg, "sleep"))
                t = time.perf_counter()
                out = r.enrich(ev)
                misses.append((time.perf_counter() - t) * 1e6)
                assert out.proc.container is not None and out.proc.container.id == cid
                r.close()
            r = ContainerResolver(cgroup2=str(cgroup2_root()))
            ev = ExecEvent(0, Proc(pid, pid, 1, 0, 0, 0, cg, "sleep"))
            host = ExecEvent(0, Proc(os.getpid(), os.getpid(), 1, 0, 0, 0, _v2(os.getpid()), "py"))
            r.enrich(ev), r.enrich(host)
            n = 100_000
            res = {}
            for label, e in (("cached", ev), ("host", host)):
                runs = []
                for _ in range(5):
                    # fresh events, as decoded (each has its own Proc), built before timing
                    batch = [ExecEvent(0, Proc(e.proc.pid, e.proc.tid, 1, 0, 0, 0, e.proc.cgroup_id,
                                               "x")) for _ in range(n)]
                    t = time.perf_counter()
                    for b in batch:
                        r.enrich(b)
                    runs.append((time.perf_counter() - t) / n * 1e6)
                assert (batch[-1].proc.container is None) == (label == "host")
                res[label] = statistics.median(runs)
            r.close()
            # the first event of a host process: the v2 cgroup (cached) names no container,
            # so its /proc/<pid>/stat and /proc/<pid>/cgroup (every v1 line) are read once
            from bastion.procstat import read_stat
            pids = [int(d) for d in os.listdir("/proc") if d.isdigit()][:400]
            facts = []
            for p in pids:
                try:
                    facts.append(Proc(p, p, 1, 0, 0, 0, _v2(p), "x", start_ns=read_stat(p).start_ns))
                except (OSError, SystemExit, ValueError):
                    continue
            r = ContainerResolver(cgroup2=str(cgroup2_root()))
            for f in facts:
                r.for_proc(dataclasses.replace(f, pid=os.getpid()))   # warm the v2 cache only
            r._by_proc.clear()
            t = time.perf_counter()
            for f in facts:
                r.for_proc(f)
            res["host_new"] = (time.perf_counter() - t) / max(len(facts), 1) * 1e6
            r.close()
        finally:
            subprocess.run([*BASE, "rm", "-f", "-t", "0", name], capture_output=True)
    print(f"bench container_resolve_miss {statistics.median(misses):.0f} us")
    print(f"bench container_lookup_host {res['host']:.2f} us")
    print(f"bench container_lookup_host_new {res['host_new']:.1f} us")
    print(f"bench container_lookup_cached {res['cached']:.2f} us")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
