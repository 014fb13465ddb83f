"""What a rewritten file holds now, for ``behavior.ransomware`` (s18-ransom, issue 15).

The rule judged each sampled file by the entropy of its first 4 KiB.  Encryptors that
leave the head alone (LockBit/BlackCat "intermittent": every Nth chunk, or all but a
header), a plaintext banner before the ciphertext, base64/hex-encoded ciphertext (6 or
4 bits/byte) and undecodable names pointing the probe at a decoy each kept a real
encryptor below "critical".  :func:`file_sample` reads, per file:

* **several windows** of ``WINDOW`` bytes: the head, the tail and ``WINDOWS - 2``
  stratified windows in between (one per equal stretch of the file, placed in it by a
  keyed hash of its inode and size: deterministic for a file, not predictable by the writer
  without the agent's random key); a file up to ``WINDOWS * WINDOW`` bytes is read
  whole.  At most ``WINDOWS * WINDOW`` (16 KiB) per file, and beyond the head window
  only while the shared :class:`ByteBudget` (bytes per second) allows: a file whose
  extra windows were refused and whose read part is not high is *unknown* (``limited``),
  never "plaintext";
* each window's **entropy** (bits/byte); a window that is base64 or hex text (>= 97 %
  of its non-newline bytes in the alphabet, no NUL, one base64 alphabet) is also judged
  on its **decoded** bytes; the file's score is the highest window's (stops at the first
  high one); a file over ``NOTE_MAX`` bytes needs ``HIGH_WINDOWS`` high windows (else
  its best non-high one), a known container format (ELF, PNG, JPEG, ZIP, PDF, MP4, gzip,
  xz, zstd) whose structure checks out (:func:`container_ok`) is judged on its head
  alone (else on its body, like any file), and a window wholly in a hole of a sparse
  file is skipped uncharged;
* a **digest** of a small file read whole (<= 16 KiB), so the rule can leave out files
  with the same small content repeated (ransom notes) rather than count them as
  plaintext.

Opening: the path is attacker-named and the agent is root.  The name is opened
``O_PATH | O_NOFOLLOW`` with ``openat2`` -- ``RESOLVE_IN_ROOT`` beneath the writer's
root when the rule passes ``/proc/PID/root/...`` (an absolute symlink the writer planted
resolves inside its root, not the agent's), ``RESOLVE_NO_MAGICLINKS`` always -- then
``fstat``: regular files only, on no pseudo filesystem (procfs, sysfs, debugfs, ...:
``fstatfs``), the inode the record named when it named one (else *other inode*: the file
the tree wrote is not there any more), and only then reopened for reading through
``/proc/self/fd/N`` (no device or FIFO is ever opened for reading; the reopened fd is
checked to be the same inode).  A name decoded by the sensor with ``backslashreplace``
(``\\xff`` for an invalid byte) is ambiguous with a literal backslash name: both are
tried and the higher score wins (a decoy under the other spelling cannot lower it); a
NUL or an empty name is never opened.  Nothing here raises on a name.
"""

from __future__ import annotations

import binascii
import collections
import ctypes
import hashlib
import math
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass, replace
from typing import Final

from bastion.errors import FeatureUnavailableError

RESOLVE_IN_ROOT: Final = 0x10
WINDOW: Final = 1024          # bytes per window
WINDOWS: Final = 16           # windows per file at most (16 KiB)
HIGH: Final = 7.2             # bits/byte: encrypted-looking (compressed data is too)
MIN_FILE: Final = 256         # smaller files are not judged
MIN_WINDOW: Final = 256       # a shorter tail window is not judged on its own
NOTE_MAX: Final = WINDOWS * WINDOW   # files up to this size get a digest (read whole)
ENCODED_SHARE: Final = 0.97   # of a window's non-newline bytes in the alphabet
PROBE_FLAGS: Final = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Filesystems that hold no one's data and whose "regular" files can have side effects
# or sizes of the address space when read (statfs f_type magics).
PSEUDO_FS: Final = frozenset({
    0x9FA0,        # proc
    0x62656572,    # sysfs
    0x64626720,    # debugfs
    0x74726163,    # tracefs
    0x73636673,    # securityfs
    0x27E0EB,      # cgroup
    0x63677270,    # cgroup2
    0xCAFE4A11,    # bpf
    0x62656570,    # configfs
    0xDE5E81E4,    # efivarfs
    0x6165676C,    # pstore
    0xF97CFF8C,    # selinuxfs
    0x43415D53,    # smackfs
    0x1CD1,        # devpts
    0x65735543,    # fusectl
    0x42494E4D,    # binfmt_misc
})

_HEX: Final = b"0123456789abcdefABCDEF"
_B64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="
_NOT_HEX: Final = bytes(b for b in range(256) if b not in _HEX)
_NOT_B64: Final = bytes(b for b in range(256) if b not in _B64)
_B64_STD: Final = bytes.maketrans(b"-_", b"+/")
# what backslashreplace writes for a byte that is not UTF-8: \x80-\xff only (a "\x2f" or
# "\x00" in a name is literal text: unescaped, it would name another path or cut it)
_ESCAPE = re.compile(rb"\\x([89a-f][0-9a-f])")
_ROOTED = re.compile(rb"/proc/([0-9]+)/root(/.*)?", re.S)
_KEY: Final = secrets.token_bytes(16)   # where the middle windows fall, per agent


@dataclass(frozen=True)
class ContentSample:
    """One file's probe.  ``score``: the highest window's bits/byte (decoded for a
    base64/hex window; beyond the head only windows that could reach ``HIGH`` are
    counted, so a low score is a lower bound, a high one exact), None when not judged: ``other_inode`` (the path holds another
    inode than the record named) or ``limited`` (extra windows refused by the byte
    budget and what was read is not high).  ``digest``: of the whole content, for a
    file up to ``NOTE_MAX`` bytes."""

    score: float | None
    encoded: str = ""          # "base64" / "hex": the highest window was decoded
    windows: int = 0
    bytes_read: int = 0
    digest: bytes | None = None
    other_inode: bool = False
    limited: bool = False
    # the inode's ctime (ns) when it was opened for the probe, 0: unknown -- compared with
    # the ctime the sensor read at the tree's write-open (ABI 3.0): the same ctime, the
    # file was not rewritten (s20 review 3; s21: ctimes with ctimes, never the wall clock)
    ctime_ns: int = 0


class ByteBudget:
    """A token bucket of bytes per second shared by the probe's threads."""

    def __init__(self, per_s: float = float(4 << 20), burst: float | None = None) -> None:
        self.per_s = per_s
        self.burst = per_s if burst is None else burst
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.refused = 0

    def take(self, n: int, force: bool = False) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
            self._at = now
            if self._tokens >= n:
                self._tokens -= n
                return True
            if force:
                # a forced head read runs no debt: a decoy tree's many heads must not
                # leave the budget empty for the files read after them (s18 review 1)
                self._tokens = max(0.0, self._tokens - n)
                return True
            self.refused += 1
            return False


def entropy(data: bytes) -> float:
    n = len(data)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in collections.Counter(data).values())


def decoded(window: bytes) -> tuple[bytes, str] | None:
    """The bytes a base64 or hex window encodes (at least 97 % of its non-newline bytes
    in the alphabet; the rest dropped), or None.  Misaligned decoding does not matter
    for entropy: shifted bits of random bytes are random bytes."""
    if b"\0" in window:
        return None   # text has no NUL; a symbol table (.dynstr: names and NULs) does
    text = window.translate(None, b"\r\n")
    n = len(text)
    if n < MIN_WINDOW:
        return None
    if len(text.translate(None, _HEX)) <= n * (1 - ENCODED_SHARE):
        digits = text.translate(None, _NOT_HEX)
        return bytes.fromhex(digits[:len(digits) // 2 * 2].decode("ascii")), "hex"
    if len(text.translate(None, _B64)) <= n * (1 - ENCODED_SHARE) and \
            not (_has(text, b"+/") and _has(text, b"-_")):
        # one alphabet only: "+/" (RFC 4648 base64) or "-_" (base64url), never both
        chars = text.translate(_B64_STD, _NOT_B64).replace(b"=", b"")
        try:
            return binascii.a2b_base64(chars[:len(chars) // 4 * 4]), "base64"
        except binascii.Error:
            return None
    return None


def _has(text: bytes, chars: bytes) -> bool:
    return any(c in text for c in chars)


_MAIL_START = re.compile(rb"(?i)(from |[a-z][a-z0-9-]{1,40}: )")
_MAIL_FIELD = re.compile(rb"(?im)^(mime-version|content-type|content-transfer-encoding|received|"
                         rb"return-path|delivered-to|message-id|dkim-signature):")


def is_mail(head: bytes) -> bool:
    """Does ``head`` start like a mail message (mbox ``From`` line or a header field,
    and one of the fields every delivered message has)?"""
    return bool(_MAIL_START.match(head)) and _MAIL_FIELD.search(head) is not None


# Container formats whose bodies are compressed or machine code (ELF: crypto tables,
# compressed debug sections): judged on their head window only when their structure
# checks out (container_ok); the magic alone before ciphertext is judged on the body.
CONTAINER_MAGIC: Final = (
    b"\x7fELF", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"PK\x03\x04", b"PK\x05\x06",
    b"%PDF-", b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")


def is_container(head: bytes) -> bool:
    """A known container format by its magic (ISO-BMFF/MP4: ``ftyp`` at offset 4)."""
    return head.startswith(CONTAINER_MAGIC) or head[4:8] == b"ftyp"


STRUCT_TAIL: Final = 1024      # bytes of the tail a container's structure check reads
STRUCT_BOXES: Final = 64       # ISO-BMFF top-level boxes walked at most
_BOX_TYPE: Final = re.compile(rb"[\x20-\x7e\xa9]{4}")


def container_ok(fd: int, head: bytes, size: int, budget: ByteBudget | None) -> bool | None:
    """Does a container-magic file's structure check out (s19 review 3)?  ``PK\x03\x04``
    + NULs + ciphertext kept an encryptor at "unknown" (medium, no kill).  Checked, each
    with the tail (``STRUCT_TAIL`` bytes) or a few header-sized reads: ZIP (an
    end-of-central-directory record ending the file and a central directory entry where
    it points), ELF (the section header table -- or, without one, the program headers --
    inside the file, section 0 null), PNG (``IEND`` near the tail), PDF (``%%EOF`` near
    the tail), xz (the ``YZ`` footer), gzip under 4 MiB (deflate, no reserved flag, an
    uncompressed size the file can hold), ISO-BMFF/MP4 (top-level box sizes summing to the
    file size).  JPEG and zstd have no such record: they pass (judged on the head, as
    before).  False: judge the file on its body windows like any other; None: the byte
    budget refused the reads (unknown, ``limited``).  A forged structure passes: it costs
    the writer a valid-looking record (see docs/ransomware.md)."""
    spent = 0

    def pread(n: int, off: int) -> bytes | None:
        nonlocal spent
        if off < 0 or n <= 0:
            return b""
        if budget is not None and not budget.take(n):
            return None
        spent += n
        return os.pread(fd, n, off)

    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        tail = pread(min(size, STRUCT_TAIL), size - min(size, STRUCT_TAIL))
        if tail is None:
            return None
        base = size - len(tail)
        pos = tail.rfind(b"PK\x05\x06")
        while pos >= 0:
            rec = tail[pos:pos + 22]
            if len(rec) == 22 and pos + 22 + int.from_bytes(rec[20:22], "little") == len(tail):
                break
            pos = tail.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            return False
        entries = int.from_bytes(rec[10:12], "little")
        cd_size = int.from_bytes(rec[12:16], "little")
        cd_off = int.from_bytes(rec[16:20], "little")
        if cd_off == 0xFFFFFFFF:    # zip64: its locator right before the record
            return tail[max(0, pos - 20):pos].startswith(b"PK\x06\x07")
        if cd_off + cd_size > base + pos:
            return False
        if not entries:
            return True
        got = pread(4, cd_off)
        return None if got is None else got == b"PK\x01\x02"
    if head.startswith(b"\x7fELF"):
        if len(head) < 64 or head[4] not in (1, 2) or head[5] not in (1, 2) or head[6] != 1:
            return False
        wide, little = head[4] == 2, head[5] == 1

        def field(off: int, n: int) -> int:
            return int.from_bytes(head[off:off + n], "little" if little else "big")

        if wide:
            phoff, shoff = field(0x20, 8), field(0x28, 8)
            phent, phnum, shent, shnum = field(0x36, 2), field(0x38, 2), field(0x3A, 2), field(0x3C, 2)
        else:
            phoff, shoff = field(0x1C, 4), field(0x20, 4)
            phent, phnum, shent, shnum = field(0x2A, 2), field(0x2C, 2), field(0x2E, 2), field(0x30, 2)
        if shoff:
            if shent != (64 if wide else 40) or shoff + max(shnum, 1) * shent > size:
                return False
            got = pread(8, shoff)    # section 0 is SHT_NULL: name and type 0
            return None if got is None else got == bytes(8)
        return phnum > 0 and phent == (56 if wide else 32) and phoff + phnum * phent <= size
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"%PDF-") or \
            head.startswith(b"\xfd7zXZ\x00"):
        tail = pread(min(size, STRUCT_TAIL), size - min(size, STRUCT_TAIL))
        if tail is None:
            return None
        if head.startswith(b"\x89PNG"):
            return b"IEND\xaeB`\x82" in tail
        if head.startswith(b"%PDF-"):
            return b"%%EOF" in tail
        return tail.rstrip(b"\0").endswith(b"YZ")
    if head.startswith(b"\x1f\x8b"):
        if len(head) < 4 or head[2] != 8 or head[3] & 0xE0:
            return False
        if size >= 4 << 20:
            return True      # any 32-bit uncompressed size mod 2^32 is possible
        got = pread(4, size - 4)
        if got is None:
            return None
        return int.from_bytes(got, "little") <= 1032 * size   # deflate's best ratio
    if head[4:8] == b"ftyp":
        off = 0
        for _ in range(STRUCT_BOXES):
            box = head[off:off + 16] if off + 16 <= len(head) else pread(16, off)
            if box is None:
                return None
            if len(box) < 8 or not _BOX_TYPE.fullmatch(box[4:8]):
                return False
            n = int.from_bytes(box[:4], "big")
            if n == 1:
                n = int.from_bytes(box[8:16], "big") if len(box) >= 16 else 0
            if n == 0:           # the last box (media data) runs to the end of the file
                return off > 0 and box[4:8] == b"mdat"
            if n < 8:
                return False
            off += n
            if off == size:
                return True
            if off > size:
                return False
        return True              # more boxes than walked (fragmented MP4): as before
    return True


HIGH_WINDOWS: Final = 2   # high windows a file over NOTE_MAX bytes needs to be high


DISTINCT_HIGH: Final = math.ceil(2 ** HIGH)   # fewer distinct bytes cannot reach HIGH


def window_score(window: bytes, decode: bool = True, exact: bool = True) -> tuple[float, str]:
    """A window's bits/byte (or its decoded bytes', if higher).  ``exact=False``: a
    window with fewer than ``DISTINCT_HIGH`` distinct bytes is not counted (0.0: it
    cannot be high; a set costs a third of the histogram), its decoding still is."""
    if exact or len(set(window)) >= DISTINCT_HIGH:
        raw = entropy(window)
    else:
        raw = 0.0
    if raw >= HIGH or not decode:
        return raw, ""
    got = decoded(window)
    if got is None or len(got[0]) < MIN_WINDOW // 2:
        return raw, ""
    dec = entropy(got[0])
    return (dec, got[1]) if dec > raw else (raw, "")


def plan(size: int, ino: int = 0, key: bytes = _KEY) -> list[tuple[int, int]]:
    """(offset, length) of the windows read from a file of ``size`` bytes: all of it
    (in windows) up to ``WINDOWS * WINDOW`` bytes, else the head, the tail and one
    window per equal stretch in between, placed by a keyed hash of (inode, size,
    stretch): files of one size get independent placements (same-size files encrypted
    in the same intermittent pattern are not all missed or all hit together)."""
    if size < MIN_FILE:
        return []
    if size <= WINDOWS * WINDOW:
        out = [(off, min(WINDOW, size - off)) for off in range(0, size, WINDOW)]
        if len(out) > 1 and out[-1][1] < MIN_WINDOW:
            out[-2] = (out[-2][0], out[-2][1] + out[-1][1])
            out.pop()
        return out
    inner = WINDOWS - 2
    span = size - 2 * WINDOW
    out = [(0, WINDOW)]
    for k in range(inner):
        lo = WINDOW + span * k // inner
        room = max(1, span * (k + 1) // inner - span * k // inner - WINDOW)
        h = hashlib.blake2b(b"%d:%d:%d" % (ino, size, k), key=key, digest_size=8).digest()
        out.append((lo + int.from_bytes(h, "little") % room, WINDOW))
    out.append((size - WINDOW, WINDOW))
    return out


def draw(nonce: int, path: str, ino: int, key: bytes = _KEY) -> bytes:
    """A file's place in a check's random sample: a keyed hash of (check, path, inode).
    The writer cannot tell which of its files a check reads (without the agent's key), and
    each check draws afresh: rewriting a few plaintext decoys last does not make them the
    sample (the newest files were: s19 review 2)."""
    return hashlib.blake2b(b"%d:%d:" % (nonce, ino) + path.encode("utf-8", "backslashreplace"),
                           key=key, digest_size=8).digest()


def names(path: str) -> list[bytes]:
    """The byte names ``path`` (as the sensor decoded it) may stand for: the text itself
    and, when it holds ``\\xNN`` escapes (backslashreplace), the raw bytes."""
    try:
        raw = os.fsencode(path)
    except (UnicodeError, ValueError):
        return []
    if not raw.startswith(b"/") or b"\0" in raw:
        return []
    out = [raw]
    if b"\\x" in raw:
        unescaped = _ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw)
        if unescaped != raw and b"\0" not in unescaped:
            out.append(unescaped)
    return out


class _Libc:
    def __init__(self) -> None:
        lib = ctypes.CDLL(None, use_errno=True)
        self.fstatfs = lib.fstatfs
        self.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self.fstatfs.restype = ctypes.c_int


_libc: _Libc | None = None


def fs_magic(fd: int) -> int | None:
    global _libc
    if _libc is None:
        _libc = _Libc()
    buf = ctypes.create_string_buffer(256)   # struct statfs is 120 bytes on 64-bit
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _open_path(name: bytes) -> int:
    """``name`` opened ``O_PATH | O_NOFOLLOW``: beneath the writer's root for
    ``/proc/PID/root/...`` (RESOLVE_IN_ROOT), no magic link followed."""
    # imported here: importing the configuration loads no bastion.kernel module
    from bastion.kernel.openat2 import AT_FDCWD, RESOLVE_NO_MAGICLINKS, openat2
    m = _ROOTED.fullmatch(name)
    flags = os.O_PATH | os.O_NOFOLLOW
    try:
        if m is None:
            return openat2(AT_FDCWD, os.fsdecode(name), flags, RESOLVE_NO_MAGICLINKS)
        root = os.open(b"/proc/%s/root" % m[1], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            rel = (m[2] or b"/").lstrip(b"/") or b"."
            return openat2(root, os.fsdecode(rel), flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
        finally:
            os.close(root)
    except FeatureUnavailableError:
        # no openat2 (kernel < 5.6): the last component is still never followed
        return os.open(name, flags | os.O_CLOEXEC)


def _fd_ino(fd: int) -> int | None:
    """The inode the kernel names for ``fd`` (fdinfo ``ino``: ``f_inode->i_ino``, what the
    sensor reports; an overlayfs file's ``st_ino`` can differ)."""
    try:
        with open(f"/proc/thread-self/fdinfo/{fd}", "rb") as fh:
            for line in fh:
                if line.startswith(b"ino:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sample_one(name: bytes, ino: int, budget: ByteBudget | None) -> ContentSample | None:
    try:
        pfd = _open_path(name)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if ino and st.st_ino != ino and _fd_ino(pfd) != ino:
            return ContentSample(None, other_inode=True)
        if fs_magic(pfd) in PSEUDO_FS:
            return None
        windows = plan(st.st_size, st.st_ino)
        if not windows:
            return None
        fd = os.open(f"/proc/self/fd/{pfd}", PROBE_FLAGS)
        try:
            again = os.fstat(fd)
            if not stat.S_ISREG(again.st_mode) or (again.st_dev, again.st_ino) != \
                    (st.st_dev, st.st_ino):
                return None
            got = _read(fd, windows, st.st_size, budget)
            if got is None:
                return None
            return replace(got, ctime_ns=st.st_ctime_ns)
        finally:
            os.close(fd)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _read(fd: int, windows: list[tuple[int, int]], size: int,
          budget: ByteBudget | None) -> ContentSample | None:
    best, enc, nread, done = 0.0, "", 0, 0
    low, low_enc, highs = 0.0, "", 0
    # over NOTE_MAX bytes one high window is not enough: a binary's constant table or
    # one compressed section is a window of "ciphertext" (s18 review 3)
    need = HIGH_WINDOWS if size > NOTE_MAX else 1
    parts: list[bytes] = []
    decode = True
    limited = False
    head_only = False
    sparse = False
    try:
        sparse = os.fstat(fd).st_blocks * 512 < size
    except OSError:
        pass
    for i, (off, length) in enumerate(windows):
        if sparse and i:
            # a hole reads as zeros, costs no I/O and holds no ciphertext: a window
            # wholly in one is skipped uncharged, and past the last data the file ends
            # (a decoy tree of sparse files drained the shared budget: s18 review 1)
            try:
                data_at = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break   # ENXIO: no data at or after off
            if data_at >= off + length:
                done += 1
                if size <= NOTE_MAX:
                    parts.append(bytes(length))
                continue
        if budget is not None and not budget.take(length, force=i == 0):
            limited = True
            break
        data = os.pread(fd, length, off)
        nread += len(data)
        done += 1
        if i == 0:
            # a mail message's base64 parts are its attachments, not ciphertext
            decode = not is_mail(data)
            head_only = is_container(data)
        if size <= NOTE_MAX:
            parts.append(data)
        if len(data) < MIN_WINDOW and i:
            continue
        if len(data) < MIN_WINDOW:
            return None
        h, kind = window_score(data, decode, exact=i == 0)
        if h >= HIGH:
            highs += 1
        elif h > low:
            low, low_enc = h, kind
        if h > best:
            best, enc = h, kind
        if highs >= need:
            break
        if head_only and h >= HIGH:
            need = 1    # a high head is high, container or not
            break
        if head_only:
            ok = container_ok(fd, data, size, budget)
            if ok is None:
                limited = True
                break
            if ok:
                need = 1    # judged on the head alone
                break
            # the magic without the structure: judged on its body like any file
            head_only = False
    if head_only and highs < need and not limited:
        # a container format whose head is not high: its body (compressed, machine code)
        # cannot tell ciphertext from payload, and anyone can write the magic first
        # (``\x7fELF`` + ciphertext was judged plaintext on its head: silent): unknown,
        # so a mass rewrite of such files is a medium, never dismissed as checked
        return ContentSample(None, windows=done, bytes_read=nread)
    if highs < need:
        best, enc = low, low_enc
    digest = hashlib.blake2b(b"".join(parts), digest_size=16).digest() \
        if size <= NOTE_MAX and done == len(windows) else None
    if limited and best < HIGH:
        return ContentSample(None, windows=done, bytes_read=nread, limited=True)
    return ContentSample(best, enc, done, nread, digest)


def file_sample(path: str, ino: int = 0, budget: ByteBudget | None = None) -> ContentSample | None:
    """The content probe of the file the rule names ``path`` (see the module doc);
    ``ino``: the inode the record named (0: none).  None: nothing readable there (gone,
    not a regular file, a pseudo filesystem, under ``MIN_FILE`` bytes, a NUL or
    relative name).  Never raises on a name."""
    got = [s for s in (_sample_one(n, ino, budget) for n in names(path)) if s is not None]
    judged = [s for s in got if s.score is not None]
    if judged:
        return max(judged, key=lambda s: s.score or 0.0)
    return got[0] if got else None
