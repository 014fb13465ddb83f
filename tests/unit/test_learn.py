"""Learn mode: events -> a profile that parses, generalises, and allows what was seen."""

from __future__ import annotations

import os

import pytest

from bastion.config import parse_policy
from bastion.errors import ConfigError
from bastion.events import ExecEvent, FileEvent, ForkEvent, NetEvent, Proc
from bastion.policy.learn import Learner, Selector, generalise
from bastion.proctable import ProcessTable


def _p(pid: int, exe: str = "", ppid: int = 1) -> Proc:
    return Proc(pid, pid, ppid, 33, 33, 33, 5, "w", 1000, exe)


def test_generalise() -> None:
    got = generalise({
        "/proc/1234/status", "/proc/self/maps", "/tmp/tmpa8f3k2", "/dev/shm/x",
        "/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
        "/etc/app.conf", "/srv/app/__pycache__/m.cpython-311.pyc",
        *{f"/var/www/static/f{i}.css" for i in range(12)}, "relative",
    })
    assert got == ["/dev/shm/", "/etc/app.conf", "/proc/", "/srv/app/__pycache__/", "/tmp/",
                   "/usr/lib/x86_64-linux-gnu/libssl.so.*", "/usr/lib/x86_64-linux-gnu/libz.so.*",
                   "/var/www/static/"]


@pytest.mark.parametrize("text,msg", [
    ("exe", "expected exe=PATH"), ("exe=relative", "must be an absolute path"),
    ("uid=www", "uid must be a number"), ("pid=3", "expected exe=PATH"),
])
def test_bad_selectors(text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        Selector.parse(text)


def test_learns_only_the_subject_and_writes_a_valid_profile() -> None:
    procs = ProcessTable()
    L = Learner(Selector.parse("exe=/usr/sbin/nginx"), procs)
    evs = [
        ExecEvent(1, _p(10, "/usr/sbin/nginx"), argv=("nginx",)),
        FileEvent(2, _p(10), op="open", path="/etc/nginx/nginx.conf", flags=os.O_RDONLY),
        FileEvent(3, _p(10), op="open", path="/var/log/nginx/access.log",
                  flags=os.O_WRONLY | os.O_APPEND | os.O_CREAT),
        NetEvent(4, _p(10), op="connect", family="inet", protocol="tcp", daddr="10.0.0.5", dport=8080),
        NetEvent(5, _p(10), op="bind", family="inet6", protocol="tcp", saddr="::", sport=443),
        ForkEvent(6, _p(10), child_pid=11, child_start_ns=2000),
        ExecEvent(7, Proc(11, 11, 10, 33, 33, 33, 5, "sh", 2000, "/usr/bin/dash"), argv=("sh",)),
        # someone else: ignored
        FileEvent(8, _p(99, "/usr/bin/vim"), op="open", path="/etc/passwd", flags=os.O_RDWR),
    ]
    procs.update(ExecEvent(0, _p(99, "/usr/bin/vim")))
    for ev in evs:
        L.observe(ev)
    text = L.profile("web")
    pol = parse_policy(text, "learned.yaml")
    rules = {r.name: r for r in pol.hips.rules}
    assert pol.hips.mode.value == "audit"
    assert [o.pattern for o in rules["web-exec"].objects] == ["/usr/bin/dash"]  # type: ignore[union-attr]
    assert [o.pattern for o in rules["web-open-read"].objects] == ["/etc/nginx/nginx.conf"]  # type: ignore[union-attr]
    assert [o.pattern for o in rules["web-open-write"].objects] == ["/var/log/nginx/access.log"]  # type: ignore[union-attr]
    assert [o.describe() for o in rules["web-connect"].objects] == ["10.0.0.5/32:8080"]  # type: ignore[union-attr]
    assert [o.describe() for o in rules["web-bind"].objects] == ["any:443"]  # type: ignore[union-attr]
    assert "/etc/passwd" not in text
    assert rules["web-deny-other"].action.value == "deny"
    assert "&id" not in text
