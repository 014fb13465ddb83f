"""A command handed to a clean tmux or screen server, stopped in the kernel on the compat
tier (issue 15; s19-compatconnect).

The lsm tier refuses the connect in the hook (:mod:`.svcgate_lsm`).  With no BPF LSM the
exec-time rule (``behavior.launder_via_daemon``) stops the tree from user space some 30 ms
after tmux's exec, and the tmux client's whole run (fork, exec, connect, send) takes under
2 ms: the command was typed every time.  ``svcgate_compat.bpf.o`` kills the client at
``sys_exit_connect`` instead: a process whose tree has untrusted provenance (the event
sensor's ``prov`` map, shared at load) whose unix stream socket is now connected to a
listener running an installed tmux/screen executable (the lsm gate's listener walk,
``bpf/lib/svcgate.h``; the same :func:`~.svcgate_lsm.fill_servers`) gets ``SIGKILL``
before it returns to user space, so it sends nothing.  The tree's own server (its listen()
made while tainted) is allowed; an administrator's session with only local reasons is
reported (``audit``); in dry run the kill is reported (would-kill), not sent.

Each record is a ``hips`` record (mechanism ``connect-kill``, op ``connect``, rule id = the
server's :class:`~.svcgate_lsm.SocketKind`, ``detail`` = the tree's origin tgid) turned into
a ``bastion.provenance.gate`` finding acting on the whole tainted tree (``kill-tree`` from
the origin, as ``behavior.launder_via_daemon`` does at tmux's exec): the kernel kills only
the caller, and a process it forked before the connect shares the connected socket and
can still send the tmux frames (s19-gatefix).  The dispatcher does not signal the
kernel-killed client again.
"""

from __future__ import annotations

import logging
from typing import Final, Mapping

from bastion.detect.engine import Finding
from bastion.enforce.provgate import GATE_RULE
from bastion.enforce.svcgate_lsm import _WHAT, LsmSocketGate, SocketKind
from bastion.events import HipsEvent
from bastion.sensors.provenance import reason_names

log = logging.getLogger(__name__)

OBJECT: Final = "svcgate_compat.bpf.o"
MECHANISM: Final = "connect-kill"
LAUNDER_RULE: Final = "behavior.launder_via_daemon"


class CompatSocketGate(LsmSocketGate):
    """The compat object: loaded like the lsm gate (sharing ``prov``), only the servers
    entered (:meth:`apply_servers`); no socket-inode set (systemd's and the container
    runtimes' sockets are refused on the lsm tier only)."""

    mechanism: str = MECHANISM
    object_name: str = OBJECT
    blocking_action: str = "kill"

    def apply(self, sockets: Mapping[str, SocketKind]) -> list[str]:
        """No socket-inode set here: each socket named is returned as not entered."""
        return [f"{p}: not gated on the compat tier" for p in sockets]

    def finding(self, ev: HipsEvent) -> Finding | None:
        """A killed (dry run: not killed; an admin session's: allowed) connect as the
        gate's finding; the kill was taken in the kernel."""
        if ev.mechanism != MECHANISM or ev.op != "connect":
            return None
        try:
            kind = SocketKind(ev.rule_id)
        except ValueError:
            return None
        reasons = reason_names(ev.subject)
        failed = ev.action == "kill" and not ev.enforced and ev.ret != 0
        dry = ev.action == "kill" and not ev.enforced and not failed
        what = _WHAT[kind]
        verb = (f"not killed at the connect (the kernel's signal failed: {ev.ret})" if failed
                else "would be killed at the connect (dry run: not killed)" if dry
                else "killed in the kernel at the connect" if ev.action == "kill"
                else "allowed (administrator's interactive session)")
        obj = ev.path or ("the socket connected behind the caller's back"
                          if kind == SocketKind.SWAPPED else f"pid {ev.target_pid}")
        # the tree from its origin (the kernel's prov entry's; the dispatcher walks from
        # the client instead when the table does not show it as the client's ancestor)
        origin = ev.detail or ev.proc.pid
        return Finding(
            rule=GATE_RULE, severity="critical" if ev.action == "kill" else "high", dry_run=dry,
            attack=("T1059.004",),
            action="kill-tree" if ev.action == "kill" else "audit",
            event=ev, pid=origin if ev.action == "kill" else ev.proc.pid,
            title=f"Client of the {what} {verb}: {obj} "
                  f"[untrusted provenance: {', '.join(reasons)}]",
            evidence={"prevented": f"a command run or typed for the tree by the {what} "
                                   f"({obj}, server pid {ev.target_pid})",
                      "provenance": reasons, "operation": "connect", "object": obj,
                      "class": "control-socket", "socket": kind.name.lower(),
                      "server_pid": ev.target_pid, "origin_pid": origin},
            enforced_by=MECHANISM)


__all__ = ["CompatSocketGate", "OBJECT", "MECHANISM", "LAUNDER_RULE"]
