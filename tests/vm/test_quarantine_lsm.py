"""Quarantine in the lsm tier (inside the test VM): a quarantined process and
its children are refused exec, write-open and connect with EPERM, while an
unmarked process in the same cgroup is untouched.  Scoped to a test cgroup
with a dead-man deadline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.events import HipsEvent  # noqa: E402
from bastion.respond.quarantine import Quarantine  # noqa: E402
from support.cg import scoped_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.environ.get("BASTION_IN_VM") != "1",
    reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)")

PROBE = """\
import json, os, socket, subprocess, sys
sys.stdin.readline()
out = {}
def attempt(name, fn):
    try:
        fn(); out[name] = "ok"
    except PermissionError:
        out[name] = "EPERM"
    except OSError as exc:
        out[name] = f"errno {exc.errno}"
attempt("exec", lambda: subprocess.run(["/bin/true"], check=True))
attempt("write", lambda: open(sys.argv[1], "w").close())
attempt("connect", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=2).close())
print(json.dumps(out), flush=True)
"""


def _start_ns(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def _spawn(cg: Path, tmp: Path, port: int) -> subprocess.Popen[str]:
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.Popen(["/bin/sh", "-c", shell, "sh", sys.executable, "-c", PROBE,
                             str(tmp / f"w{time.monotonic_ns()}"), str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_quarantined_process_is_refused_in_the_kernel(tmp_path: Path) -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    port = lst.getsockname()[1]
    with scoped_cgroup() as (cg, cgid):
        q = Quarantine(tier="lsm", cgroup_id=cgid, deadline_s=60, self_tgid=os.getpid())
        q.open()
        try:
            marked, clean = _spawn(cg, tmp_path, port), _spawn(cg, tmp_path, port)
            time.sleep(0.5)  # both have exec'd python
            q.add(marked.pid, _start_ns(marked.pid), incident=7)
            results = {}
            for name, p in (("marked", marked), ("clean", clean)):
                assert p.stdin is not None and p.stdout is not None
                p.stdin.write("go\n")
                p.stdin.flush()
                results[name] = json.loads(p.stdout.readline())
                assert p.wait(30) == 0
            time.sleep(0.1)
            evs = [e for e in q.poll() if isinstance(e, HipsEvent)]
        finally:
            q.close()
            lst.close()
    assert results["clean"] == {"exec": "ok", "write": "ok", "connect": "ok"}
    assert results["marked"] == {"exec": "EPERM", "write": "EPERM", "connect": "EPERM"}
    assert {e.op for e in evs} >= {"exec", "open-write", "connect"}
    assert all(e.rule_id == 7 and e.enforced and e.mechanism == "lsm" for e in evs)
