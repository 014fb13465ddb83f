"""JSON lines to a file (rotated by size) or to stdout."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import IO, Sequence

from bastion.errors import BastionError, Location
from bastion.outputs.base import Record
from bastion.outputs.formats import Formatter, native


class OutputFileError(BastionError):
    """The output path does not hold a file this output may write."""


class JsonlOutput:
    """One JSON object per line.  ``path=None`` writes to stdout.

    With ``max_bytes`` the file is rotated before a write would take it past
    that size: ``f`` -> ``f.1`` -> ... -> ``f.<backups>`` (the oldest is
    deleted).  Files are created 0640.  Each batch is flushed when written.

    The file is opened without following a symlink and without blocking, and must be a
    regular file of ours (this process's euid) with one link: anything else planted at
    the path (s24: a symlink to root's ``.bashrc``, a FIFO, a user's own file, a hard
    link) fails the batch, named, and nothing is written.
    """

    def __init__(self, name: str, path: Path | None, *, fmt: Formatter = native,
                 max_bytes: int = 0, backups: int = 5) -> None:
        self.name = name
        self.path = path
        self.fmt = fmt
        self.max_bytes = max_bytes
        self.backups = max(0, backups)
        self._fh: IO[str] | None = None
        self._size = 0

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
                raise OutputFileError(
                    f"not a regular file of ours with one link (mode {st.st_mode:o}, uid "
                    f"{st.st_uid}, {st.st_nlink} links): something was planted at the output "
                    "path; nothing written", location=Location(str(self.path)))
        except BaseException:
            os.close(fd)
            raise
        fh = os.fdopen(fd, "a", encoding="utf-8")
        self._size = os.fstat(fd).st_size
        return fh

    def _rotate(self) -> None:
        assert self.path is not None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = self._open()

    def write(self, batch: Sequence[Record]) -> None:
        if self._fh is None:
            self._fh = self._open()
        text = "".join(json.dumps(self.fmt(kind, data), separators=(",", ":")) + "\n"
                       for kind, data in batch)
        if self.path is not None and self.max_bytes and self._size and \
                self._size + len(text) > self.max_bytes:
            self._rotate()
            assert self._fh is not None
        self._fh.write(text)
        self._fh.flush()
        self._size += len(text.encode("utf-8")) if not text.isascii() else len(text)

    def close(self) -> None:
        if self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()
        self._fh = None
