"""The in-hook gate's re-entering (s15): objects made after the start are entered on
the maintenance tick, only the changes are written, a failed pass drops nothing and
alerts; the directories above the objects are entered for the rename/mount refusals.
The kernel maps are fakes here (the VM suite tests the hooks)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bastion import abi
from bastion.enforce import provgate_lsm
from bastion.enforce.muststop import GateObject, Kind
from bastion.enforce.provgate_lsm import AgentLsmGate, LsmProvenanceGate
from bastion.errors import KernelError, Location
from bastion.policy.compile import kernel_dev


class FakeMap:
    def __init__(self, fail_after: int | None = None) -> None:
        self.d: dict[bytes, bytes] = {}
        self.updates = 0
        self.fail_after = fail_after

    def update(self, key: bytes, value: bytes) -> None:
        if self.fail_after is not None and self.updates >= self.fail_after:
            raise KernelError("map full", errno=errno.E2BIG, location=Location("pgate_objs"))
        self.updates += 1
        self.d[key] = value

    def delete(self, key: bytes) -> None:
        del self.d[key]


def _gate(maps: dict[str, FakeMap]) -> LsmProvenanceGate:
    g = object.__new__(LsmProvenanceGate)
    g.max_dirs, g.per_object_dirs, g.max_names = 10_000, 1_000, provgate_lsm.PGATE_MAX_NAMES
    g.over_budget = []
    g._objs, g._names, g._anc, g._tools = {}, {}, {}, {}
    g._map = maps.__getitem__   # type: ignore[method-assign]
    return g


def _maps() -> dict[str, FakeMap]:
    return {n: FakeMap() for n in ("pgate_objs", "pgate_names", "pgate_anc", "pgate_tools")}


def _key(p: Path) -> bytes:
    st = os.lstat(p)
    return bytes(abi.InodeKey(ino=st.st_ino, dev=kernel_dev(st.st_dev)))


def _tree(tmp_path: Path) -> tuple[list[GateObject], list[tuple[str, str, Kind]]]:
    (tmp_path / "etc" / "cron.d").mkdir(parents=True)
    (tmp_path / "home" / "u").mkdir(parents=True)
    return ([GateObject(str(tmp_path / "etc" / "cron.d"), "persistence"),
             GateObject(str(tmp_path / "home" / "u" / ".ssh"), "credential")],
            [(str(tmp_path / "etc"), "ld.so.preload", "persistence")])


def test_an_object_made_later_is_entered_and_only_changes_are_written(tmp_path: Path) -> None:
    maps = _maps()
    g = _gate(maps)
    objs, names = _tree(tmp_path)
    problems = g.apply(objs, names)
    assert any(".ssh" in p for p in problems)
    assert set(maps["pgate_objs"].d) == {_key(tmp_path / "etc" / "cron.d")}
    (tmp_path / "home" / "u" / ".ssh").mkdir()
    before = {n: m.updates for n, m in maps.items()}
    assert g.apply(objs, names) == []
    ssh = _key(tmp_path / "home" / "u" / ".ssh")
    assert set(maps["pgate_objs"].d) == {_key(tmp_path / "etc" / "cron.d"), ssh}
    assert abi.PgateObj.from_buffer_copy(maps["pgate_objs"].d[ssh]).cls == abi.PgateClass.CREDENTIAL
    assert maps["pgate_objs"].updates - before["pgate_objs"] == 1     # the new one only
    assert maps["pgate_names"].updates == before["pgate_names"]       # unchanged: not rewritten
    # home/u and home entered, tmp_path and every directory above it made credential
    # (the strictest below them); etc stays persistence, not rewritten
    assert maps["pgate_anc"].updates - before["pgate_anc"] == 2 + len(tmp_path.parts)
    assert g._objs == maps["pgate_objs"].d and g._anc == maps["pgate_anc"].d


def test_the_directories_above_the_objects_are_entered_not_the_objects(tmp_path: Path) -> None:
    maps = _maps()
    g = _gate(maps)
    objs, names = _tree(tmp_path)
    (tmp_path / "home" / "u" / ".ssh").mkdir()
    assert g.apply(objs, names) == []
    anc = maps["pgate_anc"].d
    cls = {p: abi.PgateObj.from_buffer_copy(anc[_key(p)]).cls
           for p in (tmp_path / "etc", tmp_path / "home" / "u", tmp_path / "home", tmp_path,
                     Path("/"))}
    assert cls[tmp_path / "etc"] == abi.PgateClass.PERSISTENCE
    assert cls[tmp_path / "home" / "u"] == abi.PgateClass.CREDENTIAL
    assert cls[tmp_path] == abi.PgateClass.CREDENTIAL           # the strictest below it
    assert _key(tmp_path / "etc" / "cron.d") not in anc          # an object: its own rules
    assert _key(tmp_path / "home" / "u" / ".ssh") not in anc


def test_a_root_link_on_the_way_is_entered_on_both_sides(tmp_path: Path) -> None:
    maps = _maps()
    g = _gate(maps)
    (tmp_path / "usr" / "lib" / "systemd").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    if os.lstat(tmp_path / "lib").st_uid != 0 or os.stat(tmp_path).st_uid != 0:
        pytest.skip("needs root (the link is followed only when root's)")
    assert g.apply([GateObject(str(tmp_path / "lib" / "systemd"), "persistence")]) == []
    anc = maps["pgate_anc"].d
    assert _key(tmp_path / "lib") in anc                 # the link itself: `mv lib lib.old`
    assert _key(tmp_path / "usr" / "lib") in anc and _key(tmp_path / "usr") in anc


def test_a_failed_refresh_keeps_every_entry_and_alerts(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    maps = _maps()
    g = _gate(maps)
    objs, names = _tree(tmp_path)
    monkeypatch.setattr(provgate_lsm, "default_objects", lambda kinds: objs)
    monkeypatch.setattr(provgate_lsm, "default_names", lambda: names)
    agent = AgentLsmGate(lambda: None, self_tgid=os.getpid(),  # type: ignore[arg-type,return-value]
                         deadline_s=None)
    agent.gate = g
    assert agent.refresh() is None
    old = dict(maps["pgate_objs"].d)
    (tmp_path / "home" / "u" / ".ssh").mkdir()
    (tmp_path / "etc" / "cron.d" / "sub").mkdir()
    maps["pgate_objs"].fail_after = maps["pgate_objs"].updates + 1    # the map fills
    f = agent.refresh()
    assert f is not None and f.severity == "high" and f.rule == "bastion.provenance.gate.refresh"
    assert "not re-entered" in f.title and "map full" in f.title
    assert set(old) <= set(maps["pgate_objs"].d)                     # nothing dropped
    assert g._objs == maps["pgate_objs"].d                           # the mirror is the truth
    maps["pgate_objs"].fail_after = None
    assert agent.refresh() is None
    assert len(maps["pgate_objs"].d) == 3 and g._objs == maps["pgate_objs"].d


def test_security_config_objects_are_entered_in_their_class_and_the_firewall_finding(
        tmp_path: Path) -> None:
    """s23-muststop: a security-config object and name are entered with
    BASTION_PGATE_SECURITY_CONFIG (before: KeyError, no such kind), and the kernel's
    firewall record (class FIREWALL, no object) becomes the gate's finding naming the
    change.  Seen failing before (main: the kind and the class did not exist)."""
    import time
    from bastion.events import HipsEvent, Proc
    (tmp_path / "etc" / "rsyslog.d").mkdir(parents=True)
    maps = _maps()
    g = _gate(maps)
    assert g.apply([GateObject(str(tmp_path / "etc" / "rsyslog.d"), "security-config")],
                   [(str(tmp_path / "etc"), "rsyslog.conf", "security-config")]) == []
    obj = abi.PgateObj.from_buffer_copy(maps["pgate_objs"].d[_key(tmp_path / "etc" / "rsyslog.d")])
    assert (obj.cls, obj.flags) == (abi.PgateClass.SECURITY_CONFIG, abi.PGATE_F_DIR)
    (name,) = maps["pgate_names"].d.values()
    assert abi.PgateObj.from_buffer_copy(name).cls == abi.PgateClass.SECURITY_CONFIG
    ev = HipsEvent(time.time_ns(), Proc(42, 42, 1, 0, 0, 0, 0, "iptables"), op="open-write",
                   action="deny", rule_id=int(abi.PgateClass.FIREWALL),
                   subject=abi.PROV_TMP_SCRIPT, mechanism="lsm-prov", enforced=True, ret=-1,
                   detail=int(abi.PgateHow.NFT_BATCH))
    f = g.finding(ev)
    assert f is not None and f.action == "deny" and f.attack == ("T1562.004",)
    assert f.evidence["prevented"] == ("security-tool shutdown (firewall) (firewall-change: "
                                       "nftables ruleset change (netfilter netlink batch)) "
                                       "the host firewall"), f.evidence
    assert f.evidence["class"] == "firewall" and f.evidence["operation"] == "firewall-change"


def test_objects_of_another_root_are_entered_inside_it(tmp_path: Path) -> None:
    """s24 (the atomics bench on the lsm tier enters a sandbox's objects through
    ``/proc/PID/root/...``): with ``root``, objects and name directories are walked inside
    it (an absolute link stays in it) and the directories above them stop at it."""
    maps = _maps()
    g = _gate(maps)
    root = tmp_path / "sbx"
    (root / "usr" / "etc" / "cron.d").mkdir(parents=True)
    (root / "usr" / "etc" / "shadow").write_text("x")
    (root / "etc").symlink_to("/usr/etc")     # absolute: inside root, not this host's /usr
    if os.lstat(root / "etc").st_uid != 0 or os.stat(root).st_uid != 0:
        pytest.skip("needs root (the link is followed only when root's)")
    objs = [GateObject("/etc/cron.d", "persistence"), GateObject("/etc/shadow", "credential")]
    names: list[tuple[str, str, Kind]] = [("/etc", "ld.so.preload", "persistence")]
    assert g.apply(objs, names, root=str(root)) == []
    assert set(maps["pgate_objs"].d) == {_key(root / "usr" / "etc" / "cron.d"),
                                         _key(root / "usr" / "etc" / "shadow")}
    etc = os.stat(root / "usr" / "etc")
    assert set(maps["pgate_names"].d) == {bytes(abi.PgateName(
        ino=etc.st_ino, dev=kernel_dev(etc.st_dev), name=b"ld.so.preload"))}
    anc = maps["pgate_anc"].d
    assert {_key(root / "usr" / "etc"), _key(root / "usr"), _key(root)} <= set(anc)
    assert _key(tmp_path) not in anc and _key(Path("/")) not in anc   # stops at root
