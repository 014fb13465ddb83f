"""A store used from a thread with a descriptor table of its own.

SQLite's WAL index (``bastion.db-shm``) is shared memory guarded by POSIX
record locks, and POSIX locks belong to a *descriptor table*: closing any
descriptor of a file drops every lock the table's owner holds on it.  A
process that also runs a fanotify permission listener over the store's files
(the guardian protects the data directory) is handed a descriptor for every
open of them and closes it after answering, and so silently loses its locks
whenever anyone opens the store.  The next opener then finds nobody else on
the WAL index, truncates and rebuilds it under the first process's mapping:
SIGBUS, or a wrong index read as a right one.

:class:`OwnedStore` runs every store call on one thread that first unshares
its descriptor table (``unshare(CLONE_FILES)``) and closes the copies it
inherited: the locks SQLite takes there belong to that table alone, and no
descriptor another thread closes can drop them.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from bastion.errors import KernelError, Location
from bastion.store.db import Store

CLONE_FILES = 0x400
T = TypeVar("T")
_Job = tuple[Callable[[Store], Any], "Future[Any]"]


def private_fd_table() -> None:
    """Give the calling thread a descriptor table of its own, holding only 0-2.

    The copies of the process's other descriptors are closed in the new table
    (they stay open in the process's): this thread must hold no pipe end or
    socket another thread means to close."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(CLONE_FILES)) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"unshare(CLONE_FILES) failed: {os.strerror(err)}", errno=err,
                          location=Location("unshare"))
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


class OwnedStore:
    """A :class:`Store` whose every call runs on its own thread and descriptor table."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path, **kwargs: Any) -> OwnedStore:
        """Start the thread and open the store there (``kwargs`` as :meth:`Store.open`);
        raises what the open raises."""
        own = cls()
        opened: Future[None] = Future()
        own._thread = threading.Thread(target=own._run, args=(Path(data_dir), kwargs, opened),
                                       name="bastion-store", daemon=True)
        own._thread.start()
        opened.result()
        return own

    def _run(self, data_dir: Path, kwargs: Mapping[str, Any], opened: Future[None]) -> None:
        try:
            private_fd_table()
            store = Store.open(data_dir, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the opener, who raises it
            opened.set_exception(exc)
            return
        opened.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(store))
                except BaseException as exc:  # noqa: BLE001 - raised in the caller
                    fut.set_exception(exc)
        finally:
            store.close()

    def call(self, fn: Callable[[Store], T]) -> T:
        """``fn(store)`` on the store's thread; its result, or what it raised."""
        if self._closed:
            raise RuntimeError("store closed")
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut.result()

    def add_alert(self, alert: Mapping[str, Any]) -> str:
        return self.call(lambda st: st.add_alert(alert))

    def close(self) -> None:
        """Close the store (on its thread) and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)


__all__ = ["OwnedStore", "private_fd_table"]
