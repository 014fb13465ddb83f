"""Compile after delivery on the live sensor (s17-compile, T1027.004).

A non-interactive shell in the test's cgroup compiles a tiny C file in a test-owned
directory and runs the product (``gcc x.c -o p && ./p``, the atomic's structure), then
builds and runs the same program through ``make`` (the installed make, by inode): the
first is ``behavior.compile_after_delivery`` medium, the make build is silent.  The
linker's write-open (dev, inode) pairs with the product's exec; only alerts, nothing is
killed."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bastion.detect.behavior import behavior_rules, live_probes
from bastion.detect.engine import Engine, RuleContext
from bastion.proctable import ProcessTable
from bastion.sensors.bpf import BpfSensor
from support.cg import scoped_cgroup


def test_script_compile_and_run_live(tmp_path: Path) -> None:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed")
    work = tmp_path / "w"
    work.mkdir()
    (work / "x.c").write_text("int main(void) { return 0; }\n")
    (work / "Makefile").write_text("check: m\n\t./m\n\nm: x.c\n\t$(CC) -o $@ x.c\n")
    script = f"cd {work}\ngcc x.c -o p && ./p\nmake -s check\n"
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid)
        sensor.open()
        try:
            procs = ProcessTable()
            procs.seed()
            engine = Engine(behavior_rules(probes=live_probes()))
            ctx = RuleContext(procs)
            shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
            proc = subprocess.Popen(["/bin/sh", "-c", shell, "sh", "/bin/sh", "-c", script],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            found = []
            seen: list[str] = []     # what reached the rule about the product (a miss says why)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                for ev in sensor.poll(0.1) or []:
                    procs.update(ev)
                    if str(work) in (getattr(ev, "path", "") or "") + ev.proc.exe:
                        chain = procs.ancestry(ev.proc.pid, 4)
                        seen.append(f"{ev.type} {ev.proc.pid} {ev.proc.exe} {getattr(ev, 'path', '')} "
                                    f"flags={getattr(ev, 'flags', '')} chain="
                                    f"{[(c.pid, c.exe, c.same_process(ev.proc.start_ns)) for c in chain[:1]]}"
                                    f"{[(c.pid, c.exe) for c in chain[1:]]}")
                    found += engine.evaluate(procs.enrich(ev), ctx)
                if proc.poll() is not None and deadline - time.monotonic() > 1.5:
                    deadline = time.monotonic() + 1.5     # drain what is left, then stop
            assert proc.wait(10) == 0
            got = [(f.evidence["binary"], f.severity, f.evidence["session"])
                   for f in found if f.rule == "behavior.compile_after_delivery"]
            assert got == [(f"{work}/p", "medium", "script")], ([f.title for f in found], seen)
            assert not engine.errors
        finally:
            sensor.close()
