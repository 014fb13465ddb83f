"""Bounded behaviour state: per-process and per-tree, with expiry and shedding.

Every piece of state a behaviour rule keeps lives in a :class:`BoundedState`:
an LRU map with a hard entry cap and an idle TTL.  When a fork bomb or an
event flood would grow it past the cap, the least recently used key is
dropped and counted in :attr:`BoundedState.shed` — memory stays bounded and
the loss is reported (``behavior_stats`` sums the counters for ``status``
and for the ``bastion.engine.shed`` health finding).

Keys identify a process by ``(pid, start_ns)`` so a reused pid never
inherits the state of the process that had it before.  A *tree* key is the
process that launched a group of workers: walk up while the parent runs the
same executable (fork workers) or is a pure launcher (xargs, find, env, ...).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from bastion.events import Event
from bastion.proctable import ProcessTable

K = TypeVar("K")
V = TypeVar("V")

ProcKey = tuple[int, int]  # (pid, start_ns)

LAUNCHERS = frozenset({
    "xargs", "find", "parallel", "env", "nohup", "timeout", "setsid", "nice", "ionice",
    "stdbuf", "chrt", "taskset",
})


@dataclass(frozen=True)
class Limits:
    """State bounds of one rule (defaults fit a busy host; tests shrink them)."""

    max_keys: int = 16384
    ttl_ns: int = 300 * 1_000_000_000


class BoundedState(Generic[K, V]):
    """LRU map with a key cap and an idle TTL; evictions under pressure are *shed*."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._d: OrderedDict[K, tuple[int, V]] = OrderedDict()
        self.shed = 0        # keys dropped because the cap was reached
        self.expired = 0     # keys dropped because they were idle past the TTL

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        if limits.max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        # (get and put run ~10 times an event: the bounds read from the instance; s24)
        self._limits, self._ttl, self._max = limits, limits.ttl_ns, limits.max_keys

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def get(self, key: K, now_ns: int) -> V | None:
        item = self._d.get(key)
        if item is None:
            return None
        seen, val = item
        if now_ns - seen > self._ttl:
            del self._d[key]
            self.expired += 1
            return None
        return val

    def setdefault(self, key: K, now_ns: int, make: Callable[[], V]) -> V:
        val = self.get(key, now_ns)
        if val is None:
            val = make()
        self.put(key, now_ns, val)
        return val

    def put(self, key: K, now_ns: int, val: V) -> None:
        d = self._d
        d[key] = (now_ns, val)
        d.move_to_end(key)
        if len(d) > self._max:
            while len(d) > self._max:
                d.popitem(last=False)
                self.shed += 1

    def pop(self, key: K) -> V | None:
        item = self._d.pop(key, None)
        return item[1] if item is not None else None

    def expire(self, now_ns: int) -> int:
        """Drop idle keys (the oldest are first: stop at the first fresh one)."""
        n = 0
        while self._d:
            key, (seen, _) = next(iter(self._d.items()))
            if now_ns - seen <= self.limits.ttl_ns:
                break
            del self._d[key]
            n += 1
        self.expired += n
        return n

    def items(self) -> Iterator[tuple[K, V]]:
        return ((k, v) for k, (_, v) in list(self._d.items()))


def proc_key(ev: Event) -> ProcKey:
    return (ev.proc.pid, ev.proc.start_ns)


def tree_key(ev: Event, procs: ProcessTable, limit: int = 16) -> ProcKey:
    """The launcher of ``ev``'s process group of workers (see module doc)."""
    chain = procs.ancestry(ev.proc.pid, limit)
    if not chain:
        return proc_key(ev)
    cur = chain[0]
    exe = cur.exe or ev.proc.exe
    for parent in chain[1:]:
        if parent.pid <= 1:
            break
        pexe = parent.exe
        if pexe and (pexe == exe or os.path.basename(pexe) in LAUNCHERS):
            cur = parent
            continue
        break
    if cur.pid == ev.proc.pid:
        return proc_key(ev)
    return (cur.pid, cur.start_ns)


__all__ = ["Limits", "BoundedState", "ProcKey", "proc_key", "tree_key", "LAUNCHERS"]
