"""The atomics bench (``bench/atomics.py``) inside the test VM: the lsm tier (s24).

Not part of ``make test``.  By hand, on the host (the atomics tree must be outside
/tmp, /var/tmp and /run: the guest replaces those and sees the host's / read-only)::

    printf '%s\\n' --atomics /work/art/atomics --tier lsm --provenance tmp-script --gate \\
        --pipegate --techniques T1053.003,... --label s24-lsm > build/vm-atomics.args
    flock /work/_prompts/heavy.lock env VM_TIMEOUT=3600 VM_KEEP=/work/art/vm-out \\
        bash vm/run.sh bench/vm_atomics.py -s

``build/vm-atomics.args`` holds ``bench/atomics.py``'s arguments, one a line (the
guest's pytest runs under ``env -i``: no variable reaches it; the checkout is
shared read-only, so the file is read there); a line ``---`` separates runs made one
after the other in the same boot.  ``--out`` is added: the results share's
``atomics-<i>.json`` (run i, from 1), which ``VM_KEEP=DIR`` brings back to the host.
The runners' output is printed (``-s``) and kept as ``atomics.log`` beside them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

try:
    import pytest

    pytestmark = [pytest.mark.vm, pytest.mark.timeout(3500)]
except ImportError:  # run as a script without pytest
    pass

REPO = Path(__file__).resolve().parents[1]


def test_vm_atomics() -> None:
    args_file = REPO / "build" / "vm-atomics.args"
    runs: list[list[str]] = [[]]
    for line in args_file.read_text().splitlines():
        if line.strip() == "---":
            runs.append([])
        elif line.strip():
            runs[-1].append(line)
    res = Path(os.environ.get("BASTION_VM_RESULTS", "/tmp"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    failed = []
    with open(res / "atomics.log", "w") as log:
        for i, args in enumerate((r for r in runs if r), 1):
            p = subprocess.Popen([sys.executable, str(REPO / "bench" / "atomics.py"), *args,
                                  "--out", str(res / f"atomics-{i}.json")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert p.stdout is not None
            for line in p.stdout:
                print(line, end="", flush=True)
                log.write(line)
                log.flush()
            if p.wait() != 0:
                failed.append((i, p.returncode))
    assert not failed, f"bench/atomics.py runs that failed (run, exit code): {failed}"
