"""Issue 15.1-15.3 without a kernel: the ABI 1.4 fields decode, the sensitive set
resolves to inodes, and the rules that use the new data judge it."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from bastion import abi
from bastion.detect.behavior.rules import LoaderEnvInjection
from bastion.detect.engine import Finding
from bastion.errors import ConfigError
from bastion.events import ExecEvent, FileEvent, Proc, decode, from_json, to_json
from bastion.sensors.sensitive import DEFAULT_SENSITIVE, check_patterns, entry_bytes, resolve
from support.rules import behavior_findings

OFFSET = 1_700_000_000 * 10**9


def _hdr(rec: Any, etype: abi.EventType, flags: int = 0) -> None:
    h = rec.hdr
    h.type, h.flags, h.size = etype, flags, ctypes.sizeof(rec)
    h.ts_ns, h.pid, h.tgid, h.ppid = 5_000_000, 101, 100, 1
    h.comm = b"sh"


# ---- decode ---------------------------------------------------------------------------

def test_exec_context_decodes() -> None:
    r = abi.ExecEvent()
    _hdr(r, abi.EventType.EXEC, abi.F_SCRIPT)
    r.exe, r.filename, r.cwd, r.script = b"/usr/bin/dash", b"./x.sh", b"/dev/shm", b"./x.sh"
    env = b"LD_PRELOAD=/tmp/a.so\0LD_PRELOADX=1\0PYTHONPATH=/tmp/p\0"
    ctypes.memmove(r.env, env, len(env))
    r.env_len = len(env)
    r.stdin_type, r.stdin_ino, r.stdout_type, r.stdout_ino = 1, 77, 12, 88
    ev = decode(bytes(r), OFFSET)
    assert isinstance(ev, ExecEvent)
    assert ev.script == "/dev/shm/x.sh"          # relative to the kernel's cwd
    assert ev.env == ("LD_PRELOAD=/tmp/a.so", "PYTHONPATH=/tmp/p")  # exact names only
    assert (ev.stdin, ev.stdout) == ("pipe:[77]", "socket:[88]")
    assert not ev.exec_fd and not ev.truncated
    assert from_json(to_json(ev)) == ev


def test_descriptor_exec_keeps_the_kernel_name() -> None:
    r = abi.ExecEvent()
    _hdr(r, abi.EventType.EXEC, abi.F_SCRIPT | abi.F_EXEC_FD | abi.F_TRUNC_ENV)
    r.exe, r.filename, r.cwd, r.script = b"/usr/bin/dash", b"/dev/fd/3", b"/root", b"memfd:x"
    r.script_ino, r.script_dev = 9, 5
    ev = decode(bytes(r), OFFSET)
    assert isinstance(ev, ExecEvent)
    assert ev.script == "memfd:x" and ev.exec_fd and ev.script_ino == 9
    assert ev.truncated                            # the env scan stopped early: said


def test_plain_exec_has_no_script() -> None:
    r = abi.ExecEvent()
    _hdr(r, abi.EventType.EXEC)
    r.exe, r.filename, r.script = b"/usr/bin/true", b"/bin/true", b"stale"
    ev = decode(bytes(r), OFFSET)
    assert isinstance(ev, ExecEvent) and ev.script == "" and ev.stdin == ""


def test_sensitive_file_decodes() -> None:
    r = abi.FileEvent()
    _hdr(r, abi.EventType.FILE, abi.F_SENSITIVE)
    r.op, r.sens_class, r.sens_id = abi.FileOp.OPEN, abi.SensClass.CREDENTIALS, 3
    ev = decode(abi.pack_file_record(r, b"/x/link"), OFFSET)
    assert isinstance(ev, FileEvent) and ev.sensitive == "credentials" and ev.sensitive_id == 3
    assert ev.path == "/x/link"
    r.hdr.flags = 0
    ev = decode(abi.pack_file_record(r, b"/x/link"), OFFSET)
    assert isinstance(ev, FileEvent) and ev.sensitive == "" and ev.sensitive_id == 0


# ---- the sensitive set ----------------------------------------------------------------

FS = {"/etc/shadow": (1, 10), "/etc/gshadow": (1, 11), "/root/.ssh": (1, 20),
      "/home/al/.ssh": (2, 30), "/home/al/.aws": (2, 31), "/etc/ssh/ssh_host_rsa_key": (1, 40),
      "/etc/ssh/ssh_host_ed25519_key": (1, 41), "/srv/link-to-shadow": (1, 10)}


def _resolve(patterns: Any, **kw: Any) -> Any:
    return resolve(patterns, homes=lambda: ["/root", "/home/al"],
                   glob=lambda p: sorted(k for k in FS if __import__("fnmatch").fnmatch(k, p)),
                   stat=FS.get, **kw)


def test_resolve_default_set_golden() -> None:
    got = [(e.path, e.sens_class.name, e.dev, e.ino) for e in _resolve(DEFAULT_SENSITIVE)]
    assert got == [
        ("/etc/shadow", "CREDENTIALS", 1, 10), ("/etc/gshadow", "CREDENTIALS", 1, 11),
        ("/etc/ssh/ssh_host_ed25519_key", "HOST_KEY", 1, 41),
        ("/etc/ssh/ssh_host_rsa_key", "HOST_KEY", 1, 40),
        ("/root/.ssh", "USER_KEYS", 1, 20), ("/home/al/.ssh", "USER_KEYS", 2, 30),
        ("/home/al/.aws", "CLOUD", 2, 31),
    ]


def test_resolve_one_entry_per_inode_and_limit() -> None:
    got = _resolve([("/srv/link-to-shadow", abi.SensClass.CUSTOM), ("/etc/shadow", abi.SensClass.CREDENTIALS)])
    assert [(e.path, e.sens_class) for e in got] == [("/srv/link-to-shadow", abi.SensClass.CUSTOM)]
    assert len(_resolve(DEFAULT_SENSITIVE, limit=2)) == 2
    k, v = entry_bytes(got[0])
    assert abi.InodeKey.from_buffer_copy(k).ino == 10
    assert abi.SensVal.from_buffer_copy(v).sens_class == abi.SensClass.CUSTOM


def test_bad_pattern_is_refused_by_place() -> None:
    with pytest.raises(ConfigError, match=r"sensitive path #2 'etc/x'"):
        check_patterns(["/etc/y", "etc/x"], "policy.yaml")


# ---- rules ----------------------------------------------------------------------------

def _proc(pid: int, ppid: int, exe: str) -> Proc:
    return Proc(pid=pid, tid=pid, ppid=ppid, uid=0, euid=0, gid=0, cgroup_id=1,
                comm=exe.rsplit("/", 1)[-1][:15], start_ns=pid, exe=exe)


def _exec(pid: int, ppid: int, exe: str, argv: tuple[str, ...], t: int = 1, **kw: Any) -> ExecEvent:
    return ExecEvent(t * 10**6, _proc(pid, ppid, exe), filename=exe, argv=argv, exe_dev=9,
                     exe_ino=pid, **kw)


def _run(evs: list[Any]) -> list[Finding]:
    return behavior_findings(evs)


def test_secret_read_through_a_hard_link() -> None:
    evs = [_exec(10, 1, "/tmp/x/grab", ("grab",)),
           FileEvent(2 * 10**6, _proc(10, 1, "/tmp/x/grab"), op="open", path="/srv/l", flags=0,
                     dev=1, ino=10, sensitive="credentials", sensitive_id=1)]
    hits = [f for f in _run(evs) if f.rule == "behavior.credential_access"]
    # a program in /tmp is an untrusted provenance: the read of a secret is stopped
    assert len(hits) == 1 and hits[0].severity == "critical" and hits[0].action == "kill"
    assert hits[0].evidence["class"] == "credentials" and "/srv/l" in hits[0].title


def test_secret_read_through_a_hard_link_by_an_ordinary_program_is_an_alert() -> None:
    evs = [_exec(10, 1, "/usr/local/bin/grab", ("grab",)),
           FileEvent(2 * 10**6, _proc(10, 1, "/usr/local/bin/grab"), op="open", path="/srv/l",
                     flags=0, dev=1, ino=10, sensitive="credentials", sensitive_id=1)]
    hits = [f for f in _run(evs) if f.rule == "behavior.credential_access"]
    assert len(hits) == 1 and hits[0].severity == "high" and hits[0].action == "alert"
    assert hits[0].evidence["class"] == "credentials" and "/srv/l" in hits[0].title


def test_script_in_tmp_and_memfd_script() -> None:
    evs = [_exec(10, 1, "/usr/bin/dash", ("/bin/sh", "/var/tmp/a.sh"), script="/var/tmp/a.sh"),
           _exec(11, 1, "/usr/bin/dash", ("/bin/sh", "/dev/fd/3"), t=2, script="memfd:x",
                 script_ino=5, exec_fd=True)]
    found = _run(evs)
    assert [f.pid for f in found if f.rule == "behavior.exec_from_tmp"] == [10]
    assert [f.pid for f in found if f.rule == "behavior.fileless_exec"] == [11]


def test_loader_env_once_per_injection() -> None:
    env = ("LD_PRELOAD=/dev/shm/h.so",)
    evs = [_exec(10, 1, "/usr/bin/ls", ("ls",), env=env),
           _exec(11, 10, "/usr/bin/id", ("id",), t=2, env=env),
           _exec(12, 1, "/usr/bin/id", ("id",), t=3, env=("LD_AUDIT=./a.so",))]
    hits = [f for f in _run(evs) if f.rule == "behavior.loader_env"]
    assert [(f.pid, f.severity) for f in hits] == [(10, "high"), (12, "high")]


@pytest.mark.parametrize("entry,want", [
    ("LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libeatmydata.so", None),
    ("LD_PRELOAD=libjemalloc.so.2", None),
    ("LD_PRELOAD=/home/u/hook.so", "high"),
    ("LD_LIBRARY_PATH=/opt/app/lib:/usr/lib", None),
    ("LD_LIBRARY_PATH=/opt/app/lib::/tmp/l", "medium"),
    ("PYTHONPATH=.", "medium"),
    ("BASH_ENV=/tmp/.rc", "medium"),
    ("PERL5OPT=-MEvil", "medium"),
    ("NODE_OPTIONS=--max-old-space-size=4096", None),
    ("NODE_OPTIONS=--require /tmp/x.js", "medium"),
])
def test_loader_env_judgement(entry: str, want: str | None) -> None:
    got = LoaderEnvInjection.judge(entry)
    assert (got[0] if got else None) == want


@pytest.mark.parametrize("shell_first", [True, False])
def test_piped_decoder_into_shell_either_order(shell_first: bool) -> None:
    sh = _exec(10, 1, "/usr/bin/dash", ("sh",), stdin="pipe:[5]")
    b64 = _exec(11, 1, "/usr/bin/base64", ("base64", "-d"), stdout="pipe:[5]")
    hits = [f for f in _run([sh, b64] if shell_first else [b64, sh])
            if f.rule == "behavior.piped_payload"]
    assert len(hits) == 1 and hits[0].severity == "high"
    assert hits[0].evidence["shell_pid"] == 10 and hits[0].evidence["writer_pid"] == 11


def test_curl_into_shell_is_medium_and_pipe_into_sh_c_is_nothing() -> None:
    evs = [_exec(11, 1, "/usr/bin/curl", ("curl", "-fsSL", "https://x"), stdout="pipe:[6]"),
           _exec(10, 1, "/usr/bin/bash", ("bash",), t=2, stdin="pipe:[6]"),
           _exec(12, 1, "/usr/bin/base64", ("base64", "-d"), t=3, stdout="pipe:[7]"),
           _exec(13, 1, "/usr/bin/bash", ("bash", "-c", "cat"), t=4, stdin="pipe:[7]")]
    hits = [f for f in _run(evs) if f.rule == "behavior.piped_payload"]
    assert [(f.pid, f.severity) for f in hits] == [(10, "medium")]


def test_other_process_environ_read_is_medium() -> None:
    evs = [_exec(10, 1, "/tmp/x/grab", ("grab",)),
           FileEvent(2 * 10**6, _proc(10, 1, "/tmp/x/grab"), op="open", path="/proc/55/environ",
                     flags=0, sensitive="proc-mem")]
    found = _run(evs)
    assert [(f.rule, f.severity) for f in found if f.rule in (
        "behavior.proc_mem_access", "behavior.credential_access")] == [
        ("behavior.proc_mem_access", "medium")]


# ---- the policy ------------------------------------------------------------------------

def test_policy_sensitive_paths() -> None:
    from bastion.config import PolicyError, load_policy, parse_policy
    from bastion.sensors.sensitive import patterns_for

    assert load_policy(None).events.sensitive_defaults is True
    c = parse_policy("version: 1\nevents:\n  sensitive_defaults: false\n  sensitive: [/srv/s, ~/.t]\n",
                     "p.yaml")
    assert patterns_for(c.events.sensitive_defaults, c.events.sensitive) == (
        ("/srv/s", abi.SensClass.CUSTOM), ("~/.t", abi.SensClass.CUSTOM))
    assert len(patterns_for(True, ())) == len(DEFAULT_SENSITIVE)
    with pytest.raises(PolicyError, match=r"p\.yaml:3:15: events\.sensitive: 'etc/x'"):
        parse_policy("version: 1\nevents:\n  sensitive: [etc/x]\n", "p.yaml")
