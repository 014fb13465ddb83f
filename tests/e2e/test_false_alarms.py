"""False alarms: a benign corpus run under the agent raises nothing high or critical.

The agent runs with the embedded default policy, i.e. the whole built-in
behaviour pack with its default severities and responses plus the built-in
rules, with two changes: ``behavior.dry_run: true`` and a 64 MiB ring.  The agent watches the
whole machine, and on a shared test host a live kill would land on other
people's processes (it did: a benchmark's ``bash -c`` loop); in dry-run every
response is still decided and recorded as ``would-kill`` / ``would-kill-tree``,
and the test fails on any such response to a corpus process exactly as it
would on a killed step.  Sigma content (``--sigma``) is deliberately *not*
loaded: Sigma rules are detection content with their own levels and their
own corpus tests; this test judges the behaviour pack and the built-ins.

The corpus runs in a scoped test cgroup, each step as ``/bin/sh -ec`` (the
shell breaks the tree walk of per-tree rules, so no response could reach the
pytest process itself; a step killed anyway shows up as a signal exit and
fails the test).  The agent watches the whole machine, so only alerts whose
triggering event came from the corpus cgroup count as the corpus's; the rest
(other workloads on a shared host) are printed apart.  The agent's own
machine-wide health notice ``bastion.sensor.drops`` (high) is not a rule's
false alarm and does not fail the test, but it is printed and raised as a
warning: the 20 000-file bursts can outrun the agent on a 2-vCPU host.  So
that a blind agent cannot pass, every step lists commands the agent must have
seen it execute; a step it did not see fails the test as inconclusive.
Also run with ``--basetemp`` under /root to put the corpus inside the
ransomware rule's data directories.

* packages: ``apt-get install -y --reinstall`` of ``hostname`` (46 kB),
  ``apt-get download less`` + ``dpkg -i`` of it (a reinstall of the installed
  version), a venv and ``pip install`` of a small pure-Python package
  (pyflakes), then running its console script;
* build: a four-file C project with a Makefile, ``make`` with gcc, the
  program run, ``make clean``;
* git: init, add, commit, branch, checkout, merge, log, a local clone, a
  commit in the clone, a pull and gc;
* archives: a tree of 20 000 files generated, ``tar czf`` of /usr/share/doc
  and of the tree, listed and extracted, ``gzip``/``gunzip`` of a large file;
* armed rules' look-alikes (issue 15): a local .deb shipping a cron job and a
  systemd unit, installed and purged with dpkg; a build script run from a temp
  dir and its product; visudo on a copy of sudoers (when installed); run-parts;
* launchers running commands (awk ``system()``, python ``subprocess``, ``find -exec
  sh``, ``xargs sh``): look-alikes of ``behavior.shell_escape``;
* executable memory that is no shellcode loader (``behavior.exec_memory``): ld.so,
  a python ctypes callback after a connect (libffi), node's and java's JITs;
* decoding and discovery (s13-det3): an installer asking three facts of the host, a
  base64 config and a hex blob decoded into files that are read, never run, python -c
  running a shell command without decoding, ``busybox sh -c``, a program replaced by cp
  and stripped: look-alikes of ``behavior.discovery_burst``, ``behavior.decoded_file_exec``,
  ``shell_escape`` and ``behavior.binary_padding``;
* detection depth (s14-det): a stdin-reading shell in a pipeline, python running ``sh
  -c`` after a loopback connect, ``touch -d``/``-r`` on build files, curl uploading a work
  file to a file:// URL, a hard link of a work file, ``journalctl --disk-usage``:
  look-alikes of ``behavior.relayed_shell``, ``timestomp``, ``exfil_upload``,
  ``credential_link`` and the journal vacuum of ``log_clearing``;
* decoded embedded data (s16-decode): a ``kubectl``-style program's secret piped to
  ``base64 -d``, a ``python3 -c 'import json,sys; ...'`` one-liner, a Makefile recipe's
  ``ls | sed | sh``: look-alikes of ``behavior.script_decode``, ``inline_decode`` and
  ``generated_shell``;
* services (s15-svc): ``systemctl restart rsyslog`` (when it runs), ``systemctl status``
  and ``show`` of auditd, ``iptables -L``, ``nft list ruleset``: look-alikes of
  ``behavior.disable_security_tools`` and ``behavior.firewall_tamper``;
* account look-ups (s16-stage): ``getent`` into a work file, ``grep -c`` of passwd into
  a file, ``cat /etc/passwd | grep -q``, ``awk``/``cut`` of the account files into a pipe
  or the step's output, ``pwck -r``, a copy of /etc/hostname into a work file, a copied
  program extended by ``truncate`` after it was replaced: look-alikes of
  ``behavior.account_staging`` and of binary padding's short-lived writer;
* secure deletion (s17-wipe): sqlite's rollback journal, an editor's swap file, a file
  rewritten in place by the process that created it then deleted, ``rm``, ``mv``, a log
  rotated by rename, ``sed -i``: look-alikes of ``behavior.secure_deletion`` (none may
  raise it);
* compile after delivery (s17-compile): a ``make`` build whose recipe compiles and runs
  its own test binary, an autoconf-style ``./configure`` compiling and running
  ``conftest``, ``setup.py build_ext`` of a tiny C extension (the venv's setuptools,
  offline), ``cargo run --offline`` of a new crate (when cargo is installed), and an
  interactive developer compile at a terminal (``script`` gives the shell a pty):
  look-alikes of ``behavior.compile_after_delivery``;
* this project's own unit tests (a < 30 s slice).

Everything the corpus writes is under ``tmp_path`` (the pip cache too); the
system is only touched by reinstalling packages that are already installed.
Run with ``BASTION_FA_REPORT=path.json`` to keep the per-severity counts, and with
``BASTION_FA_EVENTS=path.jsonl`` to keep the corpus cgroup's stored events (the replay
format: what-if measurements of a rule's variants on the same corpus, s16-stage).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, AgentProc, start_agent  # type: ignore[import-not-found]
from support.cg import scoped_cgroup  # type: ignore[import-not-found]

NETWORK_TROUBLE = ("Temporary failure resolving", "Could not resolve", "Failed to fetch",
                   "Could not connect", "Network is unreachable", "Connection refused",
                   "No matching distribution", "Max retries exceeded")


@dataclass
class Step:
    name: str
    rc: int
    seconds: float
    output: str
    expect: tuple[str, ...] = ()   # executables the agent must have seen the step run
    skipped: str = ""

    @property
    def killed(self) -> bool:
        # a signal exit of the shell or of its last command (128 + SIGKILL/SIGSTOP...)
        return self.rc < 0 or self.rc in (128 + 9, 128 + 19)


class Corpus:
    def __init__(self, tmp: Path, cg: Path, agent: AgentProc) -> None:
        self.tmp = tmp
        self.cg = cg
        self.agent = agent
        self.steps: list[Step] = []
        self.env = {
            **os.environ,
            "DEBIAN_FRONTEND": "noninteractive",
            "PIP_CACHE_DIR": str(tmp / "pip-cache"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(tmp / "gitconfig"),
            "GIT_AUTHOR_NAME": "Corpus", "GIT_AUTHOR_EMAIL": "corpus@example.org",
            "GIT_COMMITTER_NAME": "Corpus", "GIT_COMMITTER_EMAIL": "corpus@example.org",
        }
        self.env.pop("PYTEST_CURRENT_TEST", None)

    def run(self, name: str, script: str, cwd: Path, *, expect: tuple[str, ...],
            timeout: float = 120, network: bool = False) -> Step:
        t0 = time.monotonic()
        # join the test cgroup, then become the step's shell (exec: same pid)
        r = subprocess.run(["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec /bin/sh -ec "$1"',
                            str(self.cg), script], cwd=cwd, env=self.env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        st = Step(name, r.returncode, time.monotonic() - t0, r.stdout[-3000:], expect)
        if network and r.returncode > 0 and not st.killed and \
                any(s in r.stdout for s in NETWORK_TROUBLE):
            st.skipped = "network unavailable"
        self.steps.append(st)
        return st


C_FILES = {
    "util.h": "#ifndef UTIL_H\n#define UTIL_H\nunsigned long fib(unsigned n);\n"
              "unsigned long checksum(const char *s);\n#endif\n",
    "fib.c": '#include "util.h"\nunsigned long fib(unsigned n) {\n'
             "    unsigned long a = 0, b = 1;\n    while (n--) { unsigned long t = a + b; a = b; b = t; }\n"
             "    return a;\n}\n",
    "sum.c": '#include "util.h"\nunsigned long checksum(const char *s) {\n'
             "    unsigned long h = 5381;\n    while (*s) h = h * 33 + (unsigned char)*s++;\n"
             "    return h;\n}\n",
    "main.c": '#include <stdio.h>\n#include "util.h"\nint main(int argc, char **argv) {\n'
              '    printf("fib(50)=%lu sum=%lu\\n", fib(50), checksum(argc > 1 ? argv[1] : "x"));\n'
              "    return 0;\n}\n",
    "Makefile": "CC ?= gcc\nCFLAGS ?= -O2 -Wall -Wextra\nOBJS = main.o fib.o sum.o\n\n"
                "hello: $(OBJS)\n\t$(CC) $(CFLAGS) -o $@ $(OBJS)\n\n"
                "%.o: %.c util.h\n\t$(CC) $(CFLAGS) -c $<\n\n"
                "check: hello\n\t./hello corpus\n\n"
                "clean:\n\trm -f hello $(OBJS)\n\n.PHONY: check clean\n",
}


def _packages(c: Corpus) -> None:
    work = c.tmp / "pkg"
    work.mkdir()
    c.run("apt-get install --reinstall hostname",
          "apt-get install -y --reinstall -o Dpkg::Options::=--force-confold hostname", work,
          expect=("apt-get install -y --reinstall", "dpkg-deb --fsys-tarfile"),
          timeout=180, network=True)
    c.run("apt-get download less + dpkg -i",
          "apt-get download less\ndpkg -i less_*.deb", work,
          expect=("apt-get download less", "dpkg -i less_"), timeout=180, network=True)
    py = REPO / ".venv" / "bin" / "python"
    # as a user does it: an activated venv, the tool found on PATH (execve of an absolute path)
    c.run("venv + pip install pyflakes + run it",
          f"{py} -m venv venv\n"
          ". venv/bin/activate\n"
          "pip install -q pyflakes\n"
          "printf 'import os\\n' > lint_me.py\n"
          "pyflakes lint_me.py || test $? -eq 1\n"
          "python -c 'import pyflakes; print(pyflakes.__version__)'", work,
          expect=("-m ensurepip", "bin/pip install -q pyflakes", "bin/pyflakes lint_me.py"),
          timeout=180, network=True)


def _build(c: Corpus) -> None:
    src = c.tmp / "cproj"
    src.mkdir()
    for name, text in C_FILES.items():
        (src / name).write_text(text)
    c.run("make (gcc, 3 objects) + check + clean",
          "make -j2\nmake check\nmake clean\nmake -j2 hello", src,
          expect=("make -j2", "-c fib.c", "-o hello", "./hello corpus"))


def _git(c: Corpus) -> None:
    repo = c.tmp / "gitrepo"
    repo.mkdir()
    c.run("git init/add/commit/branch/merge/log/clone/pull/gc", (
        "git init -q -b main .\n"
        "for i in 1 2 3 4 5; do echo \"line $i\" > f$i.txt; done\n"
        "git add .\ngit commit -q -m initial\n"
        "git branch feature\ngit checkout -q feature\n"
        "echo more >> f1.txt\ngit commit -q -am 'feature work'\n"
        "git checkout -q main\ngit merge -q --no-edit feature\n"
        "git log --oneline --graph --all\ngit status --short\n"
        "git clone -q . ../gitclone\n"
        "cd ../gitclone && echo c >> f2.txt && git commit -q -am 'in the clone'\n"
        "cd ../gitrepo && git pull -q --no-rebase ../gitclone main\n"
        "git gc -q\ngit log --stat -3 >/dev/null\n"), repo,
        expect=("git commit -q -m initial", "git clone -q", "git pull -q", "git gc -q"))


GEN_TREE = """
import pathlib
for d in range(200):
    sub = pathlib.Path("tree", f"d{d:03}")
    sub.mkdir(parents=True)
    for f in range(100):
        (sub / f"f{f:03}.txt").write_text(f"file {d}/{f}\\n" * (1 + f % 7))
"""


def _archives(c: Corpus) -> None:
    work = c.tmp / "arch"
    work.mkdir()
    py = REPO / ".venv" / "bin" / "python"
    c.run("generate a tree of 20000 files", f"{py} - <<'EOF'\n{GEN_TREE}\nEOF\n", work,
          expect=("bin/python -",))
    c.run("tar czf /usr/share/doc", "tar czf doc.tgz -C /usr/share doc", work,
          expect=("tar czf doc.tgz",))
    c.run("tar czf + tar tzf + tar xzf of 20000 files", (
        "tar czf tree.tgz tree\n"
        "tar tzf tree.tgz | wc -l\n"
        "mkdir out\ntar xzf tree.tgz -C out\n"
        "test $(find out -type f | wc -l) -eq 20000\n"), work,
        expect=("tar czf tree.tgz", "tar xzf tree.tgz", "find out -type f"))
    c.run("gzip/gunzip of a large file", (
        "tar cf big.tar tree\ngzip -6 big.tar\ngunzip big.tar.gz\n"
        "gzip -c big.tar > copy.gz\nzcat copy.gz | cmp - big.tar\n"), work,
        expect=("gzip -6 big.tar", "gunzip big.tar.gz", "cmp - big.tar"))


def _armed(c: Corpus) -> None:
    """Benign look-alikes of what the provenance model now stops (issue 15): a local
    .deb that ships a cron job and a systemd unit (installed and purged by dpkg, a
    trusted tool); a build script and its product run from a temp dir (temp-dir
    provenance without any sensitive act); a downloader's file that is never run;
    visudo checking and editing a copy of sudoers (when sudo is installed); cron's
    run-parts listing its jobs."""
    work = c.tmp / "armed"
    work.mkdir()
    name = f"bastion-corpus-{os.getpid()}"
    pkg = work / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "etc" / "cron.d").mkdir(parents=True)
    (pkg / "lib" / "systemd" / "system").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: corpus <c@example.org>\n"
        "Description: benign corpus package\n")
    (pkg / "etc" / "cron.d" / name).write_text("# corpus\n17 3 * * * root /bin/true\n")
    (pkg / "lib" / "systemd" / "system" / f"{name}.service").write_text(
        "[Service]\nExecStart=/bin/true\n")
    c.run("local .deb with a cron job and a unit: dpkg -i, dpkg --purge",
          f"dpkg-deb --build pkg {name}.deb\ndpkg -i {name}.deb\n"
          f"test -f /etc/cron.d/{name}\ndpkg --purge {name}\ntest ! -e /etc/cron.d/{name}\n",
          work, expect=("dpkg-deb --build pkg", f"dpkg -i {name}.deb", f"dpkg --purge {name}"))
    # a build script in a temp dir: its product run, certificates looked up by name and
    # the firewall rules listed (secret_hunt and firewall_tamper stop a temp-dir script
    # that hunts private keys or flushes the firewall, not these)
    (work / "build.sh").write_text("#!/bin/sh\nset -e\nprintf 'int main(void){return 0;}\\n' > t.c\n"
                                   "gcc -o t t.c\n./t\ncat /etc/passwd > /dev/null\n"
                                   "find /etc/ssl -maxdepth 2 -name '*.pem' | head -1\n"
                                   "if command -v iptables >/dev/null; then iptables -S >/dev/null; fi\n")
    c.run("a build script and its product run from a temp dir", "sh ./build.sh", work,
          expect=("sh ./build.sh", "gcc -o t t.c", "-name *.pem"))
    if shutil.which("visudo"):
        c.run("visudo -c and an edit of a copy with visudo", (
            "cp /etc/sudoers sudoers.copy\n"
            "EDITOR='sh -c \"echo \\\"# corpus\\\" >> \\$0\"' visudo -f sudoers.copy\n"
            "visudo -c -f sudoers.copy\n"), work, expect=("visudo -c -f sudoers.copy",))
    if shutil.which("run-parts") and os.path.isdir("/etc/cron.daily"):
        c.run("cron's run-parts listing the daily jobs", "run-parts --test /etc/cron.daily",
              work, expect=("run-parts --test",))


def _admin_searches(c: Corpus) -> None:
    """Benign look-alikes of behavior.secret_hunt and behavior.security_config_tamper:
    an administrator listing certificates and configs by name, reading the logging
    configuration, and editing a copy of it outside /etc (medium at most; nothing high)."""
    work = c.tmp / "admin"
    work.mkdir()
    c.run("find certificates and configs by name; read and copy the syslog config", (
        "find /etc/ssl/certs -name '*.pem' | wc -l\n"
        "find /usr/share/doc -maxdepth 2 -name 'copyright' | head -3\n"
        "find /etc -maxdepth 1 -name '*.conf' | wc -l\n"
        "if [ -f /etc/rsyslog.conf ]; then cat /etc/rsyslog.conf > rsyslog.copy; "
        "sed -i '$ a # corpus' rsyslog.copy; fi\n"), work,
        expect=("-name *.pem", "-name *.conf"))


def _launchers(c: Corpus) -> None:
    """Benign look-alikes of behavior.shell_escape: awk, python and find running
    commands through ``sh -c`` and shell scripts (never an interactive shell), and
    xargs feeding a script to a shell."""
    work = c.tmp / "launchers"
    work.mkdir()
    (work / "step.sh").write_text("#!/bin/sh\necho step \"$@\"\n")
    py = REPO / ".venv" / "bin" / "python"
    c.run("awk system(), python subprocess, find -exec sh, xargs sh script", (
        "awk 'BEGIN { system(\"ls / > /dev/null\") }'\n"
        f"{py} -c 'import subprocess; subprocess.run([\"sh\", \"-c\", \"uname -r\"], check=True)'\n"
        "find . -maxdepth 1 -name 'step.sh' -exec sh {} found \\;\n"
        "printf 'a\\nb\\n' | xargs sh ./step.sh\n"), work,
        expect=("system(", "uname -r", "-exec sh", "xargs sh ./step.sh"))


# ctypes with a callback (libffi: a closure, on a memfd mapped executable or RWX memory),
# a loopback connect, and ld.so loading the C extension modules
_PY_FFI = (
    "import ctypes, json, socket, ssl, sqlite3\n"
    "l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n"
    "c = socket.create_connection(l.getsockname()); l.accept()[0].close(); c.close()\n"
    "CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)\n"
    "cmp = CB(lambda a, b: 0)\n"
    "arr = (ctypes.c_int * 4)(4, 3, 2, 1)\n"
    "ctypes.CDLL(None).qsort(arr, 4, ctypes.sizeof(ctypes.c_int), cmp)\n"
    "print('ffi ok')\n")
# a JIT at work after a (loopback) connection: node's V8, Java's HotSpot
_NODE_JIT = (
    "const net = require('net');\n"
    "const srv = net.createServer(s => s.end()).listen(0, '127.0.0.1', () => {\n"
    "  const c = net.connect(srv.address().port, '127.0.0.1', () => {\n"
    "    let x = 0; for (let i = 0; i < 3e7; i++) x = (x + i * 7) % 1000003;\n"
    "    console.log('jit', x); c.end(); srv.close(); });\n"
    "});\n")


def _jit_and_loaders(c: Corpus) -> None:
    """Executable memory that is not a shellcode loader (ABI 2.1, behavior.exec_memory):
    ld.so loading libraries, python with a ctypes callback after a connect (libffi),
    node's JIT after a connect, java's JIT (when installed)."""
    work = c.tmp / "jit"
    work.mkdir()
    py = REPO / ".venv" / "bin" / "python"
    (work / "ffi.py").write_text(_PY_FFI)
    script, expect = f"{py} ffi.py\n", ["ffi.py"]
    if shutil.which("node"):
        (work / "jit.js").write_text(_NODE_JIT)
        script += "node jit.js\n"
        expect.append("node jit.js")
    if shutil.which("java"):
        script += "java -Xshare:off -version 2>&1 | head -1\n"
        expect.append("-Xshare:off -version")
    c.run("ld.so, python ctypes callback, node/java JIT", script, work, expect=tuple(expect))


def _decode_and_discovery(c: Corpus) -> None:
    """Benign look-alikes of behavior.discovery_burst, behavior.decoded_file_exec and the
    busybox case of behavior.shell_escape: an installer asking three facts about the host
    (architecture, uid, OS release; uname twice), a base64 configuration and a hex blob
    decoded into files that are read, never run; python -c running a shell command
    without decoding anything; ``busybox sh -c`` (a command, not an interactive shell);
    a program run, replaced by cp and stripped (look-alikes of binary padding)."""
    work = c.tmp / "decode"
    work.mkdir()
    (work / "install.sh").write_text(
        "#!/bin/sh\narch=$(uname -m)\n[ \"$(id -u)\" -eq 0 ] || exit 1\n"
        ". /etc/os-release 2>/dev/null; cat /etc/os-release > /dev/null\n"
        "kernel=$(uname -r)\necho \"install for $arch $kernel\"\n")
    py = REPO / ".venv" / "bin" / "python"
    c.run("installer asking three facts; decoded config and blob read, not run", (
        "sh ./install.sh\n"
        "printf '{\"a\": 1}' | base64 > cfg.b64 && base64 -d cfg.b64 > cfg.json && cat cfg.json\n"
        "echo 7f454c46 | xxd -r -p > blob.bin 2>/dev/null || printf '\\177ELF' > blob.bin\n"
        f"{py} -c 'import base64; open(\"k.pem\", \"wb\").write(base64.b64decode(b\"aGk=\"))'\n"
        "od -c blob.bin k.pem > /dev/null\n"
        f"{py} -c 'import subprocess; subprocess.run(\"ls > /dev/null\", shell=True, check=True)'\n"
        + ("busybox sh -c 'echo hi' > /dev/null\n" if shutil.which("busybox") else "")
        # a program run, replaced (cp truncates), stripped (a new file renamed over it)
        + "cp /bin/true ./tool && ./tool && cp /bin/echo ./tool && ./tool ok >> tool.log\n"
        + "strip ./tool && ./tool stripped >> tool.log\n"),
        work, expect=("./install.sh", "cfg.b64", "od -c blob.bin", "ls > /dev/null",
                      "strip ./tool"))


def _decode_lookalikes(c: Corpus) -> None:
    """Benign look-alikes of the s16-decode rules: a ``kubectl``-style program printing a
    secret piped to ``base64 -d`` (a program wrote the pipe: behavior.script_decode stays
    silent), a ``python3 -c 'import json,sys; ...'`` one-liner reading JSON from a pipe
    (decodes nothing: behavior.inline_decode), and a Makefile recipe's ``ls | sed | sh``
    (sed writes the commands: behavior.generated_shell)."""
    work = c.tmp / "decode16"
    work.mkdir()
    py = REPO / ".venv" / "bin" / "python"
    (work / "kubectl").write_text(
        f"#!{py}\nimport base64, json\n"
        "print(json.dumps({'data': {'token': base64.b64encode(b's3cret').decode()}}))\n")
    (work / "kubectl").chmod(0o755)
    (work / "a.c").write_text("int a;\n")
    (work / "b.c").write_text("int b;\n")
    (work / "Makefile").write_text(
        "touch:\n\tls *.c | sed 's/\\(.*\\)\\.c/touch \\1.stamp/' | sh\n")
    c.run("a program's secret decoded, a JSON one-liner, make's ls | sed | sh", (
        f"./kubectl | {py} -c 'import json,sys; print(json.load(sys.stdin)[\"data\"][\"token\"])'"
        " | base64 -d > token\n"
        "make -s touch && test -e a.stamp && test -e b.stamp\n"),
        work, expect=("./kubectl", "import json,sys", "base64 -d", "make -s touch"))


def _service_lookalikes(c: Corpus) -> None:
    """Benign look-alikes of the service-stop and firewall rules read by structure
    (s15-svc): an administrator restarting rsyslog (when it runs), asking for the status
    and properties of auditd and of the agent's unit, listing the firewall.  None is a
    stop; a restart is no shutdown."""
    work = c.tmp / "services"
    work.mkdir()
    c.run("systemctl restart rsyslog, status auditd, iptables -L", (
        # a host or container without systemd as PID 1 refuses the bus: the commands
        # still run (and are judged), their failure is not the corpus's
        "if systemctl is-active -q rsyslog 2>/dev/null; then systemctl restart rsyslog; fi\n"
        "systemctl status auditd > /dev/null 2>&1 || true\n"
        "systemctl show auditd -p ActiveState > /dev/null 2>&1 || true\n"
        "systemctl --no-pager list-units --state=failed > /dev/null 2>&1 || true\n"
        "if command -v iptables >/dev/null; then iptables -L -n > /dev/null; fi\n"
        "if command -v nft >/dev/null; then nft list ruleset > /dev/null; fi\n"),
        work, expect=("systemctl status auditd", "systemctl show auditd"))


def _launder_lookalikes(c: Corpus) -> None:
    """Benign look-alikes of behavior.launder_via_daemon (s18-launder), from a script in
    the temp dir (tmp-script provenance): a tmux server of the script's own started
    detached with no command, listed, asked for a format with no ``#(...)``, killed;
    ``at``'s queue listed when at is installed.  None hands a command over."""
    work = c.tmp / "launder"
    work.mkdir()
    (work / "mux.sh").write_text(
        "#!/bin/sh\nset -e\nS=\"$PWD/mux.sock\"\n"
        "tmux -S \"$S\" -f /dev/null new-session -d -s corpus\n"
        "tmux -S \"$S\" ls > /dev/null\n"
        "tmux -S \"$S\" list-windows -F '#{window_name}' > /dev/null\n"
        "tmux -S \"$S\" display-message -p '#{session_name}' > /dev/null\n"
        "tmux -S \"$S\" has-session -t corpus\n"
        "tmux -S \"$S\" kill-server\n"
        "if command -v atq > /dev/null; then atq > /dev/null; fi\n")
    c.run("a temp-dir script's own tmux server, listed and killed", "sh ./mux.sh", work,
          expect=("sh ./mux.sh", "has-session -t corpus"))


def _depth_lookalikes(c: Corpus) -> None:
    """Benign look-alikes of the s14-det rules: a stdin-reading shell in a pipeline
    (``sh -s < x | tee``) and python feeding ``sh`` a script after a loopback connect
    it made itself but with ``-c`` (behavior.relayed_shell); ``touch -d``/``-r`` on build
    files (behavior.timestomp); curl uploading a work file to a file:// URL
    (behavior.exfil_upload); a hard link of a work file (behavior.credential_link);
    ``journalctl --disk-usage`` (log_clearing's vacuum)."""
    work = c.tmp / "depth"
    work.mkdir()
    (work / "steps.sh").write_text("echo one\necho two\n")
    (work / "report.txt").write_text("ok\n")
    py = REPO / ".venv" / "bin" / "python"
    c.run("pipelines, build stamps, a local upload, a hard link", (
        "sh -s < steps.sh | tee steps.log > /dev/null\n"
        f"{py} -c 'import socket,subprocess\n"
        "s=socket.socket();s.bind((\"127.0.0.1\",0));s.listen(1)\n"
        "c=socket.create_connection(s.getsockname())\n"
        "subprocess.run([\"sh\",\"-c\",\"true\"],stdin=subprocess.PIPE,check=True)'\n"
        "touch -d @0 steps.log && touch -r steps.sh report.txt\n"
        f"curl -s -T report.txt file://{work}/uploaded.txt && cmp report.txt uploaded.txt\n"
        "ln report.txt report.link\n"
        "journalctl --disk-usage > /dev/null 2>&1 || true\n"),
        work, expect=("tee steps.log", "socket,subprocess", "touch -d @0 steps.log",
                      "curl -s -T report.txt", "ln report.txt report.link"))


def _staging_lookalikes(c: Corpus) -> None:
    """Benign look-alikes of behavior.account_staging (s16-stage): the account files read
    by name look-ups and filters whose output is a count, a status, a pipe or the step's
    own output (a pipe to the test), ``pwck -r``; a work file copied; a log created by
    ``truncate`` (a new file, not a padded program)."""
    work = c.tmp / "staging"
    work.mkdir()
    c.run("account look-ups into counts, pipes and work files", (
        "getent passwd root > users.txt\n"
        "getent group root > /dev/null\n"
        "grep -c '^root:' /etc/passwd > count.txt\n"
        "cat /etc/passwd | grep -q root\n"
        "awk -F: '$3 == 0 {print $1}' /etc/passwd | sort > /dev/null\n"
        "cut -d: -f1 /etc/group | head -3\n"
        "if command -v pwck >/dev/null; then pwck -r -q > /dev/null 2>&1 || true; fi\n"
        "cp /etc/hostname ./hostname.copy\n"
        "cp /bin/true ./t2 && ./t2 && cp /bin/false ./t2 && truncate -s 0 ./t2.log\n"),
        work, expect=("getent passwd root", "grep -c ^root: /etc/passwd",
                      "cut -d: -f1 /etc/group", "truncate -s 0 ./t2.log"))


WIPE_LOOKALIKES = """\
import os, sqlite3
db = sqlite3.connect("app.db")
db.execute("PRAGMA journal_mode=DELETE")
db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT)")
for i in range(3):
    with db:
        db.execute("INSERT INTO t VALUES (?)", (str(i),))
db.close()
fd = os.open(".notes.txt.swp", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"swap")
os.lseek(fd, 0, 0)
os.write(fd, b"SWAP")
os.close(fd)
os.unlink(".notes.txt.swp")
with open("own.tmp", "wb") as f:
    f.write(b"x" * 64)
with open("own.tmp", "r+b") as f:
    f.write(b"y" * 64)
os.unlink("own.tmp")
"""
# s18-created: a cache file made by O_CREAT|O_RDWR alone (no O_TRUNC/O_EXCL, no lock name),
# written, rewritten and deleted, in a process of its own (the sensor's per-process open
# dedup would hide its open behind an earlier file's reused inode number)
OWN_CACHE = """\
import os
fd = os.open("session.cache", os.O_RDWR | os.O_CREAT, 0o600)
os.write(fd, b"state")
os.lseek(fd, 0, 0)
os.write(fd, b"STATE")
os.close(fd)
os.unlink("session.cache")
"""


def _wipe_lookalikes(c: Corpus) -> None:
    """Benign look-alikes of behavior.secure_deletion (s17-wipe): sqlite's rollback
    journal (created, rewritten and deleted by the process itself), an editor's swap
    file (O_EXCL), a file a process rewrote in place after creating it, then deleted, a
    cache file created with O_CREAT|O_RDWR alone, written and deleted (s18-created: the
    kernel says the open created it), ``rm`` of a file nobody overwrote, ``mv``, a log
    rotated by rename, ``sed -i``."""
    work = c.tmp / "wipe"
    work.mkdir()
    (work / "lookalikes.py").write_text(WIPE_LOOKALIKES)
    (work / "cache.py").write_text(OWN_CACHE)
    py = REPO / ".venv" / "bin" / "python"
    c.run("journals, swap files, rm, mv and rotation", (
        f"{py} lookalikes.py\n"
        f"{py} cache.py\n"
        "echo notes > notes.txt && cp notes.txt notes.txt~ && rm notes.txt~\n"
        "echo a > app.log && mv app.log app.log.1 && gzip -f app.log.1 && rm app.log.1.gz\n"
        "echo 'k=v' > conf && sed -i 's/v/w/' conf && rm conf\n"
        "mv app.db app.db.bak && rm -f app.db.bak\n"),
        work, expect=("lookalikes.py", "cache.py", "cp notes.txt notes.txt~",
                      "sed -i s/v/w/ conf"))


CONFIGURE = """#!/bin/sh
# an autoconf-style probe: what ./configure does for "checking whether the C compiler works"
echo "checking whether the C compiler works..."
cat > conftest.c <<_ACEOF
int main(void) { return 0; }
_ACEOF
if gcc -o conftest conftest.c && ./conftest; then echo yes; else echo no; exit 1; fi
rm -f conftest conftest.c
"""

SETUP_PY = ("from setuptools import Extension, setup\n"
            "setup(name='corpusext', version='0.1', ext_modules=[Extension('corpusext', ['corpusext.c'])])\n")
EXT_C = ('#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "corpusext", 0, -1, 0};\n'
         "PyMODINIT_FUNC PyInit_corpusext(void) { return PyModule_Create(&m); }\n")


def _compile_lookalikes(c: Corpus) -> None:
    """Builds and compiles that are not compile-after-delivery (s17-compile): make running
    the test binary its recipe built, a configure probe, a C extension built by setuptools
    (loaded, never exec'd), cargo's build and run, a developer compiling at a terminal."""
    work = c.tmp / "compile"
    work.mkdir()
    (work / "unit.c").write_text("int main(void) { return 0; }\n")
    (work / "Makefile").write_text("test: t_unit\n\t./t_unit\n\nt_unit: unit.c\n\t$(CC) -o $@ unit.c\n")
    (work / "configure").write_text(CONFIGURE)
    (work / "configure").chmod(0o755)
    c.run("make builds and runs its test binary; an autoconf-style configure probe",
          "make -s test\n./configure\n", work,
          expect=("make -s test", "./t_unit", "./configure", "./conftest"))
    ext = work / "ext"
    ext.mkdir()
    (ext / "setup.py").write_text(SETUP_PY)
    (ext / "corpusext.c").write_text(EXT_C)
    py = REPO / ".venv" / "bin" / "python"
    c.run("setup.py build_ext of a tiny C extension, imported",
          f"{py} setup.py -q build_ext --inplace\n{py} -c 'import corpusext'\n", ext,
          expect=("build_ext --inplace", "import corpusext"))
    if shutil.which("cargo"):
        c.run("cargo new + cargo run --offline",
              "cargo new -q --vcs none hello\ncd hello && cargo run -q --offline\n", work,
              expect=("cargo run -q --offline", "target/debug/hello"), timeout=180)
    (work / "dev.c").write_text('#include <stdio.h>\nint main(void) { puts("dev"); return 0; }\n')
    if shutil.which("script"):
        # a developer's shell on a terminal (script gives it a pty), typing the commands;
        # without the host's rc files: root's ~/.bashrc ran `pyenv init`, whose rehash
        # waited 60 s on a stale pyenv lock file left on this host (s28)
        c.run("an interactive developer compile at a terminal (pty)",
              "printf 'gcc -o dev dev.c && ./dev\\nexit\\n' | "
              "script -q -e -c 'bash --noprofile --norc -i' /dev/null\n",
              work, expect=("gcc -o dev dev.c", "./dev"))


def _unit_tests(c: Corpus) -> None:
    py = REPO / ".venv" / "bin" / "python"
    c.run("unit tests (events or config)",
          f"{py} -m pytest -q -p no:cacheprovider --basetemp={c.tmp / 'unit-tmp'} "
          "tests/unit -x -k 'events or config'", REPO,
          expect=("-m pytest -q -p no:cacheprovider",), timeout=120)


def _status(agent: AgentProc) -> dict[str, Any]:
    r = agent.cli("status", "--socket", str(agent.socket), "--json")
    st: dict[str, Any] = json.loads(r.stdout)
    return st


def _quiesce(agent: AgentProc, timeout: float = 30) -> None:
    """Wait until the agent has drained the sensor (event count stable for 2 s)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = int(_status(agent).get("events_total", 0))
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 2.0:
            return
        time.sleep(0.25)


def _alerts(agent: AgentProc) -> list[dict[str, Any]]:
    r = agent.cli("alerts", "--data-dir", str(agent.data_dir), "--json")
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


def _blind(agent: AgentProc, cgid: int, steps: list[Step]) -> list[str]:
    """Expected commands of the steps that the agent never saw executed (lost events)."""
    r = agent.cli("events", "--data-dir", str(agent.data_dir), "--json", "--type", "exec")
    seen = [" ".join(e.get("argv", [])) for e in map(json.loads, r.stdout.splitlines())
            if e.get("cgroup_id") == cgid]
    return [f"{s.name}: {want!r}" for s in steps if not s.skipped for want in s.expect
            if not any(want in line for line in seen)]


def _table(alerts: list[dict[str, Any]]) -> str:
    rows = collections.Counter((a["severity"], a["rule"], a["action"], a["process"]["exe"],
                                a["title"][:110]) for a in alerts)
    order = {s: i for i, s in enumerate(("critical", "high", "medium", "low", "info"))}
    return "\n".join(f"  {n:4}x {sev:8} {rule} [{act}] {exe}: {title}"
                     for (sev, rule, act, exe, title), n in
                     sorted(rows.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])))


def _summary(alerts: list[dict[str, Any]]) -> str:
    by_sev = collections.Counter(a["severity"] for a in alerts)
    return ", ".join(f"{k} {by_sev.get(k, 0)}" for k in ("critical", "high", "medium", "low", "info"))


def test_benign_corpus_raises_nothing_high(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent needs root (and the corpus reinstalls packages)")
    for tool in ("apt-get", "dpkg", "gcc", "make", "git", "tar", "gzip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    t0 = time.monotonic()
    (tmp_path / "agent").mkdir()
    (tmp_path / "corpus").mkdir()
    default = resources.files("bastion").joinpath("data/default-policy.yaml").read_text()
    assert "\nbehavior:\n  dry_run: false\n" in default
    assert "\n  ring_buffer: 8MiB\n" in default
    policy = tmp_path / "agent" / "policy.yaml"
    # the 20,000-file bursts outrun the agent on a 2-vCPU host: a larger ring
    # absorbs them, so that every step is seen (this test judges the rules)
    from support.policies import default_policy

    default_policy(policy, tmp_path / "agent" / "shielded",
                   default.replace("\nbehavior:\n  dry_run: false\n", "\nbehavior:\n  dry_run: true\n")
                   .replace("\n  ring_buffer: 8MiB\n", "\n  ring_buffer: 64MiB\n"))
    agent = start_agent(tmp_path / "agent", "--quiet", "--policy", str(policy))
    me = os.getpid()
    drops0 = int(_status(agent).get("drops", 0))
    try:
        with scoped_cgroup() as (cg, cgid):
            corpus = Corpus(tmp_path / "corpus", cg, agent)
            _packages(corpus)
            _build(corpus)
            _git(corpus)
            _archives(corpus)
            _armed(corpus)
            _admin_searches(corpus)
            _launchers(corpus)
            _jit_and_loaders(corpus)
            _decode_and_discovery(corpus)
            _depth_lookalikes(corpus)
            _decode_lookalikes(corpus)
            _service_lookalikes(corpus)
            if shutil.which("tmux") is not None:
                _launder_lookalikes(corpus)
            _staging_lookalikes(corpus)
            _wipe_lookalikes(corpus)
            _compile_lookalikes(corpus)
            _unit_tests(corpus)
            _quiesce(agent)
        time.sleep(1.5)   # the agent's health pass (drop counter) runs every second
        alerts = _alerts(agent)
        status = _status(agent)
        blind = _blind(agent, cgid, corpus.steps)
        if out_events := os.environ.get("BASTION_FA_EVENTS"):
            r = agent.cli("events", "--data-dir", str(agent.data_dir), "--json")
            rows = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
            Path(out_events).write_text("".join(   # stored order (oldest first)
                json.dumps(e) + "\n" for e in rows if e.get("cgroup_id") == cgid))
    finally:
        rc = agent.stop()
    elapsed = time.monotonic() - t0

    drops = int(status.get("drops", 0)) - drops0
    ours = [a for a in alerts if (a.get("event") or {}).get("cgroup_id") == cgid]
    others = [a for a in alerts if a not in ours]
    report = "\n".join(
        [f"corpus under the agent: {elapsed:.1f}s, {status.get('events_total')} events "
         f"(machine-wide), {drops} lost by the sensor (ring full), "
         f"{status.get('alerts_suppressed', 0)} repeats suppressed",
         "steps:"]
        + [f"  {s.seconds:6.1f}s rc={s.rc} {s.name}"
           + (f" (skipped: {s.skipped})" if s.skipped else "") for s in corpus.steps]
        + [f"corpus alerts ({len(ours)}) by severity: {_summary(ours)}", _table(ours) or "  (none)",
           f"other alerts, not from the corpus cgroup ({len(others)}): {_summary(others)}",
           _table(others) or "  (none)"]
        + ([f"NOT SEEN by the agent (events lost): {b}" for b in blind]))
    print(report)
    if out := os.environ.get("BASTION_FA_REPORT"):
        Path(out).write_text(json.dumps({
            "seconds": round(elapsed, 1), "events": status.get("events_total"),
            "drops": drops, "blind": blind, "suppressed": status.get("alerts_suppressed", 0),
            "by_severity": dict(collections.Counter(a["severity"] for a in ours)),
            "steps": [{"name": s.name, "rc": s.rc, "seconds": round(s.seconds, 1),
                       "skipped": s.skipped} for s in corpus.steps],
            "alerts": [{k: a.get(k) for k in ("rule", "severity", "action", "title")}
                       | {"exe": a["process"]["exe"]} for a in ours],
            "others": [{k: a.get(k) for k in ("rule", "severity", "action", "title")}
                       | {"exe": a["process"]["exe"]} for a in others]}, indent=1))

    if drops:
        # Not a rule's false alarm but the agent's own health notice (high):
        # the 20 000-file bursts outrun the agent on a 2-vCPU host.  Kept
        # visible here rather than hidden; the blind check below makes sure
        # every step was still seen.
        warnings.warn(f"bastion.sensor.drops: the sensor lost {drops} events (machine-wide) "
                      "while the corpus ran", stacklevel=1)
    assert rc == 0, "agent exited with an error: " + "".join(agent.stderr[-20:])
    # no response may have been aimed at the test process itself
    assert not [a for a in alerts if a["process"]["pid"] == me and a["action"] != "alert"], report
    killed = [s for s in corpus.steps if s.killed]
    assert not killed, "benign steps were killed (false alarms):\n" + report
    acted = [a for a in ours if a["action"] != "alert"]
    assert not acted, "responses decided against benign steps (false alarms):\n" + report
    failed = [s for s in corpus.steps if s.rc != 0 and not s.skipped]
    assert not failed, "corpus steps failed:\n" + "\n".join(f"--- {s.name}\n{s.output}"
                                                             for s in failed)
    # JITs, libffi and ld.so are not shellcode loaders: not even a medium alert
    xmem = [a for a in ours if a["rule"] == "behavior.exec_memory"]
    assert not xmem, "executable memory of benign runtimes alerted:\n" + _table(xmem)
    # nothing here overwrites a file it did not create and then deletes it (s17-wipe)
    wiped = [a for a in ours if a["rule"] == "behavior.secure_deletion"]
    assert not wiped, "secure deletion alerted on benign steps:\n" + _table(wiped)
    bad = [a for a in ours if a["severity"] in ("high", "critical")]
    assert not bad, f"{len(bad)} high/critical alerts on a benign corpus:\n" + report
    # a blind agent raises nothing: the result only counts if the corpus was seen
    assert not blind, ("inconclusive: the sensor lost events while the corpus ran (ring "
                       "buffer full; another workload flooding the host?):\n" + report)
    assert elapsed < 240, f"the corpus took {elapsed:.0f}s (budget 240s)"
