"""The kernel-first event sensor (lsm_events.bpf.o) on Debian's stock kernel (test VM).

Each test scopes the sensor to its own cgroup (nothing is denied: the sensor only
observes).  Attacks kept as tests, each run against both sensors: the tracepoint
sensor (the compat tier's, which the lsm tier used before) misses them — strict
xfail, so a tracepoint sensor that saw them would fail the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion import abi  # noqa: E402
from bastion.enforce.tiers import probe  # noqa: E402
from bastion.events import Event, ExecEvent, ExitEvent, FileEvent, KillEvent, NetEvent, PtraceEvent  # noqa: E402
from bastion.sensors.bpf import BpfSensor, HookSensor  # noqa: E402
from support.cg import run_in, scoped_cgroup  # noqa: E402
from support.extfs import REUSE_SCRIPT, ext4_mount  # noqa: E402
from support.floods import KILL_SCRIPT, XMEM_SCRIPT  # noqa: E402

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)
REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

SENSORS = [
    pytest.param(HookSensor, id="hooks"),
    pytest.param(BpfSensor, id="tracepoints",
                 marks=pytest.mark.xfail(strict=True, raises=AssertionError,
                                         reason="syscall tracepoints miss it")),
]


def _collect(sensor: BpfSensor, until: Callable[[list[Event]], bool], secs: float = 5.0) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        events += sensor.poll(0.05) or []
        if until(events):
            break
    return events


def _exited(code: int) -> Callable[[list[Event]], bool]:
    return lambda evs: any(e.type == "exit" and getattr(e, "exit_code", None) == code
                           for e in evs)


def test_probe_chooses_hook_sensor() -> None:
    report = probe()
    assert report.tier == "lsm"
    assert report.event_source == "hooks"
    assert report.capability("events").mechanism.startswith("kernel hooks")


def test_hook_sensor_loads_without_syscall_tracepoints() -> None:
    sensor = HookSensor(cgroup_id=1)
    sensor.open()
    try:
        assert sensor.missing == [], sensor.missing
        assert {"on_file_open", "on_exec", "on_socket_connect", "on_path_unlink",
                "on_task_kill", "on_bpf", "on_accept"} <= set(sensor.attached)
    finally:
        sensor.close()
    # nothing of ours on a syscall tracepoint: no global slow path
    links = subprocess.run(["bpftool", "link", "show"], capture_output=True, text=True)
    assert "sys_enter" not in links.stdout and "sys_exit" not in links.stdout


def _run_shell(script: str, code: int, **sensor_kw: Any) -> list[Event]:
    """``sh -c script`` in a scoped cgroup under the hook sensor (``sensor_kw``: its
    settings); the events up to its exit with ``code``."""
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, **sensor_kw)
        sensor.open()
        try:
            r = run_in(cg, ["/bin/sh", "-c", script], timeout=60)
            assert r.returncode == code, r.stderr
            return _collect(sensor, _exited(code))
        finally:
            sensor.close()


def test_events_with_paths_from_kernel_objects(tmp_path: Path) -> None:
    d = tmp_path / "work"
    d.mkdir()
    script = (f"cd {d} && echo x > a && mv a b && chmod 600 b && ln b l && rm b && /bin/true; "
              f"{PY} -c \"import socket; s=socket.socket(); s.settimeout(1)\n"
              f"try: s.connect(('127.0.0.1', 9))\nexcept OSError: pass\"; exit 7")
    events = _run_shell(script, 7, open_dedup_s=0)
    files = [e for e in events if isinstance(e, FileEvent)]
    opens = [e for e in files if e.op == "open" and e.path == f"{d}/a"]
    assert opens and opens[0].flags & os.O_WRONLY and opens[0].ino > 0, files
    assert any(e.op == "rename" and (e.path, e.path2) == (f"{d}/a", f"{d}/b") for e in files), files
    assert any(e.op == "chmod" and e.path == f"{d}/b" and e.mode == 0o600 for e in files), files
    # security_path_link: the existing file and the new name (FILE_LINK, as linkat's)
    assert any(e.op == "link" and (e.path, e.path2) == (f"{d}/b", f"{d}/l") and e.ino > 0
               for e in files), files
    assert any(e.op == "unlink" and e.path == f"{d}/b" for e in files), files
    execs = [e for e in events if isinstance(e, ExecEvent)]
    assert any(e.proc.exe in ("/usr/bin/true", "/bin/true") and e.filename == "/bin/true"
               for e in execs), execs
    conns = [e for e in events if isinstance(e, NetEvent) and e.op == "connect"]
    assert any(e.daddr == "127.0.0.1" and e.dport == 9 for e in conns), conns


# s31: an exec record names the mount namespace the process exec'd in, so a trusted
# script's path (resolved in the agent's namespace) is not taken for a file a user
# bind-mounted over it in a namespace of their own (unshare -Urm).
def test_an_exec_names_its_mount_namespace() -> None:
    here = os.stat("/proc/self/ns/mnt").st_ino
    script = ("/bin/true marker-host; unshare -m /bin/true marker-private; "
              "chroot / /bin/true marker-root; chroot /usr /bin/busybox true marker-jailed; "
              "exit 4")
    events = _run_shell(script, 4)
    markers = (("marker-host",), ("marker-private",), ("marker-root",), ("marker-jailed",))
    execs = {e.argv[-1]: e for e in events      # the programs run, not unshare(1)/chroot(1)
             if isinstance(e, ExecEvent) and e.argv[-1:] in markers
             and os.path.basename(e.proc.exe) not in ("unshare", "chroot")}
    ns = {k: e.mnt_ns for k, e in execs.items()}
    assert ns.get("marker-host") == here, (ns, here)
    assert ns.get("marker-private") not in (None, 0, here), (ns, here)
    # under the agent's own root: not flagged (a flag on every exec would trust no script
    # anywhere), a chroot to it neither; under another root, or the copy of the root
    # mount a new namespace has: flagged
    assert not execs["marker-host"].rooted and not execs["marker-root"].rooted, execs
    assert execs["marker-jailed"].rooted and execs["marker-private"].rooted, execs


# io_uring: an openat submitted through the ring, with no open/openat syscall.
IO_URING_OPEN = r'''
import ctypes, mmap, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)                     # io_uring_setup
if fd < 0:
    sys.exit("io_uring_setup: errno %d" % ctypes.get_errno())
sq_entries, cq_entries = struct.unpack_from("<II", params, 0)
sq_head, sq_tail, sq_mask, _, _, _, sq_array = struct.unpack_from("<7I", params, 40)
cq_head, cq_tail, cq_mask, _, _, cqes = struct.unpack_from("<6I", params, 80)
sq = mmap.mmap(fd, sq_array + sq_entries * 4, offset=0)
sqes = mmap.mmap(fd, sq_entries * 64, offset=0x10000000)
cq = mmap.mmap(fd, cqes + cq_entries * 16, offset=0x8000000)
path = ctypes.create_string_buffer(sys.argv[1].encode())
flags = os.O_WRONLY | os.O_CREAT
# opcode IORING_OP_OPENAT=18, fd=AT_FDCWD, off, addr=path, len=mode, open_flags, user_data
sqes[0:64] = struct.pack("<BBHiQQIIQ", 18, 0, 0, -100, 0, ctypes.addressof(path), 0o644,
                          flags, 42).ljust(64, b"\0")
tail = struct.unpack_from("<I", sq, sq_tail)[0]
struct.pack_into("<I", sq, sq_array + (tail & struct.unpack_from("<I", sq, sq_mask)[0]) * 4, 0)
struct.pack_into("<I", sq, sq_tail, tail + 1)
n = libc.syscall(426, fd, 1, 1, 1, None, 0)           # io_uring_enter(GETEVENTS)
if n < 0:
    sys.exit("io_uring_enter: errno %d" % ctypes.get_errno())
head = struct.unpack_from("<I", cq, cq_head)[0]
user_data, res, _ = struct.unpack_from("<QiI", cq, cqes + (head & struct.unpack_from("<I", cq, cq_mask)[0]) * 16)
assert user_data == 42, user_data
if res < 0:
    sys.exit("openat through io_uring: errno %d" % -res)
os.write(res, b"via io_uring\n")
sys.exit(5)
'''


# s22-uring: the tracepoint sensor sees io_uring requests at the ring's own tracepoints
# (tp_btf/io_uring_submit_sqe + io_uring_complete on 6.1): no xfail for it any more.
@pytest.mark.parametrize("kind", [pytest.param(HookSensor, id="hooks"),
                                  pytest.param(BpfSensor, id="tracepoints")])
def test_io_uring_open_is_seen(kind: Any, tmp_path: Path) -> None:
    target = tmp_path / "ring-created"
    with scoped_cgroup() as (cg, cgid):
        sensor = kind(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, [PY, "-c", IO_URING_OPEN, str(target)], timeout=60)
            if r.returncode != 5:
                raise RuntimeError(f"io_uring open failed: {r.stderr}")
            events = _collect(sensor, _exited(5))
        finally:
            sensor.close()
    if target.read_text() != "via io_uring\n":   # the open really happened, via the ring
        raise RuntimeError("the io_uring open wrote nothing")
    opens = [e for e in events if isinstance(e, FileEvent) and e.op == "open"]
    assert any(e.path == str(target) and e.flags & os.O_CREAT for e in opens), opens


# TOCTOU: a thread rewrites the path buffer while the main thread unlinks through it;
# the kernel removes whatever name it copied, a sensor reading the user buffer at
# syscall entry reports whatever name it saw (often the decoy, which was never removed).
UNLINK_SWAP = r'''
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
decoy = (d + "/decoy-never-exists").encode()
buf = ctypes.create_string_buffer(len(decoy) + 64)
removed = []
stop = False
def flip(name):
    while not stop:
        ctypes.memmove(buf, decoy, len(decoy) + 1)
        ctypes.memmove(buf, name, len(name) + 1)
for i in range(200):
    name = ("%s/t%03d" % (d, i)).encode()
    open(name, "w").close()
    stop = False
    t = threading.Thread(target=flip, args=(name,))
    t.start()
    while True:
        if libc.unlink(buf) == 0:
            break
    stop = True
    t.join()
    removed.append(name.decode())
print("\n".join(removed))
sys.exit(6)
'''


@pytest.mark.parametrize("kind", SENSORS)
def test_unlink_path_swap_reports_what_was_removed(kind: Any, tmp_path: Path) -> None:
    d = tmp_path / "swap"
    d.mkdir()
    with scoped_cgroup() as (cg, cgid):
        sensor = kind(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, [PY, "-c", UNLINK_SWAP, str(d)], timeout=120)
            if r.returncode != 6:
                raise RuntimeError(f"unlink swap failed: {r.stderr}")
            events = _collect(sensor, _exited(6), secs=10)
        finally:
            sensor.close()
    removed = r.stdout.split()
    if len(removed) != 200 or list(d.iterdir()):
        raise RuntimeError(f"{len(removed)} names removed, left {list(d.iterdir())}")
    reported = [e.path for e in events if isinstance(e, FileEvent) and e.op == "unlink"]
    # exactly the names the kernel removed, each once, and never the decoy
    assert sorted(reported) == sorted(removed), (len(reported), reported[:5])


def test_open_dedup_and_quiet_tgids(tmp_path: Path) -> None:
    f = tmp_path / "hot"
    loop = f"for i in 1 2 3 4 5 6 7 8 9 10; do echo $i >> {f}; done; exit 3"
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, open_dedup_s=30)
        sensor.open()
        try:
            r = run_in(cg, ["/bin/sh", "-c", loop], timeout=60)
            assert r.returncode == 3
            events = _collect(sensor, _exited(3))
            deduped = sensor.deduplicated()
        finally:
            sensor.close()
        sensor = HookSensor(cgroup_id=cgid, open_dedup_s=0)
        sensor.open()
        try:
            r = run_in(cg, ["/bin/sh", "-c", loop], timeout=60)
            all_events = _collect(sensor, _exited(3))
        finally:
            sensor.close()
    hot = [e for e in events if isinstance(e, FileEvent) and e.path == str(f)]
    assert len(hot) == 1 and deduped == 9, (len(hot), deduped)
    assert len([e for e in all_events if isinstance(e, FileEvent) and e.path == str(f)]) == 10


def _run_flood(tmp_path: Path, workload: str, counter: str) -> tuple[list[Event], int, int, int, int]:
    """Run a tests/support/floods.py workload (50 rounds) in a scoped cgroup under the
    hook sensor with its default windows; (events up to the workload's exit, the
    workload's pid, its two targets, the sensor's ``counter``)."""
    script = tmp_path / "flood.py"
    script.write_text(workload)
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, [sys.executable, str(script), str(tmp_path), "50"], timeout=120)
            assert r.returncode == 0, r.stderr
            me, a, b = (int(x) for x in r.stdout.split())
            events = _collect(sensor, lambda evs: any(
                isinstance(e, ExitEvent) and e.proc.pid == me for e in evs))
            count: int = getattr(sensor, counter)()
        finally:
            sensor.close()
    return events, me, a, b, count


# s30: a process_vm_readv loop on one's own child (any user) was one attach-mode
# ptrace_access_check record per call on this sensor too: one per (process image,
# request, target) per window now, and the exec of the same pid is a new image.
def test_a_memory_read_loop_crosses_once_per_target_and_image(tmp_path: Path) -> None:
    events, me, a, b, deduped = _run_flood(tmp_path, XMEM_SCRIPT, "ptrace_deduplicated")
    reads: dict[int, int] = {}
    for e in events:
        if isinstance(e, PtraceEvent) and e.proc.pid == me and e.request_name == "ATTACH":
            reads[e.target_pid] = reads.get(e.target_pid, 0) + 1
    assert reads == {a: 2, b: 1}, reads
    assert deduped >= 3 * 49, deduped


# s30: and a kill(2) loop on one's own child: one record per (process image, signal,
# target) per window on this sensor too (security_task_kill).
def test_a_signal_loop_crosses_once_per_signal_target_and_image(tmp_path: Path) -> None:
    events, me, a, b, deduped = _run_flood(tmp_path, KILL_SCRIPT, "kill_deduplicated")
    sent: dict[tuple[int, int], int] = {}
    for e in events:
        if isinstance(e, KillEvent) and e.proc.pid == me and e.signal in (10, 12):
            sent[(e.target_pid, e.signal)] = sent.get((e.target_pid, e.signal), 0) + 1
    assert sent == {(a, 10): 2, (a, 12): 1, (b, 10): 1}, sent
    assert deduped >= 4 * 49, deduped


# s19 review: the open dedup's key was (process, inode number, device, access, flags),
# and ext4 gives the number an unlink freed to the next new file at once: one shell's
# new authorized_keys2 (created by the open: FMODE_CREATED) and its append to an
# authorized_keys another process made (no create: the inode's generation tells) were
# hidden behind the scratch files before them.  And (s18) an append-open then a
# truncate-open of one file are two records; a third open like the second is a repeat.
REUSE = REUSE_SCRIPT + """
touch log; echo one >> log; echo two > log; echo three > log
echo "$$ $a $b $c $d"
exit 3
"""


def test_open_dedup_keeps_new_files_and_other_flags(tmp_path: Path) -> None:
    with ext4_mount(tmp_path) as mnt, scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, open_dedup_s=30)
        sensor.open()
        try:
            r = run_in(cg, ["/bin/bash", "-c", REUSE, "bash", str(mnt)], timeout=60)
            assert r.returncode == 3, r.stderr
            events = _collect(sensor, _exited(3))
            deduped = sensor.deduplicated()
        finally:
            sensor.close()
    pid, a, b, c, d = (int(x) for x in r.stdout.split())
    assert (a, c) == (b, d), "the filesystem did not reuse the inode numbers: no attack"
    opens = [e for e in events if isinstance(e, FileEvent) and e.op == "open"
             and e.proc.pid == pid]
    by_path = {e.path: e for e in opens}
    keys2, keys = by_path.get(f"{mnt}/authorized_keys2"), by_path.get(f"{mnt}/authorized_keys")
    assert keys2 is not None and keys2.ino == b and keys2.created, sorted(by_path)
    assert keys is not None and keys.ino == d and not keys.created, sorted(by_path)
    assert {f"{mnt}/.x", f"{mnt}/y"} <= set(by_path), sorted(by_path)
    log = [e for e in opens if e.path == f"{mnt}/log"]
    assert [bool(e.flags & os.O_APPEND) for e in log] == [True, False], log
    assert log[1].flags & os.O_TRUNC and deduped >= 1, (log, deduped)


def test_quiet_tgid_dropped_in_kernel(tmp_path: Path) -> None:
    f = tmp_path / "quiet"
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, open_dedup_s=0)
        sensor.open()
        try:
            p = subprocess.Popen(["/bin/sh", "-c", f"read x; echo q > {f}; exit 2"],
                                 stdin=subprocess.PIPE, text=True)
            try:
                (Path(cg) / "cgroup.procs").write_text(str(p.pid))
                sensor.quiet(p.pid)
                p.communicate("go\n", timeout=30)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            assert p.returncode == 2
            events = _collect(sensor, lambda evs: False, secs=1.0)
        finally:
            sensor.close()
    assert f.read_text() == "q\n"
    assert not [e for e in events if e.proc.tgid == p.pid], events


def test_sensitive_read_open_reported(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    plain = tmp_path / "plain"
    secret.write_text("s\n")
    plain.write_text("p\n")
    with scoped_cgroup() as (cg, cgid):
        # the same pattern set and sens_inodes map as the tracepoint sensor's
        sensor = HookSensor(cgroup_id=cgid, sensitive=[(str(secret), abi.SensClass.CUSTOM)])
        sensor.open()
        try:
            r = run_in(cg, ["/bin/sh", "-c", f"cat {secret} {plain} >/dev/null; exit 4"], timeout=30)
            assert r.returncode == 4
            events = _collect(sensor, _exited(4))
        finally:
            sensor.close()
    opens = [e for e in events if isinstance(e, FileEvent) and e.op == "open"]
    paths = [e.path for e in opens]
    assert str(secret) in paths and str(plain) not in paths, paths
    assert all(e.sensitive == "custom" and e.sensitive_id > 0 for e in opens
               if e.path == str(secret)), opens


def test_connect_via_socket_object_is_seen() -> None:
    # a listening socket and a connect: connect, bind, listen and accept from the hooks
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid)
        sensor.open()
        try:
            code = ("import socket\nl=socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(3)\n"
                    "c=socket.create_connection(l.getsockname()); a,_=l.accept()\n"
                    "raise SystemExit(8)")
            r = run_in(cg, [PY, "-c", code], timeout=60)
            assert r.returncode == 8, r.stderr
            events = _collect(sensor, _exited(8))
        finally:
            sensor.close()
    ops = {e.op for e in events if isinstance(e, NetEvent) and e.family == "inet"}
    assert {"bind", "listen", "connect", "accept"} <= ops, ops


# Issue 16.2 (ABI 2.0, variable-size file records): a path longer than a record's
# string is cut, flagged and marked where it was cut, on both sensors; the dentry walk
# keeps a long path's end, which used to read as the absolute path it is not.
LONG_PATHS = r'''
import os, sys
deep = sys.argv[1]
fd = os.open(os.path.join(deep, "passwd"), os.O_WRONLY | os.O_CREAT, 0o600)
os.close(fd)
os.chdir(deep)                 # relative names: the tracepoint sensor walks the cwd
os.chmod("passwd", 0o640)
os.unlink("passwd")
sys.exit(9)
'''


@pytest.mark.parametrize("kind", [HookSensor, BpfSensor], ids=["hooks", "tracepoints"])
def test_a_long_path_is_cut_flagged_and_never_misread(kind: Any, tmp_path: Path) -> None:
    deep = tmp_path / ("a" * 250) / "etc"
    deep.mkdir(parents=True)
    with scoped_cgroup() as (cg, cgid):
        sensor = kind(cgroup_id=cgid, open_dedup_s=0, sensitive=())
        sensor.open()
        try:
            r = run_in(cg, [PY, "-c", LONG_PATHS, str(deep)], timeout=60)
            assert r.returncode == 9, r.stderr
            events = _collect(sensor, _exited(9))
            assert sensor.decode_errors == 0 and sensor.drops() == 0
        finally:
            sensor.close()
    files = {e.op: e for e in events if isinstance(e, FileEvent)
             and e.op in ("open", "chmod", "unlink") and e.path.endswith("/etc/passwd")}
    assert set(files) == {"open", "chmod", "unlink"}, events
    for ev in files.values():
        assert ev.truncated, ev
        assert ev.path.startswith("\u2026/") and ev.path != "/etc/passwd", ev
    # the open's walk from the file kept "/etc/passwd"; the others name the directory
    assert files["open"].path == "\u2026/etc/passwd"


@pytest.mark.parametrize("sensor_cls", [HookSensor, BpfSensor], ids=["hooks", "tracepoints"])
def test_a_long_loader_environment_stays_inside_the_scan_buffer(sensor_cls: type[BpfSensor]) -> None:
    """Three watched variables of ~140 bytes: the exec scan's buffer (512 bytes, a
    match copied only while at most 256 are used) keeps two; the third is left out and
    the record says truncated.  On Debian's 6.1 the verifier checked the scan's
    bpf_loop callback once, from a stack context of constants (nothing copied yet),
    removed the full-buffer branch as dead code and clang had dropped the index mask
    it implied: every match was copied at a growing offset, past the map value for a
    longer environment (an unprivileged exec writing its own bytes into kernel
    memory).  Before the fix all three came through untruncated; this size keeps the
    old code's writes inside the value."""
    val = "/opt/" + "x" * 125
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": val + "/a.so", "LD_LIBRARY_PATH": val,
           "PYTHONPATH": val}
    with scoped_cgroup() as (cg, cgid):
        sensor = sensor_cls(cgroup_id=cgid)
        sensor.open()
        try:
            r = run_in(cg, ["/bin/true"], env=env, timeout=60)
            assert r.returncode == 0, r.stderr
            events = _collect(sensor, lambda evs: any(
                isinstance(e, ExecEvent) and e.proc.exe.endswith("/true") for e in evs))
        finally:
            sensor.close()
    ex = [e for e in events if isinstance(e, ExecEvent) and e.proc.exe.endswith("/true")]
    assert len(ex) == 1, events
    assert f"LD_PRELOAD={val}/a.so" in ex[0].env and f"LD_LIBRARY_PATH={val}" in ex[0].env, ex[0].env
    assert "PYTHONPATH=" not in str(ex[0].env) and ex[0].truncated, (ex[0].env, ex[0].truncated)


# ABI 2.10 (s18-created): the hook sensor says whether the open created the file
# (FMODE_CREATED, set by lookup_open before vfs_open reaches security_file_open) and
# whether the file held no byte, whatever the flags: the same O_CREAT|O_RDWR on a new
# file, an existing one with bytes and an existing empty one.
CREATED = """
import os, sys
w = sys.argv[1]
for name in ("lock", "kept", "hollow"):
    os.close(os.open(os.path.join(w, name), os.O_RDWR | os.O_CREAT, 0o600))
sys.exit(5)
"""


def test_open_says_whether_it_created_the_file(tmp_path: Path) -> None:
    (tmp_path / "kept").write_text("data\n")
    (tmp_path / "hollow").write_text("")
    with scoped_cgroup() as (cg, cgid):
        sensor = HookSensor(cgroup_id=cgid, open_dedup_s=0)
        sensor.open()
        try:
            r = run_in(cg, [PY, "-c", CREATED, str(tmp_path)], timeout=60)
            assert r.returncode == 5, r.stderr
            events = _collect(sensor, _exited(5))
        finally:
            sensor.close()
    opens = [e for e in events
             if isinstance(e, FileEvent) and e.op == "open" and e.path.startswith(str(tmp_path))]
    state = {os.path.basename(e.path): (e.created, e.empty) for e in opens}
    assert state == {"lock": (True, True), "kept": (False, False), "hollow": (False, True)}, state
    # ABI 3.0 (s21): the inode's ctime at the hook (i_ctime on 6.1), as stat says it now
    # (nothing changed these files since): compared with the probe's, never the wall clock
    ctimes = {os.path.basename(e.path): e.ctime_ns for e in opens}
    assert ctimes == {n: os.stat(tmp_path / n).st_ctime_ns for n in state}, ctimes
