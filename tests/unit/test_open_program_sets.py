"""The two sets of open programs of tp_events.bpf.o (s16-open) and the choice
between them: every program of each set is in the object, the sets are disjoint,
each set covers the same three open syscalls (openat2 is a pair in both), and the one not chosen is skipped
(never loaded, never attached)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.kernel.libbpf import BpfObject
from bastion.sensors.bpf import (
    BTF_OPEN_PROGRAMS, IOURING_PROGRAMS, PROBE_OPEN_PROGRAMS, BpfSensor, HookSensor,
    iouring_programs_skipped, open_programs_skipped,
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
    sensor = BpfSensor(btf_loads=btf_loads)
    sensor.iou_present = frozenset({"io_uring_submit_req", "io_uring_complete"})
    spec = sensor.spec()
    assert spec.skip == skipped | {"on_iou_submit_sqe", "on_iou_connect_sqe"}
    assert HookSensor().spec().skip == frozenset()   # lsm_events.bpf.o has no such sets


# ---- the io_uring programs (s22-uring, issue 15.3) ----------------------------------

def test_io_uring_programs_are_in_the_object_on_their_tracepoints() -> None:
    sections = _sections()
    assert {p: sections[p] for p in IOURING_PROGRAMS} == {
        p: f"tp_btf/{tp}" for p, tp in IOURING_PROGRAMS.items()}


@pytest.mark.parametrize("present, skip, missing", [
    # 6.4+ (6.18 here): submit_req; 6.1-6.3: submit_sqe (its other name is skipped, not missing)
    ({"io_uring_submit_req", "io_uring_complete"}, {"on_iou_submit_sqe", "on_iou_connect_sqe"},
     []),
    ({"io_uring_submit_sqe", "io_uring_complete"}, {"on_iou_submit_req", "on_iou_connect_req"},
     []),
    # no io_uring in the kernel: every program skipped and said missing (status lists it)
    (set(), set(IOURING_PROGRAMS), ["on_iou_connect_req", "on_iou_submit_req", "on_iou_complete"]),
    ({"io_uring_submit_req"}, {"on_iou_submit_sqe", "on_iou_connect_sqe", "on_iou_complete"},
     ["on_iou_complete"]),
])
def test_io_uring_programs_load_where_their_tracepoint_is(
        present: set[str], skip: set[str], missing: list[str]) -> None:
    assert iouring_programs_skipped(frozenset(present)) == (frozenset(skip), missing)
    sensor = BpfSensor(btf_loads=True)
    sensor.iou_present = frozenset(present)
    assert sensor.spec().skip == PROBE_OPEN_PROGRAMS | skip
    assert sensor.iou_missing == missing


def test_doctor_says_when_io_uring_is_unseen(monkeypatch: pytest.MonkeyPatch) -> None:
    """No silent downgrade: a kernel without the tracepoints (or io_uring) is named."""
    import bastion.kernel.btf as btf
    from bastion.enforce.tiers import _iouring_seen

    monkeypatch.setattr(btf, "iouring_tracepoints",
                        lambda: (frozenset({"io_uring_submit_sqe", "io_uring_complete"}), ""))
    assert _iouring_seen() == ""
    monkeypatch.setattr(btf, "iouring_tracepoints",
                        lambda: (frozenset({"io_uring_submit_req"}), ""))
    assert _iouring_seen() == "io_uring requests unseen: no tracepoint io_uring_complete"
    monkeypatch.setattr(btf, "iouring_tracepoints",
                        lambda: (frozenset(), "no io_uring in the kernel's BTF (struct io_open)"))
    assert _iouring_seen() == ("io_uring requests unseen: no io_uring in the kernel's BTF "
                               "(struct io_open)")
