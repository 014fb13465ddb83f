"""vm/run.sh's checks of the checkout path, on copies of the script.

vm/run.sh shares the checkout with the guest as its own 9p share and mounts it at
the same path, so a checkout anywhere runs (test_vm_smoke checks the mount of the
real run).  A path it cannot give the guest is refused with exit 2 and a message
naming the path, before anything is built or booted.  These tests need only bash
and a writable /tmp; they run in the guest with the rest of tests/vm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IN_VM = os.environ.get("BASTION_IN_VM") == "1"
pytestmark = pytest.mark.skipif(
    not IN_VM, reason="runs only inside the test VM: use `bash vm/run.sh` (make test-vm)"
)

REPO = Path(__file__).resolve().parents[2]


def _checkout(parent: Path, name: str) -> Path:
    """A fake checkout holding only vm/run.sh."""
    root = parent / name
    (root / "vm").mkdir(parents=True)
    shutil.copy2(REPO / "vm" / "run.sh", root / "vm" / "run.sh")
    return root


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run(
        ["bash", str(root / "vm" / "run.sh")], capture_output=True, text=True,
        timeout=60, env=env, cwd="/",
    )


def _quoted(path: Path) -> str:
    """The path as bash's printf %q renders it (how run.sh names it)."""
    return subprocess.run(
        ["bash", "-c", 'printf %q "$1"', "q", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout


@pytest.mark.parametrize(("name", "why"), [
    ("bad\nname", "contains a control character"),
    ("tab\there", "contains a control character"),
    ("trailing-newline\n", "contains a control character"),
    ("co:lon", "contains ':'"),
])
def test_unusable_checkout_path_is_refused_naming_it(tmp_path: Path, name: str, why: str) -> None:
    root = _checkout(tmp_path, name)
    r = _run(root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert why in r.stderr, r.stderr
    assert _quoted(root) in r.stderr, r.stderr


def test_blanks_quotes_and_commas_pass_the_path_checks(tmp_path: Path) -> None:
    # Under /tmp too: nothing about the path is refused; the next check (no
    # .venv in this fake checkout) is what stops the run.
    root = _checkout(tmp_path, "a b,c='d' \"e\" $f")
    r = _run(root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"{root}/.venv/bin/python missing" in r.stderr, r.stderr


def test_venv_interpreter_hidden_by_the_guest_tmp_is_refused(tmp_path: Path) -> None:
    assert str(tmp_path).startswith("/tmp/"), tmp_path
    outside = tmp_path / "pythons" / "python3"
    outside.parent.mkdir()
    outside.write_text("#!/bin/sh\n")
    outside.chmod(0o755)
    root = _checkout(tmp_path, "checkout")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(outside)
    r = _run(root)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"the venv's interpreter {outside}" in r.stderr, r.stderr
    assert "only the checkout itself is shared" in r.stderr, r.stderr
