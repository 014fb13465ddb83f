"""The per-release integrity baseline: ``baseline.ensure`` and scans without a baseline.

No kernel: the checks are fakes, the kernel release is passed in.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pytest

from bastion.errors import BastionError, ConfigError
from bastion.integrity import baseline as bl
from bastion.integrity.base import Check, IntegrityFinding, KernelView
from bastion.integrity.bpfinfo import Inventory, ProgRecord
from bastion.integrity.bpfprogs import BpfInventoryCheck
from bastion.integrity.scanner import PeriodicScanner, run_scan


class _Fake(Check):
    requires = ()

    def __init__(self, name: str, *, needs: bool = True, state: int = 1, fail_baseline: bool = False,
                 found: int = 0) -> None:
        super().__init__(KernelView())
        self.name = name  # type: ignore[misc]
        self.needs_baseline = needs  # type: ignore[misc]
        self.state, self.fail_baseline, self.found = state, fail_baseline, found
        self.scanned_with: list[Mapping[str, Any] | None] = []

    def available(self) -> str | None:
        return None

    def baseline(self) -> dict[str, Any]:
        if self.fail_baseline:
            raise BastionError("cannot read kernel text")
        return {"state": self.state}

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        self.scanned_with.append(baseline)
        self.notes = ["half judged"] if baseline is None else []
        return [self.finding("fake.x", "t", "high", {})] * self.found


class _Maker:
    """``make_checks`` that counts its calls and the closes."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)
        self.made = self.closed = 0

    def __call__(self) -> tuple[Sequence[Check], Callable[[], None]]:
        self.made += 1
        return self.checks, self._close

    def _close(self) -> None:
        self.closed += 1


def _checks(state: int = 1) -> list[Check]:
    return [_Fake("kernel_text", state=state), _Fake("hidden_tasks", needs=False, state=state)]


def test_first_start_takes_a_baseline_in_the_data_dir(tmp_path: Path) -> None:
    make = _Maker(_checks())
    out = bl.ensure(tmp_path, make, release="6.18.44-fc-v1147")
    path = tmp_path / "integrity" / "6.18.44-fc-v1147.json"
    assert out.kind == "first-start" and out.taken and out.path == path
    assert make.made == 1 and make.closed == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["kernel"] == "6.18.44-fc-v1147"
    assert data["checks"] == {"kernel_text": {"state": 1}, "hidden_tasks": {"state": 1}}
    assert "first start" in out.describe() and str(path) in out.describe()
    assert out.to_json()["kind"] == "first-start" and out.previous is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temp file left


def test_same_release_uses_the_existing_baseline_without_taking_one(tmp_path: Path) -> None:
    bl.ensure(tmp_path, _Maker(_checks(state=1)), release="6.1.0-28-amd64")
    before = (tmp_path / "integrity" / "6.1.0-28-amd64.json").read_bytes()
    make = _Maker(_checks(state=2))
    out = bl.ensure(tmp_path, make, release="6.1.0-28-amd64")
    assert out.kind == "existing" and not out.taken
    assert make.made == 0
    assert out.baseline.checks["kernel_text"] == {"state": 1}
    assert (tmp_path / "integrity" / "6.1.0-28-amd64.json").read_bytes() == before


def test_new_release_takes_a_new_baseline_and_keeps_the_old_one(tmp_path: Path) -> None:
    bl.ensure(tmp_path, _Maker(_checks(state=1)), release="6.1.0-28-amd64")
    old = tmp_path / "integrity" / "6.1.0-28-amd64.json"
    old_bytes = old.read_bytes()
    out = bl.ensure(tmp_path, _Maker(_checks(state=2)), release="6.1.0-29-amd64")
    assert out.kind == "new-release" and out.taken
    assert out.previous == "6.1.0-28-amd64" and out.previous_path == old
    assert out.path == tmp_path / "integrity" / "6.1.0-29-amd64.json"
    assert out.baseline.checks["kernel_text"] == {"state": 2}
    assert old.read_bytes() == old_bytes                        # kept, not used
    said = out.describe()
    assert "new kernel release 6.1.0-29-amd64" in said and "previous 6.1.0-28-amd64" in said
    # and back on the old kernel: its own baseline is used again
    back = bl.ensure(tmp_path, _Maker(_checks(state=3)), release="6.1.0-28-amd64")
    assert back.kind == "existing" and back.baseline.checks["kernel_text"] == {"state": 1}


@pytest.mark.parametrize("content, says", [
    ("{not json", "baseline is not JSON"),
    ('{"format": 99, "checks": {}}', "not an integrity baseline"),
    ('{"format": 1, "checks": []}', "no 'checks' mapping"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
])
def test_corrupt_baseline_is_a_clear_error_naming_the_file(tmp_path: Path, content: str | bytes,
                                                           says: str) -> None:
    path = tmp_path / "integrity" / "6.18.0.json"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = path.read_bytes()
    make = _Maker(_checks())
    with pytest.raises(ConfigError) as exc:
        bl.ensure(tmp_path, make, release="6.18.0")
    assert str(path) in str(exc.value) and says in str(exc.value)
    assert make.made == 0
    assert path.read_bytes() == before                          # never overwritten (evidence)


def test_baseline_of_another_kernel_under_this_release_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "integrity" / "6.18.0.json"
    bl.save(bl.Baseline("5.10.0", "", 0.0, {"kernel_text": {}}), path)
    with pytest.raises(ConfigError, match="taken on kernel '5.10.0'") as exc:
        bl.ensure(tmp_path, _Maker(_checks()), release="6.18.0")
    assert str(path) in str(exc.value)


def test_explicit_path_is_used_instead_of_the_per_release_file(tmp_path: Path) -> None:
    mine = tmp_path / "elsewhere" / "base.json"
    out = bl.ensure(tmp_path / "data", _Maker(_checks()), release="6.18.0", path=mine)
    assert out.kind == "first-start" and mine.is_file()
    assert not (tmp_path / "data" / "integrity").exists()
    assert bl.ensure(tmp_path / "data", _Maker(_checks()), release="6.18.0", path=mine).kind == "existing"


def test_unwritable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match="cannot write the integrity baseline") as exc:
        bl.ensure(tmp_path / "data", _Maker(_checks()), release="6.18.0")
    assert str(tmp_path / "data" / "integrity" / "6.18.0.json") in str(exc.value)


def test_a_failing_check_does_not_cost_the_others_their_baseline(tmp_path: Path) -> None:
    checks: list[Check] = [_Fake("kernel_text", fail_baseline=True), _Fake("hidden_tasks")]
    out = bl.ensure(tmp_path, _Maker(checks), release="6.18.0")
    assert set(out.baseline.checks) == {"hidden_tasks"}
    assert "cannot read kernel text" in out.baseline.unavailable["kernel_text"]
    assert "unavailable here: kernel_text (its baseline failed: cannot read kernel text)" in out.describe()


@pytest.mark.parametrize("release", ["../../etc/passwd", "..", ".hidden", "6.1 x", "a/b", "ü-1", "x" * 400])
def test_release_string_is_made_a_safe_file_name(tmp_path: Path, release: str) -> None:
    name = bl.release_filename(release)
    assert "/" not in name and not name.startswith(".") and name.endswith(".json")
    assert len(name) < 200
    assert bl.release_path(tmp_path, release).parent == tmp_path / "integrity"


def test_release_file_names_are_plain_when_safe_and_distinct_when_changed() -> None:
    assert bl.release_filename("6.18.44-fc-v1147") == "6.18.44-fc-v1147.json"
    assert bl.release_filename("6.1.0-28-amd64+rt") == "6.1.0-28-amd64+rt.json"
    # two releases that sanitize alike still get two files
    assert bl.release_filename("6.1 a") != bl.release_filename("6.1/a")
    with pytest.raises(ConfigError):
        bl.release_filename("")


# ---- scanning without a baseline ----------------------------------------------------


def test_scan_without_baseline_runs_baseline_free_checks_and_names_the_others() -> None:
    text, tasks = _Fake("kernel_text"), _Fake("hidden_tasks", needs=False, found=1)
    report = run_scan([text, tasks], None)
    st = {r.name: r for r in report.results}
    assert st["kernel_text"].status == "no-baseline" and st["kernel_text"].reason == "needs a baseline"
    assert text.scanned_with == []                              # never run without one
    assert st["hidden_tasks"].status == "findings" and tasks.scanned_with == [None]
    assert st["hidden_tasks"].notes == ["half judged"] and not st["hidden_tasks"].baseline_used
    assert len(report.findings) == 1


def test_periodic_scanner_alerts_an_unusable_baseline_once_and_scans_without_it(tmp_path: Path) -> None:
    emitted: list[Any] = []
    tasks = _Fake("hidden_tasks", needs=False)
    bad = tmp_path / "b.json"
    bad.write_text("{")
    ps = PeriodicScanner(lambda: ([tasks], lambda: None), lambda: bl.load(bad), 10.0, emitted.append)
    assert ps.tick(100.0) is not None
    assert [f.rule for f in emitted] == ["bastion.integrity.baseline_unusable"]
    assert str(bad) in emitted[0].title and emitted[0].severity == "high"
    assert tasks.scanned_with == [None]
    assert ps.tick(111.0) is not None and len(emitted) == 1     # same error: not repeated
    ps.load_baseline = lambda: None                              # no baseline at all: no alert
    assert ps.tick(122.0) is not None and len(emitted) == 1


def _prog(pid: int, name: str, helpers: Sequence[str] = (), attach: Sequence[str] = ()) -> ProgRecord:
    return ProgRecord(id=hash(name) & 0xFFFF, type="tracepoint", name=name, tag="00" * 8, load_time_ns=0,
                      uid=0, map_ids=[], helper_addrs=[], kfunc_calls=0, helpers=list(helpers),
                      attach=list(attach), holders=[{"pid": pid, "comm": "x", "start_ticks": 1}])


def test_bpf_inventory_without_baseline_judges_only_dangerous_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    other = os.getpid() + 1
    progs = [_prog(other, "rk_exit", ["bpf_probe_write_user"], ["syscalls/sys_exit_getdents64"]),
             _prog(other, "counter", [], ["sched/sched_switch"]),
             _prog(other, "allowed_sig", ["bpf_send_signal"], []),
             _prog(os.getpid(), "mine_sig", ["bpf_send_signal"], [])]
    check = BpfInventoryCheck(KernelView(), ["allowed_sig"])
    monkeypatch.setattr(check, "inventory", lambda: Inventory(progs, [], []))
    found = check.scan(None)
    assert [(f.evidence["name"], f.severity) for f in found] == [("rk_exit", "critical"), ("mine_sig", "high")]
    assert check.notes and "counter" in check.notes[0]
    # with a baseline the benign unknown program is judged too
    assert {f.evidence["name"] for f in check.scan({"programs": []})} == {"rk_exit", "counter", "mine_sig"}
    # the agent trusts what it holds itself
    agent = BpfInventoryCheck(KernelView(), ["allowed_sig"], trusted_pids=[os.getpid()])
    monkeypatch.setattr(agent, "inventory", lambda: Inventory(progs, [], []))
    assert [f.evidence["name"] for f in agent.scan(None)] == ["rk_exit"]


# ---- the agent's worker process -----------------------------------------------------------


def test_integrity_finding_round_trips_through_json() -> None:
    f = IntegrityFinding("bpf_inventory", "bpf.rogue_program", "t", "high", {"name": "x"}, "kill", 42)
    assert IntegrityFinding.from_json(json.loads(json.dumps(f.to_json()))) == f
    with pytest.raises(BastionError, match="unknown severity"):
        IntegrityFinding.from_json({**f.to_json(), "severity": "apocalyptic"})


def test_worker_scanner_emits_findings_and_an_unusable_baseline_once(tmp_path: Path) -> None:
    from bastion.integrity.scanner import to_finding
    from bastion.integrity.worker import WorkerScan, WorkerScanner

    rogue = to_finding(IntegrityFinding("bpf_inventory", "bpf.rogue_program", "rogue", "high", {}))
    results = [WorkerScan([rogue], "b.json: baseline is not JSON"), WorkerScan([], "b.json: baseline is not JSON"),
               WorkerScan([], None), WorkerScan([], "b.json: gone")]
    calls: list[tuple[Path, Path | None, tuple[int, ...]]] = []

    def scan(data_dir: Path, baseline: Path | None, *, allow_bpf: Sequence[str],
             trusted_pids: Sequence[int]) -> WorkerScan:
        calls.append((data_dir, baseline, tuple(trusted_pids)))
        return results[len(calls) - 1]

    emitted: list[Any] = []
    ws = WorkerScanner(tmp_path, tmp_path / "b.json", 60.0, emitted.append, trusted_pids=[7], scan=scan)
    assert ws.tick(100.0) is not None
    assert [f.rule for f in emitted] == ["bastion.integrity.baseline_unusable", "bastion.integrity.bpf.rogue_program"]
    assert "not JSON" in emitted[0].title and emitted[0].severity == "high"
    assert ws.tick(130.0) is None                                # not due yet
    assert ws.tick(161.0) is not None and len(emitted) == 2      # same error: said once
    assert ws.tick(222.0) is not None and len(emitted) == 2      # recovered
    assert ws.tick(283.0) is not None and emitted[-1].rule == "bastion.integrity.baseline_unusable"
    assert calls[0] == (tmp_path, tmp_path / "b.json", (7,))
    assert ws.status()["baseline_error"] == "b.json: gone" and ws.status()["last_findings"] == 0


def test_worker_scanner_says_which_checks_did_not_run(tmp_path: Path) -> None:
    from bastion.integrity.worker import WorkerScan, WorkerScanner

    degraded = {"checks": [{"name": "kernel_text", "status": "unavailable",
                            "reason": "unavailable here, because cannot load the BPF kernel reader"},
                           {"name": "kernel_state", "status": "ok", "reason": ""}]}
    results = [WorkerScan([], None, degraded), WorkerScan([], None, degraded),
               WorkerScan([], None, {"checks": [{"name": "kernel_text", "status": "ok"}]})]
    emitted: list[Any] = []
    ws = WorkerScanner(tmp_path, None, 10.0, emitted.append,
                       scan=lambda *a, **k: results.pop(0))
    ws.tick(0.0)
    ws.tick(11.0)
    ws.tick(22.0)
    assert [f.rule for f in emitted] == ["bastion.integrity.checks_not_run"]   # once, not per scan
    assert "kernel_text (unavailable: unavailable here, because cannot load" in emitted[0].title
    assert ws.status()["checks_not_run"] == {}


def test_a_failing_worker_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from bastion.integrity import worker

    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(BastionError, match=r"integrity worker \(scan\): failed \(exit 1\)"):
        worker.scan_in_worker(tmp_path, None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "missing-python"))
    with pytest.raises(BastionError, match=r"integrity worker \(ensure\): cannot start"):
        worker.ensure_in_worker(tmp_path)
