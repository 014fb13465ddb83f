"""Waiting for a test's process to end."""

from __future__ import annotations

import time

from bastion.procstat import read_stat


def gone(pid: int, wait_s: float = 1.0) -> bool:
    """Is ``pid`` dead or a zombie within ``wait_s``?"""
    end = time.monotonic() + wait_s
    while True:
        try:
            if read_stat(pid).state in ("Z", "X"):
                return True
        except (OSError, ValueError):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
