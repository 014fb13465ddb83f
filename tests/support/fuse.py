"""A one-file FUSE filesystem an attacker controls, for tests (root only).

It serves ``/<name>`` (the bytes of ``source``, mode 0755) from a thread
that speaks the FUSE protocol on ``/dev/fuse``.  Attributes are never
cached (``attr_valid`` 0), so every ``stat`` of the file asks the server;
``stall_getattr`` holds those requests unanswered, as an attacker's daemon
would.  :meth:`FuseFile.close` answers every held request, detaches the
mount (the kernel ends the connection once its last user is gone, which
ends the server thread) and closes the device: nothing stays behind.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from pathlib import Path
from types import TracebackType

_IN = struct.Struct("<IIQQIIIHH")           # fuse_in_header (40 bytes)
_OUT = struct.Struct("<IiQ")                # fuse_out_header
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr (88 bytes)
_LOOKUP, _FORGET, _GETATTR, _OPEN, _READ, _RELEASE = 1, 2, 3, 14, 15, 18
_FLUSH, _INIT, _OPENDIR, _READDIR, _RELEASEDIR, _INTERRUPT, _DESTROY = 25, 26, 27, 28, 29, 36, 38
_BATCH_FORGET = 42
_MNT_DETACH = 2
_FILE_NODE = 2


def mount_fuse(mountpoint: Path, source: bytes) -> int:
    """Open /dev/fuse and mount a FUSE filesystem served through it at ``mountpoint``
    (``source`` names it in mountinfo); the device fd.  OSError when the mount fails (the
    device is closed)."""
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other"
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(source, os.fsencode(mountpoint), b"fuse", 0, opts.encode())
    if rc != 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"mount fuse: {os.strerror(err)}", str(mountpoint))
    return fd


class FuseFile:
    def __init__(self, mountpoint: Path, name: str, source: Path) -> None:
        self.mountpoint = mountpoint
        self.name = name
        self.data = source.read_bytes()
        self.path = mountpoint / name
        self.stall_getattr = threading.Event()
        self.held: list[tuple[int, int]] = []   # (unique, node) of GETATTRs held unanswered
        self._lock = threading.Lock()
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    def __enter__(self) -> FuseFile:
        self._fd = mount_fuse(self.mountpoint, b"bastion-test-fuse")
        self._thread = threading.Thread(target=self._serve, name="test-fuse", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._fd < 0:
            return
        self.stall_getattr.clear()
        with self._lock:
            held, self.held = self.held, []
        for unique, node in held:          # whoever waits on them goes on
            self._reply(unique, 0, struct.pack("<QII", 0, 0, 0) + self._attr(node))
        self._libc.umount2(os.fsencode(self.mountpoint), _MNT_DETACH)
        if self._thread is not None:
            self._thread.join(5.0)
        os.close(self._fd)
        self._fd = -1

    # ---- the protocol --------------------------------------------------------------------

    def _attr(self, node: int) -> bytes:
        if node == 1:
            return _ATTR.pack(1, 0, 0, 0, 0, 0, 0, 0, 0, 0o040755, 2, 0, 0, 0, 4096, 0)
        size = len(self.data)
        return _ATTR.pack(_FILE_NODE, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, 0o100755, 1,
                          0, 0, 0, 4096, 0)

    def _reply(self, unique: int, err: int = 0, body: bytes = b"") -> None:
        try:
            os.write(self._fd, _OUT.pack(_OUT.size + len(body), -err, unique) + body)
        except OSError:
            pass   # the request was interrupted or the connection aborted

    def _serve(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 1 << 20)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue
                return   # ENODEV: unmounted / aborted
            if len(buf) < _IN.size:
                continue
            _len, op, unique, node, _uid, _gid, _pid, _ext, _pad = _IN.unpack_from(buf)
            arg = buf[_IN.size:]
            if op == _INIT:
                major, minor, readahead, _flags = struct.unpack_from("<IIII", arg)
                out = struct.pack("<IIIIHHIIHHII", 7, min(minor, 31), readahead, 0, 16, 12,
                                  1 << 17, 1, 32, 0, 0, 0) + b"\0" * 24
                self._reply(unique, 0, out)
            elif op in (_FORGET, _BATCH_FORGET, _INTERRUPT):
                continue
            elif op == _LOOKUP:
                name = arg.split(b"\0", 1)[0].decode()
                if node == 1 and name == self.name:
                    self._reply(unique, 0, struct.pack("<QQQQII", _FILE_NODE, 1, 0, 0, 0, 0)
                                + self._attr(_FILE_NODE))
                else:
                    self._reply(unique, errno.ENOENT)
            elif op == _GETATTR:
                if node == _FILE_NODE and self.stall_getattr.is_set():
                    with self._lock:  # not answered: the asker waits until close()
                        self.held.append((unique, node))
                    continue
                self._reply(unique, 0, struct.pack("<QII", 0, 0, 0) + self._attr(node))
            elif op in (_OPEN, _OPENDIR):
                self._reply(unique, 0, struct.pack("<QII", 1, 0, 0))
            elif op == _READ:
                _fh, off, size = struct.unpack_from("<QQI", arg)
                self._reply(unique, 0, self.data[off:off + size])
            elif op == _READDIR:
                self._reply(unique, 0, b"")
            elif op in (_RELEASE, _RELEASEDIR, _FLUSH):
                self._reply(unique, 0)
            elif op == _DESTROY:
                self._reply(unique, 0)
                return
            else:
                self._reply(unique, errno.ENOSYS)


class SilentFuse:
    """A FUSE mount at ``mountpoint`` whose server never answers (not even INIT): every
    lookup, stat or open that reaches it blocks, as under an attacker's daemon.  Closing
    the device (:meth:`close`) aborts the connection: whoever waits gets ENOTCONN; the
    mount is then detached."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self._fd = -1
        self._libc = ctypes.CDLL(None, use_errno=True)

    def __enter__(self) -> SilentFuse:
        self._fd = mount_fuse(self.mountpoint, b"bastion-test-silent")
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._fd < 0:
            return
        os.close(self._fd)                 # the last device fd: the connection is aborted
        self._fd = -1
        self._libc.umount2(os.fsencode(self.mountpoint), _MNT_DETACH)
