"""OutputManager: delivery, the events flag, bounded queues, drops, errors, close."""

from __future__ import annotations

import threading
import time
from typing import Sequence

import pytest

from bastion.outputs.base import OutputManager, Record


class Collect:
    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.records: list[Record] = []
        self.closed = False

    def write(self, batch: Sequence[Record]) -> None:
        self.records.extend(batch)

    def close(self) -> None:
        self.closed = True


class Blocked:
    """An output whose write never returns (until released)."""

    def __init__(self) -> None:
        self.name = "blocked"
        self.release = threading.Event()
        self.entered = threading.Event()
        self.closed = False

    def write(self, batch: Sequence[Record]) -> None:
        self.entered.set()
        self.release.wait()

    def close(self) -> None:
        self.closed = True


class Failing(Collect):
    def __init__(self) -> None:
        super().__init__("failing")
        self.calls = 0

    def write(self, batch: Sequence[Record]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError("collector down")
        super().write(batch)


def _wait(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_records_arrive_in_order_and_events_only_where_asked() -> None:
    mgr = OutputManager()
    all_, alerts_only = Collect("all"), Collect("alerts")
    mgr.add(all_, events=True)
    mgr.add(alerts_only, events=False)
    mgr.start()
    for i in range(1000):
        mgr.publish_event({"type": "exec", "n": i})
    mgr.publish_alert({"rule": "r"})
    stats = mgr.close(timeout=5)
    assert [d["n"] for k, d in all_.records if k == "event"] == list(range(1000))
    assert all_.records[-1] == ("alert", {"rule": "r"})
    assert alerts_only.records == [("alert", {"rule": "r"})]
    assert stats["all"]["sent"] == 1001 and stats["all"]["dropped"] == 0
    assert stats["alerts"]["sent"] == 1
    assert all_.closed and alerts_only.closed


def test_slow_consumer_never_stalls_the_publisher() -> None:
    """An output that blocks forever: 100k publishes return promptly; every record
    beyond the queue (and the one batch stuck in write) is dropped and counted."""
    mgr = OutputManager()
    blocked, fast = Blocked(), Collect("fast")
    mgr.add(blocked, queue=1000)
    mgr.add(fast, queue=200_000)
    mgr.start()
    mgr.publish_event({"type": "exec"})
    assert blocked.entered.wait(5)            # the worker is now stuck in write()
    t0 = time.perf_counter()
    for i in range(100_000):
        mgr.publish_event({"type": "exec", "n": i})
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"publishing took {elapsed:.2f}s"
    st = mgr.stats()["blocked"]
    assert st["queued"] == 1000
    assert st["dropped"] == 100_000 - 1000
    assert mgr.new_drops() == {"blocked": 99_000}
    assert mgr.new_drops() == {}              # only new drops are reported
    mgr.publish_alert({"rule": "drops"})      # alerts obey the same bound
    assert mgr.new_drops() == {"blocked": 1}
    _wait(lambda: len(fast.records) == 100_002)  # the other output is unaffected
    t0 = time.perf_counter()
    final = mgr.close(timeout=0.5)            # does not hang on the stuck worker
    assert time.perf_counter() - t0 < 2.0
    assert final["fast"]["sent"] == 100_002 and fast.closed
    assert not blocked.closed                 # never closed under a busy write
    blocked.release.set()


def test_a_failing_write_is_counted_and_the_worker_goes_on() -> None:
    mgr = OutputManager()
    out = Failing()
    mgr.add(out)
    mgr.start()
    mgr.publish_alert({"n": 1})
    _wait(lambda: out.calls == 1)
    mgr.publish_alert({"n": 2})
    stats = mgr.close(5)
    assert stats["failing"]["errors"] == 1 and stats["failing"]["failed"] == 1
    assert out.records == [("alert", {"n": 2})]


def test_bad_setup() -> None:
    mgr = OutputManager()
    mgr.add(Collect("a"))
    with pytest.raises(ValueError):
        mgr.add(Collect("a"))
    with pytest.raises(ValueError):
        mgr.add(Collect("b"), queue=0)
    mgr.start()
    with pytest.raises(RuntimeError):
        mgr.add(Collect("c"))
    mgr.close(1)


def test_no_outputs_is_a_no_op() -> None:
    mgr = OutputManager()
    mgr.start()
    mgr.publish_event({})
    mgr.publish_alert({})
    assert mgr.close(1) == {}
