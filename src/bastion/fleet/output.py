"""The fleet output: alerts (and, when asked, events) into the on-disk queue that
:class:`~bastion.fleet.link.FleetLink` drains to JetStream.

``write`` runs in the output's worker thread (:class:`~bastion.outputs.base.OutputManager`)
and only appends to a local SQLite file, so neither the agent's loop nor the
worker ever waits for the broker.  Subjects: ``<prefix>.<host>.alerts.<severity>``
and ``<prefix>.<host>.events.<type>``; the message id of an alert is its id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

from bastion.fleet.config import FleetSpec
from bastion.fleet.link import FleetLink
from bastion.fleet.queue import DiskQueue
from bastion.outputs.base import Record


class FleetOutput:
    def __init__(self, spec: FleetSpec, queue: DiskQueue, link: FleetLink, *,
                 name: str = "fleet") -> None:
        self.name = name
        self.spec = spec
        self.queue = queue
        self.link = link

    def write(self, batch: Sequence[Record]) -> None:
        recs: list[tuple[str, str, bytes]] = []
        for kind, data in batch:
            payload = json.dumps(data, separators=(",", ":")).encode()
            if kind == "alert":
                if not self.spec.alerts:
                    continue
                subject = self.spec.subject("alerts", str(data.get("severity", "unknown")))
                msg_id = f"{self.spec.host}:{data.get('id') or hashlib.sha256(payload).hexdigest()}"
            else:
                subject = self.spec.subject("events", str(data.get("type", "unknown")))
                msg_id = f"{self.spec.host}:ev:{hashlib.sha256(payload).hexdigest()[:32]}"
            recs.append((msg_id, subject, payload))
        if recs:
            refused = self.queue.put_many(recs)
            self.link.wake()
            if refused:
                self.link.queue_full(refused)
                raise OverflowError(f"fleet queue full ({self.queue.max_records} records): "
                                    f"{refused} records not queued")

    def close(self) -> None:
        pass


__all__ = ["FleetOutput"]
