"""Cost of the in-hook provenance gate's maintenance-tick pass (s15): re-expanding the
default must-stop objects of this host (every directory of every tree stat'ed, the
directories above them lstat'ed) and writing what changed.  The kernel maps are
in-memory stand-ins (the pass's map writes are the changes only: none on a quiet
host), so this runs anywhere without loading anything.

Final lines: ``bench provgate_refresh_first <ms> ms`` (the first pass, every entry
written), ``bench provgate_refresh_pass <ms> ms`` (median of later passes) and
``bench provgate_refresh_entries <n> entries`` (objects + names + ancestors).

The compat tier's fanotify gate (s16-gate) makes the same pass on its tick: the
default objects of this host re-expanded against a stand-in listener (its marks in
memory: a later pass writes the changes only), ``provgate_refresh_compat_pass`` (ms);
and with a real fanotify group (root) over a test-owned tree of ``TREE_DIRS``
directories (every mark on the bench's own inodes, a dead-man deadline; the pass's
own directory walk raises permission events its listener answers):
``provgate_refresh_compat_first_tree`` / ``provgate_refresh_compat_pass_tree`` (ms).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import emit, finish, log, median

from bastion.enforce import provgate_lsm
from bastion.enforce.muststop import KINDS, default_names, default_objects

ROUNDS = 7
TREE_DIRS = 500


class _Mem:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}
        self.writes = 0

    def update(self, key: bytes, value: bytes) -> None:
        self.writes += 1
        self.d[key] = value

    def delete(self, key: bytes) -> None:
        self.writes += 1
        del self.d[key]


def main() -> None:
    maps = {n: _Mem() for n in ("pgate_objs", "pgate_names", "pgate_anc", "pgate_tools")}
    g = object.__new__(provgate_lsm.LsmProvenanceGate)
    g.max_dirs, g.per_object_dirs, g.max_names = 10_000, 1_000, provgate_lsm.PGATE_MAX_NAMES
    g.over_budget = []
    g._objs, g._names, g._anc, g._tools = {}, {}, {}, {}
    g._map = maps.__getitem__   # type: ignore[method-assign]

    def one() -> float:
        t = time.perf_counter()
        g.apply(default_objects(kinds=KINDS), default_names())
        return (time.perf_counter() - t) * 1e3
    first = one()
    w0 = sum(m.writes for m in maps.values())
    passes = [one() for _ in range(ROUNDS)]
    writes = sum(m.writes for m in maps.values()) - w0
    n = g.entered()
    log(f"first pass {first:.1f} ms, later passes median {median(passes):.1f} ms, "
        f"{writes} map writes in {ROUNDS} later passes; {n}")
    emit("provgate_refresh_first", first, "ms", ".1f")
    emit("provgate_refresh_pass", median(passes), "ms", ".1f")
    emit("provgate_refresh_entries", float(sum(n.values())), "entries", ".0f")
    compat_host()
    if os.geteuid() == 0:
        compat_tree()
    else:
        log("not root: the real fanotify group's pass is not measured")
    finish()


class _NoProv:
    """The provenance map the compat gate reads: nobody is tainted (its own walk's
    opens of marked directories are allowed)."""

    def get(self, _tgid: int) -> None:
        return None

    def untracked(self, _tgid: int) -> bool:
        return False

    def errors(self) -> int:
        return 0


class _MemListener:
    """A stand-in for the fanotify listener: marks in memory."""

    is_open, expired = True, False

    def __init__(self) -> None:
        import threading
        self.mark_lock = threading.Lock()
        self.writes = 0

    def mark(self, _path: str, _key: tuple[int, int], _mask: int) -> None:
        self.writes += 1

    def unmark(self, _path: str, _key: tuple[int, int], _mask: int) -> None:
        self.writes += 1

    def flush_marks(self, _why: str) -> None:
        pass


def compat_host() -> None:
    from bastion.enforce.muststop import COMPAT_KINDS
    from bastion.enforce.provgate import ProvenanceGate

    g = object.__new__(ProvenanceGate)
    lis = _MemListener()
    g.listener = lis  # type: ignore[assignment]
    g.max_dirs, g.per_object_dirs, g.over_budget = 10_000, 1_000, []
    g._marks, g._state, g.marks_added, g.marks_removed = {}, None, 0, 0

    def one() -> float:
        t = time.perf_counter()
        g.apply(default_objects(kinds=COMPAT_KINDS))
        return (time.perf_counter() - t) * 1e3
    first = one()
    w0 = lis.writes
    passes = [one() for _ in range(ROUNDS)]
    log(f"compat, this host's objects: first pass {first:.1f} ms ({g.marked()} inodes), "
        f"later passes median {median(passes):.1f} ms, {lis.writes - w0} mark writes")
    emit("provgate_refresh_compat_pass", median(passes), "ms", ".1f")
    emit("provgate_refresh_compat_marks", float(g.marked()), "inodes", ".0f")


def compat_tree() -> None:
    from bastion.enforce.muststop import GateObject
    from bastion.enforce.provgate import ProvenanceGate

    root = Path(tempfile.mkdtemp(prefix="bgate-bench-"))
    try:
        for i in range(TREE_DIRS - 1):
            (root / f"d{i // 25}" / f"e{i}").mkdir(parents=True, exist_ok=True)
        g = ProvenanceGate(_NoProv(), deadline_s=120.0,  # type: ignore[arg-type]
                           self_tgid=os.getpid())
        try:
            g.start()
            objs = [GateObject(str(root), "persistence")]
            t = time.perf_counter()
            g.apply(objs)
            first = (time.perf_counter() - t) * 1e3
            passes = []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                g.apply(objs)
                passes.append((time.perf_counter() - t) * 1e3)
            added = g.marks_added
            (root / "new").mkdir()
            t = time.perf_counter()
            g.apply(objs)
            one_new = (time.perf_counter() - t) * 1e3
            log(f"compat, a {g.marked()}-directory tree: first pass {first:.1f} ms, later "
                f"passes median {median(passes):.1f} ms, a pass with one new directory "
                f"{one_new:.1f} ms ({g.marks_added - added} mark written)")
        finally:
            g.close()
    finally:
        shutil.rmtree(root)
    emit("provgate_refresh_compat_first_tree", first, "ms", ".1f")
    emit("provgate_refresh_compat_pass_tree", median(passes), "ms", ".1f")


if __name__ == "__main__":
    main()
