"""The unit's stop is refused by design (only the maintenance token stops Bastion), so
it must not hold a reboot for long: 10 s per stop step (s22; was 30 s); and the token's
stop (the guardian's exit status 0, its only clean exit) is not undone by
``Restart=always`` two seconds later (s22: it was).  The packaged unit and the one
`bastion install` writes alike."""

from __future__ import annotations

from pathlib import Path

from bastion.install import _UNIT


def test_the_unit_does_not_hold_a_reboot_for_long() -> None:
    unit = (Path(__file__).resolve().parents[2] / "packaging" / "bastion.service").read_text()
    for text in (unit, _UNIT):
        assert "TimeoutStopSec=10s" in text and "TimeoutStopSec=30s" not in text
        assert "Restart=always" in text and "RestartPreventExitStatus=0" in text
