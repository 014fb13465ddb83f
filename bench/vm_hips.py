"""HIPS at scale on the lsm tier, in the test VM (issue 16.5 there; ratios only: the VM
is TCG-emulated).

The same generated 1,000-rule policy as ``bench_hips.py`` (``policy_text``: 100 real
programs x 9 rules, directory objects, everyone/uid/parent rules; every refused object
in the bench's temp tree or a TEST-NET), parsed, resolved and compiled as the agent
does (``parse_policy`` -> ``resolve`` -> ``compile_plan``) and enforced by the lsm
tier's matcher (``HipsKernel("lsm")``: ``lsm_hips.bpf.o``, every op decided in its LSM
hook), scoped to the bench's own cgroup with a dead-man deadline, the bench process
exempt.  The loops (fork+exec of /bin/true, read open+close of a file outside the tree,
loopback connect; bench/*_loop.c, calibrated to ~1 s) run inside that cgroup in every
mode, so each decision is a full lookup ending in "allow".

Modes: ``none`` (no HIPS program loaded), ``empty`` (the matcher loaded and attached,
no policy: generation 0, every hook returns after the generation lookup) and
``hips1000`` (the policy applied).  ``BENCH_VM_ROUNDS`` rounds (default 5; by hand only, like vm_sensors.py's) of six
sessions in ABBA order (none A B B A none, ``_common.abba_order``), the matcher loaded
once per round (``_Matcher``: the verifier takes ~25 s under TCG) and switched between
no policy and the plan; per round the ratio sum(mode) / sum(none) of its two sessions each; the
figure is the median over rounds, with min-max.  After the loops each ``hips1000``
session checks that it enforced: the matcher's own decision counters show at least
one exec, open-read and connect decision per loop iteration, and a write into the
policy's write-protected tree from inside the cgroup is refused (EPERM) — a matcher
that was past its deadline or out of scope fails the bench instead of reporting a
figure of nothing.  Then a pass with the kernel's BPF run-time statistics on
(sessions hips1000, hips1000_nowalk, empty, empty, hips1000_nowalk, hips1000, one
load): ns of BPF per iteration; ``hips1000_nowalk`` is the same plan with the
directory-object walk off (``HIPS_F_DIR_OBJECTS`` cleared: the loops' objects match no
rule either way), which tells what the ancestor walk costs.

Prints ``bench vm_hips1000_<loop> <x> x`` (hips1000 / none, median of the per-round
ratios; targets exec, connect <= 1.05, open <= 1.10), ``_min``/``_max``,
``vm_hips1000_<loop>_vs_empty`` (hips1000 / empty: what the 1,000 rules add over the
hooks themselves) and ``vm_hips1000_<loop>_bpf_ns`` / ``vm_hips1000_nowalk_<loop>_bpf_ns`` /
``vm_hips_empty_<loop>_bpf_ns``.

By hand, on the host (the C loops are compiled there; the guest's tree is read-only):

    .venv/bin/python bench/vm_sensors.py --compile
    flock /work/_prompts/heavy.lock env VM_TIMEOUT=1800 bash vm/run.sh bench/vm_hips.py -s
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

try:
    import pytest

    pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]
except ImportError:  # run as a script without pytest
    pass

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
ROUNDS = int(os.environ.get("BENCH_VM_ROUNDS", "5"))
LOOP_S = float(os.environ.get("BENCH_VM_LOOP_S", "1.0"))
DEADLINE_S = 600.0          # each session's matcher allows everything past this
MODES = ("none", "empty", "hips1000")
# the loop -> the matcher's decision counter its iterations must reach (op, action)
DECISION = {"exec": ("exec", "allow"), "open": ("open-read", "allow"),
            "connect": ("connect", "allow")}

Loops = dict[str, list[str | Path | int]]


def _in_cgroup(cg: Path, argv: list[str | Path | int]) -> list[str | Path | int]:
    """argv run with its whole tree inside cgroup ``cg`` (the shell moves itself, then
    execs the loop: nothing of the timed loop runs outside)."""
    return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', cg / "cgroup.procs", *argv]


def _loops(tmp: Path, cg: Path) -> Loops:
    target = tmp / "f"
    target.write_text("x\n")
    exe, opn, con = (c.c_program(n) for n in ("exec_loop", "open_loop", "connect_loop"))

    def cal(make: Callable[[int], list[str | Path | int]], start: int) -> int:
        # calibrated inside the cgroup, no HIPS program loaded
        return c.calibrate(lambda k: c.run_loop(_in_cgroup(cg, make(k)), timeout=600),
                           LOOP_S, start)

    n_exec = cal(lambda k: [exe, k], 50)
    n_open = cal(lambda k: [opn, "read", k, target], 5000)
    n_conn = cal(lambda k: [con, k], 500)
    c.log(f"loops: exec {n_exec}, open {n_open}, connect {n_conn}")
    return {"exec": _in_cgroup(cg, [exe, n_exec]),
            "open": _in_cgroup(cg, [opn, "read", n_open, target]),
            "connect": _in_cgroup(cg, [con, n_conn])}


def _iterations(argv: list[str | Path | int]) -> int:
    """The iteration count in a loop's argv (its one integer argument)."""
    ints = [a for a in argv if isinstance(a, int)]
    if len(ints) != 1:
        raise ValueError(f"loop argv {argv!r}: expected one iteration count")
    return ints[0]


class _Matcher:
    """The lsm matcher of a run of sessions (a ``with`` block: one round), loaded at its
    first session that needs it and closed at the first ``none`` after it or at the end:
    ``set(mode)`` gives none (nothing loaded), empty (loaded, no policy: generation 0)
    or hips1000 (the plan applied as a new generation).  One load per round: the
    verifier takes ~25 s for ``lsm_hips.bpf.o`` under TCG, and which load a session
    runs under does not change the programs."""

    def __init__(self, plan: Any, cgid: int) -> None:
        import dataclasses

        from bastion import abi

        # the same rules with the ancestor walk off (diagnostic, BPF pass only: what
        # the directory objects' walk costs; the loops' objects match no rule either way)
        self.plans = {"empty": None, "hips1000": plan,
                      "hips1000_nowalk": dataclasses.replace(
                          plan, flags=plan.flags & ~abi.HIPS_F_DIR_OBJECTS)}
        self.cgid = cgid
        self.hk: Any = None
        self.mode = "none"
        self._before: dict[tuple[str, str], int] = {}

    def __enter__(self) -> "_Matcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.set("none")

    def set(self, mode: str) -> None:
        from bastion.enforce.hips_kernel import HipsKernel

        if mode == "none":
            if self.hk is not None:
                self.hk.close()
                self.hk = None
        else:
            if self.hk is None:
                t0 = time.monotonic()
                self.hk = HipsKernel("lsm", cgroup_id=self.cgid, deadline_s=DEADLINE_S,
                                     self_tgid=os.getpid())
                self.hk.open()
                c.log(f"  lsm_hips loaded in {time.monotonic() - t0:.1f}s")
            if mode != self.mode:
                plan = self.plans[mode]
                if plan is None:
                    if self.hk.active_gen() != 0:
                        self.hk.clear()
                else:
                    self.hk.apply(plan)
            if (self.hk.active_gen() == 0) != (mode == "empty"):
                raise RuntimeError(f"matcher in {mode!r} has active generation "
                                   f"{self.hk.active_gen()}")
            self._before = self.hk.decisions()
        self.mode = mode

    def prog_stats(self) -> dict[str, tuple[int, int]]:
        from bastion.integrity.bpfinfo import prog_run_stats

        lo = self.hk._lo
        assert lo is not None and lo.obj is not None
        return {n: prog_run_stats(lo.obj.program(n).fd) for n in lo.attached}

    def check_enforced(self, loops: Loops, cg: Path, protected: Path) -> None:
        """After a hips1000 session's loops: the matcher decided every iteration (its own
        counters, since ``set``) and still refuses."""
        from bastion.kernel.clock import boot_ns

        if self.mode != "hips1000":
            return
        if self.hk.deadline_ns and boot_ns() >= self.hk.deadline_ns:
            raise RuntimeError(f"the matcher outlived its {DEADLINE_S:.0f} s deadline: it "
                               "allowed everything (raise DEADLINE_S)")
        now = self.hk.decisions()
        got = {k: now.get(k, 0) - self._before.get(k, 0) for k in now}
        for loop, argv in loops.items():
            key = DECISION[loop]
            if got.get(key, 0) < _iterations(argv):
                raise RuntimeError(f"hips1000 session, {loop} loop: {got.get(key, 0)} "
                                   f"{key[0]} {key[1]} decisions for {_iterations(argv)} "
                                   f"iterations (decisions this session: {got})")
        r = subprocess.run(["/bin/sh", "-c", 'echo $$ > "$0" && exec sh -c "echo x >> $1"',
                            cg / "cgroup.procs", str(protected)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0 or "not permitted" not in r.stderr.lower():
            raise RuntimeError(f"hips1000 session: a write to {protected} (everyone: "
                               f"open-write denied) was not refused: rc {r.returncode}, "
                               f"{r.stderr.strip()!r}")


def _plan(work: Path) -> Any:
    from bench_hips import PROGRAMS, RULES, make_tree, policy_text
    from bastion.config import parse_policy
    from bastion.policy.compile import compile_plan, resolve

    make_tree(work / "tree")
    text = policy_text(RULES, work / "tree")
    (work / "policy.yaml").write_text(text)
    cfg = parse_policy(text, str(work / "policy.yaml"))
    resolved = resolve(cfg.hips)
    plan = compile_plan(resolved)
    c.log(f"policy: {len(cfg.hips.rules)} rules over {PROGRAMS} programs -> "
          f"{len(plan.subjects)} subjects, {len(plan.rules)} file/exec entries, "
          f"{len(plan.nets)} networks ({len(resolved.warnings)} warnings)")
    if len(cfg.hips.rules) != RULES:
        raise RuntimeError(f"policy has {len(cfg.hips.rules)} rules, not {RULES}")
    return plan


def _bpf_cost(loops: Loops, plan: Any, cgid: int) -> dict[tuple[str, str], float]:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 2)(0, 0)           # BPF_STATS_RUN_TIME
    fd = libc.syscall(321, 32, attr, 8)          # bpf(BPF_ENABLE_STATS, ...)
    if fd < 0:
        raise RuntimeError(f"BPF_ENABLE_STATS refused: {os.strerror(ctypes.get_errno())}")
    ns: dict[tuple[str, str], int] = {}
    iters: dict[tuple[str, str], int] = {}
    try:
        with _Matcher(plan, cgid) as sess:
            for mode in ("hips1000", "hips1000_nowalk", "empty", "empty",
                         "hips1000_nowalk", "hips1000"):
                sess.set(mode)
                for loop, argv in loops.items():
                    before = sess.prog_stats()
                    res = c.run_loop(argv, timeout=600)
                    after = sess.prog_stats()
                    per = {n: (after[n][0] - before[n][0]) / res.iterations for n in after}
                    cnt = {n: (after[n][1] - before[n][1]) / res.iterations for n in after}
                    ns[(loop, mode)] = ns.get((loop, mode), 0) + sum(
                        after[n][0] - before[n][0] for n in after)
                    iters[(loop, mode)] = iters.get((loop, mode), 0) + res.iterations
                    tops = sorted((kv for kv in per.items() if kv[1] > 0), key=lambda kv: -kv[1])[:5]
                    c.log(f"{loop} {mode}: {sum(per.values()):.0f} ns of BPF per iteration "
                          f"({res.per_iter_us:.1f} us/iteration): "
                          + ", ".join(f"{n} {v:.0f} ns x{cnt[n]:.1f}" for n, v in tops))
    finally:
        os.close(fd)
    return {k: ns[k] / iters[k] for k in ns}


def measure() -> None:
    from bench_hips import TARGETS
    from bastion.kernel import cgroup

    work = Path(tempfile.mkdtemp(prefix="bastion-vmhips-"))
    cg = cgroup.create(f"bastion-vmhips-{uuid.uuid4().hex[:8]}")
    try:
        plan = _plan(work)
        cgid = cgroup.cgroup_id(cg)
        loops = _loops(work, cg)
        protected = work / "tree" / "etc" / "app0" / "conf.d" / "main.conf"
        with _Matcher(plan, cgid) as sess:   # warm-up, not kept
            for mode in MODES:
                sess.set(mode)
                res = {k: c.run_loop(v, timeout=600).seconds for k, v in loops.items()}
                sess.check_enforced(loops, cg, protected)
                c.log(f"warm-up {mode:8}: " + "  ".join(f"{k} {v:.3f}s" for k, v in res.items()))
        times: dict[str, dict[str, list[list[float]]]] = {
            loop: {m: [] for m in MODES} for loop in loops}
        for r in range(ROUNDS):
            for per in times.values():
                for v in per.values():
                    v.append([])
            with _Matcher(plan, cgid) as sess:
                for mode in c.abba_order(MODES, r):
                    sess.set(mode)
                    res = {k: c.run_loop(v, timeout=600).seconds for k, v in loops.items()}
                    sess.check_enforced(loops, cg, protected)
                    c.log(f"round {r + 1} {mode:8}: "
                          + "  ".join(f"{k} {v:.3f}s" for k, v in res.items()))
                    for loop, t in res.items():
                        times[loop][mode][r].append(t)
        cost = _bpf_cost(loops, plan, cgid)
    finally:
        cgroup.remove(cg, timeout_s=30.0)
        shutil.rmtree(work, ignore_errors=True)
    c.log(f"{ROUNDS} ABBA rounds (none A B B A none); figures: median of the per-round "
          "ratios (min-max)")
    for loop, limit in TARGETS:
        per = times[loop]
        full = c.spread(c.round_ratios(per, "hips1000", "none"))
        empty = c.spread(c.round_ratios(per, "empty", "none"))
        rules = c.spread(c.round_ratios(per, "hips1000", "empty"))
        base = c.median([t for rnd in per["none"] for t in rnd])
        c.log(f"{loop}: none {base:.3f}s; empty x{empty.describe()}; hips1000 "
              f"x{full.describe()}, {full.within(limit)} of {len(full.values)} rounds <= "
              f"{limit}; hips1000/empty {rules.describe()}; BPF ns hips1000 "
              f"{cost[(loop, 'hips1000')]:.0f} / without the walk "
              f"{cost[(loop, 'hips1000_nowalk')]:.0f} / empty {cost[(loop, 'empty')]:.0f}")
        c.emit(f"vm_hips_empty_{loop}", empty.median, "x")
        c.emit(f"vm_hips1000_{loop}_vs_empty", rules.median, "x")
        c.emit(f"vm_hips_empty_{loop}_bpf_ns", cost[(loop, "empty")], "ns", ".0f")
        c.emit(f"vm_hips1000_{loop}_bpf_ns", cost[(loop, "hips1000")], "ns", ".0f")
        c.emit(f"vm_hips1000_nowalk_{loop}_bpf_ns", cost[(loop, "hips1000_nowalk")], "ns", ".0f")
        c.emit(f"vm_hips1000_{loop}_min", full.lo, "x")
        c.emit(f"vm_hips1000_{loop}_max", full.hi, "x")
        c.check_target(f"vm_hips1000_{loop}", full.median, limit)
        c.emit(f"vm_hips1000_{loop}", full.median, "x")


def test_vm_hips_bench() -> None:
    """Entry point under pytest in the VM (prints the bench lines; fails only when a
    session did not enforce: see ``_Matcher.check_enforced``)."""
    import pytest

    if not IN_VM:  # pragma: no cover
        pytest.skip("runs in the test VM only")
    measure()


if __name__ == "__main__":
    if not IN_VM:
        c.log("runs in the test VM only (see the module docstring)")
        sys.exit(0)
    c.require_root()
    measure()
