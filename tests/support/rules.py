"""A test rule the pipeline tests plant (the one attack event they mix into a flood), and
the default behaviour rules run over recorded events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bastion.detect.behavior import behavior_rules
from bastion.detect.engine import Engine, Finding, RuleContext
from bastion.events import Event, ExecEvent
from bastion.proctable import ProcessTable


def behavior_findings(events: Iterable[Any]) -> list[Finding]:
    """The default behaviour rules' findings over ``events`` in order, through a process
    table of their own (no rule may raise: asserted)."""
    procs = ProcessTable()
    engine = Engine(behavior_rules())
    ctx = RuleContext(procs)
    out: list[Finding] = []
    for ev in events:
        procs.update(ev)
        out += engine.evaluate(procs.enrich(ev), ctx)
    assert not engine.errors
    return out

EVIL_EXE = "/tmp/evil"


class EvilExec:
    """High finding for an exec of :data:`EVIL_EXE`, nothing for any other event."""

    name = "behavior.test_evil_exec"
    event_types = frozenset({"exec"})

    def on_event(self, ev: Event, ctx: RuleContext) -> list[Finding]:
        if isinstance(ev, ExecEvent) and ev.filename == EVIL_EXE:
            return [Finding(rule=self.name, title="evil exec", severity="high", attack=(),
                            action="alert", event=ev, pid=ev.proc.pid)]
        return []
