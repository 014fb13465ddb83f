"""HIPS exempts the agent by identity, not by pid (issue 13 item 6), compat tier on the
host; the attack itself is in support/hips_ident.py (the VM runs it for the lsm tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.hips_ident import reused_pid_attack

pytestmark = pytest.mark.kernel


def test_reused_pid_of_dead_agent_is_not_exempt_adopter_is(tmp_path: Path) -> None:
    reused_pid_attack("compat", tmp_path)
