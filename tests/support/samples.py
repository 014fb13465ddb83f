"""Sample events (one per JSON type) and alerts for output tests."""

from __future__ import annotations

from typing import Any

from bastion import events as E
from bastion.events import to_json

T0 = 1_795_000_000_000_000_000  # 2026-11-18


def _proc(pid: int = 4242, exe: str = "/usr/bin/curl") -> E.Proc:
    return E.Proc(pid=pid, tid=pid, ppid=1000, uid=1001, euid=1001, gid=1001, cgroup_id=77,
                  comm="curl", start_ns=123, exe=exe)


def sample_events() -> list[dict[str, Any]]:
    p = _proc()
    evs: list[E.Event] = [
        E.ExecEvent(T0, p, filename="/usr/bin/curl", cwd="/tmp",
                    argv=("curl", "-s", "http://x/y"), exe_dev=2049, exe_ino=99),
        E.ForkEvent(T0 + 1, p, child_pid=4243, child_start_ns=456),
        E.ExitEvent(T0 + 2, p, exit_code=3, status=3 << 8),
        E.FileEvent(T0 + 3, p, op="open", path="/etc/shadow", flags=0o1, dev=1, ino=2),
        E.FileEvent(T0 + 4, p, op="open", path="/tmp/new", flags=0o101, mode=0o644),
        E.FileEvent(T0 + 5, p, op="unlink", path="/tmp/x"),
        E.FileEvent(T0 + 6, p, op="rename", path="/tmp/a", path2="/tmp/b"),
        E.FileEvent(T0 + 7, p, op="chmod", path="/tmp/a", mode=0o4755),
        E.FileEvent(T0 + 8, p, op="chown", path="/tmp/a", owner_uid=0, owner_gid=0),
        E.NetEvent(T0 + 9, p, op="connect", family="inet", protocol="tcp", saddr="10.0.0.5",
                   sport=40000, daddr="93.184.216.34", dport=443),
        E.NetEvent(T0 + 10, p, op="bind", family="inet6", protocol="udp", saddr="::1", sport=53),
        E.NetEvent(T0 + 11, p, op="listen", family="inet", protocol="tcp", saddr="0.0.0.0",
                   sport=8080, backlog=128),
        E.NetEvent(T0 + 12, p, op="accept", family="inet", protocol="tcp", saddr="127.0.0.1",
                   sport=8080, daddr="127.0.0.1", dport=51000, fd=5),
        E.PtraceEvent(T0 + 13, p, request=16, request_name="ATTACH", target_pid=1),
        E.PtraceEvent(T0 + 14, p, request=4, request_name="POKETEXT", target_pid=1),
        E.KillEvent(T0 + 15, p, target_pid=1, target_tgid=1, signal=9, signal_name="SIGKILL"),
        E.BpfEvent(T0 + 16, p, cmd="PROG_LOAD", prog_type=5, name="x"),
        E.MemfdEvent(T0 + 17, p, name="payload", flags=1),
        E.CredEvent(T0 + 18, p, op="setuid", args=(0,)),
        E.CredEvent(T0 + 19, p, op="capset", args=(0, 0), cap_effective=1, cap_permitted=1),
        E.LsmDenyEvent(T0 + 20, p, hook="file_open", path="/etc/shadow", rule_id=3, ret=-1),
        E.LsmDenyEvent(T0 + 21, p, hook="bprm_check", path="/tmp/evil", rule_id=4, ret=-1),
        E.FileEvent(T0 + 22, p, op="utimes", path="/usr/bin/id", mode=3,
                    mtime_set_ns=1_000_000_000 * 1_000_000_000),
    ]
    return [to_json(e) for e in evs]


def sample_alert(severity: str = "high", attack: tuple[str, ...] = ("T1055", "T1055.008", "TA0004"),
                 **extra: Any) -> dict[str, Any]:
    ev = sample_events()[13]
    alert: dict[str, Any] = {
        "time": ev["time"], "id": "0123456789abcdef0123456789abcdef",
        "rule": "bastion.ptrace.attach", "title": 'ptrace ATTACH of pid 1 by "curl" ]',
        "severity": severity, "attack": list(attack), "action": "kill",
        "process": {"pid": 4242, "ppid": 1000, "exe": "/usr/bin/curl",
                    "cmdline": "curl -s http://x/y", "uid": 1001},
        "evidence": {"request": "ATTACH"}, "event": ev,
    }
    alert.update(extra)
    return alert
