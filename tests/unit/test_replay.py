"""Replay: recorded JSONL -> the same events, errors with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.errors import ReplayError
from bastion.events import ExitEvent, FileEvent, Proc, to_json
from bastion.sensors.replay import ReplaySensor, read_all

P = Proc(42, 42, 1, 0, 0, 0, 7, "sh", 0, "/bin/sh")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    evs = [FileEvent(1_000_000_000_000, P, op="unlink", path="/tmp/x"),
           ExitEvent(2_000_000_000_000, P, exit_code=3, status=768)]
    f = _write(tmp_path / "t.jsonl", ["# a comment", ""] + [json.dumps(to_json(e)) for e in evs])
    assert read_all(f) == evs


def test_batches_then_eof(tmp_path: Path) -> None:
    ev = ExitEvent(1_000, P)
    f = _write(tmp_path / "t.jsonl", [json.dumps(to_json(ev))] * 5)
    s = ReplaySensor(f, batch=2)
    s.open()
    sizes = []
    while (b := s.poll(0)) is not None:
        sizes.append(len(b))
    s.close()
    assert sizes == [2, 2, 1]
    assert s.stats()["events"] == 5


@pytest.mark.parametrize("bad,where,msg", [
    ('{"type": "exit", ', ":2:", "not JSON"),
    ('{"type": "warp", "time": "2026-01-01T00:00:00Z"}', ":2", "unknown event type 'warp'"),
    ('{"type": "exit", "time": "2026-01-01T00:00:00Z", "pid": 1}', ":2", "lacks field"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, bad: str, where: str, msg: str) -> None:
    good = json.dumps(to_json(ExitEvent(1_000, P)))
    f = _write(tmp_path / "t.jsonl", [good, bad])
    with pytest.raises(ReplayError) as ei:
        read_all(f)
    text = str(ei.value)
    assert text.startswith(f"{f}{where}") and msg in text


def test_missing_file(tmp_path: Path) -> None:
    s = ReplaySensor(tmp_path / "nope.jsonl")
    with pytest.raises(ReplayError, match="nope.jsonl: cannot open replay file"):
        s.open()
