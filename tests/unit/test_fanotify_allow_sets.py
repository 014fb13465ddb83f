"""The fanotify enforcer's precomputed allow sets (issue 16 item 4).

An open of a marked inode in ``allow_open`` (or an exec of one in
``allow_exec``, or a read-only open of one in ``allow_read``) is answered ALLOW
without reading a single procfs fact about the task (``allow_read``: only its
flags), so these sets must hold exactly the inodes for which the reference
:class:`~bastion.policy.match.Matcher` allows *every* task, whatever its exe,
parent exe, uid and cgroup.  The same test pins ``_needed_marks`` (s27): an
event kind is left unmarked exactly when every task is allowed it.  Pinned against the matcher by brute force over
seeded random plans, plus the cases an attacker would aim at: a deny for one
subject on an inode everyone else may open, a deny on ``any``, a deny default
with no rule for everyone, an audit rule (must still be reported).
"""

from __future__ import annotations

import itertools
import random

import pytest

from bastion import abi
from bastion.enforce.fanotify import _allow_sets, _Mark, _needed_marks, _nosubj, _reads_anywhere
from bastion.kernel.fanotify import FAN_OPEN_EXEC_PERM, FAN_OPEN_PERM
from bastion.errors import Location
from bastion.policy.compile import (
    CompileError, FileTarget, MapPlan, ResolvedPolicy, ResolvedRule, compile_plan,
)
from bastion.policy.match import Matcher, TaskFacts
from bastion.policy.model import Action, Mode, Op

INODES = [(8, 100 + i) for i in range(4)]
ANY = FileTarget(0, 0, False, "any")
IDENTITIES = [(), ((abi.SubjectKind.EXE, 7, 8),), ((abi.SubjectKind.PARENT_EXE, 9, 8),),
              ((abi.SubjectKind.UID, 1000, 0),), ((abi.SubjectKind.CGROUP, 55, 0),)]
# every task the plan can tell apart: each kind matched or not
TASKS = [TaskFacts(exe, pexe, uid, cg) for exe, pexe, uid, cg in itertools.product(
    [(8, 7), (8, 70)], [(8, 9), (8, 90)], [1000, 1001], [55, 56])]


def rule(rid: int, ident: tuple[tuple[int, int, int], ...], ops: tuple[Op, ...],
         files: tuple[FileTarget, ...], action: Action) -> ResolvedRule:
    return ResolvedRule(rid, f"r{rid}", Location("test"), ident, "s", ops, files, (), action)


def target(key: tuple[int, int]) -> FileTarget:
    return FileTarget(key[0], key[1], False, f"/f{key[1]}")


def brute(plan: MapPlan, op: abi.HipsOp, key: tuple[int, int]) -> bool:
    m = Matcher(plan)
    return all(m.decide_file(t, op, key).action is abi.HipsAction.ALLOW for t in TASKS)


def check(plan: MapPlan) -> None:
    marks = {k: None for k in INODES}
    opn, exe, rd = _allow_sets(plan, marks, False)
    both = FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM
    needed = _needed_marks(plan, {k: _Mark(f"/f{k[1]}", both) for k in INODES})
    for k in INODES:
        read = brute(plan, abi.HipsOp.OPEN_READ, k)
        want_open = read and brute(plan, abi.HipsOp.OPEN_WRITE, k)
        want_exec = brute(plan, abi.HipsOp.EXEC, k)
        assert (k in opn) == want_open, (k, plan.rules)
        assert (k in exe) == want_exec, (k, plan.rules)
        assert (k in rd) == (read and not want_open), (k, plan.rules)
        mask = (0 if want_open else FAN_OPEN_PERM) | (0 if want_exec else FAN_OPEN_EXEC_PERM)
        assert (needed[k].mask if k in needed else 0) == mask, (k, plan.rules)
    # read_anywhere: every read of every inode, below any directory, is allowed to every task
    m = Matcher(plan)
    every_read = all(m.decide_file(t, abi.HipsOp.OPEN_READ, k, parents).action
                     is abi.HipsAction.ALLOW for t in TASKS for k in INODES
                     for parents in ([], [INODES[3]], [INODES[2], INODES[3]]))
    assert _reads_anywhere(plan) == every_read, plan.rules


def plan_of(default: Action, *rules: ResolvedRule) -> MapPlan:
    return compile_plan(ResolvedPolicy(Mode.ENFORCE, default, rules))


@pytest.mark.parametrize("seed", range(60))
def test_the_allow_sets_are_exactly_what_the_matcher_allows_every_task(seed: int) -> None:
    rnd = random.Random(seed)
    rules: list[ResolvedRule] = []
    for rid in range(1, rnd.randint(1, 6) + 1):
        files = tuple(rnd.sample([*map(target, INODES), ANY], rnd.randint(1, 2)))
        ops = tuple(rnd.sample([Op.OPEN_READ, Op.OPEN_WRITE, Op.EXEC], rnd.randint(1, 3)))
        action = rnd.choice([Action.ALLOW, Action.ALLOW, Action.AUDIT, Action.DENY, Action.KILL])
        new = rule(rid, rnd.choice(IDENTITIES), ops, files, action)
        try:   # a rule contradicting an earlier one for the same subject is refused
            plan_of(Action.ALLOW, *rules, new)
        except CompileError:
            continue
        rules.append(new)
    check(plan_of(rnd.choice([Action.ALLOW, Action.DENY, Action.AUDIT]), *rules))


def test_a_deny_for_one_subject_keeps_the_inode_out_of_the_allow_set() -> None:
    f = target(INODES[0])
    plan = plan_of(Action.ALLOW,
                   rule(1, (), (Op.OPEN_READ, Op.OPEN_WRITE), (f,), Action.ALLOW),
                   rule(2, ((abi.SubjectKind.UID, 1000, 0),), (Op.OPEN_WRITE,), (f,), Action.DENY))
    opn, exe, rd = _allow_sets(plan, {INODES[0]: None}, False)
    assert INODES[0] not in opn and INODES[0] in exe and INODES[0] in rd   # reads: everyone
    check(plan)


def test_a_deny_on_any_or_an_audit_keeps_every_inode_out() -> None:
    f = target(INODES[0])
    for extra in (rule(2, ((abi.SubjectKind.EXE, 7, 8),), (Op.OPEN_READ,), (ANY,), Action.DENY),
                  rule(2, ((abi.SubjectKind.CGROUP, 55, 0),), (Op.OPEN_READ,), (f,), Action.AUDIT)):
        plan = plan_of(Action.ALLOW, rule(1, (), (Op.OPEN_READ, Op.OPEN_WRITE), (f,),
                                          Action.ALLOW), extra)
        assert _allow_sets(plan, {INODES[0]: None}, False)[0] == frozenset()
        check(plan)


def test_a_deny_default_allows_only_what_the_rule_for_everyone_allows() -> None:
    f, g = target(INODES[0]), target(INODES[1])
    plan = plan_of(Action.DENY,
                   rule(1, (), (Op.OPEN_READ, Op.OPEN_WRITE), (f,), Action.ALLOW),
                   rule(2, ((abi.SubjectKind.UID, 1000, 0),), (Op.OPEN_READ, Op.OPEN_WRITE), (g,),
                        Action.ALLOW))
    opn, _exe, _rd = _allow_sets(plan, {INODES[0]: None, INODES[1]: None}, False)
    assert opn == {INODES[0]}    # uid 1001 falls to the default on g
    check(plan)


def test_directory_objects_disable_the_allow_sets() -> None:
    plan = plan_of(Action.ALLOW, rule(1, (), (Op.OPEN_READ, Op.OPEN_WRITE), (target(INODES[0]),),
                                      Action.ALLOW))
    assert _allow_sets(plan, {INODES[0]: None}, True) == (frozenset(), frozenset(), frozenset())


def test_an_inode_only_allow_rules_name_is_not_marked_and_a_read_allowed_one_only_for_writes(
        ) -> None:
    """s27: a learned policy's allow rules made every open of their inodes a permission
    event answered ALLOW; a write-protected file kept its read events too."""
    f, g = target(INODES[0]), target(INODES[1])
    plan = plan_of(Action.ALLOW,
                   rule(1, ((abi.SubjectKind.EXE, 7, 8),), (Op.OPEN_READ, Op.OPEN_WRITE, Op.EXEC),
                        (f,), Action.ALLOW),
                   rule(2, (), (Op.OPEN_WRITE,), (g,), Action.DENY))
    both = FAN_OPEN_PERM | FAN_OPEN_EXEC_PERM
    needed = _needed_marks(plan, {INODES[0]: _Mark("/f", both), INODES[1]: _Mark("/g", FAN_OPEN_PERM)})
    assert needed == {INODES[1]: _Mark("/g", FAN_OPEN_PERM)}
    assert _allow_sets(plan, needed, False) == (frozenset(), frozenset({INODES[1]}),
                                                frozenset({INODES[1]}))
    check(plan)


def test_a_write_protected_tree_allows_every_read_and_a_read_rule_or_default_takes_it_back(
        ) -> None:
    """read_anywhere (s27): a plan whose rules only restrict writes and execs (and allow
    reads) lets the compiled loop answer any read-only open from the flags alone; one
    audited or denied read, or a default that does not allow, turns it off."""
    d = FileTarget(8, 103, True, "/etc/")
    w = rule(1, ((abi.SubjectKind.EXE, 7, 8),), (Op.OPEN_WRITE, Op.EXEC), (d,), Action.DENY)
    ok = rule(2, (), (Op.OPEN_READ,), (target(INODES[0]),), Action.ALLOW)
    assert _reads_anywhere(plan_of(Action.ALLOW, w, ok))
    for extra in (rule(3, ((abi.SubjectKind.UID, 1000, 0),), (Op.OPEN_READ,), (ANY,), Action.AUDIT),
                  rule(3, (), (Op.OPEN_READ,), (d,), Action.DENY)):
        assert not _reads_anywhere(plan_of(Action.ALLOW, w, ok, extra))
    assert not _reads_anywhere(plan_of(Action.DENY, w, ok))


# ---- s27: a per-program plan answers a task no subject names from its executable alone ----

EXE_IDS = [(), ((abi.SubjectKind.EXE, 7, 8),), ((abi.SubjectKind.EXE, 9, 8),)]
EXE_TASKS = [TaskFacts(exe, (8, 90), 1001, 56) for exe in [(8, 7), (8, 9), (8, 70), (0, 0)]]
DIRS = [FileTarget(8, 103, True, "/d3/"), FileTarget(8, 102, True, "/d2/")]


@pytest.mark.parametrize("seed", range(60))
def test_what_a_task_no_subject_names_is_allowed_is_exactly_what_the_matcher_gives_it(
        seed: int) -> None:
    rnd = random.Random(1000 + seed)
    rules: list[ResolvedRule] = []
    for rid in range(1, rnd.randint(1, 6) + 1):
        files = tuple(rnd.sample([*map(target, INODES[:2]), ANY, *DIRS], rnd.randint(1, 2)))
        ops = tuple(rnd.sample([Op.OPEN_READ, Op.OPEN_WRITE, Op.EXEC], rnd.randint(1, 3)))
        action = rnd.choice([Action.ALLOW, Action.ALLOW, Action.AUDIT, Action.DENY, Action.KILL])
        new = rule(rid, rnd.choice(EXE_IDS), ops, files, action)
        try:
            plan_of(Action.ALLOW, *rules, new)
        except CompileError:
            continue
        rules.append(new)
    plan = plan_of(rnd.choice([Action.ALLOW, Action.ALLOW, Action.DENY, Action.AUDIT]), *rules)
    (opn, rd, exe), exes = _nosubj(plan)
    m = Matcher(plan)
    walks = [(k, parents) for k in INODES for parents in ([], [INODES[3]], [INODES[2], INODES[3]])]

    def all_allow(op: abi.HipsOp) -> bool:
        return all(m.decide_file(t, op, k, parents).action is abi.HipsAction.ALLOW
                   for t in EXE_TASKS if t.exe not in exes for k, parents in walks)
    want = (all_allow(abi.HipsOp.OPEN_READ) and all_allow(abi.HipsOp.OPEN_WRITE),
            all_allow(abi.HipsOp.OPEN_READ), all_allow(abi.HipsOp.EXEC))
    # sound: what it says is allowed, the matcher allows every such task on every inode
    assert (not opn or want[0]) and (not rd or want[1]) and (not exe or want[2]), plan.rules
    if plan.default_action is abi.HipsAction.ALLOW:
        # ... and complete with the default that allows (a deny default: none of it)
        assert exes == {(b, a) for (_k, a, b), _s in plan.subjects}
        assert (opn, rd or opn, exe) == want, plan.rules
    else:
        assert (opn, rd, exe) == (False, False, False)


def test_a_plan_with_a_subject_of_another_kind_answers_no_task_from_its_executable() -> None:
    """A uid, parent or cgroup subject needs facts the executable does not give."""
    f = target(INODES[0])
    for ident in ((abi.SubjectKind.UID, 1000, 0),), ((abi.SubjectKind.PARENT_EXE, 9, 8),), \
            ((abi.SubjectKind.CGROUP, 55, 0),):
        plan = plan_of(Action.ALLOW, rule(1, ident, (Op.OPEN_READ,), (f,), Action.DENY),
                       rule(2, ((abi.SubjectKind.EXE, 7, 8),), (Op.OPEN_WRITE,), (f,), Action.DENY))
        assert _nosubj(plan) == ((False, False, False), frozenset())
