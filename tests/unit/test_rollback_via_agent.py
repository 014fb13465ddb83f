"""`bastion rollback` goes through the agent that keeps the data dir (s22): the shadow
index is in the protected data dir, where an administrator's own SQLite connection
write-opens the index and its -wal/-shm (refused and alerted as tampering on the lsm
tier); with protection on and no agent answering, it is refused here, untouched.
The in-scope run is tests/vm/test_admin_in_scope_lsm.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

import bastion.guard.control as gcontrol
from bastion.cli.behavior import rollback_cmd
from bastion.control import ControlServer, Peer
from bastion.errors import ControlError
from bastion.respond.shadow import RollbackReport, ShadowStore
from bastion.respond.shadow.rollback import shadow_handlers

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the control server serves root only")


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path, list[str]]]:
    data = tmp_path / "data"
    ShadowStore(data / "shadow").close()          # the agent's (empty) index
    checked: list[str] = []

    def check(pin_root: Path, roles: tuple[str, ...], sock: Path) -> Any:
        def verify(peer: Peer) -> None:
            checked.append(f"{sock.name}:{roles}:{peer.pid}")
        return verify

    monkeypatch.setattr(gcontrol, "server_check", check)
    calls: list[str] = []
    handlers = shadow_handlers(data / "shadow")
    real = handlers["shadow.rollback"]

    def counted(req: dict[str, Any]) -> dict[str, Any]:
        calls.append(str(req.get("incident")))
        return real(req)

    sock = tmp_path / "run" / "agent.sock"
    srv = ControlServer(sock, {"ping": lambda req: {"data_dir": str(data)},
                               "shadow.rollback": counted})
    srv.start()
    try:
        yield data, sock, calls
    finally:
        srv.stop()
    from bastion.guard.identity import ROLE_AGENT

    assert all(c.startswith(f"agent.sock:{(ROLE_AGENT,)}:") for c in checked), checked
    assert len(checked) == len(calls)


def test_the_listing_comes_from_the_agent_checked_first(agent: tuple[Path, Path, list[str]],
                                                        tmp_path: Path) -> None:
    data, sock, calls = agent
    r = CliRunner().invoke(rollback_cmd, ["--data-dir", str(data), "--socket", str(sock),
                                          "--pin-root", str(tmp_path / "pins")])
    assert r.exit_code == 0 and r.output.strip() == "no incidents", (r.output, r.exception)
    assert calls == ["None"]
    r = CliRunner().invoke(rollback_cmd, ["--data-dir", str(data), "--socket", str(sock),
                                          "--pin-root", str(tmp_path / "pins"), "--incident", "7",
                                          "--dry-run", "--json"])
    # the agent's own answer, as the local rollback would say it
    assert isinstance(r.exception, ControlError) and "no incident 7" in str(r.exception), r.output
    assert calls == ["None", "7"]


def test_protected_without_an_agent_is_refused_untouched(tmp_path: Path) -> None:
    data, pins = tmp_path / "data", tmp_path / "pins"
    (pins / "tamper" / "links").mkdir(parents=True)      # protection pinned
    r = CliRunner().invoke(rollback_cmd, ["--data-dir", str(data), "--socket",
                                          str(tmp_path / "none.sock"), "--pin-root", str(pins)])
    assert isinstance(r.exception, ControlError), (r.output, r.exception)
    assert "goes through the running agent" in str(r.exception)
    assert not (data / "shadow").exists()


def test_the_handler_takes_only_a_positive_incident(tmp_path: Path) -> None:
    ShadowStore(tmp_path / "shadow").close()
    h = shadow_handlers(tmp_path / "shadow")["shadow.rollback"]
    assert h({}) == {"incidents": []}
    for bad in ({"incident": 0}, {"incident": True}, {"incident": "1"},
                {"incident": 1, "dry_run": "yes"}):
        with pytest.raises(ValueError):
            h(bad)


def test_the_report_survives_the_socket() -> None:
    rep = RollbackReport(3, False, restored=["/a"], intact=["/b"], untouched=["/c"],
                         removed=["/d.enc"], kept=[("/e", "/e.bastion-kept-1")],
                         recreated=["/f"], failed=[("/g", "refused: x")])
    assert RollbackReport.from_json(rep.to_json()) == rep
