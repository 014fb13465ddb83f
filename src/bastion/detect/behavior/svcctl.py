"""Service-manager and firewall command lines read by their structure (s15-svc).

``systemctl stop auditd`` is one act whatever its spelling: ``systemctl --no-block
stop auditd.service``, ``systemctl -q disable --now auditd``, ``service auditd stop``,
``systemd-run --wait systemctl kill auditd`` (PID 1 then runs the stop for a clean
tree).  Each tool's own grammar decides here — its verbs, which options take the next
word, the unit name forms (``.service``/``.socket`` suffixes, globs systemctl expands
against loaded units) — never a substring of the joined line, so ``systemctl status
auditd``, ``systemctl restart rsyslog`` or a unit called ``stop-watch`` are not stops.

:func:`security_act` answers "does this exec shut a security tool down or open the
firewall?" with what it stops (or None); rules decide severity and response.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Sequence

# systemctl options whose value is the next word (systemctl(1); getopt permutes, so
# options may come anywhere, and a short one may carry its value joined: -sKILL)
_SYSTEMCTL_LONG_VALUED = frozenset({
    "--type", "--state", "--property", "--what", "--signal", "--kill-whom", "--kill-who",
    "--kill-value", "--job-mode", "--host", "--machine", "--root", "--image",
    "--image-policy", "--lines", "--output", "--preset-mode", "--boot-loader-menu",
    "--boot-loader-entry", "--reboot-argument", "--timestamp", "--message", "--drop-in",
    "--when", "--check-inhibitors", "--legend", "--capsule", "--reboot-argument"})
_SYSTEMCTL_SHORT_VALUED = frozenset("tpPsHMnoC")
# verbs that stop a unit now or keep it from starting again
STOP_VERBS = frozenset({"stop", "kill", "disable", "mask", "freeze", "clean"})
# SysV ``service NAME ACTION`` / ``/etc/init.d/NAME ACTION`` / ``invoke-rc.d NAME ACTION``
SERVICE_STOP_ACTIONS = frozenset({"stop", "force-stop", "disable", "kill", "mask"})
# ``update-rc.d NAME disable|remove``, ``chkconfig NAME off``
_RC_DISABLE = frozenset({"disable", "remove", "off"})

# systemd-run options whose value is the next word (systemd-run(1))
_RUN_LONG_VALUED = frozenset({
    "--unit", "--property", "--description", "--slice", "--setenv", "--uid", "--gid",
    "--nice", "--working-directory", "--service-type", "--on-active", "--on-boot",
    "--on-startup", "--on-unit-active", "--on-unit-inactive", "--on-calendar",
    "--on-timezone-change", "--on-clock-change", "--timer-property", "--path-property",
    "--socket-property", "--host", "--machine", "--expand-environment", "--json",
    "--slice-inherit", "--shell-prompt-prefix", "--background"})
_RUN_SHORT_VALUED = frozenset("upEHM")

# pkill/pgrep and killall options whose value is the next word
_PKILL_VALUED = frozenset("sgGPtuUFR")
_PKILL_LONG_VALUED = frozenset({"--signal", "--pgroup", "--group", "--parent", "--terminal",
                                "--euid", "--uid", "--pidfile", "--session", "--ns",
                                "--nslist", "--runstates", "--cgroup"})
_KILLALL_VALUED = frozenset("sunoyZ")

# iptables: short options whose value is the next word (iptables(8)); -P takes two
_IPT_VALUED = frozenset("tADIRNEjiosdpmgc")
_IPT_CHAINS_OPEN = frozenset({"INPUT", "FORWARD", "OUTPUT"})
_NFT_VALUED = frozenset("fIDT")
_NFT_LONG_VALUED = frozenset({"--file", "--includepath", "--define", "--optimize"})


@dataclass(frozen=True)
class Act:
    """A security shutdown found in a command line."""

    kind: str            # "service-stop", "signal", "firewall", "launder"
    what: str            # the unit, tool or rule set it hits
    how: str             # the verb or option that does it

    def describe(self) -> str:
        return f"{self.how} {self.what}"


def _norm_unit(u: str) -> str:
    u = u.rsplit("/", 1)[-1]
    for suf in (".service", ".socket", ".path", ".timer"):
        if u.endswith(suf):
            return u[: -len(suf)]
    return u


def _unit_hits(unit: str, security: frozenset[str]) -> str | None:
    n = _norm_unit(unit)
    if n in security:
        return n
    if n.startswith("systemd-journald"):
        return "systemd-journald" if "systemd-journald" in security else None
    if any(c in n for c in "*?["):
        # systemctl matches globs against loaded units: ``systemctl stop 'aud*'``
        for s in sorted(security):
            if fnmatch.fnmatchcase(s, n) or fnmatch.fnmatchcase(s + ".service", unit):
                return s
    return None


def _operands(args: Sequence[str], long_valued: frozenset[str], short_valued: frozenset[str],
              stop_at_first: bool = False) -> tuple[list[str], list[str]]:
    """Split getopt-style ``args`` into (options, operands).  With ``stop_at_first``
    the first operand ends option parsing (the rest are operands: a command line)."""
    opts: list[str] = []
    ops: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            ops.extend(args[i:])
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, _ = a.partition("=")
            opts.append(name)
            if name in long_valued and not eq:
                i += 1
            continue
        if a.startswith("-") and len(a) > 1:
            for k, ch in enumerate(a[1:], start=1):
                opts.append("-" + ch)
                if ch in short_valued:
                    if k + 1 == len(a):
                        i += 1           # the value is the next word
                    break                # or the rest of this word
            continue
        ops.append(a)
        if stop_at_first:
            ops.extend(args[i:])
            break
    return opts, ops


def systemctl_act(args: Sequence[str], security: frozenset[str]) -> Act | None:
    """``systemctl [options] VERB UNIT...``: a stop verb naming a security unit of the
    system manager (``--user``/``--global`` address a user's own manager)."""
    opts, ops = _operands(args, _SYSTEMCTL_LONG_VALUED, _SYSTEMCTL_SHORT_VALUED)
    if not ops or {"--user", "--global"} & set(opts):
        return None
    verb, units = ops[0], ops[1:]
    if verb not in STOP_VERBS:
        return None
    for u in units:
        hit = _unit_hits(u, security)
        if hit:
            return Act("service-stop", hit, f"systemctl {verb}")
    return None


def sysv_act(name: str, action: str, security: frozenset[str], tool: str) -> Act | None:
    hit = _unit_hits(name, security)
    if hit and action in SERVICE_STOP_ACTIONS | _RC_DISABLE:
        return Act("service-stop", hit, f"{tool} {action}")
    return None


def service_act(args: Sequence[str], security: frozenset[str]) -> Act | None:
    """``service [--options] NAME ACTION``."""
    ops = [a for a in args if not a.startswith("-")]
    if len(ops) >= 2:
        return sysv_act(ops[0], ops[1], security, "service")
    return None


def _pkill_pattern_hits(pattern: str, tools: frozenset[str], exact: bool) -> str | None:
    try:
        rx = re.compile(pattern)
    except re.error:
        return pattern if pattern in tools else None     # pkill itself rejects it
    for t in sorted(tools):
        if (rx.fullmatch(t) if exact else rx.search(t)):
            return t
    return None


_HARMLESS = frozenset({"0", "HUP", "1", "CONT", "18", "WINCH", "28", "USR1", "10"})


def _kill_args(args: Sequence[str]) -> tuple[str, list[int]] | None:
    """kill(1)'s signal (default TERM) and pids; None for ``-l``/``-L`` (a listing)."""
    sig = "TERM"
    pids: list[int] = []
    i = 0
    opts_done = False
    while i < len(args):
        a = args[i]
        i += 1
        if not opts_done and a == "--":
            opts_done = True
        elif not opts_done and a in ("-l", "-L", "--list", "--table"):
            return None
        elif not opts_done and a in ("-s", "-n", "--signal"):
            sig = args[i] if i < len(args) else sig
            i += 1
        elif not opts_done and a.startswith("-") and len(a) > 1 and not pids \
                and sig == "TERM":
            sig = a[1:]
        elif a.lstrip("-").isdigit():
            pids.append(int(a))
    return sig.upper().removeprefix("SIG"), pids


def signal_act(tool: str, args: Sequence[str], tools: frozenset[str],
               names_of: Callable[[int], set[str]]) -> Act | None:
    """``kill PID...``, ``pkill PATTERN``, ``killall NAME...`` aimed at a security tool
    (signal 0, HUP, CONT, WINCH, USR1 are no shutdown: HUP and USR1 make daemons
    reload or reopen their logs)."""
    if tool == "kill":
        parsed = _kill_args(args)
        if parsed is None or parsed[0] in _HARMLESS:
            return None
        for pid in parsed[1]:
            hit = names_of(pid) & tools if pid > 0 else set()
            if hit:
                return Act("signal", sorted(hit)[0], "kill")
        return None
    if tool in ("pkill", "killall"):
        valued = _PKILL_VALUED if tool == "pkill" else _KILLALL_VALUED
        opts, ops = _operands(args, _PKILL_LONG_VALUED, valued)
        sig = ""
        for i, a in enumerate(args):
            if a in ("-s", "--signal") and i + 1 < len(args):
                sig = args[i + 1]
            elif a.startswith("--signal="):
                sig = a.split("=", 1)[1]
            elif a.startswith("-") and (a[1:].isupper() or a[1:].isdigit()):
                sig = a[1:]
        if sig.upper().removeprefix("SIG") in _HARMLESS:
            return None
        exact = tool == "killall" or "-x" in opts or "--exact" in opts
        for p in ops:
            name = _pkill_pattern_hits(p, tools, exact) if tool == "pkill" else \
                (p if p in tools else None)
            if name:
                return Act("signal", name, tool)
    return None


_IPT_LONG_VALUED = frozenset({"--append", "--insert", "--delete", "--replace", "--jump",
                              "--match", "--source", "--destination", "--protocol",
                              "--in-interface", "--out-interface", "--new-chain",
                              "--rename-chain", "--goto", "--set-counters"})


def _iptables_act(args: Sequence[str]) -> Act | None:
    table = "filter"
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a.startswith("--"):
            name, eq, val = a.partition("=")
            if name == "--table":
                table = val if eq else (args[i] if i < len(args) else table)
                i += 0 if eq else 1
            elif name in ("--flush", "--delete-chain"):
                return Act("firewall", f"{table} rules", name)
            elif name == "--policy":
                chain = val if eq else (args[i] if i < len(args) else "")
                i += 0 if eq else 1
                target = args[i] if i < len(args) else ""
                i += 1
                if chain in _IPT_CHAINS_OPEN and target == "ACCEPT":
                    return Act("firewall", f"{chain} policy", "--policy ACCEPT")
            elif name in _IPT_LONG_VALUED and not eq:
                i += 1
            continue
        if a.startswith("-") and len(a) > 1:
            for k, ch in enumerate(a[1:], start=1):
                rest = a[k + 1:]
                if ch in ("F", "X"):
                    return Act("firewall", f"{table} rules", f"-{ch}")
                if ch == "P":
                    chain = rest or (args[i] if i < len(args) else "")
                    i += 0 if rest else 1
                    target = args[i] if i < len(args) else ""
                    i += 1
                    if chain in _IPT_CHAINS_OPEN and target == "ACCEPT":
                        return Act("firewall", f"{chain} policy", "-P ACCEPT")
                    break
                if ch == "t":
                    table = rest or (args[i] if i < len(args) else table)
                    i += 0 if rest else 1
                    break
                if ch in _IPT_VALUED:
                    i += 0 if rest else 1
                    break
            continue
    return None


def _nft_act(args: Sequence[str]) -> Act | None:
    _, ops = _operands(args, _NFT_LONG_VALUED, _NFT_VALUED)
    # the command may be one word or many, several separated by ';' or newlines
    words = [w for w in re.split(r"[\s;]+", " ".join(ops)) if w]
    for i, w in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "flush" and nxt in ("ruleset", "table", "chain"):
            return Act("firewall", nxt, "nft flush")
        if w in ("delete", "destroy") and nxt in ("table", "chain"):
            return Act("firewall", nxt, f"nft {w}")
    return None


def firewall_act(tool: str, argv0: str, args: Sequence[str]) -> Act | None:
    """The firewall emptied or opened: iptables ``-F``/``-X``/``-P <chain> ACCEPT``
    (bundled and long forms, any table), nft ``flush ruleset|table|chain`` and
    ``delete table|chain``, ``ufw disable|reset``, firewall-cmd's trusted default zone
    and ``--panic-off``, ebtables ``-F``."""
    names = {tool, argv0}
    if names & {"iptables", "ip6tables", "iptables-legacy", "iptables-nft", "ip6tables-legacy",
                "ip6tables-nft", "ebtables", "arptables"} or \
            (tool in ("xtables-nft-multi", "xtables-legacy-multi") and argv0 not in
             ("iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore")):
        return _iptables_act(args)
    if "nft" in names:
        return _nft_act(args)
    if "ufw" in names:
        _, ops = _operands(args, frozenset(), frozenset())
        if ops and ops[0] in ("disable", "reset"):
            return Act("firewall", "ufw", f"ufw {ops[0]}")
        if ops[:3] == ["default", "allow", "incoming"] or ops[:2] == ["default", "allow"] \
                and (len(ops) == 2 or ops[2] == "incoming"):
            return Act("firewall", "ufw", "ufw default allow")
        return None
    if "firewall-cmd" in names:
        for i, a in enumerate(args):
            name, eq, val = a.partition("=")
            if name == "--set-default-zone" and (val if eq else
                                                 (args[i + 1] if i + 1 < len(args) else "")) \
                    == "trusted":
                return Act("firewall", "default zone", "--set-default-zone trusted")
            if a == "--panic-off":
                return Act("firewall", "panic mode", "--panic-off")
    return None


SERVICE_MANAGERS = frozenset({"systemctl", "service", "invoke-rc.d", "update-rc.d", "chkconfig",
                              "systemd-run", "busctl", "dbus-send", "gdbus"})

# systemd's D-Bus API: the Manager's methods that take unit names, and a Unit object's
# own methods (its path names the unit: /org/freedesktop/systemd1/unit/auditd_2eservice)
_MANAGER_STOPS = frozenset({"StopUnit", "KillUnit", "DisableUnitFiles",
                            "DisableUnitFilesWithFlags", "MaskUnitFiles", "FreezeUnit",
                            "CleanUnit", "QueueSignalUnit"})
_UNIT_STOPS = frozenset({"Stop", "Kill", "Freeze", "Clean", "QueueSignal"})
_SYSTEMD_DEST = "org.freedesktop.systemd1"
_UNIT_PATH = "/org/freedesktop/systemd1/unit/"
_BUSCTL_LONG_VALUED = frozenset({"--address", "--host", "--machine", "--timeout", "--match",
                                 "--size", "--verbose", "--json", "--destination"})
_BUSCTL_SHORT_VALUED = frozenset("HM")


def _bus_unescape(label: str) -> str:
    """A unit name from its object-path label (sd_bus_path_encode: ``_2e`` is ``.``)."""
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), label)


def _bus_stop(obj: str, member: str, args: Sequence[str],
              security: frozenset[str], tool: str) -> Act | None:
    method = member.rsplit(".", 1)[-1]
    if method in _MANAGER_STOPS:
        for a in args:
            hit = _unit_hits(a.split(":", 1)[-1], security)   # dbus-send's string:NAME
            if hit:
                return Act("service-stop", hit, f"{tool} {method}")
    if method in _UNIT_STOPS and obj.startswith(_UNIT_PATH):
        hit = _unit_hits(_bus_unescape(obj[len(_UNIT_PATH):]), security)
        if hit:
            return Act("service-stop", hit, f"{tool} {method}")
    return None


def dbus_act(tool: str, args: Sequence[str], security: frozenset[str]) -> Act | None:
    """systemd's own D-Bus methods called by hand: ``busctl call org.freedesktop.systemd1
    /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager StopUnit ss auditd.service
    replace``, ``dbus-send --system --dest=org.freedesktop.systemd1 ... .Manager.StopUnit
    string:auditd.service string:replace``, ``gdbus call --system --dest ... --method
    ...StopUnit auditd.service replace``, or a Unit object's ``Stop``."""
    if tool == "busctl":
        opts, ops = _operands(args, _BUSCTL_LONG_VALUED, _BUSCTL_SHORT_VALUED)
        if "--user" in opts or len(ops) < 5 or ops[0] != "call" or ops[1] != _SYSTEMD_DEST:
            return None
        return _bus_stop(ops[2], ops[4], ops[6:], security, tool)
    if tool == "dbus-send":
        dest = ""
        ops = []
        for a in args:
            if a.startswith("--dest="):
                dest = a.split("=", 1)[1]
            elif a == "--session":
                return None
            elif not a.startswith("--"):
                ops.append(a)
        if dest != _SYSTEMD_DEST or len(ops) < 2:
            return None
        return _bus_stop(ops[0], ops[1], ops[2:], security, tool)
    if tool == "gdbus":
        vals: dict[str, str] = {}
        ops = []
        i = 0
        while i < len(args):
            a = args[i]
            i += 1
            name, eq, val = a.partition("=")
            if name in ("--dest", "-d", "--object-path", "-o", "--method", "-m"):
                vals[name.lstrip("-")[:1]] = val if eq else (args[i] if i < len(args) else "")
                i += 0 if eq else 1
            elif name == "--session":
                return None
            elif not a.startswith("-"):
                ops.append(a)
        if not ops or ops[0] != "call" or vals.get("d") != _SYSTEMD_DEST:
            return None
        return _bus_stop(vals.get("o", ""), vals.get("m", ""), ops[1:], security, tool)
    return None


def command_act(argv: Sequence[str], exe_base: str, security: frozenset[str],
                tools: frozenset[str], names_of: Callable[[int], set[str]],
                script: str | None = None, depth: int = 0) -> Act | None:
    """The security shutdown ``argv`` performs, read by the grammar of the tool that
    runs it (``exe_base``; a SysV script by its path: ``/etc/init.d/auditd stop``).
    ``systemd-run``'s command is read the same way: PID 1 runs it for the caller."""
    if not argv:
        return None
    args = list(argv[1:])
    argv0 = argv[0].rsplit("/", 1)[-1]
    tool = exe_base
    if script is not None:
        # the kernel ran ``interpreter [opts] SCRIPT ARGS``: the script's own arguments
        # follow its name
        sname = script.rsplit("/", 1)[-1]
        for k, a in enumerate(argv[1:], start=1):
            if a.rsplit("/", 1)[-1] == sname:
                args = list(argv[k + 1:])
                break
        if script.startswith("/etc/init.d/"):
            return sysv_act(sname, args[0], security, "init.d") if args else None
        if sname not in ("service", "invoke-rc.d", "update-rc.d", "chkconfig"):
            return None
        tool = sname
    if tool == "systemctl" or (tool == "systemd" and argv0 == "systemctl"):
        return systemctl_act(args, security)
    if tool in ("service", "invoke-rc.d"):
        return service_act(args, security)
    if tool in ("update-rc.d", "chkconfig"):
        ops = [a for a in args if not a.startswith("-")]
        return sysv_act(ops[0], ops[1], security, tool) if len(ops) >= 2 else None
    if tool in ("kill", "pkill", "killall"):
        return signal_act(tool, args, tools, names_of)
    if tool in ("busctl", "dbus-send", "gdbus"):
        return dbus_act(tool, args, security)
    if tool == "systemd-run" and depth == 0:
        opts, ops = _operands(args, _RUN_LONG_VALUED, _RUN_SHORT_VALUED, stop_at_first=True)
        if not ops or {"--user", "-M", "--machine", "-H", "--host"} & set(opts):
            return None
        inner_base = ops[0].rsplit("/", 1)[-1]
        inner = command_act(ops, inner_base, security, tools, names_of, None, depth + 1)
        if inner is not None:
            return Act(inner.kind, inner.what, f"systemd-run {inner.how}")
        return None
    return firewall_act(tool, argv0, args)


__all__ = ["Act", "command_act", "systemctl_act", "service_act", "signal_act", "firewall_act",
           "dbus_act", "STOP_VERBS", "SERVICE_MANAGERS"]
