"""Trust for replayed recordings: the recording host's installed files.

A recording's exec events name each executable with its (device, inode) on the
host that recorded it; an :class:`ExeTrust` over this host's files would trust
none of them.  ``RecordedTrust`` learns, from the exec events it is shown, which
inode each system path had there (only paths under the trust directories: a
``/tmp/dpkg`` is never learnt), and answers as that host would."""

from __future__ import annotations

import os
import zlib

from bastion.detect.behavior.trust import TRUST_DIRS, ExeTrust, Ident
from bastion.events import Event, ExecEvent


class RecordedTrust(ExeTrust):
    def __init__(self) -> None:
        self.table: dict[str, Ident] = {}
        # the recording host's system devices: those of its files in the trust directories
        super().__init__(locate=self.table.get, system_devs=lambda: frozenset(
            d for p, (d, _) in self.table.items() if os.path.dirname(p) in TRUST_DIRS))

    def learn(self, ev: Event) -> None:
        if isinstance(ev, ExecEvent) and ev.proc.exe and \
                os.path.dirname(ev.proc.exe) in TRUST_DIRS:
            # the latest inode at that path (a recording may show an upgrade)
            self.table[ev.proc.exe] = (ev.exe_dev, ev.exe_ino)
            self._by_name.clear()
            self._at_path.clear()
            self._devs = None


def path_ino(path: str) -> int:
    """A recording's inode for the executable at ``path``: one per path, never shared by
    two paths (the fixtures' old ``1000 + len(path)`` gave /usr/bin/gzip and /usr/bin/dash
    one identity, so gzip was dash by inode once the shells' table was read after dash
    was seen)."""
    return 1000 + zlib.crc32(path.encode()) % 1_000_000_007
