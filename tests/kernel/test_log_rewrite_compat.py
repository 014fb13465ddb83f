"""Log rewrites past ``O_APPEND`` on the compat tier (s17-logacts, issue 15).

The fanotify gate allows an untrusted tree's ``O_APPEND`` open of a log; then the log
is rewritten in place with no open at all: ``fcntl(F_SETFL)`` clears ``O_APPEND`` and
``pwrite`` writes at offset 0, ``fallocate(PUNCH_HOLE)`` zeroes a range,
``pwritev2(RWF_NOAPPEND)`` writes at an offset, a shared writable ``mmap`` (or a shared
read-only one made writable with ``mprotect``) stores into it.  The compat sensor
reports each for an untrusted tree only (``rewrite`` records, ``prov_actor`` in BPF)
and ``behavior.log_clearing`` stops the tree (critical, kill-tree).  The act itself
completes (the record is read after it): the test asserts the kill, not the log.

Scope: the sensor is scoped to the test's cgroup; the provenance map's temp dir is the
test's ``drop``; the log is a file the test makes in /var/log (the rule's place) and
removes; the database look-alike lives in the test's own directory."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from bastion import abi
from bastion.abi import SensClass
from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, RuleContext
from bastion.events import Event, FileEvent
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.sensors.bpf import BpfSensor
from bastion.sensors.provenance import default_interpreters
from support.cg import scoped_cgroup

# each act: Python run by the dropped script; ``L`` is the log's path, ``libc`` ctypes
PRELUDE = ("import ctypes, mmap, os, time; libc = ctypes.CDLL(None, use_errno=True); "
           "libc.mmap.restype = ctypes.c_void_p; "
           "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, "
           "ctypes.c_int, ctypes.c_long]; "
           "libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]; "
           "libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]; "
           "fd = os.open(L, os.O_RDWR | os.O_APPEND)")
ACTS = {
    # F_SETFL without O_APPEND, then a write at offset 0
    "setfl": "import fcntl; fcntl.fcntl(fd, fcntl.F_SETFL, 0); os.pwrite(fd, b'XXXXXXXX', 0)",
    # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE over the evidence
    "fallocate": "assert libc.fallocate(fd, 3, 0, 4096) == 0, ctypes.get_errno()",
    # s17-fixlogacts 3: FALLOC_FL_WRITE_ZEROES (0x80, 6.17; may fail EOPNOTSUPP: the
    # record is at entry either way)
    "write_zeroes": "libc.fallocate(fd, 0x80, 0, 4096)",
    # RWF_NOAPPEND (0x20): the offset is honoured on an O_APPEND descriptor (6.9+)
    "pwritev2": "os.pwritev(fd, [b'XXXXXXXX'], 0, 0x20)",
    "mmap": "m = mmap.mmap(fd, 0); m[0:8] = b'XXXXXXXX'; m.flush()",
    # MAP_SHARED, PROT_READ, then PROT_READ|PROT_WRITE
    "mprotect": "a = libc.mmap(None, 4096, 1, 1, fd, 0); "
                "assert libc.mprotect(a, 4096, 3) == 0; ctypes.memmove(a, b'XXXXXXXX', 8)",
    # s17-fixlogacts 2a: pkey_mprotect (329) with pkey -1 is mprotect
    "pkey_mprotect": "a = libc.mmap(None, 4096, 1, 1, fd, 0); L_ = ctypes.c_long; "
                     "assert libc.syscall(329, L_(a), L_(4096), L_(3), L_(-1)) == 0; "
                     "ctypes.memmove(a, b'XXXXXXXX', 8)",
    # s17-fixlogacts 2b: one mprotect from an anonymous page into the log's shared one
    "mprotect_span": "a = libc.mmap(None, 8192, 1, 0x22, -1, 0); "
                     "assert libc.mmap(a + 4096, 4096, 1, 0x11, fd, 0) == a + 4096; "
                     "assert libc.mprotect(a, 8192, 3) == 0; "
                     "ctypes.memmove(a + 4096, b'XXXXXXXX', 8)",
}
EVIDENCE = b"evidence-line-1\nevidence-line-2\n"


@dataclass
class Rig:
    cg: Path
    root: Path
    history: Path
    sensor: BpfSensor
    procs: ProcessTable
    engine: Engine

    def run(self, script: str, tainted: bool) -> subprocess.Popen[bytes]:
        """``script`` (Python) run in the cgroup: from a script dropped in the temp dir
        (tainted: tmp-script) or by a plain ``sh -c`` (clean)."""
        py = f"{sys.executable} -c \"{script}\""
        if tainted:
            s = self.root / "drop" / f"s{time.monotonic_ns()}.sh"
            s.write_text(py + "\nsleep 20\n")   # the script outlives its act: the tree kill
            body = f"exec /bin/sh {s}"
        else:
            body = f"exec {py}"
        return subprocess.Popen(["/bin/sh", "-c", f"echo $$ > {self.cg}/cgroup.procs && {body}"],
                                stderr=subprocess.PIPE)

    def collect(self, until_s: float, stop_on_finding: bool) -> tuple[list[Event],
                                                                     list[dict[str, object]]]:
        """Events and dispatched log-clearing findings for ``until_s`` (or the first finding)."""
        disp, ctx = Dispatcher(self.procs), RuleContext(self.procs)
        events: list[Event] = []
        alerts: list[dict[str, object]] = []
        end = time.monotonic() + until_s
        while time.monotonic() < end and not (stop_on_finding and alerts):
            for ev in self.sensor.poll(0.01) or []:
                self.procs.update(ev)
                ev = self.procs.enrich(ev)
                events.append(ev)
                for f in self.engine.evaluate(ev, ctx):
                    if f.rule == "behavior.log_clearing":
                        alerts.append(disp.dispatch(f, time.time_ns()).to_json())
        return events, alerts


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    root = Path(tempfile.mkdtemp(prefix="blogacts-"))
    # the test's own history (the rule's place: /root/.*_history), the only entry of the
    # sensor's sensitive set (HISTORY class: the kernel knows it is a history)
    fd, hist = tempfile.mkstemp(prefix=".bastion-test-", suffix="_history", dir="/root")
    os.close(fd)
    try:
        (root / "drop").mkdir()
        with scoped_cgroup() as (cg, cgid):
            sensor = BpfSensor(cgroup_id=cgid, sensitive=((hist, SensClass.HISTORY),))
            sensor.open()
            try:
                prov = sensor.provenance()
                prov.set_dirs([str(root / "drop")])
                prov.set_interpreters(default_interpreters())
                yield Rig(cg, root, Path(hist), sensor, ProcessTable(), Engine(behavior_rules()))
            finally:
                sensor.close()
    finally:
        Path(hist).unlink(missing_ok=True)
        shutil.rmtree(root)


@pytest.fixture
def log_file() -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="bastion-test-", suffix=".log", dir="/var/log")
    os.write(fd, EVIDENCE)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _reap(p: subprocess.Popen[bytes]) -> int:
    if p.poll() is None:
        p.kill()
    return p.wait(5)


@pytest.mark.parametrize("act", list(ACTS))
def test_a_log_rewritten_past_o_append_kills_the_untrusted_tree(rig: Rig, log_file: Path,
                                                                 act: str) -> None:
    """Before (main 8e286a7): the log rewritten (``XXXXXXXX`` at offset 0, or zeros),
    no record, no finding, the tree lived.  After: a ``rewrite`` record, a critical
    kill-tree ``Log rewritten in place`` finding, the tree dead of SIGKILL.  The kernel
    cannot tell a /var/log file is a log: the act completes before the kill (the race)."""
    p = rig.run(f"L = {str(log_file)!r}; {PRELUDE}; {ACTS[act]}; time.sleep(20)", tainted=True)
    try:
        _, alerts = rig.collect(10.0, stop_on_finding=True)
        assert alerts, (f"no log-clearing finding for {act}", log_file.read_bytes(), p.poll())
        a = alerts[0]
        assert a["action"] == "kill-tree" and a["severity"] == "critical", a
        assert "Log rewritten in place" in str(a["title"]) and str(log_file) in str(a["title"])
        assert p.wait(5) == -signal.SIGKILL
        assert not rig.engine.errors
    finally:
        _reap(p)


# acts the kernel's kill at sys_enter does not undo: the hole is punched in the call
COMPLETES_BEFORE_THE_KILL = {"fallocate", "write_zeroes"}


@pytest.mark.parametrize("act", list(ACTS))
def test_a_history_rewritten_past_o_append_is_killed_before_the_act(rig: Rig, act: str) -> None:
    """A history in the sensitive set (HISTORY class): the sensor kills the actor at
    sys_enter (SIGKILL before the syscall runs), so the write that follows the fcntl, the
    store through the mapping and pwritev2's own write are never made; the rule kills the
    rest of the tree.  Before: the history rewritten, no finding, the tree lived."""
    rig.history.write_bytes(EVIDENCE)
    p = rig.run(f"L = {str(rig.history)!r}; {PRELUDE}; {ACTS[act]}; "
                f"open('{rig.root}/survived', 'w'); time.sleep(20)", tainted=True)
    try:
        _, alerts = rig.collect(10.0, stop_on_finding=True)
        assert alerts, (f"no history finding for {act}", rig.history.read_bytes(), p.poll())
        a = alerts[0]
        assert a["action"] == "kill-tree" and a["severity"] == "critical", a
        assert "Shell history rewritten in place" in str(a["title"]), a
        assert p.wait(5) == -signal.SIGKILL
        assert not (rig.root / "survived").exists()   # dead before its next line
        if act not in COMPLETES_BEFORE_THE_KILL:
            assert rig.history.read_bytes() == EVIDENCE
        assert not rig.engine.errors
    finally:
        _reap(p)


def test_look_alikes_are_silent(rig: Rig, log_file: Path) -> None:
    """A clean tree's append, destructive fallocate and shared writable mmap of a log and
    of a database (the sensor reports an untrusted tree only: no record at all), and an
    untrusted tree's sqlite WAL database (its ``-shm`` mapped shared and writable) and
    hole punched in a database file (records, not logs: no finding).  Both trees live."""
    db = rig.root / "data" / "app.db"
    db.parent.mkdir(exist_ok=True)
    db.write_bytes(b"\0" * 8192)
    clean = rig.run(
        f"L = {str(log_file)!r}; {PRELUDE}; os.write(fd, b'appended\\n'); "
        f"d = os.open({str(db)!r}, os.O_RDWR); assert libc.fallocate(d, 3, 0, 4096) == 0; "
        f"m = mmap.mmap(d, 0); m[0:4] = b'page'; m.flush(); time.sleep(20)", tainted=False)
    wal = rig.root / "data" / "wal.db"
    tainted = rig.run(
        f"import sqlite3, ctypes, os, time; c = sqlite3.connect({str(wal)!r}); "
        f"c.execute('pragma journal_mode=wal'); c.execute('create table t (x)'); "
        f"c.execute('insert into t values (1)'); c.commit(); "
        f"libc = ctypes.CDLL(None, use_errno=True); "
        f"libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]; "
        f"d = os.open({str(db)!r}, os.O_RDWR); assert libc.fallocate(d, 3, 4096, 4096) == 0; "
        f"time.sleep(20)", tainted=True)
    try:
        events, alerts = rig.collect(3.0, stop_on_finding=False)
        assert not alerts, alerts
        rewrites = [e for e in events if isinstance(e, FileEvent) and e.op == "rewrite"]
        # the untrusted tree's database acts were reported (the silence is the rule's)
        assert {e.path for e in rewrites} >= {f"{wal}-shm", str(db)}, rewrites
        assert all(e.proc.pid != clean.pid for e in rewrites), rewrites
        assert clean.poll() is None and tainted.poll() is None
        assert log_file.read_bytes() == EVIDENCE + b"appended\n"
        assert not rig.engine.errors
    finally:
        _reap(clean)
        _reap(tainted)


def test_a_flood_of_rewrites_of_its_own_file_is_a_handful_of_records(rig: Rig) -> None:
    """s17-fixlogacts 1: an untrusted tree punches 10,000 holes in its own file (not a
    log).  Before (8ee983f): one record per call (the ring flooded, other records lost).
    After: the kernel sends the first per (process, file, act) within the window and
    counts the rest (``rewrite_deduplicated``); a memfd is not reported at all."""
    own = rig.root / "flood.bin"
    own.write_bytes(b"\0" * 8192)
    before = rig.sensor.stats().get("rewrite_deduplicated", 0)
    p = rig.run(f"L = {str(own)!r}; {PRELUDE}; "
                f"[libc.fallocate(fd, 3, 0, 4096) for i in range(10000)]; "
                f"m = os.memfd_create('x'); os.ftruncate(m, 4096); "
                f"[libc.fallocate(m, 3, 0, 4096) for i in range(100)]; "
                f"open('{rig.root}/flooded', 'w'); time.sleep(20)", tainted=True)
    try:
        events: list[Event] = []
        end = time.monotonic() + 15
        while time.monotonic() < end and not (rig.root / "flooded").exists():
            events += rig.collect(0.2, stop_on_finding=False)[0]
        assert (rig.root / "flooded").exists(), p.poll()
        events += rig.collect(1.0, stop_on_finding=False)[0]
        rewrites = [e for e in events if isinstance(e, FileEvent) and e.op == "rewrite"]
        assert 1 <= len([e for e in rewrites if e.path == str(own)]) <= 5, len(rewrites)
        assert not [e for e in rewrites if "memfd" in e.path], rewrites
        assert rig.sensor.stats().get("rewrite_deduplicated", 0) - before >= 9000
        assert p.poll() is None   # not a log: no finding, the tree lives
    finally:
        _reap(p)
        (rig.root / "flooded").unlink(missing_ok=True)


def test_an_admin_sessions_history_rewrite_is_left_to_the_rule(rig: Rig) -> None:
    """s17-fixlogacts 4: a process of an administrator's interactive session (the
    kernel's ADMIN_TTY bit) whose only reasons are local (tmp-script) is exempt in
    user space (``untrusted()``) and in the gates; the in-kernel kill must agree.
    Before (8ee983f): SIGKILL at entry, the line after the act never ran.  After: no
    kernel kill (the record goes to the rule, which decides; here it stops the tree:
    the test's session is no real login, so user space sees no administrator)."""
    rig.history.write_bytes(EVIDENCE)
    go, pidf = rig.root / "go", rig.root / "pid"
    p = rig.run(f"import os, time; L = {str(rig.history)!r}; "
                f"open('{pidf}', 'w').write(str(os.getpid())); "
                f"G = '{go}'; [time.sleep(0.01) for _ in iter(lambda: os.path.exists(G), True)]; "
                f"{PRELUDE}; {ACTS['setfl']}; open('{rig.root}/survived', 'w'); "
                f"time.sleep(20)", tainted=True)
    try:
        end = time.monotonic() + 10
        while not (pidf.exists() and pidf.read_text()) and time.monotonic() < end:
            time.sleep(0.01)
        pid = int(pidf.read_text())
        prov = rig.sensor.provenance()
        cur = prov.get(pid)
        assert cur is not None and cur.reasons & abi.PROV_TMP_SCRIPT, cur
        assert prov.add(pid, cur.start_ns, abi.PROV_ADMIN_TTY)
        go.touch()
        _, alerts = rig.collect(10.0, stop_on_finding=True)
        assert alerts and "Shell history rewritten in place" in str(alerts[0]["title"]), alerts
        assert (rig.root / "survived").exists()   # the kernel did not kill at entry
        assert not rig.engine.errors
    finally:
        _reap(p)
        for f in (go, pidf, rig.root / "survived"):
            f.unlink(missing_ok=True)


def test_an_mprotect_over_more_areas_than_walked_is_a_medium_alert(rig: Rig) -> None:
    """s17-fixlogacts 2: one ``mprotect(PROT_WRITE)`` over ten areas (anonymous pages of
    alternating protections: no merge) is more than the kernel walks (8): reported as
    ``MPROTECT_UNKNOWN`` (no file), a medium alert for the untrusted tree; not a kill (a
    racing mmap's lock gives the same record to a benign multithreaded program: rustup's
    tokio runtime in the benign corpus, stop 23's CI).
    Before (8ee983f): judged by the first area (anonymous): nothing."""
    p = rig.run("import ctypes, time; libc = ctypes.CDLL(None, use_errno=True); "
                "libc.mmap.restype = ctypes.c_void_p; "
                "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, "
                "ctypes.c_int, ctypes.c_int, ctypes.c_long]; "
                "libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]; "
                "a = libc.mmap(None, 40960, 1, 0x22, -1, 0); "
                "[libc.mprotect(a + i * 4096, 4096, 0) for i in range(0, 10, 2)]; "
                "assert libc.mprotect(a, 40960, 3) == 0; time.sleep(20)", tainted=True)
    try:
        events, alerts = rig.collect(10.0, stop_on_finding=True)
        assert alerts, p.poll()
        assert "could not look at" in str(alerts[0]["title"]), alerts
        assert (alerts[0]["severity"], alerts[0]["action"]) == ("medium", "alert"), alerts
        assert p.poll() is None          # alive: loud, not stopped
    finally:
        _reap(p)
