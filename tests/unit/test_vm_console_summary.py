"""vm/console_summary.py: a guest kernel report condensed to the last lines of a CI log.

The official CI keeps only the tail of the output; a soft lockup's useful frames
(where each CPU spun) were scrolled off by the panic's user-space registers.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "vm" / "console_summary.py"

_spec = importlib.util.spec_from_file_location("console_summary", SCRIPT)
assert _spec is not None and _spec.loader is not None
cs = importlib.util.module_from_spec(_spec)
sys.modules["console_summary"] = cs
_spec.loader.exec_module(cs)

# The shape of a 6.1 soft lockup with softlockup_all_cpu_backtrace and softlockup_panic
# (abridged: registers, code bytes and most modules left out).
LOCKUP = """\
tests/vm/test_hips_lsm.py ........[  148.401000] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [python:141]
[  148.401100] Modules linked in: 9p netfs 9pnet_virtio
[  148.401200] CPU: 1 PID: 141 Comm: python Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1
[  148.401300] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996)
[  148.401400] RIP: 0010:smp_call_function_many_cond+0x12d/0x3c0
[  148.401500] Code: 8b 4d 08 48 63 c2 3b 05 10 00 00 00 73 1f <8b> 41 08 a8 01 74 09 f3 90
[  148.401600] RSP: 0018:ffffb1b0c05ffc80 EFLAGS: 00000202
[  148.401700] RAX: 0000000000000000 RBX: ffff9b7a3ec2f4c0 RCX: ffff9b7a3ec3a2c0
[  148.401800] Call Trace:
[  148.401900]  <TASK>
[  148.402000]  ? flush_tlb_one_kernel+0x20/0x20
[  148.402100]  on_each_cpu_cond_mask+0x24/0x40
[  148.402200]  flush_tlb_mm_range+0x1b3/0x1d0
[  148.402300]  unmap_region+0xf9/0x120
[  148.402400]  do_mas_align_munmap+0x33c/0x4b0
[  148.402500]  __vm_munmap+0xc5/0x170
[  148.402600]  __x64_sys_munmap+0x17/0x20
[  148.402700]  do_syscall_64+0x58/0xc0
[  148.402800]  entry_SYSCALL_64_after_hwframe+0x64/0xce
[  148.402900] RIP: 0033:0x7fe9a2be4a07
[  148.403000]  </TASK>
[  148.403100] Sending NMI from CPU 1 to CPUs 0:
[  148.403200] NMI backtrace for cpu 0
[  148.403300] CPU: 0 PID: 1170 Comm: python Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1
[  148.403400] RIP: 0010:text_poke_bp_batch+0x9d/0x1f0
[  148.403500] Call Trace:
[  148.403600]  <TASK>
[  148.403700]  text_poke_bp+0x4a/0x70
[  148.403800]  __bpf_arch_text_poke+0x1a6/0x1d0 [kernel]
[  148.403900]  bpf_trampoline_update+0x3a1/0x5a0
[  148.404000]  bpf_trampoline_link_prog+0xb4/0x1a0
[  148.404100]  </TASK>
[  148.410000] Kernel panic - not syncing: softlockup: hung tasks
[  148.410100] CPU: 1 PID: 141 Comm: python Tainted: G             L     6.1.0-57-amd64 #1
[  148.410200] Call Trace:
[  148.410300]  <IRQ>
[  148.410400]  dump_stack_lvl+0x44/0x5c
[  148.410500]  panic+0x118/0x2ed
[  148.410600]  watchdog_timer_fn.cold+0x23/0x23
[  148.410700]  </IRQ>
[  148.410800]  <TASK>
[  148.410900]  asm_sysvec_apic_timer_interrupt+0x16/0x20
[  148.411000] RIP: 0010:smp_call_function_many_cond+0x12d/0x3c0
[  148.411100]  ? exit_to_user_mode_prepare+0x172/0x240
[  148.411200]  on_each_cpu_cond_mask+0x24/0x40
[  148.411300]  </TASK>
[  148.420000] Kernel Offset: 0x36000000 from 0xffffffff81000000
[  148.420100] Rebooting in 1 seconds..
"""


def test_a_lockup_is_condensed_to_where_each_cpu_was() -> None:
    out = cs.summarise(LOCKUP.splitlines())
    assert out[0] == "[148.401000] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [python:141]"
    assert "[148.410000] Kernel panic - not syncing: softlockup: hung tasks" in out
    stacks = [line for line in out if " CPU" in line and " at " in line]
    assert len(stacks) == 3, out
    first, nmi, panic = stacks
    assert first.startswith("[148.401200] CPU1 python:141 at smp_call_function_many_cond+0x12d/0x3c0 | ")
    # reliable frames only, in order; the unwinder's "?" guesses are left out
    assert "on_each_cpu_cond_mask+0x24/0x40 < flush_tlb_mm_range+0x1b3/0x1d0 < unmap_region" in first
    assert "flush_tlb_one_kernel" not in first
    assert nmi.startswith("[148.403300] CPU0 python:1170 at text_poke_bp_batch+0x9d/0x1f0 | text_poke_bp")
    assert "__bpf_arch_text_poke+0x1a6/0x1d0 < bpf_trampoline_update" in nmi
    # the panic's own interrupt frames are not the task's; the interrupted RIP is
    assert "at smp_call_function_many_cond" in panic
    assert "panic+0x118" not in panic and "dump_stack_lvl" not in panic
    assert "asm_sysvec_apic_timer_interrupt" in panic


def test_repeated_lockup_reports_are_one_headline_and_the_line_budget_holds() -> None:
    many = "".join(
        f"[{100 + 28 * i:>4}.000000] watchdog: BUG: soft lockup - CPU#0 stuck for {22 + 28 * i}s! [python:141]\n"
        for i in range(12)
    ) + LOCKUP
    out = cs.summarise(many.splitlines(), max_lines=6)
    assert len(out) <= 6
    assert sum("CPU#0 stuck" in line for line in out) == 1
    # the budget keeps the last stacks (the panic's own is last)
    assert "CPU1 python:141 at smp_call_function_many_cond" in out[-1]
    assert all(len(line) <= cs.LINE_WIDTH for line in out)


def test_a_clean_console_prints_nothing(tmp_path: Path) -> None:
    log = tmp_path / "console.txt"
    log.write_text("[    0.000000] Linux version 6.1.0-57-amd64\n"
                   "[    0.100000] NMI watchdog: Perf NMI watchdog permanently disabled\n"
                   "tests/vm/test_vm_smoke.py ....\n")
    r = subprocess.run([sys.executable, str(SCRIPT), str(log)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "", r


def test_an_unreadable_console_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    r = subprocess.run([sys.executable, str(SCRIPT), str(missing)], capture_output=True, text=True)
    assert r.returncode == 1 and str(missing) in r.stderr
