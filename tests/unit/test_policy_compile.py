"""HIPS compile: golden map plans, precedence, contradictions, resolution."""

from __future__ import annotations

import json
import os
import stat as statmod
from pathlib import Path

import pytest

from bastion import abi
from bastion.config import PolicyError, parse_policy
from bastion.policy.compile import CompileError, Resolver, compile_plan, resolve
from bastion.policy.match import Matcher, TaskFacts
from bastion.enforce.mechanisms import assess, refusals
from bastion.policy.model import Action, AnyObject, Mode, Op

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
DEV = 0x800001  # kernel encoding of 8:1

# A fake file system: path -> (ino, is_dir)
FS = {
    "/usr/sbin/nginx": (100, False), "/usr/bin/dash": (200, False), "/usr/bin/bash": (201, False),
    "/etc/shadow": (300, False), "/etc/ssl": (310, True), "/etc/ssl/private": (311, True),
    "/etc/ssl/private/key.pem": (312, False), "/usr/sbin/unix_chkpwd": (400, False),
    "/usr/sbin/sshd": (500, False), "/sys/fs/cgroup/app": (9000, True),
}
LINKS = {"/bin/sh": "/usr/bin/dash", "/bin/bash": "/usr/bin/bash"}


def _stat(path: str) -> os.stat_result:
    path = LINKS.get(path, path)
    if path not in FS:
        raise FileNotFoundError(path)
    ino, is_dir = FS[path]
    mode = (statmod.S_IFDIR if is_dir else statmod.S_IFREG) | 0o755
    return os.stat_result((mode, ino, os.makedev(8, 1), 1, 0, 0, 0, 0, 0, 0))


def _glob(pat: str) -> list[str]:
    import fnmatch
    return sorted(p for p in list(FS) + list(LINKS) if fnmatch.fnmatchcase(p, pat))


FAKE = Resolver(stat=_stat, glob=_glob, uid_of=lambda name: {"www-data": 33}[name])

POLICY = """\
version: 1
mode: enforce
default: allow
rules:
  - name: nginx-no-shell
    subject: {exe: /usr/sbin/nginx}
    operations: [exec]
    objects: [/bin/*sh]
    action: kill
  - name: shadow-readers
    subject: {exe: /usr/sbin/unix_chkpwd}
    operations: [open-read]
    objects: [/etc/shadow]
    action: allow
  - name: protect-shadow
    operations: [open-read, open-write]
    objects: [/etc/shadow]
    action: deny
  - name: tls-keys
    subject: {user: www-data}
    operations: [open-read]
    objects: [/etc/ssl/private/]
    action: audit
  - name: app-egress
    subject: {cgroup: /sys/fs/cgroup/app}
    operations: [connect]
    objects: [10.0.0.0/8:443, "[2001:db8::/32]:443"]
    action: allow
  - name: app-egress-default
    subject: {cgroup: /sys/fs/cgroup/app}
    operations: [connect]
    objects: [any]
    action: deny
  - name: sshd-children
    subject: {parent: /usr/sbin/sshd}
    operations: [ptrace]
    action: deny
"""


def _plan(text: str = POLICY):  # type: ignore[no-untyped-def]
    return compile_plan(resolve(parse_policy(text, "p.yaml").hips, FAKE))


def test_golden_plan() -> None:
    got = _plan().to_json()
    path = GOLDEN / "hips_plan.json"
    if os.environ.get("BASTION_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(path.read_text())


def test_golden_bytes_of_one_entry_per_map() -> None:
    plan = _plan()
    subj = plan.subject_entries(7)
    assert subj[0][0] == bytes(abi.SubjectKey(gen=7, kind=abi.SubjectKind.EXE, a=100, b=DEV))
    key, val = plan.rule_entries(7)[0]
    k = abi.RuleKey.from_buffer_copy(key)
    assert (k.gen, k.subject, k.op) == (7, 0, abi.HipsOp.OPEN_READ)
    assert len(key) == 24 and len(val) == 8
    nk = abi.NetKey.from_buffer_copy(plan.net_entries(7)[0][0])
    assert nk.gen == 7 and nk.prefixlen in (128 + 96 + 8, 128 + 32, 128)


def test_compile_is_deterministic() -> None:
    assert _plan() == _plan()
    assert _plan().rule_entries(3) == _plan().rule_entries(3)


def test_precedence() -> None:
    m = Matcher(_plan())
    nginx = TaskFacts(exe=(DEV, 100))
    chkpwd = TaskFacts(exe=(DEV, 400))
    other = TaskFacts(exe=(DEV, 999), uid=1000)
    www = TaskFacts(exe=(DEV, 999), uid=33)
    app = TaskFacts(exe=(DEV, 999), cgroup_id=9000)
    A = abi.HipsAction
    # object match through a symlink-resolved glob
    assert m.decide_file(nginx, abi.HipsOp.EXEC, (DEV, 200)).action is A.KILL
    assert m.decide_file(nginx, abi.HipsOp.EXEC, (DEV, 500)).action is A.ALLOW  # default
    # a subject rule beats a rule for everyone
    assert m.decide_file(chkpwd, abi.HipsOp.OPEN_READ, (DEV, 300)).action is A.ALLOW
    assert m.decide_file(other, abi.HipsOp.OPEN_READ, (DEV, 300)).action is A.DENY
    assert m.decide_file(chkpwd, abi.HipsOp.OPEN_WRITE, (DEV, 300)).action is A.DENY
    # directory objects cover their subtree through ancestors
    d = m.decide_file(www, abi.HipsOp.OPEN_READ, (DEV, 312), ancestors=[(DEV, 311), (DEV, 310)])
    assert d.action is A.AUDIT and d.rule_id == 4
    # the most specific network rule wins; any catches the rest
    assert m.decide_net(app, abi.HipsOp.CONNECT, "10.9.8.7", 443).action is A.ALLOW
    assert m.decide_net(app, abi.HipsOp.CONNECT, "10.9.8.7", 80).action is A.DENY
    assert m.decide_net(app, abi.HipsOp.CONNECT, "2001:db8::5", 443).action is A.ALLOW
    assert m.decide_net(other, abi.HipsOp.CONNECT, "10.9.8.7", 80).action is A.ALLOW
    # parent selector
    child = TaskFacts(exe=(DEV, 999), parent_exe=(DEV, 500))
    assert m.decide_file(child, abi.HipsOp.PTRACE, (DEV, 1)).action is A.DENY


def test_contradiction_is_an_error_naming_both_rules() -> None:
    text = POLICY + """\
  - name: shadow-open
    operations: [open-write]
    objects: [/etc/shadow]
    action: allow
"""
    with pytest.raises(CompileError) as ei:
        _plan(text)
    msg = str(ei.value)
    assert "rule 'shadow-open' (allow) contradicts rule 'protect-shadow'" in msg
    assert "p.yaml:38:5:" in msg and "(line 15, deny)" in msg


def test_same_action_twice_is_not_a_contradiction() -> None:
    text = POLICY + """\
  - name: protect-shadow-again
    operations: [open-write]
    objects: [/etc/shadow]
    action: deny
"""
    assert len(_plan(text).rules) == len(_plan().rules)


def test_unmatched_globs_warn_and_unknown_users_fail() -> None:
    text = "version: 1\nrules:\n  - {name: x, subject: {exe: /opt/none*}, operations: [exec], action: deny}\n" \
           "  - {name: y, operations: [open-read], objects: [/nowhere], action: deny}\n"
    r = resolve(parse_policy(text, "w.yaml").hips, FAKE)
    assert [str(w) for w in r.warnings] == [
        "w.yaml:3:5: rule 'x': subject exe '/opt/none*' matches no file now",
        "w.yaml:4:5: rule 'y': object '/nowhere' matches nothing now",
    ]
    with pytest.raises(CompileError, match="w.yaml:3:5: rule 'z': no such user 'nobody-here'"):
        resolve(parse_policy("version: 1\nrules:\n  - {name: z, subject: {user: nobody-here}, "
                             "operations: [exec], action: deny}\n", "w.yaml").hips, FAKE)


@pytest.mark.parametrize("text,msg", [
    ("rules: [{name: a, operations: [exec, connect], action: deny}]",
     "network operations (connect) and file/process operations (exec) need separate rules"),
    ("rules: [{name: a, operations: [exec], objects: [relative/path], action: deny}]",
     "object 'relative/path' must be an absolute path"),
    ("rules: [{name: a, operations: [exec], objects: ['/bin/[ab'], action: deny}]",
     "has an unclosed '['"),
    ("rules: [{name: a, operations: [connect], objects: [10.0.0.1/8], action: deny}]",
     "has host bits set"),
    ("rules: [{name: a, operations: [connect], objects: ['1.2.3.4:70000'], action: deny}]",
     "port must be 1..65535"),
    ("rules: [{name: a, operations: [exec], action: deny}, {name: a, operations: [exec], action: deny}]",
     "duplicate rule name 'a'"),
    ("rules: [{name: a, subject: {exe: /x, uid: 1}, operations: [exec], action: deny}]",
     "a subject has exactly one selector"),
    ("rules: [{name: a, operations: [exec], action: maybe}]", "unknown action 'maybe'"),
    ("rules: [{name: a, operations: [exec]}]", "rule lacks 'action'"),
    ("mode: strict\n", "unknown mode 'strict'"),
])
def test_bad_rules(text: str, msg: str) -> None:
    with pytest.raises(PolicyError) as ei:
        parse_policy("version: 1\n" + text, "b.yaml")
    assert msg in str(ei.value) and "b.yaml:" in str(ei.value)


def test_lockout_default_deny_warns() -> None:
    pol = parse_policy("version: 1\nmode: enforce\ndefault: deny\n", "l.yaml")
    assert any("lock the administrator out" in str(w) for w in pol.warnings)


def test_enforceability_by_tier() -> None:
    hips = parse_policy(POLICY + "  - {name: u, operations: [unlink], objects: [/etc/shadow], "
                        "action: deny}\n", "p.yaml").hips
    rules = [(r.name, r.ops, r.action, any(isinstance(o, AnyObject) for o in r.objects))
             for r in hips.rules]
    assert refusals(assess(rules, "lsm"), Mode.ENFORCE, False) == []
    why = refusals(assess(rules, "compat"), Mode.ENFORCE, False)
    assert len(why) == 2 and "rule 'u': deny unlink cannot be enforced" in why[1]
    assert "rule 'sshd-children': deny ptrace" in why[0]
    assert refusals(assess(rules, "compat"), Mode.ENFORCE, True) == []
    assert refusals(assess(rules, "compat"), Mode.AUDIT, False) == []
    # fanotify cannot mark "any": an open rule on any object has no compat mechanism
    anyrule = [("w", (Op.OPEN_WRITE,), Action.DENY, True)]
    assert "cannot be enforced" in refusals(assess(anyrule, "compat"), Mode.ENFORCE, False)[0]
    assert refusals(assess(anyrule, "lsm"), Mode.ENFORCE, False) == []


def test_degraded_rule_is_audited_after_the_fact(tmp_path: Path) -> None:
    """compat tier: an unlink rule has no mechanism; with --allow-degraded the
    agent audits matching unlink events from the sensor."""
    from bastion.events import FileEvent, Proc
    from bastion.policy.manager import PolicyManager
    from bastion.proctable import ProcessTable

    d = tmp_path / "data"
    d.mkdir()
    victim = d / "keep.txt"
    victim.write_text("x")
    text = (f"version: 1\nmode: enforce\nrules:\n  - {{name: keep, operations: [unlink], "
            f"objects: ['{d}/'], action: deny}}\n")
    mgr = PolicyManager("compat")
    with pytest.raises(Exception, match="deny unlink cannot be enforced"):
        mgr.apply_text(text, "k.yaml")
    applied = mgr.apply_text(text, "k.yaml", allow_degraded=True)
    assert applied.degraded and "rule 'keep'" in applied.degraded[0]
    victim.unlink()
    ev = FileEvent(1, Proc(os.getpid(), os.getpid(), 1, 0, 0, 0, 1, "rm", 0, "/usr/bin/rm"),
                   op="unlink", path=str(victim))
    f = mgr.audit_event(ev, ProcessTable())
    assert f is not None
    assert f.rule == "hips:keep" and f.action == "audit" and f.enforced_by == "after-the-fact"
    assert f.evidence["decision"] == "deny" and f.evidence["enforced"] is False
    other = FileEvent(1, ev.proc, op="unlink", path=str(tmp_path / "elsewhere"))
    assert mgr.audit_event(other, ProcessTable()) is None


class _FakeKernel:
    def __init__(self) -> None:
        self.applied: list[object] = []

    def apply(self, plan: object) -> int:
        self.applied.append(plan)
        return len(self.applied)

    def clear(self) -> None:
        self.applied.append(None)

    def poll(self, timeout_s: float) -> list[object]:
        return []

    def close(self) -> None:
        pass


def test_a_rejected_policy_never_replaces_the_running_one() -> None:
    from bastion.policy.manager import PolicyApplyError, PolicyManager

    k = _FakeKernel()
    mgr = PolicyManager("lsm", open_backends=lambda: (k, None), resolver=FAKE)  # type: ignore[arg-type,return-value]
    first = mgr.apply_text(POLICY, "good.yaml")
    assert first.gen == 1 and len(k.applied) == 1
    bad = POLICY.replace("action: kill", "action: allow") + (
        "  - {name: lockout, operations: [exec], objects: [/bin/sh], action: deny}\n")
    with pytest.raises(PolicyApplyError, match="would deny /bin/sh for everyone"):
        mgr.apply_text(bad, "bad.yaml")
    with pytest.raises(PolicyError):
        mgr.apply_text("version: 1\nrules: [{name: x}]\n", "broken.yaml")
    with pytest.raises(PolicyApplyError, match="use --force"):
        mgr.apply_text("version: 1\nmode: enforce\ndefault: deny\n", "strict.yaml")
    assert mgr.current is first and len(k.applied) == 1
    forced = mgr.apply_text("version: 1\nmode: enforce\ndefault: deny\n"
                            "rules: [{name: a, operations: [exec], objects: [/usr/sbin/sshd], action: allow}]\n",
                            "strict.yaml", force=True)
    assert forced.gen == 2 and mgr.current is forced
