"""What the agent runs is the guardian's choice, not its starter's (issue 13 item 12).

Attack: whoever can set the environment the guardian starts with (a drop-in's
Environment=, `systemctl set-environment`, a wrapper) plants PYTHONPATH with a
sitecustomize.py, PYTHONSTARTUP, LD_LIBRARY_PATH: before the fix the agent the
guardian spawned inherited all of it and ran the planted code as the protected
agent.  After: the agent runs this interpreter with -I -B and an environment of
PATH, LANG, LC_ALL, PYTHONDONTWRITEBYTECODE and BASTION_* only (read back from
/proc/<agent>/cmdline and environ).  And /etc/ld.so.preload or a unit drop-in directory, whose creation
cannot be refused, raises a critical alert when it appears (test paths in tmp).

A TEST instance (tests/support/tamper.py): protected tree and watched paths in
tmp, test pin root, scoped cgroup, dead-man deadline, compat tier."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    evil = tmp_path_factory.mktemp("evil")
    (evil / "sitecustomize.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(evil)!r}, f'ran-{{os.getpid()}}').write_text('planted')\n")
    (evil / "startup.py").write_text("raise SystemExit('PYTHONSTARTUP ran')\n")
    return evil


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory, planted: Path) -> Iterator[T.Instance]:
    tmp = tmp_path_factory.mktemp("agentstart")
    env = {**os.environ, "PYTHONPATH": str(planted), "PYTHONSTARTUP": str(planted / "startup.py"),
           "LD_LIBRARY_PATH": str(planted), "PYTHONINSPECT": "", "HOME": str(planted),
           "BASTION_TEST_KEPT": "kept"}
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp, cg, cgid, deadline_s=120)
        try:
            i.start_guardian("--test-watch", str(tmp / "ld.so.preload"),
                             "--test-watch", str(tmp / "bastion.service.d"),
                             tier="compat", env=env)
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def test_agent_runs_isolated_with_a_scrubbed_environment(inst: T.Instance, planted: Path) -> None:
    pid = inst.agent_pid()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [a.decode() for a in argv[:3]] == [T.PY, "-I", "-B"], argv
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(kv.decode().split("=", 1) for kv in raw if kv)
    # the guardian tells the agent who it is (mutual supervision): BASTION_GUARDIAN_*
    ours = {k: v for k, v in env.items() if not k.startswith("BASTION_GUARDIAN_")}
    expected = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "BASTION_TEST_KEPT": "kept"}
    if "BASTION_NATIVE_DIR" in os.environ:   # the session's root-only copy (tests/conftest.py)
        expected["BASTION_NATIVE_DIR"] = os.environ["BASTION_NATIVE_DIR"]
    assert ours == expected, env
    assert env["BASTION_GUARDIAN_PID"] == str(inst.guardian.pid if inst.guardian else 0)
    time.sleep(0.5)
    ran = sorted(p.name for p in planted.glob("ran-*"))
    assert f"ran-{pid}" not in ran, f"the planted sitecustomize ran in the agent: {ran}"
    # the guardian itself was started with the plant (not isolated here): proof it was live
    assert f"ran-{inst.guardian.pid if inst.guardian else 0}" in ran


def test_restarted_agent_is_isolated_too(inst: T.Instance, planted: Path) -> None:
    old = inst.agent_pid()
    os.kill(old, 9)      # the test process is outside the test cgroup: not an attacker
    pid = inst.wait_agent(not_pid=old)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert argv[1:3] == [b"-I", b"-B"]
    assert b"PYTHONPATH" not in Path(f"/proc/{pid}/environ").read_bytes()
    time.sleep(0.5)
    assert not (planted / f"ran-{pid}").exists()


def test_ld_preload_appearing_is_a_critical_alert(inst: T.Instance) -> None:
    preload = inst.root.parent / "ld.so.preload"
    preload.write_text("/tmp/evil.so\n")
    try:
        a = inst.wait_alert("bastion.tamper.runtime-path",
                            lambda a: a["evidence"]["path"] == str(preload), timeout=10)
    finally:
        preload.unlink()
    assert a["severity"] == "critical"
    assert a["evidence"]["change"] == "appeared"  # type: ignore[index]
    assert "loads the libraries" in str(a["title"])


def test_unit_dropin_appearing_is_a_critical_alert(inst: T.Instance) -> None:
    d = inst.root.parent / "bastion.service.d"
    d.mkdir()
    try:
        a = inst.wait_alert("bastion.tamper.runtime-path",
                            lambda a: a["evidence"]["path"] == str(d), timeout=10)
    finally:
        d.rmdir()
    assert a["severity"] == "critical" and "systemd" in str(a["title"])
