"""The decoded-payload pipe gate (``pipegate.bpf.o``, s23-pipegate) on the lsm tier:
Debian's stock 6.1 kernel.  The lsm tier loads the same object as compat (the decision
needs the new image's argv, out of reach in bprm_check_security: docs/detection.md
"s23-pipegate"), so this checks that 6.1's verifier takes it (a bpf_loop argv parse, a
64-bit atomic fetch-or on an LRU value) and that it stops the pipeline there: both exec
orders killed, a shell with its own -c program fed by a decoder passes, python3 reading
its program from the pipe is killed."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.abi import PipegateRule  # noqa: E402
from bastion.enforce.pipegate import MECHANISM, PipeGate  # noqa: E402
from bastion.events import HipsEvent  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)


def _records(gate: PipeGate, n: int, timeout: float = 5.0) -> list[HipsEvent]:
    out: list[HipsEvent] = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        out += gate.poll(0.2)
    return out


def _gated(cg: Path, script: str, fifo: Path, line: str) -> str:
    """Run ``script`` in ``cg``; after 1 s (the first end exec'd and waits on ``fifo``)
    write ``line`` into the fifo; the script's output."""
    p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && {script}"],
                         text=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        try:
            with open(fifo, "w") as w:
                w.write(line)
        except BrokenPipeError:
            pass                  # the fifo's reader was killed at its exec
        out, _ = p.communicate(timeout=60)
        return out
    finally:
        p.kill()
        p.wait()


def test_decoded_payload_into_a_shell_is_killed_in_both_exec_orders_on_6_1() -> None:
    d = Path(tempfile.mkdtemp(prefix="bpipe-"))
    try:
        b64 = base64.b64encode(f"touch {d}/MARK\n".encode()).decode()
        with scoped_cgroup() as (cg, cgid):
            gate = PipeGate(cgroup_id=cgid, deadline_s=120, self_tgid=os.getpid())
            gate.open()
            try:
                assert gate.stats()["programs"] == 2
                assert not any(m.startswith(("base64", "no installed shell"))
                               for m in gate.apply())
                # the shell first: the decoder is killed, the shell reads EOF
                os.mkfifo(d / "go1")
                out = _gated(cg, f"base64 -d < {d}/go1 | sh; echo rc=$?", d / "go1", b64 + "\n")
                recs = _records(gate, 1)
                assert "rc=0" in out and not (d / "MARK").exists(), out
                assert [(PipegateRule(e.rule_id), e.mechanism, e.enforced) for e in recs] == [
                    (PipegateRule.DECODER, MECHANISM, True)], recs
                # the decoder first: the shell is killed at its exec
                os.mkfifo(d / "go2")
                out = _gated(cg, f"echo {b64} | base64 -d | {{ read x < {d}/go2; exec sh; }};"
                             " echo rc=$?", d / "go2", "go\n")
                recs = _records(gate, 1)
                assert "rc=137" in out and not (d / "MARK").exists(), out
                assert [(PipegateRule(e.rule_id), e.enforced) for e in recs] == [
                    (PipegateRule.SHELL, True)], recs
                # a shell running its own -c program, fed by a decoder: passes
                r = subprocess.run(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && "
                                    f"echo {b64} | base64 -d | sh -c 'cat > {d}/out'"],
                                   text=True, capture_output=True, timeout=60,
                                   stdin=subprocess.DEVNULL)
                assert r.returncode == 0, r.stderr
                assert (d / "out").read_text() == f"touch {d}/MARK\n"
                assert _records(gate, 1, timeout=1.0) == [] and not (d / "MARK").exists()
                # an interpreter reading its program from stdin: killed at its exec
                py = base64.b64encode(f"open('{d}/MARK', 'w')\n".encode()).decode()
                r = subprocess.run(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && "
                                    f"echo {py} | base64 -d | python3"],
                                   text=True, capture_output=True, timeout=60,
                                   stdin=subprocess.DEVNULL)
                recs = _records(gate, 1)
                assert not (d / "MARK").exists(), r.stderr
                assert recs and all(e.enforced for e in recs), recs
            finally:
                gate.close()
    finally:
        shutil.rmtree(d)
