"""s21 review: attacks on the s20 code, each a failing test marked xfail(strict=True) with
the finding's name, so the fix can be verified (remove the mark with the fix)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bastion.detect.engine import Finding
from tests.unit.test_ransom_probe import NS, O_WRONLY, O_TRUNC, Tree, _feed_file, victims


def test_reopening_each_ciphertext_later_does_not_hide_it(tmp_path: Path) -> None:
    """The encryptor writes 9 ciphertexts, waits past the slack, opens each again O_WRONLY
    and closes it unchanged (its last write-open is now after its last change: 'not
    rewritten'), then unlinks a scratch file of its own: the 40th distinct value, so
    every check runs when no ciphertext is fresh.  Nothing is judged: 135 files encrypted
    in place, no kill."""
    tree = Tree(real_clock=True)
    tree.rule.TOUCH_SLACK_NS = NS // 5    # (1 s live) as test_no_op_write_opens_...
    files = victims(tmp_path / "docs", n=135, size=16 << 10)
    scratch = tmp_path / "docs" / "scratch"
    for c in range(0, len(files), 9):
        batch = files[c:c + 9]
        for p in batch:
            tree.write(p, os.urandom(16 << 10), flags=O_WRONLY | O_TRUNC)
        time.sleep(0.3)
        for p in batch:
            _feed_file(tree, "open", p, O_WRONLY)      # opened, closed unchanged
        junk = scratch.with_name(f"scratch{c}")
        junk.write_bytes(b"x")
        junk.unlink()
        _feed_file(tree, "unlink", junk)
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]


def test_reopening_each_ciphertext_later_does_not_hide_it_from_the_aggregate(
        tmp_path: Path) -> None:
    """F1 in the per-user aggregate: 5 ``sh -c 'python3 enc.py'`` workers (one tree each,
    10 values each: no tree check) write 9 ciphertexts, re-open them O_WRONLY unchanged
    0.3 s later and unlink a scratch file (every aggregate check runs at that unlink).
    The aggregate kept the last write-open too: not one ciphertext was a candidate."""
    from tests.unit.test_ransom_probe import sh_worker
    tree = Tree(real_clock=True)
    tree.rule.TOUCH_SLACK_NS = NS // 5
    files = victims(tmp_path / "docs", n=45, size=16 << 10)
    for k, c in enumerate(range(0, len(files), 9)):
        wp = sh_worker(tree, 63000 + k * 2)
        batch = files[c:c + 9]
        for p in batch:
            p.write_bytes(os.urandom(16 << 10))
            _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, wp)
        time.sleep(0.3)
        for p in batch:
            _feed_file(tree, "open", p, O_WRONLY, wp)      # opened, closed unchanged
        junk = tmp_path / "docs" / f"scratch{k}"
        junk.write_bytes(b"x")
        junk.unlink()
        _feed_file(tree, "unlink", junk, 0, wp)
    got = tree.critical()
    assert got and got[0].evidence["scope"] == "user", \
        (tree.rule.agg_checks, [(f.severity, f.evidence) for f in tree.found])


def test_an_encryptor_run_by_find_exec_is_judged(tmp_path: Path) -> None:
    """``find ~/docs -type f -exec python3 enc.py {} +``: the worker's parent is the genuine
    /usr/bin/find (a MASS_WRITER by inode), and ``trusted(..., depth=1)`` trusts the actor
    OR its parent: 60 files encrypted in place, not one finding."""
    from bastion.abi import kernel_dev
    tree = Tree()
    st = os.stat("/usr/bin/find")
    fpid, wpid = 61000, 61001

    def proc(pid: int, ppid: int, exe: str, comm: str) -> dict[str, object]:
        return {"pid": pid, "tid": pid, "ppid": ppid, "uid": 1000, "euid": 1000, "gid": 1000,
                "cgroup_id": 1, "comm": comm, "start_ns": 1000 + pid, "exe": exe}
    tree._feed({"type": "fork", **proc(tree.pid, 1, "/usr/bin/python3.11", "python3"),
                "child_pid": fpid, "child_start_ns": 1000 + fpid})
    tree._feed({"type": "exec", **proc(fpid, tree.pid, "/usr/bin/find", "find"),
                "filename": "/usr/bin/find", "cwd": "/", "argv": ["find", str(tmp_path),
                "-exec", "python3", "enc.py", "{}", "+"], "exe_dev": kernel_dev(st.st_dev),
                "exe_ino": st.st_ino, "exe_nlink": 1})
    tree._feed({"type": "fork", **proc(fpid, tree.pid, "/usr/bin/find", "find"),
                "child_pid": wpid, "child_start_ns": 1000 + wpid})
    w = proc(wpid, fpid, "/usr/bin/python3.11", "python3")
    tree._feed({"type": "exec", **w, "filename": "/usr/bin/python3", "cwd": "/",
                "argv": ["python3", "enc.py"], "exe_dev": 1, "exe_ino": 4242, "exe_nlink": 1})
    for p in victims(tmp_path / "docs", n=60, size=16 << 10):
        p.write_bytes(os.urandom(16 << 10))
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, w)
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]


def _actor(tree: "Tree", pid: int, exe: str, comm: str, ino: tuple[int, int],
           argv: list[str]) -> dict[str, object]:
    """Process ``pid`` (a child of the tree's process) exec'ing ``exe`` (identity ``ino``)."""
    p = {"pid": pid, "tid": pid, "ppid": tree.pid, "uid": 1000, "euid": 1000, "gid": 1000,
         "cgroup_id": 1, "comm": comm, "start_ns": 1000 + pid, "exe": exe}
    tree._feed({"type": "exec", **p, "filename": exe, "cwd": "/", "argv": argv,
                "exe_dev": ino[0], "exe_ino": ino[1], "exe_nlink": 1})
    return p


def test_a_trusted_actor_itself_is_still_trusted_and_only_while_it_runs_the_tool(
        tmp_path: Path) -> None:
    """Control for F2/F8 (trust per event, the actor's own, one verdict a process): the
    genuine /usr/bin/cp writing 60 random files itself raises nothing; the same process
    after an exec of python3 (its table entry replaced: the cached verdict is not reused)
    writing 60 more is critical."""
    from bastion.abi import kernel_dev
    tree = Tree()
    st = os.stat("/usr/bin/cp")
    cp = _actor(tree, 62000, "/usr/bin/cp", "cp", (kernel_dev(st.st_dev), st.st_ino),
                ["cp", "-r", "src", "dst"])
    for p in victims(tmp_path / "copy", n=60, size=16 << 10):
        p.write_bytes(os.urandom(16 << 10))
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, cp)
    assert not tree.found, [(f.severity, f.evidence) for f in tree.found]
    py = _actor(tree, 62000, "/usr/bin/python3.11", "python3", (1, 4242), ["python3", "enc.py"])
    for p in victims(tmp_path / "docs", n=60, size=16 << 10):
        p.write_bytes(os.urandom(16 << 10))
        _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, py)
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]


def test_remove_pins_survives_a_deep_directory_chain(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Compat: root makes ``x/x/x/...`` 1,500 deep under the tamper pin directory (mkdir
    under the pin root is not refused there).  The next ``remove_pins`` (maintenance,
    the half-made set at the guardian's start, HIPS pins of an older version) dies with
    a RecursionError -- no BastionError, so ``_arm``'s cleanup re-raises and the
    guardian cannot arm while the chain stays."""
    from bastion.kernel import bpffs
    monkeypatch.setattr(bpffs, "_require_bpffs", lambda p: None)   # the tmp dir is "bpffs"
    root = tmp_path / "pins"
    root.mkdir()
    (root / "maps").mkdir()
    (root / "maps" / "tamper_map_ids").write_bytes(b"")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1500):
        os.mkdir("x", dir_fd=fd)
        nfd = os.open("x", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    try:
        removed = bpffs.remove_pins(root)
        assert not root.exists() and len(removed) == 1500 + 3
    finally:
        _unchain(root)


def _unchain(root: Path) -> None:
    """Remove what is left of a deep ``x/x/...`` chain without recursion (shutil.rmtree
    recurses too): the grandchild is moved up, the emptied child removed, one level a step."""
    while (root / "x").is_dir():
        if (root / "x" / "x").is_dir():
            os.rename(root / "x" / "x", root / "y")
            os.rmdir(root / "x")
            os.rename(root / "y", root / "x")
        else:
            os.rmdir(root / "x")


class _Quarantine:
    def __init__(self) -> None:
        self.added: list[int] = []

    def add(self, pid: int, start_ns: int, incident: int) -> None:
        self.added.append(pid)


@pytest.mark.parametrize("who", ["agent", "parent"])
def test_quarantine_never_marks_the_agent_or_its_ancestors(who: str) -> None:
    """A quarantine finding (a rule's action overridden to ``quarantine``; the per-tree or
    per-user ransomware root is the tree key: the s20 CI case named the agent's parent)
    whose pid is the agent or its ancestor: ``_kill`` and ``_kill_tree`` skip it,
    ``_quarantine`` hands it to the kernel.  A fake backend records the add."""
    from bastion.detect.engine import Finding
    from bastion.proctable import ProcessTable
    from bastion.respond.dispatch import Dispatcher
    q = _Quarantine()
    d = Dispatcher(ProcessTable(), quarantine=q)
    pid = os.getpid() if who == "agent" else os.getppid()
    f = Finding(rule="behavior.ransomware", title="t", severity="critical", attack=(),
                action="quarantine", event=None, pid=pid)
    alert = d.dispatch(f, time.time_ns())
    assert q.added == [] and alert.action != "quarantine", (alert.action, q.added)


def test_a_link_pinned_under_the_other_tiers_program_name_is_not_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compat host: ``tamper/links/tamper_task_kill`` (a program of lsm_tamper.bpf.o, never
    loaded here) is a name the walk takes as ours.  Root pins a link of its own there whose
    program uses 64 maps of its own: the link id and the prog id are taken, and
    ``program_map_ids`` of that prog puts its 64 map ids into tamper_map_ids.  ~50 such
    free names x 64 maps > 2,048: every later registration of ours gets E2BIG (s20 meant
    the walk to take at most ``len(names)`` ids)."""
    import json
    from bastion.guard import kernel as gk
    monkeypatch.setattr(gk, "obj_get", lambda p: os.open(p, os.O_RDONLY))
    monkeypatch.setattr(gk, "fd_ids", lambda fd: json.loads(os.pread(fd, 200, 0)))
    fd = os.open(tmp_path, os.O_PATH)
    try:
        monkeypatch.setattr(gk, "PIN_FS", gk.PIN_FS | {gk._fs_type(gk._mnt_id(fd))})
    finally:
        os.close(fd)
    root = tmp_path / "pins"
    pin = root / "tamper" / "links" / "tamper_task_kill"
    pin.parent.mkdir(parents=True)
    pin.write_text(json.dumps({"link": 900, "prog": 901}))
    names = gk.our_pin_names()
    assert Path("tamper/links/tamper_task_kill") in names   # an lsm program's name
    got = gk.pinned_ids(root, tier="compat")        # s21: the walk names this tier's objects
    assert 901 not in got["prog"] and 900 not in got["link"], got
    tk = gk.TamperKernel(gk.Tier.COMPAT, pin_dir=root / "tamper")      # as protect_bpf walks
    assert Path("tamper/links/tamper_task_kill") not in tk.pin_names()
    got = gk.pinned_ids(root, tk.pin_names())
    assert 901 not in got["prog"] and 900 not in got["link"], got


def test_after_firing_new_workers_that_write_after_the_open_are_stopped(tmp_path: Path) -> None:
    """After the first aggregate finding, 10 new ``sh -c`` workers of 39 files each open
    every file O_WRONLY|O_TRUNC and write the ciphertext only after the agent has handled
    the open (live: sleep past the sensor's latency).  ``_high_value`` reads an empty
    file each time: not one of the 390 files stopped its tree, and no aggregate check ran
    while fired (``agg_checks`` stayed 1) -- the 20 s blind period of s20-ransomfix3
    review 1, back (seen failing before the fix: no new worker stopped).  Now each file
    judged at its open waits for the tree's next event: every worker is stopped at its
    second file."""
    tree = Tree()
    first = _fired(tree, tmp_path)
    _late_writers(tree, victims(tmp_path / "b", n=390, size=8 << 10), 39)
    again = tree.critical()[len(first):]
    stopped = {p for f in again for p, _ in f.roots if p >= 60000}
    assert len(stopped) == 10, ("not every new worker stopped", tree.rule.stats(),
                                [(f.severity, f.evidence) for f in tree.found[len(first):]])
    assert all(f.evidence.get("after_finding") for f in again)


def _fired(tree: "Tree", tmp_path: Path) -> list[Finding]:
    """The user's aggregate fired: 10 ``sh -c`` workers of 39 files each."""
    from tests.unit.test_ransom_probe import _sh_workers
    _sh_workers(tree, victims(tmp_path / "a", n=390, size=8 << 10), 39, 50000)
    first = tree.critical()
    assert first and first[0].evidence["scope"] == "user"
    return first


def _late_writers(tree: "Tree", files: list[Path], per: int, decoy: bool = False) -> None:
    """New ``sh -c`` workers (pids from 60000) of ``per`` files each: each file opened
    O_WRONLY|O_TRUNC, the event handled, then the ciphertext written (``decoy``: each
    worker's first file gets plaintext instead)."""
    from tests.unit.test_ransom_probe import sh_worker
    for b in range(0, len(files), per):
        wp = sh_worker(tree, 60000 + b * 2)
        for k, p in enumerate(files[b:b + per]):
            size = len(p.read_bytes())
            p.write_bytes(b"")                  # open(O_TRUNC): the event is handled now ...
            _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, wp)
            # ... the ciphertext comes after
            p.write_bytes(b"plain text, the same as before\n" * (size // 31) if decoy and not k
                          else os.urandom(size))


def test_after_firing_one_late_writer_alone_is_stopped_at_its_second_file(
        tmp_path: Path) -> None:
    """One new worker (no other tree writing: no aggregate check) that writes 30 files
    after their opens: the file of its first open is probed again at its second event
    (seen failing before the fix: never stopped, 30 files encrypted)."""
    tree = Tree()
    first = _fired(tree, tmp_path)
    files = victims(tmp_path / "b", n=30, size=8 << 10)
    _late_writers(tree, files, 30)
    again = tree.critical()[len(first):]
    assert len(again) == 1 and again[0].evidence.get("after_finding"), tree.rule.stats()
    assert again[0].evidence["sample"] == [str(files[0])], again[0].evidence


@pytest.mark.parametrize("per,decoy", [(1, False), (39, True)])
def test_after_firing_workers_that_leave_no_later_event_are_judged_together(
        tmp_path: Path, per: int, decoy: bool) -> None:
    """The attacker's next moves against the probe at the tree's next event: one file
    per worker (each worker exits after its write: its tree has no later event), or a
    plaintext decoy as each worker's first file (the one re-probe a second reads the
    decoy).  The user's trees not stopped are still judged together while fired (the
    stopped trees' files left out): 390 files, the workers stopped in batches (seen
    failing before the fix: none stopped, ``user_checks`` stayed 1)."""
    tree = Tree()
    first = _fired(tree, tmp_path)
    files = victims(tmp_path / "b", n=390, size=8 << 10)
    _late_writers(tree, files, per, decoy)
    again = tree.critical()[len(first):]
    stopped = {p for f in again for p, _ in f.roots if p >= 60000}
    workers = len(files) // per
    # each check needs count (40) files of 2+ trees: the last workers' files may not
    # have reached it (no later writer), at most count - 1 files
    assert len(stopped) * per >= len(files) - 39 - per, (len(stopped), tree.rule.stats())
    assert len(stopped) <= workers
    assert tree.rule.agg_checks > 1


def test_a_trusted_first_writer_does_not_exempt_its_tree_from_the_aggregate(
        tmp_path: Path) -> None:
    """10 trees, each ``... | xargs -L1 env`` (xargs: a launcher, so its children share its
    tree key): the first line runs the genuine /usr/bin/cp (a MASS_WRITER by inode) onto
    one file, then 39 lines ``python3 enc.py FILE``.  Each tree is under 40 (no per-tree
    check), and the aggregate took the cp's verdict for the whole tree: 390 files, silent.
    The same workers without the cp line are critical (the s20 aggregate test)."""
    from bastion.abi import kernel_dev
    from tests.unit.test_ransom_probe import _proc
    tree = Tree()
    cp, xa = os.stat("/usr/bin/cp"), os.stat("/usr/bin/xargs")
    py = "/usr/bin/python3.11"
    files = victims(tmp_path / "docs", n=390, size=8 << 10)
    for k, b in enumerate(range(0, len(files), 39)):
        x, s = 70000 + k * 100, 70099 + k * 100      # sh -c '... | xargs -L1 env'
        tree._feed({"type": "fork", **_proc(tree.pid, 1, py, "python3"), "child_pid": s,
                    "child_start_ns": 1000 + s})
        tree._feed({"type": "exec", **_proc(s, tree.pid, "/usr/bin/dash", "sh"),
                    "filename": "/bin/sh", "cwd": "/", "argv": ["sh", "-c", "xargs"],
                    "exe_dev": 1, "exe_ino": 1, "exe_nlink": 1})
        tree._feed({"type": "fork", **_proc(s, tree.pid, "/usr/bin/dash", "sh"), "child_pid": x,
                    "child_start_ns": 1000 + x})
        tree._feed({"type": "exec", **_proc(x, s, "/usr/bin/xargs", "xargs"),
                    "filename": "/usr/bin/xargs", "cwd": "/", "argv": ["xargs", "-L1", "env"],
                    "exe_dev": kernel_dev(xa.st_dev), "exe_ino": xa.st_ino, "exe_nlink": 1})
        c = x + 1
        tree._feed({"type": "fork", **_proc(x, s, "/usr/bin/xargs", "xargs"),
                    "child_pid": c, "child_start_ns": 1000 + c})
        tree._feed({"type": "exec", **_proc(c, x, "/usr/bin/cp", "cp"), "filename": "/usr/bin/cp",
                    "cwd": "/", "argv": ["cp", "/etc/hostname", str(files[b])],
                    "exe_dev": kernel_dev(cp.st_dev), "exe_ino": cp.st_ino, "exe_nlink": 1})
        _feed_file(tree, "open", files[b], O_WRONLY | O_TRUNC, _proc(c, x, "/usr/bin/cp", "cp"))
        for j, p in enumerate(files[b + 1:b + 39]):
            w = x + 2 + j
            tree._feed({"type": "fork", **_proc(x, s, "/usr/bin/xargs", "xargs"),
                        "child_pid": w, "child_start_ns": 1000 + w})
            tree._feed({"type": "exec", **_proc(w, x, py, "python3"),
                        "filename": "/usr/bin/python3", "cwd": "/",
                        "argv": ["python3", "enc.py", str(p)], "exe_dev": 1, "exe_ino": 4242,
                        "exe_nlink": 1})
            p.write_bytes(os.urandom(8 << 10))
            _feed_file(tree, "open", p, O_WRONLY | O_TRUNC, _proc(w, x, py, "python3"))
    assert tree.critical(), (tree.rule.agg_checks, [(f.severity, f.evidence.get("scope"))
                                                   for f in tree.found])


def test_opens_elsewhere_then_a_no_op_reopen_do_not_hide_a_rewrite(tmp_path: Path) -> None:
    """s21 review 2, finding 1: the tree rewrites 9 files (O_TRUNC: no witness, rewritten),
    then write-opens 160 files under /dev/shm -- no values, but they pushed the 9 out of
    the tree's first-open record --, waits, and re-opens each ciphertext O_WRONLY
    unchanged: a fresh first open whose witness is the ciphertext's own ctime, and
    ``merge`` took it over the rewritten value: every ciphertext 'not rewritten', 135
    files encrypted, no kill."""
    tree = Tree(real_clock=True)
    tree.rule.TOUCH_SLACK_NS = NS // 5
    tree.rule.FRESH_NS = NS // 5
    files = victims(tmp_path / "docs", n=135, size=16 << 10)
    for c in range(0, len(files), 9):
        batch = files[c:c + 9]
        for p in batch:
            tree.write(p, os.urandom(16 << 10), flags=O_WRONLY | O_TRUNC)
        for i in range(170):
            _feed_file(tree, "open", Path(f"/dev/shm/pad{c}-{i}"), O_WRONLY | O_TRUNC)
        time.sleep(0.3)
        for p in batch:
            _feed_file(tree, "open", p, O_WRONLY, ctime_ns=os.stat(p).st_ctime_ns)
        junk = tmp_path / "docs" / f"scratch{c}"
        junk.write_bytes(b"x")
        junk.unlink()
        _feed_file(tree, "unlink", junk)
    assert tree.critical(), [(f.severity, f.evidence) for f in tree.found]
