"""Sigma: loading (pySigma + pipeline), Sigma semantics, events -> findings -> alerts, CLI."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from bastion.cli.sigma import sigma_group
from bastion.detect.engine import Engine, RuleContext
from bastion.detect.sigma import SigmaRuleError, load_sigma
from bastion.events import ExecEvent, FileEvent, MemfdEvent, NetEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher

CORPUS = Path("/work/shared/corpus/sigma/rules")
HEAD = """\
title: {title}
id: {id}
status: test
author: Jane Doe, Example Org
level: {level}
tags:
    - attack.execution
    - attack.t1059.004
"""


def rule(tmp: Path, name: str, body: str, *, logsource: str = "category: process_creation",
         level: str = "high", rid: str | None = None) -> Path:
    rid = rid or f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}"
    text = HEAD.format(title=name, id=rid, level=level) + \
        f"logsource:\n    product: linux\n    {logsource}\ndetection:\n" + textwrap.indent(
            textwrap.dedent(body).strip() + "\n", "    ")
    p = tmp / f"{name}.yml"
    p.write_text(text)
    return p


def proc(exe: str, pid: int = 4242, ppid: int = 1, uid: int = 0) -> Proc:
    return Proc(pid=pid, tid=pid, ppid=ppid, uid=uid, euid=uid, gid=0, cgroup_id=1,
                comm=os.path.basename(exe)[:15], exe=exe)


def execev(argv: tuple[str, ...], exe: str | None = None, **kw: object) -> ExecEvent:
    exe = exe or "/usr/bin/" + argv[0]
    return ExecEvent(1, proc(exe, **kw), filename=exe, cwd="/root", argv=argv)  # type: ignore[arg-type]


def fired(engine: Engine, ev: object, procs: ProcessTable | None = None) -> set[str]:
    ctx = RuleContext(procs or ProcessTable())
    return {f.title for f in engine.evaluate(ev, ctx)}  # type: ignore[arg-type]


# ---------------------------------------------------------------- the corpus

@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    if not CORPUS.is_dir():
        pytest.skip("corpus not present")
    return load_sigma([CORPUS])


def test_corpus_loads_every_process_file_and_network_rule(corpus) -> None:  # type: ignore[no-untyped-def]
    assert corpus.files == 210 and not corpus.errors
    assert corpus.loaded_by_logsource() == {
        "auditd": 44, "file_event": 8, "network_connection": 5, "process_creation": 122}
    assert len(corpus.rules) + len(corpus.unsupported) == 210
    for r in corpus.rules:
        assert r.name == f"sigma:{r.rule_id}" and r.author and r.event_types
    assert {r.logsource: r.event_types for r in corpus.rules if r.logsource != "auditd"} == {
        "process_creation": {"exec"}, "file_event": {"open", "rename"},
        "network_connection": {"connect", "accept"}}


def test_corpus_unsupported_rules_say_why(corpus) -> None:  # type: ignore[no-untyped-def]
    why = {u.path.name: u.reason for u in corpus.unsupported}
    assert len(why) == 31
    assert "field 'key'" in why["lnx_auditd_susp_c2_commands.yml"]
    assert "TTY" in why["lnx_auditd_keylogging_with_pam_d.yml"]   # not half-applied: PATH part too
    assert "personality" in why["lnx_auditd_disable_aslr_protection.yml"]
    assert "ADD_USER" in why["lnx_auditd_create_account.yml"]
    assert "mknod" in why["lnx_auditd_susp_special_file_creation_via_mknod_syscall.yml"]
    assert "syslog text" in why["lnx_syslog_susp_named.yml"]
    assert "product-only" in why["lnx_shellshock.yml"]
    assert sum(u.logsource == "linux/service:auditd" for u in corpus.unsupported) == 9


def test_corpus_rules_fire_on_the_commands_they_describe(corpus) -> None:  # type: ignore[no-untyped-def]
    eng = Engine(corpus.engine_rules())
    assert "System Information Discovery" in fired(eng, execev(("uname", "-a")))
    assert "Decode Base64 Encoded Text" in fired(eng, execev(("base64", "-d")))
    assert "System Information Discovery - Auditd" in fired(
        eng, FileEvent(1, proc("/usr/bin/cat"), op="open", path="/etc/issue", flags=os.O_RDONLY))
    assert "Wget Creating Files in Tmp Directory" in fired(
        eng, FileEvent(1, proc("/usr/bin/wget"), op="open", path="/tmp/a.sh",
                       flags=os.O_WRONLY | os.O_CREAT))
    assert "Wget Creating Files in Tmp Directory" not in fired(  # reads are not file_event
        eng, FileEvent(1, proc("/usr/bin/wget"), op="open", path="/tmp/a.sh", flags=os.O_RDONLY))
    assert "Persistence Via Sudoers.d Files" in fired(
        eng, FileEvent(1, proc("/usr/bin/mv"), op="rename", path="/tmp/x", path2="/etc/sudoers.d/x"))
    assert "Potentially Suspicious Malware Callback Communication - Linux" in fired(
        eng, NetEvent(1, proc("/tmp/implant"), op="connect", family="inet", daddr="203.0.113.9",
                      dport=4444))
    assert "Potentially Suspicious Malware Callback Communication - Linux" not in fired(
        eng, NetEvent(1, proc("/tmp/implant"), op="connect", family="inet", daddr="10.1.2.3",
                      dport=4444))   # cidr filter
    assert "Potentially Suspicious Malware Callback Communication - Linux" not in fired(
        eng, NetEvent(1, proc("/tmp/implant"), op="accept", family="inet", daddr="203.0.113.9",
                      dport=4444))   # Initiated false
    assert "Linux Capabilities Discovery" in fired(eng, execev(("getcap", "-r", "/")))  # auditd EXECVE
    assert "Audio Capture" in fired(eng, MemfdEvent(1, proc("/usr/bin/ecasound"), name="x"))
    assert fired(eng, execev(("ls", "-l", "/tmp"))) == set()


def test_per_rule_adapters_and_the_rule_set_agree(corpus) -> None:  # type: ignore[no-untyped-def]
    evs = [execev(("uname", "-a")), execev(("whoami",)), execev(("chmod", "777", "/tmp/x")),
           FileEvent(1, proc("/usr/bin/cat"), op="open", path="/etc/issue")]
    many, one = Engine(corpus.rules), Engine(corpus.engine_rules())
    for ev in evs:
        ctx = RuleContext(ProcessTable())
        a = sorted(f.rule for f in many.evaluate(ev, ctx))
        b = sorted(f.rule for f in one.evaluate(ev, ctx))
        assert a == b and a


# ---------------------------------------------------------------- bad input

def test_malformed_file_is_reported_and_the_rest_keep_loading(tmp_path: Path) -> None:
    rule(tmp_path, "good", "selection:\n    Image|endswith: '/id'\ncondition: selection")
    (tmp_path / "broken.yml").write_text("title: x\ndetection: [unclosed\n")
    rule(tmp_path, "badmod", "selection:\n    Image|nosuchmodifier: 'x'\ncondition: selection")
    rule(tmp_path, "badcond", "selection:\n    Image: 'x'\ncondition: selection and nothing")
    res = load_sigma([tmp_path])
    assert [r.title for r in res.rules] == ["good"]
    errs = {Path(e.location.source).name: str(e) for e in res.errors if e.location}
    assert set(errs) == {"broken.yml", "badmod.yml", "badcond.yml"}
    assert str(tmp_path / "badmod.yml") in errs["badmod.yml"] and "nosuchmodifier" in errs["badmod.yml"]
    assert all(isinstance(e, SigmaRuleError) for e in res.errors)


def test_a_yaml_document_that_is_no_mapping_is_an_error_of_its_file(tmp_path: Path) -> None:
    """s22: a file holding a list or a scalar raised pySigma's AttributeError out of
    `bastion sigma check` (and out of a set's load) as a traceback."""
    rule(tmp_path, "good", "selection:\n    Image|endswith: '/id'\ncondition: selection")
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    (tmp_path / "scalar.yaml").write_text("just a string\n")
    res = load_sigma([tmp_path])
    assert [r.title for r in res.rules] == ["good"]
    errs = {Path(e.location.source).name: str(e) for e in res.errors if e.location}
    assert set(errs) == {"list.yml", "scalar.yaml"}
    assert all("not a mapping" in e for e in errs.values())
    out = CliRunner().invoke(sigma_group, ["check", str(tmp_path)])
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    assert "not a mapping" in out.output and "Traceback" not in out.output


def test_unsupported_features_are_listed_never_half_applied(tmp_path: Path) -> None:
    rule(tmp_path, "expand", "selection:\n    Image|expand: '%shells%'\ncondition: selection")
    rule(tmp_path, "unknownfield", "selection:\n    Image|endswith: '/id'\n    Hashes: 'x'\n"
         "condition: selection")
    rule(tmp_path, "half", "sel_a:\n    type: EXECVE\n    a0: id\nsel_b:\n    type: SYSCALL\n"
         "    a0: 4\ncondition: 1 of sel_*", logsource="service: auditd")
    rule(tmp_path, "windows", "selection:\n    Image: x\ncondition: selection",
         logsource="category: registry_event")
    res = load_sigma([tmp_path])
    assert res.rules == []
    why = {u.title: u.reason for u in res.unsupported}
    assert "placeholder" in why["expand"]
    assert "'Hashes'" in why["unknownfield"]
    assert "different audit record types" in why["half"]
    assert "no Bastion event source" in why["windows"]


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(SigmaRuleError) as ei:
        load_sigma([tmp_path / "nope"])
    assert str(tmp_path / "nope") in str(ei.value)


def test_duplicate_ids_are_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rid = "11111111-2222-3333-4444-555555555555"
    rule(tmp_path / "a", "one", "s:\n    Image: x\ncondition: s", rid=rid)
    rule(tmp_path / "b", "two", "s:\n    Image: y\ncondition: s", rid=rid)
    res = load_sigma([tmp_path / "a", tmp_path / "b"])
    assert len(res.rules) == 1 and "duplicate Sigma rule id" in str(res.errors[0])


# ---------------------------------------------------------------- semantics

SEMANTICS = {
    "wild": ("s:\n    CommandLine: 'cu?l *HTTP*'\ncondition: s",
             [("curl x http://a", True), ("CURL http", True), ("cuul http", True), ("ccurl http", False)]),
    "contains_all": ("s:\n    CommandLine|contains|all: [' -c ', 'import']\ncondition: s",
                     [("python -c import os", True), ("python -c os", False)]),
    "sw_ew": ("s:\n    CommandLine|startswith: 'sudo '\n    Image|endswith: '/SUDO'\ncondition: s",
              [("sudo id", True), ("xsudo id", False)]),
    "re_cased": ("s:\n    CommandLine|re: '\\s-[a-z]*i'\ncondition: s",
                 [("ls -li", True), ("ls -LI", False)]),
    "re_i": ("s:\n    CommandLine|re|i: '\\s-[a-z]*i'\ncondition: s", [("ls -LI", True)]),
    "cased": ("s:\n    CommandLine|cased: 'ABC'\ncondition: s", [("ABC", True), ("abc", False)]),
    "escaped": ("s:\n    CommandLine: 'a\\*b'\ncondition: s", [("a*b", True), ("axb", False)]),
    "nested_not": ("a:\n    CommandLine|contains: x\nb:\n    CommandLine|contains: y\n"
                   "c:\n    CommandLine|contains: z\ncondition: a and not (b and not c)",
                   [("x", True), ("x y", False), ("x y z", True)]),
    "one_of_all_of": ("sel_1:\n    CommandLine|contains: p\nsel_2:\n    CommandLine|contains: q\n"
                      "f_1:\n    CommandLine|contains: r\ncondition: 1 of sel_* and not all of f_*",
                      [("p", True), ("q", True), ("q r", False), ("s", False)]),
    "keywords": ("keywords:\n    - 'EVIL'\n    - 'bad*thing'\ncondition: keywords",
                 [("an evil one", True), ("a bad big thing", True), ("good", False)]),
    "null_field": ("s:\n    CommandLine|contains: q\n    CurrentDirectory: null\ncondition: s",
             [("q", False)]),
}


@pytest.mark.parametrize("name", sorted(SEMANTICS))
def test_sigma_semantics(tmp_path: Path, name: str) -> None:
    body, cases = SEMANTICS[name]
    rule(tmp_path, name, body)
    res = load_sigma([tmp_path])
    assert not res.errors and not res.unsupported, (res.errors, res.unsupported)
    eng = Engine(res.engine_rules())
    for cmdline, want in cases:
        ev = ExecEvent(1, proc("/usr/bin/sudo"), filename="/usr/bin/sudo", cwd="/root",
                       argv=tuple(cmdline.split(" ")))
        assert (name in fired(eng, ev)) is want, cmdline


def test_cidr_and_ports(tmp_path: Path) -> None:
    rule(tmp_path, "net", "s:\n    DestinationPort: [22, 2222]\n    Initiated: 'true'\n"
         "f:\n    DestinationIp|cidr: ['10.0.0.0/8', 'fc00::/7']\ncondition: s and not f",
         logsource="category: network_connection")
    eng = Engine(load_sigma([tmp_path]).engine_rules())
    def c(addr: str, port: int, op: str = "connect") -> bool:
        return "net" in fired(eng, NetEvent(1, proc("/usr/bin/ssh"), op=op, daddr=addr, dport=port))
    assert c("192.0.2.1", 22) and c("2001:db8::1", 2222)
    assert not c("10.9.9.9", 22) and not c("fd00::1", 22) and not c("192.0.2.1", 23)
    assert not c("192.0.2.1", 22, "accept")


def test_parent_user_and_cwd_fields(tmp_path: Path) -> None:
    rule(tmp_path, "web", "s:\n    ParentImage|endswith: '/nginx'\n    ParentCommandLine|contains: master\n"
         "    User: root\n    CurrentDirectory: /root\n    Image|endswith: '/id'\ncondition: s")
    eng = Engine(load_sigma([tmp_path]).engine_rules())
    procs = ProcessTable()
    procs.update(ExecEvent(1, proc("/usr/sbin/nginx", pid=77), argv=("nginx: master process",)))
    assert fired(eng, execev(("id",), ppid=77), procs) == {"web"}
    assert fired(eng, execev(("id",), ppid=78), procs) == set()        # unknown parent
    assert fired(eng, execev(("id",), ppid=77, uid=65534), procs) == set()  # nobody


# ---------------------------------------------------------------- findings and alerts

def test_finding_and_alert_carry_the_rule_and_its_author(tmp_path: Path) -> None:
    rid = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    rule(tmp_path, "idrule", "s:\n    Image|endswith: '/id'\ncondition: s", rid=rid,
         level="informational")
    res = load_sigma([tmp_path])
    [sr] = res.rules
    procs = ProcessTable()
    ev = execev(("id",))
    [f] = Engine(res.rules).evaluate(ev, RuleContext(procs))
    assert f.rule == f"sigma:{rid}" and f.title == "idrule" and f.severity == "info"
    assert f.attack == ("T1059.004",) and f.action == "alert" and f.pid == 4242
    assert f.meta["author"] == "Jane Doe, Example Org"
    assert f.meta["sigma"] == {"id": rid, "title": "idrule", "level": "informational",
                               "tags": ["attack.execution", "attack.t1059.004"],
                               "author": "Jane Doe, Example Org", "path": str(sr.path),
                               "logsource": "process_creation"}
    assert f.evidence["fields"]["Image"] == "/usr/bin/id"
    alert = Dispatcher(procs).dispatch(f, 0).to_json()
    assert alert["author"] == "Jane Doe, Example Org" and alert["sigma"]["id"] == rid
    json.dumps(alert)


# ---------------------------------------------------------------- CLI

def test_cli_check_json_on_the_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip("corpus not present")
    r = CliRunner().invoke(sigma_group, ["check", str(CORPUS), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["loaded"]["process_creation"] == 122 and rep["loaded"]["file_event"] == 8
    assert rep["loaded"]["network_connection"] == 5 and rep["files"] == 210
    assert rep["unsupported_total"] == 31 and all(u["reason"] for u in rep["unsupported"])


def test_cli_check_reports_bad_files_and_exits_1(tmp_path: Path) -> None:
    rule(tmp_path, "good", "s:\n    Image: x\ncondition: s")
    (tmp_path / "bad.yml").write_text("title: [\n")
    r = CliRunner().invoke(sigma_group, ["check", str(tmp_path)])
    assert r.exit_code == 1
    assert "1 rules loaded from 2 files" in r.output and str(tmp_path / "bad.yml") in r.output
