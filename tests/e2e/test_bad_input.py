"""Bad input gets one clear line naming the file or feature, a non-zero exit,
and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import BASTION  # type: ignore[import-not-found]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASTION, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_unknown_flag() -> None:
    r = _run("run", "--bogus")
    assert r.returncode == 2
    assert "No such option '--bogus'" in r.stderr


def test_malformed_policy_names_file_line_col(tmp_path: Path) -> None:
    pol = tmp_path / "bad.yaml"
    pol.write_text("version: 1\nevents:\n  classes: [exec, nope]\n  poll_interval: 3 fortnights\n")
    r = _run("run", "--policy", str(pol), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 1
    assert f"{pol}:3:" in r.stderr and "unknown event class 'nope'" in r.stderr
    assert f"{pol}:4:" in r.stderr and "not a duration" in r.stderr
    assert not (tmp_path / "d").exists()


def test_missing_policy_file(tmp_path: Path) -> None:
    r = _run("run", "--policy", str(tmp_path / "absent.yaml"))
    assert r.returncode == 1
    assert "absent.yaml" in r.stderr and "cannot read policy" in r.stderr


def test_missing_bpf_object_leaves_nothing_behind(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    before = set(Path("/sys/fs/bpf").iterdir())
    r = _run("run", "--data-dir", str(tmp_path / "d"), "--socket", str(tmp_path / "s.sock"),
             env={"BASTION_BPF_DIR": str(tmp_path / "nowhere")})
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"{tmp_path}/nowhere/" in r.stderr and ".bpf.o" in r.stderr and "make bpf" in r.stderr
    assert not (tmp_path / "s.sock").exists()
    assert set(Path("/sys/fs/bpf").iterdir()) == before


def test_corrupt_replay_line_names_file_and_line(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_text(
        '{"type":"exit","time":"2026-01-01T00:00:00Z","pid":5,"tid":5,"ppid":1,"uid":0,'
        '"euid":0,"gid":0,"cgroup_id":1,"comm":"x","exit_code":0}\n'
        '{"type": "exit", "time": \n')
    r = _run("run", "--replay", str(trace), "--quiet", "--data-dir", str(tmp_path / "d"),
             "--socket", str(tmp_path / "s.sock"))
    assert r.returncode == 1
    assert f"{trace}:2:" in r.stderr and "not JSON" in r.stderr


def test_status_without_agent(tmp_path: Path) -> None:
    r = _run("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1
    assert "no Bastion agent is running" in r.stderr and "none.sock" in r.stderr


def test_events_without_store(tmp_path: Path) -> None:
    r = _run("events", "--data-dir", str(tmp_path / "nostore"))
    assert r.returncode == 1
    assert "nostore" in r.stderr


def test_bad_since(tmp_path: Path) -> None:
    r = _run("events", "--data-dir", str(tmp_path), "--since", "last tuesday")
    assert r.returncode == 2
    assert "last tuesday" in r.stderr
