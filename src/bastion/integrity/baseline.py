"""The baseline file: JSON, written atomically with mode 0600.

One baseline per kernel release, ``<data dir>/integrity/<release>.json``
(:func:`release_path`): a new kernel takes a new baseline (:func:`ensure`) and
the older release's file is kept, not used.  Each file records the kernel
(release, boot id) it was taken on: a scan against another kernel's baseline
says so instead of reporting every byte as changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from bastion.errors import BastionError, ConfigError, Location
from bastion.integrity.base import Check

SUBDIR = "integrity"
FORMAT_VERSION = 1

MakeChecks = Callable[[], tuple[Sequence[Check], Callable[[], None]]]
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


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
        if not isinstance(checks, dict) or not all(isinstance(v, dict) for v in checks.values()):
            raise ConfigError("baseline has no 'checks' mapping", location=Location(source))
        unavailable = data.get("unavailable", {})
        if not isinstance(unavailable, dict):
            raise ConfigError("baseline 'unavailable' is not a mapping", location=Location(source))
        try:
            created = float(data.get("created", 0.0))
        except (TypeError, ValueError) as exc:
            raise ConfigError("baseline 'created' is not a time", location=Location(source)) from exc
        return cls(str(data.get("kernel", "")), str(data.get("boot_id", "")), created, checks,
                   {str(k): str(v) for k, v in unavailable.items()})

    @classmethod
    def new(cls, release: str | None = None) -> Baseline:
        return cls(release if release is not None else platform.release(), boot_id(), time.time())


def take(checks: Sequence[Check], release: str | None = None) -> Baseline:
    """Each available check's state now; the others are recorded with their reason."""
    b = Baseline.new(release)
    for c in checks:
        reason = c.available()
        if reason is not None:
            b.unavailable[c.name] = reason
            continue
        try:
            b.checks[c.name] = c.baseline()
        except BastionError as exc:   # one failing check does not cost the others their baseline
            b.unavailable[c.name] = f"its baseline failed: {exc}"
    return b


def release_filename(release: str) -> str:
    """``<release>.json``, the release made safe as one file name.

    The release string comes from the kernel (``uname -r``; only root can
    change it, but it is still not trusted as a path): anything outside
    ``[A-Za-z0-9._+-]`` becomes ``_``, and a name that had to be changed (or
    starts with a dot) gets a hash of the real string so two releases never
    share a file.
    """
    if not release:
        raise ConfigError("empty kernel release string", location=Location("uname -r"))
    safe = _SAFE.sub("_", release)[:120]
    if safe != release or safe.startswith("."):
        digest = hashlib.blake2b(release.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
        safe = f"{safe.lstrip('.')}-{digest}"
    return f"{safe}.json"


def baseline_dir(data_dir: Path) -> Path:
    return data_dir / SUBDIR


def release_path(data_dir: Path, release: str | None = None) -> Path:
    """The baseline file of ``release`` (default: the running kernel) under ``data_dir``."""
    return baseline_dir(data_dir) / release_filename(release if release is not None else platform.release())


def save(b: Baseline, path: Path) -> None:
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
    try:
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)   # the rename itself survives a crash
    finally:
        os.close(dfd)


def load(path: Path) -> Baseline:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError("no integrity baseline: run `bastion integrity baseline` first",
                          location=Location(str(path))) from exc
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read baseline: {why}", location=Location(str(path))) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"baseline is not JSON: {exc.msg}",
                          location=Location(str(path), exc.lineno, exc.colno)) from exc
    return Baseline.from_json(data, str(path))


@dataclass(frozen=True)
class BaselineOutcome:
    """What :func:`ensure` did.

    ``kind``: ``existing`` (a baseline of this release was there and is used),
    ``first-start`` (none at all: one was taken) or ``new-release`` (only
    other releases had one: one was taken for this release; ``previous`` names
    the newest other release, whose file is kept).
    """

    kind: str
    path: Path
    baseline: Baseline
    previous: str | None = None
    previous_path: Path | None = None
    seconds: float = 0.0

    @property
    def taken(self) -> bool:
        return self.kind != "existing"

    def describe(self) -> str:
        rel = self.baseline.kernel
        checks = ", ".join(sorted(self.baseline.checks)) or "no checks"
        if self.baseline.unavailable:
            checks += "; unavailable here: " + "; ".join(
                f"{k} ({v})" for k, v in sorted(self.baseline.unavailable.items()))
        if self.kind == "existing":
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.baseline.created))
            return f"integrity baseline of kernel {rel} taken {when}: {self.path}"
        if self.kind == "first-start":
            return (f"integrity baseline taken (first start) for kernel {rel} in {self.seconds:.1f} s: "
                    f"{self.path} ({checks})")
        return (f"integrity baseline taken (new kernel release {rel}, previous {self.previous}, "
                f"its baseline kept in {self.previous_path}) in {self.seconds:.1f} s: {self.path} ({checks})")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "kernel": self.baseline.kernel,
                "previous": self.previous,
                "previous_path": str(self.previous_path) if self.previous_path else None,
                "checks": sorted(self.baseline.checks), "unavailable": dict(self.baseline.unavailable),
                "seconds": round(self.seconds, 3)}


def other_releases(directory: Path, exclude: Path) -> list[tuple[float, str, Path]]:
    """(mtime, release, path) of the other baselines in ``directory``, newest first.

    The release is the one recorded in the file; a file that cannot be read
    is listed by its name (it is never used, only named).
    """
    out: list[tuple[float, str, Path]] = []
    try:
        entries = list(directory.glob("*.json"))
    except OSError:
        return out
    for p in entries:
        if p.name == exclude.name or not p.is_file():
            continue
        try:
            release = load(p).kernel or p.stem
        except ConfigError:
            release = p.stem
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        out.append((mtime, release, p))
    return sorted(out, key=lambda t: (-t[0], t[1]))


def ensure(data_dir: Path, make_checks: MakeChecks, *, release: str | None = None,
           path: Path | None = None) -> BaselineOutcome:
    """The baseline of the running kernel release, taken now if there is none.

    ``make_checks`` builds the checks and returns them with their close
    function (only called when a baseline must be taken, which costs about a
    second).  ``path`` overrides the per-release file (policy
    ``integrity.baseline``).  A baseline file that exists but cannot be read,
    is not a baseline, or was taken on another release raises
    :class:`~bastion.errors.ConfigError` naming the file: it is never
    overwritten (it may be evidence), the operator moves it away.
    """
    rel = release if release is not None else platform.release()
    target = path if path is not None else release_path(data_dir, rel)
    if target.exists():
        b = load(target)
        if b.kernel != rel:
            raise ConfigError(f"this baseline was taken on kernel {b.kernel!r}, the running kernel is "
                              f"{rel!r}: move the file away to take a new one",
                              location=Location(str(target)))
        return BaselineOutcome("existing", target, b)
    others = other_releases(target.parent, target)
    t0 = time.perf_counter()
    checks, close = make_checks()
    try:
        b = take(checks, rel)
    finally:
        close()
    try:
        save(b, target)
    except OSError as exc:
        raise ConfigError(f"cannot write the integrity baseline: {exc.strerror or exc}",
                          location=Location(str(target))) from exc
    seconds = time.perf_counter() - t0
    if others:
        _, prev, prev_path = others[0]
        return BaselineOutcome("new-release", target, b, prev, prev_path, seconds)
    return BaselineOutcome("first-start", target, b, seconds=seconds)
