"""The control socket's token proof (issue 13 items 10, 11): the token never travels,
a proof opens only its own nonce, server and command, the stored record is no
password equivalent, and clients refuse a server that is not Bastion's."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

import bastion.control as control
from bastion.control import ControlServer, Peer, request
from bastion.errors import ControlError
from bastion.guard.control import (PolicyApplyGuard, agent_stop_handler, apply_subject,
                                   server_check, token_prover)
from bastion.guard.identity import ROLE_GUARDIAN
from bastion.guard.token import (GLOBAL_BURST, SCRYPT_N, SCRYPT_P, SCRYPT_R, Attempts, TokenError,
                                 TokenStore, _derive, prove, server_binding)

TOKEN = b"correct horse battery staple 42"
WRONG = b"wrong horse battery staple 4242"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the control server serves root only")


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every line the server reads from its clients, byte for byte."""
    seen: list[bytes] = []
    real = control._read_line

    def rec(conn: socket.socket, deadline: float | None = None) -> bytes:
        data = real(conn, deadline)
        seen.append(data)
        return data

    monkeypatch.setattr(control, "_read_line", rec)
    return seen


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    s = TokenStore(tmp_path / "data")
    s.set_token(TOKEN)
    return s


def _serve(path: Path, handlers: dict[str, Any], store: TokenStore) -> Iterator[ControlServer]:
    srv = ControlServer(path, handlers, challenge=store.challenge)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_stop_proves_the_token_and_the_server_never_receives_it(
        tmp_path: Path, store: TokenStore, captured: list[bytes]) -> None:
    alerts: list[tuple[str, str]] = []
    stopped: list[bool] = []
    handler = agent_stop_handler(store.data_dir, lambda: stopped.append(True),
                                 lambda rule, title, sev, ev: alerts.append((rule, sev)))
    sock = tmp_path / "run" / "agent.sock"
    for _ in _serve(sock, {"stop": handler}, store):
        bad = request(sock, "stop", prover=token_prover(WRONG, "stop"))
        assert bad["done"] is False and "wrong token" in bad["error"]
        assert alerts[-1] == ("bastion.tamper.bad-token", "critical") and not stopped
        store._save_attempts(Attempts(GLOBAL_BURST, {}))      # past the back-off
        good = request(sock, "stop", prover=token_prover(TOKEN, "stop"))
        assert good["done"] is True and stopped == [True]
        assert alerts[-1] == ("bastion.tamper.maintenance", "high")
    wire = b"".join(captured)
    assert b"auth.challenge" in wire and b'"sig"' in wire
    for secret in (TOKEN, WRONG):
        for form in (secret, base64.b64encode(secret), secret.hex().encode()):
            assert form not in wire, form
    # nor anything a reader of the wire could use in place of the token
    k = _derive(TOKEN, bytes.fromhex(json.loads(store.hash_path.read_bytes())["salt"]),
                SCRYPT_N, SCRYPT_R, SCRYPT_P)
    assert k.hex().encode() not in wire


def test_a_proof_opens_only_its_nonce_its_server_and_its_command(store: TokenStore) -> None:
    ch = {"nonce": os.urandom(32).hex(), **store.challenge()}
    nonce = bytes.fromhex(ch["nonce"])
    me = server_binding(os.getpid())
    proof = prove(TOKEN, ch, "stop", me)
    assert store.verify_proof(proof, nonce, "stop").ok
    assert store.verify_proof(proof, os.urandom(32), "stop").reason == "wrong token"   # replay
    store._save_attempts(Attempts(GLOBAL_BURST, {}))
    other = prove(TOKEN, ch, "stop", server_binding(os.getppid()))     # signed for another server
    assert store.verify_proof(other, nonce, "stop").reason == "wrong token"
    store._save_attempts(Attempts(GLOBAL_BURST, {}))
    assert not store.verify_proof(proof, nonce, "maintenance uninstall").ok  # another command
    assert store.verify_proof(None, nonce, "stop").reason == "no token given"
    v = store.verify_proof(prove(WRONG, ch, "stop", me), nonce, "stop")
    assert (v.ok, v.reason, v.failures) == (False, "wrong token", 1)
    assert store.verify_proof(proof, nonce, "stop").reason == "rate limited"


def test_a_weak_or_odd_challenge_is_refused_before_signing(store: TokenStore) -> None:
    ch = {"nonce": os.urandom(32).hex(), **store.challenge()}
    for kdf in ({"n": 2}, {"r": 1}, {"n": 1 << 24}, {"alg": "md5"}, {"salt": "00"}):
        weak = {**ch, "kdf": {**ch["kdf"], **kdf}}
        with pytest.raises(TokenError, match="weak or odd"):
            prove(TOKEN, weak, "stop", "1:1")
    with pytest.raises(TokenError, match="malformed"):
        prove(TOKEN, {"nonce": "zz"}, "stop", "1:1")


def test_the_record_holds_no_password_equivalent_and_old_records_are_upgraded(
        tmp_path: Path) -> None:
    s = TokenStore(tmp_path)
    s.set_token(TOKEN)
    rec = json.loads(s.hash_path.read_bytes())
    assert set(rec) == {"v", "kdf", "n", "r", "p", "salt", "pub"}
    salt = os.urandom(16)
    old = {"kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
           "hash": _derive(TOKEN, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()}
    s.hash_path.write_text(json.dumps(old))
    assert s.challenge() == {}
    assert "predates challenge-response" in s.verify_proof({}, b"x" * 32, "stop").reason
    assert s.verify(TOKEN).ok
    assert "hash" not in json.loads(s.hash_path.read_bytes()) and s.challenge()["kdf"]


def test_the_server_sets_nonce_and_peer_a_client_cannot(tmp_path: Path, store: TokenStore) -> None:
    seen: list[dict[str, Any]] = []
    sock = tmp_path / "s.sock"
    for _ in _serve(sock, {"echo": lambda req: seen.append(req) or {}}, store):
        request(sock, "echo", _nonce="00" * 32, _peer_pid=1)
    assert seen[0][control.PEER_KEY] == os.getpid() and control.NONCE_KEY not in seen[0]


def test_clients_refuse_a_server_that_is_not_bastion(tmp_path: Path) -> None:
    check = server_check(tmp_path / "no-pins", (ROLE_GUARDIAN,), tmp_path / "g.sock")
    with pytest.raises(ControlError, match="runs as uid 1000, not root.*nothing was sent"):
        check(Peer(os.getpid(), 1000, 1000))
    with pytest.raises(ControlError, match="command line is not `bastion guardian`"):
        check(Peer(os.getpid(), 0, 0))      # this pytest: our interpreter, not Bastion


def test_the_socket_directory_must_be_ours(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "run").symlink_to(real)
    srv = ControlServer(tmp_path / "run" / "x.sock", {})
    with pytest.raises(ControlError, match="not a directory of ours"):
        srv.start()


def test_policy_applied_alerts_say_how_the_policy_changed(tmp_path: Path) -> None:
    got: list[tuple[str, str, dict[str, Any]]] = []
    g = PolicyApplyGuard(tmp_path, None, lambda rule, title, sev, ev: got.append((rule, sev, ev)))

    def pol(mode: str, rules: list[str], text: str, default: str = "allow") -> dict[str, Any]:
        return {"mode": mode, "default": default, "rules": [{"name": r} for r in rules],
                "text": text, "generation": 1}

    g.applied(None, pol("enforce", ["a", "b"], "t1"), {})
    g.applied(pol("enforce", ["a", "b"], "t1"), pol("enforce", ["a", "b", "c"], "t2"), {})
    g.applied(pol("enforce", ["a", "b"], "t1"), pol("learn", ["a", "b"], "t1"), {})
    g.applied(pol("enforce", ["a", "b"], "t1"), pol("enforce", ["a"], "t3"), {})
    g.applied(pol("enforce", ["a"], "t1", "deny"), pol("enforce", ["a"], "t4", "allow"), {})
    assert [(r, s) for r, s, _ in got] == [("bastion.policy.applied", "high")] * 2 + \
        [("bastion.policy.applied", "critical")] * 3
    ev = got[2][2]
    assert (ev["old_mode"], ev["new_mode"]) == ("enforce", "learn")
    assert ev["old_sha256"] == hashlib.sha256(b"t1").hexdigest()
    assert got[3][2]["rules_removed"] == ["b"]
    # an unprotected agent lets an apply without the token through; a given proof is checked
    assert g.check({"text": "x"}, None) is None
    assert apply_subject("x", None, False, False) != apply_subject("x", "learn", False, False)


def test_the_run_directory_is_made_private_and_protected(tmp_path: Path) -> None:
    from bastion.errors import ConfigError
    from bastion.guard import protect

    run = tmp_path / "run" / "bastion"
    paths = protect.default_paths(data_dir=tmp_path / "data", install_tree=False, run_dir=run)
    assert run in paths
    st = run.stat()
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
    assert protect.RUN_DIR == Path("/run/bastion")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "data")
    with pytest.raises(ConfigError, match="not ours"):
        protect.default_paths(data_dir=tmp_path / "data", install_tree=False, run_dir=link)


def test_a_failing_command_is_an_error_reply_and_the_server_answers_the_next(
        tmp_path: Path, store: TokenStore) -> None:
    """s21 (seen in a VM run): ``status`` during the agent's start-up raised
    ``KernelError("shadow keeper is not open")``; only OSError/ValueError were caught, so
    the exception ended the control thread and the agent never answered again (the
    guardian's and the tests' waits ran out).  Now an error reply names it and the server
    goes on -- a bug in any handler included."""
    from bastion.errors import KernelError, Location
    calls: list[str] = []

    def status(req: dict[str, Any]) -> dict[str, Any]:
        calls.append("status")
        if len(calls) == 1:
            raise KernelError("shadow keeper is not open", location=Location("shadow"))
        return {"state": "running"}

    def buggy(req: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a handler's bug")

    sock = tmp_path / "run" / "agent.sock"
    for srv in _serve(sock, {"status": status, "buggy": buggy}, store):
        with pytest.raises(ControlError, match="shadow keeper is not open"):
            request(sock, "status")         # an error reply naming it
        with pytest.raises(ControlError):
            request(sock, "buggy")          # no reply: the connection is closed
        assert request(sock, "status") == {"ok": True, "state": "running"}
        assert srv._thread is not None and srv._thread.is_alive()

