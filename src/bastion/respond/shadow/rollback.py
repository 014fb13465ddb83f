"""Ransomware shield, recovery: roll an incident back from its shadow copies.

Runs in the ``bastion rollback`` command (no listener, no marks), as root, on
paths an attacker may have rearranged since the copies were taken.  So a
file is restored only:

* beneath the protected root it was copied under (that root's dev/inode),
  resolved with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_XDEV)`` from an fd on the root -- never by walking the path;
* into the very parent directory (dev/inode) recorded at copy time -- a
  directory swapped for a symlink, renamed or replaced is refused; a
  directory is recreated (mode 0700, as the file's owner, one component at a
  time beneath the root) only when it was already gone when the incident
  opened, i.e. the tree removed it;
* when the incident's tree changed it: a file the tree only read is left
  alone (``untouched``), whatever happened to it since;
* with the directory operations (create, rename) done under the original
  owner's filesystem uid/gid (:func:`~bastion.kernel.openat2.fs_identity`):
  nothing the owner could not do themselves;
* keeping a later edit: a file whose current state is not what the tree left
  (recorded when the incident opened) is renamed ``NAME.bastion-kept-<time>``
  beside the restored file, and reported.

Copies taken without an anchor (path seen in another mount namespace, a
shadow index from before anchoring) and a kernel without ``openat2`` are
refused, each named with the reason.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Iterator

from bastion.errors import FeatureUnavailableError, KernelError
from bastion.kernel.openat2 import RESOLVE_STRICT, fs_identity, openat2
from bastion.policy.compile import kernel_dev
from bastion.respond.shadow.beneath import (
    FileState, ParentGone, RestoreRefused, lstat_at, open_parent, open_root, split_beneath,
)
from bastion.respond.shadow.store import CHUNK, ShadowStore

_SLACK_NS = 1_000_000_000


@dataclass
class RollbackReport:
    incident: int
    dry_run: bool
    restored: list[str] = field(default_factory=list)
    intact: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)   # only read by the tree: not rewritten
    removed: list[str] = field(default_factory=list)     # renamed/encrypted files the tree left
    kept: list[tuple[str, str]] = field(default_factory=list)   # later edits: (path, kept as)
    recreated: list[str] = field(default_factory=list)  # directories the tree removed
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"incident": self.incident, "dry_run": self.dry_run, "ok": self.ok,
                "restored": self.restored, "intact": self.intact, "untouched": self.untouched,
                "removed": self.removed, "recreated": self.recreated,
                "kept": [{"path": p, "kept_as": k} for p, k in self.kept],
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RollbackReport:
        """The report :meth:`to_json` wrote (the agent's answer to ``shadow.rollback``)."""
        return cls(int(doc["incident"]), bool(doc["dry_run"]), list(doc["restored"]),
                   list(doc["intact"]), list(doc["untouched"]), list(doc["removed"]),
                   [(str(k["path"]), str(k["kept_as"])) for k in doc["kept"]],
                   list(doc["recreated"]),
                   [(str(f["path"]), str(f["reason"])) for f in doc["failed"]])

    def summary(self) -> str:
        verb = "would restore" if self.dry_run else "restored"
        rm = "would remove" if self.dry_run else "removed"
        return (f"incident {self.incident}: {verb} {len(self.restored)}, already intact "
                f"{len(self.intact)}, only read {len(self.untouched)}, {rm} "
                f"{len(self.removed)}, later edits kept {len(self.kept)}, failed "
                f"{len(self.failed)}")


class _RootFds:
    """O_PATH fds on the protected roots the rows name, each checked against its
    recorded (dev, inode); a refusal is remembered."""

    def __init__(self) -> None:
        self._fds: dict[tuple[str, int, int], int | RestoreRefused] = {}

    def get(self, r: dict[str, Any]) -> int:
        if not r["root"] or not r["parent_ino"]:
            raise RestoreRefused(
                "the copy was not anchored beneath a protected root when it was taken (a path "
                "seen in another mount namespace or through a bind mount, a rename during the "
                "copy, or a shadow index from before anchoring): not restored automatically")
        key = (str(r["root"]), int(r["root_dev"]), int(r["root_ino"]))
        got = self._fds.get(key)
        if got is None:
            try:
                got = open_root(*key)
            except RestoreRefused as exc:
                got = exc
            self._fds[key] = got
        if isinstance(got, RestoreRefused):
            raise got
        return got

    def close(self) -> None:
        for v in self._fds.values():
            if isinstance(v, int):
                os.close(v)
        self._fds.clear()

    def __enter__(self) -> _RootFds:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _sha_at(dirfd: int, name: str) -> str | None:
    """sha256 of the regular file ``name`` in ``dirfd`` (no symlink, no mount crossing,
    never blocking on a FIFO); None when it is not one."""
    try:
        fd = openat2(dirfd, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                     RESOLVE_STRICT)
    except OSError:
        return None
    h = hashlib.sha256()
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


def _sha_fd(fd: int) -> str:
    h = hashlib.sha256()
    off = 0
    while buf := os.pread(fd, CHUNK, off):
        h.update(buf)
        off += len(buf)
    return h.hexdigest()


def _kept_name(dirfd: int, name: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    cand = f"{name}.bastion-kept-{stamp}"
    n = 1
    while lstat_at(dirfd, cand) is not None:
        n += 1
        cand = f"{name}.bastion-kept-{stamp}-{n}"
    return cand


def _write(store: ShadowStore, row: dict[str, Any], pfd: int, name: str,
           keep_aside: bool) -> str:
    """Put the copy at ``name`` in ``pfd``: a temp file created (as the owner) in that
    directory, written, checked, mode/owner/mtime set through its fd, then renamed
    (as the owner) onto the name -- the current file first renamed aside when
    ``keep_aside``.  Returns the kept name ('' when none)."""
    uid, gid = int(row["uid"]), int(row["gid"])
    chunks = store.read_blob(str(row["sha"]))
    first = next(chunks, b"")             # the blob is opened as root (the shadow dir is 0700)
    tmp = f".bastion-restore-{os.getpid()}-{row['id']}"
    fd = -1
    try:
        with fs_identity(uid, gid):
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
        h = hashlib.sha256()
        for buf in _chain(first, chunks):
            h.update(buf)
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view):]
        if h.hexdigest() != row["sha"]:
            raise ValueError("shadow copy corrupt (sha256 mismatch)")
        os.fsync(fd)
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):     # e.g. a setgid directory
            os.fchown(fd, uid, gid)                  # on the fd: no path to race
        os.fchmod(fd, stat.S_IMODE(int(row["mode"])))
        os.utime(fd, ns=(int(row["mtime_ns"]), int(row["mtime_ns"])))
        if _sha_fd(fd) != row["sha"]:
            raise ValueError("restored bytes differ from the shadow copy")
        kept = ""
        with fs_identity(uid, gid):
            if keep_aside:
                kept = _kept_name(pfd, name)
                os.rename(name, kept, src_dir_fd=pfd, dst_dir_fd=pfd)
            os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        return kept
    except BaseException:
        if fd >= 0:
            try:
                with fs_identity(uid, gid):
                    os.unlink(tmp, dir_fd=pfd)
            except OSError:
                pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _make_parents(rootfd: int, root: str, path: str, uid: int, gid: int,
                  rep: RollbackReport) -> tuple[int, str]:
    """Open the directories on the way to ``path`` one component at a time beneath
    the root (no symlink, no mount crossing), recreating the missing ones as
    ``uid``/``gid``, mode 0700; (fd on the parent or -1 in a dry run, name)."""
    parent, name = split_beneath(root, path)
    comps = [] if parent == "." else parent.split("/")
    cur = openat2(rootfd, ".", os.O_PATH | os.O_DIRECTORY, RESOLVE_STRICT)
    done = root.rstrip("/")
    try:
        for i, comp in enumerate(comps):
            done = f"{done}/{comp}"
            try:
                nxt = openat2(cur, comp, os.O_PATH | os.O_DIRECTORY, RESOLVE_STRICT)
            except FileNotFoundError:
                if rep.dry_run:           # this one and everything below it
                    for c in [None, *comps[i + 1:]]:
                        done = done if c is None else f"{done}/{c}"
                        if done not in rep.recreated:
                            rep.recreated.append(done)
                    os.close(cur)
                    return -1, name
                try:
                    with fs_identity(uid, gid):
                        os.mkdir(comp, 0o700, dir_fd=cur)
                    rep.recreated.append(done)
                except FileExistsError:
                    pass
                nxt = openat2(cur, comp, os.O_PATH | os.O_DIRECTORY, RESOLVE_STRICT)
            os.close(cur)
            cur = nxt
    except OSError as exc:
        os.close(cur)
        raise RestoreRefused(f"cannot recreate {done} beneath {root} as uid {uid}: "
                             f"{exc.strerror}") from exc
    return cur, name


def _restore_path(store: ShadowStore, roots: _RootFds, path: str, r: dict[str, Any],
                  left: FileState | None, rep: RollbackReport, keep: set[str]) -> None:
    rootfd = roots.get(r)
    if left is not None and left.parent_gone:
        # the tree removed a directory on the way (it was gone when the incident opened)
        pfd, name = _make_parents(rootfd, str(r["root"]), path, int(r["uid"]), int(r["gid"]),
                                  rep)
        if pfd < 0:
            rep.restored.append(path)
            return
    else:
        try:
            pfd, name = open_parent(rootfd, str(r["root"]), path, int(r["parent_dev"]),
                                    int(r["parent_ino"]))
        except ParentGone as exc:
            raise RestoreRefused(f"{exc.message} (removed after the incident opened: not "
                                 "recreated)") from exc
    try:
        cur = lstat_at(pfd, name)
        if cur is not None and stat.S_ISREG(cur.st_mode) and cur.st_size == int(r["size"]) \
                and _sha_at(pfd, name) == r["sha"]:
            rep.intact.append(path)
            return
        copied = FileState(True, int(r["ino"]), int(r["size"]), int(r["mtime_ns"]),
                           int(r["ctime_ns"]))
        if left == copied:
            rep.untouched.append(path)     # the tree only read it; a later edit stays
            return
        # the tree changed it; what is there now is the tree's unless it changed since
        later = cur is not None and (left is None or FileState.of(cur) != left)
        if rep.dry_run:
            rep.restored.append(path)
            if later:
                rep.kept.append((path, f"{name}.bastion-kept-<time>"))
            return
        try:
            kept = _write(store, r, pfd, name, later)
        except ValueError as exc:
            rep.failed.append((path, str(exc)))
            return
        except OSError as exc:
            rep.failed.append((path, f"write as uid {r['uid']} failed: {exc.strerror}"))
            return
        rep.restored.append(path)
        if kept:
            full = os.path.join(os.path.dirname(path), kept)
            rep.kept.append((path, full))
            keep.add(full)
    finally:
        os.close(pfd)


def _remove_leftovers(roots: _RootFds, rows: list[dict[str, Any]], tree: set[tuple[int, int]],
                      keep: set[str], t0: int, opened_ns: int, rep: RollbackReport) -> None:
    """Remove the tree's inodes left under other names (x.locked, files it created)
    in the directories it touched -- each directory opened as in a restore."""
    dirs: dict[str, dict[str, Any]] = {}
    for r in rows:
        dirs.setdefault(os.path.dirname(str(r["path"])), r)
    for d, r in sorted(dirs.items()):
        try:
            rootfd = roots.get(r)
            pfd, _name = open_parent(rootfd, str(r["root"]), str(r["path"]),
                                     int(r["parent_dev"]), int(r["parent_ino"]))
        except RestoreRefused:
            continue      # the files of this directory are already reported failed
        try:
            names = os.listdir(pfd)
            dev = kernel_dev(os.fstat(pfd).st_dev)
            for name in sorted(names):
                full = os.path.join(d, name)
                if full in keep:
                    continue
                try:
                    est = lstat_at(pfd, name)
                except OSError:
                    continue
                if est is None or (dev, est.st_ino) not in tree or stat.S_ISDIR(est.st_mode) \
                        or est.st_ctime_ns < t0 - _SLACK_NS:
                    continue   # not the tree's, or an older file reusing the inode number
                if est.st_ctime_ns > opened_ns:
                    rep.kept.append((full, "changed after the incident opened: left in place"))
                    continue
                if not rep.dry_run:
                    try:
                        with fs_identity(est.st_uid, est.st_gid):
                            os.unlink(name, dir_fd=pfd)
                    except OSError as exc:
                        rep.failed.append((full, f"cannot remove: {exc.strerror}"))
                        continue
                rep.removed.append(full)
        finally:
            os.close(pfd)


def rollback(shadow_dir: Path, incident: int, *, dry_run: bool = False) -> RollbackReport:
    """Restore what incident ``incident``'s tree changed: content, name, mode, owner, mtime.

    Per inode the earliest copy wins (the content before the tree's first
    open), per original path the earliest inode.  A file whose current
    content already matches is left alone, and so is one the tree only read.
    Files the tree created or renamed (found by inode in the directories it
    touched, changed since the incident began) are removed.  Every restored
    file is re-read and its sha256 compared with the copy's before it takes
    the original name.  Where and as whom: see the module docstring.
    """
    rep = RollbackReport(incident, dry_run)
    with ShadowStore(Path(shadow_dir), create=False) as store, _RootFds() as roots:
        rows = store.incident_rows(incident)
        if not rows:
            return rep
        left = store.incident_states(incident)
        opened_ns = int(store.incident(incident)["opened_ns"])
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
        keep: set[str] = set()
        for path, r in sorted(by_path.items()):
            keep.add(path)
            if r["sha"] is None or r["evicted"]:
                rep.failed.append((path, "shadow copy evicted (space budget)"))
                continue
            if not store.has_blob(str(r["sha"])):
                rep.failed.append((path, "shadow copy missing"))
                continue
            try:
                _restore_path(store, roots, path, r, left.get(path), rep, keep)
            except RestoreRefused as exc:
                rep.failed.append((path, f"refused: {exc.message}"))
            except (FeatureUnavailableError, KernelError) as exc:
                rep.failed.append((path, f"refused: {exc}"))
        try:
            _remove_leftovers(roots, rows, set(originals) | created, keep, t0, opened_ns, rep)
        except FeatureUnavailableError as exc:
            rep.failed.append(("(leftovers)", f"refused: {exc}"))
        if not dry_run and rep.ok:
            store.close_incident(incident, "rolled-back")
    return rep


def list_incidents(shadow_dir: Path) -> list[dict[str, Any]]:
    with ShadowStore(Path(shadow_dir), create=False) as store:
        return store.incidents()


def iter_rows(shadow_dir: Path, incident: int) -> Iterator[dict[str, Any]]:
    with ShadowStore(Path(shadow_dir), create=False) as store:
        yield from store.incident_rows(incident)


def shadow_handlers(shadow_dir: Path) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """The agent's control command ``shadow.rollback`` (``incident`` absent: the list;
    else the rollback, ``dry_run`` or not), what ``bastion rollback`` runs through it.

    The shadow index is in the data dir, which tamper protection guards: an
    administrator's own SQLite connection write-opens it and its ``-wal``/``-shm``
    (refused and alerted as tampering on the lsm tier to every process not enrolled),
    and closing a rolled-back incident writes it.  The agent is exempt (s22)."""

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        incident = req.get("incident")
        if incident is None:
            return {"incidents": list_incidents(shadow_dir)}
        if not isinstance(incident, int) or isinstance(incident, bool) or incident < 1:
            raise ValueError("shadow.rollback: incident must be a positive integer")
        dry_run = req.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise ValueError("shadow.rollback: dry_run must be a boolean")
        return {"report": rollback(shadow_dir, incident, dry_run=dry_run).to_json()}

    return {"shadow.rollback": handle}


__all__ = ["RollbackReport", "iter_rows", "list_incidents", "rollback", "shadow_handlers"]
