"""Compat-tier file enforcement cost: open+close of a file the fanotify
enforcer marks (and the policy allows) vs an unmarked file, interleaved.

Every open of a marked inode is a permission event decided in user space
(Python: read the event, fstat its fd, answer from the plan's precomputed
allow set — the marked file is allowed to every task, so no /proc read —
write the answer), so a large ratio is expected; it is reported as measured.  An
unmarked file pays nothing (inode marks, never a mount or filesystem mark):
its loop with the enforcer running is compared, on stderr, with the same
loop before the enforcer exists.

Safety: only two temp files are marked; a dead-man deadline of 300 s and the
watchdog are on; the enforcer is closed in ``finally``.

Final lines: ``bench fanotify_decision_median <us> us`` (listener read ->
answer), ``bench fanotify_open_added <us> us`` (marked minus unmarked median
per open+close) and ``bench fanotify_open_overhead <ratio> x`` (marked /
unmarked, ratio of median ns per open+close; the unmarked figure is ~2.5-5.5
us on this shared host, so the ratio swings with it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _common import c_program, calibrate, emit, finish, log, median, run_loop

from bastion.enforce.fanotify import FanotifyEnforcer, supported
from bastion.errors import Location
from bastion.policy.compile import FileTarget, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev
from bastion.policy.model import Action, Mode, Op

ROUNDS = 7
LOOP_S = 0.5


def _target(path: Path) -> FileTarget:
    st = os.stat(path)
    return FileTarget(kernel_dev(st.st_dev), st.st_ino, False, str(path))


def main() -> None:
    if os.geteuid() != 0:
        log("needs root (fanotify permission events)")
        raise SystemExit(2)
    why = supported()
    if why is not None:
        log(f"fanotify permission events unavailable: {why}")
        raise SystemExit(2)
    exe = c_program("open_loop")
    with tempfile.TemporaryDirectory(prefix="bastion-bench-fan-") as d:
        marked, plain, denied = Path(d) / "marked", Path(d) / "plain", Path(d) / "denied"
        for p in (marked, plain, denied):
            p.write_text("x\n")
        # calibrate twice, keep the larger count (one noisy first run would
        # shrink every later unmarked loop to a few milliseconds)
        n_plain = max(calibrate(lambda k: run_loop([exe, "read", k, plain]), LOOP_S, 20_000)
                      for _ in range(2))
        before = [run_loop([exe, "read", n_plain, plain]).seconds for _ in range(3)]
        allow = ResolvedRule(1, "allow-marked", Location("bench"), (), "everyone",
                             (Op.OPEN_READ, Op.OPEN_WRITE), (_target(marked),), (), Action.ALLOW)
        deny = ResolvedRule(2, "deny-other", Location("bench"), (), "everyone",
                            (Op.OPEN_READ,), (_target(denied),), (), Action.DENY)
        plan = compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, (allow, deny)))
        enf = FanotifyEnforcer(deadline_s=300.0, decision_timeout_s=1.0)
        try:
            enf.open()
            enf.start()
            enf.apply(plan, [*allow.files, *deny.files])
            n_marked = max(calibrate(lambda k: run_loop([exe, "read", k, marked]), LOOP_S, 500)
                           for _ in range(2))
            log(f"per loop: {n_marked} opens of the marked file, {n_plain} of the unmarked one; "
                f"{ROUNDS} pairs (ABBA) after a warm-up pair")
            run_loop([exe, "read", n_marked, marked])
            run_loop([exe, "read", n_plain, plain])
            on: list[float] = []
            off: list[float] = []
            for i in range(ROUNDS):
                order = ("marked", "plain") if i % 2 == 0 else ("plain", "marked")
                for which in order:
                    if which == "marked":
                        r = run_loop([exe, "read", n_marked, marked])
                        on.append(r.seconds / n_marked * 1e9)
                    else:
                        r = run_loop([exe, "read", n_plain, plain])
                        off.append(r.seconds / n_plain * 1e9)
            s = enf.stats()
        finally:
            enf.close()
        after = [run_loop([exe, "read", n_plain, plain]).seconds for _ in range(3)]
    base_ns = median(before + after) / n_plain * 1e9
    ratio = median(on) / median(off)
    log(f"unmarked file: {median(off):.0f} ns/open+close with the enforcer running, "
        f"{base_ns:.0f} ns without it ({median(off) / base_ns:.3f}x)")
    log(f"marked file (allowed by policy): {median(on):.0f} ns/open+close "
        f"(min {min(on):.0f}, max {max(on):.0f}) -> {ratio:.1f}x the unmarked file, "
        f"+{(median(on) - median(off)) / 1000:.1f} us per open")
    log(f"listener: {s['perm_events']} permission events, decision (read -> answer) median "
        f"{s['decision_us_median']:.1f} us, p99 {s['decision_us_p99']:.1f} us, max "
        f"{s['decision_us_max']:.1f} us; denies {s['denies']}, watchdog_allows "
        f"{s['watchdog_allows']}, errors {s['errors']}")
    emit("fanotify_decision_median", float(s["decision_us_median"]), "us", ".1f")
    emit("fanotify_open_added", (median(on) - median(off)) / 1000, "us", ".1f")
    emit("fanotify_open_overhead", ratio, "x", ".2f")
    finish()


if __name__ == "__main__":
    main()
