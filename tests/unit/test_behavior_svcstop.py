"""Security-tool shutdown and firewall opening read by each tool's grammar (s15-svc):
the forms an untrusted tree used to get past the substring matcher are stopped, the
administrator's look-alikes stay silent or alerted."""

from __future__ import annotations

from pathlib import Path

from bastion.detect.behavior.svcctl import command_act, firewall_act
from test_behavior_depth import Rec, of

SEC = frozenset({"auditd", "rsyslog", "systemd-journald", "bastion", "ufw"})
TOOLS = frozenset({"auditd", "rsyslogd"})


def _act(argv: list[str], exe: str | None = None, script: str | None = None) -> str | None:
    names = {4242: {"auditd"}, 77: {"nginx"}}
    a = command_act(argv, exe or argv[0].rsplit("/", 1)[-1], SEC, TOOLS,
                    lambda pid: names.get(pid, set()), script)
    return a.what if a is not None else None


def test_stop_forms_are_read_by_structure() -> None:
    assert _act(["systemctl", "--no-block", "stop", "auditd.service"]) == "auditd"
    assert _act(["systemctl", "-q", "disable", "--now", "auditd"]) == "auditd"
    assert _act(["systemctl", "kill", "-s", "KILL", "auditd"]) == "auditd"
    assert _act(["systemctl", "-sKILL", "kill", "auditd"]) == "auditd"
    assert _act(["systemctl", "mask", "systemd-journald.socket"]) == "systemd-journald"
    assert _act(["systemctl", "stop", "systemd-journald-dev-log.socket"]) == "systemd-journald"
    assert _act(["systemctl", "stop", "aud*"]) == "auditd"
    assert _act(["systemctl", "stop", "nginx", "rsyslog"]) == "rsyslog"
    assert _act(["systemctl", "freeze", "bastion"]) == "bastion"
    assert _act(["sh", "/usr/sbin/service", "auditd", "stop"], "dash", "/usr/sbin/service") \
        == "auditd"
    assert _act(["/bin/sh", "/etc/init.d/auditd", "stop"], "dash", "/etc/init.d/auditd") == "auditd"
    assert _act(["systemd-run", "--wait", "-p", "User=root", "systemctl", "stop", "auditd"]) \
        == "auditd"
    assert _act(["systemd-run", "-u", "x", "kill", "-9", "4242"]) == "auditd"
    assert _act(["systemd-run", "--unit=x", "iptables", "-F"]) == "filter rules"
    assert _act(["pkill", "-9", "-x", "auditd"]) == "auditd"
    assert _act(["killall", "-s", "KILL", "rsyslogd"]) == "rsyslogd"
    # the look-alikes: no stop verb, a reload signal, the user's own manager, a listing
    for benign in (["systemctl", "status", "auditd"], ["systemctl", "restart", "rsyslog"],
                   ["systemctl", "show", "auditd", "-p", "ActiveState"],
                   ["systemctl", "--user", "stop", "rsyslog"], ["systemctl", "stop", "nginx"],
                   ["systemctl", "-p", "stop", "show", "auditd"],
                   ["systemctl", "list-units", "--state", "stop", "auditd"],
                   ["pkill", "-HUP", "rsyslogd"], ["pkill", "nginx"],
                   ["systemd-run", "--user", "systemctl", "stop", "auditd"],
                   ["systemd-run", "--wait", "make", "stop", "auditd"],
                   ["systemd-run", "kill", "-HUP", "4242"], ["systemd-run", "kill", "77"]):
        assert _act(benign) is None, benign


def test_firewall_forms_are_read_by_structure() -> None:
    def fw(argv: list[str]) -> str | None:
        a = firewall_act(argv[0], argv[0], argv[1:])
        return a.how if a is not None else None
    assert fw(["iptables", "-t", "nat", "-vF"]) == "-F"
    assert fw(["iptables", "--flush"]) == "--flush"
    assert fw(["iptables", "--policy", "INPUT", "ACCEPT"]) == "--policy ACCEPT"
    assert fw(["iptables", "-w", "-P", "FORWARD", "ACCEPT"]) == "-P ACCEPT"
    assert fw(["nft", "flush", "table", "inet", "filter"]) == "nft flush"
    assert fw(["nft", "flush ruleset"]) == "nft flush"
    assert fw(["ufw", "--force", "disable"]) == "ufw disable"
    # s24: ipset changes and null routes (fail2ban's bans dropped, traffic black-holed)
    assert fw(["ipset", "flush"]) == "ipset flush"
    assert fw(["ipset", "-!", "del", "f2b-sshd", "203.0.113.9"]) == "ipset del"
    assert fw(["ipset", "-X"]) == "ipset destroy"
    assert fw(["ip", "route", "add", "blackhole", "198.51.100.7"]) == "ip route blackhole"
    assert fw(["ip", "-4", "r", "a", "unreachable", "198.51.100.0/24"]) == \
        "ip route unreachable"
    assert fw(["ip", "route", "replace", "type", "prohibit", "10.9.0.0/16"]) == \
        "ip route prohibit"
    assert fw(["ip", "rule", "add", "to", "198.51.100.7", "prohibit"]) == "ip rule prohibit"
    assert fw(["ip", "ru", "a", "from", "all", "type", "blackhole"]) == "ip rule blackhole"
    for benign in (["ipset", "add", "blocklist", "203.0.113.9"], ["ipset", "list"],
                   ["ipset", "create", "s", "hash:ip"], ["ip", "route", "show"],
                   ["ip", "route", "add", "default", "via", "10.0.0.1"],
                   ["ip", "route", "del", "blackhole", "198.51.100.7"],
                   ["ip", "route", "add", "10.0.0.0/8", "dev", "blackhole"],
                   ["ip", "-n", "box", "route", "add", "blackhole", "198.51.100.7"],
                   ["ip", "rule", "add", "from", "10.0.0.0/8", "lookup", "100"],
                   ["ip", "addr", "add", "10.0.0.2/24", "dev", "eth0"]):
        assert fw(benign) is None, benign
    for benign in (["iptables", "-L", "-n"], ["iptables", "-S"], ["iptables", "-P", "INPUT", "DROP"],
                   ["iptables", "-A", "INPUT", "-m", "comment", "--comment", "-P INPUT ACCEPT",
                    "-j", "DROP"],
                   ["iptables", "-A", "INPUT", "-s", "10.0.0.0/8", "-j", "ACCEPT"],
                   ["nft", "list", "ruleset"], ["ufw", "status"], ["ufw", "allow", "22"]):
        assert fw(benign) is None, benign


def test_an_untrusted_tree_is_stopped_in_the_forms_the_substring_matcher_missed(
        tmp_path: Path) -> None:
    """A /tmp script's security stops that raised nothing before (s15-svc): systemd-run
    laundering (the stop or kill then comes from PID 1's clean child), the agent's own
    unit, a unit glob, ``freeze``, a SysV init script, bundled and long firewall
    options, ``nft flush table``.  Each is a critical block of the script's tree."""
    r = Rec().exec(90, 1, "/usr/sbin/auditd", ["/usr/sbin/auditd"])
    r.exec(200, 100, "/usr/bin/dash", ["sh", "/tmp/x.sh"])
    cmds = [("/usr/bin/systemd-run", ["systemd-run", "--wait", "systemctl", "stop", "auditd"]),
            ("/usr/bin/systemd-run", ["systemd-run", "-p", "User=root", "kill", "-9", "90"]),
            ("/usr/bin/systemctl", ["systemctl", "--no-block", "stop", "bastion.service"]),
            ("/usr/bin/systemctl", ["systemctl", "stop", "aud*"]),
            ("/usr/bin/systemctl", ["systemctl", "freeze", "auditd"]),
            ("/usr/bin/dash", ["/bin/sh", "/etc/init.d/auditd", "stop"]),
            ("/usr/sbin/xtables-nft-multi", ["iptables", "-t", "filter", "-vF"]),
            ("/usr/sbin/xtables-nft-multi", ["iptables", "--policy", "INPUT", "ACCEPT"]),
            ("/usr/sbin/nft", ["nft", "flush", "table", "inet", "filter"])]
    for n, (exe, argv) in enumerate(cmds):
        r.exec(201 + n, 200, exe, argv)
    r.lines[-4]["script"] = "/etc/init.d/auditd"
    found = [f for f in r.run(tmp_path)
             if f.rule in ("behavior.disable_security_tools", "behavior.firewall_tamper")]
    got = {f.evidence.get("origin_pid", f.pid): (f.severity, f.action) for f in found}
    assert sorted(f.title.split(":")[0] for f in found) and len(found) == len(cmds), \
        [f.title for f in found]
    assert {(f.severity, f.action) for f in found} == {("critical", "kill-tree")}, got
    assert {f.pid for f in found} == {200}


def test_an_administrators_look_alikes(tmp_path: Path) -> None:
    """From a clean shell: ``systemctl restart rsyslog``, ``systemctl status auditd``,
    ``iptables -L``, a firewall rule whose comment reads like a policy change, and
    nft's comment saying ``flush ruleset`` raise nothing (the last two alerted high
    before); a real stop by the administrator is alerted, not stopped."""
    r = Rec()
    benign = [("/usr/bin/systemctl", ["systemctl", "restart", "rsyslog"]),
              ("/usr/bin/systemctl", ["systemctl", "status", "auditd"]),
              ("/usr/sbin/xtables-nft-multi", ["iptables", "-L", "-n"]),
              ("/usr/sbin/xtables-nft-multi", ["iptables", "-A", "INPUT", "-m", "comment",
                                               "--comment", "-P INPUT ACCEPT", "-j", "DROP"]),
              ("/usr/sbin/nft", ["nft", "add", "rule", "inet", "filter", "input", "comment",
                                 "\"flush ruleset\"", "drop"])]
    for n, (exe, argv) in enumerate(benign):
        r.exec(300 + n, 100, exe, argv)
    r.exec(400, 100, "/usr/bin/systemctl", ["systemctl", "stop", "auditd"])
    found = [f for f in r.run(tmp_path) if f.severity in ("high", "critical")]
    assert [(f.pid, f.severity, f.action) for f in found] == [(400, "high", "alert")], \
        [(f.rule, f.title) for f in found]


def test_systemds_dbus_methods_called_by_hand(tmp_path: Path) -> None:
    """``busctl``/``dbus-send``/``gdbus`` calling the Manager's ``StopUnit`` or a unit
    object's ``Stop`` (the request systemctl itself sends): from a /tmp script, a
    critical block (nothing before: no D-Bus tool was read); reads and other units'
    calls are not stops."""
    m = "org.freedesktop.systemd1.Manager"
    dest, obj = "org.freedesktop.systemd1", "/org/freedesktop/systemd1"
    assert _act(["busctl", "call", dest, obj, m, "StopUnit", "ss", "auditd.service",
                 "replace"]) == "auditd"
    assert _act(["busctl", "--system", "call", dest, f"{obj}/unit/auditd_2eservice",
                 "org.freedesktop.systemd1.Unit", "Stop", "s", "replace"]) == "auditd"
    assert _act(["dbus-send", "--system", "--print-reply", f"--dest={dest}", obj,
                 f"{m}.StopUnit", "string:rsyslog.service", "string:replace"]) == "rsyslog"
    assert _act(["gdbus", "call", "--system", "--dest", dest, "--object-path", obj,
                 "--method", f"{m}.KillUnit", "auditd.service", "all", "9"]) == "auditd"
    for benign in (["busctl", "call", dest, obj, m, "StopUnit", "ss", "nginx.service", "replace"],
                   ["busctl", "call", dest, obj, m, "GetUnit", "s", "auditd.service"],
                   ["busctl", "--user", "call", dest, obj, m, "StopUnit", "ss", "auditd.service",
                    "replace"],
                   ["busctl", "introspect", dest, obj],
                   ["dbus-send", "--session", f"--dest={dest}", obj, f"{m}.StopUnit",
                    "string:auditd.service", "string:replace"]):
        assert _act(benign) is None, benign
    r = Rec().exec(200, 100, "/usr/bin/dash", ["sh", "/tmp/x.sh"])
    r.exec(201, 200, "/usr/bin/busctl", ["busctl", "call", dest, obj, m, "StopUnit", "ss",
                                         "auditd.service", "replace"])
    found = of(r.run(tmp_path), "disable_security_tools")
    assert [(f.severity, f.action, f.pid) for f in found] == [("critical", "kill-tree", 200)]


def test_the_init_system_stopping_a_unit_is_silent(tmp_path: Path) -> None:
    """At shutdown the init system runs a sysv unit's ``/etc/init.d/auditd stop``
    itself: no alert; the same script from a shell is alerted, and a ``systemctl stop``
    that PID 1 runs (a unit's command: what a persistence unit would do) stays alerted."""
    r = Rec()
    r.exec(300, 1, "/usr/bin/dash", ["/bin/sh", "/etc/init.d/auditd", "stop"])
    r.lines[-1]["script"] = "/etc/init.d/auditd"
    r.exec(301, 1, "/usr/bin/systemctl", ["systemctl", "stop", "rsyslog"])
    r.exec(302, 100, "/usr/bin/dash", ["/bin/sh", "/etc/init.d/auditd", "stop"])
    r.lines[-1]["script"] = "/etc/init.d/auditd"
    found = of(r.run(tmp_path), "disable_security_tools")
    assert [(f.pid, f.severity) for f in found] == [(301, "high"), (302, "high")]


# ---- s15-fixsvc: defects from the adversarial review ----------------------------------------

def test_long_option_prefixes_are_read_as_getopt_long_reads_them() -> None:
    """getopt_long takes an unambiguous prefix of a long option: ``--prop Id`` is
    ``--property Id`` (its value is the next word), ``--sig KILL`` is ``--signal KILL``;
    both were read as flags and the value as the verb (None).  An ambiguous prefix is
    refused by the tool itself (no act); ``--slice-inherit`` is a plain flag; ``-M
    .host`` is this host, ``-M other`` another machine."""
    assert _act(["systemctl", "--prop", "Id", "stop", "rsyslog"]) == "rsyslog"
    assert _act(["systemctl", "--sig", "KILL", "kill", "rsyslog"]) == "rsyslog"
    assert _act(["systemctl", "--no-bl", "stop", "auditd"]) == "auditd"
    assert _act(["systemd-run", "--prop", "User=root", "systemctl", "stop", "auditd"]) \
        == "auditd"
    assert _act(["systemd-run", "--slice-inherit", "systemctl", "stop", "auditd"]) == "auditd"
    assert _act(["systemd-run", "--on-clock-change", "systemctl", "stop", "auditd"]) \
        == "auditd"
    assert _act(["pkill", "--sig", "KILL", "auditd"]) == "auditd"
    assert _act(["pkill", "--sig", "HUP", "auditd"]) is None
    for local in (["-M", ".host"], ["--machine=.host"], ["-M", "root@.host"], ["-Mroot@"],
                  ["-H", "root@localhost"], ["--host=127.0.0.1:22"], ["-H", "[::1]"]):
        assert _act(["systemctl", *local, "stop", "auditd"]) == "auditd", local
        assert _act(["systemd-run", *local, "systemctl", "stop", "auditd"]) == "auditd", local
    for elsewhere in (["-M", "box"], ["--machine=root@box"], ["-H", "root@far"]):
        assert _act(["systemctl", *elsewhere, "stop", "auditd"]) is None, elsewhere
        assert _act(["systemd-run", *elsewhere, "systemctl", "stop", "auditd"]) is None
    # ambiguous between a flag and a valued option: getopt_long refuses (no act);
    # between one option's two spellings (--kill-who/--kill-whom): glibc accepts
    assert _act(["systemctl", "--re", "stop", "auditd"]) is None
    assert _act(["systemctl", "--kill-wh", "main", "kill", "auditd"]) == "auditd"


def test_systemd_run_of_an_init_script_or_service(tmp_path: Path) -> None:
    """``systemd-run /etc/init.d/rsyslog stop`` (PID 1 runs the script: its exec's parent
    is the init system, which the service-runner exemption silences) was read with no
    script (None); ``systemd-run service rsyslog stop`` likewise.  The systemd-run exec
    itself is now the act, blocked in an untrusted tree."""
    assert _act(["systemd-run", "/etc/init.d/rsyslog", "stop"]) == "rsyslog"
    assert _act(["systemd-run", "--wait", "/etc/init.d/auditd", "force-stop"]) == "auditd"
    assert _act(["systemd-run", "service", "rsyslog", "stop"]) == "rsyslog"
    assert _act(["systemd-run", "/etc/init.d/rsyslog", "status"]) is None
    r = Rec().exec(200, 100, "/usr/bin/dash", ["sh", "/tmp/x.sh"])
    r.exec(201, 200, "/usr/bin/systemd-run", ["systemd-run", "/etc/init.d/rsyslog", "stop"])
    # what PID 1 then runs: exempt as the init system's own stop script
    r.exec(202, 1, "/usr/bin/dash", ["/bin/sh", "/etc/init.d/rsyslog", "stop"])
    r.lines[-1]["script"] = "/etc/init.d/rsyslog"
    found = of(r.run(tmp_path), "disable_security_tools")
    assert [(f.severity, f.action, f.pid) for f in found] == [("critical", "kill-tree", 200)], \
        [(f.pid, f.title) for f in found]


def test_kill_forms_process_groups_and_paths(tmp_path: Path) -> None:
    """``kill -TERM -<pgid>`` (the pgid read as the signal before), ``kill -9 --
    -<pgid>`` (a negative pid skipped), ``kill -9 -1``, ``pkill -f sbin/auditd`` (the
    pattern tried against names only), ``killall /sbin/auditd`` (a path never equal to
    a name); and ``/bin/kill`` run from a script was not read at all."""
    assert _act(["kill", "-TERM", "-4242"]) == "auditd"
    assert _act(["kill", "-9", "--", "-4242"]) == "auditd"
    assert _act(["kill", "-s", "KILL", "-4242"]) == "auditd"
    assert _act(["kill", "-9", "-1"]) == "every process"
    assert _act(["kill", "-9", "4242"]) == "auditd"
    assert _act(["kill", "-TERM", "-77"]) is None
    assert _act(["kill", "-1"]) is None and _act(["kill", "--", "-1"]) == "every process"
    assert _act(["kill", "-HUP", "-4242"]) is None
    assert _act(["pkill", "-f", "sbin/auditd"]) == "auditd"
    assert _act(["pkill", "-f", "nginx -g"]) is None
    assert _act(["pkill", "sbin/auditd"]) is None          # without -f: the name only
    assert _act(["killall", "/sbin/auditd"]) == "auditd"
    assert _act(["killall", "/usr/sbin/nginx"]) is None
    r = Rec().exec(90, 1, "/usr/sbin/auditd", ["/usr/sbin/auditd", "-n"])
    r.exec(200, 100, "/usr/bin/dash", ["sh", "/tmp/x.sh"])
    r.exec(201, 200, "/usr/bin/kill", ["/bin/kill", "-9", "90"])
    r.exec(202, 200, "/usr/bin/pkill", ["pkill", "-f", "auditd -n"])
    found = of(r.run(tmp_path), "disable_security_tools")
    assert len(found) == 2 and {(f.severity, f.action, f.pid) for f in found} == \
        {("critical", "kill-tree", 200)}, [(f.pid, f.title) for f in found]


def test_isolate_preset_set_property_and_dbus_jobs() -> None:
    """``systemctl isolate rescue.target``/``rescue``/``emergency`` stop every service,
    ``preset``/``set-property`` on a security unit may disable or starve it, D-Bus
    ``EnqueueUnitJob(auditd, stop)`` and ``StartTransientUnit`` whose ExecStart is a
    stop: all None before."""
    assert _act(["systemctl", "isolate", "rescue.target"]) is not None
    assert _act(["systemctl", "rescue"]) == "all services"
    assert _act(["systemctl", "emergency"]) == "all services"
    assert _act(["systemctl", "isolate", "multi-user.target"]) is None
    assert _act(["systemctl", "preset", "auditd"]) == "auditd"
    assert _act(["systemctl", "set-property", "auditd", "MemoryMax=1"]) == "auditd"
    assert _act(["systemctl", "set-property", "nginx", "MemoryMax=1G"]) is None
    m = "org.freedesktop.systemd1.Manager"
    dest, obj = "org.freedesktop.systemd1", "/org/freedesktop/systemd1"
    assert _act(["busctl", "call", dest, obj, m, "EnqueueUnitJob", "sss", "auditd.service",
                 "stop", "replace"]) == "auditd"
    assert _act(["busctl", "call", dest, obj, m, "EnqueueUnitJob", "sss", "auditd.service",
                 "restart", "replace"]) is None
    assert _act(["busctl", "call", dest, obj, m, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                 "x.service", "fail", "1", "ExecStart", "a(sbas)", "1", "/bin/systemctl",
                 "false", "3", "systemctl", "stop", "rsyslog", "0"]) == "rsyslog"
    assert _act(["busctl", "call", dest, obj, m, "StartTransientUnit", "ssa(sv)a(sa(sv))",
                 "x.service", "fail", "1", "ExecStart", "a(sbas)", "1", "/bin/sleep",
                 "false", "2", "sleep", "9", "0"]) is None


def test_busctl_and_iptables_long_option_prefixes() -> None:
    """``busctl --addr unix:path=/run/dbus/system_bus_socket call ...`` (the value read
    as the verb) and ``iptables --fl`` / ``--pol INPUT ACCEPT`` (prefixes of --flush /
    --policy) were None; ``busctl -M box`` is another machine's manager."""
    m = "org.freedesktop.systemd1.Manager"
    dest, obj = "org.freedesktop.systemd1", "/org/freedesktop/systemd1"
    call = ["call", dest, obj, m, "StopUnit", "ss", "auditd.service", "replace"]
    assert _act(["busctl", "--addr", "unix:path=/run/dbus/system_bus_socket", *call]) \
        == "auditd"
    assert _act(["busctl", "--expect-reply", "no", *call]) == "auditd"
    assert _act(["busctl", "-M", "box", *call]) is None
    assert _act(["busctl", "-M", ".host", *call]) == "auditd"

    def fw(argv: list[str]) -> str | None:
        a = firewall_act(argv[0], argv[0], argv[1:])
        return a.how if a is not None else None
    assert fw(["iptables", "--fl"]) == "--flush"
    assert fw(["iptables", "--pol", "INPUT", "ACCEPT"]) == "--policy ACCEPT"
    assert fw(["iptables", "--t", "nat", "--flus"]) == "--flush"
    assert fw(["iptables", "--de", "INPUT", "1"]) is None         # ambiguous: refused


def test_s24_review_ip_and_ipset_forms_by_their_parsers() -> None:
    """s24 review: the forms ip(8) and ipset(8) accept that the first reading missed:
    ip's global options matched as prefixes (``-c`` is a flag, ``-fam`` is -family), a
    route's type anywhere before its prefix (``table 100 blackhole X``, ``to
    blackhole X``), type and verb prefixes (``black``, ``prepend``, ``chg``), a
    numeric type (strtoul: ``+6``), a rule's numeric action, a blackhole nexthop;
    ipset's command prefixes and ``--`` forms and its valued options."""
    def fw(argv: list[str]) -> str | None:
        a = firewall_act(argv[0], argv[0], argv[1:])
        return a.how if a is not None else None
    for argv in (["ip", "-c", "route", "add", "blackhole", "198.51.100.7"],
                 ["ip", "-fam", "inet", "route", "add", "blackhole", "198.51.100.7"],
                 ["ip", "--color=always", "r", "a", "blackhole", "198.51.100.7"],
                 ["ip", "route", "add", "table", "100", "blackhole", "198.51.100.7"],
                 ["ip", "route", "add", "metric", "5", "unreachable", "198.51.100.7"],
                 ["ip", "route", "add", "to", "prohibit", "198.51.100.0/24"],
                 ["ip", "route", "add", "black", "198.51.100.7"],
                 ["ip", "route", "add", "unr", "198.51.100.7"],
                 ["ip", "route", "prepend", "blackhole", "198.51.100.7"],
                 ["ip", "route", "chg", "blackhole", "198.51.100.7"],
                 ["ip", "route", "r", "blackhole", "198.51.100.7"],
                 ["ip", "route", "add", "+6", "198.51.100.7"],
                 ["ip", "route", "add", "dev", "dev", "blackhole", "198.51.100.7"]):
        assert fw(argv) is not None and fw(argv).startswith("ip route"), argv  # type: ignore[union-attr]
    for argv in (["ip", "rule", "add", "to", "198.51.100.7", "type", "6"],
                 ["ip", "rule", "add", "to", "198.51.100.7", "prohib"],
                 ["ip", "rule", "add", "to", "198.51.100.7", "unr"]):
        assert fw(argv) is not None and fw(argv).startswith("ip rule"), argv  # type: ignore[union-attr]
    assert fw(["ip", "nexthop", "add", "id", "9", "blackhole"]) == "ip nexthop blackhole"
    assert fw(["ip", "nex", "replace", "id", "9", "blackhole"]) == "ip nexthop blackhole"
    for argv in (["ipset", "--flush"], ["ipset", "fl"], ["ipset", "des", "f2b-sshd"],
                 ["ipset", "--destroy", "f2b-sshd"], ["ipset", "de", "f2b-sshd", "203.0.113.9"],
                 ["ipset", "-o", "plain", "flush"], ["ipset", "--exist", "flush"],
                 ["ipset", "-file", "/dev/null", "-X"], ["ipset", "f"]):
        assert fw(argv) is not None, argv
    for benign in (["ip", "route", "add", "10.0.0.0/8", "dev", "pro"],
                   ["ip", "route", "add", "10.0.0.0/8", "table", "black"],
                   ["ip", "route", "add", "default", "via", "10.0.0.1", "proto", "static"],
                   ["ip", "route", "add", "local", "10.0.0.0/8", "dev", "lo"],
                   ["ip", "route", "show", "table", "blackhole"],
                   ["ip", "rule", "add", "from", "10.0.0.0/8", "lookup", "100"],
                   ["ip", "rule", "add", "not", "fwmark", "51820", "table", "51820"],
                   ["ip", "nexthop", "add", "id", "9", "via", "10.0.0.1", "dev", "eth0"],
                   ["ip", "neigh", "add", "10.0.0.9", "lladdr", "0:1:2:3:4:5", "dev", "eth0"],
                   ["ipset", "add", "f2b-sshd", "203.0.113.9"], ["ipset", "-o", "save", "list"],
                   ["ipset", "test", "s", "1.2.3.4"], ["ipset", "save"]):
        assert fw(benign) is None, benign
