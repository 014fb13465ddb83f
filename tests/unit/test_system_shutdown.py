"""The guardian obeys only the system's final shutdown (s22): the pure parts."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bastion.guard import protect
from bastion.guard.guardian import from_system_shutdown
from bastion.guard.protect import F_SELF, F_SHUTDOWN_EXE, ProtectedObject, ProtectedSet

pytestmark = pytest.mark.unit


def _info(pid: int, code: int = 0) -> SimpleNamespace:
    return SimpleNamespace(si_code=code, si_pid=pid, si_uid=0)


def test_only_the_init_running_a_registered_program_is_obeyed(tmp_path: Path) -> None:
    me = Path(os.path.realpath(f"/proc/{os.getpid()}/exe"))
    other = Path(os.path.realpath("/bin/sh"))
    if os.stat(me).st_uid != 0 and os.geteuid() == 0:
        pytest.skip("the interpreter is not root-owned here")
    assert from_system_shutdown(_info(os.getpid()), os.getpid(), [me])
    # another sender, another program, a signal not sent by kill(2), a gone init
    assert not from_system_shutdown(_info(os.getppid()), os.getpid(), [me])
    assert not from_system_shutdown(_info(os.getpid()), os.getpid(), [other])
    assert not from_system_shutdown(_info(os.getpid(), code=-6), os.getpid(), [me])   # tkill
    assert not from_system_shutdown(_info(os.getpid()), os.getpid(), [tmp_path / "absent"])
    assert not from_system_shutdown(_info(2 ** 22 + 7), 2 ** 22 + 7, [me])


def test_a_program_others_may_write_is_no_witness(tmp_path: Path) -> None:
    exe = tmp_path / "systemd-shutdown"
    exe.write_bytes(b"\x7fELF")
    exe.chmod(0o775)                    # group-writable
    assert protect.shutdown_exe_keys([exe]) == {}
    exe.chmod(0o755)
    if os.geteuid() == 0:               # root-owned: registered once, whatever the name
        again = tmp_path / ".." / tmp_path.name / "systemd-shutdown"
        assert list(protect.shutdown_exe_keys([exe, tmp_path / "absent", again]).values()) == [
            str(exe)]
    (tmp_path / "dir").mkdir()
    assert protect.shutdown_exe_keys([tmp_path / "dir"]) == {}


def test_the_flag_protects_nothing_and_merges_with_a_protected_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the shutdown program must be root-owned")
    exe = tmp_path / "systemd-shutdown"
    exe.write_bytes(b"\x7fELF")
    exe.chmod(0o755)
    st = os.stat(exe)
    key = (protect.kernel_dev(st.st_dev), st.st_ino)
    alone = protect.with_shutdown_exes(ProtectedSet((), frozenset(), ()), [exe])
    assert [(o.dev, o.ino, o.flags) for o in alone.objects] == [(*key, F_SHUTDOWN_EXE)]
    assert alone.roots() == [] and alone.devs == frozenset()     # nothing protected
    both = protect.with_shutdown_exes(
        ProtectedSet((ProtectedObject(str(exe), *key, F_SELF, 1, False),), frozenset({key[0]}), ()),
        [exe])
    assert [o.flags for o in both.objects] == [F_SELF | F_SHUTDOWN_EXE]
    assert [o.oid for o in both.objects] == [1]


def test_the_unit_does_not_hold_a_reboot_for_long() -> None:
    from bastion.install import _UNIT

    unit = (Path(__file__).resolve().parents[2] / "packaging" / "bastion.service").read_text()
    for text in (unit, _UNIT):
        assert "TimeoutStopSec=10s" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
