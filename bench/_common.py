"""Shared helpers for the benchmarks (not a benchmark itself: `make bench`
runs only bench/bench_*.py).

* C workloads (bench/*.c) are compiled into build/bench/ when missing or
  older than their source; each prints ``<elapsed_s> <iterations>`` and times
  only its own loop.
* :class:`AgentProcess` runs ``bastion run --quiet`` as root in a temp dir,
  waits for ``bastion: running`` and always stops it (SIGTERM, wait).
* :func:`interleaved` alternates agent-off and agent-on sessions (ABBA order,
  after one warm-up pair) so drift and noise hit both sides alike; figures
  are medians and ratios of medians (2 vCPUs, ~10 % run-to-run noise).
* Targets are checked and printed on stderr; a missed target fails the
  script only with ``BASTION_BENCH_STRICT=1`` (so one miss does not hide the
  other figures of ``make bench``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
BUILD_DIR = ROOT / "build" / "bench"
BASTION = ROOT / ".venv" / "bin" / "bastion"
CLK_TCK = os.sysconf("SC_CLK_TCK")
STRICT = os.environ.get("BASTION_BENCH_STRICT") == "1"
# Workload loops run pinned to the last CPU (the agent is not pinned, so it
# gets the other one): without this, a loop whose processes wake each other
# across vCPUs pays the VM's halt/wake-up latency, and a busy agent keeping
# the other vCPU awake makes the loop *faster* (loopback connect: 61 us ->
# 38 us per connect).  BASTION_BENCH_PIN=0 turns pinning off.
PIN_CPU: int | None = (None if os.environ.get("BASTION_BENCH_PIN") == "0"
                       else max(os.sched_getaffinity(0)))

_RUNNING = "bastion: running"
_STOPPED = re.compile(r"bastion: stopped after .*: (\d+) events.*, (\d+) alerts(?: \([^)]*\))?, (\d+) dropped")


def log(msg: str) -> None:
    print(f"[{Path(sys.argv[0]).stem}] {msg}", file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str, fmt: str = ".3f") -> None:
    """The machine-readable result line: ``bench <name> <figure> <unit>``."""
    print(f"bench {name} {value:{fmt}} {unit}", flush=True)


_missed: list[str] = []


def check_target(what: str, value: float, limit: float, *, at_most: bool = True) -> bool:
    ok = value <= limit if at_most else value >= limit
    rel = "<=" if at_most else ">="
    log(f"target {what} {rel} {limit:g}: {'met' if ok else 'MISSED'} ({value:.4g})")
    if not ok:
        _missed.append(what)
    return ok


def finish() -> None:
    """Exit status of a script: 0, or 3 for missed targets under STRICT."""
    if _missed and STRICT:
        log(f"BASTION_BENCH_STRICT=1 and missed: {', '.join(_missed)}")
        sys.exit(3)


def require_root() -> None:
    if os.geteuid() != 0:
        log("needs root (the agent loads BPF programs)")
        sys.exit(2)
    if not BASTION.exists():
        log(f"{BASTION} missing: run `make setup`")
        sys.exit(2)


def require_fanotify(why_root: str) -> None:
    """Exit 2 with a reason unless this runs as root with fanotify permission events."""
    from bastion.kernel.fanotify import supported

    if os.geteuid() != 0:
        log(f"needs root ({why_root})")
        sys.exit(2)
    why = supported()
    if why is not None:
        log(f"fanotify permission events unavailable: {why}")
        sys.exit(2)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


# ---- C workloads ------------------------------------------------------------------


def _compiler() -> str:
    for cc in (os.environ.get("CC", ""), "gcc", "cc", "clang"):
        if cc and shutil.which(cc):
            return cc
    log("no C compiler (gcc/cc/clang) found")
    sys.exit(2)


def c_program(name: str) -> Path:
    """build/bench/<name>, compiled from bench/<name>.c if missing or stale."""
    src = BENCH_DIR / f"{name}.c"
    out = BUILD_DIR / name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    cmd = [_compiler(), "-O2", "-Wall", "-Werror", "-o", str(tmp), str(src)]
    subprocess.run(cmd, check=True)
    tmp.replace(out)
    log(f"compiled {out.relative_to(ROOT)}")
    return out


@dataclass(frozen=True)
class LoopResult:
    seconds: float
    iterations: int

    @property
    def per_iter_us(self) -> float:
        return self.seconds / self.iterations * 1e6


def run_loop(argv: Sequence[str | Path | int], timeout: float = 120.0) -> LoopResult:
    """Run a C workload (pinned to PIN_CPU); it prints ``<elapsed_s> <iterations>`` last."""
    pin = ["taskset", "-c", str(PIN_CPU)] if PIN_CPU is not None else []
    cp = subprocess.run(pin + [str(a) for a in argv], check=True, capture_output=True, text=True,
                        timeout=timeout)
    secs, iters = cp.stdout.split()[-2:]
    return LoopResult(float(secs), int(iters))


# ---- /proc ------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    # after the comm: state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---- the agent ----------------------------------------------------------------------


@dataclass
class StopSummary:
    events: int
    alerts: int
    drops: int
    line: str


class AgentProcess:
    """``bastion run --quiet`` in its own temp dir; a context manager that
    always stops it (SIGTERM, then SIGKILL after a timeout) and cleans up."""

    def __init__(self, *, ready_timeout: float = 30.0, extra_args: Sequence[str] = (),
                 pin_root: Path | None = None, sigma_from: Path | None = None,
                 shield_tree: tuple[int, int] = (0, 0)) -> None:
        """``sigma_from``: install this Sigma rule tree into the agent's data dir first (what
        `bastion sigma update --from` does); ``shield_tree``: (directories, files per
        directory) to create under the shielded directory, like a home."""
        self.sigma_from = sigma_from
        self.shield_tree = shield_tree
        self.ready_timeout = ready_timeout
        self.extra_args = list(extra_args)
        self.pin_root = pin_root  # pins the agent leaves (HIPS) are removed after stop
        self.dir = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
        self.shield_dir = self.dir / "shielded"
        self.socket = self.dir / "ctl" / "s.sock"
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.startup_s = 0.0
        self.stop_summary: StopSummary | None = None
        self.total_cpu_s = 0.0  # utime + stime at exit (after stop())
        self._running = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.rstrip("\n")
            self.stderr_lines.append(line)
            if line.startswith(_RUNNING):
                self._running.set()

    def start(self) -> AgentProcess:
        extra = self.extra_args
        if "--policy" not in extra:
            # the embedded default, its ransomware shield on a directory of the bench's own
            sys.path.insert(0, str(ROOT / "tests"))
            from support.policies import default_policy

            extra = ["--policy", str(default_policy(self.dir / "default-policy.yaml",
                                                    self.shield_dir)), *extra]
        ndirs, nfiles = self.shield_tree
        for i in range(ndirs):
            d = self.shield_dir / f"d{i // 50}" / f"d{i}"
            d.mkdir(parents=True, exist_ok=True)
            for j in range(nfiles):
                (d / f"f{j}.txt").write_bytes(b"x" * 2048)
        if self.sigma_from is not None:
            subprocess.run([str(BASTION), "sigma", "update", "--from", str(self.sigma_from),
                            "--data-dir", str(self.dir / "data"), "--socket", str(self.socket)],
                           check=True, capture_output=True, text=True, timeout=300)
        cmd = [str(BASTION), "run", "--quiet", "--data-dir", str(self.dir / "data"),
               "--socket", str(self.socket), *extra]
        if self.pin_root is not None:
            cmd += ["--pin-root", str(self.pin_root)]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        deadline = t0 + self.ready_timeout
        while not self._running.wait(0.005):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.stderr_lines[-20:])
                raise RuntimeError(f"agent did not start (rc {self.proc.returncode}):\n{tail}")
        self.startup_s = time.monotonic() - t0
        return self

    def status(self) -> dict[str, Any]:
        """``bastion status --json`` as a user runs it."""
        cp = subprocess.run([str(BASTION), "status", "--json", "--socket", str(self.socket)],
                            check=True, capture_output=True, text=True, timeout=30)
        data = json.loads(cp.stdout)
        assert isinstance(data, dict)
        return data

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def rss_mb(self) -> float:
        return proc_rss_mb(self.pid)

    def stop(self) -> StopSummary | None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 60
            while True:  # wait4 (not Popen.wait) to get the agent's total CPU time
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    self.total_cpu_s = ru.ru_utime + ru.ru_stime
                    break
                if time.monotonic() > deadline:
                    log("agent did not stop on SIGTERM within 60 s: SIGKILL")
                    proc.kill()
                    proc.wait()
                    break
                time.sleep(0.01)
            if proc.returncode:
                log(f"agent exited with status {proc.returncode}: "
                    + " | ".join(self.stderr_lines[-5:]))
        if self._reader is not None:
            self._reader.join(timeout=5)
        for line in self.stderr_lines:
            m = _STOPPED.search(line)
            if m:
                self.stop_summary = StopSummary(int(m[1]), int(m[2]), int(m[3]), line)
        if self.pin_root is not None and self.pin_root.exists():
            subprocess.run([str(BASTION), "reset", "--emergency", "--pin-root", str(self.pin_root)],
                           check=True, capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.stop_summary

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ---- interleaved off/on comparison ----------------------------------------------------


Session = Callable[[], Mapping[str, LoopResult]]


@dataclass
class Comparison:
    off: dict[str, list[float]] = field(default_factory=dict)
    on: dict[str, list[float]] = field(default_factory=dict)
    agent_cpu_s: list[float] = field(default_factory=list)
    agent_events: list[int] = field(default_factory=list)
    agent_drops: list[int] = field(default_factory=list)

    def ratio(self, name: str) -> float:
        return median(self.on[name]) / median(self.off[name])

    def pair_ratios(self, name: str) -> list[float]:
        return [b / a for a, b in zip(self.off[name], self.on[name])]

    def report(self, name: str, unit_per_iter: Callable[[float], str]) -> None:
        off, on = self.off[name], self.on[name]
        pr = self.pair_ratios(name)
        log(f"{name}: off median {median(off):.4f}s  on median {median(on):.4f}s  "
            f"ratio {self.ratio(name):.4f}  (per pair: median {median(pr):.4f}, "
            f"min {min(pr):.4f}, max {max(pr):.4f}; {unit_per_iter(median(off))} -> "
            f"{unit_per_iter(median(on))})")


def interleaved(session: Session, rounds: int, *, settle_s: float = 0.5,
                agent: Callable[[], AgentProcess] = AgentProcess) -> Comparison:
    """Warm-up pair, then ``rounds`` off/on pairs in ABBA order.

    ``session`` runs the workloads once and returns their results by name; an
    "on" session runs with a freshly started agent (settled for
    ``settle_s``), whose CPU time, event count and drops over the session
    are recorded from /proc and its stop summary.
    """
    comp = Comparison()
    log(f"workload pinned to CPU {PIN_CPU}" if PIN_CPU is not None else "workload not pinned")

    def run(on: bool, keep: bool) -> None:
        if not on:
            res = session()
            agent_note = ""
        else:
            with agent() as agent_proc:
                time.sleep(settle_s)
                cpu0 = agent_proc.cpu_s()
                res = session()
                summary = agent_proc.stop()
                cpu = agent_proc.total_cpu_s - cpu0  # the loops, the backlog after them, the stop
            events = summary.events if summary else -1
            drops = summary.drops if summary else -1
            agent_note = f"  [agent: {cpu:.2f}s CPU for the session, {events} events, {drops} dropped]"
            if keep:
                comp.agent_cpu_s.append(cpu)
                comp.agent_events.append(events)
                comp.agent_drops.append(drops)
        times = "  ".join(f"{k} {v.seconds:.4f}s" for k, v in res.items())
        log(f"{'warm-up ' if not keep else ''}{'on ' if on else 'off'}: {times}{agent_note}")
        if keep:
            target = comp.on if on else comp.off
            for k, v in res.items():
                target.setdefault(k, []).append(v.seconds)

    run(False, False)
    run(True, False)
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for on in order:
            run(on, True)
    return comp


def calibrate(measure: Callable[[int], LoopResult], target_s: float, start: int) -> int:
    """Iterations for a loop of about ``target_s`` seconds (agent off)."""
    n = start
    for _ in range(6):
        r = measure(n)
        if r.seconds >= 0.2:
            return max(1, int(n * target_s / r.seconds))
        n *= 4
    return n


# ---- kernel run time of the agent's BPF programs -------------------------------------


def prog_run_stats(ids: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """``bpftool prog show id N -j`` of each program (name -> id): run_cnt, run_time_ns
    (with BPF_STATS_RUN_TIME on)."""
    return {name: json.loads(subprocess.run(["bpftool", "prog", "show", "id", str(pid), "-j"],
                                            capture_output=True, text=True, check=True).stdout)
            for name, pid in ids.items()}


def ns_per_run(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]],
               mode: str, results: dict[str, float]) -> None:
    """Kernel ns per invocation of each program between two :func:`prog_run_stats`, as
    ``results[f"{name}_{mode}"]`` (NaN when it did not run), logged."""
    for name in after:
        runs = after[name].get("run_cnt", 0) - before[name].get("run_cnt", 0)
        ns = after[name].get("run_time_ns", 0) - before[name].get("run_time_ns", 0)
        results[f"{name}_{mode}"] = ns / runs if runs else float("nan")
        log(f"{mode}: {name} {runs} runs, {results[f'{name}_{mode}']:.0f} ns/run")


def _bpf_progs() -> dict[int, dict[str, Any]]:
    cp = subprocess.run(["bpftool", "prog", "show", "-j"], check=True, capture_output=True,
                        text=True, timeout=60)
    return {p["id"]: p for p in json.loads(cp.stdout)}


def bpf_cost(agent: Callable[[], AgentProcess],
             loops: Mapping[str, Sequence[str | Path | int]]) -> dict[str, dict[str, float]]:
    """Kernel run time of the agent's BPF programs per loop iteration, by program:
    ``{loop: {program: ns per iteration}}``, from the kernel's own run-time statistics
    (``BPF_ENABLE_STATS``, on only while this holds the fd), not from wall clock, so
    other load on the host does not move it.  The agent's programs are those that
    appear when it starts (another process loading programs meanwhile would count)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)           # BPF_STATS_RUN_TIME
    fd = libc.syscall(321, 32, attr, 8)          # bpf(BPF_ENABLE_STATS, ...)
    if fd < 0:
        raise RuntimeError(f"BPF_ENABLE_STATS refused: {os.strerror(ctypes.get_errno())}")
    out: dict[str, dict[str, float]] = {}
    try:
        base = set(_bpf_progs())
        with agent() as proc:
            time.sleep(0.5)
            for name, argv in loops.items():
                before = {i: p for i, p in _bpf_progs().items() if i not in base}
                res = run_loop(argv)
                after = {i: p for i, p in _bpf_progs().items() if i not in base}
                per: dict[str, float] = {}
                for i, p in after.items():
                    ns = p.get("run_time_ns", 0) - before.get(i, {}).get("run_time_ns", 0)
                    if ns > 0:
                        key = str(p.get("name", i))
                        per[key] = per.get(key, 0.0) + ns / res.iterations
                out[name] = per
            proc.stop()
    finally:
        os.close(fd)
    return out


def report_bpf_cost(prefix: str, cost: Mapping[str, Mapping[str, float]], top: int = 6) -> None:
    """``bench <prefix>_<loop>_bpf_ns <ns> ns`` per loop, the top programs on stderr."""
    for loop, per in cost.items():
        total = sum(per.values())
        tops = sorted(per.items(), key=lambda kv: -kv[1])[:top]
        log(f"{loop}: {total:.0f} ns of BPF per iteration: "
            + ", ".join(f"{k} {v:.0f}" for k, v in tops))
        emit(f"{prefix}_{loop}_bpf_ns", total, "ns", ".0f")


@dataclass
class StatusSampled:
    """A chmod flood run against an agent while ``status`` was asked every 0.2 s."""

    status_before: dict[str, Any]
    status_after: dict[str, Any]
    seconds: float                     # flood start to the status after it
    flood_seconds: float               # the flood's own timing and syscall count
    flood_calls: int
    latencies_ms: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    loop_ages_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def chmod_flood_under_status(agent: AgentProcess, path: str, flood_s: float) -> StatusSampled:
    """Run ``chmod_flood`` on ``path`` for ``flood_s`` seconds while a thread asks the
    agent's ``status`` every 0.2 s (latency, loop heartbeat age, RSS, failures)."""
    from bastion.control import request

    exe = c_program("chmod_flood")
    pin = ["taskset", "-c", str(PIN_CPU)] if PIN_CPU is not None else []
    done = threading.Event()
    lat: list[float] = []
    rss: list[float] = []
    ages: list[float] = []
    fails: list[str] = []

    def sample() -> None:
        while not done.wait(0.2):
            t = time.perf_counter()
            try:
                st = request(agent.socket, "status", timeout=30)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                fails.append(str(exc))
                continue
            lat.append((time.perf_counter() - t) * 1e3)
            ages.append(float(st.get("loop_heartbeat_age_s") or 0.0))
            rss.append(proc_rss_mb(agent.pid))

    s0 = request(agent.socket, "status", timeout=30)
    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    fl = subprocess.Popen(pin + [str(exe), str(flood_s), path], stdout=subprocess.PIPE, text=True)
    sampler.start()
    try:
        out, _ = fl.communicate(timeout=flood_s + 60)
    finally:
        if fl.poll() is None:
            fl.kill()
            fl.wait()
        done.set()
    s1 = request(agent.socket, "status", timeout=30)
    t1 = time.monotonic()
    sampler.join()
    if fl.returncode:
        raise RuntimeError(f"chmod_flood failed ({fl.returncode})")
    return StatusSampled(s0, s1, t1 - t0, float(out.split()[0]), int(out.split()[1]),
                         lat, rss, ages, fails)


# ---- repeated in-boot comparisons (the test VM: TCG under a shared host) -----------------


@dataclass(frozen=True)
class Spread:
    """A figure measured once per round: the rounds' values, their median and range."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def within(self, limit: float) -> int:
        """How many rounds were at most ``limit``."""
        return sum(1 for v in self.values if v <= limit)

    def describe(self, fmt: str = ".3f") -> str:
        return (f"{self.median:{fmt}} ({self.lo:{fmt}}-{self.hi:{fmt}} over "
                f"{len(self.values)} rounds)")


def spread(values: Sequence[float]) -> Spread:
    """The rounds' figures as a :class:`Spread`; ValueError naming the round when there
    is none or one is not a positive finite number (a ratio of two loop times)."""
    if not values:
        raise ValueError("spread: no rounds")
    for i, v in enumerate(values):
        if not (0 < v < float("inf")):
            raise ValueError(f"spread: round {i + 1} has {v!r}, not a positive finite figure")
    return Spread(tuple(values))


def abba_order(modes: Sequence[str], round_no: int) -> list[str]:
    """The sessions of one round: the modes, then the same modes reversed (A B C C B A),
    so a drift linear in time over the round hits every mode alike; odd rounds swap the
    modes after the first (the baseline stays at both ends, the two compared sides
    alternate which runs next to it)."""
    if len(modes) < 2 or len(set(modes)) != len(modes):
        raise ValueError(f"abba_order: need two or more distinct modes, got {list(modes)!r}")
    first = [modes[0], *(reversed(modes[1:]) if round_no % 2 else modes[1:])]
    return first + first[::-1]


def round_ratios(samples: Mapping[str, Sequence[Sequence[float]]], num: str, den: str) -> list[float]:
    """Per-round ratio sum(num samples) / sum(den samples) of ``samples[mode][round]``
    (the loop times one round took in each mode); both modes need the same rounds."""
    a, b = samples[num], samples[den]
    if len(a) != len(b):
        raise ValueError(f"round_ratios: {num} has {len(a)} rounds, {den} {len(b)}")
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if not x or not y or sum(y) <= 0:
            raise ValueError(f"round_ratios: round {i + 1}: {num} {list(x)!r}, {den} {list(y)!r} "
                             f"(need samples of both, {den}'s total > 0)")
        out.append(sum(x) / sum(y))
    return out
