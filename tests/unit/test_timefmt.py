from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import BastionError, ConfigError
from bastion.timefmt import format_time, parse_since, parse_time

# 2026-11-26T05:20:47Z
T0 = 1795670447


def test_format_time_is_rfc3339_utc_with_microseconds() -> None:
    assert format_time(T0 * 10**9 + 123_456_789) == "2026-11-26T05:20:47.123456Z"
    assert format_time(0) == "1970-01-01T00:00:00.000000Z"
    assert format_time(T0 * 10**9) == "2026-11-26T05:20:47.000000Z"


def test_format_time_truncates_not_rounds() -> None:
    assert format_time(999) == "1970-01-01T00:00:00.000000Z"
    assert format_time(10**9 - 1) == "1970-01-01T00:00:00.999999Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T05:20:47.123456Z", T0 + 0.123456),
        ("2026-11-26T05:20:47Z", T0),
        ("2026-11-26t05:20:47z", T0),
        ("2026-11-26 05:20:47Z", T0),
        ("2026-11-26T07:20:47+02:00", T0),
        ("2026-11-26T00:20:47.5-05:00", T0 + 0.5),
        ("2026-11-26T05:20:47", T0),  # no offset: UTC
        ("2026-11-26", T0 - (5 * 3600 + 20 * 60 + 47)),  # midnight UTC
    ],
)
def test_parse_time_accepts_rfc3339_and_offsets(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("bad", ["", "yesterday", "2026-13-01", "2026-11-26T25:00:00Z", "17956704"])
def test_parse_time_rejects_garbage_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_time(bad)
    assert repr(bad) in str(ei.value)
    assert isinstance(ei.value, BastionError)
    assert ei.value.__cause__ is not None


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))
def test_format_then_parse_round_trips_to_the_microsecond(ns: int) -> None:
    assert parse_time(format_time(ns)) == pytest.approx((ns // 1000) / 1e6, abs=1e-6)


@pytest.mark.parametrize(
    ("text", "back"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 7 * 86400),
     (" 90s ", 90), ("1.5h", 5400), ("0s", 0)],
)
def test_parse_since_durations_count_back_from_now(text: str, back: float) -> None:
    now = 2_000_000_000.25
    assert parse_since(text, now) == pytest.approx(now - back)


def test_parse_since_accepts_absolute_times() -> None:
    assert parse_since("2026-11-26T05:20:47Z", now=0.0) == T0
    assert parse_since("2026-11-26", now=0.0) == pytest.approx(T0 - 19247)


@pytest.mark.parametrize("bad", ["", "10", "10x", "-5m", "h", "1 day", "soon", "2026-11-26T"])
def test_parse_since_rejects_bad_input_naming_the_value(bad: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_since(bad, now=1e9)
    msg = str(ei.value)
    assert repr(bad) in msg
    assert "30s" in msg  # says what would have been accepted
