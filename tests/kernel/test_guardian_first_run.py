"""The guardian as `make run` starts it, on a first run and over stale pins (issue 11, items 2, 4).

A TEST instance only (tests/support/tamper.py): the protected set is in tmp,
pins under a test pin root, programs act only on attackers in a test cgroup
and carry a dead-man deadline; teardown kills what is left and removes pins.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

BASTION = str(T.REPO / ".venv" / "bin" / "bastion")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        yield from T.instance(tmp_path, cg, cgid)


def test_first_run_writes_a_root_only_token_and_prints_the_stop_command(inst: T.Instance,
                                                                        tmp_path: Path) -> None:
    tok = tmp_path / "keys" / "maintenance.token"
    inst.start_guardian("--token-out", str(tok), token=False)
    st = tok.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
    assert len(tok.read_bytes().strip()) >= 32
    err = "".join(inst.stderr)
    assert f"bastion stop --token-file {tok}" in err, err
    # that one command stops Bastion
    r = subprocess.run([BASTION, "stop", "--token-file", str(tok), "--guardian-socket", str(inst.gsock)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert inst.guardian is not None and inst.guardian.wait(30) == 0


def test_first_run_never_overwrites_an_existing_token_file(inst: T.Instance, tmp_path: Path) -> None:
    tok = tmp_path / "maintenance.token"
    tok.write_bytes(b"someone else's file\n")
    with pytest.raises(AssertionError, match="already there"):
        inst.start_guardian("--token-out", str(tok), token=False)
    assert tok.read_bytes() == b"someone else's file\n"


def test_a_guardian_over_stale_pins_says_what_is_wrong(inst: T.Instance) -> None:
    inst.start_guardian()
    agent = inst.agent_pid()
    assert (inst.pin_root / "tamper" / "links").is_dir()
    # a crash of both, and the data dir (with the token's hash) gone
    assert inst.guardian is not None
    inst.guardian.send_signal(signal.SIGKILL)
    inst.guardian.wait(10)
    os.kill(agent, signal.SIGKILL)
    shutil.rmtree(inst.data)
    inst.gsock.unlink(missing_ok=True)
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as exc:
        inst.start_guardian(token=False, wait_agent=False)
    msg = str(exc.value)
    assert "still pinned" in msg and "reset --emergency" in msg and "reboot" in msg, msg
    assert inst.guardian.wait(10) == 1 and time.monotonic() - t0 < 20
    assert (inst.pin_root / "tamper" / "links").is_dir()     # nothing was touched


def test_a_second_guardian_is_refused_while_one_runs(inst: T.Instance) -> None:
    inst.start_guardian()
    first = inst.guardian
    with pytest.raises(AssertionError, match="already running"):
        inst.start_guardian(wait_agent=False)
    assert first is not None and first.poll() is None
    inst.guardian = first


def _real_agent(inst: T.Instance, code: Path, tmp: Path) -> list[str]:
    """The real agent, run from a copy of Bastion's code inside the protected tree, in the
    test cgroup (so the test's file protection decides its opens)."""
    pol = tmp / "agent-policy.yaml"
    pol.write_text("version: 1\n")
    env = (f"PYTHONPATH={code} BASTION_BPF_DIR={T.REPO / 'build' / 'bpf'}")
    run = (f"{T.PY} -m bastion.cli.main run --quiet --keep-pins --policy {pol} --data-dir {inst.data} "
           f"--socket {tmp / 'agent.sock'} --pin-root {inst.pin_root} --test-deadline 120")
    return ["/bin/sh", "-c", f"echo $$ > {inst.cg}/cgroup.procs && {env} exec {run}"]


def test_no_false_tamper_alarm_from_our_own_restart_and_queries(inst: T.Instance, tmp_path: Path) -> None:
    code = inst.install / "lib"
    shutil.copytree(T.REPO / "src" / "bastion", code / "bastion",
                    ignore=shutil.ignore_patterns("__pycache__"))
    inst.start_guardian(agent=_real_agent(inst, code, tmp_path))
    sock = tmp_path / "agent.sock"

    def agent_up() -> None:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sock.exists(), "".join(inst.stderr[-30:])

    agent_up()
    first = inst.agent_pid()
    os.kill(first, signal.SIGKILL)        # a crash: the guardian restarts the agent
    inst.wait_agent(not_pid=first, timeout=60)
    sock.unlink(missing_ok=True)
    agent_up()
    # an administrator's queries, run as an outsider (in the test cgroup), from the protected code
    for cmd in (["alerts", "--json"], ["events", "--limit", "5"], ["log", "verify"]):
        r = inst.attack(["env", f"PYTHONPATH={code}", T.PY, "-m", "bastion.cli.main", *cmd,
                         "--data-dir", str(inst.data), "--socket", str(sock)])
        assert r.returncode == 0, (cmd, r.stderr)
        assert "bastion.tamper.agent-died" in r.stdout or cmd[0] != "alerts", r.stdout
    time.sleep(1.0)
    rules = [str(a["rule"]) for a in inst.alerts()]
    assert rules.count("bastion.tamper.agent-died") == 1, rules
    assert not [r for r in rules if r not in ("bastion.tamper.agent-died", "bastion.tamper.protection-on")], \
        [(a["rule"], a["title"]) for a in inst.alerts()]
    assert not list((code / "bastion").rglob("*.pyc"))


def test_a_failed_start_leaves_nothing_pinned(inst: T.Instance) -> None:
    """A guardian whose set-up fails after loading its protection (here: a path it may not
    protect) removes what it pinned: the next start must not meet half-done pins."""
    with pytest.raises(AssertionError, match="must not be protected|forbid|refus"):
        inst.start_guardian("--protect", str(T.REPO / "docs"), wait_agent=False)
    assert inst.guardian is not None and inst.guardian.wait(10) == 1
    assert not (inst.pin_root / "tamper").exists(), list((inst.pin_root / "tamper").rglob("*"))
