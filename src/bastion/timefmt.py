"""Time formats used across Bastion: RFC 3339 UTC strings and CLI time ranges.

Events and alerts carry ``time`` as an RFC 3339 UTC string with microseconds and
a ``Z`` suffix (``2026-11-26T05:20:47.123456Z``); the store indexes them as float
epoch seconds.  The CLI's ``--since``/``--until`` accept either a duration back
from now (``30s``, ``10m``, ``2h``, ``1d``, ``1w``) or an absolute date/time.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

from bastion.errors import ConfigError

__all__ = ["format_time", "parse_time", "parse_since"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_SECOND = timedelta(seconds=1)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
# RFC 3339 allows a lower-case 't'/'z' and a space separator; fromisoformat wants 'T'.
_LOWER_T = re.compile(r"^(\d{4}-\d{2}-\d{2})[t ](\d)")


def format_time(epoch_ns: int) -> str:
    """Epoch nanoseconds -> ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, truncated to µs)."""
    secs, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns // 1000:06d}Z"


def parse_time(s: str) -> float:
    """An RFC 3339 / ISO 8601 date or date-time -> epoch seconds.

    Accepts ``Z`` or a numeric offset; a value without an offset (or a bare date,
    meaning midnight) is taken as UTC.  Raises :class:`ConfigError` naming ``s``.
    """
    text = s.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    text = _LOWER_T.sub(r"\1T\2", text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"invalid time {s!r}: expected RFC 3339, e.g. 2026-11-26T05:20:47Z"
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) / _ONE_SECOND


def parse_since(s: str, now: float) -> float:
    """A duration back from ``now`` (``30s``, ``10m``, ``2h``, ``1d``, ``1w``) or an
    absolute RFC 3339 / ISO date(time) -> epoch seconds.

    Raises :class:`ConfigError` naming ``s`` when it is neither.
    """
    m = _DURATION.fullmatch(s.strip())
    if m is not None:
        return now - float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    try:
        return parse_time(s)
    except ConfigError as exc:
        raise ConfigError(
            f"invalid time {s!r}: expected a duration (30s, 10m, 2h, 1d, 1w) "
            "or an RFC 3339 date/time (2026-11-26 or 2026-11-26T05:20:47Z)"
        ) from exc
