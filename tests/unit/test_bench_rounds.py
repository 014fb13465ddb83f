"""The in-boot comparison helpers of the VM benchmarks (bench/_common.py: abba_order,
round_ratios, spread): pure functions, no kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _common as c  # noqa: E402


def test_abba_order_is_symmetric_and_swaps_the_compared_modes() -> None:
    assert c.abba_order(("none", "tp", "hooks"), 0) == ["none", "tp", "hooks", "hooks", "tp", "none"]
    assert c.abba_order(("none", "tp", "hooks"), 1) == ["none", "hooks", "tp", "tp", "hooks", "none"]
    assert c.abba_order(("none", "tp", "hooks"), 2) == c.abba_order(("none", "tp", "hooks"), 0)
    for r in range(4):
        order = c.abba_order(("a", "b", "c"), r)
        assert order == order[::-1]
        assert sorted(order) == ["a", "a", "b", "b", "c", "c"]


def test_abba_cancels_a_linear_drift() -> None:
    """Every session of a round 10 % slower than the one before, the modes equal: the
    per-round ratio is exactly 1 for every pair of modes (a fixed order is not)."""
    modes = ("none", "tp", "hooks")
    for r in range(2):
        samples: dict[str, list[list[float]]] = {m: [[]] for m in modes}
        for k, mode in enumerate(c.abba_order(modes, r)):
            samples[mode][0].append(1.0 + 0.1 * k)
        for num, den in (("hooks", "tp"), ("tp", "none"), ("hooks", "none")):
            assert c.round_ratios(samples, num, den) == [pytest.approx(1.0)]
    fixed = {"tp": [[1.0]], "hooks": [[1.1]]}      # one session each, drifting
    assert c.round_ratios(fixed, "hooks", "tp") == [pytest.approx(1.1)]


def test_round_ratios_per_round() -> None:
    samples = {"a": [[1.0, 1.0], [2.0, 2.0]], "b": [[1.1, 1.3], [2.0, 3.0]]}
    assert c.round_ratios(samples, "b", "a") == [pytest.approx(1.2), pytest.approx(1.25)]


@pytest.mark.parametrize("samples, msg", [
    ({"a": [[1.0]], "b": [[1.0], [1.0]]}, "b has 2 rounds, a 1"),
    ({"a": [[]], "b": [[1.0]]}, "round 1: b [1.0], a []"),
    ({"a": [[1.0], [0.0]], "b": [[1.0], [1.0]]}, "round 2: b [1.0], a [0.0]"),
])
def test_round_ratios_refuses_missing_rounds(samples: dict[str, list[list[float]]], msg: str) -> None:
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        c.round_ratios(samples, "b", "a")


def test_spread() -> None:
    s = c.spread([1.04, 0.98, 1.02, 1.10])
    assert (s.median, s.lo, s.hi) == (pytest.approx(1.03), 0.98, 1.10)
    assert s.within(1.03) == 2
    assert s.describe() == "1.030 (0.980-1.100 over 4 rounds)"


@pytest.mark.parametrize("values, msg", [
    ([], "no rounds"), ([1.0, 0.0], "round 2 has 0.0"), ([float("inf")], "round 1 has inf"),
    ([float("nan")], "round 1 has nan"),
])
def test_spread_refuses_what_is_no_ratio(values: list[float], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        c.spread(values)
