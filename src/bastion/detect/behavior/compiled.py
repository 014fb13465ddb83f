"""Compile after delivery (T1027.004, s17-compile): a program built on the host and run.

A dropper that ships C (or Go, Rust, ...) instead of a binary evades every check on
downloaded executables: the compiler writes the binary.  Compiling and running is also
what every developer, build and CI job does, so the rule matches the *structure* of
the act and its context, never a command line:

* **the product**: a file written by a linker or compiler — GNU ld (bfd, gold), lld,
  mold, go's ``link``, tcc, and ``go`` itself when it copies a built executable —
  recorded by the write-open's (device, inode) (and its path, followed through
  renames), then **executed within** :data:`WINDOW_NS`; the writer is recognised by
  its executable: the root-installed file of that name (by inode in the trust
  directories, else a root-only file wherever the toolchain lives:
  ``/usr/lib/gcc/.../collect2``, go's ``pkg/tool/.../link``), else by name only (a
  user's own toolchain; said in the evidence).  Detection only: a name-only writer
  adds findings, it never exempts anything.
* **in-memory compile-and-run**: ``tcc -run``, and a product written to a memfd or an
  unlinked file and executed from there (``gcc -x c - -o /proc/self/fd/N`` + fexecve).
* **who compiled**: the toolchain processes above the writer are skipped (collect2,
  cc1, the driver ``gcc``/``clang``/``rustc``/``go``...); the driver's own command
  line gives the sources (operands by gcc's option table, ``-`` after ``-x LANG`` is
  stdin) resolved against the driver's cwd at exec.
* **a build system** (make, ninja, cmake, meson, cargo, scons, bazel, ``go test``,
  dpkg-buildpackage/debuild/dh/rpmbuild, dkms, libtool, package managers, pip) among
  the compile's ancestors, **by executable identity** (:func:`.base.trusted_as`:
  inode in the trust directories, or the interpreter running the installed script;
  or the root-installed file of that name, :meth:`.trust.ExeTrust.installed`), makes
  the compile a build: only the strong signals below are reported, and those no real
  build produces: the product directly in /tmp, /var/tmp or /dev/shm, a hidden name,
  compiled by another uid and run as root.  A genuine build tool runs whatever recipe
  it is given, so an attacker's Makefile is a build too — which is why these are never
  waived.  pip counts only as the genuine interpreter's own ``-m pip`` option, or its
  script when that is the trusted file (:func:`.base.python_installer`).
* **configure probes**: ``./configure`` is a shell script in the source tree, no
  identity to trust.  A script named ``configure`` whose product is ``conftest*`` in
  its own cwd is treated as an autoconf probe, which only waives the weakest signal
  (the compile ran from a non-interactive script).  Anyone can name a script
  ``configure``: the strong signals, temp-dir staging spots, hidden names and
  in-memory runs still raise, so the name buys an attacker nothing but the silence
  of the plain non-interactive compile in an ordinary directory.

Severity of the product's run (outside a build):

* **medium** — compiled from a non-interactive context: a shell or script (``sh -c``, a
  script file, commands from anything but a terminal, an interpreter's script; ``-i``
  counts only with fd 0 a terminal), or a program with no shell above it and no
  terminal on the compile's fd 0 (a daemonised dropper) — interactivity is fd 0 at
  exec being a tty, never a flag the caller sets;
  or the source or the binary in a *staging spot* (directly in /tmp, /var/tmp, or
  anywhere under /dev/shm or /run/shm; a hidden name or a hidden directory in a temp
  dir), or a hidden binary name anywhere, or run in memory;
* **high** — a source written by a downloader (:meth:`.provenance.Provenance.from_network`)
  or by a process of untrusted provenance (a network-facing service's tree, a
  network-written or fileless program, a decoded payload; likewise when the compile
  or the run happens in such a tree, or a pipe feeding the compiler's stdin was
  written by a process that connected out); or, from a non-interactive context, the
  product run as root out of a staging spot, or run as root (not from a terminal)
  when a non-root user compiled it.  A listener on loopback only is no network
  service (an IDE's server, Jupyter, bazel); a public one above a compile at a
  terminal or under a genuine build is medium alone.  ``network-binary`` written by
  the product's own writer (go fetching modules, then copying its build) is dropped.

Products run later than :data:`WINDOW_NS` are forgotten, except those suspicious when
written (staging spot, hidden name, untrusted source or tree): kept :data:`LATE_NS`
in a map capped at :data:`LATE_CAP` (the oldest dropped when full, counted in
``late_evicted``), so ``sleep 301`` buys nothing.

A build tree deep in /tmp (pytest's, pip's, a tarball unpacked in /tmp) is no staging
spot: a developer compiling there at a terminal is silent here (``exec_from_tmp``
reports running from /tmp, as before).  State is bounded (:class:`.state.BoundedState`,
the pack's :class:`.state.Limits`); nothing is read from the file system but the
toolchain identities :class:`.trust.ExeTrust` caches.
"""

from __future__ import annotations

import functools
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bastion.detect.behavior.base import (
    NS, PACKAGE_MANAGERS, BehaviorRule, Hit, RuleSettings, base, is_interpreter, is_loopback,
    is_shell, norm_interp, python_installer, python_module_or_script, trusted_as,
)
from bastion.detect.behavior.provenance import LOCAL_REASONS, TMP_DIRS
from bastion.detect.behavior.shellargs import parse_shell_argv
from bastion.detect.behavior.state import BoundedState, Limits, ProcKey, proc_key
from bastion.detect.engine import RuleContext
from bastion.events import Event, ExecEvent, FileEvent
from bastion.proctable import ProcEntry

WINDOW_NS = 300 * NS     # a product run later than this after its write is not "compile and run"
# a product already suspicious when written (staging spot, hidden name, untrusted source or
# tree) is kept this long in a map of at most LATE_CAP entries (oldest dropped when full)
LATE_NS = 3600 * NS
LATE_CAP = 1024

# writers of a product (normalised names, see _tool)
LINKERS = frozenset({"ld", "ld.bfd", "ld.gold", "gold", "ld.lld", "lld", "ld64.lld", "rust-lld",
                     "mold", "ld.mold", "tcc", "link"})
# compiler drivers (their argv names the sources); "go" also writes products (copies)
DRIVERS = frozenset({"gcc", "cc", "c++", "g++", "clang", "clang++", "tcc", "go", "rustc",
                     "gccgo", "c89", "c99", "gfortran"})
# the rest of a toolchain (skipped between the writer and the one who compiled)
TOOLCHAIN = LINKERS | DRIVERS | frozenset({"collect2", "cc1", "cc1plus", "cc1obj", "as",
                                           "lto-wrapper", "lto1", "compile", "asm", "cgo"})
# build systems (by executable identity); ``go`` only for its test/vet/generate harnesses
BUILD_SYSTEMS = frozenset({"make", "gmake", "bmake", "ninja", "samu", "cmake", "ctest", "meson",
                           "cargo", "scons", "bazel", "bazelisk", "dpkg-buildpackage", "debuild",
                           "dh", "rpmbuild", "dkms", "libtool", *PACKAGE_MANAGERS})
GO_HARNESS = frozenset({"test", "vet", "generate"})
# pass-through launchers between a shell and the compiler (and sudo, su: a session's hop)
PASS = frozenset({"env", "nice", "ionice", "nohup", "timeout", "setsid", "stdbuf", "chrt",
                  "taskset", "xargs", "sudo", "su", "doas", "time", "ccache", "distcc"})
SOURCE_SUFFIXES = frozenset({".c", ".cc", ".cpp", ".cxx", ".c++", ".C", ".i", ".ii", ".s", ".S",
                             ".sx", ".m", ".mm", ".go", ".rs", ".f", ".f90", ".f95", ".zig",
                             ".h", ".hpp"})
# gcc/clang/tcc options whose value is the next word (when not attached)
_VALUED = frozenset({"-o", "-x", "-I", "-L", "-l", "-D", "-U", "-include", "-imacros", "-isystem",
                     "-idirafter", "-iprefix", "-iquote", "-isysroot", "-MF", "-MT", "-MQ", "-T",
                     "-Xlinker", "-Xassembler", "-Xpreprocessor", "-Xclang", "-aux-info", "-u",
                     "-z", "-e", "--param", "-target", "--target", "-arch", "-B", "-G",
                     "--sysroot", "-specs", "-wrapper", "-soname"})
_RUSTC_VALUED = frozenset({"-o", "-L", "-l", "--crate-type", "--crate-name", "--edition", "--emit",
                           "--out-dir", "-C", "--cfg", "--target", "--extern", "--cap-lints",
                           "-A", "-W", "-D", "-F", "--cfg", "--sysroot", "--error-format"})
_GO_VALUED = frozenset({"-o", "-p", "-tags", "-ldflags", "-gcflags", "-asmflags", "-mod",
                        "-modfile", "-overlay", "-pkgdir", "-buildmode", "-compiler",
                        "-exec", "-toolexec", "-C", "-coverpkg", "-covermode", "-pgo"})
_TRIPLE = re.compile(r"^[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+(?:-[a-z0-9_]+)?-(?=[a-z])")
_VERSION = re.compile(r"-\d+(?:\.\d+)*$")
O_ACCMODE, O_CREAT, O_TRUNC = 0o3, 0o100, 0o1000


@functools.lru_cache(maxsize=4096)
def tool_name(exe: str) -> str:
    """``/usr/bin/x86_64-linux-gnu-gcc-12`` -> ``gcc``; ``clang-14`` -> ``clang``."""
    name = _VERSION.sub("", _TRIPLE.sub("", base(exe)))
    return "ld" if name.startswith("ld.") and name not in LINKERS else name


def staging_spot(path: str) -> bool:
    """Where droppers stage: directly in /tmp or /var/tmp, anywhere under /dev/shm or
    /run/shm (memory only: no build tree lives there), or a hidden name or hidden
    directory inside a temp dir.  A build tree deeper in /tmp is not one."""
    if not path.startswith("/"):
        return False
    if path.startswith(("/dev/shm/", "/run/shm/")):
        return True
    for t in TMP_DIRS:
        if path.startswith(t + "/"):
            rest = path[len(t) + 1:].split("/")
            return len(rest) == 1 or any(p.startswith(".") and p not in (".", "..") for p in rest)
    return False


def hidden(path: str) -> bool:
    b = base(path)
    return b.startswith(".") and b not in (".", "..")


def sources_of(tool: str, argv: tuple[str, ...], cwd: str) -> tuple[list[str], bool, bool]:
    """(the source files, absolute; reads a source from stdin; runs it in memory) of a
    compiler driver's command line, by its option table."""
    words = list(argv[1:])
    out: list[str] = []
    stdin = run = False
    if tool == "go":
        if not words or words[0] not in ("run", "build", "install"):
            return [], False, False
        words = words[1:]
        valued = _GO_VALUED
    elif tool == "rustc":
        valued = _RUSTC_VALUED
    else:
        valued = _VALUED
    lang = False
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if tool == "go" and w.startswith("-") and "=" not in w and w in valued:
            i += 1
            continue
        if tool == "tcc" and w == "-run":
            run = True
            continue
        if w == "-":
            stdin = stdin or lang or tool == "tcc"
            if run:
                break
            continue
        if w.startswith("-"):
            if w == "-x":
                lang = True
            if w in valued:
                if w == "-x" and i < len(words) and words[i] == "none":
                    lang = False
                i += 1
            continue
        if os.path.splitext(w)[1] in SOURCE_SUFFIXES or (tool == "go" and w == "."):
            p = w if w.startswith("/") else os.path.normpath(os.path.join(cwd or "/", w))
            out.append(p)
            if run:
                break       # tcc -run FILE args...: the rest are the program's arguments
        elif lang and tool != "go":
            out.append(w if w.startswith("/") else os.path.normpath(os.path.join(cwd or "/", w)))
    return out, stdin, run


@dataclass
class _Info:
    cwd: str
    stdin: str
    script: str = ""


@dataclass
class Product:
    path: str
    ident: tuple[int, int]
    written_ns: int
    writer: str                       # the writer's executable
    identified: str                   # inode | root-installed | name
    driver: str                       # the compiler driver's tool name ("" unknown)
    argv: tuple[str, ...]             # the driver's command line
    sources: list[str]
    stdin_pipe: str                   # the driver's stdin pipe when it read its source there
    build: str                        # the build system above the compile ("": none)
    session: str                      # script | configure | interactive | program | unknown
    session_detail: str
    uid: int
    compile_reasons: dict[str, str] = field(default_factory=dict)
    launcher_cwd: str = ""
    late: bool = False                # kept LATE_NS (suspicious when written)


class CompileAfterDelivery(BehaviorRule):
    """A program compiled on the host and run from an ad-hoc context (module doc)."""

    name = "behavior.compile_after_delivery"
    event_types = frozenset({"exec", "open", "rename"})
    read_opens = False   # a read-only open has no written path: nothing to match
    attack = ("T1027.004",)
    severity = "medium"
    action = "alert"
    description = "a program compiled on the host and run outside a build"

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None) -> None:
        super().__init__(settings, limits)
        self._info: BoundedState[ProcKey, _Info] = self.state()          # shells and toolchain
        self._products: BoundedState[tuple[int, int], Product] = self.state()
        self._paths: BoundedState[str, Product] = self.state()
        self._pipe_writer: BoundedState[str, ProcKey] = self.state()     # stdout pipe -> exec'd writer
        self._src_writer: BoundedState[str, str] = self.state()          # source -> untrusted writer
        # products suspicious at their write, kept LATE_NS (``sleep 301`` outlasts the
        # state's TTL); LRU-capped at LATE_CAP: when full the oldest entry is dropped
        # (a flood of >LATE_CAP suspicious products evicts the first; counted in late_evicted)
        self._late: OrderedDict[tuple[int, int], Product] = OrderedDict()
        self.late_evicted = 0

    # -- engine

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        if isinstance(ev, FileEvent):
            if ev.op == "rename":
                moved = self._paths.pop(ev.path)
                if moved is not None:
                    moved.path = ev.path2
                    self._paths.put(ev.path2, ev.time_ns, moved)
            elif ev.op == "open" and ev.flags & (O_ACCMODE | O_CREAT | O_TRUNC):
                self._write(ev, ctx)
            return []
        if not isinstance(ev, ExecEvent):
            return []
        now = ev.time_ns
        key = proc_key(ev)
        tool = tool_name(ev.proc.exe)
        if ev.stdout.startswith("pipe:"):
            self._pipe_writer.put(ev.stdout, now, key)
        if tool in TOOLCHAIN or is_shell(ev.proc.exe):
            self._info.put(key, now, _Info(ev.cwd or "/", ev.stdin, ev.script))
        hits: list[Hit] = []
        if tool == "tcc":
            h = self._tcc_run(ev, ctx)
            if h is not None:
                hits.append(h)
        prod = self._product_of(ev)
        if prod is not None and now - prod.written_ns <= (LATE_NS if prod.late else WINDOW_NS):
            h = self._decide(prod, ev, ctx)
            if h is not None:
                hits.append(h)
        return hits

    # -- the write of a product

    def _write(self, ev: FileEvent, ctx: RuleContext) -> None:
        path = ev.path
        if not path or path.startswith(("/proc/", "/sys/")) or (
                path.startswith("/dev/") and not path.startswith("/dev/shm/")):
            return
        now = ev.time_ns
        if os.path.splitext(path)[1] in SOURCE_SUFFIXES and self.prov is not None:
            wreasons, _ = self.prov.reasons(ev, ctx)
            strong = {r: d for r, d in wreasons.items() if r not in LOCAL_REASONS}
            if strong:
                r = sorted(strong)[0]
                self._src_writer.put(path, now, f"{base(ev.proc.exe) or ev.proc.comm} "
                                                f"({r}: {strong[r]})")
        tool = tool_name(ev.proc.exe)
        if tool not in LINKERS and tool != "go":
            return
        if tool == "go" and not (ev.flags & O_CREAT and ev.mode & 0o111):
            return          # go's caches and downloads; its copy of a built program is 0777
        chain = ctx.procs.ancestry(ev.proc.pid, 16)
        if not chain or not chain[0].same_process(ev.proc.start_ns):
            return
        writer = chain[0]
        ident_w = (writer.exe_dev, writer.exe_ino)
        if self.trust.is_tool(ident_w, [base(writer.exe)]) is not None:
            identified = "inode"
        elif self.trust.installed(writer.exe, ident_w):
            identified = "root-installed"
        else:
            identified = "name"
        # the toolchain above the writer, then the one who compiled
        k = 0
        driver: ProcEntry | None = None
        while k < len(chain) and tool_name(chain[k].exe) in TOOLCHAIN:
            if tool_name(chain[k].exe) in DRIVERS:
                driver = chain[k]
            k += 1
        above = chain[k:]
        dtool = tool_name(driver.exe) if driver is not None else ""
        sources: list[str] = []
        stdin_pipe = ""
        if driver is not None:
            info = self._info.get((driver.pid, driver.start_ns), now)
            cwd = info.cwd if info is not None else ""
            sources, from_stdin, _ = sources_of(dtool, driver.cmdline, cwd)
            if from_stdin and info is not None:
                stdin_pipe = info.stdin or "stdin"
        build = self._build_system(driver, above)
        session, detail, lcwd = self._session(above, now)
        if session in ("program", "unknown") and self._tty_compile(driver, writer, now):
            session, detail = "interactive", f"{detail or base(writer.exe)} on a terminal"
        reasons: dict[str, str] = {}
        if self.prov is not None:
            got, _ = self.prov.reasons(ev, ctx)
            reasons = {r: d for r, d in got.items() if r not in LOCAL_REASONS}
        ident = (ev.dev, ev.ino)
        prod = Product(path, ident, now, writer.exe, identified, dtool,
                       tuple(driver.cmdline[:16]) if driver is not None else (),
                       sources, stdin_pipe, build, session, detail,
                       driver.uid if driver is not None else ev.proc.uid, reasons, lcwd)
        if ident != (0, 0):
            self._products.put(ident, now, prod)
            if self._suspicious_write(prod, now):
                self._remember_late(prod)
        self._paths.put(path, now, prod)

    def _remember_late(self, prod: Product) -> None:
        prod.late = True
        self._late[prod.ident] = prod
        self._late.move_to_end(prod.ident)
        while len(self._late) > LATE_CAP:
            self._late.popitem(last=False)      # the oldest: LRU cap, counted
            self.late_evicted += 1

    def _suspicious_write(self, prod: Product, now: int) -> bool:
        """A staging spot, a hidden name, an untrusted tree or source at the write."""
        if staging_spot(prod.path) or hidden(prod.path) or prod.compile_reasons:
            return True
        for src in prod.sources:
            if staging_spot(src) or self._src_writer.get(src, now) is not None or (
                    self.prov is not None and self.prov.from_network(src, now) is not None):
                return True
        return False

    def _product_of(self, ev: ExecEvent) -> Product | None:
        """The product ``ev`` runs (forgotten: one finding per product): by the executed
        file's identity, else by its path when the file is the one written there."""
        ident = (ev.exe_dev, ev.exe_ino)
        prod = self._products.pop(ident) if ident != (0, 0) else None
        if prod is None and ident != (0, 0):
            prod = self._late.get(ident)
        exe = ev.proc.exe or ev.filename
        if prod is None and exe:
            prod = self._paths.get(exe, ev.time_ns)
            if prod is not None and prod.ident != (0, 0) and ident != (0, 0) and prod.ident != ident:
                return None     # another file under that name now (a copy, not the product)
            if prod is not None:
                self._products.pop(prod.ident)
        if prod is not None:
            self._paths.pop(prod.path)
            self._late.pop(prod.ident, None)
        return prod

    # -- context of a compile

    def _build_system(self, driver: ProcEntry | None, above: list[ProcEntry]) -> str:
        """The build system that launched the compile, by executable identity: the first
        ancestor above the toolchain that is not a shell or a wrapper (a recipe's
        ``sh -c``, ``env``, ``nice``), or, when the toolchain's own caller is an
        interpreter (a build backend pip or ``python -m build`` runs), that caller's
        parent.  Not any ancestor: a script run by a test suite under ``make test`` (or
        by anything a make once started) is not a build (s17: every compile under a
        CI's ``make`` was exempt)."""
        if driver is not None and tool_name(driver.exe) == "go" and len(driver.cmdline) > 1 \
                and driver.cmdline[1] in GO_HARNESS and self._genuine(driver, "go"):
            return f"go {driver.cmdline[1]}"
        for i, e in enumerate(above):
            name = trusted_as(e, BUILD_SYSTEMS, self.trust)
            if name is not None:
                return name
            t = tool_name(e.exe)
            if t in BUILD_SYSTEMS and self._genuine(e, t):
                return t
            if t == "go" and len(e.cmdline) > 1 and e.cmdline[1] in GO_HARNESS \
                    and self._genuine(e, "go"):
                return f"go {e.cmdline[1]}"
            pip = python_installer(e, self.trust)
            if pip is not None:
                return pip
            kind, mod = python_module_or_script(e.cmdline)
            if kind == "module" and mod == "build" and \
                    self.trust.is_tool((e.exe_dev, e.exe_ino), [base(e.exe)]) is not None:
                return "python -m build"
            if is_shell(e.exe) or base(e.exe) in PASS or tool_name(e.exe) in PASS:
                continue                       # the recipe's shell, a wrapper: look through
            if i == 0 and is_interpreter(e.exe):
                continue                       # a build backend: its parent decides
            break                              # a program that is no build system launched it
        return ""

    def _genuine(self, e: ProcEntry, name: str) -> bool:
        ident = (e.exe_dev, e.exe_ino)
        return self.trust.is_tool(ident, [name, base(e.exe)]) is not None or \
            self.trust.installed(e.exe, ident)

    def _session(self, above: list[ProcEntry], now: int) -> tuple[str, str, str]:
        """(kind, detail, cwd of the launching shell): how the compile was launched.  A
        program between the compiler and a shell (a dropper, an IDE) is looked through:
        the shell or interpreter above it says whether a script or a prompt runs it."""
        via = ""
        for e in above:
            name = base(e.exe)
            if name in PASS or tool_name(e.exe) in PASS:
                continue
            kind, detail, cwd = self._launcher(e, now)
            if kind == "program":
                via = via or detail
                continue
            return kind, (f"{detail} via {via}" if via else detail), cwd
        return ("program", via, "") if via else ("unknown", "", "")

    def _tty_compile(self, driver: ProcEntry | None, writer: ProcEntry, now: int) -> bool:
        """fd 0 of the compile (the driver's, else the writer's, at exec) is a terminal."""
        for e in (driver, writer):
            if e is None:
                continue
            info = self._info.get((e.pid, e.start_ns), now)
            if info is not None:
                return self._terminal(e.pid, info.stdin)
        return False

    def _terminal(self, pid: int, fd0: str) -> bool:
        """fd 0 of ``pid`` (its kind at exec, ``fd0``) is a terminal: the ABI says a
        character device; live, /proc tells a terminal from /dev/null (a daemon's)."""
        if fd0 != "tty":
            return False
        fds = self.prov.stdio(pid) if self.prov is not None and \
            self.prov.stdio is not None else None
        if fds:
            return fds[0].startswith(("/dev/pts/", "/dev/tty", "/dev/console"))
        return True

    def _launcher(self, e: ProcEntry, now: int) -> tuple[str, str, str]:
        name = base(e.exe)
        info = self._info.get((e.pid, e.start_ns), now)
        cwd = info.cwd if info is not None else ""
        if is_shell(e.exe):
            kind = self.trust.shell(e.exe, (e.exe_dev, e.exe_ino), e.pid) or name
            args = parse_shell_argv(kind, e.cmdline)
            if args.interactive and info is not None and self._terminal(e.pid, info.stdin):
                return "interactive", f"{name} -i", cwd     # -i alone is the caller's flag
            if args.script or (info is not None and info.script):
                script = (info.script if info is not None and info.script else args.script) or ""
                if not script.startswith("/"):
                    script = os.path.normpath(os.path.join(cwd or "/", script))
                if base(script) == "configure":
                    return "configure", script, cwd
                return "script", f"{name} {script}", cwd
            if args.command:
                return "script", " ".join(e.cmdline)[:100], cwd
            stdin = info.stdin if info is not None else None
            if stdin is not None and stdin != "tty":
                return "script", f"{name} reading commands from {stdin or 'a closed fd 0'}", cwd
            fds = self.prov.stdio(e.pid) if self.prov is not None and \
                self.prov.stdio is not None else None
            if fds and fds[0] == "/dev/null":
                return "script", f"{name} reading commands from /dev/null", cwd
            return "interactive", f"{name} on {fds[0] if fds else stdin or 'a terminal'}", cwd
        if is_interpreter(e.exe):
            arg = next((a for a in e.cmdline[1:] if not a.startswith("-")), "")
            return "script", f"{norm_interp(name)} {arg}".strip(), cwd
        return "program", name or e.comm, cwd

    # -- decisions

    def _tcc_run(self, ev: ExecEvent, ctx: RuleContext) -> Hit | None:
        srcs, from_stdin, run = sources_of("tcc", ev.argv, ev.cwd or "/")
        if not run:
            return None
        chain = ctx.procs.ancestry(ev.proc.pid, 16)
        above = chain[1:] if chain and chain[0].same_process(ev.proc.start_ns) else []
        build = self._build_system(None, above)
        session, detail, lcwd = self._session(above, ev.time_ns)
        if session in ("program", "unknown") and self._terminal(ev.proc.pid, ev.stdin):
            session, detail = "interactive", f"{detail or 'tcc'} on a terminal"
        reasons: dict[str, str] = {}
        if self.prov is not None:
            got, _ = self.prov.reasons(ev, ctx)
            reasons = {r: d for r, d in got.items() if r not in LOCAL_REASONS}
        prod = Product("(memory)", (0, 0), ev.time_ns, ev.proc.exe, "name", "tcc", ev.argv[:16],
                       srcs, ev.stdin if from_stdin else "", build, session, detail,
                       ev.proc.uid, reasons, lcwd)
        return self._decide(prod, ev, ctx, in_memory="tcc -run")

    def _decide(self, prod: Product, ev: ExecEvent, ctx: RuleContext,
                in_memory: str = "") -> Hit | None:
        now = ev.time_ns
        strong: list[str] = []
        for src in prod.sources:
            if self.prov is not None and (net := self.prov.from_network(src, now)) is not None:
                strong.append(f"source {src} downloaded by {net}")
            if (w := self._src_writer.get(src, now)) is not None:
                strong.append(f"source {src} written by {w}")
        if prod.stdin_pipe.startswith("pipe:") and self.prov is not None:
            feeder = self._pipe_writer.get(prod.stdin_pipe, now)
            peer = self.prov.netted(feeder, now) if feeder is not None else None
            if peer is not None:
                strong.append(f"source fed through {prod.stdin_pipe} by a process connected to {peer}")
        exe = ev.proc.exe or prod.path
        if not in_memory and (exe.startswith("/memfd:") or (ev.exe_nlink == 0 and ev.exe_ino)
                              or prod.path.startswith("/memfd:")):
            in_memory = f"run from {exe}"
        tree = dict(prod.compile_reasons)
        if self.prov is not None:
            got, _ = self.prov.reasons(ev, ctx)
            run_reasons = {r: d for r, d in got.items() if r not in LOCAL_REASONS}
            if in_memory and not prod.compile_reasons.get("fileless"):
                run_reasons.pop("fileless", None)   # the product's own memfd run: in memory
            tree.update(run_reasons)
        # go copies the binary it built (after fetching modules): the toolchain is the
        # product's own writer, not a download of it (s17 item 3)
        nb = tree.get("network-binary", "")
        if nb.startswith(f"{exe} (written by {base(prod.writer)} ") or \
                nb.startswith(f"{prod.path} (written by {base(prod.writer)} "):
            tree.pop("network-binary")
        # a service listening on loopback only (an IDE's server, Jupyter, bazel): not
        # network-facing (s17 item 2)
        svc = tree.get("network-service", "")
        if svc and _loopback_listener(svc):
            tree.pop("network-service")
        adhoc: list[str] = []
        interactive = prod.session == "interactive"
        if "network-service" in tree and len(tree) == 1 and (interactive or prod.build):
            adhoc.append(f"network-service: {tree.pop('network-service')}")
        for r in sorted(tree):
            strong.append(f"{r}: {tree[r]}")
        root_staged = False
        non_interactive = not interactive
        run_tty = self._terminal(ev.proc.pid, ev.stdin)
        staged_product = [p for p in (prod.path if not in_memory else "", exe)
                          if p and staging_spot(p)]
        if not prod.build:
            if prod.session == "script":
                adhoc.append(f"compiled from a non-interactive script ({prod.session_detail})")
            elif prod.session in ("program", "unknown"):
                adhoc.append("compiled with no terminal on fd 0"
                             + (f" ({prod.session_detail})" if prod.session_detail else ""))
            if prod.stdin_pipe and prod.session in ("script", "configure", "program"):
                adhoc.append(f"source read from {prod.stdin_pipe}")
            staged = [p for p in (prod.path if not in_memory else "", *prod.sources)
                      if p and staging_spot(p)]
            if prod.path != exe and staging_spot(exe):
                staged.append(exe)
            if staged:
                adhoc.append(f"staged in a temp dir: {staged[0]}")
        else:
            # a genuine build tool runs any recipe: these never come from a real build
            # (s17 item 4): the product directly in /tmp or /dev/shm
            direct = [p for p in staged_product if os.path.dirname(p) in (*TMP_DIRS, "/dev/shm",
                                                                         "/run/shm")
                      or p.startswith(("/dev/shm/", "/run/shm/"))]
            if direct:
                adhoc.append(f"built directly into a temp dir: {direct[0]}")
        if hidden(exe) or hidden(prod.path):
            adhoc.append(f"hidden name: {base(exe) if hidden(exe) else base(prod.path)}")
        if non_interactive and ev.proc.euid == 0 and staged_product and (
                not prod.build or any("directly" in a for a in adhoc)):
            root_staged = True
        if ev.proc.euid == 0 and prod.uid != 0:
            adhoc.append(f"compiled by uid {prod.uid}, run as root")
            if non_interactive and not run_tty:
                root_staged = True
        if prod.session == "configure" and not prod.build:
            conftest = base(prod.path).startswith("conftest") and \
                os.path.dirname(prod.path) == (prod.launcher_cwd or os.path.dirname(prod.path))
            if not conftest:
                adhoc.insert(0, f"compiled from a non-interactive script ({prod.session_detail})")
        if not strong and not adhoc and not in_memory:
            return None
        severity = "high" if strong or root_staged else "medium"
        why = strong + ([f"in memory: {in_memory}"] if in_memory else []) + adhoc
        if root_staged and not strong and not any(w.endswith("run as root") for w in why):
            why.append("run as root")
        src = prod.sources[0] if prod.sources else (prod.stdin_pipe or "?")
        who = prod.driver or base(prod.writer)
        title = f"Compiled and ran {exe} ({who} of {src}): {why[0]}"
        ev_: dict[str, Any] = {
            "binary": exe, "written_as": prod.path, "writer": prod.writer,
            "writer_identified_by": prod.identified, "driver": prod.driver,
            "argv": list(prod.argv), "sources": prod.sources, "session": prod.session,
            "session_detail": prod.session_detail, "build_system": prod.build,
            "compile_uid": prod.uid, "run_euid": ev.proc.euid, "reasons": why,
            "after_s": round((now - prod.written_ns) / NS, 3),
        }
        if in_memory:
            ev_["in_memory"] = in_memory
        return Hit(title, ev_, severity=severity)


def _loopback_listener(detail: str) -> bool:
    """Provenance's ``network-service`` detail ("exe listen ADDR:PORT") names a
    loopback-only address."""
    addr = detail.rsplit(" ", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return is_loopback(addr)


COMPILE_RULES: tuple[type[BehaviorRule], ...] = (CompileAfterDelivery,)

__all__ = ["COMPILE_RULES", "CompileAfterDelivery", "Product", "sources_of", "staging_spot",
           "tool_name", "WINDOW_NS"]
