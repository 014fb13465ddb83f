"""behavior.exec_memory (ABI 2.1 executable-memory records): the shellcode loader
against JIT runtimes, libffi and ld.so, replayed through the whole pack."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.base import NS
from bastion.detect.engine import Finding
from bastion.events import Event, MmapEvent, from_json, to_json
from bastion.sensors.replay import ReplaySensor
from support.trust import RecordedTrust
from test_provenance import T0, ex, net, proc, run, wopen

PY = "/usr/bin/python3.11"
NODE = "/usr/bin/node"
RULE = "behavior.exec_memory"


def xm(pid: int, exe: str, t: float, why: tuple[str, ...], op: str = "mprotect",
       path: str = "", ppid: int = 1) -> MmapEvent:
    return MmapEvent(T0 + int(t * NS), proc(pid, exe, ppid), op=op, why=why, prot=5,
                     addr=0x7f0000000000, length=4096, path=path)


def ours(evs: list[Event], trust: RecordedTrust | None = None) -> list[Finding]:
    if trust is not None:
        for e in evs:
            trust.learn(e)
    rules = behavior_rules(trust=trust) if trust is not None else None
    return [f for f in run(evs, rules) if f.rule == RULE]


def test_downloaded_binary_flipping_memory_is_stopped() -> None:
    # curl writes /root/ldr after connecting out; ldr runs and flips its buffer W->X
    evs: list[Event] = [
        ex(10, "/usr/bin/curl", 0, ("curl", "-o", "/root/ldr", "http://x")),
        net(10, "/usr/bin/curl", 0.1, daddr="203.0.113.9", dport=80),
        wopen(10, "/usr/bin/curl", 0.3, "/root/ldr"),
        ex(11, "/root/ldr", 1, ("/root/ldr",)),
        xm(11, "/root/ldr", 2, ("anon", "w2x"))]
    f = ours(evs)
    assert len(f) == 1, f
    assert (f[0].severity, f[0].action, f[0].pid) == ("high", "kill", 11)
    assert "network-binary" in f[0].evidence["provenance"]
    assert f[0].evidence["mapping"]["why"] == ["anon", "w2x"]
    assert f[0].attack == ("T1620", "T1055")


def test_memfd_mapping_in_a_fileless_process_is_stopped_but_not_in_python() -> None:
    memfd = "memfd:x (deleted)"
    f = ours([ex(20, "/memfd:x (deleted)", 0, ("x",)),
              xm(20, "/memfd:x (deleted)", 1, ("no-link",), op="mmap", path=memfd)])
    assert f and f[0].severity == "high" and "fileless" in f[0].evidence["provenance"]
    # python using ctypes callbacks: libffi maps a memfd executable; connected or not
    assert ours([ex(21, PY, 0, (PY, "/root/app.py")), net(21, PY, 0.5),
                 xm(21, PY, 1, ("no-link",), op="mmap", path="memfd:libffi (deleted)")]) == []


def test_ordinary_process_anonymous_exec_after_connect_is_alerted_once() -> None:
    evs: list[Event] = [ex(30, PY, 0, (PY, "/root/fetch.py")),
                        net(30, PY, 0.5, daddr="198.51.100.7", dport=4444),
                        xm(30, PY, 1, ("anon", "write-exec"), op="mmap"),
                        xm(30, PY, 2, ("anon", "w2x"))]
    f = ours(evs)
    assert len(f) == 1 and (f[0].severity, f[0].action) == ("medium", "alert"), f
    assert f[0].evidence["peer"] == "198.51.100.7:4444"


def test_installed_interpreter_with_ffi_closure_after_connect_is_quiet() -> None:
    """python's ctypes callback maps RWX (libffi): the installed interpreter (by inode)
    is not alerted for it; the same bytes from a native program in /root are."""
    evs: list[Event] = [ex(32, PY, 0, (PY, "/root/app.py")), net(32, PY, 0.5),
                        xm(32, PY, 1, ("anon", "write-exec"), op="mmap")]
    assert ours(evs, RecordedTrust()) == []
    f = ours([ex(33, "/root/ldr", 0, ("/root/ldr",)), net(33, "/root/ldr", 0.5),
              xm(33, "/root/ldr", 1, ("anon", "write-exec"), op="mmap")], RecordedTrust())
    assert len(f) == 1 and f[0].severity == "medium"


def test_temp_dir_program_is_alerted_and_a_temp_script_in_python_is_quiet() -> None:
    """tmp-binary / tmp-script only (a build product, a script put in /tmp by hand): a
    native program's RWX is alerted, not stopped; python running a /tmp script with a
    ctypes callback (libffi RWX: the benign corpus's ffi.py under pytest's /tmp) is quiet."""
    f = ours([ex(34, "/tmp/b/ldr", 0, ("/tmp/b/ldr",)),
              xm(34, "/tmp/b/ldr", 1, ("anon", "write-exec"), op="mmap")])
    assert len(f) == 1 and (f[0].severity, f[0].action) == ("medium", "alert"), f
    assert f[0].evidence["provenance"] == {"tmp-binary": "/tmp/b/ldr"}
    assert ours([ex(35, PY, 0, (PY, "/tmp/corpus/jit/ffi.py")), net(35, PY, 0.5),
                 xm(35, PY, 1, ("anon", "write-exec"), op="mmap")], RecordedTrust()) == []
    # its own library staged next to it: nothing
    assert ours([ex(36, "/tmp/b/app", 0, ("/tmp/b/app",)),
                 xm(36, "/tmp/b/app", 1, ("tmp-file",), op="mmap", path="/tmp/b/libapp.so")]) == []


def test_network_service_alone_alerts_natives_and_spares_interpreters() -> None:
    """A service (it listens) with libffi callbacks or PCRE's JIT: an installed python
    service is quiet, a native service's RWX alerted (medium), neither stopped; the
    benign corpus's ffi.py listens on loopback and runs from /tmp."""
    evs: list[Event] = [ex(37, PY, 0, (PY, "/tmp/corpus/jit/ffi.py")),
                        net(37, PY, 0.2, op="listen"), net(37, PY, 0.5),
                        xm(37, PY, 1, ("anon", "write-exec"), op="mmap")]
    assert ours(evs, RecordedTrust()) == []
    svc = "/opt/app/server"
    f = ours([ex(38, svc, 0, (svc,)), net(38, svc, 0.2, op="listen"),
              xm(38, svc, 1, ("anon", "w2x"))], RecordedTrust())
    assert len(f) == 1 and (f[0].severity, f[0].action) == ("medium", "alert"), f
    assert "network service" in f[0].title


def test_order_does_not_matter_mapping_first_then_connect() -> None:
    # mapping before the connect (a pre-warmed buffer, or a dedup window hiding the repeat)
    f = ours([ex(31, PY, 0, (PY, "/root/fetch.py")),
              xm(31, PY, 1, ("anon", "w2x")),
              net(31, PY, 2, daddr="198.51.100.7", dport=443)])
    assert len(f) == 1 and "then connected to 198.51.100.7:443" in f[0].title


def test_benign_no_network_no_provenance_stays_quiet() -> None:
    # a local program with a JIT-like flip, never networked: nothing
    assert ours([ex(40, PY, 0, (PY, "/root/calc.py")), xm(40, PY, 1, ("anon", "w2x"))]) == []
    # a temp-file mapping by an ordinary process (a build's own library): nothing
    assert ours([ex(41, PY, 0, (PY, "/root/t.py")), net(41, PY, 0.5),
                 xm(41, PY, 1, ("tmp-file",), op="mmap", path="/tmp/build/lib.so")]) == []
    # a program's own image mapped at exec (the hook sensor sees the ELF loader)
    assert ours([ex(42, "/tmp/tool", 0, ("/tmp/tool",)),
                 xm(42, "/tmp/tool", 0.1, ("tmp-file",), op="mmap", path="/tmp/tool")]) == []


def test_jit_runtime_trusted_by_inode_not_by_name() -> None:
    trust = RecordedTrust()
    jit = [ex(50, NODE, 0, ("node", "server.js")), net(50, NODE, 0.5, daddr="104.16.0.1", dport=443),
           xm(50, NODE, 1, ("anon", "write-exec"), op="mmap"), xm(50, NODE, 2, ("anon", "w2x"))]
    assert ours(jit, trust) == []
    # a copy named node elsewhere is not the installed runtime
    fake = "/root/node"
    f = ours([ex(51, fake, 0, ("node",)), net(51, fake, 0.5),
              xm(51, fake, 1, ("anon", "w2x"))], RecordedTrust())
    assert len(f) == 1


def test_mmap_events_replay_through_json() -> None:
    ev = xm(60, PY, 1, ("anon", "w2x"))
    j = to_json(ev)
    assert j["type"] == "mprotect" and j["why"] == ["anon", "w2x"] and j["length"] == 4096
    assert from_json(j) == ev


def test_replay_sensor_gives_the_same_finding(tmp_path: Path) -> None:
    """A recording (the replay format) of the loader: the same finding as live."""
    evs: list[Event] = [ex(70, PY, 0, (PY, "/root/fetch.py")),
                        net(70, PY, 0.5, daddr="198.51.100.7", dport=4444),
                        xm(70, PY, 1, ("anon", "write-exec"), op="mmap")]
    rec = tmp_path / "loader.jsonl"
    rec.write_text("".join(json.dumps(to_json(e)) + "\n" for e in evs))
    sensor = ReplaySensor(rec)
    sensor.open()
    try:
        replayed: list[Event] = []
        while (batch := sensor.poll(0)) is not None:
            replayed += batch
    finally:
        sensor.close()
    assert [type(e) for e in replayed] == [type(e) for e in evs]
    assert isinstance(replayed[2], MmapEvent) and replayed[2].why == ("anon", "write-exec")
    f = ours(replayed)
    assert len(f) == 1 and f[0].evidence["mapping"]["op"] == "mmap"
