"""The baseline file: JSON, written atomically with mode 0600.

Default ``/var/lib/bastion/integrity-baseline.json``; every command takes
another path.  It records the kernel (release, boot id) it was taken on:
a scan against another kernel's baseline says so instead of reporting every
byte as changed.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, Location

DEFAULT_BASELINE = Path("/var/lib/bastion/integrity-baseline.json")
FORMAT_VERSION = 1


def boot_id(proc: Path = Path("/proc")) -> str:
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass
class Baseline:
    kernel: str
    boot_id: str
    created: float
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)   # check -> reason at baseline time

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "kernel": self.kernel, "boot_id": self.boot_id,
                "created": self.created, "checks": self.checks, "unavailable": self.unavailable}

    @classmethod
    def from_json(cls, data: Any, source: str) -> Baseline:
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ConfigError(f"not an integrity baseline of format {FORMAT_VERSION}",
                              location=Location(source))
        checks = data.get("checks")
        if not isinstance(checks, dict):
            raise ConfigError("baseline has no 'checks' mapping", location=Location(source))
        return cls(str(data.get("kernel", "")), str(data.get("boot_id", "")),
                   float(data.get("created", 0.0)), checks, dict(data.get("unavailable", {})))

    @classmethod
    def new(cls) -> Baseline:
        return cls(platform.release(), boot_id(), time.time())


def save(b: Baseline, path: Path = DEFAULT_BASELINE) -> None:
    """Write atomically (temp file + rename), mode 0600; the directory is made 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".integrity-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(b.to_json(), f, sort_keys=True, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(path: Path = DEFAULT_BASELINE) -> Baseline:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError("no integrity baseline: run `bastion integrity baseline` first",
                          location=Location(str(path))) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read baseline: {exc.strerror}", location=Location(str(path))) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"baseline is not JSON: {exc.msg}",
                          location=Location(str(path), exc.lineno, exc.colno)) from exc
    return Baseline.from_json(data, str(path))
