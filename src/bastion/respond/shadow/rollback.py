"""Ransomware shield, recovery: roll an incident back from its shadow copies.

Runs in the ``bastion rollback`` command (no listener, no marks): restores
each file the incident's process tree opened to its content, name, mode,
owner and mtime before the tree's first open, and removes what the tree
left behind.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from bastion.policy.compile import kernel_dev
from bastion.respond.shadow.store import CHUNK, ShadowStore, unlink_quiet

@dataclass
class RollbackReport:
    incident: int
    dry_run: bool
    restored: list[str] = field(default_factory=list)
    intact: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)     # renamed/encrypted files the tree left
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"incident": self.incident, "dry_run": self.dry_run, "ok": self.ok,
                "restored": self.restored, "intact": self.intact, "removed": self.removed,
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}

    def summary(self) -> str:
        verb = "would restore" if self.dry_run else "restored"
        rm = "would remove" if self.dry_run else "removed"
        return (f"incident {self.incident}: {verb} {len(self.restored)}, already intact "
                f"{len(self.intact)}, {rm} {len(self.removed)}, failed {len(self.failed)}")


def _sha_of(path: str | Path) -> str | None:
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        while buf := os.read(fd, CHUNK):
            h.update(buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    return h.hexdigest()


def _restore_one(store: ShadowStore, row: dict[str, Any]) -> str:
    """Write the blob to ``row["path"]`` via a temp file + rename; '' or why it failed."""
    path = str(row["path"])
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".bastion-restore-{os.getpid()}-{row['id']}")
    h = hashlib.sha256()
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                      0o600)
        try:
            for buf in store.read_blob(str(row["sha"])):
                h.update(buf)
                view = memoryview(buf)
                while view:
                    view = view[os.write(dst, view):]
            if h.hexdigest() != row["sha"]:
                raise ValueError("shadow copy corrupt (sha256 mismatch)")
            os.fsync(dst)
            try:
                os.fchown(dst, int(row["uid"]), int(row["gid"]))
            except OSError:
                pass   # not root: keep ours
            os.fchmod(dst, stat.S_IMODE(int(row["mode"])))
        finally:
            os.close(dst)
        os.utime(tmp, ns=(int(row["mtime_ns"]), int(row["mtime_ns"])))
        if _sha_of(tmp) != row["sha"]:
            raise ValueError("restored bytes differ from the shadow copy")
        os.replace(tmp, path)
    except (OSError, ValueError) as exc:
        unlink_quiet(Path(tmp))
        return str(exc) if isinstance(exc, ValueError) else f"write failed: {exc.strerror}"
    return ""


def rollback(shadow_dir: Path, incident: int, *, dry_run: bool = False) -> RollbackReport:
    """Restore every file incident ``incident`` touched: content, name, mode, owner, mtime.

    Per inode the earliest copy wins (the content before the tree's first
    open), per original path the earliest inode.  A file whose current
    content already matches is left alone.  Files the tree created or renamed
    (found by inode in the directories it touched, changed since the incident
    began) are removed.  Every restored file is re-read and its sha256
    compared with the copy's before it takes the original name.
    """
    rep = RollbackReport(incident, dry_run)
    with ShadowStore(Path(shadow_dir), create=False) as store:
        rows = store.incident_rows(incident)
        if not rows:
            return rep
        t0 = min(int(r["t_ns"]) for r in rows)
        originals: dict[tuple[int, int], dict[str, Any]] = {}
        created: set[tuple[int, int]] = set()
        for r in rows:
            key = (int(r["dev"]), int(r["ino"]))
            if r["kind"] == "created":
                created.add(key)
            elif key not in originals and key not in created:
                originals[key] = r
        by_path: dict[str, dict[str, Any]] = {}
        for r in originals.values():
            by_path.setdefault(str(r["path"]), r)
        tree_inodes = set(originals) | created
        keep: set[str] = set()
        for path, r in sorted(by_path.items()):
            keep.add(path)
            if r["sha"] is None or r["evicted"]:
                rep.failed.append((path, "shadow copy evicted (space budget)"))
                continue
            if not store.has_blob(str(r["sha"])):
                rep.failed.append((path, "shadow copy missing"))
                continue
            if _sha_of(path) == r["sha"]:
                rep.intact.append(path)
                continue
            if dry_run:
                rep.restored.append(path)
                continue
            why = _restore_one(store, r)
            if why:
                rep.failed.append((path, why))
            else:
                rep.restored.append(path)
        # what the tree left behind: renamed originals (x.locked) and files it created
        dirs = {os.path.dirname(str(r["path"])) for r in rows}
        for d in sorted(dirs):
            try:
                dst = os.stat(d)
                entries = list(os.scandir(d))
            except OSError:
                continue
            dev = kernel_dev(dst.st_dev)
            for e in entries:
                if e.path in keep or (dev, e.inode()) not in tree_inodes:
                    continue
                try:
                    est = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(est.st_mode) or est.st_ctime_ns < t0 - 1_000_000_000:
                    continue   # an older file that merely reuses the inode number
                if not dry_run:
                    try:
                        os.unlink(e.path)
                    except OSError as exc:
                        rep.failed.append((e.path, f"cannot remove: {exc.strerror}"))
                        continue
                rep.removed.append(e.path)
        if not dry_run and rep.ok:
            store.close_incident(incident, "rolled-back")
    return rep


def list_incidents(shadow_dir: Path) -> list[dict[str, Any]]:
    with ShadowStore(Path(shadow_dir), create=False) as store:
        return store.incidents()


def iter_rows(shadow_dir: Path, incident: int) -> Iterator[dict[str, Any]]:
    with ShadowStore(Path(shadow_dir), create=False) as store:
        yield from store.incident_rows(incident)


__all__ = ["RollbackReport", "iter_rows", "list_incidents", "rollback"]
