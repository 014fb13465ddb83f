"""Which kernel ids tamper protection guards: every map a program of ours uses, not only
the pinned ones (issue s19-mapguard).  Host kernel, nothing enforcing: a harmless
tracepoint program (counts our own renames) and the compat quarantine scoped to a
cgroup no task is in; the "tamper" id sets are plain hash maps pinned under a test pin
root.  The attack itself (a write-mode fd of such a map by id) is in
tests/vm/test_tamper_lsm.py::test_14c_unpinned_maps_of_our_programs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from bastion.guard.kernel import fd_ids, loaded_object_guard, object_ids, pinned_ids, program_map_ids
from bastion.kernel import bpffs
from bastion.kernel.libbpf import BpfObject, Map
from bastion.kernel.loader import LOAD_HOOKS, live_objects
from bastion.paths import bpf_object
from bastion.respond.quarantine import Quarantine
from support.stale import owned_name

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
NO_CGROUP = 1 << 62   # a cgroup id no task is in: the quarantine acts on nobody


@pytest.fixture
def pins() -> Iterator[Path]:
    bpffs.ensure_bpffs()
    root = Path("/sys/fs/bpf") / owned_name("bastion-test-")
    try:
        yield bpffs.pin_dir(root)
    finally:
        bpffs.remove_pins(root)


def _id_set(path: Path) -> None:
    subprocess.run(["bpftool", "map", "create", str(path), "type", "hash", "key", "4", "value", "4",
                    "entries", "2048", "name", path.name], check=True)


def _keys(path: Path) -> set[int]:
    with Map.open_pinned(path) as m:
        return {int.from_bytes(k, "little") for k in m.keys()}


def test_a_pinned_link_leads_to_the_unpinned_maps_its_program_uses(pins: Path) -> None:
    o = BpfObject.open(bpf_object("integrity_testtp.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
    try:
        o.load()
        link = o.program("tt_rename").attach()
        try:
            link.pin(bpffs.pin_dir(pins / "links") / "tt_rename")
            maps = {m.name: fd_ids(m.fd)["map"] for m in o.maps()}
            assert any(n.endswith(".bss") for n in maps), maps    # the counter: writable, unpinned
            prog = fd_ids(o.program("tt_rename").fd)["prog"]
            ids = pinned_ids(pins, names=[Path("links/tt_rename")])
            assert ids["map"] == set() and len(ids["link"]) == 1   # no map is pinned
            assert ids["prog"] == {prog}                           # the program behind the link
            cache: dict[int, tuple[int, ...]] = {}
            assert program_map_ids(ids["prog"], cache) == set(maps.values())
            assert program_map_ids(ids["prog"], cache) == set(maps.values())   # from the cache
            assert program_map_ids({0x7ffffff0}) == set()          # a program gone: nothing
        finally:
            link.unpin()
            link.destroy()
    finally:
        o.close()


def test_the_agent_s_loads_are_registered_at_once_and_again_after_a_rearm(pins: Path) -> None:
    tamper = pins / "tamper"
    sets = bpffs.pin_dir(tamper / "maps")
    for name in ("tamper_map_ids", "tamper_link_ids"):
        _id_set(sets / name)
    guard = loaded_object_guard(tamper)
    assert guard is not None and loaded_object_guard(pins / "none") is None
    LOAD_HOOKS["tamper"] = guard
    q = Quarantine(cgroup_id=NO_CGROUP, deadline_s=60, self_tgid=os.getpid())
    try:
        q.open()
        lo = q._lo
        assert lo is not None and lo in live_objects()
        assert lo.obj is not None
        own = {fd_ids(m.fd)["map"] for m in lo.obj.maps()}          # .rodata, scratch too
        links = {fd_ids(link.fd)["link"] for link in lo.links.values()}
        ids = object_ids(lo)
        assert own <= ids["map"] and ids["link"] == links and links
        assert _keys(sets / "tamper_map_ids") >= ids["map"]
        assert _keys(sets / "tamper_link_ids") >= links
        assert guard.refresh() is False                              # same sets: one stat
        # a maintenance window removed the protection; re-armed, the sets are new and empty
        for name in ("tamper_map_ids", "tamper_link_ids"):
            (sets / name).unlink()
            _id_set(sets / name)
        assert _keys(sets / "tamper_map_ids") == set()
        assert guard.refresh() is True
        assert _keys(sets / "tamper_map_ids") >= ids["map"]
        assert _keys(sets / "tamper_link_ids") >= links
    finally:
        LOAD_HOOKS.pop("tamper", None)
        q.close()
    assert lo not in live_objects()


def test_the_pin_root_walk_takes_our_names_only_and_no_symlink(pins: Path) -> None:
    """Root's flood of foreign pins, and a symlink under one of our names, add no id."""
    maps = bpffs.pin_dir(pins / "tamper" / "maps")
    _id_set(maps / "tamper_map_ids")                         # ours
    flood = bpffs.pin_dir(pins / "flood")
    for i in range(3):
        _id_set(flood / f"m{i}")
    _id_set(maps / "extra")
    hips = bpffs.pin_dir(pins / "hips" / "maps")
    os.symlink(flood / "m0", hips / "hips_state")             # BPF_OBJ_GET would follow it
    with Map.open_pinned(maps / "tamper_map_ids") as m:
        ours = fd_ids(m.fd)["map"]
    foreign: list[Path] = []
    ids = pinned_ids(pins, foreign=foreign)
    assert ids["map"] == {ours} and ids["link"] == set()
    assert set(foreign) == {flood, maps / "extra", hips / "hips_state"}
