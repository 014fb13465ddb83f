"""A test rule the pipeline tests plant: the one attack event they mix into a flood."""

from __future__ import annotations

from bastion.detect.engine import Finding, RuleContext
from bastion.events import Event, ExecEvent

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
