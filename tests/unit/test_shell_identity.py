"""Shells found by their executable, not their name (s16-sig): :mod:`bastion.detect.
behavior.shells` and the rules' reading of a shell's command line through it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bastion.abi import kernel_dev
from bastion.detect.behavior.rules import _shell_reads_stdin
from bastion.detect.behavior.shells import (
    FileKey, Ident, ShellIdents, elf_build_id, installed_shell_paths, shell_family,
)
from bastion.detect.behavior.trust import ExeTrust
from bastion.events import ExecEvent, Proc

BASH = shutil.which("bash")
TRUE = shutil.which("true")
needs_elf = pytest.mark.skipif(BASH is None or TRUE is None, reason="no bash/true")


@pytest.mark.parametrize("name,fam", [
    ("bash", "bash"), ("rbash", "bash"), ("bash5", "bash"), ("bash-5.2", "bash"),
    ("ksh93", "ksh"), ("rksh", "ksh"), ("mksh-static", "mksh"), ("zsh5.9", "zsh"),
    ("sh", "sh"), ("busybox", "busybox"), ("notashell", None), ("ssh", None),
    ("sha1sum", None), ("fish_indent", None), ("python3", None), ("tmux", None)])
def test_shell_family(name: str, fam: str | None) -> None:
    assert shell_family(name) == fam


def _ident(p: Path) -> Ident:
    st = os.stat(p)
    return kernel_dev(st.st_dev), st.st_ino


def _idents(tmp: Path, opened: list[FileKey]) -> ShellIdents:
    """Installed: tmp/bin/bash (a copy of the host's bash, located by its inode); a
    process's executable is opened from the file of the same identity under tmp."""
    files = {_ident(p): p for p in tmp.rglob("*") if p.is_file()}

    def open_exe(pid: int, ident: Ident) -> tuple[FileKey, int] | None:
        p = files.get(ident) or next((q for q in tmp.rglob("*") if q.is_file()
                                      and _ident(q) == ident), None)
        if p is None:
            return None
        st = os.stat(p)
        key = (ident[0], ident[1], st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        opened.append(key)
        return key, os.open(p, os.O_RDONLY)
    return ShellIdents(lambda: [str(tmp / "bin" / "bash"), str(tmp / "bin" / "rbash")],
                       lambda p: _ident(Path(p)) if Path(p).exists() else None,
                       open_exe=open_exe)


@needs_elf
def test_hard_link_and_renamed_copies_are_bash(tmp_path: Path) -> None:
    assert BASH and TRUE
    (tmp_path / "bin").mkdir()
    (tmp_path / "x").mkdir()
    shutil.copy(os.path.realpath(BASH), tmp_path / "bin" / "bash")
    os.link(tmp_path / "bin" / "bash", tmp_path / "x" / "linked")
    shutil.copy(tmp_path / "bin" / "bash", tmp_path / "x" / "notashell")
    padded = tmp_path / "x" / "padded"
    shutil.copy(tmp_path / "bin" / "bash", padded)
    with open(padded, "ab") as f:
        f.write(b"\0" * 4096)                     # bytes appended: the build id stays
    shutil.copy(os.path.realpath(TRUE), tmp_path / "x" / "bash-helper")
    shutil.copy(os.path.realpath(TRUE), tmp_path / "x" / "tool")
    opened: list[FileKey] = []
    s = _idents(tmp_path, opened)
    x = tmp_path / "x"
    assert s.kind(str(x / "linked"), _ident(x / "linked"), 10) == "bash"   # by inode
    assert opened == []
    assert s.kind(str(x / "notashell"), _ident(x / "notashell"), 11) == "bash"
    assert s.kind(str(x / "padded"), _ident(x / "padded"), 12) == "bash"
    assert s.kind(str(x / "tool"), _ident(x / "tool"), 13) is None          # not bash
    assert s.kind("/usr/bin/rbash", (1, 1), 14) == "bash"                  # by name
    assert s.kind(str(x / "tool"), (0, 0), 15) is None
    # cached per file state: asked again, not read again; rewritten in place, read again
    n = len(opened)
    assert s.kind(str(x / "notashell"), _ident(x / "notashell"), 11) == "bash"
    tool = x / "tool"
    before = _ident(tool)
    with open(tool, "r+b") as f:                  # the same inode, now bash's bytes
        f.write((tmp_path / "bin" / "bash").read_bytes())
    os.utime(tool, ns=(1, 1))
    assert _ident(tool) == before
    assert s.kind(str(tool), before, 13) == "bash"
    assert len(opened) == n + 2


def test_a_process_gone_or_running_another_file_is_found_by_name_only(tmp_path: Path) -> None:
    s = ShellIdents(lambda: [], lambda p: None, open_exe=lambda pid, ident: None)
    assert s.kind("/tmp/notashell", (5, 6), 99) is None
    assert s.kind("/tmp/sh", (5, 6), 99) == "sh"


@needs_elf
def test_elf_build_id_reads_the_gnu_note() -> None:
    assert BASH
    fd = os.open(BASH, os.O_RDONLY)
    try:
        got = elf_build_id(fd)
    finally:
        os.close(fd)
    assert got is not None and len(got) >= 16


def test_elf_build_id_of_a_script_or_short_file_is_none(tmp_path: Path) -> None:
    for body in (b"#!/bin/sh\necho hi\n", b"\x7fELF", b""):
        p = tmp_path / "f"
        p.write_bytes(body)
        fd = os.open(p, os.O_RDONLY)
        try:
            assert elf_build_id(fd) is None
        finally:
            os.close(fd)


def test_installed_paths_take_shell_families_and_etc_shells(tmp_path: Path) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    for n in ("bash", "rbash", "bash5", "tmux", "ls"):
        (d / n).write_text("")
    got = installed_shell_paths([str(d)], etc_shells=str(tmp_path / "no-such-file"))
    assert got == [str(d / "bash"), str(d / "bash5"), str(d / "rbash")]


@needs_elf
def test_rules_read_a_renamed_copy_with_bash_s_option_table(tmp_path: Path) -> None:
    """``notashell -o posix``: bash's table says ``posix`` is -o's value, the copy reads
    stdin.  Before: not a shell at all (``base(exe) in SHELLS``)."""
    assert BASH
    (tmp_path / "bin").mkdir()
    shutil.copy(os.path.realpath(BASH), tmp_path / "bin" / "bash")
    copy = tmp_path / "notashell"
    shutil.copy(tmp_path / "bin" / "bash", copy)
    trust = ExeTrust(dirs=())
    trust.shells = _idents(tmp_path, [])
    dev, ino = _ident(copy)
    ev = ExecEvent(1, Proc(pid=4242, tid=4242, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, exe=str(copy), comm="notashell"), False,
                   argv=("notashell", "-o", "posix"), exe_dev=dev, exe_ino=ino)
    assert _shell_reads_stdin(ev, trust)
    ev2 = ExecEvent(1, Proc(pid=4242, tid=4242, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, exe=str(copy), comm="notashell"), False,
                    argv=("notashell", "-c", "id"), exe_dev=dev, exe_ino=ino)
    assert not _shell_reads_stdin(ev2, trust)


@needs_elf
def test_the_rules_of_one_exec_read_its_executable_once(tmp_path: Path) -> None:
    """Issue 16.3: the pack's rules that ask whether an exec'd file is a shell (pty and
    relayed shells, the decode rules reading a piped stdin) share one answer per exec
    event: ``/proc/PID/exe`` opened once, not once per rule; the next exec is asked anew."""
    from bastion.detect.behavior import behavior_rules
    from bastion.detect.engine import Engine, RuleContext
    from bastion.proctable import ProcessTable

    assert BASH
    (tmp_path / "bin").mkdir()
    shutil.copy(os.path.realpath(BASH), tmp_path / "bin" / "bash")
    shutil.copy(tmp_path / "bin" / "bash", tmp_path / "renamed")
    opened: list[FileKey] = []
    trust = ExeTrust(dirs=())
    trust.shells = _idents(tmp_path, opened)
    engine = Engine(behavior_rules(trust=trust))
    procs = ProcessTable()
    ctx = RuleContext(procs)
    dev, ino = _ident(tmp_path / "renamed")
    for pid in (41, 42):
        p = Proc(pid=pid, tid=pid, ppid=1, uid=1000, euid=1000, gid=1000, cgroup_id=1,
                 comm="renamed", exe=str(tmp_path / "renamed"))
        ev = ExecEvent(1, p, filename=p.exe, argv=("renamed",), stdin="pipe:[7]",
                       exe_dev=dev, exe_ino=ino)
        procs.update(ev)
        engine.evaluate(ev, ctx)
        assert trust.exec_shell(ev) == "bash"
    assert len(opened) == 2, opened    # one read per exec event
