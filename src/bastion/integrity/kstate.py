"""Kernel state: taint, lockdown, active LSMs, command line, modules, kprobes,
ftrace hooks — each read where this kernel lets us, and named as unreadable
where it does not (tracefs function lists give EPERM under lockdown here;
there is no /proc/modules on a kernel built without modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from bastion.integrity.base import Check, IntegrityFinding

TAINT_FLAGS = "PFSRMBUDAWCIOELKXTN"   # bit i -> letter, as in Documentation/admin-guide/tainted-kernels
LOCKDOWN_ORDER = ("none", "integrity", "confidentiality")


def taint_letters(value: int) -> str:
    return "".join(c for i, c in enumerate(TAINT_FLAGS) if value & (1 << i))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class KernelStateCheck(Check):
    name = "kernel_state"
    requires = ("read access to /proc and securityfs; tracefs/debugfs where mounted",)
    needs_baseline = False
    without_baseline = "kernel taint"
    with_baseline = ("new taint flags, lockdown weakened, LSM list or command line changed, modules, "
                     "kprobes and ftrace hooks added")

    def available(self) -> str | None:
        return None if _read(self.view.proc / "sys/kernel/tainted") is not None else "cannot read /proc/sys/kernel/tainted"

    def state(self) -> dict[str, Any]:
        proc, sys = self.view.proc, self.view.sys
        st: dict[str, Any] = {"unreadable": []}
        taint = _read(proc / "sys/kernel/tainted")
        st["taint"] = int(taint) if taint else 0
        lock = _read(sys / "kernel/security/lockdown")
        if lock is None:
            st["unreadable"].append("lockdown")
            st["lockdown"] = None
        else:
            sel = [w.strip("[]") for w in lock.split() if w.startswith("[")]
            st["lockdown"] = sel[0] if sel else lock.strip()
        lsm = _read(sys / "kernel/security/lsm")
        st["lsm"] = lsm.strip().split(",") if lsm else None
        if lsm is None:
            st["unreadable"].append("lsm")
        st["cmdline"] = (_read(proc / "cmdline") or "").strip()
        mods = _read(proc / "modules")
        st["modules"] = sorted(line.split()[0] for line in mods.splitlines() if line) if mods is not None else None
        if mods is None:
            st["unreadable"].append("modules (no /proc/modules: kernel without module support)")
        kp = _read(sys / "kernel/debug/kprobes/list")
        st["kprobes"] = sorted(line.strip() for line in kp.splitlines() if line.strip()) if kp is not None else None
        if kp is None:
            st["unreadable"].append("kprobes (debugfs kprobes/list not readable)")
        ef = None
        for base in (sys / "kernel/tracing", sys / "kernel/debug/tracing"):
            ef = _read(base / "enabled_functions")
            if ef is not None:
                break
        st["ftrace"] = sorted(line.split()[0] for line in ef.splitlines() if line.strip()) if ef is not None else None
        if ef is None:
            st["unreadable"].append("ftrace (tracefs enabled_functions not readable)")
        return st

    def baseline(self) -> dict[str, Any]:
        return self.state()

    def scan(self, baseline: Mapping[str, Any] | None) -> list[IntegrityFinding]:
        now = self.state()
        out: list[IntegrityFinding] = []
        if baseline is None:
            if now["taint"]:
                out.append(self.finding("kstate.tainted", f"Kernel is tainted ({taint_letters(now['taint'])})",
                                        "medium", {"taint": now["taint"]}))
            return out
        b_taint = int(baseline.get("taint", 0))
        new_bits = now["taint"] & ~b_taint
        if new_bits:
            out.append(self.finding("kstate.taint", f"Kernel became tainted: {taint_letters(new_bits)}",
                                    "high", {"taint": now["taint"], "baseline": b_taint,
                                             "new_flags": taint_letters(new_bits)}))
        b_lock, n_lock = baseline.get("lockdown"), now["lockdown"]
        if b_lock in LOCKDOWN_ORDER and n_lock in LOCKDOWN_ORDER and \
                LOCKDOWN_ORDER.index(n_lock) < LOCKDOWN_ORDER.index(b_lock):
            out.append(self.finding("kstate.lockdown", f"Lockdown weakened: {b_lock} -> {n_lock}", "critical",
                                    {"baseline": b_lock, "now": n_lock}))
        if baseline.get("lsm") is not None and now["lsm"] != baseline.get("lsm"):
            out.append(self.finding("kstate.lsm", "Active LSM list changed", "high",
                                    {"baseline": baseline.get("lsm"), "now": now["lsm"]}))
        if now["cmdline"] != baseline.get("cmdline"):
            out.append(self.finding("kstate.cmdline", "Kernel command line differs from the baseline", "medium",
                                    {"baseline": baseline.get("cmdline"), "now": now["cmdline"]}))
        for key, sev, what in (("modules", "high", "Kernel module"), ("kprobes", "high", "kprobe"),
                               ("ftrace", "high", "ftrace-hooked function")):
            b, n = baseline.get(key), now[key]
            if b is None or n is None:
                continue
            added = sorted(set(n) - set(b))
            if added:
                out.append(self.finding(f"kstate.{key}", f"{what}(s) added since the baseline: "
                                        + ", ".join(added[:8]), sev, {"added": added,
                                                                       "removed": sorted(set(b) - set(n))}))
        return out
