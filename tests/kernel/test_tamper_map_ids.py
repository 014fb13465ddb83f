"""Which kernel ids tamper protection guards: every map a program of ours uses, not only
the pinned ones (issue s19-mapguard).  Host kernel, nothing enforcing: a harmless
tracepoint program (counts our own renames) and the compat quarantine scoped to a
cgroup no task is in; the "tamper" id sets are plain hash maps pinned under a test pin
root.  The attack itself (a write-mode fd of such a map by id) is in
tests/vm/test_tamper_lsm.py::test_14c_unpinned_maps_of_our_programs."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion.guard import kernel as gk
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
from support.fuse import SilentFuse
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


@pytest.fixture
def outside() -> Iterator[Path]:
    """A bpffs directory outside the pin root (the test's own)."""
    root = Path("/sys/fs/bpf") / owned_name("bastion-test-")
    try:
        yield bpffs.pin_dir(root)
    finally:
        bpffs.remove_pins(root)


def _unlink_symlinks(root: Path) -> None:
    """remove_pins rmdir()s a symlink to a directory: take the test's symlinks first."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, n)):
                os.unlink(os.path.join(dirpath, n))


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


def _map_id(path: Path) -> int:
    with Map.open_pinned(path) as m:
        return fd_ids(m.fd)["map"]


def test_the_pin_root_walk_follows_no_symlink_loop_or_directory_outside(pins: Path, outside: Path) -> None:
    """Symlinks root makes under the pin root, under our own names and others: a loop, a
    directory outside (holding a pin of our name), a pin outside; none is followed."""
    maps = bpffs.pin_dir(pins / "tamper" / "maps")
    _id_set(maps / "tamper_map_ids")
    ours = _map_id(maps / "tamper_map_ids")
    bpffs.pin_dir(outside / "maps")
    _id_set(outside / "maps" / "hips_state")
    _id_set(outside / "m")
    try:
        os.symlink(maps / "tamper_link_ids", maps / "tamper_link_ids")     # a loop, our name
        os.symlink(pins / "loop_b", pins / "loop_a")
        os.symlink(pins / "loop_a", pins / "loop_b")
        (pins / "hips").mkdir()
        os.symlink(outside / "maps", pins / "hips" / "maps")               # a dir outside
        os.symlink(outside / "m", maps / "tamper_objs")                    # a pin outside
        os.symlink("/", pins / "tamper" / "links")                         # another fs
        foreign: list[Path] = []
        ids = pinned_ids(pins, foreign=foreign)
        assert ids == {"map": {ours}, "link": set(), "prog": set()}
        assert set(foreign) == {maps / "tamper_link_ids", pins / "loop_a", pins / "loop_b",
                                pins / "hips" / "maps", maps / "tamper_objs", pins / "tamper" / "links"}
    finally:
        _unlink_symlinks(pins)


def test_the_pin_root_walk_never_blocks_on_a_mount_that_never_answers(pins: Path, tmp_path: Path) -> None:
    """A FUSE server that never answers, reached by a symlink under one of our names, by a
    foreign symlink, and mounted over one of our directories: the walk returns at once,
    takes our id and names the three; nothing of the mount is looked up."""
    maps = bpffs.pin_dir(pins / "tamper" / "maps")
    _id_set(maps / "tamper_map_ids")
    ours = _map_id(maps / "tamper_map_ids")
    links = bpffs.pin_dir(pins / "hips" / "links")
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    got: dict[str, dict[str, set[int]]] = {}
    foreign: list[Path] = []
    try:
        with SilentFuse(mnt), SilentFuse(links):
            os.symlink(mnt / "x", maps / "tamper_link_ids")
            os.symlink(mnt, pins / "elsewhere")
            t = threading.Thread(target=lambda: got.update(ids=pinned_ids(pins, foreign=foreign)),
                                 daemon=True)
            t0 = time.monotonic()
            t.start()
            t.join(3.0)
            blocked = t.is_alive()
            took = time.monotonic() - t0
        t.join(5.0)                              # the mounts aborted: a blocked walk ends
        assert not blocked, "the pin-root walk blocked on a FUSE mount that never answers"
        assert took < 1.0, took
        assert got["ids"] == {"map": {ours}, "link": set(), "prog": set()}
        assert set(foreign) == {maps / "tamper_link_ids", pins / "elsewhere", links}
    finally:
        _unlink_symlinks(pins)


def test_a_flood_of_entries_in_our_directory_costs_a_bounded_listing(
        pins: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 dangling symlinks in tamper/maps: only our name is opened (one BPF_OBJ_GET),
    at most PIN_WALK_LISTED entries are read from the listing, the directory is named as
    cut short."""
    maps = bpffs.pin_dir(pins / "tamper" / "maps")
    _id_set(maps / "tamper_map_ids")
    ours = _map_id(maps / "tamper_map_ids")
    n = 20_000
    try:
        for i in range(n):
            os.symlink(f"/nonexistent/{i}", maps / f"s{i:05d}")
        calls: list[str] = []
        real = gk.obj_get

        def counted(p: Path | str) -> int:
            calls.append(str(p))
            return real(p)
        monkeypatch.setattr(gk, "obj_get", counted)
        foreign: list[Path] = []
        cut: list[Path] = []
        t0 = time.monotonic()
        ids = pinned_ids(pins, foreign=foreign, cut=cut)
        took = time.monotonic() - t0
        print(f"walk of {n} foreign entries: {took * 1000:.1f} ms, {len(calls)} obj_get")
        assert ids["map"] == {ours}
        assert len(calls) == 1, len(calls)
        assert len(foreign) <= gk.PIN_WALK_LISTED and cut == [maps]     # a budget per directory
    finally:
        _unlink_symlinks(pins)


def test_remove_pins_follows_no_symlink(pins: Path, outside: Path, tmp_path: Path) -> None:
    """Tearing a pin root down (maintenance, a stop) with root's symlinks in it: a loop, a
    directory outside holding a pin, a FUSE mount that never answers: each symlink is
    unlinked, nothing behind one is touched, nothing blocks."""
    _id_set(bpffs.pin_dir(pins / "tamper" / "maps") / "tamper_map_ids")
    _id_set(outside / "m")
    mnt = tmp_path / "fuse"
    mnt.mkdir()
    done: list[object] = []
    try:
        with SilentFuse(mnt):
            os.symlink(pins / "loop", pins / "loop")
            os.symlink(outside, pins / "tamper" / "elsewhere")
            os.symlink(mnt / "x", pins / "tamper" / "maps" / "hang")
            os.symlink(mnt, pins / "hang_dir")

            def rm() -> None:
                try:
                    done.append(bpffs.remove_pins(pins))
                except Exception as exc:  # noqa: BLE001 — the assertion below reports it
                    done.append(exc)
            t = threading.Thread(target=rm, daemon=True)
            t.start()
            t.join(3.0)
            blocked = t.is_alive()
        t.join(5.0)
        assert not blocked, "remove_pins blocked on a FUSE mount that never answers"
        assert isinstance(done[0], list), done
        assert not pins.exists() and (outside / "m").exists()
    finally:
        if pins.exists():
            _unlink_symlinks(pins)


def test_remove_pins_never_enters_a_mount_under_the_pin_root(pins: Path) -> None:
    """s20 review (confused deputy): a tmpfs mounted at <pin dir>/tamper/x had its files
    unlinked by remove_pins (then EBUSY failed every open()/remove()), a FUSE mount that
    never answers blocked it.  Now neither is opened or entered: both are reported, the
    tmpfs's sentinel survives, our pins are gone, within 1 s."""
    _id_set(bpffs.pin_dir(pins / "tamper" / "maps") / "tamper_map_ids")
    tdir = bpffs.pin_dir(pins / "tamper" / "x")
    fdir = bpffs.pin_dir(pins / "hips" / "links")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bastion-test-tmpfs", os.fsencode(tdir), b"tmpfs", 0, b"size=64k") != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs", str(tdir))
    done: list[object] = []
    crossed: list[Path] = []
    try:
        sentinel = tdir / "sentinel"
        sentinel.write_text("not Bastion's")
        with SilentFuse(fdir):
            def rm() -> None:
                try:
                    done.append(bpffs.remove_pins(pins, crossed))
                except Exception as exc:  # noqa: BLE001 — the assertion below reports it
                    done.append(exc)
            t = threading.Thread(target=rm, daemon=True)
            t0 = time.monotonic()
            t.start()
            t.join(3.0)
            blocked = t.is_alive()
            took = time.monotonic() - t0
            survived = sentinel.exists()
        t.join(5.0)
    finally:
        libc.umount2(os.fsencode(tdir), 2)          # MNT_DETACH
    assert not blocked, "remove_pins blocked on a FUSE mount under the pin root"
    assert took < 1.0, took
    assert isinstance(done[0], list), done
    assert survived, "remove_pins unlinked a file of another mount"
    assert set(crossed) == {tdir, fdir}
    assert not (pins / "tamper" / "maps").exists()
    print(f"remove_pins with two mounts under the pin root: {took * 1000:.1f} ms")


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
