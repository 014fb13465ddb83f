"""One base for resources released by ``close()`` and usable in a ``with`` block."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """``with resource:`` closes it on the way out, whatever happened inside."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Closing"]
