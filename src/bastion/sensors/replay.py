"""Replay sensor: recorded JSONL (the event JSON form) -> the same iterator."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO

from bastion.errors import DecodeError, Location, ReplayError
from bastion.events import Event, from_json, repeats


class ReplaySensor:
    """Reads a JSONL file written by ``bastion record`` (or by hand).

    A malformed line raises :class:`ReplayError` naming ``file:line``; blank
    lines and lines starting with ``#`` are skipped.
    """

    name = "replay"

    def __init__(self, path: Path, *, batch: int = 512) -> None:
        self.path = path
        self.batch = batch
        self._fh: IO[str] | None = None
        self._line = 0
        self._events = 0
        self.attached: list[str] = []
        self.missing: list[str] = []

    def ring_fill(self) -> float:
        return 0.0

    def open(self) -> None:
        try:
            self._fh = self.path.open("r", encoding="utf-8")
        except OSError as exc:
            raise ReplayError(f"cannot open replay file: {exc.strerror}",
                              location=Location(str(self.path))) from exc

    def poll(self, timeout_s: float = 0.0) -> list[Event] | None:
        if self._fh is None:
            raise ReplayError("replay sensor polled before open()", location=Location(str(self.path)))
        out: list[Event] = []
        while len(out) < self.batch:
            text = self._fh.readline()
            if not text:
                self._events += len(out)
                return out or None
            self._line += 1
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            where = Location(str(self.path), self._line)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ReplayError(f"not JSON: {exc.msg}", location=Location(
                    str(self.path), self._line, exc.colno)) from exc
            try:
                ev = from_json(obj)
                n, last_ns = repeats(obj)
            except DecodeError as exc:
                raise ReplayError(exc.message, location=where) from exc
            out.append(ev)
            if n > 1 and last_ns is not None:
                # a stored row of exact repeats (bastion events --json): as many events,
                # the first at its time, the last at its last_time (the times between
                # were not kept)
                out += [ev] * (n - 2)
                out.append(dataclasses.replace(ev, time_ns=last_ns))
        self._events += len(out)
        return out

    def stats(self) -> dict[str, int]:
        return {"events": self._events, "drops": 0, "line": self._line}

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_all(path: Path) -> list[Event]:
    """Every event of a replay file (tests and small tools)."""
    sensor = ReplaySensor(path)
    sensor.open()
    try:
        out: list[Event] = []
        while (batch := sensor.poll(0)) is not None:
            out.extend(batch)
        return out
    finally:
        sensor.close()


__all__ = ["ReplaySensor", "read_all"]
