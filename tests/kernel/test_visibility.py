"""Issue 15.1-15.3 on this host's kernel (compat tier, tracepoints): real reads of
secrets and real execs, in a scoped test cgroup, seen through the sensor and judged
by the behaviour rules.  The sensor is the one the assembly picks for the kernel's
event source (``event_sensor``): tracepoints here, the hook sensor in the lsm VM
(tests/vm/test_visibility_lsm.py runs these tests there).

* secret reads filtered in the kernel: ``cat /etc/shadow``, a Python ``open()``, a
  hard link to a marked file read under another name, ``find -name id_rsa`` + read,
  another process's ``/proc/PID/environ``; a plain file read is NOT reported;
* exec context: a ``#!`` script in /dev/shm reports its script; ``LD_PRELOAD`` from
  the environment; ``base64 -d | sh`` pairs the shell's stdin pipe with its writer;
* ``execveat(memfd, "", AT_EMPTY_PATH)`` of a script and of a binary, with the memfd
  name.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bastion import abi
from bastion.assembly import event_sensor
from bastion.events import Event, ExecEvent, FileEvent, PtraceEvent
from bastion.sensors.sensitive import DEFAULT_SENSITIVE
from support.cg import run_in, scoped_cgroup
from support.rules import behavior_findings  # noqa: E402

WORKLOAD = Path(__file__).resolve().parents[1] / "support" / "visibility_workload.sh"


@pytest.fixture(scope="module")
def event_source() -> str:
    """The event source of this kernel's tier report (hooks or tracepoints)."""
    from bastion.enforce.tiers import probe

    return probe().event_source


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory,
             event_source: str) -> tuple[list[Event], Path, str, list[Any]]:
    work = tmp_path_factory.mktemp("vis")
    tag = uuid.uuid4().hex[:8]
    (work / "secret").mkdir()
    (work / "secret" / "key").write_text("s3cret\n")
    (work / "elsewhere").mkdir()
    os.link(work / "secret" / "key", work / "elsewhere" / "link-to-key")
    (work / "home" / ".ssh").mkdir(parents=True)
    (work / "home" / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (work / "plain.txt").write_text("nothing\n")
    patterns = (*DEFAULT_SENSITIVE, (str(work / "secret" / "key"), abi.SensClass.CUSTOM),
                (str(work / "home" / ".ssh"), abi.SensClass.USER_KEYS))
    with scoped_cgroup() as (cg, cgid):
        sensor = event_sensor(event_source, cgroup_id=cgid, sensitive=patterns)
        sensor.open()
        try:
            assert {e.path for e in sensor.sensitive_entries} >= {
                "/etc/shadow", str(work / "secret" / "key"), str(work / "home" / ".ssh")}
            proc = run_in(cg, ["/bin/sh", str(WORKLOAD), str(work), tag], timeout=60)
            assert proc.returncode == 0, proc.stderr
            events: list[Event] = []
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                events += sensor.poll(0.05) or []
            assert sensor.drops() == 0
        finally:
            sensor.close()
    return events, work, tag, behavior_findings(events)


def _reads(events: list[Event], path: str) -> list[FileEvent]:
    return [e for e in events if isinstance(e, FileEvent) and e.op == "open" and e.path == path]


def _execs(events: list[Event]) -> list[ExecEvent]:
    return [e for e in events if isinstance(e, ExecEvent)]


def test_shadow_reads_by_cat_and_python(recorded) -> None:  # type: ignore[no-untyped-def]
    events, _, _, _ = recorded
    reads = _reads(events, "/etc/shadow")
    assert {e.proc.comm for e in reads} >= {"cat", "python3"}
    st = os.stat("/etc/shadow")
    for e in reads:
        assert e.sensitive == "credentials"
        assert (e.dev, e.ino) == (abi.kernel_dev(st.st_dev), st.st_ino)
        assert e.flags & 3 == os.O_RDONLY


def test_hard_link_is_caught_by_inode(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, _, _ = recorded
    reads = _reads(events, str(work / "elsewhere" / "link-to-key"))
    assert len(reads) == 1 and reads[0].sensitive == "custom"


def test_key_hunt_and_subtree(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, _, _ = recorded
    reads = _reads(events, str(work / "home" / ".ssh" / "id_rsa"))
    assert [e.proc.comm for e in reads] == ["cat"]
    assert reads[0].sensitive == "user-keys"
    # the directory itself (find's walk) is not a secret read
    assert not _reads(events, str(work / "home" / ".ssh"))


def test_plain_reads_stay_in_the_kernel(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, _, _ = recorded
    assert not _reads(events, str(work / "plain.txt"))
    assert not _reads(events, "/etc/gshadow")      # an O_PATH descriptor reads nothing
    assert all(e.sensitive for e in events if isinstance(e, FileEvent) and e.op == "open"
               and not e.flags & 3 and not e.flags & 0o1100)


def test_other_process_environ(recorded) -> None:  # type: ignore[no-untyped-def]
    events, _, _, _ = recorded
    env = [e for e in events if isinstance(e, FileEvent) and e.path.startswith("/proc/")
           and e.path.endswith("/environ")]
    assert env and all(e.sensitive == "proc-mem" for e in env)
    assert all(e.path != f"/proc/{e.proc.pid}/environ" for e in env)


def test_script_in_shm_reports_the_script(recorded) -> None:  # type: ignore[no-untyped-def]
    events, _, tag, findings = recorded
    script = f"/dev/shm/bastion-vis-{tag}.sh"
    ex = [e for e in _execs(events) if e.script == script]
    assert len(ex) == 1
    assert os.path.basename(os.path.realpath(ex[0].proc.exe)) in ("dash", "bash")
    hits = [f for f in findings if f.rule == "behavior.exec_from_tmp" and f.pid == ex[0].proc.pid]
    assert hits and script in hits[0].title


def test_loader_env_read_in_the_kernel(recorded) -> None:  # type: ignore[no-untyped-def]
    events, work, tag, findings = recorded
    want = f"LD_PRELOAD={work}/evil-{tag}.so"
    ex = [e for e in _execs(events) if want in e.env]
    assert len(ex) == 1 and ex[0].proc.exe.endswith("/true")
    assert [f for f in findings if f.rule == "behavior.loader_env" and f.pid == ex[0].proc.pid]


def test_a_preload_behind_a_padded_environment_is_reported(recorded) -> None:  # type: ignore[no-untyped-def]
    # s31: 1,100 padding variables pushed an LD_PRELOAD past the kernel's scan (192
    # entries then): the exec's record carried no variable and loader_env said nothing.
    # The cut is in the record, and reported
    events, _, tag, findings = recorded
    ex = [e for e in _execs(events) if e.argv == ("/bin/true", f"padded-{tag}")]
    assert len(ex) == 1 and ex[0].env_cut and not any("hidden" in v for v in ex[0].env), ex
    got = [f for f in findings if f.rule == "behavior.loader_env" and f.pid == ex[0].proc.pid]
    assert len(got) == 1 and got[0].severity == "medium" and "too long" in got[0].title, got


def test_decoded_payload_piped_into_shell(recorded) -> None:  # type: ignore[no-untyped-def]
    events, _, _, findings = recorded
    b64 = [e for e in _execs(events) if e.argv[:2] == ("base64", "-d")]
    assert len(b64) == 1 and b64[0].stdout.startswith("pipe:[")
    sh = [e for e in _execs(events) if e.stdin == b64[0].stdout and e.argv == ("sh",)]
    assert len(sh) == 1
    assert [f for f in findings if f.rule == "behavior.piped_payload"]


def test_execveat_memfd(recorded) -> None:  # type: ignore[no-untyped-def]
    events, _, tag, findings = recorded
    fd_execs = [e for e in _execs(events) if e.exec_fd]
    script = [e for e in fd_execs if e.script.startswith(f"memfd:vis-{tag}")]
    binary = [e for e in fd_execs if e.proc.exe.startswith(f"memfd:bin-{tag}")]
    assert len(script) == 1 and len(binary) == 1
    assert script[0].script_ino != 0
    fileless = {f.pid for f in findings if f.rule == "behavior.fileless_exec"}
    assert script[0].proc.pid in fileless and binary[0].proc.pid in fileless


def test_a_chosen_mtime_set_by_any_program_is_seen(recorded) -> None:  # type: ignore[no-untyped-def]
    # s23: python's os.utime (utimensat with explicit times) crosses with the time it
    # sets; the workload's `touch` of the same file to "now" does not cross at all
    events, work, tag, _ = recorded
    path = str(work / f"stomp-{tag}")
    ut = [e for e in events if isinstance(e, FileEvent) and e.op == "utimes" and e.path == path]
    assert len(ut) == 1, ut
    assert ut[0].mtime_set_ns == 1_000_000_000 * 1_000_000_000
    assert ut[0].mode == abi.UTIMES_MTIME | abi.UTIMES_ATIME
    assert ut[0].proc.comm.startswith("python3")


def test_process_vm_readv_of_another_process_is_seen_and_judged(recorded) -> None:  # type: ignore[no-untyped-def]
    # s23: reading another process's memory without ptrace (T1003.007-style scraping);
    # compat reports the call (VM_READV), the hook sensor its ptrace access check
    events, work, _, findings = recorded
    target = int((work / "vm-target").read_text())
    reads = [e for e in events if isinstance(e, PtraceEvent) and e.target_pid == target
             and e.request_name in ("VM_READV", "ATTACH")]
    assert reads, "no record of the process_vm_readv"
    hits = [f for f in findings if f.rule in ("behavior.proc_mem_access", "behavior.ptrace_injection")
            and f.evidence.get("target_pid") == target]
    assert hits and hits[0].severity == "high"
