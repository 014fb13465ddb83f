"""The must-stop object list shared by the fanotify gate and the lsm tier's in-hook gate."""

from __future__ import annotations

from pathlib import Path

from bastion.enforce import muststop, provgate


def test_the_fanotify_gate_uses_the_shared_list_and_its_kinds_only(tmp_path: Path) -> None:
    for d in ("etc/cron.d", "var/log", "root"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "etc" / "crontab").write_text("")
    compat = provgate.default_objects(str(tmp_path))
    assert {o.kind for o in compat} == {"persistence", "profile-dir"}
    assert provgate.DEFAULT_PERSISTENCE is muststop.DEFAULT_PERSISTENCE
    both = muststop.default_objects(str(tmp_path), kinds=muststop.KINDS)
    assert muststop.GateObject(str(tmp_path / "var/log"), "log") in both
    assert not any(o.kind == "log" for o in compat)


def test_names_cover_files_that_do_not_exist_yet(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "root").mkdir()
    names = muststop.default_names(str(tmp_path))
    etc, root = str(tmp_path / "etc"), str(tmp_path / "root")
    assert (etc, "ld.so.preload", "persistence") in names   # absent: named in its directory
    assert (etc, "rc.local", "persistence") in names
    assert (etc, "shadow", "credential") in names
    assert (root, ".bash_profile", "persistence") in names  # a profile dir's names
    assert (root, ".bash_history", "log") in names
    # a glob in the last component (ssh host keys) is by existing file only
    assert not any("*" in n for _d, n, _k in names)
    # a directory that does not exist names nothing
    assert not any(d.startswith(str(tmp_path / "home")) for d, _n, _k in names)
