"""Stress harness for the VM suite's intermittent guest soft lockup (docs/testing-vm.md,
"The guest soft lockup").  Not a benchmark and not collected by ``make test``: run it by
hand in the test VM, where it loops for a few minutes over everything the lockup's
evidence points at, concurrently:

``probe``   load, attach (one ``lsm/file_open`` trampoline), detach, close the tier probe
            ``lsm_probe.bpf.o`` (the fastest trampoline attach/detach loop: text_poke)
``hips``    ``HipsKernel("lsm")`` load + pin + close(unpin=True), every other iteration the
            way tests/support/hips_ident.py does it: a child python loads and pins the
            matcher and ``os._exit``s without detaching, this thread adopts and detaches
``hook``    ``HookSensor`` (lsm_events.bpf.o: ~29 fentry trampolines, a ring buffer)
            open, poll, close -- the ring's munmap and libbpf's global-data munmaps on a
            non-main thread
``tamper``  the guardian's ``TamperKernel("lsm")`` (lsm/bpf* map hooks) load + pin + remove
``compat``  ``HipsKernel("compat")`` open + close (its tracepoint links are destroyed from
            up to 16 threads, loader.destroy_links)
``mm``      a child python whose threads mmap/touch/mprotect/munmap 16 KiB regions and start
            short-lived threads (TLB-shootdown IPIs to every CPU the mm ran on)
``procs``   a child python forking/execing /bin/true and opening files in the scope cgroup
``cpu``     a child busy loop (the lockup came on a slower, busier machine)
``tpoke``   no BPF at all: a child toggling the ftrace event raw_syscalls/sys_enter on and
            off (each toggle patches the tracepoint's static branch in
            syscall_trace_enter with text_poke_bp, as attaching/detaching the first/last
            BPF program on a syscalls/sys_enter_* tracepoint does); with ``mm``, ``procs``
            and ``cpu`` it is the non-Bastion reproducer (docs/testing-vm.md)

Every enforcing program is scoped to the harness's own cgroup with a dead-man deadline
(only ``procs`` runs inside it; no policy is applied, so nothing is refused); pins live
under /sys/fs/bpf/bastion-test-stress-*; everything is removed at the end.  Each worker
counts its iterations; every 10 s one progress line goes straight to /dev/console (past
pytest's capture), so a stall is visible: a kernel hang stops the lines and the guest
watchdog prints every CPU's stack (vm/run.sh boots with softlockup_all_cpu_backtrace=1
softlockup_panic=1); a stuck worker shows as a growing "idle" age.  A worker's exception
fails the run at the end (every error is listed).

Parameters (the guest has no host environment: kernel command line, through VM_APPEND):
``bastion.stress_min=M`` minutes (default 5), ``bastion.stress_workers=a,b,...`` (default
all above), ``bastion.stress_n=N`` threads per kernel worker kind (default 1).

    flock /work/_prompts/heavy.lock env VM_TIMEOUT=1200 \\
        VM_APPEND="bastion.stress_min=15 bastion.stress_workers=probe,hips,hook,mm" \\
        bash vm/run.sh bench/vm_stress_lockup.py -s
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = [pytest.mark.vm, pytest.mark.timeout(7200),
              pytest.mark.skipif(not IN_VM, reason="runs only inside the test VM: "
                                 "bash vm/run.sh bench/vm_stress_lockup.py -s")]

KINDS = ("probe", "hips", "hook", "tamper", "compat", "mm", "procs", "cpu", "tpoke")
SRC = str(ROOT / "src")
DEADLINE_S = 600.0   # every scoped program allows everything past this


def _params() -> tuple[float, list[str], int]:
    words = dict(w.split("=", 1) for w in Path("/proc/cmdline").read_text().split() if "=" in w)
    minutes = float(words.get("bastion.stress_min", "5"))
    kinds = words.get("bastion.stress_workers", ",".join(KINDS)).split(",")
    unknown = set(kinds) - set(KINDS)
    assert not unknown, f"unknown stress workers {sorted(unknown)} (known: {KINDS})"
    return minutes, kinds, int(words.get("bastion.stress_n", "1"))


def _say(msg: str) -> None:
    line = f"[stress {time.monotonic():8.1f}] {msg}\n".encode()
    try:
        fd = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
    except OSError:
        fd = os.dup(2)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# ---- child processes ------------------------------------------------------------------

_MM = r"""
import mmap, os, sys, threading, time
end = time.monotonic() + float(sys.argv[1])
count = [0]
def mm():
    while time.monotonic() < end:
        regions = [mmap.mmap(-1, 16384) for _ in range(16)]
        for r in regions:
            r[0] = 1; r[8192] = 1          # fault both halves in: the unmap flushes the TLB
        for r in regions:
            r.close()                      # munmap(.., 0x4000)
        m = mmap.mmap(-1, 65536)
        m[0] = 1
        m.madvise(mmap.MADV_DONTNEED)      # zap + flush, the mapping stays
        m.close()
        threading.Thread(target=lambda: None).start()   # a short-lived thread (clone/exit)
        count[0] += 1
ts = [threading.Thread(target=mm) for _ in range(4)]
for t in ts: t.start()
while any(t.is_alive() for t in ts):
    time.sleep(1.0)
    print(count[0], flush=True)
"""

_PROCS = r"""
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    pid = os.fork()
    if pid == 0:
        os.execv("/bin/true", ["/bin/true"])
    os.waitpid(pid, 0)
    for p in ("/etc/hostname", "/proc/self/status", sys.argv[2]):
        with open(p, "rb") as f:
            f.read()
    n += 1
    if n % 20 == 0:
        print(n, flush=True)
"""

_CPU = r"""
import sys, time
end = time.monotonic() + float(sys.argv[1])
n = 0
while time.monotonic() < end:
    n += 1
    if n % 2000000 == 0:
        print(n, flush=True)
"""

_TPOKE = r"""
import sys, time
end = time.monotonic() + float(sys.argv[1])
enable = sys.argv[2]
n = 0
try:
    while time.monotonic() < end:
        for v in (b"1", b"0"):
            with open(enable, "wb", buffering=0) as f:
                f.write(v)
        n += 1
        if n % 10 == 0:
            print(n, flush=True)
finally:
    with open(enable, "wb", buffering=0) as f:
        f.write(b"0")
"""

# tests/support/hips_ident.py's dead agent: load + pin the matcher in scope, _exit without
# detaching (a crash).
_DEAD_AGENT = r"""
import os, sys
from pathlib import Path
from bastion.enforce.hips_kernel import HipsKernel
hk = HipsKernel("lsm", pin_dir=Path(sys.argv[1]), cgroup_id=int(sys.argv[2]),
                deadline_s=float(sys.argv[3]), self_tgid=os.getpid(), cgroup_path=Path(sys.argv[4]))
hk.open()
os._exit(0)
"""


class Stress:
    def __init__(self, minutes: float, cg: Path, cgid: int, tmp: Path) -> None:
        self.end = time.monotonic() + minutes * 60
        self.cg, self.cgid, self.tmp = cg, cgid, tmp
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.procs: list[tuple[str, subprocess.Popen[str]]] = []
        self.pins: list[Path] = []

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.end

    def tick(self, name: str, n: int = 1, absolute: bool = False) -> None:
        with self.lock:
            self.counts[name] = n if absolute else self.counts.get(name, 0) + n
            self.last[name] = time.monotonic()

    def pin_dir(self, name: str) -> Path:
        p = Path(f"/sys/fs/bpf/bastion-test-stress-{os.getpid()}-{name}")
        with self.lock:
            self.pins.append(p)
        return p

    # ---- kernel workers (threads of this process) -----------------------------------

    def probe(self, name: str) -> None:
        from bastion.kernel.libbpf import BpfObject
        from bastion.paths import bpf_object
        while self.running():
            with BpfObject.open(bpf_object("lsm_probe.bpf.o")) as obj:
                obj.load()
                obj.program("probe_file_open").attach().destroy()
            self.tick(name)

    def hips(self, name: str) -> None:
        from bastion.enforce.hips_kernel import HipsKernel
        pins = self.pin_dir(name)
        i = 0
        while self.running():
            if i % 2 == 0:
                hk = HipsKernel("lsm", pin_dir=pins, cgroup_id=self.cgid, deadline_s=DEADLINE_S,
                                self_tgid=os.getpid(), cgroup_path=self.cg)
                hk.open()
                hk.close(unpin=True)
            else:
                r = subprocess.run([sys.executable, "-c", _DEAD_AGENT, str(pins), str(self.cgid),
                                    str(DEADLINE_S), str(self.cg)],
                                   env={**os.environ, "PYTHONPATH": SRC}, text=True,
                                   capture_output=True, timeout=600)
                assert r.returncode == 0, r.stderr
                HipsKernel.adopt(pins).close(unpin=True)
            i += 1
            self.tick(name)

    def hook(self, name: str) -> None:
        from bastion.sensors.bpf import HookSensor
        while self.running():
            s = HookSensor(self_tgid=os.getpid(), cgroup_id=self.cgid)
            s.open()
            try:
                s.poll(0.5)
            finally:
                s.close()
            self.tick(name)

    def tamper(self, name: str) -> None:
        from bastion.guard.kernel import TamperKernel
        pins = self.pin_dir(name)
        while self.running():
            tk = TamperKernel("lsm", pin_dir=pins, cgroup_id=self.cgid, deadline_s=DEADLINE_S)
            assert tk.open() is False   # loaded, not adopted
            tk.remove()
            self.tick(name)

    def compat(self, name: str) -> None:
        from bastion.enforce.hips_kernel import HipsKernel
        while self.running():
            hk = HipsKernel("compat", cgroup_id=self.cgid, deadline_s=DEADLINE_S,
                            cgroup_path=self.cg)
            hk.open()
            hk.close()
            self.tick(name)

    # ---- child processes -------------------------------------------------------------

    def child(self, name: str, code: str, *args: str, in_cg: bool = False) -> None:
        left = str(max(1.0, self.end - time.monotonic()))
        argv = [sys.executable, "-c", code, left, *args]
        if in_cg:
            argv = ["/bin/sh", "-c", f'echo $$ > {self.cg}/cgroup.procs && exec "$@"', "sh", *argv]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.procs.append((name, p))
        assert p.stdout is not None
        for line in p.stdout:                 # the child prints its running count
            self.tick(name, int(line), absolute=True)
        rc = p.wait()
        if rc != 0 and not self.stop.is_set():
            raise AssertionError(f"{name}: child exited {rc}")

    def run_worker(self, name: str, fn: Callable[[str], None]) -> None:
        try:
            fn(name)
        except BaseException:
            with self.lock:
                self.errors.append(f"{name}: {traceback.format_exc()}")
            _say(f"{name} FAILED:\n{traceback.format_exc()}")

    def report(self) -> str:
        now = time.monotonic()
        with self.lock:
            return " ".join(f"{k}={v}(idle {now - self.last[k]:.0f}s)"
                            for k, v in sorted(self.counts.items()))


def test_stress_lockup(tmp_path: Path) -> None:
    from bastion.kernel import bpffs
    from support.cg import scoped_cgroup

    minutes, kinds, n = _params()
    bpffs.ensure_bpffs()
    bpffs.ensure_tracefs()
    readme = tmp_path / "f"
    readme.write_bytes(b"x" * 4096)
    _say(f"start: {minutes} min, workers {kinds} x{n}, kernel {os.uname().release}")
    with scoped_cgroup() as (cg, cgid):
        st = Stress(minutes, cg, cgid, tmp_path)
        workers: list[tuple[str, Callable[[str], None]]] = []
        for kind in kinds:
            if kind == "mm":
                workers.append((kind, lambda nm: st.child(nm, _MM)))
            elif kind == "procs":
                workers.append((kind, lambda nm: st.child(nm, _PROCS, str(readme), in_cg=True)))
            elif kind == "tpoke":
                enable = str(bpffs.TRACEFS / "events/raw_syscalls/sys_enter/enable")
                workers.append((kind, lambda nm: st.child(nm, _TPOKE, enable)))
            elif kind == "cpu":
                workers.append((kind, lambda nm: st.child(nm, _CPU)))
            else:
                workers += [(f"{kind}{i}", getattr(st, kind)) for i in range(n)]
        threads = [threading.Thread(target=st.run_worker, args=w, name=f"stress-{w[0]}")
                   for w in workers]
        t0 = time.monotonic()
        for t in threads:
            st.last[t.name[7:]] = t0
            st.counts[t.name[7:]] = 0
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=10.0 / len(threads))
                _say(st.report())
        finally:
            st.stop.set()
            for _, p in st.procs:
                if p.poll() is None:
                    p.kill()
            for t in threads:
                t.join(timeout=120)
            for p in st.pins:
                if p.exists():
                    bpffs.remove_pins(p)
        _say(f"done after {time.monotonic() - t0:.0f} s: {st.report()}")
    assert not st.errors, "\n".join(st.errors)
    assert all(v > 0 for v in st.counts.values()), st.counts
