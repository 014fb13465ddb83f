"""The ransomware rule's entropy probe never blocks the agent's loop (issue 13 item 5).

The attack kept as a test: a FIFO renamed among the rewritten files made
``open()`` wait for a writer forever, in the agent's only loop thread.  A file
that blocks in open or read whatever the flags (FUSE) is modelled by a reader
that waits: the loop waits at most the probe's timeout, once per file."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from bastion.detect.behavior.rules import EntropyProbe, Probes, Ransomware, file_entropy
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event, from_json
from bastion.proctable import ProcessTable

NS = 1_000_000_000


def _call_bounded(fn: Any, *args: Any, limit: float = 3.0) -> Any:
    """Run fn in a daemon thread; fail (never hang) if it does not return within limit."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} blocked for {limit}s"
    return out[0]


def test_fifo_is_not_opened_for_reading(tmp_path: Path) -> None:
    fifo = tmp_path / "doc.locked"
    os.mkfifo(fifo)
    try:
        assert _call_bounded(file_entropy, str(fifo)) is None
    finally:
        # the unfixed probe blocks in open(): a writer releases it
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else -1
        if fd >= 0:
            os.close(fd)


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


def test_only_regular_files_no_symlinks(tmp_path: Path) -> None:
    data = os.urandom(4096)
    f = tmp_path / "a.bin"
    f.write_bytes(data)
    h = file_entropy(str(f))
    assert h is not None and h > 7.5
    link = tmp_path / "l.bin"
    link.symlink_to(f)
    assert file_entropy(str(link)) is None
    assert file_entropy(str(tmp_path)) is None
    assert file_entropy("/dev/zero") is None
    assert file_entropy(str(tmp_path / "absent")) is None
    small = tmp_path / "s"
    small.write_bytes(b"x" * 10)
    assert file_entropy(str(small)) is None


class Blocking:
    """A reader that blocks on chosen paths until released (a FUSE file)."""

    def __init__(self, stuck: set[str]) -> None:
        self.stuck = stuck
        self.release = threading.Event()
        self.calls: list[str] = []

    def __call__(self, path: str) -> float | None:
        self.calls.append(path)
        if path in self.stuck:
            self.release.wait(30)
            return None
        return 7.9


def test_probe_times_out_once_per_file_and_is_bounded() -> None:
    r = Blocking({"/home/a/fuse"})
    p = EntropyProbe(timeout_s=0.2, max_outstanding=3, report_after_s=0.0, read=r)
    try:
        t0 = time.monotonic()
        got = p.many(["/home/a/x", "/home/a/fuse", "/home/a/y"])
        took = time.monotonic() - t0
        assert got == [7.9, None, 7.9]
        assert took < 1.0
        assert p.stalled() == ["/home/a/fuse"]
        assert p.stalled() == []                        # reported once
        # the stuck file is not probed again while its probe is outstanding,
        # and the loop does not wait on it again
        t0 = time.monotonic()
        assert p.many(["/home/a/fuse"]) == [None]
        assert time.monotonic() - t0 < 0.1
        assert r.calls.count("/home/a/fuse") == 1
        assert p.stalled() == []
        # bounded: more stuck files than max_outstanding are unknown at once, no thread
        r.stuck |= {"/home/a/f2", "/home/a/f3", "/home/a/f4"}
        assert p.many(["/home/a/f2", "/home/a/f3", "/home/a/f4"]) == [None, None, None]
        assert p.stats()["outstanding"] == 3 and p.stats()["busy"] == 1
        assert "/home/a/f4" not in r.calls
        assert p.stats()["timeouts"] == 3
    finally:
        r.release.set()
    deadline = time.monotonic() + 5
    while p.outstanding() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.outstanding() == 0
    assert p.many(["/home/a/fuse"]) == [None]           # probed again once released


def test_a_slow_read_on_a_loaded_host_is_not_reported_a_stuck_one_is() -> None:
    """Seen in the benign corpus under load: a .pyc pip wrote took longer than the
    loop's 0.25 s wait and raised a high "probe timed out" alert.  Only a probe still
    outstanding ``report_after_s`` later is a finding."""
    slow_done = threading.Event()

    def read(path: str) -> float | None:
        if path.endswith("slow"):
            time.sleep(0.4)
            slow_done.set()
            return 7.9
        return stuck_reader(path)

    stuck_reader = Blocking({"/home/a/fuse"})
    p = EntropyProbe(timeout_s=0.1, report_after_s=1.0, read=read)
    try:
        assert p.many(["/home/a/slow", "/home/a/fuse"]) == [None, None]
        assert p.stats()["timeouts"] == 2
        assert p.stalled() == []                  # neither is a finding yet
        assert slow_done.wait(5)
        time.sleep(1.1)
        assert p.stalled() == ["/home/a/fuse"]    # still stuck: reported, once
        assert p.stalled() == []
    finally:
        stuck_reader.release.set()


def _world(probes: Probes) -> tuple[ProcessTable, Engine, RuleContext]:
    procs = ProcessTable()
    return procs, Engine([Ransomware(probes=probes)]), RuleContext(procs)


def _feed(procs: ProcessTable, engine: Engine, ctx: RuleContext, i: int,
          obj: dict[str, Any]) -> list[Finding]:
    t = 1_767_225_600 * NS + i * NS // 100
    sec, ns = divmod(t, NS)
    obj["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1000:06d}Z"
    proc = {"pid": 70, "tid": 70, "ppid": 1, "uid": 1000, "euid": 1000, "gid": 1000,
            "cgroup_id": 1, "comm": "python3", "start_ns": 70000, "exe": "/usr/bin/python3.11"}
    ev: Event = from_json({**proc, **obj})
    procs.update(ev)
    return engine.evaluate(ev, ctx)


def test_ransomware_still_fires_with_a_stuck_file_and_says_so() -> None:
    r = Blocking({f"/home/a/d{i}.locked" for i in range(30, 40)})
    p = EntropyProbe(timeout_s=0.2, report_after_s=0.0, read=r)
    procs, engine, ctx = _world(Probes(entropy=p, entropy_many=p.many, stalled=p.stalled))
    found: list[Finding] = []
    try:
        t0 = time.monotonic()
        for i in range(40):
            found += _feed(procs, engine, ctx, i, {
                "type": "rename", "path": f"/home/a/d{i}", "path2": f"/home/a/d{i}.locked",
                "flags": 0, "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": i})
        assert time.monotonic() - t0 < 2.0
    finally:
        r.release.set()
    ransom = [f for f in found if f.rule == "behavior.ransomware"]
    stalled = [f for f in ransom if "timed out" in f.title]
    fired = [f for f in ransom if "timed out" not in f.title]
    assert fired and fired[0].severity == "critical" and fired[0].action == "kill-tree"
    # the draw's stuck files (up to 24 of the 40 drawn, 8 readable found) are unknown;
    # the newest 8 (d39..d32, all stuck) are probed too: the draw found high files
    unknown = fired[0].evidence["entropy_unknown"]
    assert unknown <= 10
    assert len(stalled) == 1 and stalled[0].severity == "high"
    assert 8 <= stalled[0].evidence["timed_out"] <= 10
