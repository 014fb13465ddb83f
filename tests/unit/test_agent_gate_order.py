"""The agent configures the provenance maps before it opens any gate that reads them.

s25 (VM CI): the lsm-tier agent opened the in-hook gate first (status then said the
provenance gate was on), then the socket and pipe gates, and only then the part that
writes the user-writable directories and interpreters into the provenance maps.  For
the seconds those loads took (a minute under TCG) a /tmp script had no untrusted
provenance: it read /etc/shadow through a gate reported on, and nothing it started was
ever tainted."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from bastion.agent import Agent, AgentParts
from bastion.config import parse_policy
from bastion.detect.engine import Engine
from bastion.enforce.provgate import AgentGate
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.store import Store

pytestmark = pytest.mark.unit


class _Maps:
    """The provenance maps as the gates see them: what was written, in order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def set_dirs(self, dirs: Any) -> int:
        self.log.append("maps.dirs")
        return len(tuple(dirs))

    def set_interpreters(self, interp: Any) -> int:
        self.log.append("maps.interpreters")
        return 1

    def errors(self) -> int:
        return 0

    def lost_errors(self) -> int:
        return 0


class _Sensor:
    name = "fake"
    attached: list[str] = []
    missing: list[str] = []

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def open(self) -> None:
        self.log.append("sensor.open")

    def poll(self, timeout_s: float) -> list[Any]:
        return []

    def ring_fill(self) -> float:
        return 0.0

    def stats(self) -> dict[str, int]:
        return {"events": 0, "drops": 0}

    def close(self) -> None:
        pass


class _Part:
    """A gate that reads the maps: notes when it opens."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log, self.gate, self.dry_run = name, log, None, False

    def open(self) -> None:
        self.log.append(f"{self.name}.open")

    def poll(self, timeout_s: float) -> list[Any]:
        return []

    def finding(self, ev: Any) -> None:
        return None

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        pass


class _FanotifyGate:
    """The fanotify gate AgentGate.open starts (no kernel here)."""

    over_budget: list[str] = []

    def __init__(self, prov: Any, **kw: Any) -> None:
        self.log: list[str] = prov.log
        self.prov = prov

    def stats(self) -> dict[str, int]:
        return {}

    def decisions(self) -> list[Any]:
        return []

    def start(self) -> None:
        self.log.append("provgate.open")

    def apply(self, objects: Any) -> list[str]:
        return []

    def close(self) -> None:
        pass


def test_the_provenance_maps_are_configured_before_any_gate_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bastion.enforce.provgate as pg

    monkeypatch.setattr(pg, "ProvenanceGate", _FanotifyGate)
    log: list[str] = []
    maps = _Maps(log)
    mirrored: list[object] = []
    provgate = AgentGate(lambda: maps, self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                         on_map=mirrored.append, objects=list)
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    stop = threading.Event()
    stop.set()
    parts = AgentParts(provgate=provgate)
    parts.lsmgate = _Part("lsmgate", log)       # type: ignore[assignment]
    parts.svcgate = _Part("svcgate", log)       # type: ignore[assignment]
    parts.pipegate = _Part("pipegate", log)     # type: ignore[assignment]
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[_Sensor(log)],
                  store=store, procs=procs, engine=Engine([]), dispatcher=Dispatcher(procs),
                  parts=parts)
    try:
        agent.run(stop)
    finally:
        store.close()
    first_gate = min(log.index(g) for g in ("lsmgate.open", "svcgate.open", "pipegate.open"))
    assert log.index("sensor.open") < log.index("maps.dirs") < first_gate, log
    assert log.index("maps.interpreters") < first_gate, log
    assert mirrored and mirrored[0] is maps   # the user-space reasons mirrored in from the start
    assert "provgate.open" in log


class _BrokenMaps(_Maps):
    def set_dirs(self, dirs: Any) -> int:
        from bastion.errors import KernelError

        raise KernelError("prov_dirs: update failed")


def test_maps_that_cannot_be_configured_are_alerted(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """s25 review: a failed configuration was only logged while the in-hook gates opened
    and said on, blind."""
    import bastion.enforce.provgate as pg

    monkeypatch.setattr(pg, "ProvenanceGate", _FanotifyGate)
    log: list[str] = []
    provgate = AgentGate(lambda: _BrokenMaps(log), self_tgid=1, deadline_s=None,  # type: ignore[arg-type,return-value]
                         objects=list)
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    stop = threading.Event()
    stop.set()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[_Sensor(log)],
                  store=store, procs=procs, engine=Engine([]), dispatcher=Dispatcher(procs),
                  parts=AgentParts(provgate=provgate))
    try:
        agent.run(stop)
        rules = [a.data["rule"] for a in store.alerts(limit=50)]
    finally:
        store.close()
    assert "bastion.provenance.maps" in rules, rules
