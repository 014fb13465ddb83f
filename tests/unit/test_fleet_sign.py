"""Fleet policy signatures, the fleet config section and the on-disk queue (no broker)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.config import PolicyError, parse_policy
from bastion.fleet.queue import DiskQueue
from bastion.fleet.sign import (FleetPolicyError, keygen, load_private_key, load_public_key,
                                sign_policy, verify_policy)

POLICY = "version: 1\nmode: audit\n"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    pub = keygen(tmp_path / "fleet.key")
    assert (tmp_path / "fleet.key").stat().st_mode & 0o777 == 0o600
    return load_private_key(tmp_path / "fleet.key"), pub


def test_signed_policy_verifies_with_the_public_key(keys: tuple[Ed25519PrivateKey, Path]) -> None:
    sk, pub = keys
    sp = verify_policy(sign_policy(POLICY, 7, sk), load_public_key(pub))
    assert (sp.text, sp.version) == (POLICY, 7)


def _edit(env: bytes, change: dict[str, object]) -> bytes:
    e = json.loads(env)
    body = json.loads(base64.b64decode(e["payload"]))
    body.update(change)
    e["payload"] = base64.b64encode(json.dumps(body).encode()).decode()
    return json.dumps(e).encode()


def test_tampered_unsigned_and_foreign_policies_are_refused(keys: tuple[Ed25519PrivateKey, Path]) -> None:
    sk, pub_path = keys
    pub = load_public_key(pub_path)
    env = sign_policy(POLICY, 3, sk)
    with pytest.raises(FleetPolicyError, match="bad signature"):   # policy text changed
        verify_policy(_edit(env, {"policy": "version: 1\nmode: learn\n"}), pub)
    with pytest.raises(FleetPolicyError, match="bad signature"):   # version bumped by the attacker
        verify_policy(_edit(env, {"version": 99}), pub)
    e = json.loads(env)
    e["signature"] = ""
    with pytest.raises(FleetPolicyError, match="unsigned"):
        verify_policy(json.dumps(e).encode(), pub)
    with pytest.raises(FleetPolicyError, match="not a signed policy"):
        verify_policy(POLICY.encode(), pub)
    other = Ed25519PrivateKey.generate()    # a compromised host's own key
    with pytest.raises(FleetPolicyError, match="bad signature"):
        verify_policy(sign_policy(POLICY, 4, other), pub)


def test_a_signature_over_other_bytes_is_not_a_policy_signature(keys: tuple[Ed25519PrivateKey, Path]) -> None:
    sk, pub_path = keys
    payload = json.dumps({"format": "bastion-fleet-policy/1", "version": 1, "issued": "",
                          "sha256": "0", "policy": POLICY}).encode()
    env = json.dumps({"payload": base64.b64encode(payload).decode(),
                      "signature": base64.b64encode(sk.sign(payload)).decode()}).encode()
    with pytest.raises(FleetPolicyError, match="bad signature"):   # no domain prefix
        verify_policy(env, load_public_key(pub_path))


def _fleet_doc(tmp: Path, body: str) -> str:
    return "version: 1\nfleet:\n" + body


def test_fleet_section_parses(tmp_path: Path, keys: tuple[Ed25519PrivateKey, Path]) -> None:
    _, pub = keys
    creds = tmp_path / "h.creds"
    creds.write_text("x")
    cfg = parse_policy(_fleet_doc(tmp_path, f"  servers: [nats://10.0.0.1:4222]\n  host: web-01\n"
                                  f"  creds: {creds}\n  public_key: {pub}\n  heartbeat: 5s\n"), "p.yaml")
    assert cfg.fleet is not None
    assert cfg.fleet.conn.servers == ("nats://10.0.0.1:4222",) and cfg.fleet.conn.creds == creds
    assert cfg.fleet.subject("alerts", "high") == "bastion.web-01.alerts.high"
    assert cfg.fleet.heartbeat_s == 5.0 and cfg.fleet.public_key == pub


@pytest.mark.parametrize("body, line, message", [
    ("  servers: [http://x:1]\n", 3, "must be a nats:// or tls:// URL"),
    ("  servers: [nats://u:p@x:1]\n", 3, "not in the URL"),
    ("  servers: [nats://x]\n  host: a.b\n", 4, "one subject token"),
    ("  servers: [nats://x]\n  user: a\n", 4, "user and password go together"),
    ("  servers: [nats://x]\n  token: t\n  user: a\n  password: b\n", 5, "use one of"),
    ("  servers: [nats://x]\n  creds: /nonexistent/h.creds\n", 4, "does not exist"),
    ("  servers: [nats://x]\n  tls: {ca: /nonexistent/ca.pem}\n", 4, "does not exist"),
    ("  servers: [nats://x]\n  public_key: {PRIV}\n", 4, "not a PEM public key"),
    ("  servers: [nats://x]\n  queue: 5\n", 4, "fleet.queue"),
    ("  host: a\n", 3, "fleet needs 'servers'"),
    ("  servers: [nats://x]\n  colour: blue\n", 4, "unknown key 'colour' in fleet"),
])
def test_bad_fleet_config_names_file_and_line(tmp_path: Path, keys: tuple[Ed25519PrivateKey, Path],
                                               body: str, line: int, message: str) -> None:
    body = body.replace("{PRIV}", str(tmp_path / "fleet.key"))
    with pytest.raises(PolicyError) as ei:
        parse_policy(_fleet_doc(tmp_path, body), "/etc/bastion/p.yaml")
    text = str(ei.value)
    assert f"/etc/bastion/p.yaml:{line}:" in text and message in text, text


def test_disk_queue_is_bounded_and_survives_reopen(tmp_path: Path) -> None:
    q = DiskQueue(tmp_path / "q.db", max_records=100)
    assert q.put_many([(f"id{i}", "s", b"x") for i in range(120)]) == 20
    assert len(q) == 100 and q.refused == 20
    first = q.peek(10)
    q.delete([r[0] for r in first])
    q.close()
    assert (tmp_path / "q.db").stat().st_mode & 0o777 == 0o600
    q2 = DiskQueue(tmp_path / "q.db", max_records=100)
    assert len(q2) == 90 and q2.peek(1)[0][1] == "id10"   # oldest first, after restart
    q2.close()


def test_guardian_protects_the_files_the_fleet_section_names(tmp_path: Path,
                                                             keys: tuple[Ed25519PrivateKey, Path]) -> None:
    from bastion.fleet.config import referenced_files

    _, pub = keys
    creds = tmp_path / "h.creds"
    creds.write_text("x")
    pol = tmp_path / "p.yaml"
    pol.write_text(f"version: 1\nfleet:\n  servers: [nats://x]\n  creds: {creds}\n  public_key: {pub}\n")
    plain = tmp_path / "q.yaml"
    plain.write_text("version: 1\n")
    assert referenced_files([pol, plain]) == [pub, creds]
