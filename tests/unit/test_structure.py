"""Structure rules that keep the code easy to change (issue 12)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "bastion"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_command_imports_the_kernel_layer() -> None:
    """Commands stay thin: what touches the kernel is assembled in bastion.assembly."""
    bad = {str(p.relative_to(SRC)): sorted(m for m in _imports(p) if m.startswith("bastion.kernel"))
           for p in (SRC / "cli").glob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_agent_builds_no_kernel_object() -> None:
    """The agent is assembled with everything injected: it imports no loader, sensor or
    enforcement backend at run time (type-checking imports aside)."""
    tree = ast.parse((SRC / "agent.py").read_text())
    runtime: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            runtime.add(node.module)
    assert not {m for m in runtime if m.startswith(("bastion.kernel", "bastion.sensors.bpf",
                                                     "bastion.enforce", "bastion.respond.quarantine",
                                                     "bastion.respond.shadow"))}
