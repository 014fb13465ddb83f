"""Kernel tests need root and the compiled objects; they skip (and under
CI=true, fail) when either is missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root")


@pytest.fixture(scope="session", autouse=True)
def _pseudo_filesystems() -> None:
    """The mounts every entry point makes at start (bpffs, tracefs, securityfs, cgroup2),
    made here through the same production function: no kernel test relies on mounts an
    earlier run happened to leave behind."""
    if os.geteuid() != 0:
        return
    from bastion.kernel.bpffs import prepare_pseudo_filesystems

    prepare_pseudo_filesystems()
