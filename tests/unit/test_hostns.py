"""The host's mount namespace: pid 1's, else kthreadd's, else the agent's own (logged)."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from bastion import hostns
from bastion.errors import KernelError

_real_stat = os.stat


def _refuse(*paths: str, exc: type[OSError] = PermissionError) -> Any:
    def stat(p: Any, *a: Any, **k: Any) -> os.stat_result:
        if str(p) in paths:
            raise exc(13, "refused", str(p))
        return _real_stat(p, *a, **k)
    return stat


def test_pid1_refused_falls_back_to_kthreadd(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    want = hostns.kthreadd_mnt_ns()
    assert want == _real_stat("/proc/2/ns/mnt").st_ino      # this host: pid 2 is kthreadd
    monkeypatch.setattr(hostns.os, "stat", _refuse("/proc/1/ns/mnt"))
    with caplog.at_level(logging.WARNING):
        assert hostns.host_mnt_ns("x.bpf.o") == want
    assert not caplog.records                                # no warning: the host was found


def test_neither_readable_is_the_agents_own_and_said(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(hostns.os, "stat", _refuse("/proc/1/ns/mnt", "/proc/2/ns/mnt"))
    with caplog.at_level(logging.WARNING):
        assert hostns.host_mnt_ns("x.bpf.o") == _real_stat("/proc/self/ns/mnt").st_ino
    assert any("x.bpf.o" in r.getMessage() and "own mount namespace" in r.getMessage()
               for r in caplog.records)


def test_pid2_not_kthreadd_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    fake = tmp_path / "stat"
    fake.write_bytes(b"2 (bash) S 1 2 2 0 -1 4194304 " + b"0 " * 13 + b"77 0\n")
    real_open = open

    def fake_open(p: Any, *a: Any, **k: Any) -> Any:
        return real_open(fake if str(p) == "/proc/2/stat" else p, *a, **k)
    monkeypatch.setattr("builtins.open", fake_open)
    assert hostns.kthreadd_mnt_ns() is None                  # a pid namespace's own pid 2


def test_procfs_missing_is_an_error_naming_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostns.os, "stat", _refuse("/proc/1/ns/mnt", exc=FileNotFoundError))
    with pytest.raises(KernelError) as e:
        hostns.host_mnt_ns("lsm_provgate.bpf.o")
    assert "lsm_provgate.bpf.o" in str(e.value) and "/proc/1/ns/mnt" in str(e.value)
