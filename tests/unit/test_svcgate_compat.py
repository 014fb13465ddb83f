"""The compat tier's tmux/screen gate in user space (s19-compatconnect): its records as
findings, the dispatcher leaving a kill the kernel sent alone, and the agent building it
from the launder rule's settings.  The kernel side: tests/kernel/test_stop_by_default.py
(``-k tmux``)."""

from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

from bastion import abi
from bastion.assembly import _compat_socket_gate
from bastion.detect.behavior.base import RuleSettings
from bastion.detect.behavior.config import BehaviorConfig
from bastion.enforce.svcgate_compat import CompatSocketGate
from bastion.enforce.svcgate_lsm import SocketKind
from bastion.events import HipsEvent, Proc
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher


def _rec(pid: int, action: str = "kill", enforced: bool = True,
         subject: int = abi.PROV_TMP_SCRIPT) -> HipsEvent:
    return HipsEvent(time.time_ns(), Proc(pid, pid, 1, 0, 0, 0, 0, "tmux: client"),
                     op="connect", action=action, rule_id=int(SocketKind.TMUX), subject=subject,
                     mechanism="connect-kill", enforced=enforced, path="/tmp/tmux-0/default",
                     target_pid=4242)


def _gate() -> CompatSocketGate:
    return object.__new__(CompatSocketGate)


def test_records_become_findings_a_kill_a_dry_run_and_an_admin_audit() -> None:
    g = _gate()
    f = g.finding(_rec(10))
    assert f is not None and (f.rule, f.action, f.severity, f.dry_run, f.enforced_by) == (
        "bastion.provenance.gate", "kill", "critical", False, "connect-kill")
    assert "killed in the kernel" in f.title and "tmux server" in f.title
    assert f.evidence["socket"] == "tmux" and f.evidence["provenance"] == ["tmp-script"]
    assert f.evidence["server_pid"] == 4242 and "/tmp/tmux-0/default" in f.evidence["prevented"]
    d = g.finding(_rec(10, enforced=False))
    assert d is not None and d.dry_run and d.action == "kill" and "dry run" in d.title
    a = g.finding(_rec(10, action="audit", enforced=False,
                       subject=abi.PROV_TMP_SCRIPT | abi.PROV_ADMIN_TTY))
    assert a is not None and (a.action, a.severity, a.dry_run) == ("audit", "high", False)
    failed = _rec(10, enforced=False)
    failed = HipsEvent(failed.time_ns, failed.proc, op="connect", action="kill", rule_id=5,
                       subject=abi.PROV_TMP_SCRIPT, mechanism="connect-kill", ret=-3)
    x = g.finding(failed)
    assert x is not None and (x.action, x.dry_run) == ("alert", False) and "failed" in x.title
    other = _rec(10)
    assert g.finding(HipsEvent(other.time_ns, other.proc, op="connect", action="deny",
                               mechanism="lsm-prov", rule_id=5)) is None
    assert g.apply({"/run/docker.sock": SocketKind.DOCKER}) == [
        "/run/docker.sock: not gated on the compat tier"]


def test_the_dispatcher_does_not_send_again_a_kill_the_kernel_sent() -> None:
    """The kernel killed the client; its pid may already be another process's (or, here,
    a live one standing for it): the alert says kill, nothing is signalled.  Failed
    before: the dispatcher SIGKILLed the pid again."""
    p = subprocess.Popen(["sleep", "30"])
    try:
        f = _gate().finding(_rec(p.pid))
        assert f is not None
        alert = Dispatcher(ProcessTable()).dispatch(f, time.time_ns())
        assert alert.action == "kill" and alert.enforced_by == "connect-kill"
        time.sleep(0.05)
        assert p.poll() is None, "the dispatcher signalled the pid"
        # a dry run: would-kill, nothing signalled either
        d = _gate().finding(_rec(p.pid, enforced=False))
        assert d is not None
        assert Dispatcher(ProcessTable()).dispatch(d, time.time_ns()).action == "would-kill"
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


def _opts(rules: dict[str, RuleSettings], dry: bool = False) -> SimpleNamespace:
    return SimpleNamespace(policy=SimpleNamespace(behavior=BehaviorConfig(dry_run=dry, rules=rules)),
                           test_deadline=None, test_cgroup_id=0)


def test_the_agent_arms_it_with_the_launder_rule() -> None:
    def built(opts: SimpleNamespace) -> object:
        parts = SimpleNamespace(svcgate=None)
        _compat_socket_gate(parts, opts, SimpleNamespace(provenance=lambda: None))  # type: ignore[arg-type]
        return parts.svcgate

    g = built(_opts({}))
    assert g is not None and g.gate_type is CompatSocketGate and not g.dry_run  # type: ignore[attr-defined]
    assert g.sockets == {} and g.self_tgid == os.getpid()  # type: ignore[attr-defined]
    assert built(_opts({}, dry=True)).dry_run  # type: ignore[union-attr]
    rule = "behavior.launder_via_daemon"
    assert built(_opts({rule: RuleSettings(dry_run=True)})).dry_run  # type: ignore[union-attr]
    assert built(_opts({rule: RuleSettings(action="alert")})).dry_run  # type: ignore[union-attr]
    assert not built(_opts({rule: RuleSettings(action="kill-tree")})).dry_run  # type: ignore[union-attr]
    assert built(_opts({rule: RuleSettings(enabled=False)})) is None
