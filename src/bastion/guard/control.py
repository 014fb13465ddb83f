"""Control-socket pieces of tamper protection (wired by agent.py / cli/main.py / guardian).

Server side:

* :func:`agent_stop_handler` — the agent's ``stop`` command when it runs
  without a guardian: the maintenance token is proven by challenge-response
  (never sent), rate-limited, both outcomes alerted, and on success
  ``on_stop`` is called (the agent removes tamper pins and sets its stop event).
* :class:`PolicyApplyGuard` — ``policy.apply`` once protection is on needs
  the token; every apply raises ``bastion.policy.applied`` (critical when
  it weakens HIPS) with the old and new policy sha256 and modes.

Client side (issue 13 item 11):

* :func:`server_check` — SO_PEERCRED of the socket's peer, checked before
  anything is sent: uid 0, and when tamper protection is pinned, the exact
  identity (tgid + start time + exe inode) enrolled in the pinned
  ``tamper_idents`` for the expected role; without pins, at least our own
  interpreter running ``bastion guardian``/``run``.
* :func:`call_with_token` — one request proven with the token.
* :func:`guardian_status` — what ``bastion status``/``doctor`` print as
  ``tamper protection: full|partial|off`` when a guardian runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Final

from bastion.control import NONCE_KEY, PEER_KEY, Peer, PeerCheck, Prover, request
from bastion.errors import BastionError, ControlError, Location
from bastion.guard.identity import ROLE_AGENT, ROLE_GUARDIAN, ROLE_NAMES, Identity
from bastion.guard.token import (MaintenanceWindow, Signer, TokenError, TokenStore, server_binding,
                                 source_of)

AlertFn = Callable[[str, str, str, dict[str, Any]], None]
"""``alert(rule, title, severity, evidence)``"""

MODE_RANK: Final = {"none": 0, "learn": 1, "audit": 2, "enforce": 3}
_ROLE_WORDS: Final = {ROLE_GUARDIAN: ("guardian",), ROLE_AGENT: ("run",)}


# ---- client side -----------------------------------------------------------------------

def protection_pinned(pin_root: Path) -> bool:
    """Is tamper protection pinned under ``pin_root`` (whether or not a guardian runs)?"""
    return (pin_root / "tamper" / "links").is_dir()


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def agent_keeps(socket_path: Path, data_dir: Path) -> bool:
    """Does an agent answer on ``socket_path`` for ``data_dir`` (its ``ping`` names that
    data dir)?  What a CLI command asks before handing the agent work on a data dir that
    tamper protection may guard (the server is checked when the work is sent)."""
    try:
        ping = request(socket_path, "ping", timeout=5.0)
    except ControlError:
        return False
    return Path(str(ping.get("data_dir", ""))).resolve() == data_dir.resolve()


def server_check(pin_root: Path, roles: tuple[int, ...], sock: Path) -> PeerCheck:
    """A check of the server at ``sock`` for :func:`bastion.control.request`.

    With tamper protection pinned, the peer must be the live process enrolled in the
    pinned identities with one of ``roles`` (only the guardian and agent can write that
    map; the kernel protects it), so root binding its own server at the path is
    refused.  Without pins there is nothing enrolled to compare with: the peer must be
    root, run this interpreter, and have ``bastion`` and its role's command word in its
    command line (weaker: root can imitate that; the token is still never sent)."""
    names = "/".join(ROLE_NAMES[r] for r in roles)

    def refuse(why: str) -> ControlError:
        return ControlError(f"the process listening here is not the Bastion {names}: {why}; "
                            "nothing was sent (an impostor at the socket path?)",
                            location=Location(str(sock)))

    def check(peer: Peer) -> None:
        if peer.uid != 0:
            raise refuse(f"pid {peer.pid} runs as uid {peer.uid}, not root")
        if protection_pinned(pin_root):
            from bastion.guard.kernel import enrolled_identities

            try:
                enrolled = enrolled_identities(pin_root / "tamper")
            except BastionError as exc:
                raise refuse(f"the enrolled identities cannot be read ({exc})") from exc
            for ident in enrolled:
                if ident.tgid == peer.pid and ident.role in roles and ident.alive():
                    return
            raise refuse(f"pid {peer.pid} is not enrolled as the {names} in "
                         f"{pin_root / 'tamper'} (enrolled: "
                         f"{', '.join(f'{ROLE_NAMES.get(i.role, i.role)} {i.tgid}' for i in enrolled) or 'none'})")
        try:
            exe = os.readlink(f"/proc/{peer.pid}/exe")
            argv = Path(f"/proc/{peer.pid}/cmdline").read_bytes().split(b"\0")
        except OSError as exc:
            raise refuse(f"pid {peer.pid} cannot be inspected ({exc.strerror})") from exc
        if not _same_file(exe, sys.executable):
            raise refuse(f"pid {peer.pid} runs {exe}, not this Bastion's interpreter "
                         f"{os.path.realpath(sys.executable)}")
        words = {a.decode(errors="replace") for a in argv}
        is_bastion = any(w.endswith("/bastion") or w == "bastion" or w.startswith("bastion.cli")
                         for w in words)
        want = {w for r in roles for w in _ROLE_WORDS.get(r, ())}
        if not is_bastion or not (words & want):
            raise refuse(f"pid {peer.pid}'s command line is not `bastion {'|'.join(sorted(want))}`")

    return check


class _TokenProver:
    """Proves ``token`` for ``what``: the key derived once in :meth:`prepare`."""

    def __init__(self, token: bytes, what: str) -> None:
        self.signer = Signer(token)
        self.what = what

    def prepare(self, params: dict[str, Any]) -> None:
        if "kdf" not in params:
            raise TokenError("the server has no maintenance token to check against (none set, or "
                             "a record older than challenge-response: bastion set-token)",
                             location=Location("control socket"))
        self.signer.key_for(params["kdf"])

    def __call__(self, challenge: dict[str, Any], peer: Peer) -> dict[str, Any]:
        self.prepare(challenge)
        return {"proof": self.signer.prove(challenge, self.what, server_binding(peer.pid))}


def token_prover(token: bytes, what: str) -> Prover:
    """Sign ``what`` with ``token`` for the server that sent the challenge."""
    return _TokenProver(token, what)


def call_with_token(sock: Path, cmd: str, token: bytes, subject: str, *, pin_root: Path,
                    roles: tuple[int, ...], timeout: float = 60.0, **args: Any) -> dict[str, Any]:
    """One request to the guardian/agent at ``sock`` that proves the token for ``subject``
    (what the server will check the proof against): the server is checked first
    (:func:`server_check`), the token never travels."""
    return request(sock, cmd, timeout=timeout, verify_server=server_check(pin_root, roles, sock),
                   prover=token_prover(token, subject), **args)


def apply_subject(text: str, mode: str | None, force: bool, allow_degraded: bool) -> str:
    """What a token proof for ``policy.apply`` names: exactly this policy and these options."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"policy.apply {digest} mode={mode or ''} force={int(force)} degraded={int(allow_degraded)}"


def sigma_subject(cmd: str, args: dict[str, Any]) -> str:
    """What a token proof for ``sigma.update``/``sigma.rollback`` names: exactly this
    command with these arguments."""
    canon = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    return f"{cmd} {hashlib.sha256(canon.encode()).hexdigest()}"


def guardian_status(socket: Path) -> dict[str, Any]:
    """The guardian's status, or ``{"tamper_protection": "off"}`` when none answers."""
    try:
        return request(socket, "status", timeout=2.0)
    except ControlError:
        return {"tamper_protection": "off"}


# ---- server side -----------------------------------------------------------------------

def _nonce(req: dict[str, Any]) -> bytes | None:
    n = req.get(NONCE_KEY)
    return n if isinstance(n, bytes) else None


def agent_stop_handler(data_dir: Path, on_stop: Callable[[], None], alert: AlertFn,
                       window_s: float = 600.0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    tokens = TokenStore(data_dir)
    window = MaintenanceWindow(data_dir, window_s)

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        v = tokens.verify_proof(req.get("proof"), _nonce(req), "stop",
                                source=source_of(int(req.get(PEER_KEY, 0))))
        ev = {"what": "stop", "client_pid": req.get(PEER_KEY, 0), "reason": v.reason,
              "failures": v.failures}
        if not v.ok:
            alert("bastion.tamper.bad-token", f"maintenance token refused for stop: {v.reason}",
                  "critical", ev)
            return {"done": False, "error": f"maintenance token refused: {v.reason}"}
        until = window.open("stop")
        alert("bastion.tamper.maintenance", "maintenance window opened for stop (valid token)",
              "high", {**ev, "until": until})
        on_stop()
        return {"done": True}

    return handle


def _policy_fingerprint(summary: dict[str, Any] | None) -> dict[str, Any]:
    if summary is None:
        return {"sha256": "none", "mode": "none", "default": "none", "rules": []}
    return {"sha256": hashlib.sha256(str(summary.get("text", "")).encode()).hexdigest(),
            "mode": str(summary.get("mode")), "default": str(summary.get("default")),
            "rules": sorted(str(r.get("name")) for r in summary.get("rules", []))}


class TokenGate:
    """A command on the agent's socket that needs the token once protection is on
    (without protection, none: a proof given anyway is still checked)."""

    def __init__(self, data_dir: Path, pin_root: Path | None, alert: AlertFn) -> None:
        self.tokens = TokenStore(data_dir)
        self.pin_root = pin_root
        self.alert = alert

    def protected(self) -> bool:
        return self.pin_root is not None and protection_pinned(self.pin_root)

    def gate(self, req: dict[str, Any], what: str, cmd: str, label: str) -> str | None:
        """None when command ``cmd`` (``label`` to people; proven for ``what``) may go on,
        else why it is refused (alerted critical)."""
        on = self.protected()
        if not on and req.get("proof") is None:
            return None
        peer = int(req.get(PEER_KEY, 0))
        v = self.tokens.verify_proof(req.get("proof"), _nonce(req), what, source=source_of(peer))
        if v.ok:
            return None
        why = (f"tamper protection is on: {label} needs the maintenance token (--token-file F)"
               if v.reason == "no token given" else f"maintenance token refused: {v.reason}"
               + (f" (retry in {math.ceil(v.retry_after_s)}s)" if v.retry_after_s else ""))
        self.alert("bastion.tamper.bad-token", f"{label} refused: {why}", "critical",
                   {"what": cmd, "reason": v.reason, "failures": v.failures,
                    "protection": on, "client_pid": peer, "source": str(req.get("source", ""))})
        return why


class PolicyApplyGuard(TokenGate):
    """``policy.apply`` on the agent's socket: the token once protection is on, and an
    alert on every apply (issue 13 item 10)."""

    def check(self, req: dict[str, Any], mode: str | None) -> str | None:
        """None when the apply may go on, else why it is refused (alerted)."""
        text = req.get("text")
        what = apply_subject(text if isinstance(text, str) else "", mode,
                             bool(req.get("force")), bool(req.get("allow_degraded")))
        return self.gate(req, what, "policy.apply", "policy apply")

    def applied(self, old: dict[str, Any] | None, new: dict[str, Any], req: dict[str, Any]) -> None:
        """The chained alert of an apply: critical when it weakens HIPS."""
        o, n = _policy_fingerprint(old), _policy_fingerprint(new)
        removed = sorted(set(o["rules"]) - set(n["rules"]))
        weaker = MODE_RANK.get(n["mode"], 0) < MODE_RANK.get(o["mode"], 0)
        default_opened = o["default"] not in ("none", n["default"]) and n["default"] == "allow"
        severity = "critical" if weaker or removed or default_opened else "high"
        why = [w for w in (f"mode {o['mode']} -> {n['mode']}" if weaker else "",
                           f"{len(removed)} rules removed" if removed else "",
                           "default opened to allow" if default_opened else "") if w]
        self.alert("bastion.policy.applied",
                   f"HIPS policy replaced (generation {new.get('generation')}): mode "
                   f"{o['mode']} -> {n['mode']}, {len(o['rules'])} -> {len(n['rules'])} rules"
                   + (f"; WEAKER: {', '.join(why)}" if why else ""), severity,
                   {"old_sha256": o["sha256"], "new_sha256": n["sha256"], "old_mode": o["mode"],
                    "new_mode": n["mode"], "old_default": o["default"], "new_default": n["default"],
                    "rules_removed": removed, "generation": new.get("generation"),
                    "source": str(req.get("source", "")), "client_pid": req.get(PEER_KEY, 0),
                    "token": "proven" if req.get("proof") is not None else "none",
                    "protection": self.protected()})


__all__ = ["AlertFn", "PolicyApplyGuard", "TokenGate", "sigma_subject", "agent_stop_handler", "apply_subject", "call_with_token",
           "agent_keeps", "guardian_status", "protection_pinned", "server_check", "token_prover"]
