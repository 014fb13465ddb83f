"""The agent's integrity worker process on this host (root, real checks).

``ensure_in_worker`` takes the per-release baseline once and then reports it
as existing; a corrupt baseline comes back as an error naming the file.
``scan_in_worker`` returns engine Findings: a scoped rogue BPF program (it
signals only its own loader) is reported with its holder to kill — unless
its holder is the trusted agent pid, whose programs are Bastion's own.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.errors import ConfigError
from bastion.integrity.baseline import release_path
from bastion.integrity.worker import ensure_in_worker, scan_in_worker

_LOADER = """
import os, sys, time
from bastion.kernel.libbpf import BpfObject
from bastion.paths import bpf_object
obj = BpfObject.open(bpf_object("test_rootkit_sig.bpf.o"), rodata={"cfg_target_tgid": os.getpid()})
obj.load()
link = obj.program("rk_getppid").attach()
print("ready", flush=True)
time.sleep(120)
"""


def test_ensure_in_worker_takes_the_baseline_once(tmp_path: Path) -> None:
    first, said = ensure_in_worker(tmp_path)
    path = release_path(tmp_path)
    assert first["kind"] == "first-start" and first["path"] == str(path) and path.is_file()
    assert first["kernel"] == platform.release() and "first start" in said
    assert {"kernel_text", "syscall_dispatch", "bpf_inventory", "hidden_tasks",
            "kernel_state"} <= set(first["checks"]), first
    again, _ = ensure_in_worker(tmp_path)
    assert again["kind"] == "existing"
    path.write_text("[]")
    with pytest.raises(ConfigError, match="not an integrity baseline") as exc:
        ensure_in_worker(tmp_path)
    assert str(path) in str(exc.value)


def test_scan_in_worker_reports_a_rogue_program_unless_the_agent_holds_it(tmp_path: Path) -> None:
    loader = subprocess.Popen([sys.executable, "-c", _LOADER], stdout=subprocess.PIPE)
    try:
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == b"ready"
        res = scan_in_worker(tmp_path, None)
        mine = [f for f in res.findings if f.evidence.get("name") == "rk_getppid"]
        assert len(mine) == 1, [f.title for f in res.findings]
        assert mine[0].rule == "bastion.integrity.bpf.rogue_program"
        assert mine[0].action == "kill" and mine[0].pid == loader.pid
        assert res.baseline_error is None
        trusted = scan_in_worker(tmp_path, None, trusted_pids=[loader.pid])
        assert not [f for f in trusted.findings if f.evidence.get("name") == "rk_getppid"]
        broken = tmp_path / "broken.json"
        broken.write_text("{")
        res = scan_in_worker(tmp_path, broken)
        assert res.baseline_error is not None and str(broken) in res.baseline_error
        assert [f for f in res.findings if f.evidence.get("name") == "rk_getppid"]   # still judged
    finally:
        loader.kill()
        loader.wait(timeout=10)
