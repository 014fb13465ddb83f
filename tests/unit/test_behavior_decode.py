"""Decoded embedded data (s16-decode): interpreter one-liners that decode, command-line
decoders fed by the script itself, commands a script pipes into a shell — each with the
benign look-alikes that must stay silent (a program's output decoded, a prompt's
pipeline, ``ls | sed | sh``, a one-liner that decodes nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bastion.detect.behavior import behavior_rules
from bastion.detect.behavior.decode import cli_decoder, decode_call, inline_code
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import ExecEvent, Proc
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all
from support.trust import RecordedTrust, path_ino

NEW = ("behavior.inline_decode", "behavior.script_decode", "behavior.generated_shell")


class Rec:
    """A tiny recording: exec/fork/exit/open events with the kernel's fd 0/1 kinds.
    pid 100 is an administrator's login shell on a terminal; pid 150 a script
    (``sh -c ...``) started by it."""

    def __init__(self) -> None:
        self.n = 0
        self.lines: list[dict[str, Any]] = []
        self.procs: dict[int, tuple[int, str]] = {}
        self.exec(1, 0, "/sbin/init", ["/sbin/init"])
        self.exec(100, 1, "/usr/bin/bash", ["-bash"])
        self.exec(150, 100, "/usr/bin/dash", ["sh", "-c", "the script"], stdin="tty")

    def _hdr(self, pid: int) -> dict[str, Any]:
        self.n += 1
        ppid, exe = self.procs[pid]
        return {"time": "2026-01-01T00:00:%02d.%06dZ" % divmod(self.n * 10000, 1_000_000),
                "pid": pid, "tid": pid, "ppid": ppid, "uid": 0, "euid": 0, "gid": 0,
                "cgroup_id": 1, "comm": exe.rsplit("/", 1)[1][:15], "start_ns": pid * 1000,
                "exe": exe}

    def exec(self, pid: int, ppid: int, exe: str, argv: list[str], stdin: str = "tty",
             stdout: str = "tty", cwd: str = "/root") -> "Rec":
        self.procs[pid] = (ppid, exe)
        self.lines.append({"type": "exec", **self._hdr(pid), "filename": exe, "cwd": cwd,
                           "argv": argv, "exe_dev": 1, "exe_ino": path_ino(exe),
                           "exe_nlink": 1, "stdin": stdin, "stdout": stdout})
        return self

    def exit(self, pid: int, code: int = 0) -> "Rec":
        self.lines.append({"type": "exit", **self._hdr(pid), "exit_code": code})
        return self

    def fork(self, pid: int, child: int) -> "Rec":
        self.lines.append({"type": "fork", **self._hdr(pid), "child_pid": child,
                           "child_start_ns": child * 1000})
        self.procs[child] = (pid, self.procs[pid][1])
        return self

    def write(self, pid: int, path: str) -> "Rec":
        self.lines.append({"type": "open", **self._hdr(pid), "path": path, "flags": 0o1101})
        return self

    def idle(self, pid: int, seconds: int) -> "Rec":
        """Time passes (an unrelated exec ``seconds`` later)."""
        self.n += seconds * 100
        return self.exec(pid, 1, "/usr/bin/true", ["true"], stdin="", stdout="")

    def run(self, tmp: Path) -> list[Finding]:
        p = tmp / "rec.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in self.lines))
        procs, trust = ProcessTable(), RecordedTrust()
        engine = Engine(behavior_rules(trust=trust))
        ctx = RuleContext(procs)
        out: list[Finding] = []
        for ev in read_all(p):
            trust.learn(ev)
            procs.update(ev)
            out += engine.evaluate(ev, ctx)
        assert not engine.errors, engine.disabled
        return out


def of(found: list[Finding], rule: str) -> list[Finding]:
    return [f for f in found if f.rule == f"behavior.{rule}"]


def new(found: list[Finding]) -> list[tuple[str, int | None, str]]:
    return [(f.rule.split(".", 1)[1], f.pid, f.severity) for f in found if f.rule in NEW]


# ---- the interpreters' own options ------------------------------------------------------

@pytest.mark.parametrize("exe,argv,code,opt", [
    ("/usr/bin/python3.11", ["python3", "-c", "X"], "X", "-c"),
    ("/usr/bin/python3", ["python3", "-W", "ignore", "-X", "utf8", "-Bc", "X"], "X", "-Bc"),
    ("/usr/bin/python3", ["python3", "-cX"], "X", "-c"),
    ("/usr/bin/python3", ["python3", "-Wignore", "-c", "X", "arg"], "X", "-c"),
    ("/usr/bin/perl", ["perl", "-le", "A", "-e", "B"], "A\nB", "-le"),
    ("/usr/bin/perl", ["perl", "-MMIME::Base64", "-l012", "-E", "A"], "A", "-E"),
    ("/usr/bin/perl", ["perl", "-M", "MIME::Base64", "-ne", "A"], "A", "-ne"),
    ("/usr/bin/ruby", ["ruby", "-rbase64", "-e", "A"], "A", "-e"),
    ("/usr/bin/node", ["node", "--eval=A"], "A", "--eval"),
    ("/usr/bin/node", ["node", "-r", "m", "-pe", "A"], "A", "-pe"),
    ("/usr/bin/php8.2", ["php", "-d", "x=1", "-r", "A"], "A", "-r"),
    # s16-fixdet: values that are optional and only attached, flags that take none
    ("/usr/bin/perl", ["perl", "-pi", "-e", "A"], "A", "-e"),
    ("/usr/bin/perl", ["perl", "-i", "-e", "A"], "A", "-e"),
    ("/usr/bin/perl", ["perl", "-i.bak", "-pe", "A"], "A", "-pe"),
    ("/usr/bin/perl", ["perl", "-x", "-e", "A"], "A", "-e"),
    ("/usr/bin/perl", ["perl", "-d", "-e", "A"], "A", "-e"),
    ("/usr/bin/perl", ["perl", "-Dt", "-e", "A"], "A", "-e"),
    ("/usr/bin/perl", ["perl", "-F:", "-lane", "A"], "A", "-lane"),
    ("/usr/bin/perl", ["perl", "-CSDe", "A"], "A", "-CSDe"),
    ("/usr/bin/perl", ["perl", "-C7", "-e", "A"], "A", "-e"),
    ("/usr/bin/ruby", ["ruby", "-U", "-e", "A"], "A", "-e"),
    ("/usr/bin/ruby", ["ruby", "-x", "-e", "A"], "A", "-e"),
    ("/usr/bin/ruby", ["ruby", "-T1", "-e", "A"], "A", "-e"),
    ("/usr/bin/ruby", ["ruby", "-W:no-deprecated", "-e", "A"], "A", "-e"),
    ("/usr/bin/ruby", ["ruby", "-Kue", "A"], "A", "-Kue"),
    ("/usr/bin/ruby", ["ruby", "-C", "/tmp", "-e", "A"], "A", "-e"),
    ("/usr/bin/node", ["node", "-C", "x", "-e", "A"], "A", "-e"),
    ("/usr/bin/node", ["node", "--experimental-loader", "x", "-e", "A"], "A", "-e"),
    ("/usr/bin/node", ["node", "--import", "x", "--eval", "A"], "A", "--eval"),
    ("/usr/bin/node", ["node", "--env-file-if-exists", "x", "-p", "A"], "A", "-p"),
])
def test_inline_code_is_read_by_the_interpreters_option_table(
        exe: str, argv: list[str], code: str, opt: str) -> None:
    assert inline_code(exe, argv) == (code, opt)


@pytest.mark.parametrize("exe,argv", [
    ("/usr/bin/python3", ["python3", "script.py", "-c", "X"]),   # -c of the script
    ("/usr/bin/python3", ["python3", "-m", "base64", "-d"]),     # a module
    ("/usr/bin/python3", ["python3", "-W", "-c", "x.py"]),       # -W's value is "-c"
    ("/usr/bin/perl", ["perl", "-I", "-e", "x.pl"]),             # -I's value is "-e"
    ("/usr/bin/perl", ["perl", "run.pl", "-e", "X"]),
    ("/usr/bin/perl", ["perl", "-ie", "x.pl"]),                 # -i's suffix is "e"
    ("/usr/bin/ruby", ["ruby", "-xe", "x.rb"]),                 # -x's directory is "e"
    ("/usr/bin/node", ["node", "--title", "-e", "x.js"]),       # --title's value is "-e"
    ("/usr/bin/dash", ["sh", "-c", "X"]),
])
def test_no_inline_code(exe: str, argv: list[str]) -> None:
    assert inline_code(exe, argv) is None


@pytest.mark.parametrize("code", [
    "import base64,os;os.system(base64.b64decode('aWQ=').decode())",
    "import codecs;print(codecs.decode('vq', 'rot13'))",
    "import binascii;print(binascii.unhexlify(b'6964'))",
    "print(bytes.fromhex('6964').decode())",
    "import zlib,sys;sys.stdout.buffer.write(zlib.decompress(sys.stdin.buffer.read()))",
    "use MIME::Base64; print decode_base64($ARGV[0])",
    'print pack("H*", "6964")',
    "print unpack('m', <STDIN>)",
    "console.log(Buffer.from(process.argv[1], 'base64').toString())",
    "echo base64_decode($argv[1]);",
    "puts 'aWQ='.unpack1('m')",
])
def test_decode_calls(code: str) -> None:
    assert decode_call(code) is not None


@pytest.mark.parametrize("code", [
    "import json,sys; print(json.load(sys.stdin)['name'])",
    "import base64;print(base64.b64encode(b'x'))",
    "print(open('f').read().decode('utf-8'))",
    "print(b'x'.decode())",
])
def test_not_decode_calls(code: str) -> None:
    assert decode_call(code) is None


def _ex(exe: str, argv: list[str]) -> ExecEvent:
    return ExecEvent(0, Proc(1, 1, 0, 0, 0, 0, 0, "x", exe=exe), argv=tuple(argv))


def test_cli_decoders() -> None:
    assert cli_decoder(_ex("/usr/bin/base64", ["base64", "-d"])) == "base64 -d"
    assert cli_decoder(_ex("/usr/bin/basenc", ["basenc", "--base64", "-d"])) == "basenc -d"
    assert cli_decoder(_ex("/usr/bin/openssl", ["openssl", "base64", "-d"])) is not None
    assert cli_decoder(_ex("/usr/bin/gzip", ["gzip", "-dc"])) == "gzip -d"
    assert cli_decoder(_ex("/usr/bin/zcat", ["zcat"])) == "zcat"
    assert cli_decoder(_ex("/usr/bin/gzip", ["gzip", "-9"])) is None
    assert cli_decoder(_ex("/usr/bin/base64", ["base64", "-w0"])) is None


# ---- 1. interpreter one-liners ------------------------------------------------------------

def test_inline_decode_medium_and_silent_lookalikes(tmp_path: Path) -> None:
    """A one-liner that decodes (a combined ``-Bc``, a perl ``-MMIME::Base64 -le``): medium,
    once, at its end; one that parses JSON or encodes: silent."""
    r = Rec()
    r.exec(200, 150, "/usr/bin/python3.11", ["python3", "-W", "ignore", "-Bc",
                                             "import base64;print(base64.b64decode('aWQ='))"])
    r.exit(200)
    r.exec(201, 150, "/usr/bin/perl", ["perl", "-MMIME::Base64", "-le",
                                       "print decode_base64(shift)", "aWQ="], stdout="file")
    r.exit(201)
    r.exec(202, 150, "/usr/bin/python3", ["python3", "-c",
                                          "import json,sys; print(json.load(sys.stdin)['a'])"],
           stdin="pipe:[5]")
    r.exit(202)
    r.exec(203, 150, "/usr/bin/python3", ["python3", "-c", "import base64;base64.b64encode(b'')"])
    r.exit(203)
    assert new(r.run(tmp_path)) == [("inline_decode", 200, "medium"),
                                    ("inline_decode", 201, "medium")]


def test_inline_decode_high_when_run_by_a_shell_once(tmp_path: Path) -> None:
    """Decoded and piped into ``sh`` (either exec order): high.  A child ``sh -c`` of
    ``python3 -c`` is decoded_file_exec's finding (one finding for the act); the same
    child of a ``-Bc`` spelling that rule does not read is ours (high); a one-liner that
    exec's itself into a shell: high."""
    r = Rec()
    r.exec(210, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[7]")          # reader first
    r.exec(211, 150, "/usr/bin/python3", ["python3", "-c", "print(bytes.fromhex('6964'))"],
           stdout="pipe:[7]")
    r.exit(211).exit(210)
    r.exec(220, 150, "/usr/bin/python3", ["python3", "-c",
                                          "import os,base64;os.system(base64.b64decode('aWQ='))"])
    r.exec(221, 220, "/usr/bin/dash", ["sh", "-c", "id"])
    r.exit(221).exit(220)
    r.exec(230, 150, "/usr/bin/python3", ["python3", "-Bc",
                                          "import os,base64;os.system(base64.b64decode('aWQ='))"])
    r.exec(231, 230, "/usr/bin/dash", ["sh", "-c", "id"])
    r.exit(231).exit(230)
    r.exec(240, 150, "/usr/bin/perl", ["perl", "-e", 'exec "/bin/sh", "-c", pack("H*", "6964")'])
    r.exec(240, 150, "/usr/bin/dash", ["/bin/sh", "-c", "id"])
    r.exit(240)
    found = r.run(tmp_path)
    assert new(found) == [("inline_decode", 211, "high"), ("inline_decode", 230, "high"),
                          ("inline_decode", 240, "high")]
    assert [f.pid for f in of(found, "decoded_file_exec")] == [221]


def test_inline_decode_long_running_is_reported_after_a_while(tmp_path: Path) -> None:
    r = Rec().exec(250, 150, "/usr/bin/node", ["node", "-e",
                                               "eval(Buffer.from(process.argv[1],'base64')+'')"])
    r.idle(251, 6)
    assert new(r.run(tmp_path)) == [("inline_decode", 250, "medium")]


# ---- 2. command-line decoders fed by the script itself -------------------------------------

def test_script_decode_fed_by_the_scripts_shell(tmp_path: Path) -> None:
    """``echo X | base64 -d`` in a script (no exec'd writer: the shell's echo), ``printf
    | xxd -r -p`` through the printf program, ``cat <<EOF | base64 -d`` and ``base64 -d``
    of a file the script's shell wrote: medium, one each."""
    r = Rec()
    r.exec(300, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[30]", stdout="file")
    r.exit(300)
    r.exec(310, 150, "/usr/bin/printf", ["printf", "6964"], stdout="pipe:[31]")
    r.exec(311, 150, "/usr/bin/xxd", ["xxd", "-r", "-p"], stdin="pipe:[31]")
    r.exit(310).exit(311)
    r.exec(320, 150, "/usr/bin/cat", ["cat"], stdin="pipe:[32]", stdout="pipe:[33]")
    r.exec(321, 150, "/usr/bin/base64", ["base64", "--decode"], stdin="pipe:[33]")
    r.exit(320).exit(321)
    r.write(150, "/root/blob.b64")
    r.exec(330, 150, "/usr/bin/base64", ["base64", "-d", "blob.b64"])
    r.exit(330)
    r.exec(340, 150, "/usr/bin/cat", ["cat", "/root/blob.b64"], stdout="pipe:[34]")
    r.exec(341, 150, "/usr/bin/xxd", ["xxd", "-r", "-p"], stdin="pipe:[34]")
    r.exit(340).exit(341)
    got = new(r.run(tmp_path))
    assert got == [("script_decode", 300, "medium"), ("script_decode", 311, "medium"),
                   ("script_decode", 321, "medium"), ("script_decode", 330, "medium"),
                   ("script_decode", 341, "medium")]


def test_script_decode_silent_lookalikes(tmp_path: Path) -> None:
    """A program's output decoded (``kubectl get secret | base64 -d``, in either exec
    order), a prompt's ``echo X | base64 -d``, a decoder whose stdin the script inherited
    from its own caller, and a file no shell wrote: silent."""
    r = Rec()
    r.exec(400, 150, "/usr/local/bin/kubectl", ["kubectl", "get", "secret"], stdout="pipe:[40]")
    r.exec(401, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[40]")
    r.exit(400).exit(401)
    r.exec(411, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[41]")
    r.exec(410, 150, "/usr/bin/curl", ["curl", "-s", "http://x"], stdout="pipe:[41]")
    r.exit(410).exit(411)
    r.exec(420, 100, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[42]")   # at the prompt
    r.exit(420)
    r.exec(430, 1, "/usr/bin/python3", ["python3", "app.py"])
    r.exec(431, 430, "/usr/bin/dash", ["sh", "-c", "base64 -d | tar x"], stdin="pipe:[43]")
    r.exec(432, 431, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[43]")
    r.exit(432)
    r.exec(440, 150, "/usr/bin/base64", ["base64", "-d", "/etc/app.b64"])
    r.exit(440)
    r.exec(445, 150, "/usr/bin/cat", ["cat", "/etc/app.b64"], stdout="pipe:[44]")
    r.exec(446, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[44]")
    r.exit(445).exit(446)
    # ``base64 < x > cfg.b64; base64 -d cfg.b64``: the shell's open was the program's
    # redirect (the forked shell then exec'd base64 with its stdout on the file)
    r.fork(150, 450).write(450, "/root/cfg.b64")
    r.exec(450, 150, "/usr/bin/base64", ["base64"], stdout="file")
    r.exit(450)
    r.exec(451, 150, "/usr/bin/base64", ["base64", "-d", "cfg.b64"])
    r.exit(451)
    # dash opens the redirect in the shell itself, before the fork (``gzip -c x > copy.gz;
    # zcat copy.gz``, seen live): still the program's redirect
    r.write(150, "/root/copy.gz").fork(150, 460)
    r.exec(460, 150, "/usr/bin/gzip", ["gzip", "-c", "big"], stdout="file")
    r.exit(460)
    r.exec(461, 150, "/usr/bin/gzip", ["gzip", "-cd", "copy.gz"])
    r.exit(461)
    assert new(r.run(tmp_path)) == []


def test_script_decode_piped_into_a_shell_is_one_finding(tmp_path: Path) -> None:
    """``echo X | base64 -d | sh``: the older decoded-payload rules report it; this rule
    adds nothing.  ``printf X | gzip -d | sh``: no older rule knows gzip: high here."""
    r = Rec()
    r.exec(500, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[50]", stdout="pipe:[51]")
    r.exec(501, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[51]")
    r.exit(500).exit(501)
    r.exec(511, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[53]")
    r.exec(510, 150, "/usr/bin/gzip", ["gzip", "-d"], stdin="pipe:[52]", stdout="pipe:[53]")
    r.exit(510).exit(511)
    found = r.run(tmp_path)
    assert new(found) == [("script_decode", 510, "high")]
    assert of(found, "piped_payload") and of(found, "decoded_payload_shell")


def test_script_decode_waits_for_a_late_reader(tmp_path: Path) -> None:
    """The decoder ended before its stdout's reader exec'd: the reader still decides."""
    r = Rec()
    r.exec(520, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[54]", stdout="pipe:[55]")
    r.exit(520)
    r.exec(521, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[55]")
    r.exec(530, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[56]", stdout="pipe:[57]")
    r.exit(530)
    r.exec(531, 150, "/usr/bin/gzip", ["gzip", "-c"], stdin="pipe:[57]")
    assert new(r.run(tmp_path)) == [("script_decode", 530, "medium")]


# ---- 3. commands a script pipes into a shell ----------------------------------------------

def test_generated_shell_from_the_scripts_own_words(tmp_path: Path) -> None:
    """``echo "$cmd" | sh`` (builtin: no writer exec), ``printf | bash`` through the
    printf program, ``cat <<EOF | sh``: medium, decided at the shell's first command or
    its end."""
    r = Rec()
    r.exec(600, 150, "/usr/bin/dash", ["/bin/sh"], stdin="pipe:[60]")
    r.exec(601, 600, "/usr/bin/id", ["id"])
    r.exit(601).exit(600)
    r.exec(610, 150, "/usr/bin/printf", ["printf", "%s\\n", "id"], stdout="pipe:[61]")
    r.exec(611, 150, "/usr/bin/bash", ["bash"], stdin="pipe:[61]")
    r.exit(610).exit(611)
    r.exec(620, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[63]")
    r.exec(621, 150, "/usr/bin/cat", ["cat"], stdin="pipe:[62]", stdout="pipe:[63]")
    r.exit(621).exit(620)
    assert new(r.run(tmp_path)) == [("generated_shell", 600, "medium"),
                                    ("generated_shell", 611, "medium"),
                                    ("generated_shell", 620, "medium")]


def test_generated_shell_silent_lookalikes(tmp_path: Path) -> None:
    """``ls | sed 's/.*/mv & &.bak/' | sh`` (sed writes), a prompt's ``echo ls | sh``, a
    ``cat file | sh`` (cat of a file), ``sh -s < x``-style inherited stdin of a script
    run by a program, and ``base64 -d | sh`` (piped_payload's): nothing from this rule."""
    r = Rec()
    r.exec(700, 150, "/usr/bin/sed", ["sed", "s/.*/mv & &.bak/"], stdin="pipe:[70]",
           stdout="pipe:[71]")
    r.exec(701, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[71]")
    r.exit(700).exit(701)
    r.exec(710, 100, "/usr/bin/dash", ["sh"], stdin="pipe:[72]")      # typed at the prompt
    r.exit(710)
    r.exec(720, 150, "/usr/bin/cat", ["cat", "steps.sh"], stdout="pipe:[73]")
    r.exec(721, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[73]")
    r.exit(720).exit(721)
    r.exec(730, 1, "/usr/bin/python3", ["python3", "runner.py"])
    r.exec(731, 730, "/usr/bin/bash", ["bash", "-c", "sh"], stdin="pipe:[74]")
    r.exec(732, 731, "/usr/bin/dash", ["sh"], stdin="pipe:[74]")
    r.exit(732)
    r.exec(740, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[75]", stdout="pipe:[76]")
    r.exec(741, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[76]")
    r.exit(740).exit(741)
    found = r.run(tmp_path)
    assert [f for f in new(found) if f[0] == "generated_shell"] == []
    assert of(found, "piped_payload")


def test_a_command_not_found_is_no_writer(tmp_path: Path) -> None:
    """``echo X | b64decode -r | sh`` where b64decode is not installed: the shell's
    forked child exits 127 without an exec and the pipe into ``sh`` carried nothing the
    script wrote: silent (T1140-7 decoded nothing).  The same pipeline whose middle
    command ran is the decoded-payload rules' business, and an ``echo`` into ``sh``
    beside it still raises."""
    r = Rec()
    r.fork(150, 800).exit(800, 127)
    r.exec(801, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[80]")
    r.exit(801)
    assert new(r.run(tmp_path)) == []
    r = Rec()
    r.fork(150, 800).exit(800, 0)
    r.exec(801, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[80]")
    r.exit(801)
    assert new(r.run(tmp_path)) == [("generated_shell", 801, "medium")]


def test_decided_when_the_act_ends_not_on_a_later_event(tmp_path: Path) -> None:
    """No event may be needed after the act (a sandbox, a quiet host): output into the
    script's own stdout pipe (read by whoever ran the script, no reader to wait for) is
    decided at the decoder's exit; output into a pipe of the script's making whose reader
    never exec'd (a builtin ``while read``) is decided when the pipeline's maker exits."""
    r = Rec()
    r.exec(160, 100, "/usr/bin/dash", ["sh", "-c", "s"], stdin="tty", stdout="pipe:[90]")
    r.exec(161, 160, "/usr/bin/python3", ["python3", "-c", "import base64;base64.b64decode('')"],
           stdout="pipe:[90]")
    r.exit(161)
    assert new(r.run(tmp_path)) == [("inline_decode", 161, "medium")]
    r = Rec()
    r.exec(170, 150, "/usr/bin/base64", ["base64", "-d"], stdin="pipe:[93]", stdout="pipe:[92]")
    r.exit(170)
    assert new(r.run(tmp_path)) == []
    r.exit(150)
    found = r.run(tmp_path)
    assert new(found) == [("script_decode", 170, "medium")]
    # settled by the script's exit, the finding is still about the decoder's exec
    assert [(f.event.type, f.event.proc.pid) for f in found if f.rule in NEW] == [("exec", 170)]


def test_a_wrapper_script_passes_the_pipe_on(tmp_path: Path) -> None:
    """``printf <gzip> | zcat | sh``: zcat is a shell script that exec's ``gzip -cd`` in its
    own place with the pipe it was handed; the pipe's maker is the script above it (high:
    decompressed into a shell).  A file the script wrote under /dev/shm is the script's."""
    r = Rec()
    r.exec(900, 150, "/usr/bin/dash", ["/bin/sh", "/usr/bin/zcat"], stdin="pipe:[95]",
           stdout="pipe:[96]")
    r.exec(900, 150, "/usr/bin/gzip", ["gzip", "-cd"], stdin="pipe:[95]", stdout="pipe:[96]")
    r.exec(901, 150, "/usr/bin/dash", ["sh"], stdin="pipe:[96]")
    r.exit(900).exit(901)
    r.write(150, "/dev/shm/.h")
    r.exec(910, 150, "/usr/bin/xxd", ["xxd", "-r", "-p", "/dev/shm/.h", "/dev/shm/.o"])
    r.exit(910)
    assert new(r.run(tmp_path)) == [("script_decode", 900, "high"),
                                    ("script_decode", 910, "medium")]
