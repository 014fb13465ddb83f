"""The one exception root of Bastion.

Every error Bastion raises on purpose is a :class:`BastionError`.  It carries
where the problem is — a file (and line/column when there is one), a kernel
feature, a CLI argument — so the CLI can print one clear line naming it.
Causes are chained with ``raise ... from exc``, never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where an error is: a file path (line/col 1-based when known) or a named thing."""

    source: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        out = self.source
        if self.line is not None:
            out += f":{self.line}"
            if self.col is not None:
                out += f":{self.col}"
        return out


class BastionError(Exception):
    """Root of all Bastion errors."""

    def __init__(self, message: str, *, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def __str__(self) -> str:
        if self.location is None:
            return self.message
        return f"{self.location}: {self.message}"


class KernelError(BastionError):
    """A kernel operation failed (bpf syscall, attach, pin, mount)."""

    def __init__(
        self, message: str, *, errno: int = 0, location: Location | None = None
    ) -> None:
        super().__init__(message, location=location)
        self.errno = errno


class BpfObjectError(KernelError):
    """A BPF object is missing, cannot be opened, or the kernel refused it."""


class AbiMismatchError(BpfObjectError):
    """The compiled object speaks a different ABI than this Python package."""


class FeatureUnavailableError(KernelError):
    """A kernel feature Bastion needs is absent or locked on this host."""


class DecodeError(BastionError):
    """A ring-buffer record or a replay line could not be decoded."""


class ConfigError(BastionError):
    """A configuration file or value is malformed."""


class StoreError(BastionError):
    """The SQLite store failed or holds an incompatible schema."""


class ControlError(BastionError):
    """The agent's control socket is unreachable or answered an error."""


class ReplayError(DecodeError):
    """A replay (JSONL) file is unreadable or holds a malformed line."""
