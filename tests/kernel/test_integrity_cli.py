"""`bastion integrity scan` without a baseline, as a user runs it (root, real checks on this host).

The CLI runs as a process with a temp data dir.  Without a baseline it runs
the checks that need none, names the ones that do with the command that
takes one, writes nothing, and exits 3 exactly when it reports findings.
A scoped rogue program (a BPF program that sends signals from a syscall
tracepoint, only to its own loader) proves the baseline-free BPF check
judges.  Then the baseline is taken into the per-release file and used.
"""

from __future__ import annotations

import json
import os
import platform
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from bastion.integrity.baseline import release_path

PY = sys.executable
BASELINE_FREE = {"syscall_dispatch", "bpf_inventory", "hidden_tasks", "kernel_state"}

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


def _bastion(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BASTION_DATA_DIR": str(data_dir)}
    return subprocess.run([PY, "-m", "bastion.cli.main", "integrity", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _scan_json(data_dir: Path) -> tuple[int, dict[str, Any]]:
    r = _bastion("scan", "--json", data_dir=data_dir)
    assert r.returncode in (0, 3), (r.returncode, r.stdout, r.stderr)
    return r.returncode, json.loads(r.stdout)


def test_scan_without_baseline_runs_the_checks_that_need_none(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rc, doc = _scan_json(data)
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert doc["baseline"] is None
    assert {n for n, s in status.items() if s in ("ok", "findings")} == BASELINE_FREE, doc
    assert status["kernel_text"] == "no-baseline"
    assert doc["needs_baseline"] == ["kernel_text"]
    assert set(doc["baseline_adds"]) == BASELINE_FREE | {"kernel_text"}
    assert doc["take_baseline"] == f"bastion integrity baseline --data-dir {data}"
    assert rc == (3 if doc["findings"] else 0), doc
    assert not data.exists()                                  # a scan never takes a baseline

    r = _bastion("scan", data_dir=data)
    assert r.returncode in (0, 3), r.stderr
    out = r.stdout
    assert f"no integrity baseline of kernel {platform.release()}" in out
    assert re.search(r"^kernel_text +no-baseline — needs a baseline$", out, re.M), out
    for name in BASELINE_FREE:
        assert re.search(rf"^{name} +(ok|findings)", out, re.M), out
    needs = out[out.index("needs a baseline:"):]
    assert "  kernel_text: core kernel text" in needs
    assert f"take one with: bastion integrity baseline --data-dir {data}" in needs
    n = int(re.search(r"^(\d+) finding\(s\)", out, re.M).group(1))  # type: ignore[union-attr]
    assert r.returncode == (3 if n else 0), out


def test_scan_without_baseline_flags_a_dangerous_bpf_program(tmp_path: Path) -> None:
    loader = subprocess.Popen([PY, "-c", _LOADER], stdout=subprocess.PIPE)
    try:
        assert loader.stdout is not None
        assert loader.stdout.readline().strip() == b"ready"
        rc, doc = _scan_json(tmp_path / "data")
        assert rc == 3
        bpf = next(c for c in doc["checks"] if c["name"] == "bpf_inventory")
        mine = [f for f in bpf["findings"] if f["evidence"].get("name") == "rk_getppid"]
        assert len(mine) == 1, bpf
        assert mine[0]["severity"] == "high" and mine[0]["pid"] == loader.pid
        assert "bpf_send_signal" in mine[0]["evidence"]["helpers"]
    finally:
        loader.kill()
        loader.wait(timeout=10)


def test_baseline_goes_to_the_release_file_and_the_scan_uses_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = _bastion("baseline", data_dir=data)
    assert r.returncode == 0, r.stderr
    path = release_path(data)
    assert path.parent == data / "integrity" and path.is_file()
    assert f"written in {path}" in r.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["kernel"] == platform.release()
    rc, doc = _scan_json(data)
    assert doc["baseline"] == str(path) and doc["needs_baseline"] == []
    status = {c["name"]: c["status"] for c in doc["checks"]}
    assert status["kernel_text"] == "ok" and status["syscall_dispatch"] == "ok", doc
    assert all(c["baseline_used"] for c in doc["checks"]), doc
    assert rc == (3 if doc["findings"] else 0)
    # a corrupt baseline is an error naming the file, not a silent baseline-free scan
    path.write_text("{")
    r = _bastion("scan", data_dir=data)
    assert r.returncode == 1 and str(path) in r.stderr and "not JSON" in r.stderr, r.stderr
