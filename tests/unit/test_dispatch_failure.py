"""s22: a response that raises never ends the agent's loop.  An errno no branch expected
(pidfd_open of a thread id gives ENOENT on 6.18: s22-bench16) raised out of
``Dispatcher.dispatch`` and ended the event loop: every later event unseen until the
guardian restarted the agent.  Now the act is reported failed in the alert, a critical
``bastion.respond.failed`` notice names the error, and the next finding is handled."""

from __future__ import annotations

import errno
import os
import time

from bastion.detect.engine import Finding
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import RESPOND_FAILED, Dispatcher


def _f(action: str, rule: str = "behavior.ransomware", pid: int = 0) -> Finding:
    return Finding(rule=rule, title="t", severity="critical", attack=(), action=action,
                   event=None, pid=pid or 2 ** 22 + 11)


def test_a_raising_act_is_reported_and_the_next_finding_is_handled() -> None:
    d = Dispatcher(ProcessTable())

    def boom(f: Finding) -> str:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    d._kill = boom  # type: ignore[method-assign]
    a = d.dispatch(_f("kill"), time.time_ns())
    assert a.action.startswith("kill-failed: FileNotFoundError")
    assert "FileNotFoundError" in a.evidence["response_error"]
    notes = d.take_notices()
    assert [(n.rule, n.severity) for n in notes] == [(RESPOND_FAILED, "critical")]
    assert notes[0].evidence["finding_rule"] == "behavior.ransomware"
    # the next finding goes through the dispatcher as usual
    b = d.dispatch(_f("alert", rule="behavior.other"), time.time_ns())
    assert b.action == "alert" and "response_error" not in b.evidence
    assert d.take_notices() == []


def test_a_raising_after_act_hook_is_reported_not_fatal() -> None:
    d = Dispatcher(ProcessTable())
    seen: list[str] = []

    def hook(f: Finding, alert: object) -> None:
        seen.append(f.rule)
        raise OSError(errno.EMFILE, "Too many open files")

    d.after("behavior.x", "alert", hook)
    a = d.dispatch(_f("alert", rule="behavior.x", pid=os.getpid()), time.time_ns())
    assert seen == ["behavior.x"] and a.action == "alert"
    assert "EMFILE" in a.evidence["response_error"] or "Too many" in a.evidence["response_error"]
    assert [n.rule for n in d.take_notices()] == [RESPOND_FAILED]
