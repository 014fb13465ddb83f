"""BPF inventory: every loaded program, link and map, diffed against the
baseline and an allowlist.

A program is known by ``type:name:tag`` (the tag hashes its instructions, so
a reload of the same code is the same program).  A program that is neither
in the baseline nor allowlisted is a finding; how bad depends on where it is
attached and which helpers it calls:

  * critical — writes user memory (``bpf_probe_write_user``) or overrides
    returns (``bpf_override_return``) from a syscall or directory-listing path;
  * high — calls one of those or ``bpf_send_signal*``, or sits on a syscall /
    directory-listing path;
  * medium — anything else new.
High and critical findings carry ``action="kill"`` naming the holding
process (never this scanner itself); :func:`bastion.integrity.response.kill_loader`
acts on them.  Maps and links are listed as evidence, not diffed (they churn).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

from bastion.integrity import bpfinfo
from bastion.integrity.base import Check, IntegrityFinding

WRITES_USER = frozenset({"bpf_probe_write_user"})
OVERRIDES = frozenset({"bpf_override_return"})
SIGNALS = frozenset({"bpf_send_signal", "bpf_send_signal_thread"})
DANGEROUS = WRITES_USER | OVERRIDES | SIGNALS
SYSCALL_PATH = re.compile(
    r"(^|[/:])(sys_enter|sys_exit)(_\w+)?$|raw_syscalls|(^|[/:])(__x64_sys_\w+|__ia32_sys_\w+|x64_sys_call|"
    r"do_syscall_64|__do_sys_\w+|__se_sys_\w+)(\+|$)")
DIRLIST_PATH = re.compile(r"getdents|iterate_dir|filldir|proc_pid_readdir|proc_root_readdir|readdir")


def prog_key(p: bpfinfo.ProgRecord) -> str:
    return f"{p.type}:{p.name}:{p.tag}"


def allowed(p: bpfinfo.ProgRecord, allowlist: Sequence[str]) -> bool:
    """Allowlist entries: ``name`` or ``name:tag`` (tag = 16 hex digits)."""
    for entry in allowlist:
        name, _, tag = entry.partition(":")
        if p.name == name and (not tag or tag == p.tag):
            return True
    return False


def classify(p: bpfinfo.ProgRecord) -> tuple[str, list[str]]:
    """(severity, reasons) of a program that is not known."""
    helpers = set(p.helpers)
    on_syscall = any(SYSCALL_PATH.search(a) for a in p.attach)
    on_dirlist = any(DIRLIST_PATH.search(a) for a in p.attach)
    reasons = []
    if helpers & WRITES_USER:
        reasons.append("writes user memory (bpf_probe_write_user)")
    if helpers & OVERRIDES:
        reasons.append("overrides kernel function returns (bpf_override_return)")
    if helpers & SIGNALS:
        reasons.append("sends signals (" + ", ".join(sorted(helpers & SIGNALS)) + ")")
    if on_syscall:
        reasons.append("attached on the syscall path")
    if on_dirlist:
        reasons.append("attached on a directory-listing path")
    if (helpers & (WRITES_USER | OVERRIDES)) and (on_syscall or on_dirlist):
        return "critical", reasons
    if helpers & DANGEROUS or on_syscall or on_dirlist:
        return "high", reasons
    return "medium", reasons or ["not in the baseline or allowlist"]


class BpfInventoryCheck(Check):
    name = "bpf_inventory"
    requires = ("root (CAP_SYS_ADMIN for BPF ids)", "kallsyms __bpf_call_base to name helpers")
    needs_baseline = False
    without_baseline = ("loaded programs dangerous by themselves (writing user memory, overriding "
                        "returns, sending signals, or on a syscall or directory-listing path), "
                        "unless allowlisted")
    with_baseline = "every other program not in the baseline or the allowlist"

    def __init__(self, view: Any, allowlist: Sequence[str] = (), *, trusted_pids: Sequence[int] = ()) -> None:
        super().__init__(view)
        self.allowlist = tuple(allowlist)
        #: the agent's pid: programs held by trusted processes alone are Bastion's own, not
        #: judged; a trusted process is never named as a holder to kill
        self.trusted_pids = frozenset(trusted_pids)

    def available(self) -> str | None:
        if os.geteuid() != 0:
            return "needs root (BPF_PROG_GET_NEXT_ID needs CAP_SYS_ADMIN)"
        return None

    def inventory(self) -> bpfinfo.Inventory:
        call_base = 0
        skip: frozenset[int] = frozenset()
        if self.view.kallsyms_reason() is None:
            call_base = self.view.ksyms.addr("__bpf_call_base") or 0
        if self.view.reader_reason() is None:
            skip = frozenset(self.view.reader.prog_ids())
        inv = bpfinfo.inventory(call_base, self.view.proc, skip=skip)
        if call_base:
            ks = self.view.ksyms
            for p in inv.progs:
                p.helpers = sorted({ks.name_at(a) or f"{a:#x}" for a in p.helper_addrs})
        return inv

    @staticmethod
    def describe(p: bpfinfo.ProgRecord) -> dict[str, Any]:
        return {"id": p.id, "key": prog_key(p), "type": p.type, "name": p.name, "tag": p.tag,
                "attach": p.attach, "helpers": p.helpers, "holders": p.holders,
                "uid": p.uid, "load_time_ns": p.load_time_ns, "maps": p.map_ids,
                **({"error": p.error} if p.error else {})}

    def baseline(self) -> dict[str, Any]:
        inv = self.inventory()
        return {"programs": sorted({prog_key(p): {"attach": p.attach, "helpers": p.helpers}
                                    for p in inv.progs}.items()),
                "links": len(inv.links), "maps": len(inv.maps)}

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        self.notes = []
        inv = self.inventory()
        known = {k for k, _ in (baseline or {}).get("programs", [])}
        spare = self.trusted_pids | {os.getpid()}
        out: list[IntegrityFinding] = []
        unjudged: list[str] = []
        for p in inv.progs:
            if self.trusted_pids and p.holders and all(h["pid"] in self.trusted_pids for h in p.holders):
                continue   # loaded and held by the agent itself
            if p.error:
                out.append(self.finding("bpf.unreadable_program", f"BPF program id {p.id} cannot be inspected",
                                        "medium", {"id": p.id, "error": p.error}))
                continue
            if prog_key(p) in known or allowed(p, self.allowlist):
                continue
            severity, reasons = classify(p)
            if baseline is None and severity == "medium":
                unjudged.append(p.name or str(p.id))
                continue
            holders = [h for h in p.holders if h["pid"] not in spare]
            act = "kill" if severity in ("high", "critical") and holders else "alert"
            ev = self.describe(p)
            ev["reasons"] = reasons
            ev["baseline"] = baseline is not None
            out.append(self.finding(
                "bpf.rogue_program",
                f"Unexpected BPF program {p.name or p.id} ({p.type}): {'; '.join(reasons)}",
                severity, ev, action=act, pid=holders[0]["pid"] if holders else 0))
        if unjudged:
            self.notes.append(f"{len(unjudged)} other program(s) not judged without a baseline: "
                              + ", ".join(sorted(set(unjudged))[:12]))
        return out
