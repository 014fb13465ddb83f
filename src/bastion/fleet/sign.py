"""Signed policies for fleet rollout (ed25519, pure: no network, no kernel).

An envelope is JSON ``{"payload": B64, "signature": B64, "key_id": HEX}``.  The
payload is the exact bytes signed: JSON ``{"format", "version", "issued",
"sha256", "policy"}``.  Agents verify the signature over those bytes with the
configured public key (``"bastion-fleet-policy/1\\0"`` prefixed: a signature
made for anything else does not verify), then check the format, that the
policy text hashes to ``sha256``, and (in :mod:`bastion.fleet.link`) that
``version`` is not older than the one already applied.

The private key never goes to the hosts: ``bastion fleet keygen`` writes it
(mode 0600) for the admin's workstation; hosts get the ``.pub`` file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.errors import BastionError, ConfigError, Location

FORMAT: Final = "bastion-fleet-policy/1"
_DOMAIN: Final = FORMAT.encode() + b"\0"
MAX_ENVELOPE: Final = 4 * 2**20


class FleetPolicyError(BastionError):
    """A policy envelope that must not be applied (the message says why)."""


@dataclass(frozen=True)
class SignedPolicy:
    text: str
    version: int
    sha256: str
    issued: str
    key_id: str


def policy_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def key_id(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(private_path: Path) -> Path:
    """A new key pair: ``private_path`` (PEM, 0600, created exclusively) and
    ``private_path + '.pub'``.  Returns the public key's path."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub_path = private_path.with_name(private_path.name + ".pub")
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{private_path} exists: not overwritten",
                          location=Location(str(private_path))) from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key: {exc.strerror}",
                          location=Location(str(path))) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM private key: {exc}", location=Location(str(path))) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the signing key is not an ed25519 key", location=Location(str(path)))
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the public key: {exc.strerror}",
                          location=Location(str(path))) from exc
    except ValueError as exc:
        raise ConfigError(f"not a PEM public key: {exc}", location=Location(str(path))) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("the public key is not an ed25519 key", location=Location(str(path)))
    return key


def sign_policy(text: str, version: int, key: Ed25519PrivateKey, *,
                issued: str | None = None) -> bytes:
    """The envelope for ``text`` at ``version`` (>= 1)."""
    if version < 1:
        raise ValueError("version must be at least 1")
    payload = json.dumps({"format": FORMAT, "version": version,
                          "issued": issued or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "sha256": policy_hash(text), "policy": text},
                         sort_keys=True, separators=(",", ":")).encode("utf-8")
    return json.dumps({"payload": base64.b64encode(payload).decode(),
                       "signature": base64.b64encode(key.sign(_DOMAIN + payload)).decode(),
                       "key_id": key_id(key.public_key())}, separators=(",", ":")).encode()


def verify_policy(envelope: bytes, pub: Ed25519PublicKey) -> SignedPolicy:
    """The signed policy in ``envelope``; raises FleetPolicyError naming what is wrong."""
    if len(envelope) > MAX_ENVELOPE:
        raise FleetPolicyError(f"envelope of {len(envelope)} bytes (at most {MAX_ENVELOPE})")
    try:
        env = json.loads(envelope)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FleetPolicyError(f"not a signed policy envelope (not JSON: {exc})") from exc
    if not isinstance(env, dict) or not isinstance(env.get("payload"), str):
        raise FleetPolicyError("not a signed policy envelope (no payload)")
    if not isinstance(env.get("signature"), str) or not env["signature"]:
        raise FleetPolicyError("unsigned policy (no signature)")
    try:
        payload = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(env["signature"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FleetPolicyError(f"malformed envelope (bad base64: {exc})") from exc
    try:
        pub.verify(sig, _DOMAIN + payload)
    except InvalidSignature as exc:
        raise FleetPolicyError(
            f"bad signature: not signed by the fleet key {key_id(pub)} (signed by "
            f"{str(env.get('key_id'))[:16]!r}, or altered after signing)") from exc
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise FleetPolicyError(f"signed payload is not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise FleetPolicyError(f"signed payload is not {FORMAT}")
    version, text = body.get("version"), body.get("policy")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FleetPolicyError("signed payload has no valid version")
    if not isinstance(text, str) or policy_hash(text) != body.get("sha256"):
        raise FleetPolicyError("signed payload's policy does not match its sha256")
    return SignedPolicy(text=text, version=version, sha256=str(body["sha256"]),
                        issued=str(body.get("issued", "")), key_id=key_id(pub))


__all__ = ["FORMAT", "FleetPolicyError", "SignedPolicy", "keygen", "load_private_key",
           "load_public_key", "policy_hash", "sign_policy", "verify_policy", "key_id"]
