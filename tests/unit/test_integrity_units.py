"""Pure parts of the integrity guard: parsing, classification, diffing, baseline file."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pytest

from bastion.errors import BastionError, ConfigError
from bastion.integrity import baseline as bl
from bastion.integrity import ksyms
from bastion.integrity.base import Check, IntegrityFinding, KernelView
from bastion.integrity.bpfinfo import ProgRecord, parse_helper_calls
from bastion.integrity.bpfprogs import allowed, classify, prog_key
from bastion.integrity.kread import parse_task_lines
from bastion.integrity.kstate import KernelStateCheck, taint_letters
from bastion.integrity.response import kill_loader
from bastion.integrity.scanner import PeriodicScanner, run_scan, take_baseline, to_findings
from bastion.integrity.text import entry_hook_severity, page_digests

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000100 t helper
ffffffff81000200 T __x64_sys_read
ffffffff81000200 t __pfx_x
ffffffff81001000 T _etext
ffffffffc0001000 t mod_fn\t[evil]
ffffffffc0002000 t mod_fn2\t[evil]
"""


def test_kallsyms_parse_and_lookup() -> None:
    ks = ksyms.parse(KALLSYMS)
    assert ks.visible
    assert ks.need("_stext") == 0xFFFFFFFF81000000
    assert ks.name_at(0xFFFFFFFF81000200) == "__x64_sys_read"
    assert ks.symbolize(0xFFFFFFFF81000104) == "helper+0x4"
    assert ks.next_addr(0xFFFFFFFF81000100) == 0xFFFFFFFF81000200
    assert ks.in_module(0xFFFFFFFFC0001800) == "evil"
    assert ks.addr("mod_fn") is None            # module symbols are kept apart
    with pytest.raises(BastionError):
        ks.need("sys_call_table")
    hidden = "\n".join("0" * 16 + line[16:] for line in KALLSYMS.splitlines())
    assert not ksyms.parse(hidden).visible


def _insn(code: int, src: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4, 0, imm)


def test_helper_calls_from_translated_instructions() -> None:
    base = 0xFFFFFFFF81400000
    prog = (_insn(0x18, imm=0x85) + _insn(0, imm=0)          # ld_imm64: its imm looks like a call code
            + _insn(0x85, imm=0x100) + _insn(0x85, imm=-0x40)  # two helpers
            + _insn(0x85, src=1, imm=5)                        # bpf-to-bpf call
            + _insn(0x85, src=2, imm=77) + _insn(0x95))        # kfunc, exit
    addrs, kfuncs = parse_helper_calls(prog, base)
    assert addrs == [base - 0x40, base + 0x100]
    assert kfuncs == 1
    assert parse_helper_calls(prog, 0) == ([], 1)             # addresses hidden


def _prog(name: str, helpers: list[str], attach: list[str]) -> ProgRecord:
    return ProgRecord(1, "tracepoint", name, "00" * 8, 0, 0, [], [], 0, helpers=helpers, attach=attach)


@pytest.mark.parametrize("helpers,attach,severity", [
    (["bpf_probe_write_user"], ["tracepoint/sys_exit_getdents64"], "critical"),
    (["bpf_probe_write_user"], ["perf_event/syscalls:sys_enter_read"], "critical"),
    (["bpf_override_return"], ["kprobe/__x64_sys_openat"], "critical"),
    (["bpf_probe_write_user"], ["tracepoint/sched_switch"], "high"),
    (["bpf_send_signal"], ["tracepoint/sys_enter_getppid"], "high"),
    ([], ["raw_tracepoint/sys_enter"], "high"),
    ([], ["kprobe/iterate_dir"], "high"),
    (["bpf_map_lookup_elem"], ["raw_tracepoint/sched_process_exec"], "medium"),
])
def test_classify(helpers: list[str], attach: list[str], severity: str) -> None:
    assert classify(_prog("p", helpers, attach))[0] == severity


def test_allowlist_by_name_and_tag() -> None:
    p = _prog("agent_prog", [], [])
    assert allowed(p, ["agent_prog"]) and allowed(p, ["agent_prog:" + "00" * 8])
    assert not allowed(p, ["agent_prog:" + "11" * 8]) and not allowed(p, ["other"])
    assert prog_key(p) == "tracepoint:agent_prog:" + "00" * 8


def test_task_lines() -> None:
    out = parse_task_lines("1 1 5 init\n12 10 99 my?comm\ngarbage\n3 x 1 y\n")
    assert [(t.pid, t.tgid, t.start_ns, t.comm) for t in out] == [(1, 1, 5, "init"), (12, 10, 99, "my?comm")]


def test_baseline_file_is_private_and_round_trips(tmp_path: Path) -> None:
    b = bl.Baseline.new()
    b.checks["x"] = {"a": [1, 2]}
    path = tmp_path / "sub" / "base.json"
    bl.save(b, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert bl.load(path).checks == {"x": {"a": [1, 2]}}
    with pytest.raises(ConfigError, match="run .bastion integrity baseline. first"):
        bl.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{\n nope")
    with pytest.raises(ConfigError) as exc:
        bl.load(tmp_path / "bad.json")
    assert exc.value.location is not None and exc.value.location.line == 2
    (tmp_path / "other.json").write_text('{"format": 99}')
    with pytest.raises(ConfigError, match="format"):
        bl.load(tmp_path / "other.json")


def _fake_kernel(root: Path, *, taint: int = 0, lockdown: str = "none [integrity] confidentiality",
                 modules: str | None = None) -> KernelView:
    proc, sys = root / "proc", root / "sys"
    (proc / "sys/kernel").mkdir(parents=True, exist_ok=True)
    (sys / "kernel/security").mkdir(parents=True, exist_ok=True)
    (proc / "sys/kernel/tainted").write_text(f"{taint}\n")
    (proc / "cmdline").write_text("quiet\n")
    (sys / "kernel/security/lockdown").write_text(lockdown + "\n")
    (sys / "kernel/security/lsm").write_text("lockdown,capability,bpf")
    if modules is not None:
        (proc / "modules").write_text(modules)
    return KernelView(proc=proc, sys=sys)


def test_kernel_state_diff(tmp_path: Path) -> None:
    base = KernelStateCheck(_fake_kernel(tmp_path, modules="ext4 1 0 - Live 0x0\n")).baseline()
    assert base["lockdown"] == "integrity" and base["lsm"] == ["lockdown", "capability", "bpf"]
    assert any(u.startswith("ftrace") for u in base["unreadable"])
    check = KernelStateCheck(_fake_kernel(tmp_path, taint=1 << 12 | 1, lockdown="[none] integrity confidentiality",
                                          modules="ext4 1 0 - Live 0x0\nrootkit 1 0 - Live 0x0\n"))
    codes = {f.code: f for f in check.scan(base)}
    assert codes["kstate.taint"].evidence["new_flags"] == "PO"
    assert codes["kstate.lockdown"].severity == "critical"
    assert codes["kstate.modules"].evidence["added"] == ["rootkit"]
    assert taint_letters(0) == ""


class _Fake(Check):
    requires = ()

    def __init__(self, name: str, *, reason: str | None = None, found: int = 0,
                 fail: bool = False, needs: bool = True) -> None:
        super().__init__(KernelView())
        self.name = name  # type: ignore[misc]
        self.reason, self.found, self.fail = reason, found, fail
        self.needs_baseline = needs  # type: ignore[misc]

    def available(self) -> str | None:
        return self.reason

    def baseline(self) -> dict[str, Any]:
        return {"v": 1}

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        if self.fail:
            raise BastionError("boom")
        return [self.finding("x.y", "t", "high", {"k": 1}, action="kill", pid=42)] * self.found


def test_scanner_statuses_and_findings() -> None:
    checks = [_Fake("a"), _Fake("b", reason="no kcore"), _Fake("c", found=2), _Fake("d", fail=True),
              _Fake("e", needs=True)]
    base = take_baseline(checks[:4])
    assert base.unavailable == {"b": "no kcore"} and set(base.checks) == {"a", "c", "d"}
    report = run_scan(checks, base)
    st = {r.name: (r.status, r.reason) for r in report.results}
    assert st["a"][0] == "ok" and st["c"][0] == "findings" and st["d"] == ("error", "boom")
    assert st["b"] == ("unavailable", "unavailable here, because no kcore")
    assert st["e"][0] == "no-baseline"
    fs = to_findings(report)
    assert len(fs) == 2 and fs[0].rule == "bastion.integrity.x.y" and fs[0].action == "kill"
    assert fs[0].pid == 42 and fs[0].evidence == {"check": "c", "k": 1} and fs[0].attack
    assert report.to_json()["findings"] == 2


def test_periodic_scanner_runs_on_interval() -> None:
    emitted: list[object] = []
    base = take_baseline([_Fake("c")])
    ps = PeriodicScanner(lambda: ([_Fake("c", found=1)], lambda: None), lambda: base, 60.0, emitted.append)
    assert ps.tick(1000.0) is not None and len(emitted) == 1
    assert ps.tick(1030.0) is None and len(emitted) == 1
    assert ps.tick(1061.0) is not None and len(emitted) == 2


def _start_ticks(pid: int) -> int:
    s = Path(f"/proc/{pid}/stat").read_text()
    return int(s[s.rfind(")") + 2:].split()[19])


def test_kill_loader_checks_identity() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        me = {"pid": os.getpid(), "start_ticks": _start_ticks(os.getpid())}
        wrong = {"pid": child.pid, "start_ticks": _start_ticks(child.pid) + 1}
        f = IntegrityFinding("bpf_inventory", "bpf.rogue_program", "t", "high",
                             {"holders": [me, wrong]}, "kill", child.pid)
        outs = [o["outcome"] for o in kill_loader(f)]
        assert outs[0].startswith("kill-skipped: refusing") and outs[1] == "kill-skipped: pid reused"
        assert child.poll() is None
        right = IntegrityFinding("bpf_inventory", "bpf.rogue_program", "t", "high",
                                 {"holders": [{"pid": child.pid, "start_ticks": _start_ticks(child.pid)}]})
        assert [o["outcome"] for o in kill_loader(right)] == ["kill"]
        assert child.wait(timeout=5) == -9
        assert kill_loader(right)[0]["outcome"].startswith("kill-skipped")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_entry_hook_severity_and_pages() -> None:
    assert entry_hook_severity("call ftrace_caller+0x0") == "medium"
    assert entry_hook_severity("call 0xffffffffc0001000 (module bpf)") == "high"
    assert entry_hook_severity("call 0xffffa00000000000 (outside core text)") == "high"
    assert entry_hook_severity("call commit_creds+0x10") == "critical"
    assert len(page_digests(bytes(4096 * 2 + 1))) == 3
