"""The alert record: one typed shape for what the dispatcher (and the guardian) raise.

Its JSON form (:meth:`Alert.to_json`) is what the store chains, the outputs
ship and ``bastion alerts --json`` prints; its keys are stable.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from bastion.textsafe import clean


@dataclass
class AlertProcess:
    pid: int
    ppid: int = 0
    exe: str = ""
    cmdline: str = ""
    uid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "exe": self.exe, "cmdline": self.cmdline,
                "uid": self.uid}


@dataclass
class Alert:
    """An alert.  ``action`` is the outcome actually taken (``kill``, ``would-kill``,
    ``kill-skipped: ...``, ``denied``, ``alert``); ``meta`` holds rule-specific
    sections (``hips``, ``sigma``, ``shadow_incident``) merged into the JSON form."""

    time: str
    rule: str
    title: str
    severity: str
    action: str
    process: AlertProcess
    attack: list[str] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    enforced_by: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    killed: list[int] = field(default_factory=list)
    event: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    container: dict[str, Any] | None = None   # the actor's container (containers.Container JSON)
    # (pid, start_ns) of each process ``killed`` names, for the response hooks (a
    # ransomware incident links the copies of exactly these); not in the JSON form
    members: list[tuple[int, int]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"time": self.time, "id": self.id, "rule": self.rule,
                               "title": self.title, "severity": self.severity,
                               "attack": list(self.attack), "action": self.action,
                               "process": self.process.to_json()}
        if self.container is not None:
            out["container"] = self.container
        for k, v in self.meta.items():
            out.setdefault(k, v)
        if self.enforced_by:
            out["enforced_by"] = self.enforced_by
        if self.evidence:
            out["evidence"] = self.evidence
        if self.killed:
            out["killed"] = list(self.killed)
        if self.event is not None:
            out["event"] = self.event
        return out

    def feed_line(self) -> str:
        """One line of the live alert feed, safe for a terminal (:func:`clean`: the exe and
        the title name what an attacker chose; an escape or a newline in them reached the
        administrator's terminal raw before s24)."""
        p = self.process
        return clean(f"{self.time} {self.severity.upper():8} {self.rule} [{self.action}] "
                     f"pid={p.pid} {p.exe}: {self.title}")


__all__ = ["Alert", "AlertProcess"]
