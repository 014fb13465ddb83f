"""Ransomware shield, recovery half: shadow copies before the first open, and rollback.

* :mod:`~bastion.respond.shadow.keeper` — :class:`ShadowKeeper`, a fanotify
  permission listener that copies a protected file before an untrusted
  process's first open (from the event fd, never the path);
* :mod:`~bastion.respond.shadow.store` — :class:`ShadowStore`, the bounded
  shadow directory (content-addressed blobs + SQLite index, incidents);
* :mod:`~bastion.respond.shadow.rollback` — :func:`rollback` of an incident.
"""

from __future__ import annotations

from bastion.respond.shadow.keeper import ShadowKeeper
from bastion.respond.shadow.rollback import RollbackReport, iter_rows, list_incidents, rollback
from bastion.respond.shadow.store import CopyOutcome, Opener, ShadowStore

__all__ = ["ShadowKeeper", "ShadowStore", "Opener", "RollbackReport", "rollback",
           "list_incidents", "iter_rows", "CopyOutcome"]
