"""``/proc/kallsyms``: core-kernel symbols, sorted, with address lookup.

Root sees real addresses; elsewhere every address is 0 and
:attr:`Kallsyms.visible` is False (checks then say why they cannot run).
Module symbols (``[mod]`` suffix) are kept apart: only core text is hashed.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import FeatureUnavailableError, Location


@dataclass(frozen=True)
class Kallsyms:
    addrs: tuple[int, ...]          # sorted core symbols
    names: tuple[str, ...]
    types: tuple[str, ...]
    by_name: dict[str, int]         # first address of each core name
    module_ranges: tuple[tuple[int, int, str], ...] = ()

    @property
    def visible(self) -> bool:
        return any(self.addrs[-3:]) if self.addrs else False

    def addr(self, name: str) -> int | None:
        return self.by_name.get(name)

    def need(self, name: str) -> int:
        a = self.by_name.get(name)
        if not a:
            raise FeatureUnavailableError(f"symbol {name} not in kallsyms",
                                          location=Location("/proc/kallsyms"))
        return a

    def lookup(self, addr: int) -> tuple[str, int] | None:
        """(symbol, offset) of the core symbol containing ``addr`` (nearest below)."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return None
        return self.names[i], addr - self.addrs[i]

    def name_at(self, addr: int) -> str | None:
        """The symbol that starts exactly at ``addr`` (text symbols preferred)."""
        i = bisect.bisect_left(self.addrs, addr)
        best: str | None = None
        while i < len(self.addrs) and self.addrs[i] == addr:
            n = self.names[i]
            if best is None or (self.types[i] in "tT" and not n.startswith("__pfx_")):
                best = n
            i += 1
        return best

    def next_addr(self, addr: int) -> int | None:
        """Start of the first symbol above ``addr``."""
        i = bisect.bisect_right(self.addrs, addr)
        return self.addrs[i] if i < len(self.addrs) else None

    def symbolize(self, addr: int) -> str:
        hit = self.lookup(addr)
        return f"{addr:#x}" if hit is None else f"{hit[0]}+{hit[1]:#x}"

    def in_module(self, addr: int) -> str | None:
        for lo, hi, mod in self.module_ranges:
            if lo <= addr < hi:
                return mod
        return None


def parse(text: str) -> Kallsyms:
    rows: list[tuple[int, str, str]] = []
    mods: dict[str, list[int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            a = int(parts[0], 16)
        except ValueError:
            continue
        if len(parts) >= 4 and parts[3].startswith("["):
            mods.setdefault(parts[3].strip("[]"), []).append(a)
            continue
        rows.append((a, parts[1], parts[2]))
    rows.sort(key=lambda r: r[0])
    by_name: dict[str, int] = {}
    for a, _t, n in rows:
        by_name.setdefault(n, a)
    ranges = tuple(sorted((min(v), max(v) + 1, k) for k, v in mods.items() if any(v)))
    return Kallsyms(tuple(r[0] for r in rows), tuple(r[2] for r in rows),
                    tuple(r[1] for r in rows), by_name, ranges)


def load(path: Path = Path("/proc/kallsyms")) -> Kallsyms:
    try:
        return parse(path.read_text())
    except OSError as exc:
        raise FeatureUnavailableError(f"cannot read kallsyms: {exc.strerror}",
                                      location=Location(str(path))) from exc
