"""A protected file replaced by rename stays protected and alerts (issue 13 item 7),
compat tier on the host; the scenario is support/policy_drift.py (the VM runs it for
the lsm tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.tier import Tier
from support.policy_drift import replaced_file_stays_protected

pytestmark = pytest.mark.kernel


def test_file_replaced_by_rename_stays_protected_and_alerts(tmp_path: Path) -> None:
    replaced_file_stays_protected(Tier.COMPAT, tmp_path)
