"""The tracepoint sensor's read-open verdict cache (bpf/lib/sensitive.h, issue 16.6)
must never hide a secret read: a directory first read outside the sensitive set and
then moved into it (a rename, the key's own directory unchanged), or a set that
grew after a verdict was cached, is reported on the next read; another process's
/proc/PID/environ is never served from the cache of a read of one's own.  Each
for both open program sets (s16-open: the BTF programs' per-CPU cache, the
probe-read programs' sens_cache)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from bastion import abi
from bastion.events import Event, FileEvent
from bastion.sensors.bpf import BpfSensor
from support.cg import run_in, scoped_cgroup
from support.live import drain_events

pytestmark = pytest.mark.kernel

READER = textwrap.dedent("""
    import sys
    for p in sys.argv[1:]:
        with open(p, "rb") as fh:
            fh.read(1)
    """)


def _read(cg: Path, *paths: Path) -> None:
    proc = run_in(cg, [sys.executable, "-c", READER, *map(str, paths)], timeout=30)
    assert proc.returncode == 0, proc.stderr


def _drain(sensor: BpfSensor) -> list[Event]:
    """The workload has exited: read until a poll is empty (tests/support/live.py)."""
    return drain_events(sensor)


def _sensitive_reads(events: list[Event], name: str) -> list[FileEvent]:
    return [e for e in events if isinstance(e, FileEvent) and e.op == "open"
            and e.path.endswith("/" + name) and e.sensitive]


@pytest.mark.parametrize("btf_loads", [True, False], ids=["btf", "probe-read"])
def test_directory_moved_into_the_set_is_reported(tmp_path: Path, btf_loads: bool) -> None:
    vault = tmp_path / "vault"
    vault.mkdir()
    outside = tmp_path / "staging" / "deep"
    outside.mkdir(parents=True)
    (outside / "creds.txt").write_text("x\n")
    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, sensitive=[(str(vault), abi.SensClass.CUSTOM)],
                           btf_loads=btf_loads)
        sensor.open()
        try:
            _read(cg, outside / "creds.txt", outside / "creds.txt")   # cached: not sensitive
            before = _drain(sensor)
            assert not _sensitive_reads(before, "creds.txt")
            # the file's own directory stays `deep`: only the rename voids the verdict
            (tmp_path / "staging").rename(vault / "staging")
            _read(cg, vault / "staging" / "deep" / "creds.txt")
            after = _sensitive_reads(_drain(sensor), "creds.txt")
            assert len(after) == 1 and after[0].sensitive == "custom"
        finally:
            sensor.close()


@pytest.mark.parametrize("btf_loads", [True, False], ids=["btf", "probe-read"])
def test_set_grown_after_a_cached_verdict_is_reported(tmp_path: Path, btf_loads: bool) -> None:
    d = tmp_path / "later"
    d.mkdir()
    (d / "token").write_text("t\n")
    patterns: list[tuple[str, abi.SensClass]] = []

    def resolve_now(_p: object) -> list:  # type: ignore[type-arg]
        from bastion.sensors.sensitive import resolve
        return resolve(patterns)

    with scoped_cgroup() as (cg, cgid):
        sensor = BpfSensor(cgroup_id=cgid, sensitive=[("/nonexistent-bastion", abi.SensClass.CUSTOM)],
                           resolve_sensitive=resolve_now, btf_loads=btf_loads)
        sensor.open()
        try:
            _read(cg, d / "token")
            assert not _sensitive_reads(_drain(sensor), "token")
            patterns.append((str(d), abi.SensClass.CUSTOM))
            assert sensor.refresh_sensitive() == 1
            _read(cg, d / "token")
            after = _sensitive_reads(_drain(sensor), "token")
            assert len(after) == 1 and after[0].sensitive == "custom"
        finally:
            sensor.close()

