"""Kernel integrity guard against real, scoped adversaries (root, real BPF).

Every adversary acts only on one test process: the BPF ones through
``cfg_target_tgid`` in .rodata, the readdir hider through LD_PRELOAD in one
scanner subprocess.  Everything attached is destroyed in ``finally``.
The same tests run in the test VM (tests/vm/test_integrity_vm.py imports them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from bastion.kernel.libbpf import ProgramLoadError
from bastion.integrity.base import KernelView
from bastion.integrity.baseline import Baseline
from bastion.integrity.bpfprogs import BpfInventoryCheck
from bastion.integrity.response import kill_loader
from bastion.integrity.scanner import run_scan, take_baseline, to_findings
from bastion.integrity.syscalls import SyscallCheck
from bastion.integrity.tasks import HiddenTaskCheck
from bastion.integrity.text import TextCheck
from bastion.kernel.libbpf import BpfObject, Link
from bastion.paths import bpf_object

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
HIDER_SRC = Path(__file__).with_name("test_integrity_hide_readdir.c")


@pytest.fixture
def view() -> Iterator[KernelView]:
    with KernelView() as v:
        yield v


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "120"])


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


# ---- kernel text -----------------------------------------------------------------


def test_ordinary_tracepoint_attach_changes_text_but_yields_no_finding(view: KernelView) -> None:
    check = TextCheck(view)
    assert check.available() is None
    base = check.baseline()
    raw_before = view.core_text()[1]
    obj = BpfObject.open(bpf_object("integrity_testtp.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
    link: Link | None = None
    try:
        obj.load()
        link = obj.program("tt_rename").attach()
        view.forget_text()
        raw_after = view.core_text()[1]
        findings = check.scan(base)
    finally:
        if link is not None:
            link.destroy()
        obj.close()
    # the attach really patched core text (a static key), and it was masked
    assert raw_before != raw_after, "attaching task_rename did not patch any text byte"
    assert [f for f in findings if f.code == "text.modified"] == []


def test_text_hash_is_stable_and_fast(view: KernelView) -> None:
    check = TextCheck(view)
    t0 = time.perf_counter()
    a = check.baseline()
    view.forget_text()
    assert check.scan(a) == [] or all(f.code == "text.entry_hook" for f in check.scan(a))
    assert a["size"] > 1 << 20
    assert time.perf_counter() - t0 < 10


# ---- syscall dispatch ------------------------------------------------------------


def test_syscall_table_located_and_clean(view: KernelView) -> None:
    check = SyscallCheck(view)
    assert check.available() is None
    base = check.baseline()
    tab = base["table"]
    expect = "kallsyms" if view.ksyms.addr("sys_call_table") else "rodata-scan"
    assert tab["located_by"] == expect
    assert tab["entries"][0] == "__x64_sys_read" and tab["entries"][1] == "__x64_sys_write"
    assert len(tab["entries"]) > 300
    if view.ksyms.addr("x64_sys_call"):
        assert "__x64_sys_read" in base["x64_sys_call"]["targets"]
    assert check.scan(base) == []
    assert check.scan(None) == []


# ---- BPF inventory ---------------------------------------------------------------

_LOADER = """
import os, sys, time
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object
obj = BpfObject.open(bpf_object("test_rootkit_sig.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
obj.load()
link = obj.program("rk_getppid").attach()
os.getppid()
print("ready", flush=True)
time.sleep(120)
"""


def test_rogue_program_on_syscall_tracepoint_is_reported_and_loader_killed(view: KernelView) -> None:
    check = BpfInventoryCheck(view)
    base = check.baseline()
    loader = subprocess.Popen([PY, "-c", _LOADER], stdout=subprocess.PIPE)
    try:
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == b"ready"
        findings = [f for f in check.scan(base) if f.evidence.get("name") == "rk_getppid"]
        assert len(findings) == 1, findings
        f = findings[0]
        assert f.code == "bpf.rogue_program"
        assert f.severity == "high"
        assert "bpf_send_signal" in f.evidence["helpers"]
        assert any(a.endswith("sys_enter_getppid") for a in f.evidence["attach"]), f.evidence
        assert f.action == "kill" and f.pid == loader.pid
        assert [h["pid"] for h in f.evidence["holders"]] == [loader.pid]
        # the engine Finding carries the same evidence; the response kills the loader
        report_findings = to_findings(run_scan([check], None))
        assert any(x.evidence.get("name") == "rk_getppid" and x.action == "kill" for x in report_findings)
        assert kill_loader(f, dry_run=True)[0]["outcome"] == "would-kill"
        assert kill_loader(f)[0]["outcome"] == "kill"
        assert loader.wait(timeout=10) == -signal.SIGKILL
        deadline = time.time() + 5
        while time.time() < deadline:   # the program goes with its last fd
            if not [x for x in check.scan(base) if x.evidence.get("name") == "rk_getppid"]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("rogue program still loaded after its loader was killed")
    finally:
        if loader.poll() is None:
            loader.kill()
        loader.wait(timeout=10)


def _lockdown() -> str:
    try:
        text = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        return "none"
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), "none")


def test_probe_write_user_rootkit_hides_task_and_is_flagged(view: KernelView) -> None:
    """The BPF getdents64 pid hider, scoped to this process's own listings.

    Under lockdown (integrity or confidentiality) the kernel refuses
    bpf_probe_write_user at load: the attack cannot exist there, and that
    refusal is what is asserted.  Without lockdown the rootkit hides the task
    and both the BPF inventory and the hidden-task cross-view catch it."""
    victim = _sleeper()
    obj = BpfObject.open(bpf_object("test_rootkit_hide.bpf.o"), rodata={
        "cfg_target_tgid": os.getpid(), "cfg_hide_name": str(victim.pid).encode(),
        "cfg_hide_len": len(str(victim.pid))})
    links: list[Link] = []
    try:
        inv = BpfInventoryCheck(view)
        tasks = HiddenTaskCheck(view)
        base_inv, base_tasks = inv.baseline(), tasks.baseline()
        try:
            obj.load()
        except ProgramLoadError as exc:
            assert "bpf_probe_write_user" in str(exc)
            assert _lockdown() != "none", "refused without lockdown"
            return
        links = [obj.program("rk_enter").attach(), obj.program("rk_exit").attach()]
        listing = os.listdir("/proc")
        stat = obj.map("rk_stat")
        diag = [int.from_bytes(stat.lookup(k.to_bytes(4, "little")) or b"", "little", signed=True)
                for k in (0, 1)]
        assert str(victim.pid) not in listing, f"the test rootkit does not hide (hidden, last write rc) = {diag}"
        assert os.path.exists(f"/proc/{victim.pid}")
        rogue = [f for f in inv.scan(base_inv) if f.evidence.get("name") in ("rk_enter", "rk_exit")]
        exit_f = [f for f in rogue if f.evidence["name"] == "rk_exit"]
        assert exit_f and exit_f[0].severity == "critical", rogue
        assert "bpf_probe_write_user" in exit_f[0].evidence["helpers"]
        hidden = [f for f in tasks.scan(base_tasks) if f.code == "tasks.hidden"]
        assert [f.pid for f in hidden] == [victim.pid]
        assert hidden[0].evidence["proc_entry_reachable"] is True
    finally:
        for link in links:
            link.destroy()
        obj.close()
        _stop(victim)
    assert str(victim.pid) not in os.listdir("/proc")  # gone for real now (reaped)


# ---- hidden tasks: a userland (LD_PRELOAD) hider against one scanner process ----

_SCANNER = """
import json, sys
from bastion.integrity.base import KernelView
from bastion.integrity.baseline import Baseline
from bastion.integrity.scanner import run_scan
from bastion.integrity.tasks import HiddenTaskCheck
base = Baseline.from_json(json.load(open(sys.argv[1])), sys.argv[1])
with KernelView() as v:
    r = run_scan([HiddenTaskCheck(v)], base)
print(json.dumps(r.to_json()))
"""


def _scan_subprocess(base: Baseline, tmp: Path, env: dict[str, str]) -> list[dict[str, object]]:
    bfile = tmp / "baseline.json"
    bfile.write_text(json.dumps(base.to_json()))
    out = subprocess.run([PY, "-c", _SCANNER, str(bfile)], env={**os.environ, **env},
                         capture_output=True, check=True, timeout=60)
    report = json.loads(out.stdout.decode().strip().splitlines()[-1])
    findings: list[dict[str, object]] = report["checks"][0]["findings"]
    return findings


def test_task_hidden_from_proc_listing_is_found(view: KernelView, tmp_path: Path) -> None:
    lib = tmp_path / "hide.so"
    subprocess.run(["clang", "-shared", "-fPIC", "-O2", "-o", str(lib), str(HIDER_SRC), "-ldl"],
                   check=True, timeout=60)
    base = take_baseline([HiddenTaskCheck(view)])
    assert "hidden_tasks" in base.checks, base.unavailable
    victim = _sleeper()
    try:
        hide = {"BASTION_TEST_HIDE_PID": str(victim.pid)}
        # the hider works: ls (readdir) in a preloaded process misses the victim
        ls = subprocess.run(["ls", "/proc"], env={**os.environ, **hide, "LD_PRELOAD": str(lib)},
                            capture_output=True, check=True, text=True).stdout.split()
        assert str(victim.pid) not in ls
        clean = _scan_subprocess(base, tmp_path, {})
        assert not [f for f in clean if f["code"] == "tasks.hidden"], clean
        found = _scan_subprocess(base, tmp_path, {**hide, "LD_PRELOAD": str(lib)})
        hidden = [f for f in found if f["code"] == "tasks.hidden"]
        assert [f["pid"] for f in hidden] == [victim.pid], found
        assert hidden[0]["severity"] == "critical"
    finally:
        _stop(victim)


def test_platform_differences_live_in_the_baseline(view: KernelView) -> None:
    check = HiddenTaskCheck(view)
    base = check.baseline()
    # whatever this platform's cross-view differences are, the baseline absorbs them
    assert [f for f in check.scan(base) if f.code in ("tasks.hidden", "tasks.iter_missing")
            and (f.evidence["pid"], f.evidence["comm"]) in
            {(e["pid"], e["comm"]) for e in base["iter_only"] + base["proc_only"]}] == []


# ---- the whole scan ---------------------------------------------------------------


def test_full_scan_against_fresh_baseline(view: KernelView) -> None:
    from bastion.integrity.checks import default_checks
    checks = default_checks(view)
    base = take_baseline(checks)
    view.forget_text()
    report = run_scan(checks, base)
    status = {r.name: r.status for r in report.results}
    assert status["kernel_text"] == "ok", report.to_json()
    assert status["syscall_dispatch"] == "ok", report.to_json()
    assert status["kernel_state"] in ("ok", "findings")
    assert report.wall_s < 5


def test_cli_baseline_and_scan_exit_codes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from bastion.cli.integrity import EXIT_FINDINGS, integrity_group
    from bastion.errors import ConfigError
    out = tmp_path / "b.json"
    r = CliRunner().invoke(integrity_group, ["baseline", "--out", str(out), "--check", "kernel_state"])
    assert r.exit_code == 0, r.output
    assert (out.stat().st_mode & 0o777) == 0o600
    r = CliRunner().invoke(integrity_group, ["scan", "--baseline", str(out), "--json", "--check", "kernel_state"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["checks"][0]["name"] == "kernel_state"
    data = json.loads(out.read_text())
    data["checks"]["kernel_state"]["cmdline"] = "something else"
    out.write_text(json.dumps(data))
    r = CliRunner().invoke(integrity_group, ["scan", "--baseline", str(out), "--check", "kernel_state"])
    assert r.exit_code == EXIT_FINDINGS and "command line" in r.output
    r = CliRunner().invoke(integrity_group, ["scan", "--baseline", str(tmp_path / "none.json")])
    assert isinstance(r.exception, ConfigError)
