"""What the guardian's re-walk of the pin root takes as ours (review of s19-mapguard): only
the pin names our object specs define, never a symlink; anything else under the root is
reported, not added (root filling the 2,048-entry id sets with live foreign maps made every
later registration fail with E2BIG).  A full set, or a failed load hook, is a high alert and
degraded protection in the status.  Fakes: a plain directory stands for bpffs, each "pin"
holds the ids fdinfo would name."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bastion.agent import Agent
from bastion.errors import KernelError, Location
from bastion.guard import kernel as gk
from bastion.guard.guardian import Guardian, GuardianConfig

OURS = frozenset({Path("tamper/maps/tamper_map_ids"), Path("tamper/links/tamper_kill"),
                  Path("hips/maps/hips_state"), Path("hips/maps/hips_rules")})


def _pin(path: Path, ids: dict[str, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ids))


@pytest.fixture
def fake_bpffs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # obj_get follows symlinks as BPF_OBJ_GET does; fdinfo is the file's content
    monkeypatch.setattr(gk, "obj_get", lambda p: os.open(p, os.O_RDONLY))
    monkeypatch.setattr(gk, "fd_ids", lambda fd: json.loads(os.pread(fd, 200, 0)))
    monkeypatch.setattr(gk, "our_pin_names", lambda *a, **k: OURS, raising=False)
    fd = os.open(tmp_path, os.O_PATH)       # the plain directory stands for bpffs
    try:
        monkeypatch.setattr(gk, "PIN_FS", gk.PIN_FS | {gk._fs_type(gk._mnt_id(fd))})
    finally:
        os.close(fd)


def test_only_our_pin_names_are_walked_and_foreign_entries_are_reported(
        tmp_path: Path, fake_bpffs: None) -> None:
    root = tmp_path / "pins"
    _pin(root / "tamper/maps/tamper_map_ids", {"map": 1})
    _pin(root / "tamper/links/tamper_kill", {"link": 2, "prog": 3})
    _pin(root / "hips/maps/hips_rules", {"map": 4})
    # the attack: many live one-entry maps pinned under the root, under names of their own
    for i in range(50):
        _pin(root / "flood" / f"m{i}", {"map": 1000 + i})
    _pin(root / "tamper/maps/extra", {"map": 2000})
    # a symlink under one of our names (obj_get would follow it) and a symlinked directory
    _pin(tmp_path / "elsewhere/hips_state", {"map": 3000})
    (root / "hips/maps/hips_state").symlink_to(tmp_path / "elsewhere/hips_state")
    _pin(tmp_path / "elsewhere/links/tamper_kill", {"link": 3001, "prog": 3002})
    (root / "hips/links").symlink_to(tmp_path / "elsewhere/links")
    # a map pinned under a link's name gives no link id
    foreign: list[Path] = []
    ids = gk.pinned_ids(root, foreign=foreign)
    assert ids == {"map": {1, 4}, "link": {2}, "prog": {3}}
    assert set(foreign) == {root / "flood", root / "tamper/maps/extra",
                            root / "hips/maps/hips_state", root / "hips/links"}


def test_a_pin_of_the_wrong_kind_under_our_name_is_foreign(tmp_path: Path, fake_bpffs: None) -> None:
    root = tmp_path / "pins"
    _pin(root / "tamper/links/tamper_kill", {"map": 9})
    foreign: list[Path] = []
    assert gk.pinned_ids(root, foreign=foreign) == {"map": set(), "link": set(), "prog": set()}
    assert foreign == [root / "tamper/links/tamper_kill"]


def test_a_symlinked_pin_root_is_not_walked(tmp_path: Path, fake_bpffs: None) -> None:
    _pin(tmp_path / "real/tamper/maps/tamper_map_ids", {"map": 1})
    (tmp_path / "root").symlink_to(tmp_path / "real")
    assert gk.pinned_ids(tmp_path / "root")["map"] == set()


def test_a_flood_in_the_pin_root_does_not_starve_our_directories_listings(
        tmp_path: Path, fake_bpffs: None) -> None:
    """s20 review: one listing budget for the whole walk; 1,024 dummies in the pin root's
    top directory used it up, so a foreign pin in tamper/maps was never reported."""
    root = tmp_path / "pins"
    _pin(root / "tamper/maps/tamper_map_ids", {"map": 1})
    _pin(root / "tamper/maps/extra", {"map": 2000})
    _pin(root / "hips/maps/x", {"map": 5})
    for i in range(gk.PIN_WALK_LISTED + 10):
        (root / f"d{i:05d}").touch()
    foreign: list[Path] = []
    cut: list[Path] = []
    ids = gk.pinned_ids(root, foreign=foreign, cut=cut)
    assert ids["map"] == {1}
    assert root / "tamper/maps/extra" in foreign and root / "hips/maps/x" in foreign
    assert cut == [root]
    assert len(foreign) <= 3 * gk.PIN_WALK_LISTED


def test_a_pin_root_on_another_mount_than_armed_is_not_walked(
        tmp_path: Path, fake_bpffs: None) -> None:
    root = tmp_path / "pins"
    _pin(root / "tamper/maps/tamper_map_ids", {"map": 1})
    _pin(root / "flood/m", {"map": 2})
    armed = gk.pin_root_mount(root)
    assert armed >= 0 and gk.pinned_ids(root, mount=armed)["map"] == {1}
    foreign: list[Path] = []
    assert gk.pinned_ids(root, foreign=foreign, mount=armed + 1)["map"] == set()
    assert foreign == []


def test_guardian_alerts_a_mount_over_the_pin_root_and_does_not_walk_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s20 review: a bpffs mounted over the pin root passed the fs-type check and was walked
    silently (empty: nothing foreign, our pins out of reach)."""
    g, alerts = _guardian(tmp_path)
    tk = FakeTk()
    tk.full = False
    g.tk = tk  # type: ignore[assignment]
    mnt = {"id": 41}
    monkeypatch.setattr(gk, "pin_root_mount", lambda root: mnt["id"])
    g._record_pin_mount()                               # armed on mount 41
    g._protect_bpf()
    assert alerts == [] and tk.mount == 41
    mnt["id"] = 97                                      # mounted over it
    g._protect_bpf()
    g._protect_bpf()                                    # the same mount: alerted once
    assert [(a.rule, a.severity) for a in alerts] == [("bastion.tamper.pin-root-remounted", "high")]
    assert alerts[0].evidence["armed_mount"] == 41 and alerts[0].evidence["mount"] == 97
    assert tk.mount == 41                               # the walk still wants the armed one


def test_our_pin_names_are_those_our_specs_pin() -> None:
    names = gk.our_pin_names()
    assert Path("tamper/maps/tamper_map_ids") in names and Path("hips/maps/hips_state") in names
    links = {n for n in names if n.parent.name == "links"}
    assert any(n.parts[0] == "tamper" for n in links) and any(n.parts[0] == "hips" for n in links)
    assert {n.parts[0] for n in names} == {"tamper", "hips"}
    assert {n.parts[1] for n in names} == {"maps", "links"}


def test_protect_bpf_expands_only_the_programs_we_loaded(
        tmp_path: Path, fake_bpffs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """s21 review F6: a link found at one of our names whose program is not one we loaded
    (root's own link pinned under a free name) gives its link and prog ids at most: the
    64 maps its program uses are not put into tamper_map_ids (~50 free names x 64 filled
    the 2,048-entry set: E2BIG for our own later registrations)."""
    from bastion.tier import Tier
    root = tmp_path / "pins"
    _pin(root / "tamper/links/tamper_kill", {"link": 2, "prog": 3})      # ours, armed
    _pin(root / "hips/links/hips_exec", {"link": 900, "prog": 901})      # root's, our name
    tk = gk.TamperKernel(Tier.COMPAT, pin_dir=root / "tamper")
    tk._own_ids = {"map": {10}, "link": {2}, "prog": {3}}
    monkeypatch.setattr(gk, "our_pin_names", lambda *a, **k: OURS | {Path("hips/links/hips_exec")})
    monkeypatch.setattr(tk, "_map", lambda name: name)
    used = {3: (10, 11), 901: tuple(range(5000, 5064)), 7: (20,)}
    monkeypatch.setattr(gk.bpfinfo, "prog_map_ids", lambda pid: used.get(pid))
    got: dict[str, set[int]] = {}

    def add(maps: object, ids: dict[str, set[int]]) -> dict[str, int]:
        got.update(ids)
        return {"map": 0, "link": 0}
    monkeypatch.setattr(gk, "add_protected", add)
    tk.protect_bpf(root, prog_ids=(7,))
    assert {10, 11, 20} <= got["map"], got["map"]
    assert not got["map"] & set(used[901]), "a foreign program's maps were taken as ours"


def _full(*_a: Any, **_k: Any) -> dict[str, int]:
    raise KernelError("tamper_map_ids: full (2048 ids, none gone): id 7 and 3 more are not "
                      "protected", errno=errno.E2BIG, location=Location("tamper_map_ids"))


class FakeTk:
    tier = "compat"
    adopted = False

    def __init__(self) -> None:
        self.full = True
        self.foreign: list[Path] = []
        self.cut: list[Path] = []

    def protect_bpf(self, root: Path, *, foreign: list[Path], cut: list[Path],
                    mount: int | None = None) -> dict[str, int]:
        self.mount = mount
        foreign.extend(self.foreign)
        cut.extend(self.cut)
        if self.full:
            _full()
        return {"map": 1, "link": 1, "prog": 1, "new_map": 0, "new_link": 0}

    def identities(self) -> list[Any]:
        return []


def _guardian(tmp_path: Path) -> tuple[Guardian, list[Any]]:
    g = Guardian(GuardianConfig(agent_argv=("true",), data_dir=tmp_path / "data",
                                pin_root=tmp_path / "pins", socket=tmp_path / "g.sock",
                                protect_paths=()))
    out: list[Any] = []
    g._emit = out.append  # type: ignore[method-assign]
    return g, out


def test_guardian_full_set_is_a_high_alert_and_degraded_status(tmp_path: Path) -> None:
    g, alerts = _guardian(tmp_path)
    tk = FakeTk()
    g.tk = tk  # type: ignore[assignment]
    g._protect_bpf()
    g._protect_bpf()                                    # still full: alerted once
    assert [(a.rule, a.severity) for a in alerts] == [("bastion.tamper.bpf-unprotected", "high")]
    assert "id 7 and 3 more" in alerts[0].title
    st = g.status()["bpf_id_protection"]
    assert st["state"] == "degraded" and "full" in st["why"]
    tk.full = False
    g._protect_bpf()
    assert g.status()["bpf_id_protection"] == "ok"


def test_guardian_reports_each_foreign_pin_once(tmp_path: Path) -> None:
    g, alerts = _guardian(tmp_path)
    tk = FakeTk()
    tk.full = False
    tk.foreign = [tmp_path / "pins/flood", tmp_path / "pins/hips/maps/x"]
    g.tk = tk  # type: ignore[assignment]
    g._protect_bpf()
    g._protect_bpf()
    assert [(a.rule, a.severity) for a in alerts] == [("bastion.tamper.foreign-pin", "high")]
    assert str(tmp_path / "pins/flood") in alerts[0].title
    assert alerts[0].evidence["count"] == 2
    # one goes, a flood cut the listing short: what is remembered is this pass's, so a
    # re-creation is alerted again, and the cut directory is named
    tk.foreign = [tmp_path / "pins/flood"]
    g._protect_bpf()
    assert len(alerts) == 1 and g._foreign_pins == {tmp_path / "pins/flood"}
    tk.foreign = [tmp_path / "pins/flood", tmp_path / "pins/hips/maps/x"]
    tk.cut = [tmp_path / "pins/tamper/maps"]
    g._protect_bpf()
    assert len(alerts) == 2 and alerts[1].evidence["count"] == 1
    assert alerts[1].evidence["listing_cut"] == [str(tmp_path / "pins/tamper/maps")]
    assert "cut short" in alerts[1].title


def test_a_failed_load_hook_is_a_high_alert_and_degraded_agent_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard = gk.ObjectGuard(tmp_path / "tamper")
    monkeypatch.setattr(guard, "protect", _full)
    lo: Any = SimpleNamespace(spec=SimpleNamespace(path=Path("hips_compat.bpf.o")), closed=False)
    for _ in range(2):                          # a second failure alike: one alert
        with pytest.raises(KernelError):
            guard(lo)
    found: list[Any] = []
    fake: Any = SimpleNamespace(_object_guard=guard, _alert=found.append)
    Agent._bpf_unprotected(fake)
    assert [(f.rule, f.severity) for f in found] == [("bastion.tamper.bpf-unprotected", "high")]
    assert "hips_compat.bpf.o" in found[0].title
    assert Agent._bpf_id_protection(fake)["state"] == "degraded"
    monkeypatch.setattr(guard, "protect", lambda objs: {})
    guard(lo)
    assert Agent._bpf_id_protection(fake) == "ok"


def test_a_mount_removing_our_pins_meets_is_a_high_alert_and_in_the_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """s21: a mount root put under our pin directory (a tmpfs at ``tamper/x``) was found by
    ``remove_pins`` and left -- said by one log line only.  ``TamperKernel.remove`` keeps
    what it crossed and the guardian raises ``bastion.tamper.foreign-mount`` (high), shows
    it in its status and ``bastion status`` warns.  The real ``remove_pins`` on a plain
    directory (standing for bpffs) whose ``x`` answers another mount id."""
    from bastion.cli.guard import foreign_mount_warnings
    from bastion.kernel import bpffs
    from bastion.tier import Tier

    pins = tmp_path / "pins" / "tamper"
    _pin(pins / "maps/tamper_map_ids", {"map": 1})
    (pins / "x").mkdir()
    (pins / "x/theirs").write_text("a file of another mount")
    monkeypatch.setattr(bpffs, "_require_bpffs", lambda p: None)
    real = bpffs.mount_id
    monkeypatch.setattr(bpffs, "mount_id", lambda fd: real(fd) + 1000 if os.readlink(
        f"/proc/self/fd/{fd}") == str(pins / "x") else real(fd))
    g, alerts = _guardian(tmp_path)
    g.tk = gk.TamperKernel(Tier.COMPAT, pin_dir=pins)
    g._remove_protection()
    assert (pins / "x/theirs").exists() and not (pins / "maps").exists()
    got = [(a.rule, a.severity) for a in alerts]
    assert ("bastion.tamper.foreign-mount", "high") in got, got
    alert = next(a for a in alerts if a.rule == "bastion.tamper.foreign-mount")
    assert alert.evidence["paths"] == [str(pins / "x")] and "maintenance" in alert.title
    st = g.status()
    assert st["foreign_mounts"] == [str(pins / "x")]
    assert foreign_mount_warnings(st) and str(pins / "x") in foreign_mount_warnings(st)[0]
    # the same mount met again by the next removal: not alerted twice
    tk = gk.TamperKernel(Tier.COMPAT, pin_dir=pins)
    tk.remove()
    g._crossed_mounts(tk, "again")
    assert sum(a.rule == "bastion.tamper.foreign-mount" for a in alerts) == 1


def test_an_adopted_link_at_a_name_of_roots_is_no_name_of_ours() -> None:
    """s21 F6: a restarted guardian adopts every name under ``tamper/links/``; the walk's
    names are only those that are programs of this tier's ELF."""
    from bastion.kernel.loader import program_names
    from bastion.paths import bpf_object
    from bastion.tier import Tier
    real = sorted(program_names(bpf_object(gk.OBJECTS["compat"])))[0]
    tk = gk.TamperKernel(Tier.COMPAT, pin_dir=Path("/nonexistent/tamper"))
    tk._lo = SimpleNamespace(attached=[real, "root_own_link", "tamper_task_kill"])  # type: ignore[assignment]
    links = {n.name for n in tk.pin_names() if n.parts[:2] == ("tamper", "links")}
    assert links == {real}
