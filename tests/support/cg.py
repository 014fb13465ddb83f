"""A scoped test cgroup and a way to run a command inside it."""

from __future__ import annotations

import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bastion.kernel import cgroup


@contextmanager
def scoped_cgroup() -> Iterator[tuple[Path, int]]:
    path = cgroup.create(f"bastion-test-{uuid.uuid4().hex[:10]}")
    try:
        yield path, cgroup.cgroup_id(path)
    finally:
        # a SIGKILLed agent can take seconds to be freed on a loaded host (its BPF
        # objects released, its zombie reaped): the cgroup stays busy until then
        cgroup.remove(path, timeout_s=30.0)


def run_in(cg: Path, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run argv with its whole process tree inside cgroup ``cg``."""
    shell = f'echo $$ > {cg}/cgroup.procs && exec "$@"'
    return subprocess.run(["/bin/sh", "-c", shell, "sh", *argv], text=True,
                          capture_output=True, **kw)  # type: ignore[call-overload]
