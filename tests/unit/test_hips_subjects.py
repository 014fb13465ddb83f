"""Issue 14 item 2: a task matches several subjects; every one's rules are asked
and the strictest wins (kill > deny > audit > allow).  Golden: the compiled plan
of a policy with overlapping subjects and the reference matcher's decision for
each kind of task (the kernel matcher is held to the same decisions by
tests/kernel/test_hips_subjects_live.py and tests/vm/test_hips_lsm.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bastion import abi
from bastion.config import parse_policy
from bastion.policy.compile import compile_plan, resolve
from bastion.policy.match import Matcher, TaskFacts

from test_policy_compile import DEV, FAKE, GOLDEN

POLICY = """\
version: 1
mode: enforce
default: allow
rules:
  - name: www-no-keys
    subject: {user: www-data}
    operations: [open-read]
    objects: [/etc/ssl/private/]
    action: deny
  - name: nginx-reads-anything
    subject: {exe: /usr/sbin/nginx}
    operations: [open-read]
    objects: [any]
    action: allow
  - name: app-no-shadow
    subject: {cgroup: /sys/fs/cgroup/app}
    operations: [open-read, open-write]
    objects: [/etc/shadow]
    action: kill
  - name: nginx-shadow-audit
    subject: {exe: /usr/sbin/nginx}
    operations: [open-write]
    objects: [/etc/shadow]
    action: audit
  - name: sshd-kids-audit
    subject: {parent: /usr/sbin/sshd}
    operations: [open-write]
    objects: [/etc/shadow]
    action: audit
  - name: shadow-readers
    subject: {exe: /usr/sbin/unix_chkpwd}
    operations: [open-read]
    objects: [/etc/shadow]
    action: allow
  - name: protect-shadow
    operations: [open-read]
    objects: [/etc/shadow]
    action: deny
  - name: app-egress
    subject: {cgroup: /sys/fs/cgroup/app}
    operations: [connect]
    objects: [any]
    action: deny
  - name: nginx-egress
    subject: {exe: /usr/sbin/nginx}
    operations: [connect]
    objects: [any]
    action: allow
"""

A = abi.HipsAction
OP = abi.HipsOp
NGINX, SSHD, CHKPWD, OTHER = (DEV, 100), (DEV, 500), (DEV, 400), (DEV, 999)
SHADOW, KEY = (DEV, 300), (DEV, 312)
KEY_PARENTS = [(DEV, 311), (DEV, 310)]
TASKS = {
    "nginx": TaskFacts(exe=NGINX),
    "nginx-as-www": TaskFacts(exe=NGINX, uid=33),
    "nginx-in-app": TaskFacts(exe=NGINX, cgroup_id=9000),
    "nginx-under-sshd": TaskFacts(exe=NGINX, parent_exe=SSHD),
    "chkpwd": TaskFacts(exe=CHKPWD),
    "chkpwd-in-app": TaskFacts(exe=CHKPWD, cgroup_id=9000),
    "other": TaskFacts(exe=OTHER, uid=1000),
}
QUESTIONS = {
    "read-key": (OP.OPEN_READ, KEY, KEY_PARENTS),
    "read-shadow": (OP.OPEN_READ, SHADOW, []),
    "write-shadow": (OP.OPEN_WRITE, SHADOW, []),
}


def _plan():  # type: ignore[no-untyped-def]
    return compile_plan(resolve(parse_policy(POLICY, "s.yaml").hips, FAKE))


def _table() -> dict[str, object]:
    plan = _plan()
    m = Matcher(plan)
    decisions: dict[str, list[object]] = {}
    for task, facts in TASKS.items():
        for q, (op, obj, parents) in QUESTIONS.items():
            d = m.decide_file(facts, op, obj, parents)
            decisions[f"{task} {q}"] = [d.action.name.lower(), d.rule_id, d.subject]
        d = m.decide_net(facts, OP.CONNECT, "192.0.2.1", 443)
        decisions[f"{task} connect"] = [d.action.name.lower(), d.rule_id, d.subject]
    return {"plan": plan.to_json(), "decisions": decisions}


def test_golden_plan_and_decisions() -> None:
    got = _table()
    path = GOLDEN / "hips_subjects.json"
    if os.environ.get("BASTION_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(Path(path).read_text())


def test_uid_and_cgroup_rules_are_not_shadowed_by_an_exe_rule() -> None:
    m = Matcher(_plan())
    # nginx's exe rule allows reading anything; as www-data the uid rule still denies
    assert m.decide_file(TASKS["nginx"], OP.OPEN_READ, KEY, KEY_PARENTS).action is A.ALLOW
    d = m.decide_file(TASKS["nginx-as-www"], OP.OPEN_READ, KEY, KEY_PARENTS)
    assert (d.action, d.rule_id) == (A.DENY, 1)
    assert d.subject == m.subjects(TASKS["nginx-as-www"])[1]      # the uid subject decided
    # in the app cgroup: the cgroup's kill beats the exe's allow and audit
    for op in (OP.OPEN_READ, OP.OPEN_WRITE):
        d = m.decide_file(TASKS["nginx-in-app"], op, SHADOW)
        assert (d.action, d.rule_id) == (A.KILL, 3)
    d = m.decide_net(TASKS["nginx-in-app"], OP.CONNECT, "192.0.2.1", 443)
    assert (d.action, d.rule_id) == (A.DENY, 8)
    assert m.decide_net(TASKS["nginx"], OP.CONNECT, "192.0.2.1", 443).action is A.ALLOW


def test_order_of_strictness_and_ties() -> None:
    m = Matcher(_plan())
    # two audits (exe, parent): a tie goes to the earlier subject, the exe
    d = m.decide_file(TASKS["nginx-under-sshd"], OP.OPEN_WRITE, SHADOW)
    subs = m.subjects(TASKS["nginx-under-sshd"])
    assert len(subs) == 2 and (d.action, d.rule_id, d.subject) == (A.AUDIT, 4, subs[0])


def test_a_subject_rule_still_beats_the_rule_for_everyone() -> None:
    """The exception mechanism stays: chkpwd's allow overrides everyone's deny;
    a subject that has no rule for the object leaves it to the rule for everyone."""
    m = Matcher(_plan())
    assert m.decide_file(TASKS["chkpwd"], OP.OPEN_READ, SHADOW).action is A.ALLOW
    d = m.decide_file(TASKS["other"], OP.OPEN_READ, SHADOW)
    assert (d.action, d.rule_id, d.subject) == (A.DENY, 7, 0)
    # chkpwd in the app cgroup: the cgroup's kill is stricter than chkpwd's allow
    assert m.decide_file(TASKS["chkpwd-in-app"], OP.OPEN_READ, SHADOW).action is A.KILL
    # nginx's "allow any" is a rule of its own subject: it beats everyone's deny
    assert m.decide_file(TASKS["nginx"], OP.OPEN_READ, SHADOW).action is A.ALLOW


def test_compat_new_name_out_of_a_directory_object_is_an_alert(tmp_path: Path) -> None:
    """compat cannot refuse a link/rename; the manager alerts one that leaves a dir/
    object the task may not read or write (the lsm tier refuses it in the kernel)."""
    from bastion.events import FileEvent, Proc
    from bastion.policy.manager import PolicyManager
    from bastion.proctable import ProcessTable
    from bastion.tier import Tier

    vault, out = tmp_path / "vault", tmp_path / "out"
    vault.mkdir()
    out.mkdir()
    (vault / "key").write_text("k\n")
    (vault / "w").write_text("w\n")
    text = (f"version: 1\nmode: enforce\nrules:\n"
            f"  - {{name: vault, operations: [open-write], objects: ['{vault}/'], action: audit}}\n")
    proc = Proc(os.getpid(), os.getpid(), 1, 0, 0, 0, 1, "ln", 0, "/bin/ln")
    os.link(vault / "key", out / "k")
    os.link(vault / "key", vault / "k-inside")
    link_out = FileEvent(1, proc, op="link", path=f"{vault}/key", path2=f"{out}/k")
    link_in = FileEvent(1, proc, op="link", path=f"{vault}/key", path2=f"{vault}/k-inside")
    failed = FileEvent(1, proc, op="link", path=f"{vault}/key", path2=f"{out}/never-made")
    procs = ProcessTable()
    for tier in (Tier.COMPAT, Tier.LSM):
        mgr = PolicyManager(tier)
        mgr.apply_text(text, "v.yaml")
        f = mgr.audit_event(link_out, procs)
        if tier is Tier.LSM:
            assert f is None            # refused in inode_link, never after the fact
            continue
        assert f is not None and (f.rule, f.severity) == ("hips:vault", "medium")   # an audit rule
        assert f.evidence["op"] == "link" and f.evidence["object"] == f"{out}/k"
        assert mgr.audit_event(link_in, procs) is None
        assert mgr.audit_event(failed, procs) is None
        mgr.apply_text(text.replace("enforce", "learn"), "v.yaml")
        assert mgr.audit_event(link_out, procs) is None
