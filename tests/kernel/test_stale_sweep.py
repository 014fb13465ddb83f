"""A SIGKILLed test session's leftovers are removed by the next session's start.

A session killed with SIGKILL runs no teardown: its empty ``bastion-test-*`` cgroup
(tests/support/cg.py ``scoped_cgroup``), its ``/run/bastion-native-*`` copy and its
``/sys/fs/bpf/bastion-test-*`` pins stayed for good (before: the next session
removed nothing, the cgroup was still there after it).  Sessions run in parallel here,
so only what a dead owner left may go: a live session's cgroup, and a dead owner's
cgroup that still holds a process, are kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bastion.kernel import cgroup
from bastion.kernel.bpffs import cgroup2_root
from support.cg import scoped_cgroup
from support.stale import owned_name

pytestmark = pytest.mark.kernel
TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent

# a stand-in session: a scoped cgroup, a native copy and a pin directory, named as the
# session's own are; one more cgroup holding a process (busy when the owner is killed)
CHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    from pathlib import Path
    from support.cg import scoped_cgroup
    from support.stale import owned_name
    with scoped_cgroup() as (cg, _):
        native = Path("/run") / owned_name("bastion-native-")
        native.mkdir()
        (native / "libx.so").write_bytes(b"x")
        pins = Path("/sys/fs/bpf") / owned_name("bastion-test-")
        pins.mkdir()
        busy = Path(%(root)r) / owned_name("bastion-test-")
        busy.mkdir()
        sleeper = subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs"; exec sleep 60',
                                    str(busy)], start_new_session=True)
        print(cg, native, pins, busy, sleeper.pid, flush=True)
        time.sleep(120)
""")


def _nested_session() -> subprocess.CompletedProcess[str]:
    """A new pytest session (collection only) in this checkout: its start sweeps."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co",
                           str(TESTS / "unit" / "test_layout.py")], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


def test_a_killed_sessions_leftovers_go_at_the_next_start_a_live_ones_stay() -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    child = subprocess.Popen([sys.executable, "-c", CHILD % {"root": str(cgroup2_root())}],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=REPO)
    assert child.stdout is not None
    line = child.stdout.readline().split()
    if len(line) != 5:
        child.kill()
        raise AssertionError(f"the stand-in session did not start: {line} {child.communicate()[1]}")
    cg, native, pins, busy = (Path(p) for p in line[:4])
    sleeper = int(line[4])
    child.send_signal(signal.SIGKILL)       # no teardown runs
    child.wait()
    try:
        with scoped_cgroup() as (mine, _):  # this live session's: must stay
            assert cg.is_dir() and native.is_dir() and pins.is_dir()
            run = _nested_session()
            assert run.returncode == 0, run.stdout + run.stderr
            assert not cg.exists(), f"stale empty cgroup {cg} not removed:\n{run.stdout}"
            assert not native.exists() and not pins.exists()
            for p in (cg, native, pins):
                assert f"stale test leftovers removed: {p}" in run.stdout
            assert busy.is_dir()            # dead owner, but a process in it: kept, said
            assert f"stale test leftovers kept: {busy}" in run.stdout
            assert mine.is_dir()            # a live owner's: never touched
            assert str(mine) not in run.stdout
    finally:
        try:
            os.kill(sleeper, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cgroup.remove(busy, timeout_s=10)
        for p in (cg,):
            cgroup.remove(p, timeout_s=10)
        for p in (native, pins):
            subprocess.run(["rm", "-rf", str(p)], check=False)


def test_owner_names_parse() -> None:
    from support.stale import owner_state
    assert owner_state(owned_name("bastion-test-")) == "alive"
    assert owner_state("bastion-test-o999999999_1-abc") == "dead"
    assert owner_state(f"bastion-test-o{os.getpid()}_1-abc") == "dead"   # pid reused
    assert owner_state("bastion-test-0123456789") == "unknown"        # no owner: kept
    assert owner_state(f"bastion-test-ident-{os.getpid()}") == "alive"
