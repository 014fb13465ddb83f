"""A decoded payload piped into a shell, stopped in the kernel (issue 15 must-stop;
s23-pipegate).

``echo <b64> | base64 -d | sh``: the exec-time rule ``behavior.decoded_payload_shell``
kills the shell from user space after its exec record, and a short pipeline is over by
then.  ``pipegate.bpf.o`` (both tiers: ``tp_btf/sched_process_exec``) kills, before any
of its code runs, the process that completes a chain *decoder -> (relays) -> shell
reading its commands from stdin* over pipes or fifos (by inode): the decoder when the
shell exec'd first (the shell then reads EOF), the shell when the decoder did, or a
relay (``cat``, ``dd``) between them.  The decoders and shells are the installed files
(by inode, :meth:`PipeGate.apply`); a copy of ``base64`` elsewhere is another inode and
is not a decoder here (the user-space rule still sees it by name).  On the lsm tier the
kill is the same: the decision needs the new image's argv, which at
``bprm_check_security`` is in the new mm that no non-sleepable BPF read reaches.

Each record is a ``hips`` record (mechanism ``pipe-kill``, op ``exec``, rule id = which
end was killed, :class:`~bastion.abi.PipegateRule`) turned into a ``bastion.pipe.gate``
finding whose action is ``kill`` already taken by the kernel (``enforced_by``); in dry
run the kill is reported (would-kill), not sent.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Callable, Final, Mapping

from bastion import abi
from bastion.abi import PipegateKind, PipegateRule
from bastion.detect.engine import Finding
from bastion.enforce.provgate_lsm import AgentGatePart, GateUser
from bastion.errors import KernelError, Location
from bastion.events import HipsEvent
from bastion.kernel.clock import deadline_ns
from bastion.kernel.loader import LoadedObject, ObjectSpec
from bastion.paths import bpf_object

log = logging.getLogger(__name__)

OBJECT: Final = "pipegate.bpf.o"
MECHANISM: Final = "pipe-kill"
RULE: Final = "bastion.pipe.gate"
#: the user-space rule this gate is the in-kernel half of (its switch and dry run)
SHELL_RULE: Final = "behavior.decoded_payload_shell"
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

#: decoder name -> kind; the installed files of these names in the trust directories
DEFAULT_DECODERS: Final[Mapping[str, PipegateKind]] = {
    "base64": PipegateKind.BASE64, "base32": PipegateKind.BASE64,
    "basenc": PipegateKind.BASE64, "xxd": PipegateKind.XXD,
    "openssl": PipegateKind.OPENSSL, "uudecode": PipegateKind.UUDECODE,
}
#: interpreters that read their program from stdin when given no script and none of
#: these option letters (``sensors.provenance.INTERPRETERS``' letters: code follows)
DEFAULT_INTERPRETERS: Final[Mapping[str, str]] = {
    "python3": "cm", "python": "cm", "perl": "eE", "ruby": "e", "node": "ep", "php": "r"}
# busybox is one file for every applet (argv[0] says which): not entered as a shell
_NOT_SHELLS: Final = frozenset({"busybox"})
_WHO: Final = {PipegateRule.DECODER: "decoder", PipegateRule.SHELL: "shell",
               PipegateRule.RELAY: "relay"}


def installed_shells() -> dict[tuple[int, int], str]:
    """The installed shells (kernel dev, ino) -> family, as the user-space rules find
    them (:class:`~bastion.detect.behavior.shells.ShellIdents`), busybox left out."""
    from bastion.detect.behavior.trust import ExeTrust

    return {i: f for i, f in ExeTrust().shells.installed().items() if f not in _NOT_SHELLS}


class PipeGate(GateUser):
    """Load, enter the decoders and shells, drain the kills.

    Typical use::

        gate = PipeGate(cgroup_id=cgid, deadline_s=60)
        gate.open()
        gate.apply()
        for ev in gate.poll(0.5): gate.finding(ev)
        gate.close()
    """

    label = "the pipe gate"
    object_name = OBJECT

    name: Final = "pipegate"
    mechanism: str = MECHANISM
    blocking_action: str = "kill"

    def __init__(self, *, cgroup_id: int = 0, deadline_s: float | None = None,
                 self_tgid: int = 0, dry_run: bool = False) -> None:
        self.cgroup_id = cgroup_id
        self.deadline_ns = deadline_ns(deadline_s)
        self.self_tgid = self_tgid
        self.dry_run = dry_run
        self._lo: LoadedObject | None = None
        self._progs: dict[bytes, PipegateKind] = {}
        self._letters: dict[bytes, int] = {}
        self.denies = self.dry_runs = self.failed = self.audits = 0

    def spec(self) -> ObjectSpec:
        return ObjectSpec(
            path=bpf_object(OBJECT),
            rodata={"cfg_cgroup_id": self.cgroup_id, "cfg_deadline_ns": self.deadline_ns,
                    "cfg_self_tgid": self.self_tgid},
            max_entries={"events": abi.SMALL_RINGBUF_BYTES})

    def open(self) -> None:
        if self._lo is not None and not self._lo.closed:
            raise KernelError("the pipe gate is already open", errno=errno.EALREADY,
                              location=Location(OBJECT))
        self._lo = lo = LoadedObject.load(self.spec())
        try:
            self.set_dry_run(self.dry_run)
        except BaseException:
            lo.close()
            raise
        log.info("pipe gate: %d programs attached (scope cgroup %d)", len(lo.links),
                 self.cgroup_id)


    def set_dry_run(self, dry: bool) -> None:
        self.dry_run = dry
        self._map("pipegate_cfg").update(_U32.pack(0), _U32.pack(1 if dry else 0))

    def apply(self, decoders: Mapping[str, PipegateKind] = DEFAULT_DECODERS,
              idents: Callable[[str], frozenset[tuple[int, int]]] | None = None,
              shells: Callable[[], Mapping[tuple[int, int], str]] | None = None,
              interpreters: Mapping[str, str] = DEFAULT_INTERPRETERS) -> list[str]:
        """Enter the decoders (``idents(name)``: the (kernel dev, ino) of the installed
        files of that name, default the root-only files in the trust directories), the
        installed shells (``shells()``) and the interpreters (name -> code letters, their
        files found as the decoders'), replacing the set.  Returns the decoder names with
        no file entered (and "no shell" when none was found); an interpreter not
        installed is no problem."""
        from bastion.sensors.provenance import letters_mask

        if idents is None:
            from bastion.detect.behavior.trust import ExeTrust
            idents = ExeTrust().idents
        new: dict[bytes, PipegateKind] = {}
        problems: list[str] = []
        for name, kind in decoders.items():
            got = idents(name)
            if not got:
                problems.append(f"{name}: no installed file: not entered")
            for dev, ino in got:
                new[bytes(abi.InodeKey(ino=ino, dev=dev))] = kind
        sh = (shells or installed_shells)()
        if not sh:
            problems.append("no installed shell found: nothing entered")
        letters: dict[bytes, int] = {}
        for name, code in interpreters.items():
            for dev, ino in idents(name):
                k = bytes(abi.InodeKey(ino=ino, dev=dev))
                new.setdefault(k, PipegateKind.INTERP)
                letters[k] = letters.get(k, 0) | letters_mask(code)
        for dev, ino in sh:
            new[bytes(abi.InodeKey(ino=ino, dev=dev))] = PipegateKind.SHELL
        lm = self._map("pipegate_letters")
        for k, mask in letters.items():
            lm.update(k, _U64.pack(mask))
        m = self._map("pipegate_progs")
        for k, kind in new.items():
            m.update(k, _U32.pack(int(kind)))
        for k in self._progs.keys() - new.keys():
            m.delete(k)
        self._progs = new
        for k in self._letters.keys() - letters.keys():
            lm.delete(k)
        self._letters = letters
        for p in problems:
            log.info("pipe gate: %s", p)
        return problems

    @property
    def entered(self) -> int:
        return len(self._progs)

    def finding(self, ev: HipsEvent) -> Finding | None:
        """A killed (dry run: not killed) decoder, shell or relay as the gate's finding."""
        if ev.mechanism != MECHANISM or ev.op != "exec":
            return None
        try:
            who = PipegateRule(ev.rule_id)
        except ValueError:
            return None
        failed = not ev.enforced and ev.ret != 0
        dry = not ev.enforced and not failed
        verb = (f"not killed (the kernel's signal failed: {ev.ret})" if failed
                else "would be killed at its exec (dry run: not killed)" if dry
                else "killed at its exec")
        if who == PipegateRule.SHELL and ev.subject == PipegateKind.INTERP:
            killed = "interpreter"
        else:
            killed = _WHO[who]
        other = "shell" if who != PipegateRule.SHELL else "decoder"
        relays = f" through {ev.detail} relay(s)" if ev.detail else ""
        return Finding(
            rule=RULE, severity="critical", dry_run=dry, attack=("T1140", "T1059.004", "T1027"),
            action="kill", event=ev, pid=ev.proc.pid,
            title=f"Decoded payload piped into a shell: the {killed} {ev.path} {verb} "
                  f"(pipe {ev.ino}{relays}, {other} pid {ev.target_pid or 'unknown'})",
            evidence={"prevented": "a decoded payload run by a shell reading its "
                                   "commands from the pipe",
                      "killed": killed, "exe": ev.path, "pipe_ino": ev.ino,
                      "relays": ev.detail, f"{other}_pid": ev.target_pid},
            enforced_by=MECHANISM)

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out.update(kills=self.denies, dry_runs=self.dry_runs, failed=self.failed,
                   programs_entered=len(self._progs))
        return out


class AgentPipeGate(AgentGatePart):
    """The pipe gate as a part of the agent (:mod:`bastion.assembly`, both tiers): opened
    with the other gates, the installed decoders and shells entered (again at the
    maintenance tick: an upgrade replaces the inodes); its records are an enforcement
    source.  When it cannot load the agent says so (``bastion.respond.pipegate_unavailable``)."""

    name: Final = "pipegate"

    def __init__(self, *, self_tgid: int, deadline_s: float | None,
                 scope_cgroup_id: int = 0, dry_run: bool = False) -> None:
        self.self_tgid = self_tgid
        self.deadline_s = deadline_s
        self.scope_cgroup_id = scope_cgroup_id
        self.dry_run = dry_run
        self.gate: PipeGate | None = None
        self.unentered: list[str] = []

    def open(self) -> None:
        gate = PipeGate(cgroup_id=self.scope_cgroup_id, deadline_s=self.deadline_s,
                        self_tgid=self.self_tgid, dry_run=self.dry_run)
        gate.open()
        try:
            self.unentered = gate.apply()
        except BaseException:
            gate.close()
            raise
        self.gate = gate

    def refresh(self) -> Finding | None:
        """Re-enter the programs (an upgrade replaced a file); a failed pass keeps the
        entries and is returned as a high finding."""
        gate = self.gate
        if gate is None:
            return None
        try:
            self.unentered = gate.apply()
        except (KernelError, OSError) as exc:
            log.warning("pipe gate: programs not re-entered: %s", exc)
            return Finding(
                rule=RULE + ".refresh", severity="high", attack=("T1140",), action="alert",
                event=None, pid=os.getpid(),
                title=f"Pipe gate decoders/shells not re-entered ({exc}); the previous "
                      f"{gate.entered} stay entered, a file installed since is not gated",
                evidence={"error": str(exc), "entered": gate.entered})
        return None


__all__ = ["PipeGate", "AgentPipeGate", "DEFAULT_DECODERS", "DEFAULT_INTERPRETERS", "OBJECT", "MECHANISM", "RULE",
           "SHELL_RULE", "installed_shells"]
