"""Summarise a pytest JUnit XML report for vm/run.sh.

Prints one line "PASSED FAILED SKIPPED TOTAL" (FAILED counts failures and
errors) and exits 0; exits 1 with a message when the report is missing or
unreadable.  Standard library only: it runs on the host, outside the VM.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def summarise(path: Path) -> tuple[int, int, int, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return total - failed - skipped, failed, skipped, total


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: junit_summary.py JUNIT.xml", file=sys.stderr)
        return 2
    path = Path(argv[1])
    if not path.is_file():
        print(f"{path.name} missing")
        return 1
    try:
        passed, failed, skipped, total = summarise(path)
    except (ET.ParseError, ValueError) as exc:
        print(f"{path.name} unreadable: {exc}")
        return 1
    print(passed, failed, skipped, total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
