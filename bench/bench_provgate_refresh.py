"""Cost of the in-hook provenance gate's maintenance-tick pass (s15): re-expanding the
default must-stop objects of this host (every directory of every tree stat'ed, the
directories above them lstat'ed) and writing what changed.  The kernel maps are
in-memory stand-ins (the pass's map writes are the changes only: none on a quiet
host), so this runs anywhere without loading anything.

Final lines: ``bench provgate_refresh_first <ms> ms`` (the first pass, every entry
written), ``bench provgate_refresh_pass <ms> ms`` (median of later passes) and
``bench provgate_refresh_entries <n> entries`` (objects + names + ancestors).
"""

from __future__ import annotations

import time

from _common import emit, finish, log, median

from bastion.enforce import provgate_lsm
from bastion.enforce.muststop import KINDS, default_names, default_objects

ROUNDS = 7


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
    finish()


if __name__ == "__main__":
    main()
