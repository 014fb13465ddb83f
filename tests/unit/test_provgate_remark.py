"""The compat gate's re-mark pass (s16-gate) without a kernel: the order of the mark
writes (every new mark before an old one goes), a failed pass keeping every mark, the
tick's interval.  The kernel behaviour: tests/kernel/test_provgate_refresh_compat.py."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from bastion.enforce.muststop import GateObject
from bastion.enforce.provgate import REFRESH_RULE, AgentGate, ProvenanceGate
from bastion.errors import ConfigError, KernelError, Location


class FakeListener:
    is_open, expired, closed = True, False, False

    def __init__(self) -> None:
        self.mark_lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.fail_on: str | None = None
        self.flushes = 0
        self.live: set[tuple[int, int]] = set()    # the kernel's marks (fdinfo)

    def mark(self, path: str, key: tuple[int, int], _mask: int) -> None:
        if path == self.fail_on:
            raise KernelError("fanotify_mark: No space left on device", errno=errno.ENOSPC,
                              location=Location("fanotify"))
        self.log.append(("mark", path))
        self.live.add(key)

    def unmark(self, path: str, key: tuple[int, int], _mask: int) -> None:
        self.log.append(("unmark", path))
        self.live.discard(key)

    def flush_marks(self, _why: str) -> None:
        self.flushes += 1
        self.live.clear()

    def marked_inodes(self) -> set[tuple[int, int]]:
        return set(self.live)


def _gate() -> tuple[ProvenanceGate, FakeListener]:
    g = object.__new__(ProvenanceGate)
    lis = FakeListener()
    g.listener = lis  # type: ignore[assignment]
    g.max_dirs, g.per_object_dirs, g.over_budget = 100, 50, []
    g._marks, g._state, g.marks_added, g.marks_removed = {}, None, 0, 0
    g.remarked = 0
    return g, lis


def _objs(root: Path, *names: str) -> list[GateObject]:
    return [GateObject(str(root / n), "persistence") for n in names]


def test_new_marks_are_written_before_old_ones_go_and_only_the_changes(tmp_path: Path) -> None:
    for n in ("a", "b", "c"):
        (tmp_path / n).write_text("")
    g, lis = _gate()
    assert g.apply(_objs(tmp_path, "a", "b")) == []
    assert lis.flushes == 1 and sorted(lis.log) == [("mark", str(tmp_path / "a")),
                                                    ("mark", str(tmp_path / "b"))]
    lis.log.clear()
    assert g.apply(_objs(tmp_path, "a", "b")) == [] and lis.log == []   # nothing changed
    g.apply(_objs(tmp_path, "b", "c"))
    assert lis.log == [("mark", str(tmp_path / "c")), ("unmark", str(tmp_path / "a"))]
    assert lis.flushes == 1 and g.marked() == 2
    assert g._state is not None and set(g._state.paths.values()) == {
        str(tmp_path / "b"), str(tmp_path / "c")}


def test_a_refused_mark_fails_the_pass_with_every_old_mark_kept(tmp_path: Path) -> None:
    for n in ("a", "b", "c"):
        (tmp_path / n).write_text("")
    g, lis = _gate()
    g.apply(_objs(tmp_path, "a"))
    lis.log.clear()
    lis.fail_on = str(tmp_path / "c")
    with pytest.raises(KernelError):
        g.apply(_objs(tmp_path, "b", "c"))
    assert ("unmark", str(tmp_path / "a")) not in lis.log
    assert g._state is not None and str(tmp_path / "a") in g._state.paths.values()
    lis.fail_on = None
    lis.log.clear()
    g.apply(_objs(tmp_path, "b", "c"))     # the next pass: the rest, then the old one goes
    assert lis.log == [("mark", str(tmp_path / "c")), ("unmark", str(tmp_path / "a"))]


def test_a_path_gone_between_the_walk_and_its_mark_is_a_problem_not_a_failure(
        tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("")
    g, lis = _gate()

    def gone(path: str, _key: tuple[int, int], _mask: int) -> None:
        if path.endswith("/b"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        lis.log.append(("mark", path))
    lis.mark = gone  # type: ignore[method-assign]
    problems = g.apply(_objs(tmp_path, "a", "b"))
    assert len(problems) == 1 and "changed during the pass" in problems[0]
    assert g.marked() == 1 and g._state is not None and len(g._state.kinds) == 1


class FakeGate:
    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.orphan_marks = 0

    def orphans(self) -> int:
        return self.orphan_marks

    def apply(self, _objects: Any) -> list[str]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return []

    def marked(self) -> int:
        return 7


def test_the_tick_refreshes_once_the_interval_passed_and_a_failure_is_a_high_finding() -> None:
    part = AgentGate(lambda: None, self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                     objects=list, refresh_s=10.0, threaded=False)
    fake = FakeGate()
    part.gate = fake  # type: ignore[assignment]
    part._next_refresh = 100.0
    assert part.tick(99.9) is None and fake.calls == 0 and part.refresh_state() == ""
    assert part.tick(100.0) is None and fake.calls == 1 and part.refreshes == 1
    assert "7 inodes marked" in part.refresh_state()
    assert part.tick(105.0) is None and fake.calls == 1
    fake.fail = KernelError("fanotify_mark: No space left on device",
                            location=Location("fanotify"))
    f = part.tick(110.0)
    assert f is not None and f.rule == REFRESH_RULE and f.severity == "high"
    assert f.evidence["marks"] == 7 and part.refresh_failures == 1
    assert "FAILED" in part.refresh_state() and "7 marks kept" in part.refresh_state()


def test_orphan_marks_that_grow_are_a_high_finding_once() -> None:
    """s16-fixgate (2): marks that could not be removed leak towards the mark limit."""
    part = AgentGate(lambda: None, self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                     objects=list, refresh_s=10.0)
    fake = FakeGate()
    part.gate = fake  # type: ignore[assignment]
    assert part.refresh() is None
    fake.orphan_marks = 3
    f = part.refresh()
    assert f is not None and f.rule == REFRESH_RULE and f.severity == "high"
    assert f.evidence["orphan_marks"] == 3 and "3 more marks" in f.title
    assert part.refresh() is None


def test_a_negative_interval_is_refused_and_zero_never_refreshes() -> None:
    with pytest.raises(ConfigError, match="refresh interval"):
        AgentGate(lambda: None, self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                  refresh_s=-1)
    part = AgentGate(lambda: None, self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                     refresh_s=0)
    fake = FakeGate()
    part.gate = fake  # type: ignore[assignment]
    assert part.tick(1e9) is None and fake.calls == 0


def test_the_pass_runs_on_its_own_thread_one_at_a_time() -> None:
    """s16-fixgate (9): a pass stalled on a network filesystem stalled the agent's event
    loop (the tick ran it); now the tick starts it on a thread and returns, no second
    pass starts while one runs, and its finding comes with a later tick."""
    part = AgentGate(lambda: None, self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                     objects=list, refresh_s=1.0)
    release = threading.Event()
    fake = FakeGate()

    def stalled(_objects: Any) -> list[str]:
        fake.calls += 1
        assert release.wait(10)
        raise KernelError("fanotify_mark: No space left on device", location=Location("x"))
    fake.apply = stalled  # type: ignore[method-assign]
    part.gate = fake  # type: ignore[assignment]
    assert part.tick(0.0) is None          # returns while the pass is stalled
    assert part.tick(5.0) is None and fake.calls == 1   # one at a time
    release.set()
    assert part._pass is not None
    part._pass.join(5)
    f = part.tick(0.5)                      # before the next interval: no new pass
    assert f is not None and f.rule == REFRESH_RULE and part.refresh_failures == 1
