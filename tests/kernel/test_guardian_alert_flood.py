"""The guardian's own alerts are rate limited like the agent's (issue 14.1).

A loop of tamper attempts is a flood of critical alerts written by the guardian:
on the lsm tier each refused attempt costs the attacker nothing, on the compat
tier one process per try.  Before, every attempt was one stored alert (an
attacker could fill the store and bury what mattered); now (rule, executable)
gets ``per_rule`` full alerts per interval and then one "N more like this"
aggregate, still critical, with the count and the actions taken.

A TEST instance only (tests/support/tamper.py): guardian + stand-in agent in tmp,
a test pin root, programs acting only on attackers in the test cgroup, dead-man
deadline.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
INTERVAL_S, PER_RULE, TRIES = 3.0, 4, 20


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        i = T.make_instance(tmp_path, cg, cgid, deadline_s=120)
        try:
            i.start_guardian("--test-alert-limits", str(INTERVAL_S), str(PER_RULE), tier="compat")
            yield i
        finally:
            print("\nguardian log:\n" + "".join(i.stderr[-30:]))
            i.teardown()


def test_a_loop_of_tamper_attempts_is_aggregated_not_stored_one_by_one(inst: T.Instance) -> None:
    assert inst.guardian is not None
    g = inst.guardian.pid
    for _ in range(TRIES):
        r = inst.attack(["kill", "-15", str(g)])
        assert r.returncode == -9               # every attacker is still killed
    assert inst.guardian.poll() is None

    def signal_alerts() -> list[dict[str, object]]:
        return [a for a in inst.alerts() if a["rule"] == "bastion.tamper.signal"]

    deadline = time.monotonic() + INTERVAL_S * 4
    while not any(a["action"] == "aggregate" for a in signal_alerts()):
        assert time.monotonic() < deadline, [(a["action"], a["title"]) for a in signal_alerts()]
        time.sleep(0.2)
    full = [a for a in signal_alerts() if a["action"] != "aggregate"]
    agg = [a for a in signal_alerts() if a["action"] == "aggregate"]
    assert len(full) == PER_RULE, len(full)     # before: one stored alert per attempt
    assert len(agg) == 1 and agg[0]["severity"] == "critical"
    ev = agg[0]["evidence"]
    assert ev["suppressed"] == TRIES - PER_RULE and ev["actions"] == {"killed": TRIES - PER_RULE}  # type: ignore[index]
    assert int(inst.status()["alerts_suppressed"]) == TRIES - PER_RULE  # type: ignore[call-overload]
