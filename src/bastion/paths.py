"""Where Bastion's files live.  Passed around explicitly; nothing global."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import BpfObjectError, Location

PIN_ROOT = Path("/sys/fs/bpf/bastion")
DEFAULT_DATA_DIR = Path("/var/lib/bastion")
DEFAULT_SOCKET = Path("/run/bastion/bastion.sock")
# Where the first run writes the maintenance token: root's home, outside every protected
# directory, so the administrator can move it off the host (and delete it here).
DEFAULT_TOKEN_FILE = Path("/root/bastion-maintenance.token")
_INSTALLED_BPF = Path("/usr/lib/bastion/bpf")
_INSTALLED_NATIVE = Path("/usr/lib/bastion/lib")


def bpf_object_dir() -> Path:
    """The directory of the compiled BPF objects.

    ``BASTION_BPF_DIR`` wins; then ``build/bpf`` of a source checkout (the
    package installed in editable mode from it); then the installed location.
    """
    env = os.environ.get("BASTION_BPF_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "build" / "bpf"
    if checkout.is_dir():
        return checkout
    return _INSTALLED_BPF


def bpf_object(name: str) -> Path:
    """Path of a compiled object; a clear error when it is missing."""
    path = bpf_object_dir() / name
    if not path.is_file():
        raise BpfObjectError(
            "BPF object missing: build it with 'make bpf' (or set BASTION_BPF_DIR)",
            location=Location(str(path)),
        )
    return path


def native_library(name: str) -> Path:
    """Path of a compiled helper library (``make native``): ``BASTION_NATIVE_DIR``,
    then ``build/lib`` of a source checkout, then the installed location (the
    caller checks that it exists and that root alone can change it)."""
    env = os.environ.get("BASTION_NATIVE_DIR")
    if env:
        return Path(env) / name
    checkout = Path(__file__).resolve().parents[2] / "build" / "lib"
    if checkout.is_dir():
        return checkout / name
    return _INSTALLED_NATIVE / name


@dataclass(frozen=True)
class RunPaths:
    data_dir: Path = DEFAULT_DATA_DIR
    socket: Path = DEFAULT_SOCKET
    pin_root: Path = PIN_ROOT


def pinned_enforcement(pin_root: Path) -> dict[str, list[str]]:
    """What is still pinned (and so still enforcing) under ``pin_root``: part -> link names.

    Read by listing bpffs only (no bpf() call touches a pinned object)."""
    out: dict[str, list[str]] = {}
    if not pin_root.is_dir():
        return out
    for part in sorted(pin_root.iterdir()):
        links = part / "links"
        if links.is_dir():
            names = sorted(p.name for p in links.iterdir())
            if names:
                out[part.name] = names
    return out
