"""The embedded default policy, as tests may run it.

Kernel safety: the default shields /home, /root and /srv (fanotify permission
marks).  A test marks only its own inodes, so tests run the default with the
shield moved onto a directory of their own; everything else is the default
as shipped (the replacement is exact, so a change of the default is noticed).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIELD_LINE = "  protect: [/home, /root, /srv]\n"


def default_text() -> str:
    return resources.files("bastion").joinpath("data/default-policy.yaml").read_text()


def default_policy(dest: Path, shield_dir: Path, text: str | None = None) -> Path:
    """Write the default policy (or ``text`` derived from it) with the shield on ``shield_dir``."""
    text = default_text() if text is None else text
    assert SHIELD_LINE in text, "the default policy's shield line changed: update tests/support"
    shield_dir.mkdir(parents=True, exist_ok=True)
    dest.write_text(text.replace(SHIELD_LINE, f"  protect: [{shield_dir}]\n"))
    return dest
