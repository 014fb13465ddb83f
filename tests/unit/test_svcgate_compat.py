"""The compat tier's tmux/screen gate in user space (s19-compatconnect): its records as
findings, the dispatcher leaving a kill the kernel sent alone, and the agent building it
from the launder rule's settings.  The kernel side: tests/kernel/test_stop_by_default.py
(``-k tmux``)."""

from __future__ import annotations

import os
import subprocess
import sys
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
from bastion.procstat import read_stat
from bastion.respond.dispatch import Dispatcher
from support.procwait import gone as _gone


def _rec(pid: int, action: str = "kill", enforced: bool = True,
         subject: int = abi.PROV_TMP_SCRIPT, origin: int = 0, start_ns: int = 0) -> HipsEvent:
    return HipsEvent(time.time_ns(), Proc(pid, pid, 1, 0, 0, 0, 0, "tmux: client",
                                          start_ns=start_ns),
                     op="connect", action=action, rule_id=int(SocketKind.TMUX), subject=subject,
                     mechanism="connect-kill", enforced=enforced, path="/tmp/tmux-0/default",
                     target_pid=4242, detail=origin)


def _gate() -> CompatSocketGate:
    return object.__new__(CompatSocketGate)


def test_records_become_findings_a_kill_a_dry_run_and_an_admin_audit() -> None:
    g = _gate()
    f = g.finding(_rec(10, origin=7))
    assert f is not None and (f.rule, f.action, f.severity, f.dry_run, f.enforced_by) == (
        "bastion.provenance.gate", "kill-tree", "critical", False, "connect-kill")
    assert f.pid == 7 and f.evidence["origin_pid"] == 7   # the tree from its origin
    f0 = g.finding(_rec(10))
    assert f0 is not None and f0.pid == 10               # no origin: the client's tree
    assert "killed in the kernel" in f.title and "tmux server" in f.title
    assert f.evidence["socket"] == "tmux" and f.evidence["provenance"] == ["tmp-script"]
    assert f.evidence["server_pid"] == 4242 and "/tmp/tmux-0/default" in f.evidence["prevented"]
    d = g.finding(_rec(10, enforced=False))
    assert d is not None and d.dry_run and d.action == "kill-tree" and "dry run" in d.title
    a = g.finding(_rec(10, action="audit", enforced=False,
                       subject=abi.PROV_TMP_SCRIPT | abi.PROV_ADMIN_TTY))
    assert a is not None and (a.action, a.severity, a.dry_run) == ("audit", "high", False)
    assert a.pid == 10
    failed = _rec(10, enforced=False)
    failed = HipsEvent(failed.time_ns, failed.proc, op="connect", action="kill", rule_id=5,
                       subject=abi.PROV_TMP_SCRIPT, mechanism="connect-kill", ret=-3)
    x = g.finding(failed)
    # the kernel's signal failed: user space stops the tree, the client included
    assert x is not None and (x.action, x.dry_run) == ("kill-tree", False) and "failed" in x.title
    # s19-gatefix: a descriptor swapped in for the kernel's fdget and back: no server known
    sw = _rec(10, origin=7)
    sw = HipsEvent(sw.time_ns, sw.proc, op="connect", action="kill", enforced=True,
                   rule_id=int(SocketKind.SWAPPED), subject=abi.PROV_TMP_SCRIPT,
                   mechanism="connect-kill", detail=7)
    s = g.finding(sw)
    assert s is not None and (s.action, s.pid, s.evidence["socket"]) == ("kill-tree", 7, "swapped")
    assert "descriptor swapped" in s.title
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
        assert alert.action == "kill-tree" and alert.enforced_by == "connect-kill"
        assert alert.killed == []
        time.sleep(0.05)
        assert p.poll() is None, "the dispatcher signalled the pid"
        # a dry run: would-kill-tree, nothing signalled either
        d = _gate().finding(_rec(p.pid, enforced=False))
        assert d is not None
        assert Dispatcher(ProcessTable()).dispatch(d, time.time_ns()).action == "would-kill-tree"
        assert p.poll() is None
    finally:
        p.kill()
        p.wait()


TREE = ("import os,sys,time\n"
        "c=os.fork()\n"
        "if c==0:\n"
        "    g=os.fork()\n"
        "    if g==0: time.sleep(30); os._exit(0)\n"
        "    os.write(1, b'g %d\\n' % g); time.sleep(30); os._exit(0)\n"
        "s=os.fork()\n"
        "if s==0: time.sleep(30); os._exit(0)\n"
        "os.write(1, b'cs %d %d\\n' % (c, s)); time.sleep(30)\n")


def _tree() -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """A tainted tree's stand-in: origin O, its children C (the client the kernel
    killed, alive here) and S (a sibling), C's child G (forked before the connect: it
    shares the connected socket)."""
    o = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE)
    assert o.stdout is not None
    pids = {"o": o.pid}
    for _ in range(2):   # one write(2) a line (print's could split)
        line = o.stdout.readline()
        w = line.split()
        assert len(w) >= 2, line
        if w[0] == b"g":
            pids["g"] = int(w[1])
        else:
            pids["c"], pids["s"] = int(w[1]), int(w[2])
    return o, pids


def _reap(o: subprocess.Popen[bytes], pids: dict[str, int]) -> None:
    for pid in pids.values():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    o.wait()


def test_the_gate_stops_the_whole_tainted_tree_but_not_the_client_again() -> None:
    """s19-gatefix: the kernel kills only the connecting client; a process the tree forked
    before the connect shares the connected socket and sends the tmux frames.  The finding
    kills the tree from its origin (the record's ``detail``): the origin, the sibling and
    the client's child die, the client (killed by the kernel: its pid may be another's)
    is not signalled.  Failed before: action ``kill``, only the client, the tree lived."""
    o, p = _tree()
    try:
        procs = ProcessTable()
        procs.seed()
        f = _gate().finding(_rec(p["c"], origin=p["o"], start_ns=read_stat(p["c"]).start_ns))
        assert f is not None
        alert = Dispatcher(procs).dispatch(f, time.time_ns())
        assert alert.action == "kill-tree" and alert.killed == sorted([p["o"], p["s"], p["g"]])
        assert all(_gone(p[k]) for k in ("o", "s", "g")), alert
        assert read_stat(p["c"]).state not in ("Z", "X", "T"), "the client was signalled"
    finally:
        _reap(o, p)


def test_an_origin_that_is_not_the_clients_ancestor_is_not_killed() -> None:
    """The kernel's origin tgid has no start time: a pid that is not the client's ancestor
    in the table (reused) is left alone; the tree is walked from the client."""
    o, p = _tree()
    other = subprocess.Popen(["sleep", "30"])
    try:
        procs = ProcessTable()
        procs.seed()
        f = _gate().finding(_rec(p["c"], origin=other.pid,
                                 start_ns=read_stat(p["c"]).start_ns))
        assert f is not None
        alert = Dispatcher(procs).dispatch(f, time.time_ns())
        assert alert.action == "kill-tree" and alert.killed == [p["g"]]
        assert _gone(p["g"])
        time.sleep(0.05)
        assert other.poll() is None and read_stat(p["o"]).state not in ("Z", "X")
    finally:
        other.kill()
        other.wait()
        _reap(o, p)


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


def test_a_failed_kernel_kill_is_counted_failed_not_a_dry_run() -> None:
    """s20 review 6: a kill the kernel could not send (enforced 0, ret -ESRCH) was
    counted as a dry run: ``status`` said "would-kill" of a kill that was tried and failed."""
    r = _rec(10)
    failed = HipsEvent(r.time_ns, r.proc, op="connect", action="kill", rule_id=5,
                       subject=abi.PROV_TMP_SCRIPT, mechanism="connect-kill", ret=-3)
    dry = HipsEvent(r.time_ns, r.proc, op="connect", action="kill", rule_id=5,
                    subject=abi.PROV_TMP_SCRIPT, mechanism="connect-kill")

    class Lo:
        closed = False

        def wait(self, t: float) -> None:
            pass

        def drain(self, dec: object) -> list[HipsEvent]:
            return [failed, dry, r]

    g = _gate()
    g.denies = g.dry_runs = g.failed = g.audits = 0
    g._lo = Lo()  # type: ignore[assignment]
    g.poll()
    assert (g.denies, g.dry_runs, g.failed, g.audits) == (1, 1, 1, 0)
