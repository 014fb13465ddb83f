"""The two sets of open programs of tp_events.bpf.o (s16-open) and the choice
between them: every program of each set is in the object, the sets are disjoint,
each set covers the same three open syscalls (openat2 is a pair in both), and the one not chosen is skipped
(never loaded, never attached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.kernel.libbpf import BpfObject
from bastion.sensors.bpf import (
    BTF_OPEN_PROGRAMS, PROBE_OPEN_PROGRAMS, BpfSensor, HookSensor, open_programs_skipped,
)

EVENTS_OBJ = Path(__file__).resolve().parents[2] / "build" / "bpf" / "tp_events.bpf.o"


def _sections() -> dict[str, str]:
    with BpfObject.open(EVENTS_OBJ) as obj:
        return {p.name: p.section_name for p in obj.programs()}


def test_both_sets_are_in_the_object_and_cover_the_same_syscalls() -> None:
    sections = _sections()
    assert BTF_OPEN_PROGRAMS <= set(sections) and PROBE_OPEN_PROGRAMS <= set(sections)
    assert not BTF_OPEN_PROGRAMS & PROBE_OPEN_PROGRAMS

    def calls(names: frozenset[str], kind: str) -> set[str]:
        return {sections[n].split(kind, 1)[1]
                for n in names if kind in sections[n]}

    exits = {"openat", "open", "creat"}
    assert calls(BTF_OPEN_PROGRAMS, "sys_exit_") == exits
    assert calls(BTF_OPEN_PROGRAMS, "sys_enter_") == set()   # no entry program at all
    assert calls(PROBE_OPEN_PROGRAMS, "sys_exit_") == exits
    assert calls(PROBE_OPEN_PROGRAMS, "sys_enter_") == exits
    # openat2's flags are in user memory: an entry/exit pair loaded with either set
    assert sections["on_openat2"] == "tracepoint/syscalls/sys_enter_openat2"
    assert sections["on_openat2_ret"] == "tracepoint/syscalls/sys_exit_openat2"


@pytest.mark.parametrize("btf_loads", [True, False])
def test_the_set_not_chosen_is_skipped(btf_loads: bool) -> None:
    skipped = open_programs_skipped(btf_loads)
    assert skipped == (PROBE_OPEN_PROGRAMS if btf_loads else BTF_OPEN_PROGRAMS)
    spec = BpfSensor(btf_loads=btf_loads).spec()
    assert spec.skip == skipped
    assert HookSensor().spec().skip == frozenset()   # lsm_events.bpf.o has no such sets
