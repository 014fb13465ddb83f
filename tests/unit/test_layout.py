"""The test tree's own rule: one basename per test module across the layers.

The layers run in one pytest process (`make test`) without packages, so two modules
named alike in tests/unit and tests/kernel make collection fail with "import file
mismatch" — a clash that only shows when both layers run together, as CI runs them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_basename_is_unique_across_layers() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for p in TESTS.rglob("test_*.py"):
        where[p.name].append(str(p.relative_to(TESTS)))
    clashes = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not clashes, f"test modules named alike in several layers: {clashes}"
