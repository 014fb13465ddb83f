"""The alert gate (pure, clock passed in) and the policy's ``alerts:`` section."""

from __future__ import annotations

import pytest

from bastion.alertgate import QUOTA_RULE, AlertGate, AlertLimits
from bastion.config import PolicyError, parse_policy


def _admit(g: AlertGate, rule: str, exe: str, now: float, severity: str = "high",
           action: str = "alert", pid: int = 1) -> bool:
    return g.admit(rule, exe, "t", severity, action, pid, now, int(now * 1e9))


def test_the_bucket_refills_over_the_interval() -> None:
    g = AlertGate(AlertLimits(interval_s=10, per_rule=2, quota=100), 0.0)
    assert [_admit(g, "r", "/x", 0.0) for _ in range(4)] == [True, True, False, False]
    assert _admit(g, "r", "/x", 5.0)            # half an interval: one token back
    assert not _admit(g, "r", "/x", 5.0)
    assert _admit(g, "r", "/y", 5.0)            # another executable: its own bucket
    [(agg, why)] = g.flush(5.0)
    assert (agg.rule, agg.exe, agg.count, why) == ("r", "/x", 3, "rate")
    assert g.flush(6.0) == []                   # said once


def test_the_quota_window_resets() -> None:
    g = AlertGate(AlertLimits(interval_s=10, per_rule=5, quota=3), 0.0)
    assert [_admit(g, "r", f"/x{i}", 1.0) for i in range(5)] == [True] * 3 + [False] * 2
    assert _admit(g, "r", "/x9", 11.0)          # a new window
    [(agg, why)] = g.flush(11.0)
    assert (agg.rule, agg.count, why, agg.by_rule) == (QUOTA_RULE, 2, "quota", {"r": 2})


def test_aggregates_are_bounded_most_severe_first_the_rest_folded() -> None:
    g = AlertGate(AlertLimits(interval_s=10, per_rule=1, quota=10_000, max_aggregates=2), 0.0)
    for i in range(5):
        for _ in range(3):
            _admit(g, f"low{i}", "/x", 0.0, severity="low")
    for _ in range(2):
        _admit(g, "tamper", "/k", 0.0, severity="critical")
    out = g.flush(1.0)
    assert [(a.rule, a.count, why) for a, why in out][0] == ("tamper", 1, "rate")
    assert len(out) == 3
    over, why = out[-1]
    assert why == "quota" and over.rule == QUOTA_RULE
    assert sum(a.count for a, _ in out) == 1 + 5 * 2


def test_tracked_keys_are_bounded_and_the_rest_still_counted() -> None:
    g = AlertGate(AlertLimits(interval_s=10, per_rule=1, quota=100_000, max_keys=50), 0.0)
    admitted = sum(_admit(g, "r", f"/x{i}", 0.0) for i in range(1000))
    assert admitted == 50 and g.stats()["keys"] <= 50
    out = g.flush(0.0)
    assert sum(a.count for a, _ in out) == 950
    assert g.suppressed_total == 950


def test_alert_limits_from_the_policy() -> None:
    cfg = parse_policy("version: 1\nalerts:\n  interval: 30s\n  per_rule: 5\n  quota: 50\n"
                       "  store_queue: 500\n", "p.yaml")
    assert cfg.alerts == AlertLimits(interval_s=30, per_rule=5, quota=50, store_queue=500)
    assert parse_policy("version: 1\n", "p.yaml").alerts == AlertLimits()


@pytest.mark.parametrize("body, where, what", [
    ("alerts:\n  per_rule: 0\n", "p.yaml:3:13", "alerts.per_rule must be 1..100000"),
    ("alerts:\n  interval: 0.5s\n", "p.yaml:3:13", "alerts.interval must be between 1s and 1h"),
    ("alerts:\n  quota: lots\n", "p.yaml:3:10", "is not an integer"),
    ("alerts:\n  per_rule: 20\n  quota: 10\n", "p.yaml:3:13", "exceeds alerts.quota"),
    ("alerts:\n  burst: 3\n", "p.yaml:3:3", "unknown key 'burst' in alerts"),
])
def test_bad_alert_limits_name_the_place(body: str, where: str, what: str) -> None:
    with pytest.raises(PolicyError) as ei:
        parse_policy("version: 1\n" + body, "p.yaml")
    assert where in str(ei.value) and what in str(ei.value)
