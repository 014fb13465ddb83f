"""Fresh boot: the agent comes up where tracefs and securityfs are not mounted.

A freshly booted host of this kind mounts neither.  The agent is started in
a private mount namespace where both (and debugfs, whose tracing directory
libbpf would otherwise use) are unmounted; it must mount what it needs
itself, attach its sensor, and record exec events.  The host's own mounts
are untouched (the namespace is private and dies with the agent).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASTION = str(REPO / ".venv" / "bin" / "bastion")

# Unmount (every stacked layer of) the pseudo-filesystems, prove they are gone, start the agent.
_SCRIPT = r"""
set -e
for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/security /sys/kernel/debug; do
  while mountpoint -q "$m"; do umount "$m"; done
done
if grep -qE ' - (tracefs|securityfs|debugfs) ' /proc/self/mountinfo; then
  echo "still mounted" >&2; exit 99
fi
exec "$@"
"""

POLICY = "version: 1\n"   # the embedded defaults for events, no shield marks outside the test


def _mounted_types(pid: int) -> set[str]:
    out = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        parts = line.split(" - ", 1)
        if len(parts) == 2:
            out.add(parts[1].split()[0])
    return out


def test_agent_starts_without_tracefs_and_securityfs_and_records_exec(tmp_path: Path) -> None:
    assert shutil.which("unshare") and shutil.which("mountpoint")
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    data, sock = tmp_path / "data", tmp_path / "ctl.sock"
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT, "fresh",
         BASTION, "run", "--quiet", "--policy", str(pol), "--data-dir", str(data),
         "--socket", str(sock)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "bastion: running" in line:
                break
        assert any("bastion: running" in l for l in lines), "".join(lines) + (proc.stderr.read()
                                                                               if proc.poll() is not None else "")
        # the agent mounted what it needs in its own (fresh) namespace
        assert {"tracefs", "securityfs", "bpf"} <= _mounted_types(proc.pid)
        marker = f"fresh-{uuid.uuid4().hex[:10]}"
        for _ in range(3):
            subprocess.run(["/bin/true", marker], check=True)
        found = False
        until = time.monotonic() + 15
        while time.monotonic() < until and not found:
            time.sleep(0.5)
            r = subprocess.run([BASTION, "events", "--data-dir", str(data), "--type", "exec", "--json",
                                "--exe", "/usr/bin/true"], capture_output=True, text=True, timeout=30)
            found = any(marker in json.dumps(json.loads(l)) for l in r.stdout.splitlines() if l.strip())
        assert found, "no exec event recorded for the marker"
        st = subprocess.run([BASTION, "status", "--socket", str(sock), "--json"], capture_output=True,
                            text=True, timeout=30)
        status = json.loads(st.stdout)
        assert status["programs_attached"] >= 40 and status["tier"] in ("lsm", "compat")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
