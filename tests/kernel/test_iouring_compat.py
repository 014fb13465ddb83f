"""Issue 15.3 on the compat tier (s22-uring): io_uring requests never pass a syscall
tracepoint, so before this the tracepoint sensor saw none of them.  A raw io_uring
client (ctypes: io_uring_setup / io_uring_enter and the rings mmap'd, no library), run
in a scoped test cgroup, does through the ring alone:

* OPENAT O_RDONLY of ~/.ssh/id_rsa of the test's sensitive set (and reads it);
* OPENAT O_WRONLY|O_CREAT of a new file relative to a directory descriptor;
* RENAMEAT and UNLINKAT of it, both relative to that descriptor;
* CONNECT to a listener of this test on 127.0.0.1;
* OPENAT with IOSQE_ASYNC (forced into an io-wq worker thread) of another secret;
* OPENAT with IOSQE_CQE_SKIP_SUCCESS (no completion to read the descriptor from);
* OPENAT O_CREAT on a second ring with IORING_SETUP_SQPOLL (the kernel's SQ thread
  submits it).
* (s22 review H5) OPENAT secret, READ and CLOSE of its descriptor in one
  io_uring_enter (and a 4th OPENAT reusing the number);
* (s22 review H6) linked CLOSE N, OPENAT victim dir (gets N), RENAMEAT relative to N.

Each must arrive as the record the syscall path makes, attributed to the client process
(its tgid and its comm, not "iou-wrk-N" / "iou-sqp-N"), and the sensitive read must be
a credential-access finding.  All of them failed before (no record; seen by running this
file with the io_uring programs skipped, which is main's object).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bastion import abi
from bastion.assembly import event_sensor
from bastion.events import Event, ExecEvent, FileEvent, NetEvent
from support.cg import run_in, scoped_cgroup
from support.rules import behavior_findings  # noqa: E402

PY = sys.executable

RING_CLIENT = r'''
import ctypes, mmap, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
AT_FDCWD = -100
OPENAT, CONNECT, RENAMEAT, UNLINKAT = 18, 16, 35, 36
IOSQE_ASYNC, IOSQE_CQE_SKIP_SUCCESS = 1 << 4, 1 << 6
keep = []

class Ring:
    def __init__(self, setup_flags=0):
        p = ctypes.create_string_buffer(120)
        struct.pack_into("<I", p, 8, setup_flags)
        self.fd = libc.syscall(425, 8, p)                      # io_uring_setup
        if self.fd < 0:
            sys.exit("io_uring_setup: errno %d" % ctypes.get_errno())
        self.sqpoll = bool(setup_flags & 2)
        n_sq, n_cq = struct.unpack_from("<II", p, 0)
        self.sqo = struct.unpack_from("<7I", p, 40)   # head tail mask entries flags dropped array
        self.cqo = struct.unpack_from("<6I", p, 80)   # head tail mask entries overflow cqes
        self.sq = mmap.mmap(self.fd, self.sqo[6] + n_sq * 4, offset=0)
        self.sqes = mmap.mmap(self.fd, n_sq * 64, offset=0x10000000)
        self.cq = mmap.mmap(self.fd, self.cqo[5] + n_cq * 16, offset=0x8000000)

    def u32(self, m, off):
        return struct.unpack_from("<I", m, off)[0]

    def run(self, op, fd=0, addr=0, length=0, op_flags=0, addr2=0, sqe_flags=0, wait=True):
        tail = self.u32(self.sq, self.sqo[1])
        i = tail & self.u32(self.sq, self.sqo[2])
        self.sqes[i * 64:(i + 1) * 64] = struct.pack(
            "<BBHiQQIIQHHiQQ", op, sqe_flags, 0, fd, addr2, addr, length, op_flags, 7,
            0, 0, 0, 0, 0)
        struct.pack_into("<I", self.sq, self.sqo[6] + i * 4, i)
        struct.pack_into("<I", self.sq, self.sqo[1], tail + 1)
        enter_flags = (1 | 2) if self.sqpoll else 1           # GETEVENTS (| SQ_WAKEUP)
        n = libc.syscall(426, self.fd, 0 if self.sqpoll else 1, 1 if wait else 0,
                         enter_flags if wait else 0, None, 0)
        if n < 0:
            sys.exit("io_uring_enter: errno %d" % ctypes.get_errno())
        if not wait:
            return None
        head = self.u32(self.cq, self.cqo[0])
        if head == self.u32(self.cq, self.cqo[1]):
            sys.exit("no completion")
        off = self.cqo[5] + (head & self.u32(self.cq, self.cqo[2])) * 16
        _, res, _ = struct.unpack_from("<QiI", self.cq, off)
        struct.pack_into("<I", self.cq, self.cqo[0], head + 1)
        if res < 0:
            sys.exit("op %d: errno %d" % (op, -res))
        return res

    def batch(self, sqes):
        """Submit @sqes (run()'s arguments) with one io_uring_enter, reap every result."""
        tail = self.u32(self.sq, self.sqo[1])
        for k, (op, fd, addr, length, op_flags, addr2, *sqe_flags) in enumerate(sqes):
            i = (tail + k) & self.u32(self.sq, self.sqo[2])
            self.sqes[i * 64:(i + 1) * 64] = struct.pack(
                "<BBHiQQIIQHHiQQ", op, sum(sqe_flags), 0, fd, addr2, addr, length, op_flags, k,
                0, 0, 0, 0, 0)
            struct.pack_into("<I", self.sq, self.sqo[6] + i * 4, i)
        struct.pack_into("<I", self.sq, self.sqo[1], tail + len(sqes))
        if libc.syscall(426, self.fd, len(sqes), len(sqes), 1, None, 0) != len(sqes):
            sys.exit("io_uring_enter (batch): errno %d" % ctypes.get_errno())
        res = {}
        head = self.u32(self.cq, self.cqo[0])
        while head != self.u32(self.cq, self.cqo[1]):
            off = self.cqo[5] + (head & self.u32(self.cq, self.cqo[2])) * 16
            ud, r, _ = struct.unpack_from("<QiI", self.cq, off)
            res[ud] = r
            head += 1
        struct.pack_into("<I", self.cq, self.cqo[0], head)
        return [res[k] for k in range(len(sqes))]

def s(text):
    b = ctypes.create_string_buffer(text.encode())
    keep.append(b)
    return ctypes.addressof(b)

work, port = sys.argv[1], int(sys.argv[2])
d = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
r = Ring()
fd = r.run(OPENAT, AT_FDCWD, s(work + "/home/.ssh/id_rsa"), 0, os.O_RDONLY)
assert os.read(fd, 64).startswith(b"-----BEGIN")
fd = r.run(OPENAT, d, s("created"), 0o644, os.O_WRONLY | os.O_CREAT)
os.write(fd, b"ciphertext")
r.run(RENAMEAT, d, s("created"), d, 0, s("renamed"))   # len: the new dfd, addr2: new name
r.run(UNLINKAT, d, s("renamed"))
sk = socket.socket()
sa = ctypes.create_string_buffer(struct.pack("!HH4s8x", socket.AF_INET, port,
                                             socket.inet_aton("127.0.0.1")))
sa[0:2] = struct.pack("<H", socket.AF_INET)
r.run(CONNECT, sk.fileno(), ctypes.addressof(sa), 0, 0, 16)
fd = r.run(OPENAT, AT_FDCWD, s(work + "/secret/key"), 0, os.O_RDONLY, sqe_flags=IOSQE_ASYNC)
assert os.read(fd, 64) == b"s3cret\n"
# s22 review H5: OPENAT secret (fd N), READ N, CLOSE N in one batch: the OPENAT's
# completion is posted after the CLOSE ran (fd N empty); with a 4th OPENAT of a benign
# file, fd N holds that file then.  The names are relative to the tmpfs directory d: an
# open is issued inline (in this io_uring_enter) only when its walk needs no
# revalidation (LOOKUP_CACHED); a walk from / of the VM's 9p root is punted to io-wq
# (6.1), where READ N and CLOSE N would run first and fail: no attack.  The results
# below prove it happened: the OPENAT got N, READ N read the secret's bytes, CLOSE N
# closed it (and the benign OPENAT got N again).  No request of this ring is in flight
# meanwhile (one still running in io-wq could take N first).
READ, CLOSE = 22, 19
buf = ctypes.create_string_buffer(64)
for secret, benign in (("id_ed25519", None), ("id_ecdsa", "benign")):
    ctypes.memset(buf, 0, 64)
    n = os.open("/dev/null", os.O_RDONLY); os.close(n)        # the lowest free fd: N
    sqes = [(OPENAT, d, s("home/.ssh/" + secret), 0, os.O_RDONLY, 0),
            (READ, n, ctypes.addressof(buf), 64, 0, 0), (CLOSE, n, 0, 0, 0, 0)]
    if benign:
        sqes.append((OPENAT, d, s(benign), 0, os.O_RDONLY, 0))
    got = r.batch(sqes)
    want = [n, len(secret), 0] + ([n] if benign else [])
    assert got == want and buf.value == secret.encode(), (want, got, buf.value)
    if benign:
        os.close(n)
# s22 review H6: a directory descriptor N (the decoy) swapped between submission and
# execution: linked CLOSE N -> OPENAT victim (gets N) -> RENAMEAT(N, a, N, a.locked).
# At submission N is the decoy; the kernel renames in the victim.
IOSQE_IO_LINK = 1 << 2
n = os.open(work + "/decoy", os.O_RDONLY | os.O_DIRECTORY)
got = r.batch([(CLOSE, n, 0, 0, 0, 0, IOSQE_IO_LINK),
               (OPENAT, d, s("victim"), 0, os.O_RDONLY | os.O_DIRECTORY, 0, IOSQE_IO_LINK),
               (RENAMEAT, n, s("a"), n, 0, s("a.locked"))])
assert got == [0, n, 0], (n, got)
assert os.path.exists(work + "/victim/a.locked") and not os.path.exists(work + "/victim/a")
os.close(n)
# after the batches: an O_CREAT open goes to io-wq and takes its descriptor whenever it
# runs (the lowest free one, maybe the N predicted above)
r.run(OPENAT, d, s("skipped"), 0o644, os.O_WRONLY | os.O_CREAT,
      sqe_flags=IOSQE_CQE_SKIP_SUCCESS, wait=False)
q = Ring(2)                                                  # IORING_SETUP_SQPOLL
q.run(OPENAT, AT_FDCWD, s(work + "/sqpoll-created"), 0o600, os.O_WRONLY | os.O_CREAT)
for name in ("skipped", "sqpoll-created"):
    for _ in range(200):
        if os.path.exists(os.path.join(work, name)):
            break
        import time; time.sleep(0.01)
    else:
        sys.exit(name + " was not created")
sys.exit(7)
'''


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Event], Path, int, int,
                                                                   list[Any]]:
    work = tmp_path_factory.mktemp("ring")
    (work / "secret").mkdir()
    (work / "secret" / "key").write_text("s3cret\n")
    (work / "home" / ".ssh").mkdir(parents=True)
    (work / "home" / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    for name in ("id_ed25519", "id_ecdsa"):
        (work / "home" / ".ssh" / name).write_text(name)
    (work / "benign").write_text("benign")
    (work / "decoy").mkdir()
    (work / "victim").mkdir()
    (work / "victim" / "a").write_text("data")
    patterns = ((str(work / "secret" / "key"), abi.SensClass.CUSTOM),
                (str(work / "home" / ".ssh"), abi.SensClass.USER_KEYS))
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    port = lst.getsockname()[1]
    try:
        with scoped_cgroup() as (cg, cgid):
            sensor = event_sensor("tracepoints", cgroup_id=cgid, sensitive=patterns)
            sensor.open()
            try:
                proc = run_in(cg, [PY, "-c", RING_CLIENT, str(work), str(port)], timeout=60)
                assert proc.returncode == 7, proc.stderr
                events: list[Event] = []
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    events += sensor.poll(0.05) or []
                assert sensor.drops() == 0
            finally:
                sensor.close()
    finally:
        lst.close()
    execs = [e for e in events if isinstance(e, ExecEvent) and e.proc.exe == os.path.realpath(PY)]
    assert len(execs) == 1, execs
    return events, work, execs[0].proc.pid, port, behavior_findings(events)


def _file(events: list[Event], op: str, path: str) -> list[FileEvent]:
    return [e for e in events if isinstance(e, FileEvent) and e.op == op and e.path == path]


def _is_client(e: Event, pid: int) -> None:
    """The record names the client process, not a ring thread of it."""
    assert e.proc.pid == pid, e.proc
    assert e.proc.comm.startswith("python") and not e.proc.comm.startswith("iou-"), e.proc


def test_sensitive_read_through_the_ring(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, pid, _, findings = recorded
    key = work / "home" / ".ssh" / "id_rsa"
    reads = _file(events, "open", str(key))
    assert len(reads) == 1, reads
    st = key.stat()
    assert reads[0].sensitive == "user-keys"
    assert (reads[0].dev, reads[0].ino) == (abi.kernel_dev(st.st_dev), st.st_ino)
    _is_client(reads[0], pid)
    assert [f for f in findings if f.rule == "behavior.credential_access"
            and f.pid == pid and f.evidence.get("path") == str(key)], findings


def test_write_open_rename_unlink_through_the_ring(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, pid, _, _ = recorded
    made = _file(events, "open", str(work / "created"))
    assert len(made) == 1, made
    assert made[0].created is True and made[0].flags & os.O_CREAT and made[0].ino
    assert made[0].mode == 0o644
    _is_client(made[0], pid)
    ren = _file(events, "rename", str(work / "created"))
    assert len(ren) == 1 and ren[0].path2 == str(work / "renamed"), ren
    _is_client(ren[0], pid)
    gone = _file(events, "unlink", str(work / "renamed"))
    assert len(gone) == 1, gone
    _is_client(gone[0], pid)


def test_connect_through_the_ring(recorded) -> None:  # type: ignore[no-untyped-def]
    events, _, pid, port, _ = recorded
    conns = [e for e in events if isinstance(e, NetEvent) and e.op == "connect"
             and e.dport == port]
    assert len(conns) == 1, [e for e in events if isinstance(e, NetEvent)]
    assert (conns[0].family, conns[0].daddr, conns[0].protocol) == ("inet", "127.0.0.1", "tcp")
    _is_client(conns[0], pid)


def test_async_open_in_an_io_wq_worker(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, pid, _, findings = recorded
    reads = _file(events, "open", str(work / "secret" / "key"))
    assert len(reads) == 1 and reads[0].sensitive == "custom", reads
    _is_client(reads[0], pid)
    assert [f for f in findings if f.rule == "behavior.credential_access" and f.pid == pid
            and f.evidence.get("path") == str(work / "secret" / "key")]


def test_open_whose_completion_is_skipped(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, pid, _, _ = recorded
    opens = _file(events, "open", str(work / "skipped"))
    assert len(opens) == 1, opens
    assert opens[0].flags & os.O_CREAT and opens[0].ino == 0 and opens[0].created is None
    _is_client(opens[0], pid)


def test_sqpoll_open(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, pid, _, _ = recorded
    opens = _file(events, "open", str(work / "sqpoll-created"))
    assert len(opens) == 1 and opens[0].created is True, opens
    _is_client(opens[0], pid)


def test_batch_open_read_close_is_reported_by_name(recorded) -> None:  # type: ignore[no-untyped-def]
    """s22 review H5: OPENAT of a secret, READ and CLOSE of its (predicted) descriptor in
    one io_uring_enter: at the OPENAT's completion the descriptor is closed.  The open is
    reported by the name the kernel copied at submission (no inode, F_IOURING_NOFD).
    Failed before (no record of the secret at all)."""
    events, work, pid, _, _ = recorded
    opens = _file(events, "open", str(work / "home" / ".ssh" / "id_ed25519"))
    assert len(opens) == 1, opens
    assert opens[0].ino == 0 and opens[0].flags & os.O_ACCMODE == os.O_RDONLY
    _is_client(opens[0], pid)


def test_batch_close_and_reuse_does_not_name_the_benign_file(recorded) -> None:  # type: ignore[no-untyped-def]
    """The same with a fourth OPENAT of a benign file that gets the secret's descriptor
    number: the secret's open is still reported by its own name.  Failed before (only
    the descriptor was read: the benign file, outside the set, no record)."""
    events, work, pid, _, _ = recorded
    opens = _file(events, "open", str(work / "home" / ".ssh" / "id_ecdsa"))
    assert len(opens) == 1, opens
    assert opens[0].ino == 0
    _is_client(opens[0], pid)
    assert not _file(events, "open", str(work / "benign")), "a read of a benign file: no record"


def test_rename_against_a_dfd_swapped_before_execution(recorded) -> None:  # type: ignore[no-untyped-def]
    """s22 review H6: linked CLOSE N, OPENAT victim (gets N), RENAMEAT(N, a, N, a.locked):
    at submission N is the decoy directory, the kernel renames in the victim.  The
    rename is reported again at its completion, its names resolved against N as it is
    then (the submission's record of the decoy stays).  Failed before (only
    decoy/a -> decoy/a.locked)."""
    events, work, pid, _, _ = recorded
    ren = _file(events, "rename", str(work / "victim" / "a"))
    assert len(ren) == 1 and ren[0].path2 == str(work / "victim" / "a.locked"), (
        ren, [e for e in events if isinstance(e, FileEvent) and e.op == "rename"])
    _is_client(ren[0], pid)
