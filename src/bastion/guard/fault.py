"""Test-only fault injection: a crash without any cleanup.

``arm_from_env()`` reads ``BASTION_TEST_FAULT_AFTER`` (seconds); when set,
a daemon timer ends the process with ``os._exit(70)`` after that long — no
``finally`` block, no atexit, exactly like a crash: pinned BPF objects stay,
sockets are left behind.  Only tests set the variable; nothing else reads it.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Final

ENV: Final = "BASTION_TEST_FAULT_AFTER"
EXIT_CODE: Final = 70

log = logging.getLogger("bastion.guard.fault")


def arm(after_s: float) -> threading.Timer:
    def crash() -> None:
        log.critical("test fault: crashing now (os._exit(%d))", EXIT_CODE)
        os._exit(EXIT_CODE)

    t = threading.Timer(after_s, crash)
    t.daemon = True
    t.start()
    return t


def arm_from_env() -> threading.Timer | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    return arm(float(raw))


__all__ = ["ENV", "EXIT_CODE", "arm", "arm_from_env"]
