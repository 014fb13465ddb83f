"""Side by side in one run (issue 16.6): no monitor, auditd with rules for the
same visibility, and Bastion, on the exec, read-open, write-open and connect
loops, interleaved; figures = median(monitor) / median(none).

* **none**: nothing loaded by this script (whatever else the host runs).
* **auditd**: Debian's auditd (package ``auditd``; ``scripts/install-deps.sh``)
  started by this script with a private configuration (log in a temp dir, no
  plugins, Debian's default ``-b 8192 --backlog_wait_time 60000``), auditing
  ``-a always,exit -F arch=b64 -S execve,openat,connect,unlinkat,renameat2,kill,ptrace``
  (what Bastion observes on these loops) under the key ``bastion-bench``.
  If an auditd already runs on the host it is used as it is (its own rules
  stay; only ours are added and removed).  Everything is put back after each
  session and on any failure: our rules deleted by key, our auditd stopped,
  the kernel's ``enabled`` and backlog settings restored.
* **bastion**: the agent as ``bench_exec`` runs it (``bastion run``, embedded
  default policy, a fresh agent per session).

``bench side_bastion_<loop>_bpf_ns <ns> ns``: the kernel run time of the agent's
BPF programs per iteration, from one more Bastion session with BPF run-time
statistics on.

Each loop is calibrated to ~``LOOP_S`` with no monitor.  Lines:
``bench side_<loop>_auditd <x> x``, ``bench side_<loop>_bastion <x> x`` and
``bench side_<loop>_bastion_vs_auditd <f> fraction`` (Bastion's overhead over
auditd's: (bastion - 1) / (auditd - 1)).  Target (issue 16.6): <= 0.10 on every
loop.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import FrameType

from _common import (
    AgentProcess, LoopResult, bpf_cost, c_program, calibrate, check_target, emit, finish, log,
    median, report_bpf_cost, require_root, run_loop,
)

ROUNDS = int(os.environ.get("BASTION_BENCH_ROUNDS", "5"))
LOOP_S = 0.6
TARGET = 0.10
AUDIT_KEY = "bastion-bench"
AUDIT_SYSCALLS = "execve,openat,connect,unlinkat,renameat2,kill,ptrace"
# Debian's /etc/audit/rules.d/audit.rules: a backlog of 8192, wait up to 60 s
AUDIT_BACKLOG = ("-b", "8192", "--backlog_wait_time", "60000")
LOOPS = ("exec", "read_open", "write_open", "connect")

_AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {dir}/audit.log
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 64
num_logs = 2
max_log_file_action = ROTATE
space_left = 75
space_left_action = SYSLOG
admin_space_left = 50
admin_space_left_action = SUSPEND
disk_full_action = SUSPEND
disk_error_action = SUSPEND
plugin_dir = {dir}/plugins.d
q_depth = 2000
overflow_action = SYSLOG
"""


def auditctl(*args: str) -> str:
    cp = subprocess.run(["auditctl", *args], capture_output=True, text=True, timeout=30)
    if cp.returncode != 0:
        raise RuntimeError(f"auditctl {' '.join(args)}: {cp.stderr.strip() or cp.stdout.strip()}")
    return cp.stdout


def audit_status() -> dict[str, int]:
    out = {}
    for line in auditctl("-s").splitlines():
        m = re.match(r"(\w+) (\d+)", line)
        if m:
            out[m[1]] = int(m[2])
    return out


def our_rules() -> list[str]:
    return [r for r in auditctl("-l").splitlines() if f"key={AUDIT_KEY}" in r]


@contextmanager
def auditd_session() -> Iterator[None]:
    """auditd running with our rules, for the duration of the block; everything put back."""
    before = audit_status()
    started: subprocess.Popen[bytes] | None = None
    work = Path(tempfile.mkdtemp(prefix="bastion-bench-auditd-"))
    try:
        if not before.get("pid"):
            (work / "plugins.d").mkdir()
            conf = work / "auditd.conf"
            conf.write_text(_AUDITD_CONF.format(dir=work))
            conf.chmod(0o600)
            started = subprocess.Popen(["auditd", "-n", "-s", "nochange", "-c", str(work)],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while audit_status().get("pid") != started.pid:
                if started.poll() is not None or time.monotonic() > deadline:
                    err = started.stderr.read().decode() if started.stderr else ""
                    raise RuntimeError(f"auditd did not register with the kernel: {err.strip()}")
                time.sleep(0.05)
        auditctl(*AUDIT_BACKLOG)
        auditctl("-e", "1")
        auditctl("-a", "always,exit", "-F", "arch=b64", "-S", AUDIT_SYSCALLS, "-k", AUDIT_KEY)
        yield
    finally:
        if our_rules():
            auditctl("-D", "-k", AUDIT_KEY)
        auditctl("-b", str(before.get("backlog_limit", 64)),
                 "--backlog_wait_time", str(before.get("backlog_wait_time", 60000)))
        auditctl("-e", str(before.get("enabled", 0)))
        if started is not None:
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log("auditd did not stop on SIGTERM within 30 s: SIGKILL")
                started.kill()
                started.wait()
        log_bytes = sum(p.stat().st_size for p in work.glob("audit.log*"))
        log(f"auditd session: {log_bytes / 1e6:.1f} MB of audit log")
        shutil.rmtree(work, ignore_errors=True)
        left = our_rules()
        if left:
            raise RuntimeError(f"audit rules left behind: {left}")


@contextmanager
def bastion_session() -> Iterator[None]:
    with AgentProcess() as agent:
        time.sleep(0.5)
        yield
        summary = agent.stop()
    if summary is None:
        raise RuntimeError("the agent stopped without its summary line")
    log(f"bastion session: {summary.events} events, {summary.drops} dropped")


MONITORS: dict[str, Callable[[], AbstractContextManager[None]]] = {
    "none": nullcontext,
    "auditd": auditd_session,
    "bastion": bastion_session,
}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(143)  # run the finally blocks: rules deleted, auditd stopped


def main() -> None:
    require_root()
    for tool in ("auditd", "auditctl"):
        if shutil.which(tool) is None:
            log(f"{tool} missing: run `make setup` (scripts/install-deps.sh installs auditd)")
            raise SystemExit(2)
    signal.signal(signal.SIGTERM, _sigterm)
    exe, opn, conn = (c_program(n) for n in ("exec_loop", "open_loop", "connect_loop"))
    fd, path = tempfile.mkstemp(prefix="bastion-bench-side-")
    os.close(fd)
    try:
        n = {
            "exec": calibrate(lambda k: run_loop([exe, k]), LOOP_S, 200),
            "read_open": calibrate(lambda k: run_loop([opn, "read", k, path]), LOOP_S, 20_000),
            "write_open": calibrate(lambda k: run_loop([opn, "write", k, path]), LOOP_S, 20_000),
            "connect": calibrate(lambda k: run_loop([conn, k]), LOOP_S, 2000),
        }
        argv: dict[str, list[str | Path | int]] = {
            "exec": [exe, n["exec"]],
            "read_open": [opn, "read", n["read_open"], path],
            "write_open": [opn, "write", n["write_open"], path],
            "connect": [conn, n["connect"]],
        }
        log(f"per loop: {n}; {ROUNDS} rounds of none/auditd/bastion (order rotated) after a "
            f"warm-up round")
        times: dict[tuple[str, str], list[float]] = {}
        modes = list(MONITORS)
        for r in range(ROUNDS + 1):
            order = modes[r % 3:] + modes[:r % 3]
            for mode in order:
                with MONITORS[mode]():
                    res: dict[str, LoopResult] = {k: run_loop(argv[k], timeout=600) for k in LOOPS}
                log(f"{'warm-up ' if r == 0 else ''}{mode}: "
                    + "  ".join(f"{k} {v.per_iter_us:.2f}us" for k, v in res.items()))
                if r:
                    for k, v in res.items():
                        times.setdefault((k, mode), []).append(v.seconds)
        # Bastion's kernel side per iteration (BPF run-time statistics: not moved by
        # other load on the host, unlike the wall-clock ratios)
        cost = bpf_cost(AgentProcess, {k: argv[k] for k in LOOPS})
    finally:
        os.unlink(path)
    report_bpf_cost("side_bastion", cost)
    for loop in LOOPS:
        base = median(times[(loop, "none")])
        aud = median(times[(loop, "auditd")]) / base
        bas = median(times[(loop, "bastion")]) / base
        frac = (bas - 1) / (aud - 1) if aud > 1 else float("inf")
        log(f"{loop}: none {base / n[loop] * 1e6:.2f} us/iter, auditd {aud:.3f}x, "
            f"bastion {bas:.3f}x, bastion overhead / auditd overhead {frac:.3f}")
        emit(f"side_{loop}_auditd", aud, "x")
        emit(f"side_{loop}_bastion", bas, "x")
        emit(f"side_{loop}_bastion_vs_auditd", frac, "fraction")
        check_target(f"side_{loop}_bastion_vs_auditd", frac, TARGET)
    finish()


if __name__ == "__main__":
    main()
