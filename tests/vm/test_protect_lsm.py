"""The protected set covers what the agent runs, lsm tier (issue 13 item 12), inside
the test VM.

Attack: `systemctl disable bastion` (or `rm`) removes the multi-user.target.wants
link; before the fix the protected set resolved the link to the unit and protected
only the unit, so the removal went through and Bastion would not start at the next
boot.  After: the link itself is protected (unlink, replace refused with EPERM and a
critical alert).  The agent runs this interpreter with -I -B.

A TEST instance (tests/support/tamper.py): the unit, its wants link and a copy of a
shared library live under tmp; hooks act only on attackers in the test cgroup,
until the dead-man deadline."""

from __future__ import annotations

import os
import shutil
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
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_protect_lsm.py`")


@pytest.fixture(scope="module")
def inst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[T.Instance]:
    tmp = tmp_path_factory.mktemp("protect")
    sysd = tmp / "systemd" / "system"
    (sysd / "multi-user.target.wants").mkdir(parents=True)
    (sysd / "bastion.service").write_text("[Service]\nExecStart=/bin/true\n")
    (sysd / "multi-user.target.wants" / "bastion.service").symlink_to(sysd / "bastion.service")
    (tmp / "lib").mkdir()
    shutil.copy("/usr/lib/x86_64-linux-gnu/libz.so.1", tmp / "lib" / "libz.so.1")
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp, cg, cgid, deadline_s=200)
        try:
            i.start_guardian("--protect", str(sysd / "multi-user.target.wants" / "bastion.service"),
                             "--protect", str(tmp / "lib" / "libz.so.1"), tier="lsm")
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def _wants(inst: T.Instance) -> Path:
    return inst.root.parent / "systemd" / "system" / "multi-user.target.wants" / "bastion.service"


def _refused(inst: T.Instance, argv: list[str], *rules: str) -> None:
    def hits() -> list[dict[str, object]]:
        return [a for a in inst.alerts() if a["rule"] in rules and a["action"] == "denied"]

    before = len(hits())
    r = inst.attack(argv)
    assert r.returncode > 0, f"{argv}: not refused ({r.returncode}): {r.stdout} {r.stderr}"
    assert "ermission" in r.stderr or "not permitted" in r.stderr, r.stderr
    deadline = time.monotonic() + 5
    while len(hits()) == before:
        assert time.monotonic() < deadline, \
            f"no alert {rules}: {[a['rule'] for a in inst.alerts()]}"
        time.sleep(0.1)
    assert all(a["severity"] == "critical" for a in hits())


def test_wants_link_cannot_be_removed(inst: T.Instance) -> None:
    link = _wants(inst)
    _refused(inst, ["rm", "-f", str(link)], "bastion.tamper.unlink")
    assert link.is_symlink() and os.readlink(link).endswith("bastion.service")


def test_wants_link_cannot_be_replaced(inst: T.Instance) -> None:
    link = _wants(inst)
    _refused(inst, ["ln", "-sfn", "/dev/null", str(link)], "bastion.tamper.unlink",
             "bastion.tamper.rename")
    assert os.readlink(link).endswith("bastion.service")


def test_a_protected_library_cannot_be_rewritten(inst: T.Instance) -> None:
    lib = inst.root.parent / "lib" / "libz.so.1"
    before = lib.read_bytes()
    _refused(inst, ["/bin/sh", "-c", f"printf x >> {lib}"], "bastion.tamper.open-write")
    assert lib.read_bytes() == before


def test_agent_runs_isolated(inst: T.Instance) -> None:
    argv = Path(f"/proc/{inst.agent_pid()}/cmdline").read_bytes().split(b"\0")
    assert argv[1:3] == [b"-I", b"-B"], argv
