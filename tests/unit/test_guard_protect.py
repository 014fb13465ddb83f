"""The protected set covers the code the agent runs (issue 13 item 12): the real
interpreter binary, the standard library and site directories, the shared objects
mapped into the interpreter, the libbpf loaded by absolute path, the host's Python
startup hooks, the unit's drop-ins and wants link, /etc/ld.so.preload.  A symlink is
protected as itself.  Paths whose creation cannot be refused are watched.

Pure path computations: nothing is protected here (no kernel)."""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from pathlib import Path

import pytest

from bastion.guard import protect
from bastion.kernel._ffi import libbpf_path


def _paths(tmp: Path) -> set[Path]:
    return {Path(os.path.abspath(p)) for p in protect.default_paths(data_dir=tmp / "data")}


def test_the_real_interpreter_and_its_stdlib_are_protected(tmp_path: Path) -> None:
    got = _paths(tmp_path)
    real = Path(os.path.realpath(sys.executable))
    assert real != Path(sys.executable) or not Path(sys.executable).is_symlink()
    assert real in got, f"the interpreter binary {real} is not protected"
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        assert Path(sysconfig.get_paths()[key]) in got, key
    assert Path(sys.prefix) in got


def test_the_libraries_it_runs_are_protected(tmp_path: Path) -> None:
    got = _paths(tmp_path)
    assert libbpf_path() in got and libbpf_path().is_absolute()
    assert not libbpf_path().is_symlink()          # the file itself, not libbpf.so.1 -> ...
    maps = Path("/proc/self/maps").read_text()
    libc = next(Path(line.split()[5]) for line in maps.splitlines()
                if len(line.split()) >= 6 and "/libc.so" in line.split()[5])
    assert libc in got, "libc (mapped into the interpreter) is not protected"
    for hook in glob.glob("/etc/python3*"):        # Debian's sitecustomize.py lives there
        assert Path(hook) in got, hook


def test_sys_path_entries_but_not_the_script_directory(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An editable install's .pth entry is protected; the directory of the script
    (sys.path[0]: /usr/bin for the console script) is not — the agent runs -I."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "scriptdir"), *sys.path, str(site)])
    (tmp_path / "scriptdir").mkdir()
    got = set(protect.interpreter_paths())
    assert site in got
    assert tmp_path / "scriptdir" not in got


def test_unit_dropins_wants_link_and_ld_preload_when_present(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    unit = etc / "systemd/system/bastion.service"
    dropin = etc / "systemd/system/bastion.service.d"
    wants = etc / "systemd/system/multi-user.target.wants/bastion.service"
    preload = etc / "ld.so.preload"
    dropin.mkdir(parents=True)
    (dropin / "override.conf").write_text("[Service]\n")
    unit.write_text("[Unit]\n")
    wants.parent.mkdir(parents=True)
    wants.symlink_to(unit)
    preload.write_text("")
    monkeypatch.setattr(protect, "SERVICE_UNITS", (unit, etc / "absent.service"))
    monkeypatch.setattr(protect, "DROPIN_DIRS", (dropin, etc / "absent.service.d"))
    monkeypatch.setattr(protect, "WANTS_LINKS", (wants,))
    monkeypatch.setattr(protect, "LD_SO_PRELOAD", preload)
    got = set(protect.default_paths(data_dir=tmp_path / "data", install_tree=False))
    assert {unit, dropin, wants, preload} <= got
    assert etc / "absent.service" not in got and etc / "absent.service.d" not in got
    # the wants link is protected as itself (removing it disables the agent at boot)
    ps = protect.resolve(got)
    keys = {(o.ino, o.flags) for o in ps.objects}
    assert (os.lstat(wants).st_ino, protect.F_SELF) in keys
    assert any(o.ino == os.stat(unit).st_ino and o.flags & protect.F_SELF for o in ps.objects)
    assert any(o.ino == os.stat(dropin).st_ino and o.flags & protect.F_SUBTREE for o in ps.objects)


def test_a_symlink_is_protected_as_itself_and_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    ps = protect.resolve([link])
    inos = {o.ino: o for o in ps.objects}
    assert os.lstat(link).st_ino in inos and inos[os.lstat(link).st_ino].flags & protect.F_SELF
    assert os.stat(target).st_ino in inos and inos[os.stat(target).st_ino].flags & protect.F_SELF
    with pytest.raises(Exception, match="overlaps"):
        protect.resolve([link], forbid=[link])


def test_mapped_libraries_parse() -> None:
    maps = ("55d0-55d1 r--p 00000000 fd:01 123 /usr/bin/python3.11\n"
            "7f00-7f01 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7f01-7f02 r--p 00001000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
            "7f02-7f03 r-xp 00000000 00:01 789 /memfd:libffi (deleted)\n"
            "7f03-7f04 r-xp 00000000 fd:01 790 /tmp/evil.so (deleted)\n"
            "7f04-7f05 rw-p 00000000 00:00 0 \n"
            "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n"
            "7f05-7f06 r--p 00000000 fd:01 791 /usr/lib/locale/locale-archive\n"
            "7f06-7f07 r-xp 00000000 fd:01 792 /opt/py/lib/python3.11/lib-dynload/_ctypes.cpython-311.so\n")
    assert protect.mapped_libraries(maps) == [
        Path("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/opt/py/lib/python3.11/lib-dynload/_ctypes.cpython-311.so")]


def test_watch_reports_appearance_change_and_removal(tmp_path: Path) -> None:
    preload, dropin = tmp_path / "ld.so.preload", tmp_path / "bastion.service.d"
    w = protect.PathWatch((preload, dropin))
    assert w.changes() == [] and w.present() == []
    preload.write_text("/tmp/evil.so\n")
    ch = w.changes()
    assert [(c.path, c.kind) for c in ch] == [(str(preload), "appeared")]
    assert w.changes() == []                       # reported once
    dropin.mkdir()
    preload.write_text("/tmp/evil2.so /tmp/more.so\n")
    assert sorted((c.path, c.kind) for c in w.changes()) == [
        (str(dropin), "appeared"), (str(preload), "changed")]
    preload.unlink()
    assert [(c.path, c.kind) for c in w.changes()] == [(str(preload), "removed")]
    assert w.present() == [str(dropin)]


def test_the_default_watch_covers_what_cannot_be_refused() -> None:
    w = set(protect.WATCHED)
    assert Path("/etc/ld.so.preload") in w
    assert Path("/etc/systemd/system/bastion.service.d") in w
    assert Path("/run/systemd/system/bastion.service.d") in w
    assert Path("/etc/systemd/system/multi-user.target.wants/bastion.service") in w
    assert Path("/etc/systemd/system/bastion.service") in w


def test_system_libraries_are_told_apart_for_the_compat_tier(tmp_path: Path) -> None:
    """libc & co. (outside the interpreter's prefixes) get no fanotify permission mark
    on the compat tier (every exec on the host opens them): they are split off and
    reported; the interpreter, its stdlib and libpython are not."""
    ps = protect.resolve(protect.default_paths(data_dir=tmp_path / "data"))
    shared = {o.path for o in protect.system_libraries(ps)}
    assert str(libbpf_path()) in shared
    assert any("/libc.so" in p for p in shared)
    real = os.path.realpath(sys.executable)
    assert real not in shared and not any(p.startswith(sys.base_prefix + "/") for p in shared
                                          if sys.base_prefix != "/usr")
    rest = protect.without(ps, protect.system_libraries(ps))
    assert {o.path for o in rest.roots()}.isdisjoint(shared)
    assert real in {o.path for o in rest.roots()}
    assert len(rest.objects) == len(ps.objects) - len(shared)
