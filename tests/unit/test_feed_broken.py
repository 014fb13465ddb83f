"""s24 review: the live alert feed is written on the agent's loop with no guard.  When
its reader goes away -- the journal's stream socket after ``systemctl restart
systemd-journald`` (root), ``bastion run | less`` quit, a closed SSH terminal -- the next
alert's write raised BrokenPipeError/EIO out of ``_emit``: the event loop ended (the
guardian restarts the agent; blind meanwhile), and the guardian's own feed print did the
same to the guardian.  Now the feed is dropped with one error log; the alert is stored
and shipped as before, and the loop goes on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bastion.agent import Agent
from bastion.config import parse_policy
from bastion.detect.engine import Engine, Finding
from bastion.proctable import ProcessTable
from bastion.respond.dispatch import Dispatcher
from bastion.store import Store


@pytest.fixture(autouse=True)
def _no_sigpipe() -> None:
    # Python ignores SIGPIPE: a write to a closed pipe is EPIPE, as in the agent
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN


def _finding(i: int) -> Finding:
    return Finding(rule=f"test.feed{i}", title=f"t{i}", severity="high", attack=(),
                   action="alert", event=None, pid=os.getpid())


def test_a_feed_whose_reader_is_gone_neither_ends_the_loop_nor_loses_the_alert(
        tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(r)
    feed = os.fdopen(w, "w")
    store = Store.open(tmp_path / "db")
    procs = ProcessTable()
    agent = Agent(policy=parse_policy("version: 1\n", "test.yaml"), sensors=[], store=store,
                  procs=procs, engine=Engine([]), dispatcher=Dispatcher(procs, own={}),
                  socket_path=None, feed=feed)
    try:
        agent._alert(_finding(1))
        agent._alert(_finding(2))
        rules = [a.data["rule"] for a in store.alerts()]
        assert "test.feed1" in rules and "test.feed2" in rules
        assert agent.feed is None
    finally:
        store.close()
        try:
            feed.close()
        except OSError:
            pass


def test_the_guardian_s_feed_on_a_broken_stderr_does_not_raise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from bastion.alert import Alert, AlertProcess
    from bastion.guard.guardian import Guardian

    r, w = os.pipe()
    os.close(r)
    broken = os.fdopen(w, "w")
    monkeypatch.setattr("sys.stderr", broken)
    me = types.SimpleNamespace(alerts=0, store=None, feed_off=False)
    alert = Alert(time="2026-12-05T09:00:00.000000Z", rule="bastion.tamper.kill", title="t",
                  severity="critical", action="kill", process=AlertProcess(pid=1))
    try:
        Guardian._emit(me, alert)   # type: ignore[arg-type]
        Guardian._emit(me, alert)   # type: ignore[arg-type]
        assert me.alerts == 2 and me.feed_off
    finally:
        monkeypatch.undo()
        try:
            broken.close()
        except OSError:
            pass
