"""The pipe gate in user space (s23-pipegate): its records as findings, the dispatcher
leaving the kernel's kill alone, the decoders and shells it enters, and the agent
building it from ``behavior.decoded_payload_shell``'s settings.  The kernel side:
tests/kernel/test_pipegate_live.py, tests/vm/test_pipegate_lsm.py."""

from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

from bastion import abi
from bastion.abi import PipegateKind, PipegateRule
from bastion.assembly import _pipe_gate
from bastion.detect.behavior.base import RuleSettings
from bastion.detect.behavior.config import BehaviorConfig
from bastion.enforce.pipegate import AgentPipeGate, PipeGate
from bastion.events import HipsEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher


def _rec(pid: int, rule: PipegateRule = PipegateRule.SHELL, enforced: bool = True,
         ret: int = 0, mechanism: str = "pipe-kill", detail: int = 0) -> HipsEvent:
    return HipsEvent(time.time_ns(), Proc(pid, pid, 1, 0, 0, 0, 0, "sh"), op="exec",
                     action="kill", rule_id=int(rule), subject=int(PipegateKind.SHELL),
                     mechanism=mechanism, enforced=enforced, ret=ret, path="/usr/bin/dash",
                     ino=777, target_pid=4242, detail=detail)


def _gate() -> PipeGate:
    return object.__new__(PipeGate)


def test_records_become_findings_a_kill_a_dry_run_and_a_failed_kill() -> None:
    g = _gate()
    f = g.finding(_rec(10))
    assert f is not None and (f.rule, f.action, f.severity, f.dry_run, f.enforced_by) == (
        "bastion.pipe.gate", "kill", "critical", False, "pipe-kill")
    assert "the shell /usr/bin/dash killed at its exec" in f.title and "decoder pid 4242" in f.title
    assert f.evidence["prevented"].startswith("a decoded payload run by a shell")
    assert f.evidence["decoder_pid"] == 4242 and f.evidence["pipe_ino"] == 777
    r = g.finding(_rec(10, rule=PipegateRule.RELAY, detail=2))
    assert r is not None and "relay" in r.title and "through 2 relay(s)" in r.title
    assert r.evidence["shell_pid"] == 4242
    d = g.finding(_rec(10, enforced=False))
    assert d is not None and d.dry_run and d.action == "kill" and "dry run" in d.title
    x = g.finding(_rec(10, enforced=False, ret=-3))
    assert x is not None and not x.dry_run and "signal failed" in x.title
    assert g.finding(_rec(10, mechanism="connect-kill")) is None
    assert g.finding(_rec(10, rule=PipegateRule.SHELL)) is not None
    bad = _rec(10)
    assert g.finding(HipsEvent(bad.time_ns, bad.proc, op="exec", action="kill", rule_id=9,
                               mechanism="pipe-kill")) is None


def test_the_dispatcher_does_not_send_again_a_kill_the_kernel_sent() -> None:
    p = subprocess.Popen(["sleep", "30"])
    try:
        f = _gate().finding(_rec(p.pid))
        assert f is not None
        alert = Dispatcher(ProcessTable()).dispatch(f, time.time_ns())
        assert alert.action == "kill" and alert.enforced_by == "pipe-kill"
        time.sleep(0.05)
        assert p.poll() is None, "the dispatcher signalled the pid"
        d = _gate().finding(_rec(p.pid, enforced=False))
        assert d is not None
        assert Dispatcher(ProcessTable()).dispatch(d, time.time_ns()).action == "would-kill"
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


class _Map:
    def __init__(self) -> None:
        self.d: dict[bytes, bytes] = {}

    def update(self, k: bytes, v: bytes) -> None:
        self.d[k] = v

    def delete(self, k: bytes) -> None:
        del self.d[k]


def test_apply_enters_decoders_and_shells_and_drops_what_is_gone() -> None:
    g = _gate()
    m = _Map()
    g._map = lambda name: m  # type: ignore[method-assign, assignment, return-value]
    g._progs = {}
    g._letters = {}

    def key(dev: int, ino: int) -> bytes:
        return bytes(abi.InodeKey(ino=ino, dev=dev))

    files = {"base64": frozenset({(8, 1)}), "xxd": frozenset({(8, 2)})}
    probs = g.apply({"base64": PipegateKind.BASE64, "xxd": PipegateKind.XXD,
                     "uudecode": PipegateKind.UUDECODE},
                    idents=lambda n: files.get(n, frozenset()), shells=lambda: {(8, 3): "dash"})
    assert probs == ["uudecode: no installed file: not entered"]
    assert m.d == {key(8, 1): b"\x02\x00\x00\x00", key(8, 2): b"\x03\x00\x00\x00",
                   key(8, 3): b"\x01\x00\x00\x00"}
    files["xxd"] = frozenset()
    assert g.apply({"base64": PipegateKind.BASE64, "xxd": PipegateKind.XXD},
                   idents=lambda n: files.get(n, frozenset()), shells=lambda: {}) == [
        "xxd: no installed file: not entered", "no installed shell found: nothing entered"]
    assert m.d == {key(8, 1): b"\x02\x00\x00\x00"} and g.entered == 1
    # an interpreter: kind INTERP in pipegate_progs, its code letters in pipegate_letters
    progs, letters = _Map(), _Map()
    g._map = lambda name: progs if name == "pipegate_progs" else letters  # type: ignore[method-assign, assignment, return-value]
    g._progs, g._letters = {}, {}
    files["python3"] = frozenset({(8, 9)})
    g.apply({}, idents=lambda n: files.get(n, frozenset()), shells=lambda: {(8, 3): "dash"},
            interpreters={"python3": "cm"})
    assert progs.d == {key(8, 9): b"\x06\x00\x00\x00", key(8, 3): b"\x01\x00\x00\x00"}
    assert letters.d == {key(8, 9): (1 << 2 | 1 << 12).to_bytes(8, "little")}
    g.apply({}, idents=lambda n: frozenset(), shells=lambda: {(8, 3): "dash"})
    assert letters.d == {} and list(progs.d) == [key(8, 3)]


def _opts(rules: dict[str, RuleSettings], dry: bool = False) -> SimpleNamespace:
    return SimpleNamespace(policy=SimpleNamespace(behavior=BehaviorConfig(dry_run=dry, rules=rules)),
                           test_deadline=None, test_cgroup_id=0)


def test_the_agent_arms_it_with_the_decoded_payload_rule() -> None:
    def built(opts: SimpleNamespace) -> AgentPipeGate | None:
        parts = SimpleNamespace(pipegate=None)
        _pipe_gate(parts, opts)  # type: ignore[arg-type]
        got = parts.pipegate
        assert got is None or isinstance(got, AgentPipeGate)
        return got

    def dry(opts: SimpleNamespace) -> bool:
        g = built(opts)
        assert g is not None
        return g.dry_run

    g = built(_opts({}))
    assert g is not None and not g.dry_run and g.self_tgid == os.getpid()
    assert dry(_opts({}, dry=True))
    rule = "behavior.decoded_payload_shell"
    assert dry(_opts({rule: RuleSettings(dry_run=True)}))
    assert dry(_opts({rule: RuleSettings(action="alert")}))
    assert not dry(_opts({rule: RuleSettings(action="kill")}))
    assert built(_opts({rule: RuleSettings(enabled=False)})) is None
