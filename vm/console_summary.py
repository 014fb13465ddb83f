"""Condense the guest kernel's reports in a VM console log for vm/run.sh.

A guest soft lockup, oops or panic prints a hundred lines of stacks; a CI log
keeps only its last lines, which are the least useful ones (the user-space
registers of the last task).  This prints, in a few lines meant to be the last
of the run's output: each report's headline (``BUG:``, ``WARNING:``, ``Oops``,
``Kernel panic``, an RCU stall, a hung task) and, for each stack the kernel
printed, one line with the CPU, the task, the kernel instruction it was
interrupted at and its reliable frames (``?`` frames are the unwinder's
guesses and are left out, as are the interrupt's own frames).

    console_summary.py CONSOLE.txt [MAX_LINES]

Exits 0 and prints nothing when the console holds no kernel report.  Standard
library only: it runs on the host, outside the VM.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

_TS = re.compile(r"\[\s*(\d+\.\d+)\]\s?(.*)$")   # pytest output may precede it
_HEADLINE = re.compile(
    r"(BUG: |WARNING: |Oops|Kernel panic|general protection fault|hard LOCKUP|"
    r"rcu: INFO: |INFO: task .* blocked for more than)"
)
_TASK = re.compile(r"^CPU: (\d+) PID: (\d+) Comm: (\S+)")
_KRIP = re.compile(r"^RIP: 0010:(\S+)")
_FRAME = re.compile(r"^\s*([A-Za-z_][\w.]*\+0x[0-9a-f]+/0x[0-9a-f]+)(?:\s+\[\w+\])?\s*$")
_OPEN_CTX = ("<IRQ>", "<NMI>", "<#DB>", "<#MC>", "<SOFTIRQ>")
_CLOSE_CTX = ("</IRQ>", "</NMI>", "</#DB>", "</#MC>", "</SOFTIRQ>")
MAX_FRAMES = 10
LINE_WIDTH = 300


@dataclass
class Stack:
    """One stack dump: the task line, where the kernel was, its reliable frames."""

    stamp: str
    cpu: str
    task: str
    rips: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = f" at {self.rips[-1]}" if self.rips else ""
        text = f"[{self.stamp}] CPU{self.cpu} {self.task}{where}"
        if self.frames:
            text += " | " + " < ".join(self.frames[:MAX_FRAMES])
        return text if len(text) <= LINE_WIDTH else text[: LINE_WIDTH - 3] + "..."


def parse(lines: list[str]) -> tuple[list[str], list[Stack]]:
    """The headlines (deduplicated, in order) and the stacks of a console log."""
    headlines: list[str] = []
    seen: set[str] = set()
    stacks: list[Stack] = []
    cur: Stack | None = None
    nested = 0
    for raw in lines:
        m = _TS.search(raw.rstrip("\r\n"))
        if not m:
            continue
        stamp, text = m.group(1), m.group(2)
        task = _TASK.match(text)
        if task:
            cur = Stack(stamp, task.group(1), f"{task.group(3)}:{task.group(2)}")
            stacks.append(cur)
            nested = 0
            continue
        if _HEADLINE.search(text) and not text.startswith(("RIP:", "Call Trace")):
            key = re.sub(r"\d+s!", "Ns!", text)       # "stuck for 22s!" repeats
            if key not in seen:
                seen.add(key)
                headlines.append(f"[{stamp}] {text.strip()}")
            continue
        if cur is None:
            continue
        stripped = text.strip()
        if stripped in _OPEN_CTX:
            nested += 1
            continue
        if stripped in _CLOSE_CTX:
            nested = max(0, nested - 1)
            continue
        rip = _KRIP.match(stripped)
        if rip:
            cur.rips.append(rip.group(1))
            continue
        frame = _FRAME.match(text)
        if frame and nested == 0:
            cur.frames.append(frame.group(1))
    return headlines, stacks


def summarise(lines: list[str], max_lines: int = 14) -> list[str]:
    """At most ``max_lines`` lines: headlines first (at most half), then the stacks,
    the last ones kept when there are too many (the panic's own stack is last)."""
    headlines, stacks = parse(lines)
    if not headlines and not stacks:
        return []
    heads = headlines[: max(1, max_lines // 2)]
    room = max(0, max_lines - len(heads))
    uniq: list[Stack] = []
    keys: set[tuple[str, str, tuple[str, ...]]] = set()
    for s in stacks:
        key = (s.cpu, s.task, tuple(s.rips[-1:]) + tuple(s.frames[:MAX_FRAMES]))
        if key not in keys:
            keys.add(key)
            uniq.append(s)
    shown = uniq[-room:] if room else []
    return heads + [s.line() for s in shown]


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: console_summary.py CONSOLE.txt [MAX_LINES]", file=sys.stderr)
        return 2
    path = Path(argv[1])
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        print(f"console_summary.py: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    max_lines = int(argv[2]) if len(argv) == 3 else 14
    for line in summarise(text.splitlines(), max_lines):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
