"""The read-open verdict cache (bpf/lib/sensitive.h) in the hook sensor too (issue 16.6:
``security_file_open`` takes one cache lookup instead of the set's walk on every
read-open), on Debian's stock kernel (test VM).  The cache must never hide a secret
read: a directory first read outside the sensitive set and then moved into it (a
rename: the file's own directory, in the cache key, is unchanged; the hook sensor
voids its verdicts at the exit of vfs_rename), or a set that grew after a verdict was
cached, is reported on the next read.  Run against both sensors (the tracepoint
sensor has its own kernel test: tests/kernel/test_sensitive_cache.py).

Each sensor is scoped to the test's own cgroup; nothing is denied.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion import abi  # noqa: E402
from bastion.events import Event, FileEvent  # noqa: E402
from bastion.sensors.bpf import BpfSensor, HookSensor  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)
SENSORS = [pytest.param(HookSensor, id="hooks"), pytest.param(BpfSensor, id="tracepoints")]

READER = textwrap.dedent("""
    import sys
    for p in sys.argv[1:]:
        with open(p, "rb") as fh:
            fh.read(1)
    """)


def _read(cg: Path, *paths: Path) -> None:
    proc = run_in(cg, [sys.executable, "-c", READER, *map(str, paths)], timeout=60)
    assert proc.returncode == 0, proc.stderr


def _drain(sensor: BpfSensor) -> list[Event]:
    out: list[Event] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        out += sensor.poll(0.05) or []
    return out


def _sensitive_reads(events: list[Event], name: str) -> list[FileEvent]:
    return [e for e in events if isinstance(e, FileEvent) and e.op == "open"
            and e.path.endswith("/" + name) and e.sensitive]


@pytest.mark.parametrize("kind", SENSORS)
def test_directory_moved_into_the_set_is_reported(kind: Any, tmp_path: Path) -> None:
    vault = tmp_path / "vault"
    vault.mkdir()
    outside = tmp_path / "staging" / "deep"
    outside.mkdir(parents=True)
    (outside / "creds.txt").write_text("x\n")
    with scoped_cgroup() as (cg, cgid):
        # dedup off: each read is its own record
        sensor = kind(cgroup_id=cgid, open_dedup_s=0,
                      sensitive=[(str(vault), abi.SensClass.CUSTOM)])
        sensor.open()
        try:
            _read(cg, outside / "creds.txt", outside / "creds.txt")   # cached: not sensitive
            assert not _sensitive_reads(_drain(sensor), "creds.txt")
            # the file's own directory stays `deep`: only the rename voids the verdict
            (tmp_path / "staging").rename(vault / "staging")
            _read(cg, vault / "staging" / "deep" / "creds.txt")
            after = _sensitive_reads(_drain(sensor), "creds.txt")
            assert len(after) == 1 and after[0].sensitive == "custom"
        finally:
            sensor.close()


@pytest.mark.parametrize("kind", SENSORS)
def test_set_grown_after_a_cached_verdict_is_reported(kind: Any, tmp_path: Path) -> None:
    d = tmp_path / "later"
    d.mkdir()
    (d / "token").write_text("t\n")
    patterns: list[tuple[str, abi.SensClass]] = []

    def resolve_now(_p: object) -> list:  # type: ignore[type-arg]
        from bastion.sensors.sensitive import resolve
        return resolve(patterns)

    with scoped_cgroup() as (cg, cgid):
        sensor = kind(cgroup_id=cgid, open_dedup_s=0,
                      sensitive=[("/nonexistent-bastion", abi.SensClass.CUSTOM)],
                      resolve_sensitive=resolve_now)
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
