"""Control-socket pieces for the agent (wired by agent.py / cli/main.py).

* :func:`agent_stop_handler` — the agent's ``stop`` command when it runs
  without a guardian: the maintenance token is checked (scrypt hash,
  constant time, rate limit), a window is opened, both outcomes alerted,
  and on success ``on_stop`` is called (the agent removes tamper pins and
  sets its stop event).
* :func:`guardian_status` — what ``bastion status``/``doctor`` print as
  ``tamper protection: full|partial|off`` when a guardian runs.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Callable

from bastion.control import request
from bastion.errors import ControlError
from bastion.guard.token import MaintenanceWindow, TokenStore

AlertFn = Callable[[str, str, str, dict[str, Any]], None]
"""``alert(rule, title, severity, evidence)``"""


def agent_stop_handler(data_dir: Path, on_stop: Callable[[], None], alert: AlertFn,
                       window_s: float = 600.0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    tokens = TokenStore(data_dir)
    window = MaintenanceWindow(data_dir, window_s)

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        raw = req.get("token")
        try:
            token = base64.b64decode(raw, validate=True) if isinstance(raw, str) else b""
        except (ValueError, binascii.Error):
            token = b""
        v = tokens.verify(token)
        ev = {"what": "stop", "client_pid": req.get("client_pid", 0), "reason": v.reason,
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


def guardian_status(socket: Path) -> dict[str, Any]:
    """The guardian's status, or ``{"tamper_protection": "off"}`` when none answers."""
    try:
        return request(socket, "status", timeout=2.0)
    except ControlError:
        return {"tamper_protection": "off"}


__all__ = ["AlertFn", "agent_stop_handler", "guardian_status"]
