"""The one severity scale, shared by findings, integrity checks, the store and the CLI."""

from __future__ import annotations

from typing import Final

# Least to most severe; the store ranks by index.
SEVERITIES: Final[tuple[str, ...]] = ("info", "low", "medium", "high", "critical")

__all__ = ["SEVERITIES"]
