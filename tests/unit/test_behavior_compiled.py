"""Compile after delivery (s17-compile, T1027.004): a program compiled on the host and
run outside a build — the attacks (a script's compile, a downloaded source, a staging
spot as root, a hidden name, a stdin-fed compile, tcc -run, a memfd product, a service's
tree, a fake ``make``) and the look-alikes that stay silent (a developer at a terminal,
make, configure's conftest, go test, a run after the window)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.rules import Probes
from bastion.detect.behavior.compiled import sources_of, staging_spot, tool_name
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all
from support.trust import RecordedTrust, path_ino

RULE = "behavior.compile_after_delivery"
GCC = "/usr/bin/x86_64-linux-gnu-gcc-12"
COLLECT2 = "/usr/lib/gcc/x86_64-linux-gnu/12/collect2"
LD = "/usr/bin/x86_64-linux-gnu-ld.bfd"


class Rec:
    """A recording: pid 100 is an administrator's login shell on a terminal, pid 150 a
    script (``sh -c ...``) it started."""

    def __init__(self) -> None:
        self.n = 0
        self.lines: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[int, str, int]] = {}
        self.ino = 5000
        self.exec(1, 0, "/sbin/init", ["/sbin/init"])
        self.exec(100, 1, "/usr/bin/bash", ["-bash"], stdin="tty")
        self.exec(150, 100, "/usr/bin/dash", ["sh", "-c", "the script"], stdin="tty")

    def _hdr(self, pid: int) -> dict[str, Any]:
        self.n += 1
        ppid, exe, uid = self.procs[pid]
        return {"time": "2026-01-01T00:%02d:%02d.%06dZ" % (self.n // 6000, (self.n // 100) % 60,
                                                         (self.n % 100) * 10000),
                "pid": pid, "tid": pid, "ppid": ppid, "uid": uid, "euid": uid, "gid": uid,
                "cgroup_id": 1, "comm": exe.rsplit("/", 1)[-1][:15], "start_ns": pid * 1000,
                "exe": exe}

    def exec(self, pid: int, ppid: int, exe: str, argv: list[str], *, stdin: str = "pipe:[1]",
             stdout: str = "tty", cwd: str = "/root", uid: int = 0, ino: int | None = None,
             nlink: int = 1) -> "Rec":
        self.procs[pid] = (ppid, exe, uid)
        self.lines.append({"type": "exec", **self._hdr(pid), "filename": exe, "cwd": cwd,
                           "argv": argv, "exe_dev": 1, "exe_ino": ino or path_ino(exe),
                           "exe_nlink": nlink, "stdin": stdin, "stdout": stdout,
                           "mnt_ns": os.stat("/proc/self/ns/mnt").st_ino})   # recorded here
        return self

    def write(self, pid: int, path: str, *, ino: int | None = None, mode: int = 0o666) -> int:
        self.ino += 1
        got = ino or self.ino
        self.lines.append({"type": "open", **self._hdr(pid), "path": path, "flags": 0o1102,
                           "mode": mode, "dev": 1, "ino": got})
        return got

    def connect(self, pid: int) -> "Rec":
        self.lines.append({"type": "connect", **self._hdr(pid), "family": "inet",
                           "protocol": "tcp", "daddr": "203.0.113.7", "dport": 80})
        return self

    def listen(self, pid: int) -> "Rec":
        self.lines.append({"type": "listen", **self._hdr(pid), "family": "inet", "protocol": "tcp",
                           "saddr": "0.0.0.0", "sport": 8080, "daddr": "", "dport": 0,
                           "backlog": 5})
        return self

    def idle(self, seconds: int) -> "Rec":
        self.n += seconds * 100
        return self.exec(99, 1, "/usr/bin/true", ["true"])

    def gcc(self, pid: int, ppid: int, argv: list[str], out: str, *, cwd: str = "/root",
            uid: int = 0, stdin: str = "pipe:[1]", driver: str = GCC) -> int:
        """``argv`` run by ``ppid`` as the driver, through collect2 and ld writing ``out``."""
        self.exec(pid, ppid, driver, argv, cwd=cwd, uid=uid, stdin=stdin)
        self.exec(pid + 1, pid, COLLECT2, ["collect2", "-o", out], cwd=cwd, uid=uid)
        self.exec(pid + 2, pid + 1, LD, ["/usr/bin/ld", "-o", out], cwd=cwd, uid=uid)
        return self.write(pid + 2, out)

    def run(self, tmp: Path, extra: dict[str, tuple[int, int]] | None = None,
            stdio: dict[int, tuple[str, ...]] | None = None) -> list[Finding]:
        p = tmp / "rec.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in self.lines))
        procs, trust = ProcessTable(), RecordedTrust()
        trust.table.update(extra or {})
        probes = Probes(stdio=stdio.get) if stdio is not None else None
        engine = Engine(behavior_rules(probes=probes, trust=trust))
        ctx = RuleContext(procs)
        out: list[Finding] = []
        for ev in read_all(p):
            trust.learn(ev)
            procs.update(ev)
            out += engine.evaluate(procs.enrich(ev), ctx)
        assert not engine.errors, engine.disabled
        return [f for f in out if f.rule == RULE]


def got(found: list[Finding]) -> list[tuple[int, str]]:
    return [(f.pid, f.severity) for f in found]


# ---- the attacks -------------------------------------------------------------------------------

def test_script_compiles_and_runs_in_place_medium(tmp_path: Path) -> None:
    """T1027.004-3's structure: ``gcc SRC && ./a.out`` from ``sh -c`` (cwd /)."""
    r = Rec()
    src = "/AtomicRedTeam/atomics/T1027.004/src/T1027-004-test.c"
    ino = r.gcc(200, 150, ["gcc", src], "/a.out", cwd="/")
    r.exec(210, 150, "/a.out", ["./a.out"], cwd="/", ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")]
    ev = found[0].evidence
    assert ev["sources"] == [src] and ev["session"] == "script" and ev["driver"] == "gcc"
    assert ev["writer_identified_by"] == "inode"


def test_downloaded_source_compiled_into_dev_shm_high(tmp_path: Path) -> None:
    """``wget x.c; cc -o /dev/shm/p x.c; /dev/shm/p``: the source came from the network."""
    r = Rec().exec(160, 150, "/usr/bin/wget", ["wget", "http://x/x.c"], cwd="/root")
    r.connect(160)
    r.write(160, "/root/x.c")
    ino = r.gcc(200, 150, ["cc", "-o", "/dev/shm/p", "x.c"], "/dev/shm/p", driver="/usr/bin/cc")
    r.exec(210, 150, "/dev/shm/p", ["/dev/shm/p"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "high")]
    assert any("downloaded by wget" in w for w in found[0].evidence["reasons"])


@pytest.mark.parametrize("uid,sev", [(0, "high"), (1000, "medium")])
def test_staging_spot_as_root_is_high(tmp_path: Path, uid: int, sev: str) -> None:
    """A compiled exploit run out of /tmp from a script: high as root, medium otherwise."""
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-O2", "-o", "/tmp/x", "/tmp/x.c"], "/tmp/x", uid=uid)
    r.exec(210, 150, "/tmp/x", ["/tmp/x"], ino=ino, uid=uid)
    assert got(r.run(tmp_path)) == [(210, sev)]


def test_user_compiled_run_as_root_from_a_script_high(tmp_path: Path) -> None:
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-o", "/home/u/x", "/home/u/x.c"], "/home/u/x", uid=1000)
    r.exec(210, 150, "/home/u/x", ["/home/u/x"], ino=ino, uid=0)
    assert got(r.run(tmp_path)) == [(210, "high")]


def test_hidden_product_at_a_terminal_medium(tmp_path: Path) -> None:
    """``clang -o .hidden x.c`` typed at a prompt: the hidden name alone is reported."""
    r = Rec()
    ino = r.gcc(200, 100, ["clang", "-o", ".hidden", "x.c"], "/root/w/.hidden", cwd="/root/w",
                stdin="tty", driver="/usr/lib/llvm-14/bin/clang")
    r.exec(210, 100, "/root/w/.hidden", ["./.hidden"], ino=ino, stdin="tty")
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")]
    assert found[0].evidence["session"] == "interactive"


def test_stdin_fed_compile_from_a_script_medium(tmp_path: Path) -> None:
    """``gcc -x c - -o out <<EOF``: the source is the script's here-document."""
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-x", "c", "-", "-o", "/root/w/out"], "/root/w/out",
                stdin="pipe:[77]")
    r.exec(210, 150, "/root/w/out", ["./out"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")]
    assert any("pipe:[77]" in w for w in found[0].evidence["reasons"])


def test_stdin_fed_by_a_downloader_high(tmp_path: Path) -> None:
    """``curl URL | gcc -x c - -o p``: the pipe's writer connected out."""
    r = Rec().exec(160, 150, "/usr/bin/curl", ["curl", "-s", "http://x/"], stdout="pipe:[88]")
    r.connect(160)
    ino = r.gcc(200, 150, ["gcc", "-xc", "-x", "c", "-", "-o", "/root/w/p"], "/root/w/p",
                stdin="pipe:[88]")
    r.exec(210, 150, "/root/w/p", ["./p"], ino=ino)
    assert got(r.run(tmp_path)) == [(210, "high")]


def test_tcc_run_in_memory_medium(tmp_path: Path) -> None:
    r = Rec().exec(200, 150, "/usr/bin/tcc", ["tcc", "-run", "x.c", "arg"])
    found = r.run(tmp_path)
    assert got(found) == [(200, "medium")]
    assert found[0].evidence["in_memory"] == "tcc -run"
    assert found[0].evidence["sources"] == ["/root/x.c"]


def test_memfd_product_run_medium(tmp_path: Path) -> None:
    """A script compiles into a memfd (``-o /proc/self/fd/3``) and fexecve's it."""
    r = Rec().exec(160, 150, "/usr/bin/python3.11", ["python3", "/root/m.py"])
    r.exec(200, 160, GCC, ["gcc", "-x", "c", "-", "-o", "/proc/self/fd/3"])
    r.exec(201, 200, COLLECT2, ["collect2"])
    r.exec(202, 201, LD, ["/usr/bin/ld"])
    ino = r.write(202, "/memfd:x (deleted)")
    r.exec(160, 150, "/memfd:x (deleted)", ["x"], ino=ino, nlink=0)
    found = r.run(tmp_path)
    assert got(found) == [(160, "medium")]
    assert found[0].evidence["in_memory"].startswith("run from /memfd:x")


def test_compile_in_a_network_service_tree_high(tmp_path: Path) -> None:
    """A web service's ``system("gcc ... && ./p")``: its tree compiled and ran it."""
    r = Rec().exec(600, 1, "/usr/bin/python3.11", ["python3", "/srv/app.py"], stdin="")
    r.listen(600)
    r.exec(601, 600, "/usr/bin/dash", ["sh", "-c", "gcc -o /srv/up/p /srv/up/p.c && /srv/up/p"])
    ino = r.gcc(610, 601, ["gcc", "-o", "/srv/up/p", "/srv/up/p.c"], "/srv/up/p")
    r.exec(620, 601, "/srv/up/p", ["/srv/up/p"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(620, "high")]
    assert any(w.startswith("network-service") for w in found[0].evidence["reasons"])


def test_a_fake_make_is_no_build(tmp_path: Path) -> None:
    """``/tmp/make`` (named make, not the installed file) compiling and running: reported."""
    r = Rec().exec(160, 150, "/tmp/make", ["make"], cwd="/root/w")
    ino = r.gcc(200, 160, ["gcc", "-o", "p", "p.c"], "/root/w/p", cwd="/root/w")
    r.exec(210, 160, "/root/w/p", ["./p"], ino=ino)
    assert got(r.run(tmp_path)) == [(210, "medium")]


def test_configure_name_does_not_hide_other_products(tmp_path: Path) -> None:
    """A script named configure writing a product that is no conftest: reported."""
    r = Rec().exec(160, 150, "/usr/bin/dash", ["/bin/sh", "./configure"], cwd="/root/p")
    ino = r.gcc(200, 160, ["gcc", "-o", "evil", "e.c"], "/root/p/evil", cwd="/root/p")
    r.exec(210, 160, "/root/p/evil", ["./evil"], ino=ino)
    assert got(r.run(tmp_path)) == [(210, "medium")]


def test_renamed_product_still_matched(tmp_path: Path) -> None:
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-o", "/root/w/p", "p.c"], "/root/w/p")
    r.lines.append({"type": "rename", **r._hdr(150), "path": "/root/w/p",
                    "path2": "/root/w/.p"})
    r.exec(210, 150, "/root/w/.p", ["/root/w/.p"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")]
    assert any(w.startswith("hidden name") for w in found[0].evidence["reasons"])


# ---- look-alikes that stay silent -----------------------------------------------------------

def test_developer_compile_at_a_terminal_silent(tmp_path: Path) -> None:
    r = Rec()
    ino = r.gcc(200, 100, ["gcc", "-o", "hello", "hello.c"], "/root/src/hello", cwd="/root/src",
                stdin="tty")
    r.exec(210, 100, "/root/src/hello", ["./hello"], ino=ino, stdin="tty")
    assert r.run(tmp_path) == []


def test_make_build_and_its_test_binary_silent(tmp_path: Path) -> None:
    """make (the installed file, by inode) compiling and running its test binary, even in
    a build tree in /tmp from a script."""
    r = Rec().exec(160, 150, "/usr/bin/make", ["make", "check"], cwd="/tmp/proj")
    ino = r.gcc(200, 160, ["gcc", "-o", "t", "t.c"], "/tmp/proj/t", cwd="/tmp/proj")
    r.exec(210, 160, "/tmp/proj/t", ["./t"], ino=ino)
    assert r.run(tmp_path) == []


def test_make_does_not_hide_a_downloaded_source(tmp_path: Path) -> None:
    """``wget evil.c && make evil && ./evil``: make's implicit rule compiles it; the source
    came from the network, which no build system waives."""
    r = Rec().exec(155, 150, "/usr/bin/wget", ["wget", "http://x/evil.c"], cwd="/root/w")
    r.connect(155)
    r.write(155, "/root/w/evil.c")
    r.exec(160, 150, "/usr/bin/make", ["make", "evil"], cwd="/root/w")
    ino = r.gcc(200, 160, ["cc", "evil.c", "-o", "evil"], "/root/w/evil", cwd="/root/w",
                driver="/usr/bin/cc")
    r.exec(210, 150, "/root/w/evil", ["./evil"], ino=ino)
    assert got(r.run(tmp_path)) == [(210, "high")]


def test_configure_conftest_silent(tmp_path: Path) -> None:
    """autoconf's probe: ``./configure`` compiling and running conftest in its own cwd
    (a build tree in /tmp, not a staging spot)."""
    r = Rec().exec(160, 150, "/usr/bin/dash", ["/bin/sh", "./configure"], cwd="/tmp/pkg-1.0")
    ino = r.gcc(200, 160, ["gcc", "-o", "conftest", "-g", "conftest.c"], "/tmp/pkg-1.0/conftest",
                cwd="/tmp/pkg-1.0")
    r.exec(210, 160, "/tmp/pkg-1.0/conftest", ["./conftest"], ino=ino)
    assert r.run(tmp_path) == []


def test_go_test_harness_and_cargo_silent(tmp_path: Path) -> None:
    """go test (the installed go) runs the test binary it built in its work dir; a
    root-installed cargo (outside the trust dirs) runs the crate it built."""
    r = Rec().exec(160, 150, "/usr/bin/go", ["go", "test", "./..."], cwd="/root/m")
    r.exec(161, 160, "/usr/lib/go/pkg/tool/linux_amd64/link", ["link", "-o", "x"])
    ino = r.write(161, "/tmp/go-build1/b001/m.test", mode=0o777)
    r.exec(170, 160, "/tmp/go-build1/b001/m.test", ["m.test"], ino=ino)
    cargo = "/root/.rustup/toolchains/stable/bin/cargo"
    r.exec(300, 150, cargo, ["cargo", "run"], cwd="/root/c", ino=4242)
    r.exec(301, 300, "/root/.rustup/toolchains/stable/bin/rustc", ["rustc", "src/main.rs"])
    ino2 = r.gcc(302, 301, ["cc", "-m64", "/tmp/rustcX/symbols.o", "-o", "/root/c/target/debug/c"],
                 "/root/c/target/debug/c", driver="/usr/bin/cc")
    r.exec(310, 300, "/root/c/target/debug/c", ["target/debug/c"], ino=ino2)
    assert r.run(tmp_path, extra={cargo: (1, 4242)}) == []
    # the same cargo, not root-installed: a non-interactive script's compile-and-run
    assert got(r.run(tmp_path)) == [(310, "medium")]


def test_product_run_after_the_window_silent(tmp_path: Path) -> None:
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-o", "/root/w/p", "p.c"], "/root/w/p")
    r.idle(400)
    r.exec(210, 150, "/root/w/p", ["/root/w/p"], ino=ino)
    assert r.run(tmp_path) == []


def test_one_finding_per_product(tmp_path: Path) -> None:
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-o", "/root/w/p", "p.c"], "/root/w/p")
    r.exec(210, 150, "/root/w/p", ["/root/w/p"], ino=ino)
    r.exec(211, 150, "/root/w/p", ["/root/w/p"], ino=ino)
    assert got(r.run(tmp_path)) == [(210, "medium")]


# ---- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize("tool,argv,want", [
    ("gcc", ["gcc", "-I", "inc", "-o", "x.c", "a.c", "-lm"], (["/w/a.c"], False, False)),
    ("gcc", ["gcc", "-xc", "-x", "c", "-", "-o", "p"], ([], True, False)),
    ("gcc", ["gcc", "-x", "c", "payload", "-o", "p"], (["/w/payload"], False, False)),
    ("gcc", ["gcc", "-x", "c", "-", "-x", "none", "lib.o"], ([], True, False)),
    ("tcc", ["tcc", "-run", "/tmp/x.c", "y.c"], (["/tmp/x.c"], False, True)),
    ("tcc", ["tcc", "-run", "-"], ([], True, True)),
    ("go", ["go", "run", "-tags", "a.go", "main.go"], (["/w/main.go"], False, False)),
    ("go", ["go", "version"], ([], False, False)),
    ("rustc", ["rustc", "-C", "opt-level=2", "m.rs", "-o", "m"], (["/w/m.rs"], False, False)),
])
def test_sources_by_option_table(tool: str, argv: list[str],
                                 want: tuple[list[str], bool, bool]) -> None:
    assert sources_of(tool, tuple(argv), "/w") == want


@pytest.mark.parametrize("path,want", [
    ("/tmp/x", True), ("/var/tmp/x", True), ("/dev/shm/a/b", True), ("/tmp/.d/x", True),
    ("/tmp/pytest-of-root/p/x", False), ("/tmp/pkg-1.0/conftest", False), ("/root/x", False),
    ("/tmpx/y", False),
])
def test_staging_spot(path: str, want: bool) -> None:
    assert staging_spot(path) is want


@pytest.mark.parametrize("exe,want", [
    ("/usr/bin/x86_64-linux-gnu-gcc-12", "gcc"), ("/usr/lib/llvm-14/bin/clang", "clang"),
    ("/usr/bin/x86_64-linux-gnu-ld.bfd", "ld.bfd"), ("/usr/bin/ld.gold", "ld.gold"),
    ("/usr/bin/clang-14", "clang"), ("/usr/bin/dpkg-buildpackage", "dpkg-buildpackage"),
])
def test_tool_names(exe: str, want: str) -> None:
    assert tool_name(exe) == want


# ---- s17-compile review (items 1-8) ------------------------------------------------------------

def _root_hidden_from(tmp: Path, r: Rec, ppid: int, uid: int = 0) -> list[tuple[int, str]]:
    ino = r.gcc(200, ppid, ["gcc", "-o", "/tmp/.x", "/tmp/x.c"], "/tmp/.x", cwd="/tmp", uid=uid)
    r.exec(210, ppid, "/tmp/.x", ["/tmp/.x"], ino=ino)
    return got(r.run(tmp))


@pytest.mark.parametrize("argv", [
    ["python3", "/tmp/evil.py", "-m", "pip"],
    ["python3", "-c", "import os", "-m", "pip"],
    ["python3", "/home/u/bin/pip"],
])
def test_fake_pip_is_no_build(tmp_path: Path, argv: list[str]) -> None:
    """Item 1: ``-m pip`` only as the interpreter's own option; a pip script only the trusted one."""
    r = Rec().exec(160, 150, "/usr/bin/python3.11", argv, cwd="/tmp")
    assert _root_hidden_from(tmp_path, r, 160) == [(210, "high")]


@pytest.mark.parametrize("argv,extra", [
    (["python3", "-m", "pip", "install", "."], {}),
    (["python3", "-I", "-m", "pip", "wheel", "."], {}),
    (["python3", "/usr/bin/pip3", "install", "."], {"/usr/bin/pip3": (1, 4242)}),
])
def test_genuine_pip_is_a_build(tmp_path: Path, argv: list[str],
                                extra: dict[str, tuple[int, int]]) -> None:
    """The genuine pip (module, or the installed script by inode) compiling in its tree: silent."""
    r = Rec().exec(160, 150, "/usr/bin/python3.11", argv, cwd="/tmp/pip-req-build-a")
    ino = r.gcc(200, 160, ["gcc", "-o", "t", "t.c"], "/tmp/pip-req-build-a/t",
                cwd="/tmp/pip-req-build-a")
    r.exec(210, 160, "/tmp/pip-req-build-a/t", ["./t"], ino=ino)
    assert r.run(tmp_path, extra) == []


def _listener(r: Rec, pid: int, addr: str) -> None:
    r.lines.append({"type": "listen", **r._hdr(pid), "family": "inet", "protocol": "tcp",
                    "saddr": addr, "sport": 8080, "daddr": "", "dport": 0, "backlog": 5})


@pytest.mark.parametrize("addr,want", [("127.0.0.1", []), ("::1", []),
                                       ("0.0.0.0", [(620, "medium")])])
def test_ide_server_terminal_compile(tmp_path: Path, addr: str, want: list[tuple[int, str]]) -> None:
    """Item 2: a terminal under a listening IDE server (code-server, Jupyter): a loopback
    listener is no network service; a public one at a terminal is medium, not high."""
    r = Rec().exec(600, 1, "/home/u/.vscode-server/bin/abc/node", ["node", "server-main.js"],
                   stdin="", uid=1000)
    _listener(r, 600, addr)
    r.exec(601, 600, "/usr/bin/bash", ["/bin/bash"], stdin="tty", uid=1000)
    ino = r.gcc(610, 601, ["gcc", "-o", "hello", "hello.c"], "/home/u/p/hello", cwd="/home/u/p",
                uid=1000, stdin="tty")
    r.exec(620, 601, "/home/u/p/hello", ["./hello"], ino=ino, uid=1000, stdin="tty")
    assert got(r.run(tmp_path)) == want


def test_service_script_compile_stays_high(tmp_path: Path) -> None:
    """A public listener's script compiling and running: still high (not waived)."""
    r = Rec().exec(600, 1, "/usr/sbin/apache2", ["apache2"], stdin="", uid=33)
    _listener(r, 600, "0.0.0.0")
    r.exec(601, 600, "/usr/bin/dash", ["sh", "-c", "gcc x.c -o x; ./x"], uid=33)
    ino = r.gcc(610, 601, ["gcc", "-o", "x", "x.c"], "/var/www/x", cwd="/var/www", uid=33)
    r.exec(620, 601, "/var/www/x", ["./x"], ino=ino, uid=33)
    assert got(r.run(tmp_path)) == [(620, "high")]


@pytest.mark.parametrize("extra", [{"/usr/local/go/bin/go": (1, 1000 + 19)}, {}])
def test_go_build_fetching_modules_silent(tmp_path: Path, extra: dict[str, tuple[int, int]]) -> None:
    """Item 3: go fetched modules, then copied its own product: not a downloaded binary."""
    go = "/usr/local/go/bin/go"
    r = Rec().exec(160, 100, go, ["go", "build", "-o", "app", "."], cwd="/home/u/app",
                   stdin="tty", uid=1000)
    r.connect(160)
    r.exec(161, 160, "/usr/local/go/pkg/tool/linux_amd64/link",
           ["link", "-o", "/tmp/go-build1/b001/exe/a.out"], uid=1000)
    r.write(161, "/tmp/go-build1/b001/exe/a.out", mode=0o777)
    ino = r.write(160, "/home/u/app/app", mode=0o777)
    r.exec(170, 100, "/home/u/app/app", ["./app"], ino=ino, stdin="tty", uid=1000)
    assert got(r.run(tmp_path, extra)) == []


def test_downloaded_binary_still_high(tmp_path: Path) -> None:
    """A compiled product then overwritten by a downloader keeps ``network-binary``."""
    r = Rec()
    ino = r.gcc(200, 100, ["gcc", "-o", "/root/p", "p.c"], "/root/p", stdin="tty")
    r.exec(220, 150, "/usr/bin/curl", ["curl", "-o", "/root/p", "http://x/p"])
    r.connect(220)
    r.write(220, "/root/p", ino=ino)
    r.exec(230, 100, "/root/p", ["./p"], ino=ino, stdin="tty")
    assert got(r.run(tmp_path)) == [(230, "high")]


def test_make_into_tmp_hidden_run_as_root(tmp_path: Path) -> None:
    """Item 4: ``make -C /tmp .x`` by a user, run as root from a script: a genuine make
    keeps the temp-dir, hidden-name and uid signals."""
    r = Rec().exec(160, 150, "/usr/bin/make", ["make", "-C", "/tmp", ".x"], cwd="/tmp")
    ino = r.gcc(200, 160, ["cc", ".x.c", "-o", ".x"], "/tmp/.x", cwd="/tmp",
                driver="/usr/bin/cc", uid=1000)
    r.exec(210, 150, "/tmp/.x", ["/tmp/.x"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "high")]
    assert "compiled by uid 1000, run as root" in found[0].evidence["reasons"]


def test_go_generate_into_tmp_hidden(tmp_path: Path) -> None:
    """Item 4: ``go generate`` running a script that compiles /tmp/.x, run as root."""
    r = Rec().exec(160, 150, "/usr/bin/go", ["go", "generate", "./..."], cwd="/tmp")
    r.exec(161, 160, "/usr/bin/dash", ["sh", "-c", "x"], cwd="/tmp")
    assert _root_hidden_from(tmp_path, r, 161, uid=1000) == [(210, "high")]


def test_pip_sdist_from_url_hidden_tmp_product(tmp_path: Path) -> None:
    """``pip install https://...``: the sdist's setup.py compiles /tmp/.x and runs it as root."""
    py = "/usr/bin/python3.11"
    r = Rec().exec(160, 150, py, ["python3", "-m", "pip", "install", "https://e/x.tar.gz"])
    r.connect(160)
    r.write(160, "/tmp/pip-install-ab/x_1/x.c")
    r.exec(170, 160, py, ["python3", "-c", "exec(setup.py)", "egg_info"],
           cwd="/tmp/pip-install-ab/x_1")
    ino = r.gcc(200, 170, ["gcc", "-o", "/tmp/.x", "x.c"], "/tmp/.x", cwd="/tmp/pip-install-ab/x_1")
    r.exec(210, 170, "/tmp/.x", ["/tmp/.x"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "high")] and found[0].evidence["build_system"] == "pip"


def test_bash_i_without_a_terminal_is_a_script(tmp_path: Path) -> None:
    """Item 5: ``bash -i -c`` fed from a pipe is no prompt."""
    r = Rec().exec(160, 150, "/usr/bin/bash", ["bash", "-i", "-c", "gcc ..."], stdin="pipe:[5]")
    ino = r.gcc(200, 160, ["gcc", "-o", "/root/.cache/x", "/root/x.c"], "/root/.cache/x")
    r.exec(210, 160, "/root/.cache/x", ["x"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")] and found[0].evidence["session"] == "script"


def test_daemon_program_compile_is_not_silent(tmp_path: Path) -> None:
    """Item 5: a dropper under init (no shell above, fd 0 /dev/null) compiling and running."""
    r = Rec().exec(160, 1, "/home/u/.local/bin/upd", ["upd"], stdin="file", uid=1000)
    ino = r.gcc(200, 160, ["gcc", "-o", "/home/u/.cache/kw", "/home/u/.cache/kw.c"],
                "/home/u/.cache/kw", uid=1000)
    r.exec(210, 160, "/home/u/.cache/kw", ["kw"], ino=ino, uid=1000)
    assert got(r.run(tmp_path)) == [(210, "medium")]


def test_program_at_a_terminal_silent(tmp_path: Path) -> None:
    """An editor on a terminal (a program above the compiler, fd 0 a tty): a developer."""
    r = Rec().exec(160, 100, "/usr/bin/vim", ["vim", "m.c"], stdin="tty", uid=1000)
    ino = r.gcc(200, 160, ["gcc", "-o", "m", "m.c"], "/home/u/m", cwd="/home/u", uid=1000,
                stdin="tty")
    r.exec(210, 160, "/home/u/m", ["./m"], ino=ino, uid=1000, stdin="tty")
    assert got(r.run(tmp_path)) == []


def test_sleep_past_the_window_staged_product(tmp_path: Path) -> None:
    """Item 6: ``sleep 301`` before running a hidden product in /tmp: still reported."""
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-o", "/tmp/.x", "/tmp/x.c"], "/tmp/.x", uid=1000)
    r.idle(301)
    r.exec(210, 150, "/tmp/.x", ["/tmp/.x"], ino=ino, uid=1000)
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")] and found[0].evidence["after_s"] > 300


def test_plain_product_after_the_window_silent(tmp_path: Path) -> None:
    """An ordinary product (no staging, hidden or strong signal) is not kept past the window."""
    r = Rec()
    ino = r.gcc(200, 150, ["gcc", "-o", "/root/p", "/root/p.c"], "/root/p")
    r.idle(301)
    r.exec(210, 150, "/root/p", ["/root/p"], ino=ino)
    assert got(r.run(tmp_path)) == []


def test_late_map_is_capped() -> None:
    """The late map keeps at most LATE_CAP products; the oldest go first, counted."""
    from bastion.detect.behavior.compiled import LATE_CAP, CompileAfterDelivery, Product
    rule = CompileAfterDelivery()
    for i in range(LATE_CAP + 5):
        p = Product(f"/tmp/.x{i}", (1, i + 1), 0, "/usr/bin/ld", "inode", "gcc", (), [], "", "",
                    "script", "", 0)
        rule._remember_late(p)
    assert len(rule._late) == LATE_CAP and rule.late_evicted == 5 and (1, 1) not in rule._late


def test_build_script_then_sudo_at_terminal_medium(tmp_path: Path) -> None:
    """Item 7: ``./build.sh`` then ``sudo ./tool`` at a terminal: medium, one root reason."""
    r = Rec().exec(160, 100, "/usr/bin/bash", ["bash", "./build.sh"], cwd="/home/u/t",
                   stdin="tty", uid=1000)
    ino = r.gcc(200, 160, ["gcc", "-o", "tool", "tool.c"], "/home/u/t/tool", cwd="/home/u/t",
                uid=1000, stdin="tty")
    r.exec(205, 100, "/usr/bin/sudo", ["sudo", "./tool"], stdin="tty", uid=0)
    r.exec(210, 205, "/home/u/t/tool", ["./tool"], ino=ino, stdin="tty", uid=0)
    found = r.run(tmp_path)
    assert got(found) == [(210, "medium")]
    assert sum("run as root" in w for w in found[0].evidence["reasons"]) == 1


def test_user_compile_root_run_from_script_high(tmp_path: Path) -> None:
    r = Rec().exec(160, 100, "/usr/bin/bash", ["bash", "./build.sh"], cwd="/home/u/t",
                   stdin="tty", uid=1000)
    ino = r.gcc(200, 160, ["gcc", "-o", "tool", "tool.c"], "/home/u/t/tool", cwd="/home/u/t",
                uid=1000)
    r.exec(210, 150, "/home/u/t/tool", ["./tool"], ino=ino)
    found = r.run(tmp_path)
    assert got(found) == [(210, "high")]
    assert sum("run as root" in w for w in found[0].evidence["reasons"]) == 1


def test_installed_only_on_system_devices() -> None:
    """Item 8: a root-owned file on another device (a udisks loop mount of an image at
    /media/u/X) is not a root-installed toolchain."""
    from bastion.detect.behavior.trust import ExeTrust
    table = {"/media/u/X/usr/bin/make": (77, 5), "/opt/go/bin/go": (1, 6)}
    trust = ExeTrust(dirs=(), locate=table.get, system_devs=lambda: frozenset({1}), mnt_ns=9)
    assert not trust.installed("/media/u/X/usr/bin/make", (77, 5))
    assert trust.installed("/opt/go/bin/go", (1, 6))
    assert not trust.root_only("/media/u/X/usr/bin/make", 9) and trust.root_only("/opt/go/bin/go", 9)
    # s31: a path resolved here names nothing for a process of another mount namespace
    assert not trust.root_only("/opt/go/bin/go", 10) and not trust.root_only("/opt/go/bin/go", 0)


def test_loop_mounted_make_is_no_build(tmp_path: Path) -> None:
    """A ``make`` on a user's mounted image (uid-0 files) waives nothing."""
    r = Rec().exec(160, 150, "/media/u/X/make", ["make"], cwd="/root/w")
    r.lines[-1]["exe_dev"] = 77
    ino = r.gcc(200, 160, ["gcc", "-o", "/root/w/p", "p.c"], "/root/w/p", cwd="/root/w")
    r.exec(210, 160, "/root/w/p", ["./p"], ino=ino)
    found = r.run(tmp_path, {"/media/u/X/make": (77, 1000 + len("/media/u/X/make"))})
    assert got(found) == [(210, "medium")] and found[0].evidence["build_system"] == ""


def test_daemon_on_dev_null_is_no_terminal(tmp_path: Path) -> None:
    """Item 5, live: a daemon's fd 0 is /dev/null, a character device the ABI reports as
    ``tty``; /proc tells it from a terminal."""
    r = Rec().exec(160, 1, "/home/u/.local/bin/upd", ["upd"], stdin="tty", uid=1000)
    ino = r.gcc(200, 160, ["gcc", "-o", "/home/u/.cache/kw", "/home/u/.cache/kw.c"],
                "/home/u/.cache/kw", uid=1000, stdin="tty")
    r.exec(210, 160, "/home/u/.cache/kw", ["kw"], ino=ino, uid=1000, stdin="tty")
    null = ("/dev/null", "/dev/null", "/dev/null")
    assert got(r.run(tmp_path, stdio={160: null, 200: null, 210: null})) == [(210, "medium")]
    pts = ("/dev/pts/3",) * 3
    assert got(r.run(tmp_path, stdio={160: pts, 200: pts, 210: pts})) == []


def test_a_script_under_a_make_far_above_is_no_build(tmp_path: Path) -> None:
    """s17 CI: every compile in a process tree a genuine make once started counted as a
    build (a test suite under ``make test``, a CI job's make): only the program that
    launched the compile (past its shells) is judged.  make -> python -> sh -c script ->
    gcc: reported; make -> sh -c recipe -> gcc stays a build."""
    r = Rec().exec(160, 150, "/usr/bin/make", ["make", "test"], cwd="/root/w", ino=4242)
    r.exec(170, 160, "/usr/bin/python3", ["python3", "-m", "pytest"], cwd="/root/w")
    r.exec(180, 170, "/usr/bin/dash", ["/bin/sh", "-c", "gcc -o p p.c && ./p"], cwd="/root/w")
    ino = r.gcc(200, 180, ["gcc", "-o", "p", "p.c"], "/root/w/p", cwd="/root/w")
    r.exec(210, 180, "/root/w/p", ["./p"], ino=ino)
    assert got(r.run(tmp_path)) == [(210, "medium")]
    r = Rec().exec(160, 150, "/usr/bin/make", ["make", "check"], cwd="/root/w", ino=4242)
    r.exec(180, 160, "/usr/bin/dash", ["/bin/sh", "-c", "gcc -o t t.c && ./t"], cwd="/root/w")
    ino = r.gcc(200, 180, ["gcc", "-o", "t", "t.c"], "/root/w/t", cwd="/root/w")
    r.exec(210, 180, "/root/w/t", ["./t"], ino=ino)
    (tmp_path / "b").mkdir()
    assert r.run(tmp_path / "b") == []          # make (its own inode: not dash's) still a build
