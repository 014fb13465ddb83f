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
from typing import Callable, Iterable, Sequence

# systemctl's long options (systemctl(1), systemctl.c's option table): those whose value
# is the next word, and the plain flags.  getopt_long takes any unambiguous prefix of a
# long option (``--prop Id`` is ``--property Id``) and refuses an ambiguous one, so the
# prefix is resolved against the full table (:func:`_resolve_long`).
_SYSTEMCTL_LONG_VALUED = frozenset({
    "--type", "--state", "--property", "--what", "--signal", "--kill-whom", "--kill-who",
    "--kill-value", "--kill-subgroup", "--job-mode", "--host", "--machine", "--root",
    "--image", "--image-policy", "--lines", "--output", "--preset-mode",
    "--boot-loader-menu", "--boot-loader-entry", "--reboot-argument", "--timestamp",
    "--message", "--drop-in", "--when", "--check-inhibitors", "--legend", "--capsule",
    "--root-shift"})
_SYSTEMCTL_LONG_FLAGS = frozenset({
    "--help", "--version", "--value", "--all", "--reverse", "--after", "--before",
    "--show-types", "--failed", "--full", "--fail", "--irreversible",
    "--ignore-dependencies", "--ignore-inhibitors", "--user", "--system", "--global",
    "--wait", "--no-block", "--no-legend", "--no-pager", "--no-wall", "--dry-run",
    "--quiet", "--no-warn", "--force", "--no-reload", "--no-ask-password", "--runtime",
    "--plain", "--recursive", "--with-dependencies", "--firmware-setup", "--now",
    "--show-transaction", "--mkdir", "--marked", "--read-only", "--stdin"})
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
    "--timer-property", "--path-property", "--socket-property", "--host", "--machine",
    "--expand-environment", "--json", "--shell-prompt-prefix", "--background",
    "--job-mode", "--capsule"})
# the plain flags (``--slice-inherit``, ``--on-clock-change`` take no value)
_RUN_LONG_FLAGS = frozenset({
    "--help", "--version", "--user", "--system", "--scope", "--slice-inherit",
    "--remain-after-exit", "--send-sighup", "--wait", "--tty", "--pty", "--pty-late",
    "--pipe", "--quiet", "--verbose", "--on-timezone-change", "--on-clock-change",
    "--no-block", "--no-ask-password", "--collect", "--same-dir", "--shell",
    "--ignore-failure"})
_RUN_SHORT_VALUED = frozenset("upEHMC")

# pkill/pgrep and killall options whose value is the next word
_PKILL_VALUED = frozenset("sgGPtuUFR")
_PKILL_LONG_VALUED = frozenset({"--signal", "--pgroup", "--group", "--parent", "--terminal",
                                "--euid", "--uid", "--pidfile", "--session", "--ns",
                                "--nslist", "--runstates", "--cgroup", "--delimiter",
                                "--older", "--queue", "--env"})
_PKILL_LONG_FLAGS = frozenset({"--help", "--version", "--count", "--list-name", "--list-full",
                               "--inverse", "--lightweight", "--ignore-ancestors",
                               "--ignore-case", "--full", "--echo", "--newest", "--oldest",
                               "--exact", "--logpidfile", "--require-handler"})
_KILLALL_VALUED = frozenset("sunoyZ")
_KILLALL_LONG_VALUED = frozenset({"--signal", "--user", "--older-than", "--younger-than",
                                  "--context", "--ns"})
_KILLALL_LONG_FLAGS = frozenset({"--exact", "--ignore-case", "--process-group",
                                 "--interactive", "--list", "--quiet", "--regexp",
                                 "--verbose", "--version", "--wait", "--help"})

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


class _Refused(Exception):
    """The tool itself refuses this command line (getopt_long: an ambiguous long-option
    prefix), so it does nothing: no act.  Raised by :func:`_resolve_long`, caught only by
    :func:`command_act`."""


def _resolve_long(name: str, table: frozenset[str], valued: frozenset[str]) -> str:
    """getopt_long's reading of ``--name``: an exact match, else the one option of
    ``table`` it is a prefix of.  Several candidates that differ in taking a value are
    refused by getopt_long (:class:`_Refused`: no act); several alike may be one option
    spelt twice (systemctl's ``--kill-who``/``--kill-whom``), which glibc accepts, so
    the first is taken (when they are distinct options the tool refuses and the reading
    only errs towards an act).  An option not in the table is kept as written."""
    if name in table or not table:
        return name
    cands = sorted(o for o in table if o.startswith(name))
    if not cands:
        return name
    if len({c in valued for c in cands}) > 1:
        raise _Refused(f"{name}: ambiguous ({', '.join(cands)})")
    return cands[0]


def _parse(args: Sequence[str], long_valued: frozenset[str], short_valued: frozenset[str],
           stop_at_first: bool = False, long_flags: frozenset[str] = frozenset()
           ) -> tuple[list[tuple[str, str]], list[str]]:
    """Split getopt-style ``args`` into ([(option, value)], operands), long options
    resolved from their prefixes against ``long_valued | long_flags``.  With
    ``stop_at_first`` the first operand ends option parsing (the rest are operands: a
    command line)."""
    table = long_valued | long_flags if long_flags else frozenset()
    opts: list[tuple[str, str]] = []
    ops: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            ops.extend(args[i:])
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a.partition("=")
            name = _resolve_long(name, table, long_valued)
            if name in long_valued and not eq:
                val = args[i] if i < len(args) else ""
                i += 1
            opts.append((name, val))
            continue
        if a.startswith("-") and len(a) > 1:
            for k, ch in enumerate(a[1:], start=1):
                if ch in short_valued:
                    if k + 1 == len(a):
                        opts.append(("-" + ch, args[i] if i < len(args) else ""))
                        i += 1           # the value is the next word
                    else:
                        opts.append(("-" + ch, a[k + 1:]))
                    break                # or the rest of this word
                opts.append(("-" + ch, ""))
            continue
        ops.append(a)
        if stop_at_first:
            ops.extend(args[i:])
            break
    return opts, ops


def _operands(args: Sequence[str], long_valued: frozenset[str], short_valued: frozenset[str],
              stop_at_first: bool = False, long_flags: frozenset[str] = frozenset()
              ) -> tuple[list[str], list[str]]:
    """:func:`_parse` with the options' names only."""
    opts, ops = _parse(args, long_valued, short_valued, stop_at_first, long_flags)
    return [o for o, _ in opts], ops


def _loopback(host: str) -> bool:
    h = host.rpartition("@")[2]
    if h.startswith("["):
        h = h[1:].partition("]")[0]                      # [::1]:22
    elif h.count(":") == 1:
        h = h.partition(":")[0]                          # localhost:22
    return h in ("localhost", "localhost.localdomain", "::1", "0.0.0.0") or \
        h.startswith("127.")


def _elsewhere(opts: Sequence[tuple[str, str]]) -> bool:
    """``-H``/``--host`` (over ssh) or ``-M``/``--machine`` naming another machine: the
    act happens there, not here.  ``.host``, ``root@.host``, ``user@`` are this host, and
    so is ``-H`` to a loopback address (ssh's systemd-stdio-bridge then talks to this
    manager from sshd's tree: a laundering path)."""
    for o, v in opts:
        if o in ("-H", "--host") and not _loopback(v):
            return True
        if o in ("-M", "--machine") and v.rpartition("@")[2] not in ("", ".host"):
            return True
    return False


# verbs that stop every unit the target does not want, security ones included
_ISOLATE_VERBS = frozenset({"isolate", "rescue", "emergency"})
# isolating the usual run targets stops no security service (they want it)
_RUN_TARGETS = frozenset({"default", "multi-user", "graphical"})
# verbs that act on a named unit in a way that may stop it: ``preset`` disables it when
# a preset says so, ``set-property`` can starve it (``MemoryMax=1``, ``CPUQuota=1%``)
_UNIT_VERBS = frozenset({"preset", "set-property"})


def systemctl_act(args: Sequence[str], security: frozenset[str]) -> Act | None:
    """``systemctl [options] VERB UNIT...``: a stop verb naming a security unit of the
    system manager of this host (``--user``/``--global`` address a user's own manager,
    ``-H``/``-M other`` another machine); ``isolate``/``rescue``/``emergency`` stop
    every unit the target does not want."""
    popts, ops = _parse(args, _SYSTEMCTL_LONG_VALUED, _SYSTEMCTL_SHORT_VALUED,
                        long_flags=_SYSTEMCTL_LONG_FLAGS)
    opts = {o for o, _ in popts}
    if not ops or {"--user", "--global"} & opts or _elsewhere(popts):
        return None
    verb, units = ops[0], ops[1:]
    if verb in ("rescue", "emergency"):
        return Act("service-stop", "all services", f"systemctl {verb}")
    if verb == "isolate":
        for u in units:
            t = u.rsplit("/", 1)[-1].removesuffix(".target")
            if t not in _RUN_TARGETS:
                return Act("service-stop", f"all services but {t}'s", "systemctl isolate")
        return None
    if verb not in STOP_VERBS | _UNIT_VERBS:
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
    """kill(1)'s signal (default TERM) and pids (a negative one is a process group, -1
    every process); None for ``-l``/``-L`` (a listing).  Only the first option-looking
    word names the signal: ``kill -TERM -1234`` signals process group 1234."""
    sig = "TERM"
    sig_given = False
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
        elif not opts_done and not sig_given and a in ("-s", "-n", "--signal"):
            sig = args[i] if i < len(args) else sig
            sig_given = True
            i += 1
        elif not opts_done and not sig_given and a.startswith("--signal="):
            sig, sig_given = a.split("=", 1)[1], True
        elif not opts_done and a.startswith("-") and len(a) > 1 and not pids \
                and not sig_given:
            sig, sig_given = a[1:], True      # ``kill -9 PID``, ``kill -KILL PID``
        elif a.lstrip("-").isdigit():
            pids.append(int(a))
    return sig.upper().removeprefix("SIG"), pids


_FULL_PATHS = ("/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/", "/usr/local/sbin/")


def signal_act(tool: str, args: Sequence[str], tools: frozenset[str],
               names_of: Callable[[int], set[str]],
               cmdlines: Callable[[], Iterable[tuple[str, str]]] | None = None) -> Act | None:
    """``kill PID...``, ``pkill PATTERN``, ``killall NAME...`` aimed at a security tool
    (signal 0, HUP, CONT, WINCH, USR1 are no shutdown: HUP and USR1 make daemons
    reload or reopen their logs).  ``kill -<pgid>`` signals a process group (a daemon
    leads its own: the group's id is its pid), ``kill -1`` every process; ``pkill -f``
    matches the command line (the running tools' from ``cmdlines``, else their usual
    paths); ``killall /sbin/auditd`` names the executable by its path."""
    if tool == "kill":
        parsed = _kill_args(args)
        if parsed is None or parsed[0] in _HARMLESS:
            return None
        for pid in parsed[1]:
            if pid == -1:
                return Act("signal", "every process", "kill -1")
            hit = names_of(abs(pid)) & tools if pid != 0 else set()
            if hit:
                return Act("signal", sorted(hit)[0], "kill" if pid > 0 else "kill -PGID")
        return None
    if tool in ("pkill", "killall"):
        valued = _PKILL_VALUED if tool == "pkill" else _KILLALL_VALUED
        lv, lf = (_PKILL_LONG_VALUED, _PKILL_LONG_FLAGS) if tool == "pkill" else \
            (_KILLALL_LONG_VALUED, _KILLALL_LONG_FLAGS)
        popts, ops = _parse(args, lv, valued, long_flags=lf)
        opts = {o for o, _ in popts}
        sig = ""
        for o, v in popts:
            if o in ("-s", "--signal"):
                sig = v
        for a in args:
            if a.startswith("-") and len(a) > 1 and (a[1:].isupper() or a[1:].isdigit()):
                sig = a[1:]
        if sig.upper().removeprefix("SIG") in _HARMLESS:
            return None
        exact = tool == "killall" or "-x" in opts or "--exact" in opts
        full = tool == "pkill" and ("-f" in opts or "--full" in opts)
        for p in ops:
            if tool == "killall":
                name = p.rsplit("/", 1)[-1] if p.rsplit("/", 1)[-1] in tools else None
            else:
                name = _pkill_pattern_hits(p, tools, exact)
                if name is None and full:
                    name = _pkill_full_hits(p, tools, exact, cmdlines)
            if name:
                return Act("signal", name, tool)
    return None


def _pkill_full_hits(pattern: str, tools: frozenset[str], exact: bool,
                     cmdlines: Callable[[], Iterable[tuple[str, str]]] | None) -> str | None:
    """``pkill -f PATTERN``: the pattern against each security tool's command line."""
    try:
        rx = re.compile(pattern)
    except re.error:
        return None                                      # pkill itself rejects it
    lines = list(cmdlines()) if cmdlines is not None else []
    lines += [(t, d + t) for t in sorted(tools) for d in _FULL_PATHS]
    for t, line in lines:
        if t in tools and (rx.fullmatch(line) if exact else rx.search(line)):
            return t
    return None


_IPT_LONG_VALUED = frozenset({"--append", "--insert", "--delete", "--replace", "--jump",
                              "--match", "--source", "--destination", "--protocol",
                              "--in-interface", "--out-interface", "--new-chain",
                              "--rename-chain", "--goto", "--set-counters", "--check",
                              "--wait-interval", "--modprobe"})
# iptables' own long options (getopt_long: ``--fl`` is ``--flush``); an extension's
# options (``--comment`` after ``-m comment``) are kept as written
_IPT_LONG_ALL = _IPT_LONG_VALUED | frozenset({
    "--table", "--flush", "--delete-chain", "--policy", "--list", "--list-rules", "--zero",
    "--numeric", "--verbose", "--wait", "--exact", "--fragment", "--version", "--help",
    "--line-numbers", "--ipv4", "--ipv6"})


def _iptables_act(args: Sequence[str]) -> Act | None:
    table = "filter"
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a.partition("=")
            name = _resolve_long(name, _IPT_LONG_ALL, _IPT_LONG_VALUED)
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


def _matches(word: str, name: str) -> bool:
    """iproute2's ``matches(word, name) == 0``: a non-empty prefix of ``name``."""
    return bool(word) and name.startswith(word)


# ip(8)'s global options in ip.c's order (the first one ``word`` is a prefix of wins, a
# leading ``--`` read as ``-``; True: exact only), with how many values each takes
_IP_OPTS: tuple[tuple[str, bool, int], ...] = (
    ("-loops", False, 1), ("-family", False, 1), ("-4", True, 0), ("-6", True, 0),
    ("-0", True, 0), ("-M", True, 0), ("-B", True, 0), ("-human", False, 0),
    ("-human-readable", False, 0), ("-iec", False, 0), ("-stats", False, 0),
    ("-statistics", False, 0), ("-details", False, 0), ("-resolve", False, 0),
    ("-oneline", False, 0), ("-timestamp", False, 0), ("-tshort", False, 0),
    ("-Version", False, 0), ("-force", False, 0), ("-batch", False, 1), ("-brief", False, 0),
    ("-json", False, 0), ("-pretty", False, 0), ("-rcvbuf", False, 1), ("-color", False, 0),
    ("-help", False, 0), ("-netns", False, 1), ("-Numeric", False, 0), ("-all", False, 0),
    ("-echo", True, 0))
# ip's objects in its command table's order (``ip r`` is route, ``ip ru`` rule)
_IP_OBJECTS = ("address", "addrlabel", "maddress", "route", "rule", "neighbor", "neighbour",
               "ntable", "ntbl", "link", "l2tp", "fou", "ila", "macsec", "tunnel", "tunl",
               "tuntap", "tap", "token", "tcpmetrics", "tcp_metrics", "monitor", "xfrm",
               "mroute", "mrule", "netns", "netconf", "vrf", "sr", "nexthop", "mptcp", "ioam",
               "help", "stats")
# each object's verbs in its do_* order, and those that add or change
_IP_VERBS = {"route": (("add", "change", "chg", "replace", "prepend", "append", "test",
                        "delete", "list", "show", "lst", "get", "flush", "save", "restore"),
                       {"add", "change", "chg", "replace", "prepend", "append"}),
             "rule": (("list", "lst", "show", "save", "restore", "add", "delete", "flush"),
                      {"add"}),
             "nexthop": (("add", "replace", "delete", "list", "show", "lst", "get", "flush"),
                         {"add", "replace"})}
# a route's keywords before its [to] [TYPE] PREFIX (iproute_modify's order; True: exact),
# with their values (``lock`` may come before a metric's); "nexthop" ends the route part
_ROUTE_KW: tuple[tuple[str, bool, int], ...] = (
    ("src", True, 1), ("as", True, 1), ("via", True, 1), ("from", True, 1), ("tos", True, 1),
    ("dsfield", False, 1), ("expires", True, 1), ("metric", False, 1), ("priority", False, 1),
    ("preference", True, 1), ("scope", True, 1), ("mtu", True, 1), ("hoplimit", True, 1),
    ("advmss", True, 1), ("reordering", False, 1), ("rtt", True, 1), ("rto_min", True, 1),
    ("window", False, 1), ("cwnd", False, 1), ("initcwnd", False, 1), ("initrwnd", False, 1),
    ("features", False, 1), ("quickack", False, 1), ("congctl", False, 1),
    ("rttvar", False, 1), ("ssthresh", False, 1), ("realms", False, 1), ("onlink", True, 0),
    ("nexthop", True, -1), ("nhid", True, 1), ("protocol", False, 1), ("table", False, 1),
    ("vrf", False, 1), ("dev", True, 1), ("oif", True, 1), ("pref", False, 1),
    ("encap", True, -2), ("ttl-propagate", True, 1), ("fastopen_no_cookie", False, 1))
_FAMILIES = frozenset({"inet", "inet6", "ipv4", "ipv6", "mpls", "bridge", "link", "dnet",
                       "ipx", "any"})
_NULL_TYPES = {6: "blackhole", 7: "unreachable", 8: "prohibit"}


def _first(word: str, table: Sequence[tuple[str, bool, int]]) -> tuple[str, int] | None:
    for name, exact, n in table:
        if word == name or (not exact and _matches(word, name)):
            return name, n
    return None


def _strtoul(word: str) -> int | None:
    """C's strtoul(word, &end, 0) when it reads all of ``word``: leading blanks, a sign,
    0x / 0 prefixes (``+6`` is 6)."""
    w = word.lstrip(" \t\n\v\f\r")
    neg = w[:1] == "-"
    w = w[1:] if w[:1] in ("+", "-") else w
    try:
        v = int(w, 16) if w[:2].lower() == "0x" and len(w) > 2 and w[2] not in "+-" else \
            int(w, 8) if w[:1] == "0" and len(w) > 1 else int(w, 10) if w.isdigit() else None
    except ValueError:
        return None
    if v is None:
        return None
    return (2**64 - v) % 2**64 if neg else v


def _rtntype(word: str) -> int | None:
    """iproute2's rtnl_rtntype_a2n: a route type by name (prefixes, in its order) or
    number (0..255)."""
    if word == "local":
        return 2
    if word == "nat":
        return 10
    for name, n in (("broadcast", 3), ("anycast", 4), ("multicast", 5), ("prohibit", 8),
                    ("unreachable", 7), ("blackhole", 6), ("xresolve", 11), ("unicast", 1)):
        if _matches(word, name) or (n == 3 and word == "brd"):
            return n
    if word == "throw":
        return 9
    v = _strtoul(word)
    return v if v is not None and v <= 255 else None


def _ip_route_null(rest: Sequence[str]) -> str | None:
    """The null type of ``ip route add ...``'s arguments, as iproute_modify reads them:
    keywords and their values, then ``[to] [TYPE] PREFIX`` (a type does not start with a
    digit).  After a keyword whose arguments it does not model (``encap``, ``features``)
    every later word is read as a possible type."""
    i = 0
    loose = False
    while i < len(rest):
        w = rest[i]
        kw = None if loose else _first(w, _ROUTE_KW)
        if kw is not None:
            name, n = kw
            if n == -1:                       # nexthop ...: the rest is the nexthops'
                return None
            if n == -2 or name == "features":
                loose = True
                i += 1
                continue
            i += 1
            if name == "via" and i < len(rest) and rest[i] in _FAMILIES:
                i += 1
            elif name == "as" and i < len(rest) and rest[i] == "to":
                i += 1
            elif i < len(rest) and rest[i] == "lock":
                i += 1
            i += n
            continue
        if w == "to" and not loose:
            i += 1
            w = rest[i] if i < len(rest) else ""
        t = _rtntype(w) if w and not "0" <= w[0] <= "9" else None
        if t in _NULL_TYPES and i + 1 < len(rest):
            return _NULL_TYPES[t]
        i += 1
    return None


def _ip_rule_null(rest: Sequence[str]) -> str | None:
    """The null action of ``ip rule add ...``'s arguments (iprule_modify: ``[type] TYPE``
    among its keywords, a number too)."""
    valued = {"from", "to", "preference", "order", "priority", "tos", "dsfield", "fwmark",
              "realms", "protocol", "tun_id", "table", "lookup", "suppress_prefixlength",
              "sup_pl", "suppress_ifgroup", "sup_group", "dev", "iif", "oif", "uidrange",
              "nat", "map-to", "ipproto", "sport", "dport", "dscp", "flowlabel", "goto"}
    prefixed = ("preference", "order", "priority", "dsfield", "realms", "protocol", "tun_id",
                "table", "suppress_prefixlength", "suppress_ifgroup", "map-to")
    i = 0
    while i < len(rest):
        w = rest[i]
        if w in valued or any(_matches(w, p) for p in prefixed):
            i += 2
            continue
        if w == "type":
            i += 1
            w = rest[i] if i < len(rest) else ""
        t = None if _matches(w, "goto") or _matches(w, "nop") or _matches(w, "help") \
            else _rtntype(w)
        if t in _NULL_TYPES:
            return _NULL_TYPES[t]
        i += 1
    return None


def _ip_act(args: Sequence[str]) -> Act | None:
    """s24: ``ip route add|append|prepend|replace|change blackhole|unreachable|prohibit
    ...``, ``ip rule add ... prohibit|blackhole|unreachable`` and ``ip nexthop add ...
    blackhole`` (a route through it drops: ``nhid``) — traffic null-routed: the fleet
    link, updates, a monitoring host — in the host's namespace (no ``-n``), read as ip(8)
    reads them (review: options, objects, verbs and types are matched as prefixes in
    ip's own order; a route's type comes anywhere before its prefix).  Not read:
    ``-batch FILE`` and ``restore`` (their commands are not in the argv)."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-"):
            break
        o = a[1:] if a.startswith("--") else a
        if _matches(o.split("=", 1)[0], "-color"):
            i += 1
            continue
        opt = _first(o, _IP_OPTS)
        if opt is None or opt[0] in ("-netns", "-help", "-Version", "-batch"):
            return None              # refused, another namespace, or no command here
        i += 1 + opt[1]
    if i + 1 >= len(args):
        return None
    obj = next((c for c in _IP_OBJECTS if _matches(args[i], c)), None)
    if obj not in _IP_VERBS:
        return None
    order, acting = _IP_VERBS[obj]
    verb = next((v for v in order if _matches(args[i + 1], v) or
                 (v == "chg" and args[i + 1] == "chg")), None)
    if verb not in acting:
        return None
    rest = args[i + 2:]
    if obj == "route":
        kind = _ip_route_null(rest)
        return Act("firewall", "routing table", f"ip route {kind}") if kind else None
    if obj == "rule":
        kind = _ip_rule_null(rest)
        return Act("firewall", "routing policy", f"ip rule {kind}") if kind else None
    if "blackhole" in rest:
        return Act("firewall", "routing table", "ip nexthop blackhole")
    return None


# ipset(8)'s commands in its table's order (ipset_match_cmd: a prefix of the name or
# an alias, a leading ``--`` ignored; the first that matches wins), and the options that
# take a value (``-o``, ``-f``; ipset_match_envopt: ``--x`` is ``-x``)
_IPSET_CMDS = (("create", "n", "-N"), ("add", "a", "-A"), ("del", "d", "-D"),
               ("test", "t", "-T"), ("destroy", "x", "-X"), ("list", "l", "-L"),
               ("save", "s", "-S"), ("restore", "r", "-R"), ("flush", "f", "-F"),
               ("rename", "e", "-E"), ("swap", "w", "-W"), ("help", "h", "-H"),
               ("version", "v", "-V"), ("quit",))
_IPSET_DROPS = frozenset({"flush", "destroy", "del", "swap"})
_IPSET_FLAGS = frozenset({"-!", "-exist", "-q", "-quiet", "-r", "-resolve", "-s", "-sorted",
                          "-n", "-name", "-t", "-terse"})
_IPSET_VALUED = frozenset({"-o", "-output", "-f", "-file"})


def _ipset_cmd(arg: str) -> str | None:
    skip = 2 if arg.startswith("--") else 0
    if len(arg) <= skip or arg == "-":
        return None
    for names in _IPSET_CMDS:
        if any(n.startswith(arg[skip:]) for n in names):
            return names[0]
    return None


def _ipset_act(args: Sequence[str]) -> Act | None:
    """ipset's first command word, past its options (review s24: ``--flush``, ``fl``,
    ``des``, ``-o plain flush`` were missed)."""
    i = 0
    while i < len(args):
        a = args[i]
        e = a[1:] if a.startswith("--") else a
        if e in _IPSET_FLAGS:
            i += 1
            continue
        if e in _IPSET_VALUED:
            i += 2
            continue
        how = _ipset_cmd(a)
        return Act("firewall", "ipset", f"ipset {how}") if how in _IPSET_DROPS else None
    return None


def firewall_act(tool: str, argv0: str, args: Sequence[str]) -> Act | None:
    """The firewall emptied or opened: iptables ``-F``/``-X``/``-P <chain> ACCEPT``
    (bundled and long forms and their unambiguous prefixes, any table), nft ``flush
    ruleset|table|chain`` and ``delete table|chain``, ``ufw disable|reset``,
    firewall-cmd's trusted default zone and ``--panic-off``, ebtables ``-F``; s24:
    ``ipset flush|destroy|del|swap``, a null route or rule (``ip route add blackhole``).
    A line the tool refuses (an ambiguous long-option prefix) does nothing: None."""
    try:
        return _firewall_act(tool, argv0, args)
    except _Refused:
        return None


def _firewall_act(tool: str, argv0: str, args: Sequence[str]) -> Act | None:
    names = {tool, argv0}
    if names & {"iptables", "ip6tables", "iptables-legacy", "iptables-nft", "ip6tables-legacy",
                "ip6tables-nft", "ebtables", "arptables"} or \
            (tool in ("xtables-nft-multi", "xtables-legacy-multi") and argv0 not in
             ("iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore")):
        return _iptables_act(args)
    if "nft" in names:
        return _nft_act(args)
    if "ipset" in names:
        return _ipset_act(args)
    if "ip" in names:
        return _ip_act(args)
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
                                 "--size", "--json", "--destination", "--expect-reply",
                                 "--auto-start", "--allow-interactive-authorization",
                                 "--augment-creds", "--watch-bind", "--limit-messages",
                                 "--capsule"})
_BUSCTL_LONG_FLAGS = frozenset({"--help", "--version", "--no-pager", "--no-legend",
                                "--system", "--user", "--show-machine", "--unique",
                                "--acquired", "--activatable", "--list", "--quiet",
                                "--verbose", "--xml-interface", "--full"})
_BUSCTL_SHORT_VALUED = frozenset("HM")


def _bus_unescape(label: str) -> str:
    """A unit name from its object-path label (sd_bus_path_encode: ``_2e`` is ``.``)."""
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), label)


def _bus_stop(obj: str, member: str, args: Sequence[str],
              security: frozenset[str], tool: str) -> Act | None:
    method = member.rsplit(".", 1)[-1]
    if method == "EnqueueUnitJob":
        # EnqueueUnitJob(s name, s job_type, s job_mode): systemctl's own path for a job
        words = [a.split(":", 1)[-1] for a in args]
        for k, w in enumerate(words[:-1]):
            hit = _unit_hits(w, security)
            if hit and words[k + 1] in ("stop", "kill"):
                return Act("service-stop", hit, f"{tool} {method} {words[k + 1]}")
        return None
    if method == "StartTransientUnit" and tool == "busctl":
        # busctl's a(sbas) ExecStart: PATH IGNORE-FAILURE N ARGV0..ARGVN-1 -- the
        # transient unit runs that command line as PID 1's child
        for k in range(len(args) - 3):
            if args[k + 1] in ("true", "false") and args[k + 2].isdigit():
                n = int(args[k + 2])
                argv = list(args[k + 3:k + 3 + n])
                if len(argv) == n and argv:
                    inner = command_act([args[k], *argv[1:]], args[k].rsplit("/", 1)[-1],
                                        security, frozenset(), lambda _p: set(),
                                        args[k] if args[k].startswith("/etc/init.d/")
                                        else None, depth=1)
                    if inner is not None:
                        return Act(inner.kind, inner.what, f"{tool} {method} {inner.how}")
        return None
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
        popts, ops = _parse(args, _BUSCTL_LONG_VALUED, _BUSCTL_SHORT_VALUED,
                            long_flags=_BUSCTL_LONG_FLAGS)
        if "--user" in {o for o, _ in popts} or _elsewhere(popts) or len(ops) < 5 or ops[0] != "call" or ops[1] != _SYSTEMD_DEST:
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
                script: str | None = None, depth: int = 0,
                cmdlines: Callable[[], Iterable[tuple[str, str]]] | None = None) -> Act | None:
    """The security shutdown ``argv`` performs, read by the grammar of the tool that
    runs it (``exe_base``; a SysV script by its path: ``/etc/init.d/auditd stop``).
    ``systemd-run``'s command is read the same way: PID 1 runs it for the caller.
    ``cmdlines`` yields (tool, command line) of the running security tools, which
    ``pkill -f`` patterns are matched against.  A command line the tool itself refuses
    (an ambiguous long-option prefix) does nothing: None."""
    try:
        return _command_act(argv, exe_base, security, tools, names_of, script, depth,
                            cmdlines)
    except _Refused:
        return None


def _command_act(argv: Sequence[str], exe_base: str, security: frozenset[str],
                 tools: frozenset[str], names_of: Callable[[int], set[str]],
                 script: str | None, depth: int,
                 cmdlines: Callable[[], Iterable[tuple[str, str]]] | None) -> Act | None:
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
        return signal_act(tool, args, tools, names_of, cmdlines)
    if tool in ("busctl", "dbus-send", "gdbus"):
        return dbus_act(tool, args, security)
    if tool == "systemd-run" and depth == 0:
        popts, ops = _parse(args, _RUN_LONG_VALUED, _RUN_SHORT_VALUED, stop_at_first=True,
                            long_flags=_RUN_LONG_FLAGS)
        if not ops or "--user" in {o for o, _ in popts} or _elsewhere(popts):
            return None
        inner_base = ops[0].rsplit("/", 1)[-1]
        # PID 1 execs the command itself: a SysV script named by its path is that script
        inner_script = ops[0] if ops[0].startswith("/etc/init.d/") else None
        inner = _command_act(ops, inner_base, security, tools, names_of, inner_script,
                             depth + 1, cmdlines)
        if inner is not None:
            return Act(inner.kind, inner.what, f"systemd-run {inner.how}")
        return None
    return firewall_act(tool, argv0, args)


__all__ = ["Act", "command_act", "systemctl_act", "service_act", "signal_act", "firewall_act",
           "dbus_act", "STOP_VERBS", "SERVICE_MANAGERS"]
