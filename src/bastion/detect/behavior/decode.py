"""Decoded embedded data (s16-decode, issue 15): a script carrying its payload encoded.

Three behaviours, each matched on structure — an interpreter's own argv read by its
option table, the kernel's fd 0/1 pipe inodes at exec, who wrote a pipe — never on an
attack's command line:

* :class:`InlineDecode`: an interpreter one-liner (``python3 -c``, ``perl -e``, ``ruby
  -e``, ``node -e``, ``php -r``) whose inline code calls a decoder (base64, hex, rot13,
  zlib/gzip, ``pack("H*")``, ``Buffer.from(x, 'base64')``...).  Medium; high when the
  decoded result goes to a shell (its child shell, the shell it exec's itself into, or a
  shell reading its stdout pipe) and no older rule already says so.
* :class:`ScriptDecode`: a command-line decoder (``base64 -d``, ``basenc -d``, ``xxd -r``,
  ``openssl enc -d -a``, ``uudecode``, ``gzip -d``/``zcat``) fed by the script itself —
  its stdin a pipe the script's shell wrote (``echo``/``printf`` builtins, a here-string
  or here-document) or a file a shell wrote a minute before — in a non-interactive
  script.  Medium; high when its output is piped into a shell no older rule covers.
* :class:`GeneratedShell`: a shell reading its commands from a pipe the script's own
  shell wrote (``echo "$cmd" | sh``, ``printf '%s\\n' "$c" | bash``, ``cat <<EOF | sh``).
  Medium.

*Who wrote a pipe.*  Every exec reports its fd 1 (ABI 1.4); a pipe no exec'd program
had as its stdout was written by the shell that made it (a builtin in a forked
subshell, or the shell's own here-string/here-document), when the reader's feeder is a
shell and the pipe is not one that shell inherited.  ``echo``/``printf`` programs count
as the shell's words; ``cat`` with no file operand passes on what its own stdin got.
The writer of a reader's stdin has exec'd, if it ever does, before the reader has read
it all: decisions wait for the reader's exit (or its first child).

*Interactive or not.*  The nearest shell that runs a script or ``-c`` makes it a script;
a shell reading commands from a terminal (kernel fd 0 a character device, live a
/dev/pts or /dev/tty) is an administrator's prompt: silent.  A shell reading commands
from a pipe or file (``curl ... | sh``, ``sh < x``) is a script too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from bastion.detect.behavior.base import (
    NS, PACKAGE_MANAGERS, BehaviorRule, Hit, RuleSettings, base, is_interpreter, is_shell,
    norm_interp,
)
from bastion.detect.behavior.rules import (
    Probes, _shell_reads_stdin, decoder, inline_decoder, reads_commands_from_stdin, write_intent,
)
from bastion.detect.behavior.shellargs import parse_shell_argv
from bastion.detect.behavior.state import BoundedState, Limits, ProcKey, proc_key
from bastion.detect.engine import Finding, RuleContext
from bastion.events import Event, ExecEvent, ExitEvent, FileEvent


# ---- the inline code of an interpreter, read by its own options ---------------------------

# per interpreter family: short options taking a value (attached or the next word), the
# ones whose value is inline code, options whose value is optional and only ever attached
# (the rest of the cluster: ``perl -pi.bak -e``, ``perl -ie`` is -i with suffix "e"), and
# long options (code / valued)
_PY_VALUED, _PY_CODE = frozenset("WXQ"), frozenset("c")
_PERL_VALUED, _PERL_CODE = frozenset("MmI"), frozenset("eE")
_PERL_OPTIONAL = frozenset("idDxFV")
# ``-C[number/list]``: digits or the letters of perlrun's -C list, then more flags (``-CSDe``)
_PERL_RUNS = {"C": frozenset("0123456789IOESioDAaL")}
_RUBY_VALUED, _RUBY_CODE = frozenset("IrCXE"), frozenset("e")
_RUBY_OPTIONAL = frozenset("xTiWF")
_RUBY_ONE_CHAR = frozenset("K")                 # ``-Ku``: one letter, then more flags
_NODE_CODE_LONG = frozenset({"--eval", "--print"})
# node's options that take a value (``--opt value`` or ``--opt=value``); node refuses
# unknown options, so a word after one of these is its value whatever it looks like
_NODE_VALUED_LONG = frozenset({
    "--require", "--import", "--loader", "--experimental-loader", "--input-type", "--title",
    "--env-file", "--env-file-if-exists", "--conditions", "--inspect-port", "--debug-port",
    "--icu-data-dir", "--openssl-config", "--redirect-warnings", "--report-dir",
    "--report-directory", "--report-filename", "--report-signal", "--secure-heap",
    "--secure-heap-min", "--diagnostic-dir", "--dns-result-order", "--experimental-policy",
    "--policy-integrity", "--heapsnapshot-signal", "--heapsnapshot-near-heap-limit",
    "--tls-cipher-list", "--tls-keylog", "--tls-min-v1.0", "--unhandled-rejections",
    "--use-largepages", "--max-http-header-size", "--watch-path", "--test-reporter",
    "--test-reporter-destination", "--test-name-pattern", "--test-skip-pattern",
    "--test-concurrency", "--test-shard", "--test-timeout", "--cpu-prof-dir",
    "--cpu-prof-name", "--cpu-prof-interval", "--heap-prof-dir", "--heap-prof-name",
    "--heap-prof-interval", "--experimental-config-file", "--localstorage-file",
    "--disable-warning", "--allow-fs-read", "--allow-fs-write", "--experimental-sea-config",
    "--snapshot-blob", "--build-snapshot-config", "--run", "--experimental-default-type",
    "--trace-event-categories", "--trace-event-file-pattern", "--inspect-publish-uid",
    "--experimental-specifier-resolution", "--es-module-specifier-resolution",
    "--experimental-test-coverage-include", "--experimental-test-coverage-exclude",
    "--test-coverage-include", "--test-coverage-exclude", "--test-coverage-branches",
    "--test-coverage-functions", "--test-coverage-lines", "--stack-size",
    "--max-old-space-size", "--max-semi-space-size", "--network-family-autoselection-attempt-timeout",
    "--watch-kill-signal", "--experimental-loader-hooks"})
_NODE_VALUED_SHORT = frozenset("rC")            # -r/--require, -C/--conditions
_PHP_VALUED, _PHP_CODE = frozenset("cdz"), frozenset("rBRE")


def _digits(w: str, k: int) -> int:
    while k < len(w) and w[k] in "01234567xX":
        k += 1
    return k


def inline_code(exe: str, argv: tuple[str, ...] | list[str]) -> tuple[str, str] | None:
    """The inline code an interpreter runs and the option that gave it (``-c``, ``-e``,
    ``-r``, ``--eval``...), read by the interpreter's option table: ``python3 -W ignore
    -Bc CODE``, ``perl -MMIME::Base64 -le CODE -e MORE``, ``node --eval=CODE``.  None when
    it runs a script file or a module, or is no interpreter of these families."""
    fam = norm_interp(base(exe))
    words = list(argv[1:])
    if fam in ("python", "python2", "python3"):
        return _short_code(words, _PY_VALUED, _PY_CODE, stop=frozenset("m"),
                           long_valued=frozenset({"--check-hash-based-pycs"}))
    if fam == "perl":
        return _short_code(words, _PERL_VALUED, _PERL_CODE, repeat=True, digits=frozenset("l0"),
                           optional=_PERL_OPTIONAL, runs=_PERL_RUNS)
    if fam == "ruby":
        return _short_code(words, _RUBY_VALUED, _RUBY_CODE, repeat=True, digits=frozenset("0"),
                           optional=_RUBY_OPTIONAL, one_char=_RUBY_ONE_CHAR)
    if fam == "php":
        return _short_code(words, _PHP_VALUED, _PHP_CODE, long_code=frozenset({"--run"}))
    if fam == "node":
        # node takes no attached values: ``-pe CODE`` is -p and -e, the code the next word
        return _short_code(words, _NODE_VALUED_SHORT, frozenset("ep"), long_code=_NODE_CODE_LONG,
                           long_valued=_NODE_VALUED_LONG, attached=False)
    return None


def _short_code(words: list[str], valued: frozenset[str], code_opts: frozenset[str], *,
                stop: frozenset[str] = frozenset(), repeat: bool = False,
                digits: frozenset[str] = frozenset(), long_code: frozenset[str] = frozenset(),
                long_valued: frozenset[str] = frozenset(),
                optional: frozenset[str] = frozenset(), one_char: frozenset[str] = frozenset(),
                runs: dict[str, frozenset[str]] | None = None,
                attached: bool = True) -> tuple[str, str] | None:
    codes: list[str] = []
    opt = ""
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w == "--" or w == "-" or not w.startswith("-") or len(w) < 2:
            break                                   # a script operand (or stdin): no more options
        if w.startswith("--"):
            name, eq, val = w.partition("=")
            if name in long_code:
                code = val if eq else (words[i] if i < len(words) else "")
                i += 0 if eq else 1
                codes.append(code)
                opt = opt or name
                if not repeat:
                    break
            elif name in long_valued and not eq:
                i += 1
            continue
        k = 1
        while k < len(w):
            ch = w[k]
            k += 1
            if ch in stop:
                return None                         # python -m: a module, not inline code
            if ch in code_opts:
                if not attached and k < len(w):
                    continue                        # ``-pe``: more flags, the code follows
                rest = w[k:] if attached else ""
                code = rest if rest else (words[i] if i < len(words) else "")
                if not rest:
                    i += 1
                codes.append(code)
                opt = opt or f"-{w[1:k]}"
                break
            if ch in valued:
                if k >= len(w):
                    i += 1                          # the value is the next word
                break                               # the rest of the cluster is the value
            if ch in optional:
                break                               # its value, if any, is the rest of the word
            if runs is not None and ch in runs:
                allowed = runs[ch]
                while k < len(w) and w[k] in allowed:
                    k += 1
            elif ch in one_char:
                k += 1
            elif ch in digits:
                k = _digits(w, k)
        if codes and not repeat:
            break
    if not codes:
        return None
    return "\n".join(codes), opt


# Decoding calls of the interpreters' standard libraries, read inside the code only.
_DECODE_CALLS = re.compile(
    r"\b(?:(?:urlsafe_|standard_)?b64decode|b32(?:hex)?decode|b16decode|b85decode|a85decode"
    r"|decodebytes|decodestring|a2b_base64|a2b_hex|a2b_uu|unhexlify|fromhex"
    r"|decode_base64(?:url)?|decode64|strict_decode64|urlsafe_decode64"
    r"|base64_decode|hex2bin|str_rot13|gzinflate|gzuncompress|gzdecode|convert_uudecode"
    r"|atob|inflateSync|gunzipSync|inflateRawSync|brotliDecompressSync)\b"
    r"|\b(?:zlib|gzip|bz2|lzma|zstd)\.decompress\b|Zlib::(?:Inflate|GzipReader)"
    r"|\bdecode\s*\([^()]*['\"](?:rot[_-]?13|hex|base64|zlib|bz2|uu)(?:_codec)?['\"]"
    r"|\bBuffer\.from\s*\([^()]*['\"](?:base64|base64url|hex)['\"]"
    r"|\bpack\s*\(?\s*['\"][Hh]\*?['\"]|\bunpack1?\s*\(?\s*['\"][mu]0?['\"]")


def decode_call(code: str) -> str | None:
    """The first decoding call in ``code`` (None: it decodes nothing)."""
    m = _DECODE_CALLS.search(code)
    return " ".join(m.group(0).split())[:40] if m else None


# ---- command-line decoders ----------------------------------------------------------------

_DECOMPRESSORS = frozenset({"gzip", "gunzip", "zcat", "bzip2", "bunzip2", "bzcat", "xz", "unxz",
                            "xzcat", "zstd", "unzstd", "zstdcat"})


def cli_decoder(ev: ExecEvent) -> str | None:
    """A command-line decoder: the older rules' :func:`decoder` set (base64/base32/basenc
    ``-d``, ``xxd -r``, ``uudecode``, ``openssl ... -d``) and decompressors run to
    decompress (``gzip -d``, ``gunzip``, ``zcat``...)."""
    got = decoder(ev)
    if got is not None:
        return got
    tool = base(ev.proc.exe)
    if tool == "openssl" and len(ev.argv) > 1 and ev.argv[1] == "base64" and "-d" in ev.argv:
        return "openssl base64 -d"
    if tool in _DECOMPRESSORS:
        args = ev.argv[1:]
        if tool.startswith("un") or tool.endswith("cat") or any(
                a in ("-d", "--decompress", "--uncompress") or
                (a.startswith("-") and not a.startswith("--") and "d" in a[1:]) for a in args):
            return f"{tool} -d" if not (tool.startswith("un") or tool.endswith("cat")) else tool
    return None


def _operands(argv: tuple[str, ...]) -> list[str]:
    return [a for a in argv[1:] if a and not a.startswith("-")]


# ---- who wrote a pipe, and is this a script ---------------------------------------------------

PASS_THROUGH = frozenset({"cat", "tee"})
SHELL_WORDS = frozenset({"echo", "printf"})


@dataclass
class _Writer:
    tool: str
    argv: tuple[str, ...]
    stdin: str
    cwd: str = ""


@dataclass
class _Shell:
    stdin: str
    argv: tuple[str, ...]
    stdout: str = ""
    exe: str = ""


class PipeBook:
    """The exec'd writers of pipes (by the kernel's stdout inode), the readers (by stdin)
    and the stdin every shell exec'd with; bounded, kept per rule."""

    def __init__(self, writers: BoundedState[str, _Writer],
                 shells: BoundedState[ProcKey, _Shell]) -> None:
        self.writers = writers
        self.shells = shells

    def note(self, ev: ExecEvent) -> None:
        now = ev.time_ns
        if ev.stdout.startswith("pipe:"):
            self.writers.put(ev.stdout, now, _Writer(base(ev.proc.exe), ev.argv, ev.stdin,
                                                     ev.cwd or "/"))
        if is_shell(ev.proc.exe):
            self.shells.put(proc_key(ev), now, _Shell(ev.stdin, ev.argv, ev.stdout,
                                                          ev.proc.exe))

    def fed_by_shell(self, pipe: str, now: int, depth: int = 0,
                     wrote: Callable[[str], bool] | None = None) -> str | None:
        """How the script's shell wrote ``pipe`` ("shell": no program had it as its
        stdout; "echo"/"printf": the shell's words through those programs; "cat <<": a
        pass-through of a pipe the shell wrote; "cat FILE": files for which ``wrote``
        says a shell wrote them); None when a program wrote it."""
        w = self.writers.get(pipe, now)
        if w is None:
            return "shell"
        if w.tool in SHELL_WORDS:
            return w.tool
        ops = [a for a in w.argv[1:] if a != "-" and not a.startswith("-")]
        if w.tool == "cat" and ops and wrote is not None and all(
                wrote(os.path.normpath(os.path.join(w.cwd, a))) for a in ops):
            return f"cat {ops[0]}"
        if w.tool in PASS_THROUGH and depth == 0 and w.stdin.startswith("pipe:") and \
                all(a == "-" or a.startswith("-") for a in w.argv[1:]) and \
                self.fed_by_shell(w.stdin, now, 1) is not None:
            return f"{w.tool} <<"
        return None

    def script_session(self, ev: ExecEvent, ctx: RuleContext, pipe: str,
                       stdio: Callable[[int], tuple[str, ...] | None] | None) -> str | None:
        """The script whose shell fed ``pipe`` to ``ev``'s process, as its command line;
        None when the feeder is no shell, the pipe is one the shell inherited, or the
        shell is an interactive prompt (or cannot be told from one)."""
        now = ev.time_ns
        chain: list[tuple[ProcKey, int, str, tuple[str, ...]]] = []
        own = self.shells.get(proc_key(ev), now)
        if own is not None:              # a shell that exec'd the reader in its own place
            chain.append((proc_key(ev), ev.proc.pid, own.exe or "sh", own.argv))
        for anc in ctx.procs.ancestry(ev.proc.pid, 10)[1:]:
            chain.append(((anc.pid, anc.start_ns), anc.pid, anc.exe, anc.cmdline))
        found: str | None = None
        found_cmd: tuple[str, ...] = ()
        for key, pid, exe, cmdline in chain:
            if not is_shell(exe):
                break
            if found is not None and cmdline != found_cmd:
                break                    # past the script shell and its forked copies
            rec = self.shells.get(key, now)
            if rec is not None and pipe and rec.stdin == pipe:
                # handed down to this shell (a wrapper script such as zcat, a ``sh -c``
                # a program fed): the pipe's maker is further up, if it is a shell
                found, found_cmd = None, ()
                continue
            if found is not None:
                continue
            args = parse_shell_argv(base(exe), cmdline)
            if args.interactive:
                return None
            if args.command or args.script:
                found, found_cmd = " ".join(cmdline)[:100], cmdline
                continue
            if rec is None:
                continue                 # a forked copy of an older shell: look above
            if rec.stdin.startswith(("pipe:", "socket:")) or rec.stdin == "file":
                found, found_cmd = " ".join(cmdline)[:100], cmdline   # commands from a pipe
                continue
            if rec.stdin == "tty" and stdio is not None:
                fds = stdio(pid)
                if fds and fds[0] == "/dev/null":
                    found, found_cmd = " ".join(cmdline)[:100], cmdline
                    continue
            return None                  # a prompt on a terminal (or not known): silent
        return found


# ---- pending decisions ------------------------------------------------------------------------

@dataclass
class _Pending:
    kind: str                  # "inline" | "cli" | "shell"
    pid: int
    exe: str
    argv: tuple[str, ...]
    what: str                  # the decoder (call or tool)
    source: str                # pipe:[ino], a file path, or "" (inline literal/any)
    session: str               # the script
    stdout: str
    born: int
    exited: bool = False
    exited_ns: int = 0
    feeder: ProcKey = (0, 0)   # the process that made the pipeline (the reader's parent)
    wait_reader: bool = False  # its stdout is a pipe of the script's making: a reader will exec
    verdict: str = ""          # "": none yet; "covered"; "runs:<how>"
    act: ExecEvent | None = None   # the exec the finding is about (a later event may settle it)
    evidence: dict[str, object] = field(default_factory=dict)


RESOLVE_NS = 2 * NS            # wait for a stdout pipe's reader after the decoder exited
LONG_NS = 5 * NS               # a still-running one-liner is reported after this
SHELL_WRITE_NS = 60 * NS       # a file a shell wrote, decoded "seconds" later


class _DecodeRule(BehaviorRule):
    """Shared: the pipe book, pending decisions resolved at exit/child/reader or deadline."""

    event_types = frozenset({"exec", "exit"})
    action = "alert"
    severity = "medium"

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 probes: Probes | None = None) -> None:
        super().__init__(settings, limits)
        self.probes = probes or Probes()
        self.book = PipeBook(self.state(), self.state())
        self._pending: BoundedState[ProcKey, _Pending] = self.state()
        self._by_stdout: BoundedState[str, ProcKey] = self.state()
        self._readers: BoundedState[str, tuple[int, str, tuple[str, ...], bool]] = self.state()
        self._swept = 0
        # a script shell -> when a forked child of it exited 126/127 without an exec: a
        # command that was not found (``echo X | b64decode | sh`` where b64decode is not
        # installed): its pipe was written by nothing, not by the shell's words
        self._failed: BoundedState[ProcKey, int] = self.state()
        self._acts: dict[int, ExecEvent] = {}   # id(hit) -> its act's exec, within one event

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        """Findings carry the act's own exec event (its process, cgroup, time), not the
        later event (another process's exit, the sweep) that settled the decision."""
        if type(ev) is ExitEvent and not len(self._pending) and ev.exit_code not in (126, 127):
            return []   # nothing pending to settle, no failed start to note (issue 16.3)
        self._acts.clear()
        out: list[Finding] = []
        for h in self.evaluate(ev, ctx):
            act = self._acts.get(id(h), ev)
            if self.trusted_actors and any(t.matches(act.proc.container)
                                           for t in self.trusted_actors):
                continue
            out.append(self.finding(act, h))
        self._acts.clear()
        return out

    # the subclass's say
    def start(self, ev: ExecEvent, ctx: RuleContext) -> _Pending | None:
        raise NotImplementedError

    def ready(self, p: _Pending, now: int) -> bool:
        """Was the input the script's own (the writer now known)?  False: forget ``p``."""
        return True

    def emit(self, p: _Pending) -> Hit | None:
        raise NotImplementedError

    def on_child(self, p: _Pending, ev: ExecEvent, ctx: RuleContext, in_place: bool) -> None:
        """A child of the pending process exec'd (or the process exec'd in place)."""

    # -- engine

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        now = ev.time_ns
        hits: list[Hit] = []
        if isinstance(ev, ExitEvent):
            if ev.exit_code in (126, 127):
                self._note_failed(ev, ctx, now)
            p = self._pending.get(proc_key(ev), now)
            if p is not None:
                p.exited, p.exited_ns = True, now
                self._settle(proc_key(ev), p, now, hits)
            if len(self._pending):
                # the pipeline's maker ended: every command of its pipelines has exec'd
                gone = proc_key(ev)
                for key, q in self._pending.items():
                    if q.feeder == gone:
                        self._settle(key, q, now, hits, timeout=True)
        elif isinstance(ev, ExecEvent):
            self._exec(ev, ctx, now, hits)
        if len(self._pending) and now - self._swept > NS // 2:
            self._swept = now
            for key, p in self._pending.items():
                if now - p.born > LONG_NS or (p.exited and now - p.exited_ns > RESOLVE_NS):
                    self._settle(key, p, now, hits, timeout=True)
        return hits

    def _note_failed(self, ev: ExitEvent, ctx: RuleContext, now: int) -> None:
        me = ctx.procs.get(ev.proc.pid)
        parent = ctx.procs.get(ev.proc.ppid) if me is not None else None
        if me is not None and parent is not None and is_shell(parent.exe) and \
                me.exe == parent.exe and me.cmdline == parent.cmdline:
            self._failed.put((parent.pid, parent.start_ns), now, now)   # never exec'd

    def failed_nearby(self, p: _Pending, now: int) -> bool:
        """Did a command of the pipeline's maker fail to start (no writer at all)?"""
        t = self._failed.get(p.feeder, now)
        return t is not None and now - t <= LONG_NS

    def _exec(self, ev: ExecEvent, ctx: RuleContext, now: int, hits: list[Hit]) -> None:
        key = proc_key(ev)
        if len(self._pending):   # (most execs: nothing pending, nothing to settle; 16.3)
            mine = self._pending.get(key, now)
            if mine is not None:          # exec in place: the old image's decision
                self.on_child(mine, ev, ctx, True)
                self._settle(key, mine, now, hits, final=True)
            parent = ctx.procs.get(ev.proc.ppid)
            if parent is not None:
                pkey = (parent.pid, parent.start_ns)
                pp = self._pending.get(pkey, now)
                if pp is not None:
                    self.on_child(pp, ev, ctx, False)
                    self._settle(pkey, pp, now, hits)
        if ev.stdin.startswith("pipe:"):
            runs = reads_commands_from_stdin(ev) or _shell_reads_stdin(ev, self.trust)
            self._readers.put(ev.stdin, now, (ev.proc.pid, ev.proc.exe, ev.argv, runs))
            wkey = self._by_stdout.get(ev.stdin, now)
            wp = self._pending.get(wkey, now) if wkey is not None else None
            if wkey is not None and wp is not None:
                self._reader(wp, ev.proc.exe, ev.argv, runs)
                self._settle(wkey, wp, now, hits)
        # decided before the book notes this exec: a shell's own record is its older image
        p = self.start(ev, ctx)
        self.book.note(ev)
        if p is None or self.trusted(ev, ctx, PACKAGE_MANAGERS, depth=8):
            return
        p.act = ev
        parent_now = ctx.procs.get(ev.proc.ppid)
        if parent_now is not None:
            p.feeder = (parent_now.pid, parent_now.start_ns)
        p.wait_reader = p.stdout.startswith("pipe:") and not self._script_output(ev, ctx, p.stdout)
        self._pending.put(key, now, p)
        if p.stdout.startswith("pipe:"):
            self._by_stdout.put(p.stdout, now, key)
            r = self._readers.get(p.stdout, now)
            if r is not None:
                self._reader(p, r[1], r[2], r[3])
        self._settle(key, p, now, hits)

    def _script_output(self, ev: ExecEvent, ctx: RuleContext, pipe: str) -> bool:
        """Is ``pipe`` the stdout a shell above ``ev`` already had (the script's own output,
        read by whoever ran the script): no reader of it is still to exec."""
        now = ev.time_ns
        keys = [proc_key(ev)] + [(a.pid, a.start_ns) for a in ctx.procs.ancestry(ev.proc.pid, 8)[1:]]
        for k in keys:
            rec = self.book.shells.get(k, now)
            if rec is not None and rec.stdout == pipe:
                return True
        return False

    def _reader(self, p: _Pending, exe: str, argv: tuple[str, ...], runs: bool) -> None:
        if p.verdict:
            return
        if not runs:
            p.verdict = "read"
        elif self.covered_reader(p):
            p.verdict = "covered"
        else:
            p.verdict = f"runs:{' '.join(argv)[:40] or base(exe)}"

    def covered_reader(self, p: _Pending) -> bool:
        """Does an older rule already report this output piped into a shell?"""
        return False

    def _settle(self, key: ProcKey, p: _Pending, now: int, hits: list[Hit],
                timeout: bool = False, final: bool = False) -> None:
        """Report ``p`` when its decision is known; forget it when there is nothing to say.

        inline: the code is known at exec; it waits for what happens to its result
        (a child shell, its stdout's reader) until it ends.  cli: the writer of its
        input is known when it ends.  shell: when it ends or runs its first command."""
        if final and not p.exited:
            p.exited, p.exited_ns = True, now
        ended = p.exited or timeout
        decided = p.verdict == "covered" or p.verdict.startswith("runs:")
        waiting = p.wait_reader and not p.verdict and not timeout
        if p.kind == "inline":
            go = decided or (ended and not waiting)
        elif p.kind == "cli":
            go = ended and (decided or not waiting)
        else:
            go = ended or decided
        if not go:
            return
        self._pending.pop(key)
        if p.stdout:
            self._by_stdout.pop(p.stdout)
        if p.verdict == "covered" or not self.ready(p, now):
            return
        hit = self.emit(p)
        if hit is not None:
            if p.act is not None:
                self._acts[id(hit)] = p.act
            hits.append(hit)


def _child_shell(ev: ExecEvent) -> bool:
    return is_shell(ev.proc.exe) or is_interpreter(ev.proc.exe)


class InlineDecode(_DecodeRule):
    """An interpreter one-liner whose inline code (found by the interpreter's own option
    table: :func:`inline_code`) calls a decoder (:func:`decode_call`): ``python3 -c
    'exec(base64.b64decode(...))'``, ``perl -MMIME::Base64 -e 'print decode_base64(...)'``,
    ``node -e "Buffer.from(x,'base64')"``, ``php -r 'echo base64_decode(...);'``.  Medium;
    high when the decoded result is handed to a shell — a child shell (unless it is the
    ``sh -c`` ``decoded_file_exec`` already reports), the process exec'ing itself into a
    shell, or a shell reading its stdout pipe."""

    name = "behavior.inline_decode"
    attack = ("T1140", "T1027", "T1059.006")

    def start(self, ev: ExecEvent, ctx: RuleContext) -> _Pending | None:
        got = inline_code(ev.proc.exe, ev.argv)
        if got is None:
            return None
        call = decode_call(got[0])
        if call is None:
            return None
        return _Pending("inline", ev.proc.pid, ev.proc.exe, ev.argv,
                        f"{norm_interp(base(ev.proc.exe))} {got[1]}: {call}", "", "",
                        ev.stdout, ev.time_ns)

    def on_child(self, p: _Pending, ev: ExecEvent, ctx: RuleContext, in_place: bool) -> None:
        if p.verdict or not is_shell(ev.proc.exe):
            return
        if not in_place and any(a == "-c" or (a.startswith("-") and not a.startswith("--")
                                              and "c" in a[1:]) for a in ev.argv[1:3]) \
                and inline_decoder(p.argv, p.exe) is not None:
            p.verdict = "covered"     # decoded_file_exec: "inline code ... ran it in a shell"
            return
        p.verdict = f"runs:{' '.join(ev.argv)[:40]}"

    def emit(self, p: _Pending) -> Hit | None:
        runs = p.verdict.startswith("runs:")
        title = (f"Inline code decoded data ({p.what}) and handed it to a shell "
                 f"({p.verdict[5:]})" if runs else f"Inline code decodes embedded data ({p.what})")
        return Hit(f"{title}: {' '.join(p.argv)[:100]}",
                   {"decoder": p.what, "argv": list(p.argv)[:8], "exe": p.exe,
                    **({"shell": p.verdict[5:]} if runs else {})},
                   pid=p.pid, severity="high" if runs else None)


class ScriptDecode(_DecodeRule):
    """A command-line decoder (:func:`cli_decoder`) fed by the script itself: its stdin a
    pipe the script's shell wrote (``echo``/``printf``, a here-string, ``cat <<EOF``) or
    a file operand a shell wrote within a minute, run by a non-interactive script.
    A decoder fed by another program (``kubectl get secret ... | base64 -d``, ``curl |
    base64 -d``) or typed at a prompt is silent.  Medium; high when its output is piped
    into a shell the older decoded-payload rules do not cover (a decompressor's)."""

    name = "behavior.script_decode"
    event_types = frozenset({"exec", "exit", "open"})
    read_opens = False   # a read-only open has no written path: nothing to match
    attack = ("T1140", "T1027")

    def __init__(self, settings: RuleSettings | None = None, limits: Limits | None = None,
                 probes: Probes | None = None) -> None:
        super().__init__(settings, limits, probes)
        # a file a shell process opened for writing -> (when, that process); a process
        # that then exec's a program with its stdout on a file made a redirect for the
        # program (``base64 > x``): the program wrote it, not the shell's words
        self._shell_files: BoundedState[str, tuple[int, ProcKey]] = self.state()
        self._opened_by: BoundedState[ProcKey, list[str]] = self.state()

    def evaluate(self, ev: Event, ctx: RuleContext) -> list[Hit]:
        if isinstance(ev, FileEvent):
            if ev.op == "open" and is_shell(ev.proc.exe) and write_intent(ev) \
                    and ev.path.startswith("/") and (ev.path.startswith("/dev/shm/") or
                                                     not ev.path.startswith(("/dev/", "/proc/"))):
                path, key = os.path.normpath(ev.path), proc_key(ev)
                self._shell_files.put(path, ev.time_ns, (ev.time_ns, key))
                self._opened_by.put(key, ev.time_ns,
                                    [*(self._opened_by.get(key, ev.time_ns) or [])[-7:], path])
            return []
        if isinstance(ev, ExecEvent) and ev.stdout == "file":
            # the program's redirect: the last file the shell opened for writing, whether the
            # kernel saw the open from the exec'ing child or from the shell that forked it
            # (dash opens a command's redirect before the fork)
            parent = ctx.procs.get(ev.proc.ppid)
            keys = [proc_key(ev)] + ([(parent.pid, parent.start_ns)] if parent else [])
            for key in keys:
                opened = self._opened_by.get(key, ev.time_ns)
                if opened:
                    path = opened.pop()
                    got = self._shell_files.get(path, ev.time_ns)
                    if got is not None and got[1] == key:
                        self._shell_files.pop(path)
                    break
        return super().evaluate(ev, ctx)

    def start(self, ev: ExecEvent, ctx: RuleContext) -> _Pending | None:
        dec = cli_decoder(ev)
        if dec is None:
            return None
        now = ev.time_ns
        source = ""
        if ev.stdin.startswith("pipe:"):
            session = self.book.script_session(ev, ctx, ev.stdin, self.probes.stdio)
            source = ev.stdin
        else:
            session = None
        if session is None:
            cwd = ev.cwd or "/"
            for op in _operands(ev.argv):
                path = os.path.normpath(op if op.startswith("/") else os.path.join(cwd, op))
                t = self._shell_files.get(path, now)
                if t is not None and now - t[0] <= SHELL_WRITE_NS:
                    session = self.book.script_session(ev, ctx, "", self.probes.stdio)
                    source = path
                    break
        if session is None:
            return None
        return _Pending("cli", ev.proc.pid, ev.proc.exe, ev.argv, dec, source, session,
                        ev.stdout, now)

    def _wrote(self, now: int) -> Callable[[str], bool]:
        def wrote(path: str) -> bool:
            t = self._shell_files.get(path, now)
            return t is not None and now - t[0] <= SHELL_WRITE_NS
        return wrote

    def ready(self, p: _Pending, now: int) -> bool:
        if not p.source.startswith("pipe:"):
            p.evidence["fed_by"] = "a file a shell wrote"
            return True
        fed = self.book.fed_by_shell(p.source, now, wrote=self._wrote(now))
        if fed is None or (fed == "shell" and self.failed_nearby(p, now)):
            return False
        p.evidence["fed_by"] = fed
        return True

    def covered_reader(self, p: _Pending) -> bool:
        # behavior.piped_payload / decoded_payload_shell report the older decoder set
        return not p.what.startswith(tuple(_DECOMPRESSORS))

    def emit(self, p: _Pending) -> Hit | None:
        runs = p.verdict.startswith("runs:")
        src = p.source if not p.source.startswith("pipe:") else \
            f"{p.evidence.get('fed_by', 'shell')} through {p.source}"
        return Hit(f"Script decodes its own embedded data ({p.what}, fed by {src})"
                   f"{' into a shell (' + p.verdict[5:] + ')' if runs else ''}: "
                   f"{' '.join(p.argv)[:60]} in {p.session}",
                   {"decoder": p.what, "argv": list(p.argv)[:8], "source": p.source,
                    "fed_by": p.evidence.get("fed_by", ""), "script": p.session,
                    **({"shell": p.verdict[5:]} if runs else {})},
                   pid=p.pid, severity="high" if runs else None)


class GeneratedShell(_DecodeRule):
    """A shell reading its commands (no script, no ``-c``) from a pipe the script's own
    shell wrote: ``echo "$cmd" | sh``, ``printf '%s\\n' "$c" | bash``, ``cat <<EOF | sh``
    in a non-interactive script.  ``ls | sed 's/.*/mv & &.bak/' | sh`` (the writer is
    sed, a program), a prompt's ``echo ls | sh``, and pipes from decoders or downloaders
    (``behavior.piped_payload``) are not this.  Medium."""

    name = "behavior.generated_shell"
    attack = ("T1059.004", "T1027")

    def start(self, ev: ExecEvent, ctx: RuleContext) -> _Pending | None:
        if not ev.stdin.startswith("pipe:") or not _shell_reads_stdin(ev, self.trust):
            return None
        if parse_shell_argv(base(ev.proc.exe), ev.argv).interactive:
            return None          # ``sh -i`` fed by a pipe: relayed_shell's business
        session = self.book.script_session(ev, ctx, ev.stdin, self.probes.stdio)
        if session is None:
            return None
        parent = ctx.procs.get(ev.proc.ppid)
        if parent is not None and self.prov is not None and \
                self.prov.netted((parent.pid, parent.start_ns), ev.time_ns) is not None:
            return None          # a connected feeder: behavior.relayed_shell
        return _Pending("shell", ev.proc.pid, ev.proc.exe, ev.argv, "", ev.stdin, session,
                        "", ev.time_ns)

    def on_child(self, p: _Pending, ev: ExecEvent, ctx: RuleContext, in_place: bool) -> None:
        if not p.verdict:
            p.verdict = "runs:"   # it ran what it read: the writer has written by now

    def ready(self, p: _Pending, now: int) -> bool:
        fed = self.book.fed_by_shell(p.source, now)
        if fed is None or (fed == "shell" and self.failed_nearby(p, now)):
            return False
        p.evidence["fed_by"] = fed
        return True

    def emit(self, p: _Pending) -> Hit | None:
        fed = p.evidence.get("fed_by", "shell")
        return Hit(f"Commands generated by a script piped into {base(p.exe)} "
                   f"(written by {fed} through {p.source}) in {p.session}",
                   {"shell": p.exe, "argv": list(p.argv)[:8], "pipe": p.source,
                    "fed_by": fed, "script": p.session}, pid=p.pid)


DECODE_RULES: tuple[type[BehaviorRule], ...] = (InlineDecode, ScriptDecode, GeneratedShell)

__all__ = ["DECODE_RULES", "InlineDecode", "ScriptDecode", "GeneratedShell", "inline_code",
           "decode_call", "cli_decoder", "PipeBook"]
