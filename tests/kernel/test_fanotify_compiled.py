"""Issue 16 item 4: the compiled listener loop (src/native/fanloop.c) on this host.

It answers the plan's precomputed allow sets itself and hands every other event
to Python.  Since s27 an inode every task may open is not marked at all, so the hot
file of these tests is a write-protected one (a deny of writes for everyone): its
read-only opens are the allow set the loop answers (``allow_read``, the opener's
flags from ``/proc/TID/syscall``), its writes go to Python.  What it must never do: answer from a table a plan change replaced,
leave an event unanswered when it stalls, or answer a stalled event with
anything but the current plan's fallback.

Kernel-safety rules as in test_fanotify.py: only files under ``tmp_path`` are
marked (inode marks), decisions are scoped to a fresh test cgroup, a dead-man
deadline and the watchdog are on, the enforcer is closed in ``finally``, every
subprocess has a timeout.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion import abi
from bastion.enforce.fanotify import FanotifyEnforcer, supported
from bastion.errors import KernelError, Location
from bastion.kernel.fanotify import FastLoop, PermissionListener
from bastion.kernel.openctx import OpenContext
from bastion.policy.compile import FileTarget, MapPlan, ResolvedPolicy, ResolvedRule, compile_plan, kernel_dev
from bastion.policy.model import Action, Mode, Op
from support.cg import run_in, scoped_cgroup

DEADLINE_S = 60.0
TIMEOUT = 30
EPERM_TEXT = "Operation not permitted"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _need_fanotify() -> None:
    why = supported()
    if why is not None:
        pytest.skip(f"fanotify permission events unavailable: {why}")


def target(path: Path) -> FileTarget:
    st = os.stat(path)
    return FileTarget(kernel_dev(st.st_dev), st.st_ino, False, str(path))


def rule(rule_id: int, ops: tuple[Op, ...], path: Path, action: Action) -> ResolvedRule:
    return ResolvedRule(rule_id=rule_id, name=f"r{rule_id}", location=Location("test", rule_id),
                        identities=(), subject="test", ops=ops, files=(target(path),), nets=(),
                        action=action)


def plan_of(*rules: ResolvedRule) -> MapPlan:
    return compile_plan(ResolvedPolicy(Mode.ENFORCE, Action.ALLOW, tuple(rules)))


def targets_of(*rules: ResolvedRule) -> list[FileTarget]:
    return [f for r in rules for f in r.files]


@pytest.fixture
def cg() -> Iterator[tuple[Path, int]]:
    with scoped_cgroup() as c:
        yield c


def _enforcer(cg_id: int, timeout_s: float, compiled: bool = True,
              marks: bool = True) -> FanotifyEnforcer:
    """Opened and started, scoped to the test's cgroup; ``compiled``: the compiled loop
    answers what it can (False: Python decides every event); ``marks``: it trusts a
    read's registers on the open context's marks (False: on the opener's stack)."""
    enf = FanotifyEnforcer(scope_cgroup_id=cg_id, deadline_s=DEADLINE_S, decision_timeout_s=timeout_s,
                           compiled=compiled, open_context=marks)
    enf.open()
    assert enf.stats()["open_context"] == int(compiled and marks), enf.open_context_why
    enf.start()
    return enf


# how the read-only opens of a write-protected file are told from the others: the
# compiled loop on the open context's marks, the compiled loop on the opener's stack,
# Python on the stack
LOOPS = pytest.mark.parametrize("loop", ["marks", "stack", "python"])


def _loop_enforcer(cg_id: int, timeout_s: float, loop: str) -> FanotifyEnforcer:
    return _enforcer(cg_id, timeout_s, compiled=loop != "python", marks=loop == "marks")


def _fast(enf: FanotifyEnforcer) -> FastLoop:
    fast = enf.listener._fast   # white box: the test seams of the compiled loop
    assert fast is not None, enf.listener.compiled_why
    return fast


def _wait(pred: object, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_the_compiled_loop_answers_the_allow_set_and_python_the_rest(
        tmp_path: Path, cg: tuple[Path, int]) -> None:
    """Hot read-only opens of an inode every task may read are answered by the compiled
    loop (timed, counted as in-time allows); a denied inode next to it still reaches
    the Python decision and is refused and reported."""
    hot, secret = tmp_path / "hot", tmp_path / "secret"
    hot.write_text("hot\n")
    secret.write_text("s\n")
    enf = _enforcer(cg[1], 2.0)
    try:
        assert enf.listener.compiled_loop, enf.listener.compiled_why
        a = rule(1, (Op.OPEN_WRITE,), hot, Action.DENY)
        d = rule(2, (Op.OPEN_READ,), secret, Action.DENY)
        enf.apply(plan_of(a, d), targets_of(a, d))
        p = run_in(cg[0], ["sh", "-c", f"for i in 1 2 3 4 5 6 7 8; do cat {hot}; done; cat {secret}"],
                   timeout=TIMEOUT)
        assert p.stdout == "hot\n" * 8 and p.returncode != 0 and EPERM_TEXT in p.stderr, p
        assert _wait(lambda: enf.stats()["fast_allows"] >= 8)
        s = enf.stats()
        assert s["compiled_loop"] == 1 and s["fast_allows"] >= 8, s
        assert s["denies"] == 1 and s["fail_opens"] == 0 and s["errors"] == 0, s
        assert s["allows"] >= s["fast_allows"] and s["decisions_timed"] >= 9, s
    finally:
        enf.close()


def _marked_inodes(enf: FanotifyEnforcer) -> set[int]:
    """The inode numbers of the group's marks, as the kernel holds them (fdinfo)."""
    text = Path(f"/proc/self/fdinfo/{enf.listener.fd}").read_text()
    return {int(tok.split(":", 1)[1], 16) for ln in text.splitlines()
            if ln.startswith("fanotify ino:") for tok in ln.split() if tok.startswith("ino:")}


def test_an_inode_only_allow_rules_name_raises_no_permission_event(
        tmp_path: Path, cg: tuple[Path, int]) -> None:
    """s27: an inode every task may open and exec (allow rules only, as a learned policy
    writes them) is not marked, so its opens cost nothing; before, each was a permission
    event (7x an open with the compiled loop, ~30x in Python) answered ALLOW.  A
    deny on the same plan's other inode is still marked and refused."""
    hot, secret = tmp_path / "hot", tmp_path / "secret"
    hot.write_text("hot\n")
    secret.write_text("s\n")
    enf = _enforcer(cg[1], 2.0)
    try:
        a = rule(1, (Op.OPEN_READ, Op.OPEN_WRITE, Op.EXEC), hot, Action.ALLOW)
        d = rule(2, (Op.OPEN_READ,), secret, Action.DENY)
        enf.apply(plan_of(a, d), targets_of(a, d))
        assert _marked_inodes(enf) == {secret.stat().st_ino}
        before = enf.stats()["perm_events"]
        p = run_in(cg[0], ["sh", "-c", f"for i in 1 2 3 4 5; do cat {hot} >/dev/null || exit 9; "
                                       f"echo x >> {hot} || exit 8; done; cat {secret}"],
                   timeout=TIMEOUT)
        assert p.returncode == 1 and p.stderr.count(EPERM_TEXT) == 1 and "secret" in p.stderr, p
        assert hot.read_text() == "hot\n" + "x\n" * 5
        s = enf.stats()
        assert s["perm_events"] - before == 1 and s["denies"] == 1, s
        # a plan swap that denies it marks it again, and the next open is refused
        d2 = rule(3, (Op.OPEN_READ,), hot, Action.DENY)
        enf.apply(plan_of(d2, d), targets_of(d2, d))
        assert _marked_inodes(enf) == {secret.stat().st_ino, hot.stat().st_ino}
        assert run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT).returncode != 0
    finally:
        enf.close()


_OPEN = ("import os, sys\nflags = {'r': os.O_RDONLY, 'rt': os.O_RDONLY | os.O_TRUNC,"
         " 'rw': os.O_RDWR, 'a': os.O_WRONLY | os.O_APPEND, 'rc': os.O_RDONLY | os.O_CREAT}\n"
         "for how in sys.argv[2:]:\n"
         "    try:\n        os.close(os.open(sys.argv[1], flags[how]))\n        print(how, 'ok')\n"
         "    except OSError as e:\n        print(how, e.errno)\n")


@LOOPS
def test_a_write_protected_file_is_read_without_python_and_its_writes_are_still_refused(
        tmp_path: Path, cg: tuple[Path, int], loop: str) -> None:
    """Attack: every task may read the file, no task may write it.  The compiled loop
    answers the read-only opens from the opener's flags (/proc/TID/syscall, while the
    opener sleeps in its open: its registers cannot change); an open for writing in any
    spelling -- O_RDWR, O_WRONLY|O_APPEND, and O_RDONLY|O_TRUNC, which truncates -- is
    not read-only, goes to the Python decision and is refused.  Without the compiled
    loop, Python answers the read-only opens from the flags alone (no other fact).
    With the open context's marks, no read of the loop needs the opener's stack."""
    compiled = loop != "python"
    prot = tmp_path / "prot"
    prot.write_text("keep\n")
    enf = _loop_enforcer(cg[1], 2.0, loop)
    try:
        w = rule(1, (Op.OPEN_WRITE,), prot, Action.DENY)
        enf.apply(plan_of(w), targets_of(w))
        hows = ["r", "rc"] * 10 + ["rt", "rw", "a", "r"]
        p = run_in(cg[0], ["python3", "-c", _OPEN, str(prot), *hows], timeout=TIMEOUT)
        assert p.returncode == 0, p
        got = dict.fromkeys(hows, "")
        for line in p.stdout.splitlines():
            how, res = line.split()
            got[how] = res
        assert got == {"r": "ok", "rc": "ok", "rt": "1", "rw": "1", "a": "1"}, p.stdout
        fast = 21 if compiled else 0
        assert _wait(lambda: enf.stats()["fast_allows"] >= fast and enf.stats()["denies"] >= 3)
        s = enf.stats()
        assert s["fast_allows"] == fast and s["denies"] == 3 and s["errors"] == 0, s
        assert s["compiled_loop"] == int(compiled), s
        assert s["fail_opens"] == 0, s
        assert (s["reads_by_marks"], s["reads_by_stack"]) == \
            {"marks": (fast, 0), "stack": (0, fast), "python": (0, 0)}[loop], s
        assert enf.read_check().startswith(
            {"marks": "open context marks", "stack": "the opener's stack (open context off: "
             "turned off)", "python": "Python on the opener's stack"}[loop]), enf.read_check()
        assert prot.read_text() == "keep\n"   # (this read is one more fast allow: anyone's)
    finally:
        enf.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_write_protected_directory_tree_is_read_from_the_flags_and_written_nowhere(
        tmp_path: Path, cg: tuple[Path, int], compiled: bool) -> None:
    """s27: a directory object whose writes are denied (the shape of "nobody writes
    /etc/") marks every directory of the tree, so every open below it is an event; the
    plan allows every read, so a read-only open anywhere is answered from the opener's
    flags alone (the compiled loop: no Python at all; Python: no path walk).  Attack:
    writes in every spelling, in the top directory and in a subdirectory, are still
    decided in Python and refused.  (A hard link out of the tree is the directory
    object's documented limit, not this path's: docs/policy.md.)"""
    top = tmp_path / "etc"
    (top / "sub").mkdir(parents=True)
    files = [top / "a.conf", top / "sub" / "b.conf"]
    for f in files:
        f.write_text("keep\n")
    st = os.stat(top)
    tree = FileTarget(kernel_dev(st.st_dev), st.st_ino, True, str(top))
    enf = _enforcer(cg[1], 2.0, compiled)
    try:
        w = ResolvedRule(1, "r1", Location("test", 1), (), "test", (Op.OPEN_WRITE,), (tree,), (),
                         Action.DENY)
        enf.apply(plan_of(w), [tree])
        assert enf._state is not None and enf._state.read_anywhere   # white box
        hows = ["r", "rc"] * 5 + ["rt", "rw", "a"]
        for f in files:
            p = run_in(cg[0], ["python3", "-c", _OPEN, str(f), *hows], timeout=TIMEOUT)
            assert p.returncode == 0, p
            got = dict(line.split() for line in p.stdout.splitlines())
            assert got == {"r": "ok", "rc": "ok", "rt": "1", "rw": "1", "a": "1"}, (f, p.stdout)
        fast = 20 if compiled else 0
        assert _wait(lambda: enf.stats()["fast_allows"] >= fast and enf.stats()["denies"] >= 6)
        s = enf.stats()
        assert s["fast_allows"] == fast and s["denies"] == 6 and s["errors"] == 0, s
        assert all(f.read_text() == "keep\n" for f in files)
    finally:
        enf.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_a_per_program_rule_on_a_tree_costs_the_other_programs_only_their_executable(
        tmp_path: Path, cg: tuple[Path, int], compiled: bool) -> None:
    """s27: a rule for one program on a directory (the shape of "nginx may not read
    /home/") marks every directory of the tree, so every program's opens below it are
    events.  A task whose executable no subject names is allowed everything there, so
    its opens are answered from its executable's identity (statx of /proc/TID/exe), by
    the compiled loop without Python, by Python before any path walk.  Attack: the
    program itself, and under another name (a hard link: the same inode), is still
    refused."""
    top = tmp_path / "home"
    (top / "sub").mkdir(parents=True)
    files = [top / "a.txt", top / "sub" / "b.txt"]
    for f in files:
        f.write_text("data\n")
    prog = tmp_path / "nginx"
    shutil.copy2(shutil.which("cat") or "/bin/cat", prog)
    shutil.copy2(shutil.which("true") or "/bin/true", top / "tool")
    os.link(prog, tmp_path / "innocent")
    pst, st = os.stat(prog), os.stat(top)
    tree = FileTarget(kernel_dev(st.st_dev), st.st_ino, True, str(top))
    enf = _enforcer(cg[1], 2.0, compiled)
    try:
        r = ResolvedRule(1, "r1", Location("test", 1),
                         ((abi.SubjectKind.EXE, pst.st_ino, kernel_dev(pst.st_dev)),), "nginx",
                         (Op.OPEN_READ, Op.EXEC), (tree,), (), Action.DENY)
        enf.apply(plan_of(r), [tree])
        assert enf._state is not None and enf._state.nosubj == (True, False, True)  # white box
        for f in files:
            p = run_in(cg[0], ["sh", "-c", f"cat {f} {f} {f} >/dev/null && echo more >> {f}"],
                       timeout=TIMEOUT)
            assert p.returncode == 0, p
        # an exec below the tree by a program no subject names: answered the same way
        assert run_in(cg[0], [str(top / "tool")], timeout=TIMEOUT).returncode == 0
        for name in ("nginx", "innocent"):
            p = run_in(cg[0], [str(tmp_path / name), str(files[1])], timeout=TIMEOUT)
            assert p.returncode != 0 and EPERM_TEXT in p.stderr, (name, p)
        # 8 opens and the exec's event(s) answered without Python, or none of them
        fast = 9 if compiled else 0
        assert _wait(lambda: enf.stats()["fast_allows"] >= fast and enf.stats()["denies"] >= 2)
        s = enf.stats()
        assert (s["fast_allows"] >= 9 if compiled else s["fast_allows"] == 0), s
        assert s["denies"] == 2 and s["errors"] == 0, s
    finally:
        enf.close()
    assert [f.read_text() for f in files] == ["data\nmore\n"] * 2


def test_a_kernel_whose_stacks_cannot_tell_whose_open_it_is_says_so_and_keeps_reads_in_python(
        tmp_path: Path, cg: tuple[Path, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc/TID/stack cannot tell a syscall's own open (no stack traces, no
    symbol names, another open path: ``stack_verifiable`` says why), the compiled loop
    answers no read, Python takes the syscall's flags as they are (as before s27), and
    the plan lists it as not enforced -- loudly, never silently; writes stay refused."""
    from bastion.enforce import fanotify as enforce_fan
    from bastion.kernel import opener

    why = "test: no stack traces"
    monkeypatch.setattr(enforce_fan, "stack_verifiable", lambda: why)
    monkeypatch.setattr(opener, "stack_verifiable", lambda: why)
    prot = tmp_path / "prot"
    prot.write_text("keep\n")
    enf = _enforcer(cg[1], 2.0)
    try:
        w = rule(1, (Op.OPEN_WRITE,), prot, Action.DENY)
        enf.apply(plan_of(w), targets_of(w))
        assert any(why in u and "io_uring" in u for u in enf.unenforced()), enf.unenforced()
        p = run_in(cg[0], ["python3", "-c", _OPEN, str(prot), "r", "rc", "rw", "a"],
                   timeout=TIMEOUT)
        assert p.stdout.split() == ["r", "ok", "rc", "ok", "rw", "1", "a", "1"], p
        assert _wait(lambda: enf.stats()["denies"] >= 2)
        s = enf.stats()
        assert s["fast_allows"] == 0 and s["denies"] == 2, s
    finally:
        enf.close()


# An io_uring OPENAT for writing, run (tw) as task work on the way back from a
# read-only openat of a FIFO that blocks (its registers stay that openat's), (wq) by an
# io_uring worker, or (wqtw) by a worker created from that task work.  Prints the
# openat's result ("res N") and, when it got a descriptor, writes "PWNED" through it.
_URING_C = r"""
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
static struct io_uring_sqe *sqes;
static struct io_uring_cqe *cqes;
static struct io_uring_sqe *get(void)
{
	unsigned t = *sq_tail, i = t & *sq_mask;
	memset(&sqes[i], 0, sizeof(sqes[i]));
	sq_array[i] = i;
	__atomic_store_n(sq_tail, t + 1, __ATOMIC_RELEASE);
	return &sqes[i];
}
int main(int argc, char **argv)
{
	static struct __kernel_timespec ts = { 0, 200000000 };
	struct io_uring_params p;
	const char *mode = argv[1], *prot = argv[2], *fifo = argv[3];
	int ring, n = 1;
	memset(&p, 0, sizeof(p));
	ring = syscall(__NR_io_uring_setup, 8, &p);
	if (ring < 0) { perror("io_uring_setup"); return 3; }
	char *sq = mmap(0, p.sq_off.array + p.sq_entries * 4, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
	char *cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
			PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
	sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
	sq_tail = (void *)(sq + p.sq_off.tail); sq_mask = (void *)(sq + p.sq_off.ring_mask);
	sq_array = (void *)(sq + p.sq_off.array); cq_head = (void *)(cq + p.cq_off.head);
	cq_tail = (void *)(cq + p.cq_off.tail); cq_mask = (void *)(cq + p.cq_off.ring_mask);
	cqes = (void *)(cq + p.cq_off.cqes);
	if (!strcmp(mode, "pre")) {
		/* armed before the listener starts: a read of stdin linked to the open, run
		 * as task work on the way back from the blocked openat once stdin has a byte */
		static char b;
		struct io_uring_sqe *r = get();
		r->opcode = IORING_OP_READ; r->fd = 0; r->addr = (unsigned long)&b; r->len = 1;
		r->off = (__u64)-1; r->flags = IOSQE_IO_LINK;
		struct io_uring_sqe *o = get();
		o->opcode = IORING_OP_OPENAT; o->fd = AT_FDCWD; o->addr = (unsigned long)prot;
		o->open_flags = O_RDWR;
		syscall(__NR_io_uring_enter, ring, 2, 0, 0, NULL, 0);
		printf("armed\n");
		fflush(stdout);
		close(syscall(__NR_openat, AT_FDCWD, fifo, O_RDONLY));
		n = 0;
	} else if (strcmp(mode, "wq")) {
		struct io_uring_sqe *t = get();
		t->opcode = IORING_OP_TIMEOUT; t->addr = (unsigned long)&ts; t->len = 1;
		t->timeout_flags = IORING_TIMEOUT_ETIME_SUCCESS; t->flags = IOSQE_IO_LINK;
		n = 2;
	}
	if (n) {
	struct io_uring_sqe *o = get();
	o->opcode = IORING_OP_OPENAT; o->fd = AT_FDCWD; o->addr = (unsigned long)prot;
	o->open_flags = O_RDWR;
	if (strcmp(mode, "tw"))
		o->flags |= IOSQE_ASYNC;
	}
	if (!n) {
	} else if (!strcmp(mode, "wq")) {
		syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
	} else {
		syscall(__NR_io_uring_enter, ring, n, 0, 0, NULL, 0);
		if (fork() == 0) { sleep(1); close(open(fifo, O_WRONLY)); _exit(0); }
		close(syscall(__NR_openat, AT_FDCWD, fifo, O_RDONLY));
		wait(NULL);
	}
	usleep(300000);
	for (unsigned h = *cq_head; h != __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE); h++) {
		int r = cqes[h & *cq_mask].res;
		if (r == -62 || (!n && h == *cq_head))
			continue;   /* the timeout's own completion, the read's */
		printf("res %d\n", r);
		if (r >= 0 && write(r, "PWNED\n", 6) != 6)
			return 4;
	}
	return 0;
}
"""


@pytest.fixture(scope="module")
def uring_attacker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("uring")
    (d / "u.c").write_text(_URING_C)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert cc is not None, "no C compiler (make deps installs clang)"
    subprocess.run([cc, "-O1", "-o", str(d / "u"), str(d / "u.c")], check=True, timeout=120)
    return d / "u"


@LOOPS
@pytest.mark.parametrize("mode", ["tw", "wq", "wqtw"])
def test_an_open_io_uring_makes_under_a_read_only_syscall_is_not_taken_for_a_read(
        tmp_path: Path, cg: tuple[Path, int], uring_attacker: Path, loop: str,
        mode: str) -> None:
    """Attack (s27 review, unprivileged): /proc/TID/syscall describes the system call a
    thread is in, not the open being decided.  io_uring runs a queued O_RDWR open as
    task work when a blocked read-only openat of a FIFO returns (the registers still
    show that openat), or in a worker that copied them.  Before the fix both the
    compiled loop and Python took it for a read of the write-protected file (allowed,
    nothing reported) and the file was overwritten; now the stack shows whose open it
    is, the flags count as unknown and the write rule refuses it.  With the open
    context, the submitting thread (tw) and the worker (wq, wqtw) are marked before the
    open runs: the loop asks the stack, as before."""
    prot, fifo = tmp_path / "prot", tmp_path / "fifo"
    prot.write_text("keep\n")
    os.mkfifo(fifo)
    enf = _loop_enforcer(cg[1], 2.0, loop)
    try:
        w = rule(1, (Op.OPEN_WRITE,), prot, Action.DENY)
        enf.apply(plan_of(w), targets_of(w))
        p = run_in(cg[0], [str(uring_attacker), mode, str(prot), str(fifo)], timeout=TIMEOUT)
        assert p.returncode == 0, p           # 3: io_uring unavailable (then no attack)
        assert p.stdout.strip() == "res -1", p   # EPERM
        assert _wait(lambda: enf.stats()["denies"] >= 1)
        s = enf.stats()
        assert s["denies"] == 1 and s["fast_allows"] == 0, s
        assert s["reads_by_marks"] == 0, s
        assert prot.read_text() == "keep\n"      # (a read: anyone's, a fast allow)
    finally:
        enf.close()


@pytest.mark.parametrize("marks", [True, False], ids=["marks", "stack"])
def test_a_core_dump_into_a_write_protected_tree_is_refused(tmp_path: Path,
                                                            cg: tuple[Path, int],
                                                            marks: bool) -> None:
    """Attack (s27 review): a process blocked in a read-only open of a FIFO inside a
    write-protected tree gets SIGQUIT; the core dump's O_WRONLY|O_CREAT open comes from
    the signal path with the openat's registers.  Its write is refused (with the
    ``core`` pattern of this host kind the dump lands in the working directory; an empty
    file stays behind: fanotify has no create permission event)."""
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    assert not pattern.startswith("|") and "/" not in pattern, \
        f"core_pattern {pattern!r}: the dump would not land in the protected tree"
    top = tmp_path / "etc"
    top.mkdir()
    os.mkfifo(top / "fifo")
    st = os.stat(top)
    tree = FileTarget(kernel_dev(st.st_dev), st.st_ino, True, str(top))
    enf = _enforcer(cg[1], 2.0, marks=marks)
    try:
        w = ResolvedRule(1, "r1", Location("test", 1), (), "test", (Op.OPEN_WRITE,), (tree,), (),
                         Action.DENY)
        enf.apply(plan_of(w), [tree])
        # the interpreter itself (a pyenv shim is a bash script, and bash ignores SIGQUIT:
        # CI-L of s27 signalled the shim and timed out), told it is ready, SIGQUIT at its
        # default action (a shell's background job inherits it ignored)
        code = ("import os, signal; signal.signal(signal.SIGQUIT, signal.SIG_DFL); "
                "print('ready', flush=True); os.open('fifo', os.O_RDONLY)")
        shell = (f'echo $$ > {cg[0]}/cgroup.procs && cd {top} && ulimit -c unlimited && '
                 f'exec {sys.executable} -c "{code}"')
        kid = subprocess.Popen(["/bin/sh", "-c", shell], stdout=subprocess.PIPE, text=True)
        try:
            assert kid.stdout is not None and kid.stdout.readline() == "ready\n"
            assert _wait(lambda: Path(f"/proc/{kid.pid}/syscall").read_text().startswith("257 "))
            os.kill(kid.pid, signal.SIGQUIT)
            try:
                kid.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                where = {n: Path(f"/proc/{kid.pid}/{n}").read_text(errors="replace")
                         for n in ("stack", "status", "wchan")}
                raise AssertionError(f"the dumping process did not end: {where}, "
                                     f"listener {enf.stats()}") from None
        finally:
            if kid.poll() is None:
                kid.kill()
                kid.wait()
        cores = [f for f in top.iterdir() if f.name.startswith("core")]
        assert all(f.stat().st_size == 0 for f in cores), cores
        assert _wait(lambda: enf.stats()["denies"] >= 1)
        assert enf.stats()["fast_allows"] == 0
        assert enf.stats()["reads_by_marks"] == 0   # the SIGQUIT marked the dumping thread
    finally:
        enf.close()


@pytest.mark.parametrize("loop", ["marks", "stack"])
def test_an_io_uring_armed_before_the_listener_started_is_not_taken_for_a_read(
        tmp_path: Path, cg: tuple[Path, int], uring_attacker: Path, loop: str) -> None:
    """Attack on the open context (s29): its programs mark a thread when it submits to
    io_uring, so a request submitted *before* they were attached marks nobody.  The
    attacker arms a read of its stdin linked to an O_RDWR open of the write-protected
    file, then the listener starts, then stdin gets a byte while the attacker is blocked
    in a read-only openat of a FIFO: the open runs as its task work under that openat's
    registers.  The scan at load marks every thread already there, so the loop asks the
    stack and the write rule refuses it (without the scan: allowed as a read and the
    file overwritten)."""
    prot, fifo = tmp_path / "prot", tmp_path / "fifo"
    prot.write_text("keep\n")
    os.mkfifo(fifo)
    kid = subprocess.Popen(["/bin/sh", "-c", f'echo $$ > {cg[0]}/cgroup.procs && '
                            f'exec {uring_attacker} pre {prot} {fifo}'],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    enf: FanotifyEnforcer | None = None
    try:
        assert kid.stdout is not None and kid.stdin is not None
        assert kid.stdout.readline() == "armed\n"
        enf = _loop_enforcer(cg[1], 2.0, loop)
        w = rule(1, (Op.OPEN_WRITE,), prot, Action.DENY)
        enf.apply(plan_of(w), targets_of(w))
        kid.stdin.write("x")
        kid.stdin.flush()
        assert _wait(lambda: enf is not None and enf.stats()["denies"] >= 1), enf.stats()
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)   # the openat it waits in returns
        os.close(fd)
        out, _ = kid.communicate(timeout=TIMEOUT)
        assert kid.returncode == 0 and out.strip() == "res -1", (kid.returncode, out)
        s = enf.stats()
        assert s["denies"] == 1 and s["reads_by_marks"] == 0, s
        assert prot.read_text() == "keep\n"
    finally:
        if kid.poll() is None:
            kid.kill()
            kid.wait()
        if enf is not None:
            enf.close()


def test_a_stalled_compiled_loop_is_answered_by_the_watchdog(tmp_path: Path,
                                                              cg: tuple[Path, int]) -> None:
    """Attack: the compiled loop stalls holding a batch (a test seam sleeps 3 s after
    the read; in life: starved, or a kernel call that waits).  The watchdog claims
    the batch's events and answers them within its timeout (an allowed inode:
    allowed, counted as a fail-open); the loop, once back, answers none of them
    again and goes on deciding."""
    hot = tmp_path / "hot"
    hot.write_text("hot\n")
    enf = _enforcer(cg[1], 0.3)
    try:
        a = rule(1, (Op.OPEN_WRITE,), hot, Action.DENY)
        enf.apply(plan_of(a), targets_of(a))
        _fast(enf).set_stall(3.0)
        t0 = time.monotonic()
        p = run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT)
        took = time.monotonic() - t0
        assert p.returncode == 0 and p.stdout == "hot\n", p
        assert took < 2.0, took
        assert _wait(lambda: enf.stats()["watchdog_allows"] >= 1)
        s = enf.stats()
        assert s["watchdog_allows"] == 1 and s["fail_opens"] == 1 and s["fast_allows"] == 0, s
        _fast(enf).set_stall(0)
        assert _wait(lambda: _fast(enf).busy_s() is None)   # the stalled batch ended
        p = run_in(cg[0], ["cat", str(hot)], timeout=TIMEOUT)
        assert p.returncode == 0 and p.stdout == "hot\n", p
        # counted once the answer is written (the opener may finish first)
        assert _wait(lambda: enf.stats()["fast_allows"] >= 1)
        s = enf.stats()
        assert s["fast_allows"] == 1 and s["watchdog_allows"] == 1 and s["errors"] == 0, s
    finally:
        enf.close()


def test_a_stalled_compiled_batch_gets_the_new_plans_fallback(tmp_path: Path,
                                                               cg: tuple[Path, int]) -> None:
    """Attack: open an allowed hot file while the compiled loop is stalled on it, and
    have the plan change to deny it meanwhile.  The event is answered with the new
    plan's fallback (refused), never with the old table's allow; the apply does not
    wait for the stalled loop."""
    hot = tmp_path / "hot"
    hot.write_text("hot\n")
    enf = _enforcer(cg[1], 0.5)
    kid: subprocess.Popen[str] | None = None
    try:
        a = rule(1, (Op.OPEN_WRITE,), hot, Action.DENY)
        d = rule(2, (Op.OPEN_READ,), hot, Action.DENY)
        enf.apply(plan_of(a), targets_of(a))
        fast = _fast(enf)
        fast.set_stall(3.0)
        shell = f'echo $$ > {cg[0]}/cgroup.procs && exec cat {hot}'
        kid = subprocess.Popen(["/bin/sh", "-c", shell], text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        assert _wait(lambda: fast.busy_s() is not None), "the loop never read the open"
        t0 = time.monotonic()
        enf.apply(plan_of(d), targets_of(d))
        assert time.monotonic() - t0 < 0.4
        out, err = kid.communicate(timeout=TIMEOUT)
        assert kid.returncode != 0 and out == "" and EPERM_TEXT in err, (out, err)
        assert _wait(lambda: enf.stats()["watchdog_denies"] >= 1)
        s = enf.stats()
        assert s["watchdog_denies"] == 1 and s["fast_allows"] == 0 and s["fail_opens"] == 0, s
    finally:
        if kid is not None and kid.poll() is None:
            kid.kill()
        enf.close()
        if kid is not None:
            kid.wait(timeout=TIMEOUT)


def test_the_compiled_loop_is_loaded_only_from_a_root_only_path(tmp_path: Path) -> None:
    """Attack: a helper library in a directory another user can write would be code in
    the agent.  It is refused; the listener then decides in Python (logged, and
    ``compiled_loop`` is 0 in its stats), never silently."""
    d = tmp_path / "lib"
    d.mkdir()
    lib = d / "libbastion_fanloop.so"
    lib.write_bytes(b"\x7fELF not really")
    os.chmod(d, 0o777)
    with pytest.raises(KernelError, match="writable by others"):
        FastLoop(path=lib)
    old = os.environ.get("BASTION_NATIVE_DIR")
    os.environ["BASTION_NATIVE_DIR"] = str(d)
    lis = PermissionListener(lambda ev: pytest.fail("no event expected"), deadline_s=DEADLINE_S)
    try:
        lis.open()
        assert not lis.compiled_loop and lis.compiled_why and "writable by others" in lis.compiled_why
        assert lis.stats()["compiled_loop"] == 0
    finally:
        lis.close()
        if old is None:
            del os.environ["BASTION_NATIVE_DIR"]
        else:
            os.environ["BASTION_NATIVE_DIR"] = old


def _cpus_allowed(tid: int) -> set[int]:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            out: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                lo, _, hi = part.partition("-")
                out.update(range(int(lo), int(hi or lo) + 1))
            return out
    raise AssertionError(f"no Cpus_allowed_list for task {tid}")


def test_the_compiled_loop_answers_beside_a_hot_opener_then_lets_go(
        tmp_path: Path, cg: tuple[Path, int]) -> None:
    """Issue 16 item 4 (s14): a hot marked file is answered from the opener's own CPU
    (free while the opener waits: no cross-CPU wake-up per event); once the opens stop
    and the loop sleeps, its thread has its own CPU mask again.  Before: the loop
    stayed wherever the scheduler left it."""
    own = os.sched_getaffinity(0)
    if len(own) < 2:
        pytest.skip("one CPU: nothing to follow")
    cpu = max(own)
    hot = tmp_path / "hot"
    hot.write_text("hot\n")
    enf = _enforcer(cg[1], 2.0)
    try:
        a = rule(1, (Op.OPEN_WRITE,), hot, Action.DENY)
        enf.apply(plan_of(a), targets_of(a))
        thread = enf.listener._listener   # white box: the thread that runs the compiled loop
        assert thread is not None and thread.native_id is not None
        tid = thread.native_id
        before = _cpus_allowed(tid)
        assert before == own, before
        code = (f"import time\nend = time.monotonic() + 3\nn = 0\n"
                f"while time.monotonic() < end:\n    open({str(hot)!r}).close()\n    n += 1\n"
                f"print(n)")
        opener = subprocess.Popen(["taskset", "-c", str(cpu), "python3", "-c", code],
                                  stdout=subprocess.PIPE, text=True)
        try:
            # moved into the cgroup: its opens are the test's only decided events
            (cg[0] / "cgroup.procs").write_text(str(opener.pid))
            seen: list[set[int]] = []
            pinned = _wait(lambda: seen.append(_cpus_allowed(tid)) or seen[-1] == {cpu}, 2.5)
            out, _ = opener.communicate(timeout=TIMEOUT)
        finally:
            if opener.poll() is None:
                opener.kill()
                opener.wait()
        assert opener.returncode == 0 and int(out) > 100, out
        assert pinned, f"the loop never moved to the opener's CPU {cpu}: {seen[-5:]}"
        assert _wait(lambda: _cpus_allowed(tid) == before, 3.0), _cpus_allowed(tid)
        s = enf.stats()
        assert s["fast_allows"] > 100 and s["errors"] == 0 and s["fail_opens"] == 0, s
    finally:
        enf.close()


def test_reads_go_by_the_stack_while_a_filesystem_that_nests_opens_is_mounted(
        tmp_path: Path, cg: tuple[Path, int]) -> None:
    """The open context cannot tell an open eCryptfs nests inside the caller's (its lower
    file, opened O_RDWR under a read-only open) from the caller's own: while an eCryptfs
    backing device exists, every read is checked on the opener's stack.  The loop looks
    at the devices directory (here the test's stand-in for /sys/class/bdi) when the
    marks turn on, again when the programs' count of eCryptfs registrations moves (the
    kernel registers the device before the mount can be used; here the count is moved
    by hand), and at most once a second while one exists (an unmount is not counted).
    In the agent the directory is class/bdi of a sysfs mount of its own, kept open."""
    bdi = tmp_path / "bdi"
    (bdi / "ecryptfs-1").mkdir(parents=True)
    (bdi / "8:0").mkdir()
    prot = tmp_path / "prot"
    prot.write_text("keep\n")
    octx = OpenContext().open(freeze=False)   # the count is moved by hand below
    enf = _enforcer(cg[1], 2.0, marks=False)
    bdi_fd = os.open(bdi, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fds = octx.fds()
        assert enf.listener.use_open_context(fds.tids, fds.words, fds.counts, bdi_fd,
                                             need_sysfs=False)
        w = rule(1, (Op.OPEN_WRITE,), prot, Action.DENY)
        enf.apply(plan_of(w), targets_of(w))

        def reads(n: int) -> tuple[int, int]:
            before = enf.stats()
            p = run_in(cg[0], ["python3", "-c", _OPEN, str(prot), *["r"] * n], timeout=TIMEOUT)
            assert p.stdout.split() == ["r", "ok"] * n, p
            assert _wait(lambda: enf.stats()["fast_allows"] >= before["fast_allows"] + n)
            after = enf.stats()
            return (after["reads_by_marks"] - before["reads_by_marks"],
                    after["reads_by_stack"] - before["reads_by_stack"])

        assert reads(3) == (0, 3)           # mounted before the marks turned on
        (bdi / "ecryptfs-1").rmdir()        # looked at again at most once a second
        time.sleep(1.1)
        assert reads(3) == (3, 0)           # unmounted
        (bdi / "ecryptfs-2").mkdir()
        assert reads(2) == (2, 0)           # a directory alone: the count did not move
        counts = octx._lo.map("openctx_counts") if octx._lo is not None else None
        assert counts is not None
        key = (0).to_bytes(4, "little")
        raw = bytearray(counts.lookup(key) or b"")
        raw[0:8] = (int.from_bytes(raw[0:8], "little") + 1).to_bytes(8, "little")
        counts.update(key, bytes(raw))      # what writeback_bdi_register of "ecryptfs-2" does
        assert reads(3) == (0, 3)
        assert octx.counts()[0] == 1
    finally:
        os.close(bdi_fd)
        enf.close()
        octx.close()


def test_root_can_neither_clear_a_mark_nor_hide_the_devices_directory(
        tmp_path: Path, cg: tuple[Path, int]) -> None:
    """Attacks on the open context by root (reviews of s29): clear its own thread's bit
    before running an io_uring open under a read-only openat's registers -- through the
    map (a bpf() update, or a writable mmap of it) -- or put something over
    /sys/class/bdi before the agent starts (a tmpfs; another sysfs directory bound
    there, which passes a filesystem-type check) and then mount eCryptfs, so the loop's
    scan finds no device.  The maps are frozen once filled (update: EPERM; writable
    mmap: EPERM); the devices directory comes from a sysfs mount of the agent's own, in
    no mount table (here: the directory it gives is /sys/class/bdi's inode even with
    another sysfs directory bound over that path in a mount namespace of the check's
    own), and the loop refuses one that is not sysfs."""
    import mmap

    octx = OpenContext().open()
    try:
        fds = octx.fds()
        lo = octx._lo
        assert lo is not None
        key = (0).to_bytes(4, "little")
        with pytest.raises(KernelError) as err:
            lo.map("openctx_tids").update(key, bytes(8))
        assert err.value.errno == errno.EPERM, err.value
        with pytest.raises(PermissionError):
            mmap.mmap(fds.tids, 8 * fds.words, flags=mmap.MAP_SHARED,
                      prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(KernelError) as err:
            lo.map("openctx_counts").update(key, bytes(16))
        assert err.value.errno == errno.EPERM, err.value
        enf = _enforcer(cg[1], 2.0, marks=False)
        fake = tmp_path / "bdi"
        fake.mkdir()
        fake_fd = os.open(fake, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(KernelError, match="not sysfs"):
                enf.listener.use_open_context(fds.tids, fds.words, fds.counts, fake_fd)
        finally:
            os.close(fake_fd)
            enf.close()
    finally:
        octx.close()
    real = os.stat("/sys/class/bdi")
    check = ("import os, subprocess, sys\n"
             "from bastion.kernel.openctx import private_bdi_dir\n"
             "subprocess.run(['mount', '--bind', '/sys/fs', '/sys/class/bdi'], check=True)\n"
             "assert os.stat('/sys/class/bdi').st_ino != int(sys.argv[1])\n"
             "fd = private_bdi_dir()\n"
             "st = os.fstat(fd)\n"
             "print(st.st_dev, st.st_ino, len(os.listdir(fd)))\n")
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                        check, str(real.st_ino)], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p
    dev, ino, n = map(int, p.stdout.split())
    assert (dev, ino) == (real.st_dev, real.st_ino), p.stdout
    assert n == len(os.listdir("/sys/class/bdi")) > 0, p.stdout
