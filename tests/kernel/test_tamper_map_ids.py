"""Which kernel ids tamper protection guards: every map a program of ours uses, not only
the pinned ones (issue s19-mapguard).  Host kernel, nothing enforcing: a harmless
tracepoint program (counts our own renames) and the compat quarantine scoped to a
cgroup no task is in; the "tamper" id sets are plain hash maps pinned under a test pin
root.  The attack itself (a write-mode fd of such a map by id) is in
tests/vm/test_tamper_lsm.py::test_14c_unpinned_maps_of_our_programs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion.guard.identity import ROLE_AGENT, Identity
from bastion.guard.kernel import (TamperKernel, fd_ids, loaded_object_guard, object_ids, pinned_ids,
                                  program_map_ids)
from bastion.kernel import bpffs
from bastion.kernel.libbpf import BpfObject, Map
from bastion.kernel.loader import LOAD_HOOKS, live_objects
from bastion.paths import bpf_object
from bastion.respond.quarantine import Quarantine
from bastion.tier import Tier
from support import map_poller
from support.cg import scoped_cgroup
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
            ids = pinned_ids(pins)
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


def test_maps_made_by_ours_are_protected_from_their_creation_compat(pins: Path) -> None:
    """s20-mapbirth, compat: a root attacker polls GET_NEXT_ID/GET_FD_BY_ID while an
    enrolled process (this test) makes maps and has not entered their ids anywhere (the
    window before the loader's hook: seconds for a large policy object).  The attacker
    gets a write fd (compat refuses nothing) but dies at its first update of such a map:
    the id was entered by sys_exit_bpf of the BPF_MAP_CREATE.  Its own map stays
    writable.  Scoped: the tamper object acts on the test cgroup only, 60 s dead-man."""
    with scoped_cgroup() as (cg, cgid):
        tk = TamperKernel(Tier.COMPAT, pin_dir=pins / "tamper", cgroup_id=cgid, deadline_s=60)
        made: list[int] = []
        p = None
        try:
            tk.open()
            tk.register(Identity.of(os.getpid(), ROLE_AGENT))
            prefix = f"mb{os.getpid() % 100000}_"
            p = map_poller.start(cg, prefix, 2.0, write=True)
            for i in range(6):
                made.append(map_poller.create_map(f"{prefix}{i}"))
                time.sleep(0.1)
            rc, lines = map_poller.outcome(p)
            ours = {fd_ids(fd)["map"] for fd in made}
            wrote = [x["wrote"] for x in lines if "wrote" in x]
            assert not wrote, f"the attacker wrote maps made by ours: {wrote} ({lines})"
            assert rc == -9, f"attacker not killed ({rc}): {lines}"
            assert any("fd" in x for x in lines), lines     # it did reach one of them
            recs = []
            deadline = time.monotonic() + 3
            while not recs and time.monotonic() < deadline:
                recs = [r for r in tk.poll() if r.op == "bpf-map"]
                time.sleep(0.05)
            assert recs and recs[0].verdict == "killed" and recs[0].obj_id in ours, recs
        finally:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
            for fd in made:
                os.close(fd)
            tk.remove()
