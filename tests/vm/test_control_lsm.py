"""The control socket under tamper protection, lsm tier, inside the test VM
(issue 13 item 11).

* the socket directory protected (as the guardian protects /run/bastion): root
  in the test cgroup can neither remove the guardian's socket nor bind its own
  server there — refused in the kernel, alerted;
* an impostor bound at an unprotected socket path, named like the guardian, is
  refused by `bastion stop` before anything is sent (SO_PEERCRED against the
  pinned enrolled identity, read through bpf while protection is on).

A TEST instance only (tests/support/tamper.py): hooks act only on attackers in
the test cgroup, with a dead-man deadline; teardown kills and unpins.
"""

from __future__ import annotations

import os
import subprocess
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
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh tests/vm/test_control_lsm.py`")
BASTION = str(T.REPO / ".venv" / "bin" / "bastion")
IMPOSTOR = str(T.REPO / "tests" / "support" / "impostor.py")


def stand_in() -> list[str]:
    return [T.PY, "-c", "import time; time.sleep(300)"]


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp_path, cg, cgid, deadline_s=200)
        run = tmp_path / "run"
        run.mkdir(mode=0o700)
        i.gsock = run / "guardian.sock"
        try:
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-40:]))
            i.teardown()


def test_the_protected_socket_directory_cannot_take_an_impostor(inst: T.Instance) -> None:
    t0 = time.monotonic()
    inst.start_guardian("--protect", str(inst.gsock.parent), tier="lsm", agent=stand_in(),
                        start_timeout=240)
    print(f"guardian up in {time.monotonic() - t0:.1f}s (TCG)")
    ino = inst.gsock.stat().st_ino
    r = inst.attack(["rm", "-f", str(inst.gsock)])
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, (r.returncode, r.stderr)
    fake = inst.gsock.parent / "fake.sock"
    r = inst.attack_py(f"import socket; s = socket.socket(socket.AF_UNIX); s.bind({str(fake)!r})")
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    assert inst.gsock.stat().st_ino == ino and not fake.exists()
    inst.wait_alert("bastion.tamper.unlink")


def test_an_impostor_named_like_the_guardian_gets_nothing(inst: T.Instance, tmp_path: Path) -> None:
    inst.start_guardian(tier="lsm", agent=stand_in(),
                        start_timeout=240)
    other = tmp_path / "impostor.sock"
    capture = tmp_path / "captured"
    capture.touch()
    fake = subprocess.Popen([T.PY, IMPOSTOR, str(other), str(capture), "plain",
                             "bastion.cli.guard", "guardian"], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "listening"
        r = subprocess.run([BASTION, "stop", "--token-file", str(inst.token_file),
                            "--guardian-socket", str(other)],
                           env={**os.environ, "BASTION_PIN_ROOT": str(inst.pin_root)},
                           capture_output=True, text=True, timeout=300)
        got = capture.read_bytes()
    finally:
        fake.kill()
        fake.wait(10)
    assert r.returncode == 1 and "not enrolled" in r.stderr, (r.stdout, r.stderr)
    assert got == b""
    assert inst.guardian is not None and inst.guardian.poll() is None
    # the genuine guardian, checked the same way, accepts the proven token — from an
    # administrator inside the protected scope (the test cgroup), not enrolled: the check
    # reads the pinned identities through a read-only fd, which the tamper hook allows
    # (s22: a write-capable fd was refused, so `bastion stop` failed with "the enrolled
    # identities cannot be read" everywhere protection covers, i.e. on every production host)
    r = inst.attack(["env", f"BASTION_PIN_ROOT={inst.pin_root}", BASTION, "stop",
                     "--token-file", str(inst.token_file), "--guardian-socket", str(inst.gsock)],
                    timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert inst.guardian.wait(60) == 0
