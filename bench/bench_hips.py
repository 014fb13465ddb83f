"""HIPS overhead: the fork+exec, open/close and loopback connect loops with
the agent enforcing a generated 1,000-rule policy, against no agent,
interleaved in one run; figures = median(on) / median(off).

The rules name real binaries as subjects and real files and networks as
objects, none of which the loops touch, so every decision in the loops is a
real matcher lookup that ends in "allow".  Targets (issue #3): <= 1.03 on
fork+exec and connect, <= 1.10 on open/close in the compat tier.  The
embedded default policy (no HIPS rules) is what bench_exec/open/connect
measure.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

from _common import (
    AgentProcess, c_program, calibrate, check_target, emit, finish, interleaved, log,
    require_root, run_loop,
)

ROUNDS = 5
LOOP_S = 1.0
RULES = 1000


def policy_text(n: int) -> str:
    subjects = sorted(str(p) for p in Path("/usr/bin").iterdir()
                      if p.is_file() and p.name.replace("-", "").replace(".", "").isalnum())[:200]
    objects = sorted(str(p) for p in Path("/usr/share/doc").glob("*/copyright"))[:400]
    lines = ["version: 1", "mode: enforce", "default: allow", "rules:"]
    for i in range(n):
        subj = subjects[i % len(subjects)]
        if i % 4 == 3:
            net = f"10.{i // 250 % 250}.{i % 250}.0/24:{1024 + i}"
            lines.append(f"  - {{name: r{i}, subject: {{exe: '{subj}'}}, operations: [connect], "
                         f"objects: ['{net}'], action: deny}}")
        else:
            op = ("exec", "open-write", "open-read")[i % 3]
            obj = objects[i % len(objects)]
            lines.append(f"  - {{name: r{i}, subject: {{exe: '{subj}'}}, operations: [{op}], "
                         f"objects: ['{obj}'], action: deny}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    require_root()
    work = Path(tempfile.mkdtemp(prefix="bastion-bench-hips-"))
    pol = work / "policy.yaml"
    pol.write_text(policy_text(RULES))
    pin_root = Path("/sys/fs/bpf") / f"bastion-bench-{uuid.uuid4().hex[:8]}"

    def agent() -> AgentProcess:
        return AgentProcess(extra_args=["--policy", str(pol), "--allow-degraded",
                                        "--test-deadline", "900"], pin_root=pin_root)

    exe_loop, open_loop, conn_loop = (c_program(n) for n in ("exec_loop", "open_loop", "connect_loop"))
    target = work / "f"
    target.write_text("x")
    n_exec = calibrate(lambda k: run_loop([exe_loop, k]), LOOP_S, 200)
    n_conn = calibrate(lambda k: run_loop([conn_loop, k]), LOOP_S, 2000)
    n_open = calibrate(lambda k: run_loop([open_loop, "read", k, target]), LOOP_S, 20000)
    log(f"{RULES}-rule policy; loops: {n_exec} execs, {n_open} opens, {n_conn} connects; "
        f"{ROUNDS} off/on pairs")
    comp = interleaved(lambda: {"exec": run_loop([exe_loop, n_exec]),
                                "open": run_loop([open_loop, "read", n_open, target]),
                                "connect": run_loop([conn_loop, n_conn])}, ROUNDS, agent=agent)
    for name, limit in (("exec", 1.03), ("open", 1.10), ("connect", 1.03)):
        comp.report(name, lambda s: f"{s * 1e6:.0f} us/loop")
        r = comp.ratio(name)
        check_target(f"hips1000_{name}_overhead", r, limit)
        emit(f"hips1000_{name}_overhead", r, "x")
    shutil.rmtree(work, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
