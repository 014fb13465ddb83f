"""Text from the watched system made safe for a terminal.

Paths, argv, process names, titles and error messages that name them are chosen by
whoever runs the process (a file name may hold any byte but ``/`` and NUL).  Printed
raw, an OSC/CSI escape retitles, clears or rewrites an administrator's terminal and a
newline forges a second, clean-looking line.  :func:`clean` escapes every character a
terminal would act on; :class:`SafeFormatter` does it for every log line.
"""

from __future__ import annotations

import logging


def clean(value: object) -> str:
    """``value`` as text safe for a terminal: printable characters kept, control
    and format characters escaped, lone surrogates (undecodable bytes) as ``\\xNN``."""
    s = value if isinstance(value, str) else str(value)
    if s.isprintable():
        return s
    out = []
    for c in s:
        if c.isprintable():
            out.append(c)
        elif "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
    return "".join(out)


def clean_lines(text: str, prefix: str = "| ") -> str:
    """Each line of ``text`` through :func:`clean`, the line breaks kept (a traceback) and
    each line after ``prefix``: an exception's message may hold a newline, and what
    follows it must not pass for a log line of its own."""
    return "\n".join(prefix + clean(line) for line in text.split("\n"))


class SafeFormatter(logging.Formatter):
    """A log line's message escaped with :func:`clean` (one record is one line, whatever a
    path in it holds); a traceback keeps its lines, each escaped and after ``| ``."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return clean(super().formatMessage(record))

    def formatException(self, ei: object) -> str:
        return clean_lines(super().formatException(ei))  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return clean_lines(super().formatStack(stack_info))


def log_to_stderr(level: int) -> None:
    """The command-line entry points' logging: stderr, one escaped line per record."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


__all__ = ["clean", "clean_lines", "SafeFormatter", "log_to_stderr"]
