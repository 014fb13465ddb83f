"""The decoded-payload pipe gate (``pipegate.bpf.o``, s23-pipegate) on the host kernel,
scoped to the test's own cgroup with a dead-man deadline.

``echo <b64 of "touch MARK"> | base64 -d | sh`` ran its payload before: the user-space
rule kills the shell after its exec record, and the pipeline is over first
(docs/detection.md, "block decided, target exited first").  Now the process that
completes decoder -> (relays) -> stdin shell is killed at its exec, in both exec
orders; a shell with a program of its own (-c) fed by a decoder, a decoder into a
file or into a non-shell, pass."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion.abi import PipegateKind, PipegateRule
from bastion.enforce.pipegate import MECHANISM, RULE, PipeGate
from bastion.events import HipsEvent
from support.cg import scoped_cgroup


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Path, PipeGate]]:
    with scoped_cgroup() as (cg, cgid):
        gate = PipeGate(cgroup_id=cgid, deadline_s=120, self_tgid=os.getpid())
        gate.open()
        try:
            assert gate.stats()["programs"] == 2
            # base64 and a shell at least; the others may not be installed here
            missing = gate.apply()
            assert not any(m.startswith(("base64", "no installed shell")) for m in missing)
            yield cg, gate
        finally:
            gate.close()


@pytest.fixture()
def d() -> Iterator[Path]:
    p = Path(tempfile.mkdtemp(prefix="bastion-test-pipe-"))
    try:
        yield p
    finally:
        shutil.rmtree(p)


def sh_in(cg: Path, script: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``script`` run by /bin/sh -c in cgroup ``cg`` (stdin /dev/null)."""
    return subprocess.run(["/bin/sh", "-c", f'echo $$ > {cg}/cgroup.procs && {script}'],
                          text=True, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def records(gate: PipeGate, n: int = 1, timeout: float = 3.0) -> list[HipsEvent]:
    out: list[HipsEvent] = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        out += gate.poll(0.1)
    return out


def payload(marker: Path) -> str:
    return base64.b64encode(f"touch {marker}\n".encode()).decode()


def test_decoder_piped_into_a_shell_is_killed_and_runs_nothing(rig: tuple[Path, PipeGate],
                                                               d: Path) -> None:
    cg, gate = rig
    gate.poll(0.0)
    r = sh_in(cg, f"echo {payload(d / 'MARK')} | base64 -d | sh; echo rc=$?")
    recs = records(gate)
    assert not (d / "MARK").exists(), r.stdout + r.stderr
    assert len(recs) == 1, recs
    ev = recs[0]
    assert (ev.mechanism, ev.op, ev.action, ev.enforced) == (MECHANISM, "exec", "kill", True)
    assert PipegateRule(ev.rule_id) in (PipegateRule.DECODER, PipegateRule.SHELL)
    f = gate.finding(ev)
    assert f is not None and f.rule == RULE and f.action == "kill" and not f.dry_run
    assert f.enforced_by == MECHANISM and "decoded payload" in f.evidence["prevented"]


def test_shell_first_the_decoder_is_killed(rig: tuple[Path, PipeGate], d: Path) -> None:
    """The shell execs first (the decoder's stdin redirect waits on a fifo): the decoder
    is killed at its exec and the shell reads EOF."""
    cg, gate = rig
    gate.poll(0.0)
    (d / "b64").write_text(payload(d / "MARK") + "\n")
    os.mkfifo(d / "go")
    p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && "
                          f"base64 -d < {d}/go | sh; echo rc=$?"],
                         text=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)   # sh exec'd; base64's child blocks opening the fifo
        try:
            with open(d / "go", "w") as w:
                w.write((d / "b64").read_text())
        except BrokenPipeError:
            pass          # base64, the fifo's reader, was killed at its exec
        out, _ = p.communicate(timeout=20)
    finally:
        p.kill()
        p.wait()
    recs = records(gate)
    assert "rc=0" in out and not (d / "MARK").exists(), out
    assert [(PipegateRule(e.rule_id), e.subject, e.path, e.enforced) for e in recs] == [
        (PipegateRule.DECODER, PipegateKind.BASE64, os.path.realpath("/usr/bin/base64"), True)]


def test_decoder_first_the_shell_is_killed(rig: tuple[Path, PipeGate], d: Path) -> None:
    """The decoder execs (and exits) first, the shell execs later on the same pipe."""
    cg, gate = rig
    gate.poll(0.0)
    os.mkfifo(d / "go")
    p = subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {cg}/cgroup.procs && "
                          f"echo {payload(d / 'MARK')} | base64 -d | "
                          f"{{ read x < {d}/go; exec sh; }}; echo rc=$?"],
                         text=True, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)   # base64 exec'd and wrote into the pipe
        with open(d / "go", "w") as w:
            w.write("go\n")
        out, _ = p.communicate(timeout=20)
    finally:
        p.kill()
        p.wait()
    recs = records(gate)
    assert "rc=137" in out and not (d / "MARK").exists(), out
    assert [(PipegateRule(e.rule_id), e.subject, e.enforced) for e in recs] == [
        (PipegateRule.SHELL, PipegateKind.SHELL, True)]
    assert recs[0].target_pid != 0   # the decoder's tgid


def test_a_relay_between_decoder_and_shell_does_not_hide_it(rig: tuple[Path, PipeGate],
                                                            d: Path) -> None:
    cg, gate = rig
    gate.poll(0.0)
    r = sh_in(cg, f"echo {payload(d / 'MARK')} | base64 -di | cat | dd status=none | sh")
    recs = records(gate)
    assert not (d / "MARK").exists(), r.stdout + r.stderr
    assert recs and all(e.enforced for e in recs), recs


def test_benign_decodes_pass(rig: tuple[Path, PipeGate], d: Path) -> None:
    cg, gate = rig
    gate.poll(0.0)
    b64 = payload(d / "MARK")
    (d / "in").write_text(b64 + "\n")
    r = sh_in(cg, f"base64 -d {d}/in > {d}/out1 && echo {b64} | base64 -d | wc -c && "
                  f"echo {b64} | base64 --decode | sh -c 'cat > {d}/out2' && "
                  f"echo 746f7563680a | xxd -r -p | cat > {d}/out3 && "
                  f"echo {b64} | base64 -d | python3 -c 'import sys; sys.stdin.read()' && "
                  f"echo {b64} | base64 -d | perl -e 'print <STDIN>' > /dev/null && "
                  f"echo 'touch {d}/CLEAN' | sh && echo {b64} | base64 | sh -s x 2>/dev/null;"
                  f" echo rc=$?")
    assert "rc=127" in r.stdout or "rc=2" in r.stdout or "rc=0" in r.stdout, r.stdout + r.stderr
    assert (d / "out1").read_text() == (d / "out2").read_text() == f"touch {d / 'MARK'}\n"
    assert (d / "out3").read_text() == "touch\n"
    assert (d / "CLEAN").exists() and not (d / "MARK").exists()
    assert records(gate, timeout=0.5) == []


def test_dry_run_reports_the_kill_it_does_not_send(rig: tuple[Path, PipeGate], d: Path) -> None:
    cg, gate = rig
    gate.poll(0.0)
    gate.set_dry_run(True)
    try:
        sh_in(cg, f"echo {payload(d / 'MARK')} | base64 -d | sh")
    finally:
        gate.set_dry_run(False)
    recs = records(gate)
    assert (d / "MARK").exists()
    assert len(recs) == 1 and not recs[0].enforced and recs[0].ret == 0, recs
    f = gate.finding(recs[0])
    assert f is not None and f.dry_run and f.action == "kill" and f.enforced_by == MECHANISM


@pytest.mark.parametrize("form", [
    "mkfifo {d}/f; base64 -d > {d}/f < {d}/b64 & sh < {d}/f; wait",   # a fifo, not a pipe
    "base64 -d < {d}/b64 | sh -s a b",                                # -s: stdin, args after
    "base64 -d < {d}/b64 | tee /dev/null | sh",                       # a relay
    "openssl base64 -d < {d}/b64 | sh",
    "base64 -d < {d}/b64 | sh /dev/stdin",                            # stdin named as a script
    "base64 -d < {d}/b64 | bash /proc/self/fd/0",
    "base64 -d < {d}/py64 | python3",                                  # an interpreter on stdin
    "base64 -d < {d}/py64 | python3 -",
])
def test_other_forms_are_killed(rig: tuple[Path, PipeGate], d: Path, form: str) -> None:
    cg, gate = rig
    gate.poll(0.0)
    (d / "b64").write_text(payload(d / "MARK") + "\n")
    (d / "py64").write_text(base64.b64encode(f"open('{d / 'MARK'}', 'w')\n".encode()).decode())
    if "openssl" in form and shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    r = sh_in(cg, form.format(d=d))
    recs = records(gate)
    assert not (d / "MARK").exists(), r.stdout + r.stderr
    assert len(recs) == 1 and recs[0].enforced, recs
