"""Issue 14.4 on the lsm tier (in the VM): a maintenance window re-arms tamper protection
when it closes (deadline, or `bastion maintenance end`): the BPF LSM object is loaded again,
the agent enrolled again, and a write to the protected tree is refused again.

Scoped like test_tamper_lsm.py: protected set in tmp, a test pin root, programs act only
on attackers in the test cgroup with a dead-man deadline; teardown removes everything.
"""

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

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_maintenance_lsm.py`"
)


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp_path, cg, cgid, deadline_s=300)
        try:
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def _wait(inst: T.Instance, want: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout    # readiness (slow TCG VM), not a target
    while inst.status()["tamper_protection"] != want:
        assert time.monotonic() < deadline, f"protection {inst.status()['tamper_protection']}, " \
            f"not {want}:\n" + "".join(inst.stderr[-20:])
        time.sleep(0.2)


def _write_refused(inst: T.Instance) -> bool:
    pol = inst.etc / "policy.yaml"
    before = pol.read_bytes()
    r = inst.attack(["sh", "-c", f"echo evil >> {pol}"])
    refused = r.returncode != 0 and ("ermission" in r.stderr or "not permitted" in r.stderr)
    assert refused == (pol.read_bytes() == before), (r.returncode, r.stderr)
    return refused


def test_the_window_re_arms_lsm_protection(inst: T.Instance) -> None:
    from bastion.cli.guard import require_token

    inst.start_guardian("--window-minutes", "0.2", tier="lsm")
    agent = inst.agent_pid()
    assert inst.status()["tamper_protection"] == "full" and _write_refused(inst)
    require_token(inst.token_file, what="upgrade", data_dir=inst.data, pin_root=inst.pin_root,
                  guardian_socket=inst.gsock)
    _wait(inst, "off", 20)
    assert not _write_refused(inst)
    (inst.etc / "policy.yaml").write_text("version: 1\n")
    _wait(inst, "full", 90)                 # the 12 s window closed
    a = inst.wait_alert("bastion.tamper.rearmed", timeout=10)
    assert "its deadline passed" in str(a["title"]), a
    st = inst.status()
    assert any(i["pid"] == agent for i in st["identities"]), st  # type: ignore[union-attr,index]
    assert _write_refused(inst)
    inst.wait_alert("bastion.tamper.open-write", lambda a: a["action"] == "denied")

    # and at once with `maintenance end`
    require_token(inst.token_file, what="upgrade", data_dir=inst.data, pin_root=inst.pin_root,
                  guardian_socket=inst.gsock)
    _wait(inst, "off", 20)
    from bastion.control import request
    from bastion.guard.control import server_check
    from bastion.guard.identity import ROLE_GUARDIAN

    resp = request(inst.gsock, "maintenance.end", timeout=90,
                   verify_server=server_check(inst.pin_root, (ROLE_GUARDIAN,), inst.gsock))
    assert resp["done"] and resp["rearmed"] and resp["tamper_protection"] == "full", resp
    assert _write_refused(inst)
    assert T.proc_state(agent) in T.ALIVE and inst.agent_pid() == agent
