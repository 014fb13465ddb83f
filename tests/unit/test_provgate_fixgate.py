"""s18-fixgate: the review of the compat gate's placement (review-gate findings 1, 3, 5,
7, 8, 10), without a kernel: an unplaced credential read, locate's one tree, the btrfs
fdinfo match, the re-mark branch, the O_TMPFILE allow, fd hygiene."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from bastion import abi
from bastion.enforce import provgate as pg
from bastion.enforce.muststop import GateObject
from bastion.enforce.provgate import ProvenanceGate, _State
from bastion.kernel import opener
from bastion.kernel.fanotify import FAN_ALLOW, FAN_DENY, PermEvent, parse_fdinfo_marks
from bastion.policy.compile import kernel_dev


def _key(p: Path | str) -> tuple[int, int]:
    st = os.stat(p, follow_symlinks=False)
    return (kernel_dev(st.st_dev), st.st_ino)


class _Prov:
    def get(self, _tgid: int) -> abi.ProvVal:
        return abi.ProvVal(start_ns=0, reasons=abi.PROV_NETWORK_BINARY, origin_tgid=1)

    def untracked(self, _tgid: int) -> bool:
        return False


class _Scope:
    scope_cgroup_id = 0

    def is_self(self, _tid: int) -> bool:
        return False


def _decider(state: _State) -> ProvenanceGate:
    g = object.__new__(ProvenanceGate)
    g.unplaced = 0
    g._state = state
    g.prov = _Prov()  # type: ignore[assignment]
    g.scope = _Scope()  # type: ignore[assignment]
    g.trusted = None
    g.dry_run = False
    return g


def _unplaced_state(tmp_path: Path, cred_dev: int) -> _State:
    """Two kinds of marked dirs (so no single-kind shortcut), none of them the file's
    directory: every open of ``tmp_path/*`` is one the gate cannot place."""
    dirs: dict[tuple[int, int], Any] = {(cred_dev, 999_999_999): "credential",
                                        (1, 3): "persistence"}
    return _State({}, dirs, frozenset(dirs.values()), {})


def test_an_unplaced_read_on_a_credential_filesystem_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #1 (high): a tainted process read ~/.ssh/id_rsa through a lazily unmounted
    bind (no root places the path): kind 'persistence', reads allowed.  A credential
    object on the inode's filesystem now makes the unplaced read refused, and says so."""
    f = tmp_path / "id_rsa"
    f.write_text("KEY")
    state = _unplaced_state(tmp_path, _key(tmp_path)[0])
    g = _decider(state)
    monkeypatch.setattr(pg, "open_flags", lambda _tid: os.O_RDONLY)
    fd = os.open(f, os.O_RDONLY)
    try:
        ev = PermEvent(0, fd, os.getpid(), 0.0)
        kind, placed = g._kind(state, ev, str(f), os.getpid())
        assert kind == "credential" and placed.startswith("not placed")
        assert "credential object is on its filesystem" in placed
        v = g._decide(ev)
        assert v.response == FAN_DENY
    finally:
        os.close(fd)
    assert g.unplaced == 2


def test_an_unplaced_read_on_another_filesystem_stays_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The s16-fixgate rule stands off the credential filesystem: a rename of a user's
    own makes no directory a credential store."""
    f = tmp_path / "notes"
    f.write_text("x")
    state = _unplaced_state(tmp_path, _key(tmp_path)[0] + 1)
    g = _decider(state)
    monkeypatch.setattr(pg, "open_flags", lambda _tid: os.O_RDONLY)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert g._decide(PermEvent(0, fd, os.getpid(), 0.0)).response == FAN_ALLOW
    finally:
        os.close(fd)


def test_an_unplaced_o_tmpfile_in_a_home_is_allowed_and_in_a_cron_dir_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #2: an O_TMPFILE made in ~ has no name to place (refused as persistence);
    in a persistence directory it stays refused (linkat would name it there)."""
    home, cron = tmp_path / "home", tmp_path / "cron.d"
    home.mkdir()
    cron.mkdir()
    dirs: dict[tuple[int, int], Any] = {(1, 2): "profile-dir", (1, 3): "persistence",
                                        (1, 4): "credential"}
    paths = {(1, 2): str(home), (1, 3): str(cron)}
    state = _State({}, dirs, frozenset(dirs.values()), paths)
    monkeypatch.setattr(pg, "open_flags", lambda _tid: os.O_TMPFILE | os.O_RDWR)
    for d, want in ((home, FAN_ALLOW), (cron, FAN_DENY)):
        g = _decider(state)
        fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            assert g._decide(PermEvent(0, fd, os.getpid(), 0.0)).response == want, d
        finally:
            os.close(fd)


def test_locate_opens_the_directory_first_so_an_exchange_cannot_confirm_another_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #3: the name and its directory were two path walks; a RENAME_EXCHANGE of
    the directory between them gave a 'confirmed' parent that was not the object's."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    (b / "f").write_text("b")
    want_parent, expect = _key(a), _key(a / "f")
    real = opener._open_cached_retry
    calls = {"n": 0}

    def swap_after_first(path: str, flags: int, dirfd: int = opener.AT_FDCWD,
                         resolve: int = 0) -> int:
        fd = real(path, flags, dirfd, resolve)
        calls["n"] += 1
        if calls["n"] == 1:        # the exchange between the two lookups
            os.rename(a, tmp_path / "t")
            os.rename(b, a)
            os.rename(tmp_path / "t", b)
        return fd

    monkeypatch.setattr(opener, "_open_cached_retry", swap_after_first)
    confirmed, parents = opener.locate(str(a / "f"), expect)
    assert calls["n"] == 2
    assert not confirmed or parents[0] == want_parent, (parents[:1], want_parent)


def test_locate_in_another_root_and_a_link_on_the_way_is_not_followed(tmp_path: Path) -> None:
    """Review #10: locate(root=...) untested."""
    (tmp_path / "etc" / "cron.d").mkdir(parents=True)
    job = tmp_path / "etc" / "cron.d" / "job"
    job.write_text("x")
    os.symlink("etc", tmp_path / "lnk")
    rfd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        ok, parents = opener.locate("/etc/cron.d/job", _key(job), root=rfd)
        assert ok and parents[:2] == [_key(tmp_path / "etc" / "cron.d"), _key(tmp_path / "etc")]
        assert opener.locate("/lnk/cron.d/job", _key(job), root=rfd) == (False, [])
        assert opener.locate("/etc/cron.d/job", _key(tmp_path / "etc"), root=rfd) == (False, [])
    finally:
        os.close(rfd)


def test_locate_leaves_no_fd_when_the_last_lookup_fails(tmp_path: Path) -> None:
    """Review #7/#8: every failure path closes what it opened."""
    f = tmp_path / "f"
    f.write_text("x")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        opener.locate(str(tmp_path / "gone"), _key(f))
        opener.locate(str(f), (0, 0))
        opener.locate(str(f), _key(f))
    assert len(os.listdir("/proc/self/fd")) == before


_LINE = (b"fanotify ino:210291 sdev:fe00000 mflags:0 mask:20 ignored_mask:0 "
         b"fhandle-bytes:8 fhandle-type:1 f_handle:9102210085a8ceb8")


def test_fdinfo_parser_reads_keys_and_handles_and_refuses_a_malformed_line() -> None:
    """Review #10: the parser untested (a malformed line, a handle)."""
    text = b"pos:\t0\nfanotify flags:0 event-flags:8000\n" + _LINE + b"\n"
    parsed = parse_fdinfo_marks(text)
    assert parsed == ({(0xfe00000, 0x210291)}, {(1, bytes.fromhex("9102210085a8ceb8"))})
    assert parse_fdinfo_marks(b"fanotify ino:zz sdev:1\n") is None
    assert parse_fdinfo_marks(b"fanotify ino:12\n") is None
    # a handle whose length disagrees is not taken (its sdev:ino stands)
    keys, handles = parse_fdinfo_marks(_LINE.replace(b"fhandle-bytes:8", b"fhandle-bytes:9")) \
        or (set(), set())
    assert keys == {(0xfe00000, 0x210291)} and handles == set()


def test_a_btrfs_mark_is_live_by_its_handle_though_sdev_differs(tmp_path: Path) -> None:
    """Review #5: btrfs prints the superblock's sdev; the recorded key has the
    subvolume's anonymous dev: every mark was 'gone' and re-marked on every pass."""
    from bastion.kernel.fanotify import PermissionListener
    lis = object.__new__(PermissionListener)
    r, w = os.pipe()
    try:
        lis._fd = r
        recorded = (0x2d, 0x210291)                  # anon dev of the subvolume
        lis._handles = {recorded: (1, bytes.fromhex("9102210085a8ceb8"), 42),
                        (0x2d, 7): (1, b"\x00" * 8, 42)}
        import bastion.kernel.fanotify as fan
        real_open = open

        def fake_open(path: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
            if str(path) == f"/proc/self/fdinfo/{r}":
                p = tmp_path / "fdinfo"
                p.write_bytes(_LINE + b"\n")
                return real_open(p, mode)
            return real_open(path, mode, *a, **k)

        fan.open = fake_open  # type: ignore[attr-defined]
        try:
            live = lis.marked_inodes()
        finally:
            del fan.open  # type: ignore[attr-defined]
        assert live is not None and recorded in live and (0x2d, 7) not in live
    finally:
        os.close(r)
        os.close(w)


class _LosingListener:
    """A listener whose kernel loses a mark (its inode deleted and made again)."""

    is_open, expired, closed = True, False, False

    def __init__(self) -> None:
        self.mark_lock = threading.Lock()
        self.live: set[tuple[int, int]] = set()
        self.marked: list[str] = []

    def mark(self, path: str, key: tuple[int, int], _mask: int) -> None:
        self.marked.append(path)
        self.live.add(key)

    def unmark(self, _path: str, key: tuple[int, int], _mask: int) -> None:
        self.live.discard(key)

    def flush_marks(self, _why: str) -> None:
        self.live.clear()

    def marked_inodes(self) -> set[tuple[int, int]]:
        return set(self.live)


def test_a_mark_the_kernel_lost_is_made_again_on_the_next_pass(tmp_path: Path) -> None:
    """Review #10: the re-mark branch could be deleted with the unit suite passing."""
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("")
    g = object.__new__(ProvenanceGate)
    lis = _LosingListener()
    g.listener = lis  # type: ignore[assignment]
    g.max_dirs, g.per_object_dirs, g.over_budget = 100, 50, []
    g._marks, g._state, g.marks_added, g.marks_removed = {}, None, 0, 0
    g.remarked = 0
    objs = [GateObject(str(tmp_path / n), "persistence") for n in ("a", "b")]
    assert g.apply(objs) == [] and sorted(lis.marked) == [str(tmp_path / "a"),
                                                          str(tmp_path / "b")]
    lis.marked.clear()
    assert g.apply(objs) == [] and lis.marked == [] and g.remarked == 0
    lis.live.discard(_key(tmp_path / "a"))      # the kernel dropped it
    assert g.apply(objs) == []
    assert lis.marked == [str(tmp_path / "a")] and g.remarked == 1
    assert _key(tmp_path / "a") in lis.live


def test_kind_closes_every_root_fd_when_locate_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #8: the second root's fd leaked when locate raised on the first."""
    f = tmp_path / "f"
    f.write_text("x")
    closed: list[int] = []
    fds = [os.open(tmp_path, os.O_PATH), os.open(tmp_path, os.O_PATH)]
    real_close = os.close

    def rec_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    def boom(_path: str, _key: tuple[int, int], root: int | None = None,
             unchecked: Any = None) -> tuple[bool, list[Any]]:
        if root is not None:
            raise RuntimeError("locate failed")
        return False, []

    monkeypatch.setattr(pg, "locate", boom)
    monkeypatch.setattr(pg.os, "close", rec_close)
    monkeypatch.setattr(ProvenanceGate, "_opener_roots",
                        staticmethod(lambda _tid: [("root", fds[0]), ("namespace", fds[1])]))
    state = _unplaced_state(tmp_path, 0)
    g = _decider(state)
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(RuntimeError):
            g._kind(state, PermEvent(0, fd, os.getpid(), 0.0), str(f), os.getpid())
    finally:
        real_close(fd)
    assert sorted(closed) == sorted(fds)


def test_opener_roots_of_a_task_in_the_agents_namespace_is_its_root_only() -> None:
    """Review #4 (DoS): no walk to the namespace's top for the agent's own namespace."""
    roots = opener.opener_roots(os.getpid())
    try:
        assert [w for w, _ in roots] == ["root"]
    finally:
        for _, fd in roots:
            os.close(fd)


def test_a_lookup_that_needs_revalidation_is_said_apart_as_could_not_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #2: an ecryptfs home (d_revalidate under RCU: EAGAIN for every name) made
    every tainted write 'not placed: no root names it', as if it named another object."""
    import errno as _errno
    f = tmp_path / "notes"
    f.write_text("x")

    def eagain(path: str, *_a: Any, **_k: Any) -> int:
        raise OSError(_errno.EAGAIN, "Resource temporarily unavailable", path)

    unchecked: list[str] = []
    monkeypatch.setattr(opener._STATX, "open_cached", eagain)
    assert opener.locate(str(f), _key(f), unchecked=unchecked) == (False, [])
    assert unchecked == [str(f)]
    state = _unplaced_state(tmp_path, 0)
    g = _decider(state)
    monkeypatch.setattr(ProvenanceGate, "_opener_roots", staticmethod(lambda _tid: []))
    fd = os.open(f, os.O_RDONLY)
    try:
        kind, placed = g._kind(state, PermEvent(0, fd, os.getpid(), 0.0), str(f), os.getpid())
    finally:
        os.close(fd)
    assert kind == "persistence" and "could not check" in placed


def test_another_namespaces_top_is_walked_once_and_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review #4 (DoS): every unplaceable read walked up to 64 '..' from the opener's
    root; the top is now kept per mount namespace (and the walk bounded)."""
    opener.forget_ns_tops()
    (tmp_path / "r" / "deep").mkdir(parents=True)
    monkeypatch.setattr(opener, "_mnt_ns", lambda tid: 4242 if tid == 7 else 1)
    real_open = os.open
    opens: list[str] = []

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "/proc/7/root":
            path = str(tmp_path / "r" / "deep")
        opens.append(str(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(opener.os, "open", fake_open)
    try:
        first = opener.opener_roots(7)
        walked = opens.count("..")
        second = opener.opener_roots(7)
        assert [w for w, _ in first] == [w for w, _ in second] == ["root", "namespace"]
        assert walked >= 3 and opens.count("..") == walked     # no second walk
        assert opener._STATX.key("", opener.AT_EMPTY_PATH, second[1][1]) == _key("/")
        for _, fd in first + second:
            os.close(fd)
    finally:
        opener.forget_ns_tops()
