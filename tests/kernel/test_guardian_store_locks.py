"""The guardian's store survives its own file protection (compat tier).

SQLite's WAL index (``bastion.db-shm``) is shared memory guarded by POSIX
record locks, and POSIX locks belong to the *process*: closing any descriptor
of the file drops every lock the process holds on it.  The guardian's
fanotify listener is handed a descriptor for each open of a protected file,
the store's files included, and closes it after answering: any process that
opened the store (an administrator's ``bastion alerts``, the restarted agent)
silently stripped the guardian of its locks.  The next opener then found no
other user of the WAL index, truncated and rebuilt it under the guardian's
mapping, and the guardian died of SIGBUS (seen in CI: the guardian gone in the
middle of the tamper suites) or read a rebuilt index under its feet.

A TEST instance only (tests/support/tamper.py): the protected set is in tmp,
pins under a test pin root, the programs act only on the test cgroup and carry
a dead-man deadline; teardown kills what is left and removes pins.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import tamper as T  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[T.Instance]:
    with scoped_cgroup() as (cg, cgid):
        yield from T.instance(tmp_path, cg, cgid)


def _locks_of(pid: int, path: Path) -> list[str]:
    """The POSIX locks ``pid`` holds on ``path`` (from /proc/locks)."""
    st = os.stat(path)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        # "1: POSIX  ADVISORY  READ 1234 08:01:5678 128 128" (blocked waiters have "->")
        if len(f) >= 6 and f[1] == "POSIX" and "->" not in f and f[4] == str(pid) and f[5] == inode:
            out.append(line)
    return out


def _wait_locks(pid: int, path: Path, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while not (held := _locks_of(pid, path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


def test_opening_the_store_never_strips_the_guardian_of_its_locks(inst: T.Instance) -> None:
    inst.start_guardian(tier="compat")
    assert inst.guardian is not None
    inst.wait_alert("bastion.tamper.protection-on")
    shm = inst.data / "bastion.db-shm"
    gpid = inst.guardian.pid
    assert _wait_locks(gpid, shm), "the guardian holds no lock on its WAL index"
    # an administrator's read of the store (any process: the listener sees every open)
    fd = os.open(shm, os.O_RDONLY | os.O_CLOEXEC)
    os.close(fd)
    time.sleep(0.5)                       # the listener closes its descriptor after answering
    assert _locks_of(gpid, shm), "an open of the store dropped the guardian's WAL-index locks"
    # the consequence: the next user of the store, finding nobody else, rebuilds the index
    db = sqlite3.connect(f"file:{inst.data / 'bastion.db'}?mode=ro", uri=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchall()
        # and the guardian, writing its next alert, must live and store it
        before = len(inst.alerts())
        r = inst.attack(["sh", "-c", f"echo x >> {inst.etc / 'policy.yaml'}"])
        assert r.returncode != 0
        inst.wait_alert("bastion.tamper.open-write", after=before)
    finally:
        db.close()
    time.sleep(0.3)
    assert inst.guardian.poll() is None, inst.guardian_state()
