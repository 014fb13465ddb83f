"""A scoped test cgroup and a way to run a command inside it."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bastion.kernel import cgroup
from support.stale import owned_name


@contextmanager
def scoped_cgroup() -> Iterator[tuple[Path, int]]:
    """A cgroup named after this process (:func:`support.stale.owned_name`): one a
    SIGKILLed session leaves behind is removed by the next session's start, empty."""
    path = cgroup.create(owned_name("bastion-test-"))
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
