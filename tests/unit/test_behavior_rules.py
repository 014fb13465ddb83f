"""Every built-in behaviour rule against its replay fixtures: the positive
scenario raises it, the benign look-alike does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bastion.detect.behavior import ContainerProbes, behavior_rules, rule_names
from bastion.detect.behavior.escape import parse_mountinfo
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.severity import SEVERITIES
from bastion.proctable import ProcessTable
from bastion.sensors.replay import read_all
from support.trust import RecordedTrust

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "behavior"
RULES = sorted(n.removeprefix("behavior.") for n in rule_names())


def recorded_probes(path: Path) -> ContainerProbes | None:
    """The container escape rules' live look-ups, recorded next to a fixture
    (``<rule>.<pos|neg>.probes.json``: mountinfo and mount namespace per pid)."""
    side = path.with_name(path.name.removesuffix(".jsonl") + ".probes.json")
    if not side.exists():
        return None
    doc = json.loads(side.read_text())
    mi, ns = doc["mountinfo"], doc["mnt_ns"]
    return ContainerProbes(
        mounts=lambda pid, cg: parse_mountinfo(mi[str(pid)]) if str(pid) in mi else None,
        mnt_ns=lambda pid: ns.get(str(pid)),
        host_mounts=parse_mountinfo(doc["host_mountinfo"]), host_mnt_ns=doc["host_mnt_ns"])


def replay(path: Path) -> list[Finding]:
    procs = ProcessTable()
    trust = RecordedTrust()
    engine = Engine(behavior_rules(trust=trust, cprobes=recorded_probes(path)))
    ctx = RuleContext(procs)
    out: list[Finding] = []
    for ev in read_all(path):
        trust.learn(ev)
        procs.update(ev)
        out += engine.evaluate(ev, ctx)
    assert not engine.errors, engine.disabled
    return out


def test_every_rule_has_fixtures() -> None:
    for r in RULES:
        assert (FIX / f"{r}.pos.jsonl").exists(), r
        assert (FIX / f"{r}.neg.jsonl").exists(), r


@pytest.mark.parametrize("rule", RULES)
def test_positive(rule: str) -> None:
    found = [f for f in replay(FIX / f"{rule}.pos.jsonl") if f.rule == f"behavior.{rule}"]
    assert found, f"behavior.{rule} did not fire"
    f = found[0]
    assert f.severity in SEVERITIES and f.attack and f.action
    assert all(a.startswith("T") for a in f.attack)


@pytest.mark.parametrize("rule", RULES)
def test_negative(rule: str) -> None:
    found = [f for f in replay(FIX / f"{rule}.neg.jsonl") if f.rule == f"behavior.{rule}"]
    assert not found, [f.title for f in found]


def test_negatives_raise_nothing_high() -> None:
    """No benign look-alike raises a high or critical finding of any rule."""
    for path in sorted(FIX.glob("*.neg.jsonl")):
        bad = [(f.rule, f.title) for f in replay(path) if f.severity in ("high", "critical")]
        assert not bad, (path.name, bad)


def test_every_rule_declares_its_metadata() -> None:
    for r in behavior_rules():
        assert r.name.startswith("behavior.") and r.event_types
        assert getattr(r, "attack") and getattr(r, "severity") in SEVERITIES
        assert getattr(r, "action") in ("alert", "kill", "kill-tree", "quarantine")


def test_issue15_detection_rules_fire_on_each_variant() -> None:
    """Each behaviour of the issue-15 detection rules in the positive fixtures raises
    its own finding (not just the first event of the fixture)."""
    def titles(rule: str) -> list[str]:
        return [f.title for f in replay(FIX / f"{rule}.pos.jsonl") if f.rule == f"behavior.{rule}"]

    assert any("Mail spool truncated: /var/spool/mail/root" in t for t in titles("log_clearing"))
    cfg = titles("security_config_tamper")
    assert any("/etc/rsyslog.conf" in t for t in cfg) and any("/etc/audit/auditd.conf" in t for t in cfg)
    hunt = titles("secret_hunt")
    assert any("id_rsa" in t and "kdbx" in t for t in hunt) and any("git-credentials" in t for t in hunt)
    hidden = titles("hidden_temp_artifact")
    assert any("/var/tmp/.cache-x" in t for t in hidden) and any("/dev/shm/.x" in t for t in hidden)


def test_security_service_stopped_by_unit_name() -> None:
    """A unit is not its binary: ``systemctl stop rsyslog`` (rsyslogd) and a commercial
    sensor's unit (falcon-sensor.service) are security-service stops."""
    titles = [f.title for f in replay(FIX / "disable_security_tools.pos.jsonl")
              if f.rule == "behavior.disable_security_tools"]
    assert any("falcon-sensor.service" in t for t in titles), titles
    assert any("disable rsyslog" in t for t in titles), titles


def test_shell_escape_names_each_launcher() -> None:
    """awk's system(), cpan (perl exec'd ``sh -c`` in place: the launcher is read from
    the process's earlier image), python's os.system and gawk whose `sh -c` exited before
    the shell's exec (re-parented: the launcher is read from the fork) each raise one."""
    found = [f for f in replay(FIX / "shell_escape.pos.jsonl") if f.rule == "behavior.shell_escape"]
    assert sorted(f.evidence["launcher"] for f in found) == ["awk", "busybox", "cpan", "gawk",
                                                             "python3"], [f.title for f in found]
    assert all(f.severity == "medium" and f.action == "alert" for f in found)


def test_boot_rc_scripts_are_persistence() -> None:
    """rc.common, rc.d and the SysV runlevel directories run at boot like rc.local."""
    titles = [f.title for f in replay(FIX / "persistence_systemd.pos.jsonl")
              if f.rule == "behavior.persistence_systemd"]
    for path in ("/etc/rc.common", "/etc/rc.d/rc.local", "/etc/rc3.d/S99evil"):
        assert any(path in t for t in titles), (path, titles)


def test_shell_escape_through_busybox_applet() -> None:
    """``busybox ash`` started with no command from a script is a shell reached through a
    multi-call binary (the sudo-rule escape); Alpine's ``-sh`` login shell, ``busybox sh
    -c`` and ``busybox sh script`` are not (the negative fixture)."""
    found = [f for f in replay(FIX / "shell_escape.pos.jsonl")
             if f.rule == "behavior.shell_escape" and f.evidence["launcher"] == "busybox"]
    assert [f.evidence["argv"] for f in found] == [["busybox", "ash"]]


def test_discovery_burst_counts_facts_of_one_script() -> None:
    """A script asking four different facts its own way (id in a subshell, the account
    file through awk, the kernel through /proc/version, ``ip -4 addr``) raises one medium
    finding on the script; three facts, a prompt, or facts spread over minutes do not."""
    found = [f for f in replay(FIX / "discovery_burst.pos.jsonl")
             if f.rule == "behavior.discovery_burst"]
    assert len(found) == 1, [f.title for f in found]
    f = found[0]
    assert f.severity == "medium" and f.action == "alert" and f.pid == 2400
    assert f.evidence["facts"] == ["id", "/etc/passwd", "/proc/version", "ip addr"]


def test_decoded_file_exec_follows_the_decoded_file() -> None:
    """The decoder's output (its output operand, its own write, the shell's redirect of
    its stdout) is followed through a rename to the exec; inline perl decoding into
    system() is the medium variant."""
    found = [f for f in replay(FIX / "decoded_file_exec.pos.jsonl")
             if f.rule == "behavior.decoded_file_exec"]
    got = sorted((f.severity, f.evidence.get("path", ""), f.evidence["decoder"]) for f in found)
    assert got == [("high", "/home/alice/.cache/upd", "xxd -r"),
                   ("high", "/home/alice/.local/bin/kworker", "python3 -c"),
                   ("high", "/home/alice/run.bin", "base64 -d"),
                   ("medium", "", "perl -e")], got


def test_binary_padding_follows_the_program() -> None:
    """A program that ran, grown by a shell's ``>>`` and, renamed, by ``truncate -s +1``
    (no O_TRUNC): two medium findings; rebuilt by the linker, replaced by cp, a log or a
    script appended to: none (the negative fixture)."""
    found = [f for f in replay(FIX / "binary_padding.pos.jsonl")
             if f.rule == "behavior.binary_padding"]
    assert [(f.evidence["path"], f.severity) for f in found] == [
        ("/var/tmp/agent", "medium"), ("/home/alice/.local/bin/agent", "medium")], \
        [f.title for f in found]


def test_binary_padding_live_probe_reads_the_file(tmp_path: Path) -> None:
    """Live, a file the stream never showed running counts when it is an executable ELF:
    the probe reads the mode and the header through the writer's root."""
    from bastion.detect.behavior.rules import elf_exec
    import os
    import shutil
    exe = tmp_path / "prog"
    shutil.copy("/bin/true", exe)
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    data = tmp_path / "data.bin"
    data.write_bytes(b"\x7fELF....")
    pid = os.getpid()
    assert elf_exec(pid, str(exe)) is True
    assert elf_exec(pid, str(script)) is False
    assert elf_exec(pid, str(data)) is False          # an ELF header, no execute bit
    assert elf_exec(pid, str(tmp_path / "gone")) is None


def test_history_linked_to_dev_null_or_replaced() -> None:
    """``ln -s /dev/null`` onto a history (a symlinkat, which the sensor does not trace:
    the exec says it) and a file renamed over a history raise medium log_clearing; zsh
    saving its history through a renamed .new file does not (the negative fixture)."""
    titles = [f.title for f in replay(FIX / "log_clearing.pos.jsonl")
              if f.rule == "behavior.log_clearing" and f.severity == "medium"]
    assert any("linked to /dev/null" in t and ".zsh_history" in t for t in titles), titles
    assert any("replaced by /tmp/empty" in t for t in titles), titles


def test_rules_that_skip_read_opens_find_nothing_in_one() -> None:
    """A rule with ``read_opens = False`` is not called with a read-only open (issue 16.3):
    that is safe only while the rule finds nothing in one.  Every write open of every
    fixture (the attacks of the positive ones included), turned read-only, given to each
    such rule directly (no engine filter) raises nothing, nor does a recorded read-only
    open; the write opens as recorded still raise each rule's own finding where its
    positive fixture expects one."""
    import dataclasses
    import os

    from bastion.events import OPEN_WRITE_FLAGS, FileEvent

    skip = [r.name for r in behavior_rules() if not r.read_opens]
    assert "behavior.persistence_cron" in skip and "behavior.credential_access" not in skip
    for path in sorted(FIX.glob("*.jsonl")):
        procs, trust = ProcessTable(), RecordedTrust()
        rules = [r for r in behavior_rules(trust=trust, cprobes=recorded_probes(path))
                 if not r.read_opens]
        ctx = RuleContext(procs)
        fired: set[str] = set()
        for ev in read_all(path):
            trust.learn(ev)
            procs.update(ev)
            for r in rules:
                if ev.type not in r.event_types:
                    continue
                if isinstance(ev, FileEvent) and ev.op == "open":
                    ro = dataclasses.replace(ev, flags=ev.flags & ~OPEN_WRITE_FLAGS
                                             | os.O_NOFOLLOW | os.O_CLOEXEC)
                    assert r.on_event(ro, ctx) == [], (path.name, r.name, ev.path)
                    if not ev.flags & OPEN_WRITE_FLAGS:
                        continue   # a recorded read-only open: only the check above
                if r.on_event(ev, ctx):
                    fired.add(r.name)
        own = "behavior." + path.name.split(".")[0]
        if own in skip and ".pos." in path.name:
            assert own in fired, path.name


def test_engine_gives_read_only_opens_only_to_rules_that_take_them() -> None:
    """``read_opens = False``: the engine passes such a rule every write open (O_WRONLY,
    O_RDWR, O_CREAT or O_TRUNC alone) and every other event type, never a read-only open;
    a rule that does not say so gets both."""
    import os

    from bastion.events import FileEvent, Proc

    class Spy:
        event_types = frozenset({"open", "unlink"})

        def __init__(self, name: str, reads: bool | None) -> None:
            self.name, self.seen = name, []
            if reads is not None:
                self.read_opens = reads

        def on_event(self, ev: FileEvent, ctx: RuleContext) -> list[Finding]:
            self.seen.append((ev.op, ev.flags))
            return []

    writes, reads = Spy("w", False), Spy("r", None)
    engine = Engine([writes, reads, Spy("t", True)])
    p = Proc(pid=7, tid=7, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="x", exe="/x")
    evs = [FileEvent(1, p, op="open", path="/etc/cron.d/x", flags=f)
           for f in (os.O_RDONLY, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY, os.O_WRONLY,
                     os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_WRONLY | os.O_APPEND)]
    evs.append(FileEvent(1, p, op="unlink", path="/etc/cron.d/x"))
    ctx = RuleContext(ProcessTable())
    for ev in evs:
        engine.evaluate(ev, ctx)
    assert writes.seen == [("open", os.O_WRONLY), ("open", os.O_RDWR), ("open", os.O_CREAT),
                           ("open", os.O_TRUNC), ("open", os.O_WRONLY | os.O_APPEND),
                           ("unlink", 0)]
    assert len(reads.seen) == len(evs)
    engine.replace([writes], [])   # re-routed after a change of the rule set
    engine.evaluate(evs[0], ctx)
    assert len(reads.seen) == len(evs) + 1 and len(writes.seen) == 6


@pytest.mark.parametrize("exe, hidden", [
    ("/home/u/.hid/x", [".hid"]), (".hid/bin/x", [".hid"]), ("/home/u/.cache/x", None),
    ("/a/./b/../c/x", None), ("/usr/bin/x", None), ("/home/u/.ssh/.k/x", [".ssh", ".k"]),
    ("/home/u/.git/x", None), ("/x.y/.z", None), ("./x", None)])
def test_exec_from_a_hidden_directory(exe: str, hidden: list[str] | None) -> None:
    """exec_from_tmp's hidden-directory test (only paths with a component starting with
    "." are split, s24): every such component but "." and "..", any not HIDDEN_OK."""
    from bastion.detect.behavior.rules import HIDDEN_OK, ExecFromTemp
    from bastion.events import ExecEvent, Proc

    p = Proc(pid=10, tid=10, ppid=1, uid=0, euid=0, gid=0, cgroup_id=1, comm="x", exe=exe)
    h = ExecFromTemp().match(ExecEvent(1, p, filename=exe, argv=(exe,)),
                             RuleContext(ProcessTable()))
    assert ".git" in HIDDEN_OK
    assert (h.evidence["hidden"] if h is not None else None) == hidden
