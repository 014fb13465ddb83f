"""The one interface every event source implements.

After falcosecurity/libs' capture engines: a source is opened, then polled;
``poll`` returns a batch of events (possibly empty on timeout) or ``None`` at
end of input, so the agent loop and the tests drive a live BPF sensor and a
recorded trace the same way.
"""

from __future__ import annotations

from typing import Protocol

from bastion.events import Event


class Sensor(Protocol):
    """An event source the agent drains: a kernel sensor, a replay, an LSM object."""

    name: str

    @property
    def attached(self) -> list[str]:
        """Programs attached (kernel sensors); empty otherwise."""

    @property
    def missing(self) -> list[str]:
        """Optional programs this kernel refused."""

    def ring_fill(self) -> float:
        """Fill level of the kernel ring (0..1); 0 for sources without one."""

    def open(self) -> None:
        """Acquire resources (load programs, open files).  Raises BastionError."""

    def poll(self, timeout_s: float) -> list[Event] | None:
        """Events available within ``timeout_s``; ``[]`` on timeout, ``None`` at EOF."""

    def stats(self) -> dict[str, int]:
        """Counters: at least ``events`` and ``drops``."""

    def close(self) -> None:
        """Release everything; idempotent."""
