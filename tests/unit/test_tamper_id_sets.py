"""The tamper id sets (``tamper_map_ids``/``tamper_link_ids``) are filled with only new
ids, and a full set makes room from ids whose object is gone (a reload makes new ids)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from bastion.errors import KernelError, Location
from bastion.guard.kernel import add_ids


class FakeSet:
    """A u32 -> u32 hash map of ``cap`` entries, as the kernel answers a full one."""

    name = "tamper_map_ids"

    def __init__(self, cap: int, ids: set[int]) -> None:
        self.cap = cap
        self.d = {i.to_bytes(4, "little"): (1).to_bytes(4, "little") for i in ids}
        self.writes = 0

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.d))

    def update(self, k: bytes, v: bytes) -> None:
        if k not in self.d and len(self.d) >= self.cap:
            raise KernelError("map update: E2BIG", errno=errno.E2BIG, location=Location("fake"))
        self.writes += 1
        self.d[k] = v

    def delete(self, k: bytes) -> bool:
        return self.d.pop(k, None) is not None

    def ids(self) -> set[int]:
        return {int.from_bytes(k, "little") for k in self.d}


def test_only_new_ids_are_written() -> None:
    m = FakeSet(8, {1, 2})
    assert add_ids(m, {1, 2, 3}, lambda i: True) == 1  # type: ignore[arg-type]
    assert m.ids() == {1, 2, 3} and m.writes == 1


def test_a_full_set_drops_the_ids_of_objects_gone() -> None:
    m = FakeSet(4, {1, 2, 3, 4})
    alive = {1, 3}
    assert add_ids(m, {5, 6}, lambda i: i in alive or i >= 5) == 2  # type: ignore[arg-type]
    assert m.ids() == {1, 3, 5, 6}


def test_a_full_set_of_live_objects_says_what_it_could_not_protect() -> None:
    m = FakeSet(2, {1, 2})
    with pytest.raises(KernelError) as ei:
        add_ids(m, {7, 8}, lambda i: True)  # type: ignore[arg-type]
    assert ei.value.errno == errno.E2BIG and "id 7 and 1 more" in str(ei.value)
    assert m.ids() == {1, 2}
