"""Variable-size file records on the tracepoint sensor (issue 16.2, ABI 2.0): a path
longer than the record's string buffer is cut and flagged, never misread.

The attack: a path the kernel can only give in part.  The dentry walk keeps a long
path's last components, so a file at ``<work>/<250 x a>/etc/passwd`` used to be
reported as ``/etc/passwd`` (the flag set, the string an absolute path it is not): a
decoy write that reads as a write of the real file (a false alarm, or a rule's
exception keyed on the path).  Now the cut string is marked where it was cut
(``…/etc/passwd``: not absolute, equal to no real path); a user string cut at its end
keeps its beginning and is marked at its end.  Each record is as long as its strings."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from bastion.events import Event, FileEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup
from support.live import drain_events

pytestmark = pytest.mark.kernel

LONG = "a" * 250

WORKLOAD = textwrap.dedent("""
    import os, sys
    deep, long_abs, short = sys.argv[1], sys.argv[2], sys.argv[3]
    open(short, "w").close()
    fd = os.open(os.path.join(deep, "passwd"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chdir(deep)
    os.chmod("passwd", 0o640)                      # relative: the cwd is walked
    os.makedirs(os.path.dirname(long_abs), exist_ok=True)
    open(long_abs, "w").close()
    os.chmod(long_abs, 0o600)                       # absolute, longer than the buffer
""")


def _record(work: Path) -> tuple[list[Event], Path, str, int]:
    deep = work / LONG / "etc"
    deep.mkdir(parents=True)
    long_abs = str(work / ("b" * 200) / ("c" * 100))
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, classes=("file",), sensitive=())
        sensor.open()
        try:
            proc = run_in(cg, [sys.executable, "-c", WORKLOAD, str(deep), long_abs,
                                  str(work / "short.txt")], timeout=60)
            assert proc.returncode == 0, proc.stderr
            events: list[Event] = []
            events += drain_events(sensor)   # the workload has exited
            assert sensor.drops() == 0
            assert sensor.decode_errors == 0
        finally:
            sensor.close()
    return events, deep, long_abs, os.stat(deep / "passwd").st_ino


def test_a_path_longer_than_the_buffer_is_cut_flagged_and_never_misread(tmp_path: Path) -> None:
    events, deep, long_abs, ino = _record(tmp_path)
    files = [e for e in events if isinstance(e, FileEvent)]
    assert len(str(deep / "passwd")) > 255

    # the write-open of <work>/<250 a>/etc/passwd: the walk kept "/etc/passwd", cut
    opened = [e for e in files if e.op == "open" and e.ino == ino]
    assert len(opened) == 1, files
    ev = opened[0]
    assert ev.truncated
    assert ev.path != "/etc/passwd" and not ev.path.startswith("/"), ev.path
    assert ev.path == "\u2026/etc/passwd"

    # chmod("passwd") in that directory: the cwd walked and cut (its last components
    # kept: /<250 a>/etc), then joined
    ch = [e for e in files if e.op == "chmod" and e.mode == 0o640]
    assert len(ch) == 1, files
    assert ch[0].truncated and ch[0].path == f"\u2026/{LONG}/etc/passwd"

    # an absolute argument longer than the buffer: its beginning kept, marked at its end
    la = [e for e in files if e.op == "chmod" and e.mode == 0o600]
    assert len(la) == 1, files
    assert la[0].truncated
    assert la[0].path == long_abs.encode()[:255].decode() + "\u2026"
    assert la[0].path != long_abs


def test_a_short_path_is_whole_and_unflagged(tmp_path: Path) -> None:
    events, _deep, _long, _ino = _record(tmp_path)
    short = [e for e in events if isinstance(e, FileEvent) and e.op == "open"
             and e.path == str(tmp_path / "short.txt")]
    assert len(short) == 1 and not short[0].truncated
